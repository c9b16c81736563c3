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
//! answered with `MAGIC`; the owner tells the secret only over NATS, so a
//! node must be able to use the cluster's NATS to speak on a link.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records queued for one link's writer before senders wait (as a NATS
/// client's publish waits for room in its connection's queue).
const LINK_QUEUE: usize = 1024;

/// Records one vectored write takes at most.
const WRITE_BATCH: usize = 256;

/// The largest record a link reads (a larger one ends the link): the
/// largest NATS message a node sends, with room to spare.
pub(crate) const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Bytes read at once when no larger record is expected.
const READ_CHUNK: usize = 64 * 1024;

/// How long connecting, and the hello, may take.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// What a link's hello starts with, and its answer.
const MAGIC: &[u8; 4] = b"AGL1";

/// Bytes of a record's header (`len` and `key`).
const RECORD_HEAD: usize = 12;

/// A link's shared secret.
pub(crate) type Secret = [u8; 16];

/// Sends records on a link (in order); cloned by everything that sends.
#[derive(Debug, Clone)]
pub(crate) struct LinkTx(mpsc::Sender<(u64, Bytes)>);

impl LinkTx {
    /// Queues a record; false when the link is gone.
    pub(crate) async fn send(&self, key: u64, frame: Bytes) -> bool {
        self.0.send((key, frame)).await.is_ok()
    }
}

/// The records a link reads: `(key, frame)`; ends with the link (closed,
/// broken, or a record over [`MAX_RECORD`]).
pub(crate) type Records = BoxStream<'static, (u64, Bytes)>;

/// Starts a link's writer task; it ends (and `dead` is cancelled) when
/// writing fails, and it stops writing once `dead` is.
pub(crate) fn start(stream: TcpStream, dead: CancellationToken) -> (LinkTx, Records) {
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    tokio::spawn(writer(write, rx, dead));
    (LinkTx(tx), records(read))
}

async fn writer(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<(u64, Bytes)>,
    dead: CancellationToken,
) {
    let mut queued = Vec::with_capacity(WRITE_BATCH);
    let mut heads: Vec<[u8; RECORD_HEAD]> = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            () = dead.cancelled() => break,
            n = rx.recv_many(&mut queued, WRITE_BATCH) => if n == 0 { break },
        }
        heads.clear();
        for (key, frame) in &queued {
            let mut head = [0u8; RECORD_HEAD];
            head[..4].copy_from_slice(&((8 + frame.len()) as u32).to_be_bytes());
            head[4..].copy_from_slice(&key.to_be_bytes());
            heads.push(head);
        }
        let mut slices: Vec<IoSlice<'_>> = heads
            .iter()
            .zip(&queued)
            .flat_map(|(head, (_, frame))| [IoSlice::new(head), IoSlice::new(frame)])
            .collect();
        let mut left = &mut slices[..];
        let mut failed = false;
        while !left.is_empty() {
            match write.write_vectored(left).await {
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

/// A link's records, read as they arrive.
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
                    return Some(((key, frame), (read, buf)));
                }
                buf.reserve(4 + len - buf.len());
            } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
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
/// id when it knows the secret.
pub(crate) async fn accept(stream: &mut TcpStream, secret: &Secret) -> Option<String> {
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
        stream.write_all(MAGIC).await.ok()?;
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

    /// An owner with `secret` and an entry that knows `[7; 16]`: the
    /// owner's and the entry's ends, when the hello went through.
    async fn hello(secret: Secret) -> (Option<String>, std::io::Result<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let owner = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let id = accept(&mut s, &secret).await;
            (id, s)
        });
        let entry = connect(&addr, &[7; 16], "node-b").await;
        let (id, owner) = owner.await.unwrap();
        (id, entry, owner)
    }

    #[tokio::test]
    async fn a_link_carries_records_in_order_and_only_with_the_secret() {
        let (id, entry, owner) = hello([7; 16]).await;
        assert_eq!(id.as_deref(), Some("node-b"));
        let (tx, _) = start(entry.unwrap(), CancellationToken::new());
        let dead = CancellationToken::new();
        let (_, mut up) = start(owner, dead.clone());
        assert!(tx.send(5, Bytes::from_static(b"hi")).await);
        assert!(tx.send(6, Bytes::new()).await);
        assert_eq!(up.next().await, Some((5, Bytes::from_static(b"hi"))));
        assert_eq!(up.next().await, Some((6, Bytes::new())));
        // The entry's writer ends: the owner reads the end.
        drop(tx);
        assert_eq!(up.next().await, None);

        let (id, entry, _) = hello([8; 16]).await;
        assert_eq!(id, None);
        assert!(entry.is_err(), "a wrong secret gets no answer");
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
