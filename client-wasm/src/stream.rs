//! The Rust-side API extras: `async` calls and a `Stream` of messages, for
//! Rust web apps (Leptos, Yew, …) that use [`Client`] directly.

use alloc::string::String;
use alloc::vec::Vec;

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use core::cell::RefCell;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use js_sys::Array;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::client::{CallSlot, Client, Settle};
use crate::error::ClientError;

/// A message received by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A text frame (protocol frames included, as for JS listeners).
    Text(String),
    /// A binary frame (`binaryType` must be `"arraybuffer"`; Blobs are skipped).
    Binary(Vec<u8>),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Message>,
    waker: Option<Waker>,
}

/// Every message the client receives from now on, as a `futures` `Stream`.
/// Dropping it removes its listener.
pub struct Messages {
    queue: Rc<RefCell<Queue>>,
    client: Client,
    listener: Closure<dyn FnMut(web_sys::MessageEvent)>,
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
        self.client.target().remove_listener(
            "message",
            self.listener.as_ref(),
            &JsValue::UNDEFINED,
        );
    }
}

impl Client {
    /// A stream of the messages received from now on.
    pub fn messages(&self) -> Messages {
        let queue = Rc::new(RefCell::new(Queue::default()));
        let q = queue.clone();
        let listener =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                let data = e.data();
                let message = if let Some(text) = data.as_string() {
                    Message::Text(text)
                } else if data.is_instance_of::<js_sys::ArrayBuffer>() {
                    Message::Binary(js_sys::Uint8Array::new(&data).to_vec())
                } else {
                    return;
                };
                let mut q = q.borrow_mut();
                q.items.push_back(message);
                if let Some(w) = q.waker.take() {
                    w.wake();
                }
            });
        self.target()
            .add_listener("message", listener.as_ref(), &JsValue::UNDEFINED);
        Messages {
            queue,
            client: self.clone(),
            listener,
        }
    }

    /// Calls `method` with `args` and awaits the result (default timeout).
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with the server's message, [`ClientError::Timeout`],
    /// [`ClientError::ConnectionClosed`], [`ClientError::QueueFull`], or
    /// [`ClientError::Options`] when `args` are not JSON-serializable.
    pub async fn call_async(&self, method: &str, args: &[JsValue]) -> Result<JsValue, ClientError> {
        let args: Array = args.iter().collect();
        let slot = Rc::new(CallSlot::default());
        self.start_call(
            method,
            &args,
            self.default_call_timeout(),
            [None, None, None],
            Settle::Slot(slot.clone()),
        );
        CallFuture { slot }.await
    }

    /// Sends a text message (queued while disconnected).
    pub fn send_text(&self, text: &str) -> Result<bool, ClientError> {
        self.send(JsValue::from_str(text))
    }

    /// Sends a binary message (queued while disconnected).
    pub fn send_binary(&self, bytes: &[u8]) -> Result<bool, ClientError> {
        self.send(js_sys::Uint8Array::from(bytes).buffer().unchecked_into())
    }
}

/// Resolves when the call's [`CallSlot`] is settled.
struct CallFuture {
    slot: Rc<CallSlot>,
}

impl core::future::Future for CallFuture {
    type Output = Result<JsValue, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.outcome.borrow_mut().take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
