//! Test helpers: start a server, connect clients, read frames with timeouts,
//! and a `Probe` agent that records what its hooks saw.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agents_server::{
    Agent, AgentContext, AgentServer, Agents, BoxError, Call, ConnectContext, Connection,
    HookError, Message, Reply, RpcError, StateSource,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one frame.
pub const WAIT: Duration = Duration::from_secs(5);

pub const MCP_FRAME: &str = r#"{"mcp":{"prompts":[],"resources":[],"servers":{},"tools":[]},"type":"cf_agent_mcp_servers"}"#;

/// A server running in the background on a free loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub agents: Agents,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(server: AgentServer) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let agents = server.build();
        let router = agents.router();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = agents.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, router, async {
                    let _ = stopped.await;
                })
                .await
        });
        TestServer {
            addr,
            agents,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&self.url(path)).await
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server did not stop in time")
            .unwrap()
            .unwrap();
    }

    /// A raw HTTP/1.1 GET; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }
}

pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// One WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        // No size limits of its own: the tests probe the server's.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Ws::text(text)).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(Ws::binary(data.to_vec())).await.unwrap();
    }

    /// The next data or close frame (pings and pongs are skipped).
    pub async fn next(&mut self) -> Ws {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("read error");
            if !matches!(msg, Ws::Ping(_) | Ws::Pong(_)) {
                return msg;
            }
        }
    }

    pub async fn text(&mut self) -> String {
        match self.next().await {
            Ws::Text(t) => t.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub async fn json(&mut self) -> Value {
        let text = self.text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub async fn binary(&mut self) -> Vec<u8> {
        match self.next().await {
            Ws::Binary(b) => b.to_vec(),
            other => panic!("expected binary, got {other:?}"),
        }
    }

    /// Reads the connect frames; returns the identity frame and the state (if sent).
    pub async fn handshake(&mut self) -> (Value, Option<Value>) {
        let identity = self.json().await;
        assert_eq!(identity["type"], "cf_agent_identity", "{identity}");
        let state = if identity["stateFollows"] == true {
            let state = self.json().await;
            assert_eq!(state["type"], "cf_agent_state");
            Some(state["state"].clone())
        } else {
            None
        };
        assert_eq!(self.text().await, MCP_FRAME);
        (identity, state)
    }

    /// Waits for the server's close frame, then completes the handshake
    /// (polling flushes tungstenite's echoed close frame).
    pub async fn closed(&mut self) -> (u16, String) {
        let got = loop {
            match self.next().await {
                Ws::Close(Some(f)) => break (u16::from(f.code), f.reason.as_str().to_owned()),
                Ws::Close(None) => break (1005, String::new()),
                _ => continue,
            }
        };
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        got
    }

    pub async fn close(&mut self, code: u16, reason: &str) {
        self.ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await
            .unwrap();
    }

    /// Asserts that nothing else was queued for this client: sends an RPC
    /// call to a method no agent has and requires its error reply to be the
    /// very next frame. The instance handles events in order, so anything
    /// caused by earlier events would arrive before it.
    pub async fn sentinel(&mut self) {
        let n = SENTINELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("sentinel-{n}");
        self.send(&format!(
            r#"{{"type":"rpc","id":"{id}","method":"no_such_method","args":[]}}"#
        ))
        .await;
        let next = self.json().await;
        assert_eq!(
            next,
            serde_json::json!({"type":"rpc","id":id,"success":false,"error":"Method no_such_method does not exist"}),
            "expected nothing before the sentinel reply"
        );
    }
}

static SENTINELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the probe's hooks saw, in order.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn log_lines(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// Waits until the log contains a line starting with `prefix`.
pub async fn wait_for(log: &Log, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(line) = log.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{prefix}` in {:?}",
            log_lines(log)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An agent that records its hooks and misbehaves on request:
/// query `fail=1`/`panic=1` breaks `on_connect`; messages `fail`/`panic`
/// break `on_message`; `tags=a,b`, `readonly=1`, `noproto=1` set flags;
/// `flood:<n>` sends n 1 KiB frames; `count` answers with the connection
/// count; `uri?` with the connection's URI; `sleep:<ms>` keeps the instance
/// busy.
pub struct Probe {
    pub log: Log,
}

impl Probe {
    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

impl Agent for Probe {
    type State = Value;

    async fn on_start(&mut self, cx: &mut AgentContext<Self>) -> Result<(), BoxError> {
        self.push(format!("start {}", cx.name()));
        Ok(())
    }

    fn connection_tags(&self, _conn: &Connection, ctx: &ConnectContext) -> Vec<String> {
        ctx.request()
            .query("tags")
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn should_connection_be_readonly(&self, _conn: &Connection, ctx: &ConnectContext) -> bool {
        ctx.request().query("readonly") == Some("1")
    }

    fn should_send_protocol_messages(&self, _conn: &Connection, ctx: &ConnectContext) -> bool {
        ctx.request().query("noproto") != Some("1")
    }

    async fn on_connect(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        ctx: &ConnectContext,
    ) -> Result<(), BoxError> {
        let req = ctx.request();
        self.push(format!("connect {} {} {}", conn.id(), cx.name(), req.uri()));
        self.push(format!("url {}", req.url()));
        self.push(format!("cookie {:?}", req.cookie("session")));
        self.push(format!("header {:?}", req.header("x-user")));
        self.push(format!("tags {:?}", conn.tags()));
        match req.query("fail") {
            Some("1") => return Err("connect refused".into()),
            Some("panic") => panic!("connect exploded"),
            _ => {}
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        match &message {
            Message::Text(t) => self.push(format!("message {}", t.as_str())),
            Message::Binary(b) => self.push(format!("binary {}", b.len())),
        }
        match message.as_text() {
            Some("fail") => return Err("message refused".into()),
            Some("panic") => panic!("message exploded"),
            Some("count") => conn.send(cx.connection_count().to_string())?,
            Some("uri?") => conn.send(conn.uri().to_owned())?,
            Some(t) if t.starts_with("sleep:") => {
                let ms: u64 = t["sleep:".len()..].parse()?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Some(t) if t.starts_with("flood:") => {
                let n: usize = t["flood:".len()..].parse()?;
                let chunk = Message::from(vec![7u8; 1024]);
                for _ in 0..n {
                    if conn.send(chunk.clone()).is_err() {
                        self.push("flood dropped".into());
                        break;
                    }
                }
            }
            Some(t) if t.starts_with("close:") => {
                let code: u16 = t["close:".len()..].parse()?;
                conn.close(code, "closed by agent");
            }
            Some(t) if t.starts_with("lookup:") => {
                let id = &t["lookup:".len()..];
                let answer = match cx.connection(id) {
                    Ok(Some(c)) => format!("found {}", c.id()),
                    Ok(None) => "none".to_owned(),
                    Err(e) => e.to_string(),
                };
                conn.send(answer)?;
            }
            Some(t) if t.starts_with("tagged:") => {
                let n = cx.connections_tagged(&t["tagged:".len()..]).count();
                conn.send(format!("tagged {n}"))?;
            }
            Some(t) if t.starts_with("others:") => {
                cx.broadcast(&t["others:".len()..], &[conn.id()]);
            }
            Some(t) if t.starts_with("cstate:") => {
                conn.set_state(&t["cstate:".len()..])?;
            }
            Some("cstate?") => {
                let state: Option<String> = conn.state();
                conn.send(state.unwrap_or_else(|| "unset".into()))?;
            }
            Some(t) if t.starts_with("remember:") => {
                cx.storage().put("memo", &t["remember:".len()..])?;
            }
            Some("recall") => {
                let memo: Option<String> = cx.storage().get("memo").await?;
                conn.send(memo.unwrap_or_else(|| "nothing".into()))?;
            }
            Some(t) if t.starts_with("state:") => {
                let state: Value = serde_json::from_str(&t["state:".len()..])?;
                cx.set_state(state)?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_error(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: Option<&Connection>,
        error: HookError,
    ) {
        self.push(format!(
            "error {} {error}",
            conn.map_or("-", Connection::id)
        ));
    }

    async fn on_close(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: &Connection,
        code: u16,
        reason: &str,
        was_clean: bool,
    ) -> Result<(), BoxError> {
        self.push(format!("close {} {code} {reason:?} {was_clean}", conn.id()));
        Ok(())
    }

    fn validate_state_change(&self, next: &Value, _source: &StateSource) -> Result<(), BoxError> {
        if next.get("forbidden").is_some() {
            return Err("forbidden key".into());
        }
        Ok(())
    }

    async fn on_call(
        &mut self,
        _cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> Result<Reply, RpcError> {
        match call.method() {
            "boom" => panic!("rpc exploded"),
            "fail" => Err(RpcError::msg("it failed")),
            "nothing" => Reply::none(),
            "add" => {
                let (a, b): (f64, f64) = call.args()?;
                Reply::json(&(a + b))
            }
            _ => Err(RpcError::NoSuchMethod),
        }
    }

    async fn on_state_update(
        &mut self,
        cx: &mut AgentContext<Self>,
        source: StateSource,
    ) -> Result<(), BoxError> {
        let who = match source {
            StateSource::Server => "server".to_owned(),
            StateSource::Client(c) => c.id().to_owned(),
        };
        self.push(format!(
            "state {who} {}",
            cx.state_json().unwrap_or_else(|| "none".into())
        ));
        Ok(())
    }
}

/// The example agents plus a `Probe` at `probe-agent`, sharing `log`.
pub fn server_with_probe(log: &Log) -> AgentServer {
    let log = log.clone();
    agents_server_cli::demo::server().agent("ProbeAgent", move |_| Probe { log: log.clone() })
}

pub async fn start_with_probe() -> (TestServer, Log) {
    let log = Log::default();
    (TestServer::start(server_with_probe(&log)).await, log)
}

/// A WebSocket client at the byte level, for input no well-behaved client
/// sends: partial frames, stalls, a socket that never reads.
pub struct Raw {
    pub tcp: TcpStream,
    buf: Vec<u8>,
    /// The server's answer to the upgrade request, up to its blank line.
    head: String,
}

impl Raw {
    /// Opens `path` with an upgrade request (plus `headers`); panics unless
    /// the answer is 101.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Raw {
        let (status, raw) = Self::try_connect(addr, path, headers, None).await;
        assert_eq!(status, 101, "upgrade refused");
        raw
    }

    /// Sends an upgrade request; returns the status and the socket. With
    /// `recv_buffer`, the socket's receive buffer is that small.
    pub async fn try_connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> (u16, Raw) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(addr).await.unwrap();
        Self::try_upgrade(tcp, addr, path, headers, &[]).await
    }

    /// An upgrade request's head for `path` (plus `headers`).
    pub fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// Sends an upgrade request on `tcp` (plus `headers`), followed in the
    /// same write by `then` (e.g. a first frame); returns the status and
    /// the socket.
    pub async fn try_upgrade(
        mut tcp: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        then: &[u8],
    ) -> (u16, Raw) {
        let mut req = Self::upgrade_request(addr, path, headers);
        req.extend_from_slice(then);
        tcp.write_all(&req).await.unwrap();
        let mut buf = Vec::new();
        let head_end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed during the handshake");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("no handshake answer");
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        buf.drain(..head_end);
        (status, Raw { tcp, buf, head })
    }

    /// The server's answer to the upgrade request, up to its blank line.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// What came after the answer's head: the bytes already read, then
    /// `rest`.
    pub fn body_and(&self, rest: &[u8]) -> Vec<u8> {
        [&self.buf[..], rest].concat()
    }

    /// A masked client frame.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        Self::header(fin, opcode, payload.len())
            .into_iter()
            .chain(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]))
            .collect()
    }

    /// Just the header of a masked client frame with a `len`-byte payload
    /// (the payload's bytes are masked with [`Raw::masked`]).
    pub fn header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match len {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&MASK);
        f
    }

    /// `len` payload bytes of value `byte`, masked, starting at payload offset `at`.
    pub fn masked(byte: u8, at: usize, len: usize) -> Vec<u8> {
        (at..at + len).map(|i| byte ^ MASK[i % 4]).collect()
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// The next server frame (opcode and payload); `None` once the server
    /// hung up. Panics after [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.buf.len() >= 2 {
                    let (len, at) = match self.buf[1] & 0x7f {
                        126 if self.buf.len() >= 4 => {
                            (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                        }
                        127 if self.buf.len() >= 10 => {
                            let mut l = [0u8; 8];
                            l.copy_from_slice(&self.buf[2..10]);
                            (u64::from_be_bytes(l) as usize, 10)
                        }
                        126 | 127 => (usize::MAX, 0),
                        n => (n as usize, 2),
                    };
                    if len != usize::MAX && self.buf.len() >= at + len {
                        let opcode = self.buf[0] & 0x0f;
                        let payload = self.buf[at..at + len].to_vec();
                        self.buf.drain(..at + len);
                        return Some((opcode, payload));
                    }
                }
                let mut chunk = vec![0u8; 64 * 1024];
                match self.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("timed out waiting for a server frame")
    }

    /// Reads until the server's close frame: its code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Some((0x8, p)) if p.len() >= 2 => {
                    return (
                        u16::from_be_bytes([p[0], p[1]]),
                        String::from_utf8(p[2..].to_vec()).unwrap(),
                    )
                }
                Some((0x8, _)) => return (1005, String::new()),
                Some(_) => continue,
                None => panic!("the server hung up without a close frame"),
            }
        }
    }

    /// Reads (and drops) everything until the server hangs up.
    pub async fn until_hangup(&mut self) {
        while self.next_frame().await.is_some() {}
    }
}

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
