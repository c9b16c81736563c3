//! The rare signals an instance's loop waits for beside its inbox (its
//! lease lost, its eviction, the server's shutdown), looked at again only
//! once one of them woke the loop.
//!
//! Polling a cancellation future takes its token's lock and its `Notify`'s;
//! an instance polls its signals each time its inbox runs dry, once per
//! message on a quiet echo. Here they are polled with a waker of their own,
//! which raises a flag before it wakes the instance: while the flag is
//! down, nothing was cancelled, and a poll costs two atomics.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// What [`Signals`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The lease token was cancelled (cluster mode).
    Fenced,
    /// The instance was chosen for eviction.
    Evicted,
    /// The server began shutting down (reported once).
    Shutdown,
}

/// The three signals of one instance; see the module docs.
pub(crate) struct Signals<'a> {
    fenced: Pin<Box<WaitForCancellationFuture<'a>>>,
    evicted: Pin<Box<WaitForCancellationFuture<'a>>>,
    shutdown: Pin<Box<WaitForCancellationFuture<'a>>>,
    shutdown_seen: bool,
    flag: Arc<Flag>,
    waker: Waker,
}

/// Raised by the signals' waker; the instance's task is woken after it.
#[derive(Debug, Default)]
struct Flag {
    raised: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a> Signals<'a> {
    pub(crate) fn new(
        fenced: &'a CancellationToken,
        evicted: &'a CancellationToken,
        shutdown: &'a CancellationToken,
    ) -> Self {
        let flag = Arc::new(Flag::default());
        // Raised: the first poll looks at every token.
        flag.raised.store(true, Ordering::Relaxed);
        Signals {
            fenced: Box::pin(fenced.cancelled()),
            evicted: Box::pin(evicted.cancelled()),
            shutdown: Box::pin(shutdown.cancelled()),
            shutdown_seen: false,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Whether a signal may be due (one woke us, or it was not looked at
    /// yet): the instance then goes through its select.
    pub(crate) fn woke(&self) -> bool {
        self.flag.raised.load(Ordering::Acquire)
    }

    /// The next signal; pending without touching the tokens unless one of
    /// them woke us since the last look.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Signal> {
        self.flag.task.register(cx.waker());
        if !self.flag.raised.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let signal = {
            let mut own = Context::from_waker(&self.waker);
            if self.fenced.as_mut().poll(&mut own).is_ready() {
                Some(Signal::Fenced)
            } else if self.evicted.as_mut().poll(&mut own).is_ready() {
                Some(Signal::Evicted)
            } else if !self.shutdown_seen && self.shutdown.as_mut().poll(&mut own).is_ready() {
                self.shutdown_seen = true;
                Some(Signal::Shutdown)
            } else {
                None
            }
        };
        match signal {
            Some(signal) => {
                // Another may be due too: look again next time.
                self.flag.raised.store(true, Ordering::Release);
                Poll::Ready(signal)
            }
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(signals: &mut Signals<'_>) -> Poll<Signal> {
        signals.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn signals_are_reported_once_cancelled_and_shutdown_once() {
        let (fence, evict, shutdown) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let mut signals = Signals::new(&fence, &evict, &shutdown);
        assert_eq!(poll(&mut signals), Poll::Pending);
        // Nothing woke them: not even looked at.
        assert!(!signals.flag.raised.load(Ordering::Acquire));
        assert_eq!(poll(&mut signals), Poll::Pending);
        shutdown.cancel();
        assert!(signals.flag.raised.load(Ordering::Acquire));
        assert_eq!(poll(&mut signals), Poll::Ready(Signal::Shutdown));
        // Reported once.
        assert_eq!(poll(&mut signals), Poll::Pending);
        evict.cancel();
        assert_eq!(poll(&mut signals), Poll::Ready(Signal::Evicted));
        // Still cancelled: reported again (the loop ends on it).
        assert_eq!(poll(&mut signals), Poll::Ready(Signal::Evicted));
        fence.cancel();
        assert_eq!(poll(&mut signals), Poll::Ready(Signal::Fenced));
    }

    #[tokio::test]
    async fn a_cancellation_wakes_the_waiting_task() {
        let (fence, evict, shutdown) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let later = evict.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            later.cancel();
        });
        let mut signals = Signals::new(&fence, &evict, &shutdown);
        let signal = std::future::poll_fn(|cx| signals.poll_next(cx)).await;
        assert_eq!(signal, Signal::Evicted);
    }
}
