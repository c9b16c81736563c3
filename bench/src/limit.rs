//! The bare WebSocket server `agents-bench --serve-limit` runs: the limit of
//! this machine for the benchmark scenarios. One task per socket, no agent
//! runtime, no actor, no storage, no JSON beyond reading an RPC frame — but
//! the same bytes on the wire as `agents-server` with the example agents:
//!
//! - `/agents/echo-agent/<name>`: the identity and MCP frames on connect;
//!   every message echoed to its sender; a `cf_agent_state` frame relayed as
//!   is to the other sockets of the instance (as the echo-agent broadcasts a
//!   client's new state).
//! - `/agents/counter-agent/<name>`: identity (`stateFollows`), the state
//!   `{"count":N}` and MCP frames on connect; `broadcast:<x>` sends `<x>` to
//!   every socket of the instance, the sender included; the RPC `increment`
//!   adds to the count, sends `{"type":"cf_agent_state","state":{"count":N}}`
//!   to every socket of the instance, then the RPC reply to the caller.
//!
//! What the perf notes say matters is done here: a frame for many sockets is
//! encoded once and shared (`Bytes`); a socket writes everything queued for
//! it in one vectored write; the read buffer (4 KiB, more only for a larger
//! frame) exists only while bytes are arriving. Not a general server:
//! fragmented messages are refused (close 1003), messages are capped at
//! 32 MiB (close 1009), and a socket's queue is bounded only by the load
//! tool's scenarios, which always read what they are sent.
//!
//! With `--relay NATS_URL`, the echo-agent's echoes go through NATS and a
//! bare echo (`--nats-echo`) instead: see [`crate::relay`].

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::relay::Relay;

/// Largest message accepted, as `agents-server`'s default.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Bytes read per system call when no larger frame is expected.
const READ_CHUNK: usize = 4096;
/// Longest HTTP upgrade request head.
const MAX_HEAD: usize = 8192;
/// Frames handed to one vectored write (under the kernel's `IOV_MAX`).
const WRITE_FRAMES: usize = 512;

/// The MCP frame both example agents send on connect.
const MCP_FRAME: &str = r#"{"mcp":{"prompts":[],"resources":[],"servers":{},"tools":[]},"type":"cf_agent_mcp_servers"}"#;
/// How a client's new state begins.
const STATE_PREFIX: &[u8] = br#"{"type":"cf_agent_state""#;

/// Runs the server on 127.0.0.1:`port` until the process is killed; echoes
/// go through NATS at `relay` when given.
pub(crate) fn serve(port: u16, relay: Option<&str>) -> Result<()> {
    // The default multi-thread runtime, as `agents-server` uses: one worker
    // per core the process may run on.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let relay = match relay {
            Some(url) => Some(Relay::start(url, frame).await?),
            None => None,
        };
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "agents-bench limit server listening on http://{}",
            listener.local_addr()?
        );
        let hub = Arc::new(Hub {
            relay,
            ..Hub::default()
        });
        loop {
            let (stream, _) = listener.accept().await?;
            let hub = hub.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let _ = socket(stream, hub).await;
            });
        }
    })
}

/// The instances ("rooms") by path, each with its sockets.
#[derive(Debug, Default)]
struct Hub {
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    next_key: AtomicU64,
    /// Where echoes go when they go through NATS.
    relay: Option<Arc<Relay>>,
}

/// One instance: its sockets and the counter's count.
#[derive(Debug, Default)]
struct Room {
    peers: Vec<(u64, mpsc::UnboundedSender<Bytes>)>,
    count: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    Echo,
    Counter,
}

/// A text or binary frame as bytes ready to write: header and payload.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= 0xffff => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// A JSON string literal for `s`.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Reads the upgrade request; answers 101 and returns the agent and name.
async fn upgrade(stream: &mut TcpStream) -> Result<(Agent, String)> {
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "closed during the handshake");
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = memchr::memmem::find(&head, b"\r\n\r\n") {
            break at;
        }
        ensure!(head.len() <= MAX_HEAD, "request head too long");
    };
    // The client sends nothing more before it reads our answer.
    ensure!(end + 4 == head.len(), "bytes after the request head");
    let text = std::str::from_utf8(&head[..end])?;
    let mut lines = text.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .context("not a GET request")?;
    let key = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim())
        .context("no Sec-WebSocket-Key")?;
    let path = target.split('?').next().unwrap_or("");
    let mut parts = path.trim_start_matches('/').split('/');
    let (agent, name) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("agents"), Some("echo-agent"), Some(name), None) if !name.is_empty() => {
            (Agent::Echo, name)
        }
        (Some("agents"), Some("counter-agent"), Some(name), None) if !name.is_empty() => {
            (Agent::Counter, name)
        }
        _ => {
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await?;
            bail!("not an agent path: {path}");
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    Ok((agent, name.to_owned()))
}

/// One socket, from the upgrade to the end, in one task.
async fn socket(mut stream: TcpStream, hub: Arc<Hub>) -> Result<()> {
    let (agent, name) = upgrade(&mut stream).await?;
    let room_key = format!("{agent:?}/{name}");
    let key = hub.next_key.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(relay) = &hub.relay {
        relay.join(key, tx.clone());
    }
    let mut conn = Conn {
        agent,
        key,
        room: Arc::default(),
        out: Vec::new(),
        rx,
        relay: hub.relay.clone(),
        up: Vec::new(),
    };
    {
        // Joined (and left) under the hub's lock, so that a room is never
        // dropped while a socket joins it.
        let mut rooms = hub.rooms.lock().expect("hub lock");
        conn.room = rooms.entry(room_key.clone()).or_default().clone();
        let mut room = conn.room.lock().expect("room lock");
        room.peers.push((key, tx));
        let agent_name = match agent {
            Agent::Echo => "echo-agent",
            Agent::Counter => "counter-agent",
        };
        let follows = if agent == Agent::Counter {
            r#","stateFollows":true"#
        } else {
            ""
        };
        let identity = format!(
            r#"{{"type":"cf_agent_identity","name":{},"agent":"{agent_name}"{follows}}}"#,
            json_str(&name)
        );
        conn.out.push(frame(1, identity.as_bytes()));
        if agent == Agent::Counter {
            conn.out.push(frame(1, state_json(room.count).as_bytes()));
        }
        conn.out.push(frame(1, MCP_FRAME.as_bytes()));
    }
    let result = conn.run(&mut stream).await;
    if let Some(relay) = &hub.relay {
        relay.leave(key);
    }
    let mut rooms = hub.rooms.lock().expect("hub lock");
    let mut room = conn.room.lock().expect("room lock");
    room.peers.retain(|(k, _)| *k != key);
    if room.peers.is_empty() {
        rooms.remove(&room_key);
    }
    result
}

fn state_json(count: i64) -> String {
    format!(r#"{{"type":"cf_agent_state","state":{{"count":{count}}}}}"#)
}

/// An RPC request, as much of it as `increment` needs.
#[derive(Deserialize)]
struct RpcRequest<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    method: &'a str,
    #[serde(default)]
    args: Vec<serde_json::Value>,
}

/// What the socket task owns.
struct Conn {
    agent: Agent,
    key: u64,
    room: Arc<Mutex<Room>>,
    /// Frames for this socket, written together.
    out: Vec<Bytes>,
    /// Frames other sockets (or the relay) queued for this one.
    rx: mpsc::UnboundedReceiver<Bytes>,
    relay: Option<Arc<Relay>>,
    /// Echoes to send through the relay.
    up: Vec<Bytes>,
}

/// What reading one frame asks of the socket loop.
enum Next {
    Continue,
    Close(Bytes),
}

impl Conn {
    async fn run(&mut self, stream: &mut TcpStream) -> Result<()> {
        let mut rbuf = BytesMut::new();
        loop {
            self.flush(stream).await?;
            tokio::select! {
                ready = stream.readable() => {
                    ready?;
                    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                        rbuf.reserve(READ_CHUNK);
                    }
                    match stream.try_read_buf(&mut rbuf) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.into()),
                    }
                    while let Some(next) = self.decode(&mut rbuf)? {
                        if let Next::Close(payload) = next {
                            self.out.push(frame(8, &payload));
                            self.flush(stream).await?;
                            return Ok(());
                        }
                    }
                    if rbuf.is_empty() {
                        // Nothing pending: hold no buffer while idle.
                        rbuf = BytesMut::new();
                    }
                    if let Some(relay) = &self.relay {
                        relay.send(self.up.drain(..)).await?;
                    }
                }
                Some(first) = self.rx.recv() => self.out.push(first),
            }
        }
    }

    /// Writes what is queued for this socket, in as few writes as it takes.
    async fn flush(&mut self, stream: &mut TcpStream) -> Result<()> {
        self.take_queued();
        let mut at = 0;
        let mut partial = 0;
        while at < self.out.len() {
            let slices: Vec<IoSlice<'_>> = self.out[at..]
                .iter()
                .take(WRITE_FRAMES)
                .enumerate()
                .map(|(i, f)| IoSlice::new(if i == 0 { &f[partial..] } else { f }))
                .collect();
            let mut n = stream.write_vectored(&slices).await?;
            ensure!(n > 0, "socket closed");
            while n > 0 {
                let left = self.out[at].len() - partial;
                if n < left {
                    partial += n;
                    break;
                }
                n -= left;
                partial = 0;
                at += 1;
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Moves what other sockets queued for this one behind what is in `out`.
    /// Called with the room locked before this socket adds its own copy of
    /// a room-wide frame, so that every socket sees them in the same order.
    fn take_queued(&mut self) {
        while let Ok(frame) = self.rx.try_recv() {
            self.out.push(frame);
        }
    }

    /// Decodes and handles one frame from `buf`, if it is complete.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Next>> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        ensure!(b1 & 0x80 != 0, "unmasked client frame");
        let (len, head) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into()?), 10),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if len > MAX_MESSAGE as u64 {
            return Ok(Some(Next::Close(close_payload(1009))));
        }
        let len = len as usize;
        let total = head + 4 + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mask: [u8; 4] = buf[head..head + 4].try_into()?;
        buf.advance(head + 4);
        let mut payload = buf.split_to(len);
        if mask != [0; 4] {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
        }
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if !fin || opcode == 0 {
            return Ok(Some(Next::Close(close_payload(1003))));
        }
        match opcode {
            1 => {
                if std::str::from_utf8(&payload).is_err() {
                    return Ok(Some(Next::Close(close_payload(1007))));
                }
                self.message(1, payload.freeze())?;
            }
            2 => self.message(2, payload.freeze())?,
            8 => return Ok(Some(Next::Close(payload.freeze()))),
            9 => self.out.push(frame(10, &payload)),
            10 => {}
            _ => return Ok(Some(Next::Close(close_payload(1002)))),
        }
        Ok(Some(Next::Continue))
    }

    /// What the example agents do with a message.
    fn message(&mut self, opcode: u8, payload: Bytes) -> Result<()> {
        match self.agent {
            Agent::Echo if opcode == 1 && payload.starts_with(STATE_PREFIX) => {
                self.broadcast(frame(1, &payload), false);
            }
            Agent::Echo if self.relay.is_some() => {
                if let Some(relay) = &self.relay {
                    self.up.push(relay.message(self.key, opcode, &payload));
                }
            }
            Agent::Echo => self.out.push(frame(opcode, &payload)),
            Agent::Counter if opcode == 1 => {
                if let Some(rest) = payload.strip_prefix(b"broadcast:") {
                    self.broadcast(frame(1, rest), true);
                } else if payload.starts_with(b"{") {
                    self.rpc(&payload)?;
                }
            }
            Agent::Counter => {}
        }
        Ok(())
    }

    /// Queues `frame` (encoded once) for the instance's other sockets, and
    /// for this one when `me`.
    fn broadcast(&mut self, frame: Bytes, me: bool) {
        let room = self.room.clone();
        let room = room.lock().expect("room lock");
        for (key, tx) in &room.peers {
            if *key != self.key {
                let _ = tx.send(frame.clone());
            }
        }
        if me {
            self.take_queued();
            self.out.push(frame);
        }
    }

    fn rpc(&mut self, payload: &[u8]) -> Result<()> {
        let Ok(call) = serde_json::from_slice::<RpcRequest<'_>>(payload) else {
            return Ok(());
        };
        if call.kind != "rpc" {
            return Ok(());
        }
        let id = json_str(&call.id);
        let by = call.args.first().and_then(serde_json::Value::as_i64);
        let (Some(by), "increment") = (by, call.method) else {
            let reply = format!(
                r#"{{"error":{},"id":{id},"success":false,"type":"rpc"}}"#,
                json_str(&format!("Method {} does not exist", call.method))
            );
            self.out.push(frame(1, reply.as_bytes()));
            return Ok(());
        };
        let room = self.room.clone();
        let mut room = room.lock().expect("room lock");
        room.count += by;
        let count = room.count;
        let state = frame(1, state_json(count).as_bytes());
        for (key, tx) in &room.peers {
            if *key != self.key {
                let _ = tx.send(state.clone());
            }
        }
        self.take_queued();
        self.out.push(state);
        drop(room);
        let reply =
            format!(r#"{{"done":true,"id":{id},"result":{count},"success":true,"type":"rpc"}}"#);
        self.out.push(frame(1, reply.as_bytes()));
        Ok(())
    }
}

fn close_payload(code: u16) -> Bytes {
    Bytes::copy_from_slice(&code.to_be_bytes())
}
