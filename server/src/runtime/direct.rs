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
//! the entry node; down it is 0 (a downlink frame names its sockets). The
//! hello is `[MAGIC][secret, 16 bytes][id length u8][entry node id]`,
//! answered with `MAGIC` once the owner registered the link; the owner
//! tells the secret only over NATS, so a node must be able to use the
//! cluster's NATS to speak on a link. The secret crosses the link in the
//! clear, as everything on it: links belong on a private network.
//!
//! Each side sends a heartbeat (an empty record for key `u64::MAX`) when it
//! had nothing to send for [`HEARTBEAT`], and ends the link when it read
//! nothing for [`SILENCE`]: a peer that stopped (paused, or cut off while
//! NATS still reaches it) is noticed as its pings would notice it.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Bytes of records queued for one link's writer before senders wait (as
/// a NATS client's publish waits for room in its connection's queue);
/// each record counts [`RECORD_COST`] over its frame.
pub(crate) const LINK_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// What a record costs of [`LINK_QUEUE_BYTES`] on top of its frame.
const RECORD_COST: usize = 64;

/// Records one vectored write takes at most.
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

/// What a link's hello starts with, and its answer.
const MAGIC: &[u8; 4] = b"AGL1";

/// Bytes of a record's header (`len` and `key`).
const RECORD_HEAD: usize = 12;

/// A link's shared secret.
pub(crate) type Secret = [u8; 16];

/// Sends records on a link (in order); cloned by everything that sends.
#[derive(Debug, Clone)]
pub(crate) struct LinkTx {
    tx: mpsc::UnboundedSender<Out>,
    /// What may still be queued ([`LINK_QUEUE_BYTES`]).
    room: Arc<Semaphore>,
}

/// What a link's writer writes: a record, or (`raw`) bytes as they are.
#[derive(Debug)]
struct Out {
    key: u64,
    frame: Bytes,
    raw: bool,
    /// Its room in the queue, given back once written.
    _room: Option<OwnedSemaphorePermit>,
}

impl LinkTx {
    /// Queues a record once there is room; false when the link is gone.
    pub(crate) async fn send(&self, key: u64, frame: Bytes) -> bool {
        let cost = (frame.len() + RECORD_COST).min(LINK_QUEUE_BYTES) as u32;
        let Ok(room) = self.room.clone().acquire_many_owned(cost).await else {
            return false;
        };
        self.tx
            .send(Out {
                key,
                frame,
                raw: false,
                _room: Some(room),
            })
            .is_ok()
    }

    /// Owner side: answers the peer's hello (before anything else).
    pub(crate) fn welcome(&self) -> bool {
        self.tx
            .send(Out {
                key: 0,
                frame: Bytes::from_static(MAGIC),
                raw: true,
                _room: None,
            })
            .is_ok()
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
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(write, rx, dead));
    let room = Arc::new(Semaphore::new(LINK_QUEUE_BYTES));
    (LinkTx { tx, room }, records(read))
}

async fn writer(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    dead: CancellationToken,
) {
    let mut queued = Vec::with_capacity(WRITE_BATCH);
    let mut heads: Vec<[u8; RECORD_HEAD]> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let next = tokio::time::timeout(HEARTBEAT, rx.recv_many(&mut queued, WRITE_BATCH));
        tokio::select! {
            () = dead.cancelled() => break,
            got = next => match got {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => queued.push(Out {
                    key: HEARTBEAT_KEY,
                    frame: Bytes::new(),
                    raw: false,
                    _room: None,
                }),
            },
        }
        heads.clear();
        for out in &queued {
            let mut head = [0u8; RECORD_HEAD];
            head[..4].copy_from_slice(&((8 + out.frame.len()) as u32).to_be_bytes());
            head[4..].copy_from_slice(&out.key.to_be_bytes());
            heads.push(head);
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * queued.len());
        for (head, out) in heads.iter().zip(&queued) {
            if !out.raw {
                slices.push(IoSlice::new(head));
            }
            slices.push(IoSlice::new(&out.frame));
        }
        let mut left = &mut slices[..];
        let mut failed = false;
        while !left.is_empty() {
            let wrote = tokio::select! {
                () = dead.cancelled() => Ok(0),
                wrote = write.write_vectored(left) => wrote,
            };
            match wrote {
                Ok(0) | Err(_) => {
                    failed = true;
                    break;
                }
                Ok(n) => IoSlice::advance_slices(&mut left, n),
            }
        }
        drop(slices);
        queued.clear();
        if failed {
            break;
        }
    }
    dead.cancel();
    let _ = write.shutdown().await;
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
/// node `me`.
pub(crate) async fn connect(addr: &str, secret: &Secret, me: &str) -> std::io::Result<TcpStream> {
    let hello = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut hello = Vec::with_capacity(4 + 16 + 1 + me.len());
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(secret);
        hello.push(u8::try_from(me.len()).map_err(|_| invalid("node id too long"))?);
        hello.extend_from_slice(me.as_bytes());
        stream.write_all(&hello).await?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await?;
        if &answer != MAGIC {
            return Err(invalid("not a link"));
        }
        Ok(stream)
    };
    tokio::time::timeout(HELLO_TIMEOUT, hello)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "hello timed out"))?
}

/// Owner side: reads a hello on an accepted connection; the entry node's
/// id when it knows the secret (then answer it: [`LinkTx::welcome`]).
pub(crate) async fn hello(stream: &mut TcpStream, secret: &Secret) -> Option<String> {
    let hello = async {
        stream.set_nodelay(true).ok()?;
        let mut head = [0u8; 21];
        stream.read_exact(&mut head).await.ok()?;
        let ok = &head[..4] == MAGIC && equal(&head[4..20], secret);
        let mut id = vec![0u8; usize::from(head[20])];
        stream.read_exact(&mut id).await.ok()?;
        if !ok {
            return None;
        }
        String::from_utf8(id).ok().filter(|id| !id.is_empty())
    };
    tokio::time::timeout(HELLO_TIMEOUT, hello)
        .await
        .ok()
        .flatten()
}

/// Compares secrets in time independent of where they differ.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
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
    async fn pair(secret: Secret) -> (Option<String>, std::io::Result<TcpStream>, LinkTx, Records) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let owner = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let id = hello(&mut s, &secret).await;
            let (tx, records) = start(s, CancellationToken::new());
            if id.is_some() {
                assert!(tx.welcome());
            }
            (id, tx, records)
        });
        let entry = connect(&addr, &[7; 16], "node-b").await;
        let (id, tx, records) = owner.await.unwrap();
        (id, entry, tx, records)
    }

    #[tokio::test]
    async fn a_link_carries_records_in_order_and_only_with_the_secret() {
        let (id, entry, down, mut up) = pair([7; 16]).await;
        assert_eq!(id.as_deref(), Some("node-b"));
        let (tx, mut records) = start(entry.unwrap(), CancellationToken::new());
        assert!(tx.send(5, Bytes::from_static(b"hi")).await);
        assert!(tx.send(6, Bytes::new()).await);
        assert_eq!(up.next().await, Some((5, Bytes::from_static(b"hi"))));
        assert_eq!(up.next().await, Some((6, Bytes::new())));
        assert!(down.send(0, Bytes::from_static(b"down")).await);
        assert_eq!(records.next().await, Some((0, Bytes::from_static(b"down"))));
        // Quiet for longer than the silence allowed: heartbeats keep it.
        tokio::time::sleep(SILENCE * 2).await;
        assert!(tx.send(7, Bytes::from_static(b"still")).await);
        assert_eq!(up.next().await, Some((7, Bytes::from_static(b"still"))));
        // The entry's writer ends: the owner reads the end.
        drop(tx);
        assert_eq!(up.next().await, None);

        let (id, entry, ..) = pair([8; 16]).await;
        assert_eq!(id, None);
        assert!(entry.is_err(), "a wrong secret gets no answer");
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
