//! The bare relay through NATS: the machine's limit for echo through a
//! cluster node that does not own the instance. `agents-bench
//! --serve-limit --relay NATS_URL` is the entry side (the bare WebSocket
//! server, whose echo-agent messages go to NATS and come back from it) and
//! `agents-bench --nats-echo NATS_URL` the owner side (every message sent
//! back as it came). What `agents-server` adds on top: per-socket
//! sequence numbers and flow control, the owner's actor, instance and
//! connection queues, and its downlink's grouping.
//!
//! One NATS message each way per echo, as `agents-server` sends when one
//! message per socket is in flight: up on `relay.up.<entry>` with
//! `[socket key u64][opcode u8][payload]`, back the same on
//! `relay.down.<entry>`; each process has one subscription.
//!
//! With `--relay tcp://ADDR` the messages go instead over one TCP
//! connection straight to `agents-bench --tcp-echo`, each prefixed with its
//! length (`u32`), and come back as they went: the limit of forwarding
//! without a broker in between.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The entry side's link to NATS: where a socket's messages go, and the
/// sockets the echoes come back to.
#[derive(Debug)]
pub(crate) struct Relay {
    up: Up,
    sockets: Mutex<HashMap<u64, mpsc::UnboundedSender<Bytes>>>,
}

/// Where the messages go.
#[derive(Debug)]
enum Up {
    Nats(async_nats::Client, async_nats::Subject),
    /// To the task writing the TCP connection.
    Tcp(mpsc::UnboundedSender<Bytes>),
}

impl Relay {
    /// Connects to NATS and starts taking the echoes back; `frame` makes a
    /// WebSocket frame of an opcode and payload.
    pub(crate) async fn start(
        url: &str,
        frame: fn(u8, &[u8]) -> Bytes,
    ) -> Result<std::sync::Arc<Relay>> {
        if let Some(addr) = url.strip_prefix("tcp://") {
            return Self::start_tcp(addr, frame).await;
        }
        let client = async_nats::connect(url)
            .await
            .context("connecting to NATS")?;
        let id = std::process::id();
        let mut down = client.subscribe(format!("relay.down.{id}")).await?;
        let relay = std::sync::Arc::new(Relay {
            up: Up::Nats(client, format!("relay.up.{id}").into()),
            sockets: Mutex::default(),
        });
        let back = relay.clone();
        tokio::spawn(async move {
            while let Some(msg) = down.next().await {
                back.deliver(&msg.payload, frame);
            }
        });
        Ok(relay)
    }

    async fn start_tcp(addr: &str, frame: fn(u8, &[u8]) -> Bytes) -> Result<std::sync::Arc<Relay>> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .context("connecting to the TCP echo")?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let relay = std::sync::Arc::new(Relay {
            up: Up::Tcp(tx),
            sockets: Mutex::default(),
        });
        // Writes everything queued in one vectored write, as a NATS client does.
        tokio::spawn(async move {
            let mut queued = Vec::new();
            while rx.recv_many(&mut queued, 512).await > 0 {
                let mut slices: Vec<std::io::IoSlice<'_>> =
                    queued.iter().map(|b| std::io::IoSlice::new(b)).collect();
                let mut slices = &mut slices[..];
                while !slices.is_empty() {
                    match write.write_vectored(slices).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
                    }
                }
                queued.clear();
            }
        });
        let back = relay.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while buf.len() >= 4 {
                    let len = u32::from_be_bytes(buf[..4].try_into().unwrap_or_default()) as usize;
                    if buf.len() < 4 + len {
                        break;
                    }
                    buf.advance(4);
                    let message = buf.split_to(len);
                    back.deliver(&message, frame);
                }
                buf.reserve(64 * 1024);
            }
        });
        Ok(relay)
    }

    /// Hands an echo to its socket.
    fn deliver(&self, p: &[u8], frame: fn(u8, &[u8]) -> Bytes) {
        if p.len() < 9 {
            return;
        }
        let key = u64::from_be_bytes(p[..8].try_into().unwrap_or_default());
        if let Some(tx) = self.sockets.lock().expect("relay lock").get(&key) {
            let _ = tx.send(frame(p[8], &p[9..]));
        }
    }

    /// Echoes to socket `key` go to `tx`.
    pub(crate) fn join(&self, key: u64, tx: mpsc::UnboundedSender<Bytes>) {
        self.sockets.lock().expect("relay lock").insert(key, tx);
    }

    pub(crate) fn leave(&self, key: u64) {
        self.sockets.lock().expect("relay lock").remove(&key);
    }

    /// The message up for socket `key`'s message.
    pub(crate) fn message(&self, key: u64, opcode: u8, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(13 + payload.len());
        if let Up::Tcp(_) = self.up {
            b.put_u32(9 + payload.len() as u32);
        }
        b.put_u64(key);
        b.put_u8(opcode);
        b.put_slice(payload);
        b.freeze()
    }

    /// Publishes messages made by [`Relay::message`], in order.
    pub(crate) async fn send(&self, messages: impl Iterator<Item = Bytes>) -> Result<()> {
        match &self.up {
            Up::Nats(client, up) => {
                for m in messages {
                    client.publish(up.clone(), m).await?;
                }
            }
            Up::Tcp(tx) => {
                for m in messages {
                    tx.send(m)?;
                }
            }
        }
        Ok(())
    }
}

/// The owner side (`--nats-echo`): sends every message on `relay.up.<x>`
/// back on `relay.down.<x>`, until the process is killed.
pub(crate) fn echo(url: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = async_nats::connect(url)
            .await
            .context("connecting to NATS")?;
        let mut up = client.subscribe("relay.up.*").await?;
        client.flush().await?;
        println!("agents-bench NATS echo subscribed");
        while let Some(msg) = up.next().await {
            let entry = msg.subject.rsplit('.').next().unwrap_or_default();
            client
                .publish(format!("relay.down.{entry}"), msg.payload)
                .await?;
        }
        Ok(())
    })
}

/// The owner side over TCP (`--tcp-echo PORT`): sends back every byte it
/// reads, on each connection, until the process is killed.
pub(crate) fn tcp_echo(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "agents-bench TCP echo listening on http://{}",
            listener.local_addr()?
        );
        loop {
            let (mut stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}
