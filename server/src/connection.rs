//! The [`Connection`] handle agents use for one client socket: its id, tags,
//! flags and per-connection state, and the outbound queue ("outbox") that
//! the runtime drains onto the socket.
//!
//! Sending never blocks and never waits for the client. Each connection's
//! queue has a budget (frames and bytes, see
//! [`AgentServer::outbound_queue_bytes`](crate::AgentServer::outbound_queue_bytes)):
//! past it the connection counts as *behind*, and its instance stops taking
//! new input until the client catches up — so a reading client loses
//! nothing, and TCP back-pressure reaches whoever floods the instance. A
//! client that makes no progress at all is closed by the runtime after
//! [`slow_consumer_timeout`](crate::AgentServer::slow_consumer_timeout). Only
//! a single turn that queues [`HARD_LIMIT_FACTOR`] times the budget for one
//! client drops that client at once ([`SendError::QueueFull`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use crate::error::SendError;
use crate::lock;
use crate::message::{truncate, Message};
use crate::storage::WriteProgress;

/// Queue accounting charges each frame this many bytes on top of its
/// payload (the queue entry and the frame header), so that many tiny frames
/// count too.
pub const FRAME_OVERHEAD: usize = 64;

/// How far past its budget one client's queue may grow within a single turn
/// of its instance (a hook that sends a lot at once) before that client is
/// dropped.
pub const HARD_LIMIT_FACTOR: usize = 4;

/// Longest close reason the WebSocket protocol allows, in bytes.
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// A map by connection key. Keys are the server's own counter, never chosen
/// by a client (nothing to flood), so they are hashed with one multiply
/// (Fx's) rather than SipHash: the instance looks one up per message.
pub(crate) type KeyMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The hasher of [`KeyMap`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// One client socket, as the agent sees it. Cheap to clone; all clones refer
/// to the same socket.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    /// Unique per socket within the server (ids may repeat, keys do not).
    key: u64,
    /// The client's `_pk`, or a generated 21-character id.
    id: Box<str>,
    /// The request target (path and query) the socket was opened with.
    uri: Box<str>,
    tags: OnceLock<Box<[String]>>,
    readonly: AtomicBool,
    protocol: AtomicBool,
    /// Per-connection user state (JSON `null` until set).
    state: Mutex<Value>,
    outbox: Outbox,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("uri", &self.inner.uri)
            .field("tags", &self.tags())
            .finish_non_exhaustive()
    }
}

/// A frame waiting for the socket.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A data frame.
    Data(Message),
    /// The closing handshake's first frame; nothing follows it.
    Close(u16, Box<str>),
}

/// Per-client queue budget (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Frames queued before the client counts as behind.
    pub(crate) frames: usize,
    /// Bytes (with [`FRAME_OVERHEAD`] each) queued before the client counts as behind.
    pub(crate) bytes: usize,
}

impl Connection {
    /// A connection not yet attached to an instance, and its queue.
    pub(crate) fn new(key: u64, id: String, uri: String, limits: QueueLimits) -> Connection {
        let inner = Inner {
            key,
            id: id.into(),
            uri: uri.into(),
            tags: OnceLock::new(),
            readonly: AtomicBool::new(false),
            protocol: AtomicBool::new(true),
            state: Mutex::new(Value::Null),
            outbox: Outbox {
                state: Mutex::new(OutboxState::default()),
                waker: AtomicWaker::new(),
                killed: AtomicBool::new(false),
                limits,
                flow: OnceLock::new(),
            },
        };
        Connection {
            inner: Arc::new(inner),
        }
    }

    /// The connection id: the client's `_pk` query parameter, or a generated
    /// 21-character id when it is absent or empty. Client-chosen, so two
    /// live connections may share it.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The request target the connection was opened with: path and query,
    /// e.g. `/agents/chat-agent/room?_pk=…&token=…`. (Headers are not kept
    /// for the socket's life; read what you need in
    /// [`on_connect`](crate::Agent::on_connect) from
    /// [`ConnectContext::request`](crate::ConnectContext::request).)
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The connection's tags: its id first, then those returned by
    /// [`Agent::connection_tags`](crate::Agent::connection_tags).
    pub fn tags(&self) -> &[String] {
        match self.inner.tags.get() {
            Some(tags) => tags,
            None => &[],
        }
    }

    /// Whether the connection carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.inner.id.as_ref() == tag || self.tags().iter().any(|t| t == tag)
    }

    /// Whether state frames from this connection are refused.
    pub fn is_readonly(&self) -> bool {
        self.inner.readonly.load(Ordering::Relaxed)
    }

    /// Makes the connection readonly (or writable again) at any time.
    pub fn set_readonly(&self, readonly: bool) {
        self.inner.readonly.store(readonly, Ordering::Relaxed);
    }

    /// Whether the connection receives protocol frames (identity, state, MCP).
    pub fn is_protocol_enabled(&self) -> bool {
        self.inner.protocol.load(Ordering::Relaxed)
    }

    /// The per-connection state, deserialized into `T`; `None` when it was
    /// never set or does not fit `T`.
    pub fn state<T: DeserializeOwned>(&self) -> Option<T> {
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_null() {
            return None;
        }
        T::deserialize(&*state).ok()
    }

    /// Replaces the per-connection state (any serializable value; lives as
    /// long as the connection).
    pub fn set_state<T: Serialize + ?Sized>(&self, state: &T) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(state)?;
        *self.inner.state.lock().unwrap_or_else(|e| e.into_inner()) = value;
        Ok(())
    }

    /// Queues a text or binary frame for the client.
    ///
    /// # Errors
    /// [`SendError::Closed`] after [`close`](Self::close) or once the client
    /// is gone; [`SendError::QueueFull`] when one turn queued more than
    /// [`HARD_LIMIT_FACTOR`] times the client's budget (the connection is
    /// then dropped).
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.push(Outbound::Data(message.into()))
    }

    /// Starts the closing handshake with `code` and `reason` (truncated to
    /// the protocol's 123 bytes), after the frames already queued. Later
    /// sends fail; a second close is ignored. Codes 1008 and 4000–4999 tell
    /// clients not to reconnect.
    pub fn close(&self, code: u16, reason: &str) {
        let reason = truncate(reason, MAX_CLOSE_REASON);
        let _ = self.push(Outbound::Close(code, reason.into()));
    }

    /// Whether the socket is still open for sending.
    pub fn is_open(&self) -> bool {
        self.inner.outbox.is_open()
    }

    fn push(&self, out: Outbound) -> Result<(), SendError> {
        let outbox = &self.inner.outbox;
        if outbox.is_killed() {
            return Err(SendError::Closed);
        }
        let mut state = lock(&outbox.state);
        if state.closing {
            return Err(SendError::Closed);
        }
        if let Outbound::Data(message) = &out {
            let cost = message.len() + FRAME_OVERHEAD;
            let hard_bytes = outbox.limits.bytes.saturating_mul(HARD_LIMIT_FACTOR);
            let hard_frames = outbox.limits.frames.saturating_mul(HARD_LIMIT_FACTOR);
            // One frame is always admitted into an empty queue, whatever its size.
            if state.frames > 0
                && (state.bytes + cost > hard_bytes || state.frames + 1 > hard_frames)
            {
                drop(state);
                tracing::warn!("client far behind its queue budget; dropping the connection");
                crate::metrics::refused(crate::metrics::Limit::OutboundQueue);
                outbox.kill();
                return Err(SendError::QueueFull);
            }
            state.frames += 1;
            state.bytes += cost;
            if !state.behind
                && (state.bytes > outbox.limits.bytes || state.frames > outbox.limits.frames)
            {
                state.behind = true;
                if let Some(flow) = outbox.flow.get() {
                    flow.fell_behind();
                }
            }
        } else {
            state.closing = true;
        }
        // The output gate: after a write, nothing leaves before it is durable.
        if let Some(flow) = outbox.flow.get() {
            if flow.progress.waiting_for().is_some() {
                drop(state);
                let Some(out) = flow.hold(self, out) else {
                    return Ok(());
                };
                // Settled meanwhile: it goes out now.
                self.enqueue(lock(&outbox.state), out);
                return Ok(());
            }
        }
        self.enqueue(state, out);
        Ok(())
    }

    /// Queues an accounted frame and wakes the socket.
    fn enqueue(&self, mut state: MutexGuard<'_, OutboxState>, out: Outbound) {
        let outbox = &self.inner.outbox;
        if outbox.is_killed() {
            return;
        }
        state.queue.push_back(out);
        // While the instance works through a burst, wake the socket once at
        // the end of it (re-checked under the list's lock: no lost wake-up).
        if let Some(flow) = outbox.flow.get() {
            if flow.batching.load(Ordering::Relaxed) {
                if state.wake_pending {
                    return;
                }
                drop(state);
                let mut pending = lock(&flow.pending_wakes);
                if flow.batching.load(Ordering::Relaxed) {
                    lock(&outbox.state).wake_pending = true;
                    pending.push(self.clone());
                    return;
                }
            }
        }
        outbox.waker.wake();
    }

    /// Sends `message` past the output gate (for the error replies that
    /// replace output a failed write took with it).
    pub(crate) fn send_now(&self, message: impl Into<Message>) {
        let out = Outbound::Data(message.into());
        let outbox = &self.inner.outbox;
        let mut state = lock(&outbox.state);
        if state.closing {
            return;
        }
        if let Outbound::Data(m) = &out {
            state.frames += 1;
            state.bytes += m.len() + FRAME_OVERHEAD;
        }
        self.enqueue(state, out);
    }

    pub(crate) fn key(&self) -> u64 {
        self.inner.key
    }

    pub(crate) fn set_tags(&self, tags: Box<[String]>) {
        let _ = self.inner.tags.set(tags);
    }

    pub(crate) fn set_protocol_enabled(&self, enabled: bool) {
        self.inner.protocol.store(enabled, Ordering::Relaxed);
    }

    /// The queue, for the runtime that drains it.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }
}

/// Flow control shared by an instance and its connections: how many of them
/// are behind (the instance takes no input while any is), and wake-ups held
/// back while the instance works through a burst of events.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    behind: AtomicUsize,
    caught_up: Notify,
    batching: AtomicBool,
    /// Connections with frames queued during the current batch, woken when
    /// it ends (so every frame of a burst leaves in one write).
    pending_wakes: Mutex<Vec<Connection>>,
    /// The instance's writes, for the output gate.
    progress: Arc<WriteProgress>,
    /// Output held by the gate: each frame with the batch it waits for.
    held: Mutex<VecDeque<(u64, Connection, Outbound)>>,
}

impl Flow {
    /// Flow control for an instance whose writes `progress` tracks.
    pub(crate) fn new(progress: Arc<WriteProgress>) -> Self {
        Flow {
            progress,
            ..Flow::default()
        }
    }

    /// Holds `out` until its batch settles; gives it back when everything
    /// settled meanwhile.
    fn hold(&self, conn: &Connection, out: Outbound) -> Option<Outbound> {
        let mut held = lock(&self.held);
        // Re-checked under the lock `settle` takes: nothing slips between.
        match self.progress.waiting_for() {
            Some(seq) => {
                held.push_back((seq, conn.clone(), out));
                None
            }
            None => Some(out),
        }
    }

    /// Batch `seq` settled (batches settle in order): the output that
    /// waited for it goes out if it is durable, or is dropped if it failed.
    pub(crate) fn settle(&self, seq: u64, durable: bool) {
        let mut held = lock(&self.held);
        while held.front().is_some_and(|(s, _, _)| *s <= seq) {
            let (_, conn, out) = held.pop_front().expect("a front entry");
            let outbox = conn.outbox();
            match out {
                // A failed write takes the output that followed it along;
                // closes still go out.
                Outbound::Data(message) if !durable => outbox.written(1, message.len()),
                out => conn.enqueue(lock(&outbox.state), out),
            }
        }
        self.progress.settled.store(seq, Ordering::Release);
    }

    /// Whether some connection is behind its budget.
    pub(crate) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire) > 0
    }

    /// Completes once no connection is behind.
    pub(crate) async fn caught_up(&self) {
        loop {
            let notified = self.caught_up.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_behind() {
                return;
            }
            notified.await;
        }
    }

    /// From now until [`end_batch`](Self::end_batch), sockets are woken once
    /// at the end instead of at every frame.
    pub(crate) fn begin_batch(&self) {
        self.batching.store(true, Ordering::Relaxed);
    }

    /// Wakes every socket that got frames during the batch.
    pub(crate) fn end_batch(&self) {
        let woken = {
            let mut pending = lock(&self.pending_wakes);
            self.batching.store(false, Ordering::Relaxed);
            std::mem::take(&mut *pending)
        };
        for conn in woken {
            let outbox = conn.outbox();
            lock(&outbox.state).wake_pending = false;
            outbox.waker.wake();
        }
    }

    fn fell_behind(&self) {
        self.behind.fetch_add(1, Ordering::AcqRel);
    }

    fn caught_up_one(&self) {
        if self.behind.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.caught_up.notify_waiters();
        }
    }
}

/// One connection's outbound queue: filled by whoever sends, drained by the
/// socket task.
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    /// The socket task, woken when frames arrive or the connection is killed.
    waker: AtomicWaker,
    killed: AtomicBool,
    limits: QueueLimits,
    /// The instance's flow control, once attached.
    flow: OnceLock<Arc<Flow>>,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Outbound>,
    /// Frames and bytes queued or being written, not yet on the wire.
    frames: usize,
    bytes: usize,
    /// Counted in the flow's `behind`.
    behind: bool,
    /// A close frame is queued: nothing more is accepted.
    closing: bool,
    /// In the flow's pending wake-ups.
    wake_pending: bool,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// Attaches the connection to its instance's flow control.
    pub(crate) fn attach(&self, flow: Arc<Flow>) {
        let _ = self.flow.set(flow);
    }

    /// Moves every queued frame into `into` (which the socket keeps until
    /// they are written), registering the socket task for the next ones.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Outbound>,
    ) -> Poll<()> {
        self.waker.register(cx.waker());
        let mut state = lock(&self.state);
        if state.queue.is_empty() {
            return Poll::Pending;
        }
        if into.is_empty() {
            std::mem::swap(into, &mut state.queue);
        } else {
            into.append(&mut state.queue);
        }
        Poll::Ready(())
    }

    /// The socket wrote `frames` frames of `bytes` payload bytes.
    pub(crate) fn written(&self, frames: usize, bytes: usize) {
        let mut state = lock(&self.state);
        state.frames = state.frames.saturating_sub(frames);
        state.bytes = state.bytes.saturating_sub(bytes + frames * FRAME_OVERHEAD);
        if state.behind && state.bytes <= self.limits.bytes && state.frames <= self.limits.frames {
            state.behind = false;
            drop(state);
            if let Some(flow) = self.flow.get() {
                flow.caught_up_one();
            }
        }
    }

    /// Frees everything queued and stops accepting frames: the socket is
    /// gone. Lets the instance go on if this client held it back.
    pub(crate) fn shut(&self) {
        self.killed.store(true, Ordering::Release);
        let mut state = lock(&self.state);
        state.closing = true;
        state.queue = VecDeque::new();
        state.frames = 0;
        state.bytes = 0;
        if std::mem::take(&mut state.behind) {
            drop(state);
            if let Some(flow) = self.flow.get() {
                flow.caught_up_one();
            }
        }
    }

    /// Drops the socket at once (no closing handshake).
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    fn is_open(&self) -> bool {
        !self.is_killed() && !lock(&self.state).closing
    }
}
