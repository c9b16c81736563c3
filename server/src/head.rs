//! The first request head of a fresh connection, read and parsed without
//! hyper, and a response written back the same way: how a WebSocket upgrade
//! is answered in the task that accepted the connection (see
//! [`Agents::serve`](crate::Agents::serve)). Anything else goes on to hyper,
//! with the bytes read so far in front of the stream ([`Prefixed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes asked of the socket per read while a head is arriving (a
/// browser's upgrade request is 400–700 bytes).
const HEAD_CHUNK: usize = 2048;
/// Most header lines parsed here; a head with more goes to hyper (whose
/// limit is 100).
const MAX_HEADERS: usize = 64;
/// Largest body a refusal may have (a hook's response); beyond it the
/// client gets 500.
const MAX_REFUSAL_BODY: usize = 1024 * 1024;

/// Reads into `buf` until it holds a whole request head, and returns the
/// head's length; `None` when the buffer passed `max` bytes first or the
/// peer stopped sending (hyper then answers, e.g. 431).
pub(crate) async fn read_head<T>(
    io: &mut T,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<Option<usize>>
where
    T: AsyncRead + Unpin,
{
    let mut searched = 0;
    loop {
        if let Some(at) = memchr::memmem::find(&buf[searched..], b"\r\n\r\n") {
            let len = searched + at + 4;
            return Ok((len <= max).then_some(len));
        }
        // The terminator may straddle two reads.
        searched = buf.len().saturating_sub(3);
        if buf.len() > max {
            return Ok(None);
        }
        buf.reserve(HEAD_CHUNK);
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// A request head: what an upgrade and the `on_connect` hook see.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
}

/// Parses an HTTP/1.1 request head; `None` for anything unusual (HTTP/1.0,
/// too many headers, a target that is not a path, bytes `http` refuses),
/// which hyper then answers as it would any request.
pub(crate) fn parse(bytes: &[u8]) -> Option<Head> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    if request.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(request.method?.as_bytes()).ok()?;
    let path = request.path?;
    if !path.starts_with('/') {
        return None;
    }
    let uri = Uri::try_from(path).ok()?;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for line in request.headers.iter() {
        headers.append(
            HeaderName::from_bytes(line.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(line.value).ok()?,
        );
    }
    Some(Head {
        method,
        uri,
        headers,
    })
}

/// Writes `response` as HTTP/1.1: a `101` as is (the socket follows), any
/// other status with its body, its length and `connection: close` (the
/// connection ends after it).
pub(crate) async fn write_response<T>(io: &mut T, response: Response) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    let (mut parts, body) = response.into_parts();
    let mut out = Vec::with_capacity(256);
    let body = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        Bytes::new()
    } else {
        let body = match axum::body::to_bytes(body, MAX_REFUSAL_BODY).await {
            Ok(body) => body,
            Err(err) => {
                tracing::warn!(cause = %err, "a refusal's body could not be read");
                parts.status = StatusCode::INTERNAL_SERVER_ERROR;
                parts.headers.clear();
                Bytes::new()
            }
        };
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if !parts.headers.contains_key(header::DATE) {
            let now = httpdate::fmt_http_date(std::time::SystemTime::now());
            if let Ok(date) = HeaderValue::from_str(&now) {
                parts.headers.insert(header::DATE, date);
            }
        }
        body
    };
    debug_assert_eq!(parts.version, Version::HTTP_11);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    io.write_all(&out).await
}

/// A stream with bytes already read from it put back in front: what hyper
/// reads when the first head was not an upgrade answered here.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /agents/echo-agent/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nX-Two: 1\r\nx-two: 2\r\n\r\n";

    #[tokio::test]
    async fn reads_a_head_that_arrives_in_pieces_and_keeps_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in UPGRADE.chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(b"\x81\x00").await.unwrap();
            client
        });
        let mut buf = BytesMut::new();
        let len = loop {
            // The frame may or may not have arrived with the head's end.
            if let Some(len) = read_head(&mut server, &mut buf, 8192).await.unwrap() {
                break len;
            }
        };
        assert_eq!(&buf[..len], UPGRADE);
        let _client = writer.await.unwrap();
        let head = parse(&buf[..len]).unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/agents/echo-agent/a");
        assert_eq!(head.uri.query(), Some("x=1"));
        let twos: Vec<_> = head.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
    }

    #[tokio::test]
    async fn stops_at_the_limit_and_at_the_end_of_the_stream() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(&[b'a'; 5000]).await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(read_head(&mut server, &mut buf, 4096).await.unwrap(), None);
        assert!(buf.len() > 4096);
        // A whole head in one read, but over the limit.
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(long.as_bytes()).await.unwrap();
        let mut buf = BytesMut::with_capacity(1 << 14);
        assert_eq!(read_head(&mut server, &mut buf, 4096).await.unwrap(), None);
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(long.as_bytes()).await.unwrap();
        let mut buf = BytesMut::with_capacity(1 << 14);
        let whole = read_head(&mut server, &mut buf, 1 << 20).await.unwrap();
        assert_eq!(whole, Some(long.len()));
        drop(client);
        let mut buf = BytesMut::new();
        assert_eq!(
            read_head(&mut server, &mut buf, 1 << 20).await.unwrap(),
            None
        );
    }

    #[test]
    fn leaves_unusual_heads_to_hyper() {
        for bad in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"GET http://h/a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX: \x01\r\n\r\n",
            b"GET /a HTTP/1.1\r\n",
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert!(parse(format!("GET /a HTTP/1.1\r\n{many}\r\n").as_bytes()).is_none());
    }

    #[tokio::test]
    async fn writes_refusals_with_their_length_and_a_close() {
        let response = crate::upgrade::refuse(StatusCode::FORBIDDEN, "Origin not allowed");
        let mut out = Vec::new();
        write_response(&mut out, response).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 18\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\nOrigin not allowed"), "{text}");
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut both = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        both.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
