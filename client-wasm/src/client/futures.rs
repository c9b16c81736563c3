//! The futures side of the Rust API: the [`Messages`] stream and the
//! slot a typed call's outcome lands in.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::collections::VecDeque;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::error::ClientError;

use super::AgentClient;

/// A message received by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// Messages received and not yet taken, and the task to wake.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) items: VecDeque<Message>,
    pub(super) waker: Option<Waker>,
}

/// The client's messages as a `Stream`; dropping it removes its listener.
pub struct Messages {
    pub(super) queue: Rc<RefCell<Queue>>,
    pub(super) target: AgentClient,
    pub(super) listener: Closure<dyn FnMut(web_sys::MessageEvent)>,
}

impl core::fmt::Debug for Messages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Messages")
            .field("queued", &self.queue.borrow().items.len())
            .finish()
    }
}

impl futures_core::Stream for Messages {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let mut q = self.queue.borrow_mut();
        match q.items.pop_front() {
            Some(m) => Poll::Ready(Some(m)),
            None => {
                q.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        let _ = self
            .target
            .remove_event_listener_with_callback("message", self.listener.as_ref().unchecked_ref());
    }
}

/// Where a [`Client::call`]'s outcome lands, and the task to wake.
#[derive(Default)]
pub(crate) struct CallSlot {
    outcome: RefCell<Option<Result<JsValue, ClientError>>>,
    waker: Cell<Option<Waker>>,
}

impl CallSlot {
    pub(crate) fn settle(&self, outcome: Result<JsValue, ClientError>) {
        *self.outcome.borrow_mut() = Some(outcome);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Resolves when its [`CallSlot`] is settled.
pub(super) struct CallFuture {
    pub(super) slot: Rc<CallSlot>,
}

impl core::future::Future for CallFuture {
    type Output = Result<JsValue, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.outcome.borrow_mut().take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                self.slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}
