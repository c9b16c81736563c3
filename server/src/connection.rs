//! A client connection: the [`Connection`] handle agents use, and the socket
//! loops (one reader, one writer) that are the only code touching the socket.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::{self, CloseFrame, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::actor::{AgentHandle, Command};
use crate::config::CLOSE_TIMEOUT;
use crate::error::SendError;
use crate::message::{Message, Utf8Bytes};

/// Frames written in one go before a flush (several ready frames share one
/// syscall, see the performance notes).
const WRITE_BATCH: usize = 64;

/// Longest close reason the WebSocket protocol allows, in bytes.
const MAX_CLOSE_REASON: usize = 123;

/// One client socket, as the agent sees it. Cheap to clone; all clones refer
/// to the same socket.
///
/// Sending never blocks: frames go to a bounded per-connection queue that a
/// writer task drains. A client that stops reading until that queue is full
/// is dropped (see [`AgentServer::outbound_queue`](crate::AgentServer::outbound_queue)).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    /// Unique per socket within the server (ids may repeat, keys do not).
    key: u64,
    /// The client's `_pk`, or a generated 21-character id.
    id: String,
    /// The upgrade URL, including the query.
    uri: String,
    tags: OnceLock<Box<[String]>>,
    readonly: AtomicBool,
    protocol: AtomicBool,
    /// Per-connection user state (JSON `null` until set).
    state: Mutex<Value>,
    tx: mpsc::Sender<Outbound>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    close_queued: AtomicBool,
    /// Cancelled once our close frame has been written.
    close_sent: Signal,
    /// Set to drop the socket at once.
    killed: Signal,
}

impl Inner {
    /// Drops the socket at once.
    fn kill(&self) {
        self.killed.set();
    }
}

/// A one-way flag the socket's two tasks can await. Lock-free: polling it
/// (which the loops do once per frame) costs an atomic load and a waker
/// registration, where a `CancellationToken` takes a mutex.
#[derive(Default)]
struct Signal {
    set: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

/// Which task is waiting on a [`Signal`].
#[derive(Clone, Copy)]
enum Side {
    Reader,
    Writer,
}

impl Signal {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Completes once the signal is set.
    fn wait(&self, side: Side) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_set() {
                return std::task::Poll::Ready(());
            }
            match side {
                Side::Reader => self.reader.register(cx.waker()),
                Side::Writer => self.writer.register(cx.waker()),
            }
            if self.is_set() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// What the writer task writes.
#[derive(Debug)]
pub(crate) enum Outbound {
    Data(Message),
    Close(u16, Utf8Bytes),
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

impl Connection {
    pub(crate) fn new(
        key: u64,
        id: String,
        uri: String,
        queue: usize,
        max_queued_bytes: usize,
    ) -> (Connection, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let inner = Inner {
            key,
            id,
            uri,
            tags: OnceLock::new(),
            readonly: AtomicBool::new(false),
            protocol: AtomicBool::new(true),
            state: Mutex::new(Value::Null),
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            close_queued: AtomicBool::new(false),
            close_sent: Signal::default(),
            killed: Signal::default(),
        };
        (
            Connection {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// The connection id: the client's `_pk` query parameter, or a generated
    /// 21-character id when it is absent or empty. Client-chosen, so two
    /// live connections may share it.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The URL the connection was opened with, including its query.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The connection's tags: its id first, then those returned by
    /// [`Agent::connection_tags`](crate::Agent::connection_tags).
    pub fn tags(&self) -> &[String] {
        match self.inner.tags.get() {
            Some(tags) => tags,
            None => std::slice::from_ref(&self.inner.id),
        }
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
    /// is gone; [`SendError::QueueFull`] when the client stopped reading (the
    /// connection is then dropped).
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.send_message(message.into())
    }

    pub(crate) fn send_message(&self, message: Message) -> Result<(), SendError> {
        let inner = &self.inner;
        if inner.close_queued.load(Ordering::Relaxed) || inner.killed.is_set() {
            return Err(SendError::Closed);
        }
        let len = message.len();
        let before = inner.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > inner.max_queued_bytes {
            inner.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.drop_slow_client();
            return Err(SendError::QueueFull);
        }
        match inner.tx.try_send(Outbound::Data(message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                inner.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.drop_slow_client();
                Err(SendError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn drop_slow_client(&self) {
        tracing::warn!(id = %self.inner.id, "client is not reading; dropping the connection");
        self.inner.kill();
    }

    /// Starts the closing handshake with `code` and `reason` (truncated to
    /// the protocol's 123 bytes). Later sends fail; a second close is ignored.
    /// Codes 1008 and 4000–4999 tell clients not to reconnect.
    pub fn close(&self, code: u16, reason: &str) {
        if self.inner.close_queued.swap(true, Ordering::Relaxed) {
            return;
        }
        let reason = truncate(reason, MAX_CLOSE_REASON);
        if self
            .inner
            .tx
            .try_send(Outbound::Close(code, reason.into()))
            .is_err()
        {
            self.inner.kill();
        }
    }

    /// Whether the socket is still open for sending.
    pub fn is_open(&self) -> bool {
        !self.inner.close_queued.load(Ordering::Relaxed) && !self.inner.killed.is_set()
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
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How a socket ended, for `on_close`.
#[derive(Debug, Clone)]
pub(crate) struct CloseInfo {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) was_clean: bool,
}

/// Runs a registered socket to its end: the writer drains the outbound
/// queue while this task reads and forwards messages to the actor. Returns
/// how the socket ended.
pub(crate) async fn drive(
    socket: WebSocket,
    conn: Connection,
    rx: mpsc::Receiver<Outbound>,
    actor: impl AsyncFnOnce(Connection) -> Option<AgentHandle>,
) -> Option<(AgentHandle, CloseInfo)> {
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, rx, conn.clone()));
    // Registering sends the connect frames and runs `on_connect` before we
    // read anything, so a frame sent the instant the socket opened is
    // handled after them.
    let handle = actor(conn.clone()).await;
    let info = read_loop(stream, &conn, handle.as_ref()).await;
    let inner = &conn.inner;
    if inner.close_queued.load(Ordering::Relaxed) && !inner.close_sent.is_set() {
        // Let the writer put our close frame (e.g. 1009) on the wire.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, inner.close_sent.wait(Side::Reader)).await;
    }
    inner.kill();
    let _ = writer.await;
    handle.map(|h| (h, info))
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    conn: &Connection,
    actor: Option<&AgentHandle>,
) -> CloseInfo {
    let inner = &conn.inner;
    let mut closed: Option<CloseInfo> = None;
    let close_deadline = async {
        inner.close_sent.wait(Side::Reader).await;
        tokio::time::sleep(CLOSE_TIMEOUT).await;
    };
    tokio::pin!(close_deadline);
    // Created once per socket, and lock-free to poll (see `Signal`).
    let killed = inner.killed.wait(Side::Reader);
    tokio::pin!(killed);
    loop {
        // The socket is polled first: while frames keep coming, the kill and
        // deadline futures (each poll takes a lock) are not polled at all.
        let next = tokio::select! {
            biased;
            next = stream.next() => next,
            _ = &mut killed => break,
            _ = &mut close_deadline => break,
        };
        if inner.killed.is_set() {
            break;
        }
        let message = match next {
            None => break,
            Some(Err(err)) => {
                // Tell the client why before dropping it, when the socket
                // can still carry a close frame.
                if let Some((code, reason)) = close_for(err) {
                    conn.close(code, &reason);
                    closed = Some(CloseInfo {
                        code,
                        reason,
                        was_clean: false,
                    });
                }
                break;
            }
            Some(Ok(ws::Message::Text(text))) => Message::Text(text),
            Some(Ok(ws::Message::Binary(bytes))) => Message::Binary(bytes),
            Some(Ok(ws::Message::Ping(_) | ws::Message::Pong(_))) => continue,
            Some(Ok(ws::Message::Close(frame))) => {
                // Keep polling: that flushes the echoed close frame (same code
                // and reason) and then ends the stream.
                closed.get_or_insert(match frame {
                    Some(f) => CloseInfo {
                        code: f.code,
                        reason: f.reason.as_str().to_owned(),
                        was_clean: true,
                    },
                    None => CloseInfo {
                        code: 1005,
                        reason: String::new(),
                        was_clean: true,
                    },
                });
                continue;
            }
        };
        if closed.is_some() {
            continue;
        }
        let Some(actor) = actor else { continue };
        if actor
            .send(Command::Message {
                key: inner.key,
                message,
            })
            .await
            .is_err()
        {
            break;
        }
    }
    closed.unwrap_or(CloseInfo {
        code: 1006,
        reason: String::new(),
        was_clean: false,
    })
}

/// The close frame answering a read error: 1009 for a message over the
/// limit, 1007 for invalid UTF-8, 1002 for a protocol violation; `None` when
/// the transport itself failed.
fn close_for(err: axum::Error) -> Option<(u16, String)> {
    use tungstenite::error::CapacityError;
    match *err.into_inner().downcast::<tungstenite::Error>().ok()? {
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Some((1009, format!("Message is too large: {size} > {max_size}")))
        }
        tungstenite::Error::Utf8(_) => Some((1007, "Invalid UTF-8 in text frame".to_owned())),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(err) => Some((1002, format!("Protocol error: {err}"))),
        _ => None,
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, ws::Message>,
    mut rx: mpsc::Receiver<Outbound>,
    conn: Connection,
) {
    let inner = &conn.inner;
    let killed = inner.killed.wait(Side::Writer);
    tokio::pin!(killed);
    loop {
        let first = tokio::select! {
            biased;
            next = rx.recv() => match next {
                Some(out) => out,
                None => return,
            },
            _ = &mut killed => return,
        };
        if inner.killed.is_set() {
            return;
        }
        let done = tokio::select! {
            biased;
            _ = &mut killed => return,
            done = write_batch(&mut sink, &mut rx, first, inner) => done,
        };
        match done {
            Ok(false) => {}
            Ok(true) => {
                inner.close_sent.set();
                return;
            }
            Err(err) => {
                tracing::debug!(cause = %err, id = %inner.id, "write failed");
                inner.kill();
                return;
            }
        }
    }
}

/// Writes `first` and whatever else is ready, then flushes once. Returns
/// `true` once a close frame was written.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, ws::Message>,
    rx: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
    inner: &Inner,
) -> Result<bool, axum::Error> {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(out) = next.take() {
        match out {
            Outbound::Data(message) => {
                let len = message.len();
                let frame = match message {
                    Message::Text(t) => ws::Message::Text(t),
                    Message::Binary(b) => ws::Message::Binary(b),
                };
                sink.feed(frame).await?;
                inner.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            }
            Outbound::Close(code, reason) => {
                sink.send(ws::Message::Close(Some(CloseFrame { code, reason })))
                    .await?;
                return Ok(true);
            }
        }
        written += 1;
        if written < WRITE_BATCH {
            next = rx.try_recv().ok();
        }
    }
    sink.flush().await?;
    Ok(false)
}

/// A 21-character URL-safe random id, like the reference's `nanoid()`.
pub(crate) fn nanoid() -> String {
    use rand::Rng;
    const ALPHABET: &[u8; 64] = b"useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict";
    let mut rng = rand::rng();
    (0..21)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoid_shape() {
        let id = nanoid();
        assert_eq!(id.len(), 21);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert_ne!(id, nanoid());
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let t = truncate(&long, MAX_CLOSE_REASON);
        assert!(t.len() <= MAX_CLOSE_REASON);
        assert_eq!(t.len() % 2, 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped() {
        let (conn, _rx) = Connection::new(1, "x".into(), "/".into(), 2, 1 << 20);
        assert_eq!(conn.send("a"), Ok(()));
        assert_eq!(conn.send("b"), Ok(()));
        assert_eq!(conn.send("c"), Err(SendError::QueueFull));
        assert_eq!(conn.send("d"), Err(SendError::Closed));
        assert!(!conn.is_open());
    }

    #[tokio::test]
    async fn byte_limit_admits_one_large_frame_then_drops() {
        let (conn, _rx) = Connection::new(1, "x".into(), "/".into(), 100, 10);
        assert_eq!(conn.send(vec![0u8; 50]), Ok(()));
        assert_eq!(conn.send(vec![0u8; 1]), Err(SendError::QueueFull));
    }

    #[tokio::test]
    async fn send_after_close_fails() {
        let (conn, mut rx) = Connection::new(1, "x".into(), "/".into(), 8, 1 << 20);
        conn.close(4001, "bye");
        conn.close(1000, "again");
        assert_eq!(conn.send("late"), Err(SendError::Closed));
        assert!(matches!(rx.recv().await, Some(Outbound::Close(4001, r)) if r.as_str() == "bye"));
        assert!(rx.try_recv().is_err());
    }
}
