//! One task per client socket: it reads frames and hands messages to the
//! instance, and writes what the instance queued — everything queued at
//! once, in one vectored write — all in the same task.
//!
//! It is also where the socket's limits and deadlines live: the message
//! size (close 1009, after which the rest of that message is read and
//! dropped, so that the client gets to read the 1009), a server-wide budget
//! for bytes read but not yet taken by an instance (close 1013), a deadline
//! for a message being received (close 1013), pings and a silence timeout,
//! a write-progress timeout for clients that stop reading, and a deadline
//! for the closing handshake. The read buffer exists only while bytes are
//! arriving: an idle socket holds none.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::actor::{Admit, CloseInfo};
use super::frame::{self, Decoded, Decoder, Frame, FrameError, Opcode};
use super::registry::Link;
use crate::config::CLOSE_TIMEOUT;
use crate::connection::{Connection, Outbound};
use crate::log::Trunc;
use crate::message::{Message, Utf8Bytes};
use crate::metrics::{Limit, SocketMetrics};

/// Bytes read per system call when no larger frame is expected.
const READ_CHUNK: usize = 16 * 1024;

/// Frames handed to one vectored write (two slices each, within the
/// kernel's `IOV_MAX` of 1,024): a burst of a few hundred frames goes out
/// in one system call.
const WRITE_FRAMES: usize = 512;

/// Frames whose slices are gathered on the stack (2 KiB, cleared for each
/// write); more take a vector of their size.
const SMALL_WRITE_FRAMES: usize = 64;

/// Bytes read and dropped after our close frame (the rest of an oversized
/// message, say) before the socket is dropped anyway; the closing deadline
/// ([`CLOSE_TIMEOUT`]) bounds the time.
pub(crate) const MAX_DISCARD: usize = 64 * 1024 * 1024;

/// Rounds of writing and reading before the task yields to others.
const ROUNDS_PER_POLL: usize = 16;

/// Messages of one socket offered to its instance as one inbox event, at
/// most: what one read brought is handed over together (one hand-over per
/// read, not one per frame), in batches of up to this many.
const READ_BATCH: usize = 32;

/// Bytes read off every socket and not yet accepted by an instance: partial
/// frames, fragments, and messages waiting for room in an inbox. One per
/// server; see [`AgentServer::max_unfinished_bytes`](crate::AgentServer::max_unfinished_bytes).
#[derive(Debug)]
pub(crate) struct ReadBudget {
    used: AtomicUsize,
    max: usize,
}

impl ReadBudget {
    pub(crate) fn new(max: usize) -> Self {
        ReadBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes; `false` (and nothing taken) when that would pass the budget.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.max).then_some(used + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The byte stream a socket runs over. An idle socket waits for
/// [`poll_read_ready`](Transport::poll_read_ready) before it takes a read
/// buffer, so that being woken to write costs no allocation.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Ready once a read may return bytes; streams that cannot tell are
    /// always ready.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl Transport for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

/// The server-wide settings of every socket task.
#[derive(Debug)]
pub(crate) struct SocketEnv {
    pub(crate) max_message: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) slow_consumer_timeout: Duration,
    pub(crate) message_timeout: Duration,
    pub(crate) message_idle_timeout: Duration,
    pub(crate) read_budget: ReadBudget,
}

/// Runs the socket until it ends. `register` hands the connection to its
/// instance (which queues the connect frames and runs `on_connect`); frames
/// are written meanwhile, and nothing is read until it completes. Returns the
/// instance and how the socket ended, for `on_close`, when it was accepted.
pub(crate) async fn run<T: Transport>(
    io: T,
    read_ahead: Bytes,
    conn: Connection,
    metrics: SocketMetrics,
    env: &SocketEnv,
    mut register: Pin<Box<impl Future<Output = Option<Link>>>>,
) -> Option<(Link, CloseInfo)> {
    let now = Instant::now();
    // A copy: `read_ahead` may share the HTTP read buffer's allocation,
    // which must not stay with the socket.
    let rbuf = BytesMut::from(&read_ahead[..]);
    drop(read_ahead);
    let mut socket = Socket {
        io,
        env,
        decoder: Decoder::new(env.max_message),
        rbuf,
        frame_hint: None,
        held: 0,
        assembling_since: None,
        last_read: now,
        last_seen: now,
        ping_sent: false,
        writes: VecDeque::new(),
        head_written: 0,
        taken: VecDeque::new(),
        write_stalled_since: None,
        instance: None,
        admitting: None,
        admitting_len: 0,
        info: None,
        client_closed: false,
        close_sent: false,
        close_deadline: None,
        read_after_close: 0,
        discard: None,
        done: false,
        sleep: Box::pin(tokio::time::sleep_until(now + env.ping_interval)),
        conn,
        metrics,
    };
    let registered = std::future::poll_fn(|cx| {
        let _ = socket.poll_writes(cx);
        if socket.done {
            return Poll::Ready(None);
        }
        register.as_mut().poll(cx)
    })
    .await;
    // Gone once registered: the task is its own state for the rest of its life.
    drop(register);
    match registered {
        Some(link) => socket.instance = Some(link),
        // Refused: the registry queued a close; read only to find the reply.
        None => {
            socket.conn.close(1013, "Try again later");
            socket.discard = Some(Discard::Skim);
        }
    }
    let info = std::future::poll_fn(|cx| socket.poll(cx)).await;
    crate::metrics::closed(info.code);
    socket.finish();
    socket.instance.take().map(|h| (h, info))
}

/// Fills `slices` with the first frames of `writes` (header and payload,
/// the first one less its `head_written` bytes); returns how many it used.
fn frame_slices<'a>(
    writes: &'a VecDeque<Write>,
    head_written: usize,
    slices: &mut [IoSlice<'a>],
) -> usize {
    let mut n = 0;
    for (i, w) in writes.iter().enumerate() {
        if n + 2 > slices.len() {
            break;
        }
        let skip = if i == 0 { head_written } else { 0 };
        let header = &w.header[..usize::from(w.header_len)];
        if skip < header.len() {
            slices[n] = IoSlice::new(&header[skip..]);
            slices[n + 1] = IoSlice::new(&w.payload);
            n += 2;
        } else {
            slices[n] = IoSlice::new(&w.payload[skip - header.len()..]);
            n += 1;
        }
    }
    n
}

/// How input is dropped once the server began closing after bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    /// Skip this many more bytes (the rest of an oversized frame), then skim.
    Skip(u64),
    /// Look only for the client's close frame.
    Skim,
    /// The stream cannot be parsed: drop bytes, and hang up once our close
    /// frame is out.
    Raw,
}

/// Messages decoded from what was read, to be offered together.
#[derive(Default)]
enum Batch {
    #[default]
    Empty,
    One(Message),
    Many(Vec<Message>),
}

impl Batch {
    fn push(&mut self, message: Message) {
        match self {
            Batch::Many(messages) => messages.push(message),
            Batch::Empty => *self = Batch::One(message),
            Batch::One(_) => {
                let Batch::One(first) = std::mem::take(self) else {
                    return;
                };
                let mut messages = Vec::with_capacity(8);
                messages.extend([first, message]);
                *self = Batch::Many(messages);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Batch::Empty => 0,
            Batch::One(_) => 1,
            Batch::Many(messages) => messages.len(),
        }
    }
}

struct Socket<'a, T> {
    io: T,
    env: &'a SocketEnv,
    conn: Connection,
    decoder: Decoder,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// The length of the frame at the front of `rbuf`, once its header is in.
    frame_hint: Option<usize>,
    /// Bytes charged to the server-wide read budget.
    held: usize,
    /// When the message being received began arriving.
    assembling_since: Option<Instant>,
    last_read: Instant,
    /// When the client last sent a frame (pongs count).
    last_seen: Instant,
    ping_sent: bool,
    /// Frames being written, and the bytes of the first already written.
    writes: VecDeque<Write>,
    head_written: usize,
    /// Scratch queue the outbox is drained into.
    taken: VecDeque<Outbound>,
    write_stalled_since: Option<Instant>,
    instance: Option<Link>,
    /// Messages waiting for room in their instance's inbox, and their size.
    admitting: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
    admitting_len: usize,
    /// What `on_close` will be told.
    info: Option<CloseInfo>,
    client_closed: bool,
    close_sent: bool,
    /// Set when our closing handshake began: it ends by then, whatever the client does.
    close_deadline: Option<Instant>,
    read_after_close: usize,
    discard: Option<Discard>,
    done: bool,
    sleep: Pin<Box<Sleep>>,
    metrics: SocketMetrics,
}

/// A frame on its way out.
struct Write {
    header: [u8; 10],
    header_len: u8,
    payload: Bytes,
    kind: WriteKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// From the outbox: counts against the client's queue budget.
    Data,
    /// A ping or pong.
    Control,
    /// Our close frame.
    Close,
}

impl Write {
    fn new(opcode: Opcode, payload: Bytes, kind: WriteKind) -> Self {
        let (header, len) = frame::header(opcode, payload.len());
        Write {
            header,
            header_len: len as u8,
            payload,
            kind,
        }
    }

    fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }
}

/// An end without a closing handshake.
fn abnormal() -> CloseInfo {
    CloseInfo {
        code: 1006,
        reason: String::new(),
        was_clean: false,
    }
}

impl<T: Transport> Socket<'_, T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<CloseInfo> {
        for _ in 0..ROUNDS_PER_POLL {
            if self.conn.outbox().is_killed() {
                self.done = true;
            }
            if !self.done {
                let wrote = self.poll_writes(cx).is_ready();
                let admitted = self.poll_admit(cx);
                let read = self.poll_reads(cx);
                if self.close_sent
                    && (self.client_closed || self.discard == Some(Discard::Raw))
                    && self.admitting.is_none()
                {
                    // Both close frames exchanged (or no reply can be read):
                    // the server hangs up — once the messages read before
                    // the close are in the inbox (the closing deadline
                    // bounds that wait).
                    self.done = true;
                }
                self.track_assembly();
                let fired = self.poll_timers(cx);
                if !(wrote || admitted || read || fired || self.done) {
                    return Poll::Pending;
                }
            }
            if self.done {
                return Poll::Ready(self.info.take().unwrap_or_else(abnormal));
            }
        }
        // A busy socket: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Frees what the socket holds once it ended.
    fn finish(&mut self) {
        self.conn.outbox().shut();
        self.admitting = None;
        self.admitting_len = 0;
        self.rbuf = BytesMut::new();
        self.decoder = Decoder::new(0);
        self.env.read_budget.give(self.held);
        self.held = 0;
    }

    /// Takes what the outbox holds and writes as much as the socket
    /// accepts. Ready when bytes were written.
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.close_deadline.is_none()
            && self.conn.outbox().poll_take(cx, &mut self.taken).is_ready()
        {
            self.queue_taken();
        }
        if self.writes.is_empty() {
            return Poll::Pending;
        }
        let mut progress = false;
        let (mut data_frames, mut data_bytes) = (0, 0);
        while !self.writes.is_empty() && !self.done {
            // Up to 64 frames (nearly always) on the stack; a burst in a
            // vector of its size, not a 16 KiB array cleared every time.
            let frames = self.writes.len().min(WRITE_FRAMES);
            let mut small = [IoSlice::new(&[]); 2 * SMALL_WRITE_FRAMES];
            let mut large = Vec::new();
            let slices = if frames <= SMALL_WRITE_FRAMES {
                &mut small[..]
            } else {
                large.resize(2 * frames, IoSlice::new(&[]));
                &mut large[..]
            };
            let n = frame_slices(&self.writes, self.head_written, slices);
            match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => self.done = true,
                Poll::Ready(Ok(mut written)) => {
                    progress = true;
                    while written > 0 {
                        let left = self.writes[0].len() - self.head_written;
                        if written < left {
                            self.head_written += written;
                            break;
                        }
                        written -= left;
                        self.head_written = 0;
                        let w = self.writes.pop_front().expect("a frame being written");
                        match w.kind {
                            WriteKind::Data => {
                                data_frames += 1;
                                data_bytes += w.payload.len();
                            }
                            WriteKind::Close => self.close_sent = true,
                            WriteKind::Control => {}
                        }
                    }
                }
                Poll::Ready(Err(err)) => {
                    tracing::debug!(id = %Trunc(self.conn.id()), cause = %err, "write failed");
                    self.done = true;
                }
                Poll::Pending => break,
            }
        }
        if data_frames > 0 {
            self.conn.outbox().written(data_frames, data_bytes);
            self.metrics.sent.increment(data_frames as u64);
            self.metrics.sent_bytes.increment(data_bytes as u64);
        }
        if self.writes.is_empty() {
            self.write_stalled_since = None;
            // Plain TCP needs no flush; other transports (TLS) may.
            if let Poll::Ready(Err(_)) = Pin::new(&mut self.io).poll_flush(cx) {
                self.done = true;
            }
        } else if progress || self.write_stalled_since.is_none() {
            self.write_stalled_since = Some(Instant::now());
        }
        if progress {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Turns what was taken from the outbox into frames to write.
    fn queue_taken(&mut self) {
        while let Some(out) = self.taken.pop_front() {
            match out {
                Outbound::Data(message) => {
                    let (opcode, payload) = match message {
                        Message::Text(t) => (Opcode::Text, Utf8Bytes::into_bytes(t)),
                        Message::Binary(b) => (Opcode::Binary, b),
                    };
                    self.writes
                        .push_back(Write::new(opcode, payload, WriteKind::Data));
                }
                Outbound::Close(code, reason) => self.start_close(code, &reason, false),
            }
        }
    }

    /// Queues our close frame (once) and starts the closing deadline. When
    /// `urgent`, it goes right after the frame being written, and queued
    /// data is dropped.
    fn start_close(&mut self, code: u16, reason: &str, urgent: bool) {
        if self.close_deadline.is_some() {
            return;
        }
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        if urgent {
            let keep = usize::from(self.head_written > 0).min(self.writes.len());
            let (mut frames, mut bytes) = (0, 0);
            for w in self.writes.drain(keep..) {
                if w.kind == WriteKind::Data {
                    frames += 1;
                    bytes += w.payload.len();
                }
            }
            self.conn.outbox().written(frames, bytes);
        }
        let payload = if code == 1005 {
            Bytes::new()
        } else {
            frame::close_payload(code, reason)
        };
        self.writes
            .push_back(Write::new(Opcode::Close, payload, WriteKind::Close));
    }

    /// Queues a ping or pong right after the frame being written (keeping
    /// at most one of each waiting).
    fn queue_control(&mut self, opcode: Opcode, payload: Bytes) {
        if self.close_deadline.is_some() {
            return;
        }
        let from = usize::from(self.head_written > 0).min(self.writes.len());
        let header = frame::header(opcode, 0).0[0];
        if let Some(w) = self
            .writes
            .iter_mut()
            .skip(from)
            .find(|w| w.kind == WriteKind::Control && w.header[0] == header)
        {
            *w = Write::new(opcode, payload, WriteKind::Control);
            return;
        }
        self.writes
            .insert(from, Write::new(opcode, payload, WriteKind::Control));
    }

    /// Moves a waiting message into its instance's inbox. True when it did.
    fn poll_admit(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(admitting) = &mut self.admitting else {
            return false;
        };
        let Poll::Ready(delivered) = admitting.as_mut().poll(cx) else {
            return false;
        };
        self.admitting = None;
        self.admitting_len = 0;
        // Frames still buffered count as seen now, not at the read that
        // brought them (the wait may have been long).
        self.last_seen = Instant::now();
        self.recharge();
        if !delivered {
            // The instance is gone (the server is stopping).
            self.done = true;
        }
        true
    }

    /// Reads and handles what the client sent. True when anything was read
    /// or handled.
    fn poll_reads(&mut self, cx: &mut Context<'_>) -> bool {
        if self.instance.is_none() && self.discard.is_none() {
            return false;
        }
        let mut progress = false;
        // Messages decoded and not yet offered to the instance (at most
        // until everything read is decoded: no read happens meanwhile).
        let mut batch = Batch::Empty;
        while self.admitting.is_none() && !self.done {
            if self.handle_buffered(&mut batch) {
                progress = true;
                continue;
            }
            // Everything read is decoded: its messages go to the instance
            // before anything more is read.
            if batch.len() > 0 {
                self.offer(&mut batch);
                continue;
            }
            // The whole frame in one allocation once its header says how
            // long it is; otherwise a chunk.
            let spare = self.rbuf.capacity() - self.rbuf.len();
            let need = self
                .frame_hint
                .map_or(0, |len| len.saturating_sub(self.rbuf.len()));
            if need > spare {
                self.rbuf.reserve(need);
            } else if spare < 1024 {
                if self.rbuf.is_empty() && self.io.poll_read_ready(cx).is_pending() {
                    // Nothing to read: no buffer taken.
                    break;
                }
                self.rbuf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    self.done = true;
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    self.last_read = Instant::now();
                    if self.close_deadline.is_some() {
                        self.read_after_close += n;
                        if self.read_after_close > MAX_DISCARD.max(self.env.max_message) {
                            self.done = true;
                        }
                    }
                    if !self.recharge() {
                        crate::metrics::refused(Limit::UnfinishedBytes);
                        self.fail(1013, "Server busy".to_owned(), Discard::Skim);
                    }
                }
                Poll::Ready(Err(err)) => {
                    tracing::debug!(id = %Trunc(self.conn.id()), cause = %err, "read failed");
                    self.done = true;
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        // What came before the end (a wait for room began with an offer,
        // which left the batch empty).
        debug_assert!(self.admitting.is_none() || batch.len() == 0);
        self.offer(&mut batch);
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            // Nothing pending: hold no buffer while idle.
            self.rbuf = BytesMut::new();
        }
        progress
    }

    /// Handles what is already in the buffer; true when it consumed bytes.
    fn handle_buffered(&mut self, batch: &mut Batch) -> bool {
        if self.rbuf.is_empty() {
            return false;
        }
        match self.discard {
            None => {}
            Some(Discard::Raw) => {
                self.rbuf.clear();
                self.recharge();
                return true;
            }
            Some(Discard::Skip(left)) => {
                let n = left.min(self.rbuf.len() as u64);
                self.rbuf.advance(n as usize);
                self.discard = Some(if n == left {
                    Discard::Skim
                } else {
                    Discard::Skip(left - n)
                });
                self.recharge();
                return true;
            }
            Some(Discard::Skim) => {
                let Some((len, is_close)) = frame::skim(&self.rbuf) else {
                    return false;
                };
                if is_close {
                    // The client answered our close: done once ours is out.
                    self.client_closed = true;
                    self.rbuf.clear();
                    self.recharge();
                    return true;
                }
                self.discard = Some(Discard::Skip(len));
                return true;
            }
        }
        match self.decoder.decode(&mut self.rbuf) {
            Ok(Decoded::Frame(frame)) => {
                self.frame_hint = None;
                // Its last bytes came with the last read (one clock read
                // per read, not per frame).
                self.last_seen = self.last_read;
                self.ping_sent = false;
                // (Its bytes are given back once its message is offered.)
                self.on_frame(frame, batch);
                true
            }
            Ok(Decoded::Incomplete { frame_len }) => {
                self.frame_hint = frame_len;
                false
            }
            Err(err) => {
                self.frame_hint = None;
                let discard = match err {
                    // Read past the rest of it, so that the client gets to
                    // read our 1009 rather than a reset connection.
                    FrameError::TooLarge { frame_len, .. } => {
                        crate::metrics::refused(Limit::MessageSize);
                        Discard::Skip(frame_len)
                    }
                    // Frame boundaries still hold: wait for the client's close.
                    FrameError::Utf8 => Discard::Skim,
                    FrameError::Protocol(_) => Discard::Raw,
                };
                self.fail(err.close_code(), err.to_string(), discard);
                true
            }
        }
    }

    /// Closes because of the client's input: tells the client why, drops
    /// what it sends from now on as `discard` says, and reports `code` to
    /// `on_close`.
    fn fail(&mut self, code: u16, reason: String, discard: Discard) {
        tracing::debug!(id = %Trunc(self.conn.id()), code, reason = %Trunc(&reason), "closing on bad input");
        self.start_close(code, &reason, true);
        self.info = Some(CloseInfo {
            code,
            reason,
            was_clean: false,
        });
        self.discard = Some(discard);
        self.decoder = Decoder::new(self.env.max_message);
        self.frame_hint = None;
        self.recharge();
    }

    fn on_frame(&mut self, frame: Frame, batch: &mut Batch) {
        match frame {
            Frame::Text(bytes) => {
                self.deliver(Message::Text(Utf8Bytes::from_checked(bytes)), batch);
            }
            Frame::Binary(bytes) => self.deliver(Message::Binary(bytes), batch),
            Frame::Ping(payload) => self.queue_control(Opcode::Pong, payload),
            Frame::Pong => {}
            Frame::Close(close) => {
                self.client_closed = true;
                let (code, reason) = close.unwrap_or((1005, String::new()));
                // Answer with the same code and reason (an empty close for
                // none), unless we began the handshake.
                self.start_close(code, &reason, true);
                self.info.get_or_insert(CloseInfo {
                    code,
                    reason,
                    was_clean: true,
                });
                self.discard = Some(Discard::Raw);
            }
        }
    }

    /// Adds a message to those offered to the instance after this read.
    fn deliver(&mut self, message: Message, batch: &mut Batch) {
        if self.close_deadline.is_some() || self.instance.is_none() {
            // Closing: messages no longer reach the agent.
            return;
        }
        self.metrics.received.increment(1);
        self.metrics.received_bytes.increment(message.len() as u64);
        batch.push(message);
        if batch.len() >= READ_BATCH {
            self.offer(batch);
        }
    }

    /// Hands the decoded messages to the instance as one event, or waits
    /// for room in its inbox; then gives back the read budget they held.
    fn offer(&mut self, batch: &mut Batch) {
        if let Some(instance) = &mut self.instance {
            let key = self.conn.key();
            let (admit, len) = match std::mem::take(batch) {
                Batch::Empty => (Admit::Done, 0),
                Batch::One(message) => {
                    let len = message.len();
                    (instance.admit(key, message), len)
                }
                Batch::Many(messages) => {
                    let len = messages.iter().map(Message::len).sum();
                    (instance.admit_many(key, messages), len)
                }
            };
            match admit {
                Admit::Done => {}
                Admit::Closed => self.done = true,
                Admit::Wait(waiting) => {
                    self.admitting = Some(waiting);
                    self.admitting_len = len;
                }
            }
        }
        self.recharge();
    }

    /// Brings the read-budget charge in line with what is held; false (and
    /// nothing more charged) when the budget has no room.
    fn recharge(&mut self) -> bool {
        let now = self.rbuf.len() + self.decoder.fragment_bytes() + self.admitting_len;
        if now == self.held {
            return true;
        }
        if now > self.held {
            if !self.env.read_budget.take(now - self.held) {
                return false;
            }
        } else {
            self.env.read_budget.give(self.held - now);
        }
        self.held = now;
        true
    }

    /// Notes when a message began arriving, for its deadline.
    fn track_assembly(&mut self) {
        let assembling =
            self.discard.is_none() && (!self.rbuf.is_empty() || self.decoder.fragment_bytes() > 0);
        match (assembling, self.assembling_since) {
            (true, None) => self.assembling_since = Some(self.last_read),
            (false, Some(_)) => self.assembling_since = None,
            _ => {}
        }
    }

    /// The earliest deadline: closing, message, write progress, ping/silence.
    fn next_deadline(&self) -> Instant {
        let ping = self.env.ping_interval;
        let mut at = if self.ping_sent {
            self.last_seen + 2 * ping
        } else {
            self.last_seen + ping
        };
        if let Some(close) = self.close_deadline {
            at = at.min(close);
        }
        if let Some(since) = self.assembling_since {
            at = at
                .min(since + self.env.message_timeout)
                .min(self.last_read + self.env.message_idle_timeout);
        }
        if let Some(stalled) = self.write_stalled_since {
            at = at.min(stalled + self.env.slow_consumer_timeout);
        }
        at
    }

    /// Runs what is due; true when something was (a ping or a close to
    /// write, say). The timer is moved earlier at once, but never later
    /// (that would touch the timer wheel on every frame): when it fires
    /// with nothing due, it is re-armed for the new deadline.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut fired = false;
        for _ in 0..4 {
            let at = self.next_deadline();
            if at < self.sleep.deadline() {
                self.sleep.as_mut().reset(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            if self.on_deadline(Instant::now()) {
                fired = true;
            } else {
                let at = self.next_deadline();
                self.sleep.as_mut().reset(at);
            }
            if self.done {
                break;
            }
        }
        fired
    }

    /// Acts on the first deadline that passed; false when none had.
    fn on_deadline(&mut self, now: Instant) -> bool {
        let id = Trunc(self.conn.id());
        if self.close_deadline.is_some_and(|d| now >= d) {
            tracing::debug!(%id, "closing handshake timed out");
            self.done = true;
        } else if self
            .write_stalled_since
            .is_some_and(|s| now >= s + self.env.slow_consumer_timeout)
        {
            tracing::warn!(%id, "client stopped reading; closing the connection");
            crate::metrics::slow_consumer();
            self.done = true;
        } else if self.assembling_since.is_some_and(|since| {
            now >= since + self.env.message_timeout
                || now >= self.last_read + self.env.message_idle_timeout
        }) {
            self.assembling_since = None;
            crate::metrics::refused(Limit::MessageTimeout);
            self.fail(1013, "Message took too long".to_owned(), Discard::Skim);
        } else if now >= self.last_seen + 2 * self.env.ping_interval {
            tracing::debug!(%id, "client silent for two ping intervals; closing");
            self.done = true;
        } else if !self.ping_sent && now >= self.last_seen + self.env.ping_interval {
            self.ping_sent = true;
            self.queue_control(Opcode::Ping, Bytes::new());
        } else {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(n: usize) -> VecDeque<Write> {
        (0..n)
            .map(|i| Write::new(Opcode::Text, format!("frame {i}").into(), WriteKind::Data))
            .collect()
    }

    fn wire<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Vec<u8> {
        let mut out = Vec::new();
        for w in writes {
            out.extend_from_slice(&w.header[..usize::from(w.header_len)]);
            out.extend_from_slice(&w.payload);
        }
        out
    }

    fn joined(slices: &[IoSlice<'_>]) -> Vec<u8> {
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn frame_slices_start_where_the_last_write_stopped() {
        let w = writes(3);
        let all = wire(&w);
        let header = usize::from(w[0].header_len);
        for skip in [0, 1, header, header + 2, w[0].len() - 1] {
            let mut slices = [IoSlice::new(&[]); 6];
            let n = frame_slices(&w, skip, &mut slices);
            assert_eq!(joined(&slices[..n]), &all[skip..], "skip {skip}");
        }
    }

    #[test]
    fn frame_slices_take_whole_frames_while_they_fit() {
        let w = writes(5);
        for room in [2, 3, 5, 9, 10, 11, 64] {
            let mut slices = vec![IoSlice::new(&[]); room];
            let n = frame_slices(&w, 0, &mut slices);
            let frames = (room / 2).min(5);
            assert_eq!(n, 2 * frames, "room {room}");
            assert_eq!(joined(&slices[..n]), wire(w.iter().take(frames)));
        }
        // A first frame whose header is out takes one slice.
        let skip = usize::from(w[0].header_len) + 1;
        let mut slices = [IoSlice::new(&[]); 4];
        let n = frame_slices(&w, skip, &mut slices);
        assert_eq!(n, 3);
        assert_eq!(joined(&slices[..n]), &wire(w.iter().take(2))[skip..]);
    }
}
