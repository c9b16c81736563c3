//! The load tool's WebSocket client: connections opened with
//! tokio-tungstenite (or a bare handshake, for the connect scenario), then
//! driven by [`Raw`], a bare framer, so that the tool spends its core on
//! the server's replies rather than on its own framing (the machine has two
//! cores: one for the server, one for this tool).

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A tokio-tungstenite client socket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How every server frame of a state update begins.
pub(crate) const STATE_PREFIX: &[u8] = br#"{"type":"cf_agent_state","#;

/// Opens `base` + `path` with tokio-tungstenite.
pub(crate) async fn open(base: &str, path: &str) -> Result<Ws> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connect {url}"))?;
    Ok(ws)
}

/// Reads until a text frame for which `want` is true (skipping others).
pub(crate) async fn until_text(ws: &mut Ws, mut want: impl FnMut(&str) -> bool) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if want(t.as_str()) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Waits for the connect frames (the MCP frame is the last one).
pub(crate) async fn handshake(ws: &mut Ws) -> Result<()> {
    until_text(ws, |t| t.contains("cf_agent_mcp_servers"))
        .await
        .map(drop)
}

/// Opens `path` and reads its connect frames, then hands over to [`Raw`].
pub(crate) async fn open_raw(base: &str, path: &str) -> Result<Raw> {
    let mut ws = open(base, path).await?;
    handshake(&mut ws).await?;
    Raw::from(ws)
}

/// A bare WebSocket client socket: frames are written with a zero mask and
/// parsed in place.
#[derive(Debug)]
pub(crate) struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the next unread frame begins in `buf`.
    start: usize,
}

impl Raw {
    /// Takes over a socket whose handshake frames have all been read.
    pub(crate) fn from(ws: Ws) -> Result<Raw> {
        match ws.into_inner() {
            MaybeTlsStream::Plain(stream) => Ok(Raw::new(stream)),
            _ => bail!("only plain ws:// is supported"),
        }
    }

    fn new(stream: TcpStream) -> Raw {
        let _ = stream.set_nodelay(true);
        Raw {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
        }
    }

    /// Opens `path` with a bare HTTP upgrade (no tungstenite), for the
    /// connect scenario: the client's own cost stays small.
    pub(crate) async fn connect(port: u16, path: &str) -> Result<Raw> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Raw::new(stream);
        let end = loop {
            if let Some(at) = memchr::memmem::find(&raw.buf, b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(raw.buf.len() < 16 * 1024, "response head too long");
            raw.fill().await?;
        };
        ensure!(
            raw.buf.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {}",
            String::from_utf8_lossy(&raw.buf[..end.min(80)])
        );
        raw.start = end;
        Ok(raw)
    }

    /// One text frame, written at once.
    pub(crate) async fn send_text(&mut self, text: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(text.len() + 14);
        push_frame(&mut frame, 0x1, text);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Bytes already framed by [`push_frame`], written at once.
    pub(crate) async fn send_raw(&mut self, frames: &[u8]) -> Result<()> {
        self.stream.write_all(frames).await?;
        Ok(())
    }

    /// Whether a whole frame is already buffered (no read needed).
    pub(crate) fn has_frame(&self) -> bool {
        matches!(frame_at(&self.buf[self.start..]), Some((_, _, Some(_))))
    }

    /// The next text frame's payload, borrowed until the next call (other
    /// frames are skipped; a close frame is an error).
    pub(crate) async fn next_text(&mut self) -> Result<&[u8]> {
        loop {
            if let Some((opcode, head, Some(len))) = frame_at(&self.buf[self.start..]) {
                let at = self.start + head;
                self.start = at + len;
                ensure!(opcode != 8, "closed by server");
                if opcode == 1 {
                    return Ok(&self.buf[at..at + len]);
                }
                continue;
            }
            self.fill().await?;
        }
    }

    /// The number `N` of the next text frame `<tag>N` (other frames are
    /// skipped).
    pub(crate) async fn next_numbered(&mut self, tag: u8) -> Result<usize> {
        loop {
            let t = self.next_text().await?;
            if t.first() == Some(&tag) {
                return Ok(std::str::from_utf8(&t[1..])?.parse()?);
            }
        }
    }

    /// Sends a close frame and reads until the server hangs up.
    pub(crate) async fn close(mut self) -> Result<()> {
        let mut frame = Vec::new();
        push_frame(&mut frame, 0x8, &1000u16.to_be_bytes());
        self.stream.write_all(&frame).await?;
        let mut sink = [0u8; 1024];
        while self.stream.read(&mut sink).await? > 0 {}
        Ok(())
    }

    /// Reads more bytes (dropping what was consumed first).
    async fn fill(&mut self) -> Result<()> {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        ensure!(n > 0, "connection ended");
        Ok(())
    }
}

/// The frame at the front of `buf`: opcode, header length and, once it is
/// all there, payload length.
fn frame_at(buf: &[u8]) -> Option<(u8, usize, Option<usize>)> {
    if buf.len() < 2 {
        return None;
    }
    let (opcode, len7) = (buf[0] & 0x0f, (buf[1] & 0x7f) as usize);
    let (len, head) = match len7 {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n, 2),
    };
    Some((opcode, head, (buf.len() >= head + len).then_some(len)))
}

/// Appends a client frame (FIN, `opcode`, zero mask) carrying `payload`.
pub(crate) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]); // zero mask: payload as is
    out.extend_from_slice(payload);
}
