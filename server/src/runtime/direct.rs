//! Direct connections between cluster nodes: one TCP connection from an
//! entry node to an owner carries the frames that would otherwise cross
//! NATS twice (client messages up, the owner's frames down), in order.
//! NATS still carries leases, ownership, state, the opening of each
//! forwarded socket, plain HTTP and the peers' pings.
//!
//! Why: through NATS each frame wakes three processes (sender, nats-server,
//! receiver) where a direct connection wakes two; on a small machine that
//! is most of a forwarded round trip's cost (`docs/benchmarks.md`).
//!
//! On the wire, after a hello, each record is `[len u32][key u64][frame]`
//! (`len` counts the key and the frame): up, `key` is the socket's key on
//! the entry node; down it is 0 (a downlink frame names its sockets).
//!
//! The hello proves to each side that the other knows the owner's secret,
//! without sending it (the owner tells the secret only over NATS). On
//! accept the owner sends `[MAGIC][owner nonce, 16 bytes]`; the entry
//! answers `[MAGIC][entry nonce, 16][mac "up", 32][id length u8][entry
//! node id]`; once the owner registered the link it sends `[MAGIC][mac
//! "down", 32]`. Each mac is HMAC-SHA256 under the one secret of the way
//! (`up` or `down`), both nonces and the id, so a hello seen on the
//! network cannot be replayed, nor an answer reflected. Nothing binds the
//! hello to what follows, which is neither encrypted nor authenticated:
//! whoever can redirect or alter the connection can speak on it, so links
//! belong on a private network.
//!
//! Each side sends a heartbeat (an empty record for key `u64::MAX`) when it
//! had nothing to send for [`HEARTBEAT`], and ends the link when it read
//! nothing for [`SILENCE`]: a peer that stopped (paused, or cut off while
//! NATS still reaches it) is noticed as its pings would notice it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock;

/// Bytes of records queued for one link's writer before senders wait (as
/// a NATS client's publish waits for room in its connection's queue);
/// each record counts [`RECORD_COST`] over its frame.
pub(crate) const LINK_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// What a record costs of [`LINK_QUEUE_BYTES`] on top of its frame.
const RECORD_COST: usize = 64;

/// Records one vectored write of the writer task takes at most.
const WRITE_BATCH: usize = 256;

/// The largest record a link reads (a larger one ends the link): the
/// largest NATS message a node sends (NATS allows at most 64 MiB) and the
/// record's key.
pub(crate) const MAX_RECORD: usize = 64 * 1024 * 1024 + 1024;

/// Bytes read at once when no larger record is expected.
const READ_CHUNK: usize = 64 * 1024;

/// How long connecting, and the hello, may take.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Strangers whose hello a node reads at once; more are turned away.
pub(crate) const MAX_HELLOS: usize = 64;

/// How long a link's writer stays quiet before it sends a heartbeat.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a link may read nothing (heartbeats included) before it ends.
pub(crate) const SILENCE: Duration = Duration::from_millis(1500);

/// The key of a heartbeat record (never a socket's).
const HEARTBEAT_KEY: u64 = u64::MAX;

/// What each message of a link's hello starts with.
const MAGIC: &[u8; 4] = b"AGL2";

/// Bytes of a hello's nonce.
const NONCE: usize = 16;

/// Bytes of a hello's mac (HMAC-SHA256).
const MAC: usize = 32;

/// Bytes of a record's header (`len` and `key`).
const RECORD_HEAD: usize = 12;

/// A link's shared secret.
pub(crate) type Secret = [u8; 16];

/// Sends records on a link (in order); cloned by everything that sends.
///
/// A sender writes its record to the socket itself when nothing is queued
/// and nobody else is writing; otherwise (or for what the socket did not
/// take at once) the link's writer task writes it. Handing every record to
/// that task would cost a task switch per record, and, on a busy chain of
/// tasks (socket → forwarder → instance → downlink), a wake-up of another
/// thread of the runtime: most of a forwarded frame's cost on a small
/// machine (`docs/benchmarks.md`).
#[derive(Debug, Clone)]
pub(crate) struct LinkTx {
    link: Arc<Senders>,
}

/// Dropped with the last [`LinkTx`]: the writer task then writes what is
/// queued and ends the link.
#[derive(Debug)]
struct Senders(Arc<Shared>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task when there is something queued for it.
    wake: Notify,
    /// Whether every [`LinkTx`] was dropped.
    gone: AtomicBool,
    /// What may still be queued ([`LINK_QUEUE_BYTES`]).
    room: Arc<Semaphore>,
    dead: CancellationToken,
}

#[derive(Debug)]
struct State {
    /// Records not written yet; the first may be partly written.
    queue: VecDeque<Out>,
    /// Whether someone (a sender, or the writer task) is writing: then
    /// nobody else may, or records could interleave.
    busy: bool,
    /// When the link last wrote (for heartbeats).
    wrote: Instant,
    /// The socket; `None` once the link ended.
    write: Option<Arc<OwnedWriteHalf>>,
}

/// What a link's writer writes: a record, or (`raw`) bytes as they are.
#[derive(Debug)]
struct Out {
    head: [u8; RECORD_HEAD],
    frame: Bytes,
    raw: bool,
    /// Bytes of it already written.
    done: usize,
    /// Its room in the queue, given back once written.
    _room: Option<OwnedSemaphorePermit>,
}

impl Out {
    fn new(key: u64, frame: Bytes, raw: bool, room: Option<OwnedSemaphorePermit>) -> Out {
        let mut head = [0u8; RECORD_HEAD];
        head[..4].copy_from_slice(&((8 + frame.len()) as u32).to_be_bytes());
        head[4..].copy_from_slice(&key.to_be_bytes());
        Out {
            head,
            frame,
            raw,
            done: 0,
            _room: room,
        }
    }

    /// Adds what is left of it to `slices`.
    fn slices<'a>(&'a self, slices: &mut Vec<IoSlice<'a>>) {
        let head: &[u8] = if self.raw { &[] } else { &self.head };
        let (head, frame) = match self.done.checked_sub(head.len()) {
            None => (&head[self.done..], &self.frame[..]),
            Some(done) => (&[][..], &self.frame[done..]),
        };
        for part in [head, frame] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }

    fn len(&self) -> usize {
        (if self.raw { 0 } else { RECORD_HEAD }) + self.frame.len()
    }
}

impl LinkTx {
    /// Queues a record once there is room, or writes it at once; false
    /// when the link is gone.
    pub(crate) async fn send(&self, key: u64, frame: Bytes) -> bool {
        let cost = (frame.len() + RECORD_COST).min(LINK_QUEUE_BYTES) as u32;
        let Ok(room) = self.link.0.room.clone().acquire_many_owned(cost).await else {
            return false;
        };
        self.put(Out::new(key, frame, false, Some(room)))
    }

    /// Owner side: answers the peer's hello (before anything else).
    pub(crate) fn welcome(&self, hello: &Hello) -> bool {
        self.put(Out::new(0, hello.answer.clone(), true, None))
    }

    fn put(&self, mut out: Out) -> bool {
        let write = {
            let mut state = lock(&self.link.0.state);
            let write = match &state.write {
                Some(write) if !self.link.0.dead.is_cancelled() => write.clone(),
                _ => return false,
            };
            if state.busy || !state.queue.is_empty() {
                state.queue.push_back(out);
                if !state.busy {
                    self.link.0.wake.notify_one();
                }
                return true;
            }
            state.busy = true;
            write
        };
        let mut slices = Vec::with_capacity(2);
        out.slices(&mut slices);
        let wrote = write.try_write_vectored(&slices);
        drop(slices);
        let mut state = lock(&self.link.0.state);
        state.busy = false;
        if state.write.is_none() {
            // The link ended meanwhile.
            return false;
        }
        match wrote {
            Ok(n) if n > 0 => {
                state.wrote = Instant::now();
                out.done = n;
                if n < out.len() {
                    state.queue.push_front(out);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => state.queue.push_front(out),
            Ok(_) | Err(_) => {
                // Nobody writes after a failed write (the socket may hold
                // part of this record).
                state.write = None;
                drop(state);
                self.link.0.dead.cancel();
                return false;
            }
        }
        if !state.queue.is_empty() {
            self.link.0.wake.notify_one();
        }
        true
    }
}

/// The records a link reads: `(key, frame)`; ends with the link (closed,
/// broken, silent, or a record over [`MAX_RECORD`]).
pub(crate) type Records = BoxStream<'static, (u64, Bytes)>;

/// Starts a link's writer task; it ends (and `dead` is cancelled) when
/// writing fails, and it stops, even in the middle of a write, once `dead`
/// is.
pub(crate) fn start(stream: TcpStream, dead: CancellationToken) -> (LinkTx, Records) {
    let (read, write) = stream.into_split();
    let link = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            busy: false,
            wrote: Instant::now(),
            write: Some(Arc::new(write)),
        }),
        wake: Notify::new(),
        gone: AtomicBool::new(false),
        room: Arc::new(Semaphore::new(LINK_QUEUE_BYTES)),
        dead,
    });
    tokio::spawn(writer(link.clone()));
    let link = Arc::new(Senders(link));
    (LinkTx { link }, records(read))
}

/// Writes what senders could not, and heartbeats; when it ends, so does
/// the link (and the socket closes once no sender holds it any more).
async fn writer(link: Arc<Shared>) {
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);
    loop {
        // A batch to write (on this socket), or how long to wait.
        let next = {
            let mut state = lock(&link.state);
            let Some(write) = &state.write else { break };
            if state.busy {
                // A sender writes; it wakes us if it leaves anything.
                Err(HEARTBEAT)
            } else if state.queue.is_empty() {
                if link.gone.load(Ordering::Acquire) {
                    // Every sender gone, and all they sent written.
                    break;
                }
                Err(HEARTBEAT.saturating_sub(state.wrote.elapsed()))
            } else {
                let write = write.clone();
                state.busy = true;
                let n = state.queue.len().min(WRITE_BATCH);
                batch.extend(state.queue.drain(..n));
                Ok(write)
            }
        };
        let write = match next {
            Ok(write) => write,
            Err(wait) => {
                let wait = tokio::time::timeout(wait, link.wake.notified());
                tokio::select! {
                    () = link.dead.cancelled() => break,
                    woken = wait => if woken.is_err() {
                        let mut state = lock(&link.state);
                        if !state.busy && state.queue.is_empty() && state.wrote.elapsed() >= HEARTBEAT {
                            state.queue.push_back(Out::new(HEARTBEAT_KEY, Bytes::new(), false, None));
                        }
                    },
                }
                continue;
            }
        };
        let written = write_all(&write, &mut batch, &link.dead).await;
        batch.clear();
        {
            let mut state = lock(&link.state);
            if !written {
                // Still busy: nobody writes after a failed write (the
                // socket may hold part of a record).
                state.write = None;
                break;
            }
            state.busy = false;
            state.wrote = Instant::now();
        }
        // However busy the link, other tasks on this thread get their turn.
        tokio::task::consume_budget().await;
    }
    link.dead.cancel();
    // Senders waiting for room hear that the link is gone.
    link.room.close();
    let mut state = lock(&link.state);
    state.write = None;
    state.queue.clear();
}

/// Writes `batch` on `write`; false when writing failed or `dead` was
/// cancelled first.
async fn write_all(write: &OwnedWriteHalf, batch: &mut [Out], dead: &CancellationToken) -> bool {
    let mut first = 0;
    while first < batch.len() {
        let mut slices = Vec::with_capacity(2 * (batch.len() - first));
        for out in &batch[first..] {
            out.slices(&mut slices);
        }
        let wrote = write.try_write_vectored(&slices);
        drop(slices);
        match wrote {
            Ok(0) => return false,
            Ok(mut n) => {
                while n > 0 {
                    let out = &mut batch[first];
                    let step = n.min(out.len() - out.done);
                    out.done += step;
                    n -= step;
                    if out.done == out.len() {
                        first += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::select! {
                    () = dead.cancelled() => return false,
                    ready = write.writable() => if ready.is_err() {
                        return false;
                    },
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// A link's records, read as they arrive (heartbeats skipped).
fn records(read: OwnedReadHalf) -> Records {
    futures_util::stream::unfold((read, BytesMut::new()), |(mut read, mut buf)| async move {
        loop {
            if buf.len() >= RECORD_HEAD {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if !(8..=MAX_RECORD).contains(&len) {
                    tracing::warn!(len, "bad record on a link between nodes; closing it");
                    return None;
                }
                if buf.len() >= 4 + len {
                    buf.advance(4);
                    let key = buf.get_u64();
                    let frame = buf.split_to(len - 8).freeze();
                    if key == HEARTBEAT_KEY {
                        continue;
                    }
                    return Some(((key, frame), (read, buf)));
                }
                buf.reserve(4 + len - buf.len());
            } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match tokio::time::timeout(SILENCE, read.read_buf(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::warn!("a link between nodes went silent; closing it");
                    return None;
                }
            }
        }
    })
    .boxed()
}

/// Entry side: connects to an owner's link at `addr` and says hello as
/// node `me`; fails unless the owner proves it knows `secret`.
pub(crate) async fn connect(addr: &str, secret: &Secret, me: &str) -> std::io::Result<TcpStream> {
    let hello = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut challenge = [0u8; 4 + NONCE];
        stream.read_exact(&mut challenge).await?;
        let (magic, theirs) = challenge.split_at(4);
        if magic != MAGIC {
            return Err(invalid("not a link"));
        }
        let theirs: [u8; NONCE] = theirs.try_into().map_err(|_| invalid("short nonce"))?;
        let ours: [u8; NONCE] = rand::random();
        let id = me.as_bytes();
        let said = Transcript {
            owner: &theirs,
            entry: &ours,
            id,
        };
        let mut hello = Vec::with_capacity(4 + NONCE + MAC + 1 + id.len());
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&ours);
        hello.extend_from_slice(said.mac(secret, b"up").as_ref());
        hello.push(u8::try_from(id.len()).map_err(|_| invalid("node id too long"))?);
        hello.extend_from_slice(id);
        stream.write_all(&hello).await?;
        let mut answer = [0u8; 4 + MAC];
        stream.read_exact(&mut answer).await?;
        let (magic, proof) = answer.split_at(4);
        if magic != MAGIC || !said.verify(secret, b"down", proof) {
            return Err(invalid("the owner does not know the secret"));
        }
        Ok(stream)
    };
    tokio::time::timeout(HELLO_TIMEOUT, hello)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "hello timed out"))?
}

/// An entry node's hello, heard and checked by the owner.
#[derive(Debug)]
pub(crate) struct Hello {
    /// The entry node's id.
    pub(crate) id: String,
    /// What tells it the link is on ([`LinkTx::welcome`]).
    answer: Bytes,
}

/// Owner side: challenges an accepted connection and reads its hello;
/// `None` unless it proves it knows `secret` (then welcome it once the
/// link is registered: [`LinkTx::welcome`]).
pub(crate) async fn hello(stream: &mut TcpStream, secret: &Secret) -> Option<Hello> {
    let hello = async {
        stream.set_nodelay(true).ok()?;
        let ours: [u8; NONCE] = rand::random();
        let mut challenge = MAGIC.to_vec();
        challenge.extend_from_slice(&ours);
        stream.write_all(&challenge).await.ok()?;
        let mut head = [0u8; 4 + NONCE + MAC + 1];
        stream.read_exact(&mut head).await.ok()?;
        let mut id = vec![0u8; usize::from(head[4 + NONCE + MAC])];
        stream.read_exact(&mut id).await.ok()?;
        let theirs: [u8; NONCE] = head[4..4 + NONCE].try_into().ok()?;
        let proof = &head[4 + NONCE..4 + NONCE + MAC];
        let said = Transcript {
            owner: &ours,
            entry: &theirs,
            id: &id,
        };
        if &head[..4] != MAGIC || !said.verify(secret, b"up", proof) {
            return None;
        }
        let mut answer = MAGIC.to_vec();
        answer.extend_from_slice(said.mac(secret, b"down").as_ref());
        let id = String::from_utf8(id).ok().filter(|id| !id.is_empty())?;
        Some(Hello {
            id,
            answer: answer.into(),
        })
    };
    tokio::time::timeout(HELLO_TIMEOUT, hello)
        .await
        .ok()
        .flatten()
}

/// What a hello's macs sign: both nonces and the entry node's id.
struct Transcript<'a> {
    owner: &'a [u8; NONCE],
    entry: &'a [u8; NONCE],
    id: &'a [u8],
}

impl Transcript<'_> {
    /// The mac of one way (`b"up"` or `b"down"`) of the hello.
    fn mac(&self, secret: &Secret, way: &[u8]) -> ring::hmac::Tag {
        let (key, data) = self.signed(secret, way);
        ring::hmac::sign(&key, &data)
    }

    /// Whether `proof` is that mac (compared in constant time).
    fn verify(&self, secret: &Secret, way: &[u8], proof: &[u8]) -> bool {
        let (key, data) = self.signed(secret, way);
        ring::hmac::verify(&key, &data, proof).is_ok()
    }

    fn signed(&self, secret: &Secret, way: &[u8]) -> (ring::hmac::Key, Vec<u8>) {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        (key, [way, self.owner, self.entry, self.id].concat())
    }
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// The address other nodes reach `bound` at: `advertise` when given, else
/// `bound` itself (which must then name one interface).
pub(crate) fn advertised(
    bound: SocketAddr,
    advertise: Option<&str>,
) -> Result<String, &'static str> {
    match advertise {
        Some(a) => Ok(a.to_owned()),
        None if bound.ip().is_unspecified() => Err(
            "it listens on every interface: say where other nodes reach it (--direct-advertise)",
        ),
        None => Ok(bound.to_string()),
    }
}

/// A secret for a node's link.
pub(crate) fn new_secret() -> Secret {
    rand::random()
}

/// A secret as text (for the NATS answer that tells it).
pub(crate) fn secret_hex(secret: &Secret) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret read back from [`secret_hex`].
pub(crate) fn parse_secret(hex: &str) -> Option<Secret> {
    let mut secret = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (i, b) in secret.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner with `secret` and an entry that knows `[7; 16]`: the id
    /// the owner read, the entry's connection, and the owner's link.
    async fn pair(
        secret: Secret,
    ) -> (
        Option<String>,
        std::io::Result<TcpStream>,
        Option<(LinkTx, Records)>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let owner = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // As the node does: a link only after a good hello (else the
            // connection is dropped).
            let heard = hello(&mut s, &secret).await?;
            let (tx, records) = start(s, CancellationToken::new());
            assert!(tx.welcome(&heard));
            Some((heard.id, tx, records))
        });
        let entry = connect(&addr, &[7; 16], "node-b").await;
        match owner.await.unwrap() {
            Some((id, tx, records)) => (Some(id), entry, Some((tx, records))),
            None => (None, entry, None),
        }
    }

    #[tokio::test]
    async fn a_link_carries_records_in_order_and_only_with_the_secret() {
        let (id, entry, link) = pair([7; 16]).await;
        assert_eq!(id.as_deref(), Some("node-b"));
        let (down, mut up) = link.unwrap();
        let (tx, mut records) = start(entry.unwrap(), CancellationToken::new());
        assert!(tx.send(5, Bytes::from_static(b"hi")).await);
        assert!(tx.send(6, Bytes::new()).await);
        assert_eq!(up.next().await, Some((5, Bytes::from_static(b"hi"))));
        assert_eq!(up.next().await, Some((6, Bytes::new())));
        assert!(down.send(0, Bytes::from_static(b"down")).await);
        assert_eq!(records.next().await, Some((0, Bytes::from_static(b"down"))));
        // Quiet for longer than the silence allowed: heartbeats keep it
        // (nothing read, and the link did not end).
        let quiet = tokio::time::timeout(SILENCE * 2, up.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        assert!(tx.send(7, Bytes::from_static(b"still")).await);
        assert_eq!(up.next().await, Some((7, Bytes::from_static(b"still"))));
        // The entry's last sender gone: the owner reads the end at once.
        drop(tx);
        let end = tokio::time::timeout(SILENCE / 2, up.next()).await;
        assert_eq!(end, Ok(None));

        let (id, entry, link) = pair([8; 16]).await;
        assert_eq!(id, None);
        assert!(link.is_none());
        let err = entry.expect_err("a wrong secret gets no answer");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn senders_racing_a_full_socket_keep_their_order() {
        let (_, entry, link) = pair([7; 16]).await;
        let (_down, mut up) = link.unwrap();
        let (tx, _records) = start(entry.unwrap(), CancellationToken::new());
        // Four senders, each with numbered records, some larger than a
        // socket's buffer, while nobody reads: most wait for the writer.
        let (senders, each) = (4u64, 60u32);
        let mut tasks = Vec::new();
        for key in 1..=senders {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..each {
                    let mut frame = i.to_be_bytes().to_vec();
                    frame.resize(if i % 7 == 0 { 300_000 } else { 40 }, key as u8);
                    assert!(tx.send(key, Bytes::from(frame)).await);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut next = vec![0u32; senders as usize + 1];
        for _ in 0..senders * u64::from(each) {
            let (key, frame) = up.next().await.expect("a record");
            let i = u32::from_be_bytes(frame[..4].try_into().unwrap());
            assert_eq!(i, next[key as usize], "sender {key}'s records in order");
            assert!(frame[4..].iter().all(|&b| b == key as u8));
            next[key as usize] += 1;
        }
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_hello_cannot_be_replayed_nor_an_owner_faked() {
        let secret = [7; 16];
        // A hello as an entry node sends it, for the challenge `first`.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let eavesdropped = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let first = [1u8; NONCE];
            s.write_all(&[&MAGIC[..], &first].concat()).await.unwrap();
            let mut hello = vec![0u8; 4 + NONCE + MAC + 1 + 6];
            s.read_exact(&mut hello).await.unwrap();
            // Answered with the entry's own mac, reflected: the entry
            // gives up.
            let reflected = &hello[4 + NONCE..4 + NONCE + MAC];
            s.write_all(&[&MAGIC[..], reflected].concat())
                .await
                .unwrap();
            hello
        });
        let faked = connect(&addr, &secret, "node-b").await;
        let err = faked.expect_err("an owner that does not know the secret");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        let hello_bytes = eavesdropped.await.unwrap();

        // The real owner challenges anew: the recorded hello is refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let owner = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            hello(&mut s, &secret).await.map(|h| h.id)
        });
        let mut replay = TcpStream::connect(addr).await.unwrap();
        let mut challenge = [0u8; 4 + NONCE];
        replay.read_exact(&mut challenge).await.unwrap();
        assert_eq!(&challenge[..4], MAGIC);
        replay.write_all(&hello_bytes).await.unwrap();
        assert_eq!(owner.await.unwrap(), None);
        assert!(!hello_bytes
            .windows(secret.len())
            .any(|w| w == secret.as_slice()));
    }

    #[tokio::test]
    async fn a_silent_link_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (owner, _) = listener.accept().await.unwrap();
        let (_tx, mut records) = start(owner, CancellationToken::new());
        let started = std::time::Instant::now();
        assert_eq!(records.next().await, None);
        assert!(started.elapsed() >= SILENCE);
    }

    #[tokio::test]
    async fn an_oversized_or_short_record_ends_the_link() {
        for len in [(MAX_RECORD + 1) as u32, 7] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut sender = TcpStream::connect(addr).await.unwrap();
            let (owner, _) = listener.accept().await.unwrap();
            let (_, mut records) = start(owner, CancellationToken::new());
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0; 20]);
            sender.write_all(&bytes).await.unwrap();
            assert_eq!(records.next().await, None);
        }
    }

    #[test]
    fn secrets_go_through_text_and_advertised_addresses_name_one_interface() {
        let s = new_secret();
        assert_eq!(parse_secret(&secret_hex(&s)), Some(s));
        assert_eq!(parse_secret("zz"), None);
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(advertised(any, None).is_err());
        assert_eq!(
            advertised(any, Some("10.0.0.5:7000")).unwrap(),
            "10.0.0.5:7000"
        );
        let one: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(advertised(one, None).unwrap(), "127.0.0.1:7000");
    }
}
