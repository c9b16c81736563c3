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
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes asked of the socket per read while a head is arriving (a
/// browser's upgrade request is 400–700 bytes).
const HEAD_CHUNK: usize = 2048;
/// Most header lines parsed here; a head with more goes to hyper (whose
/// limit is 100).
const MAX_HEADERS: usize = 64;
/// Bytes of blank lines taken before a request line.
const MAX_LEADING_BLANK: usize = 16;
/// How long writing an answer may take.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a refused connection waits for the client to close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Most bytes read and dropped from a refused connection.
const LINGER_BYTES: usize = 64 * 1024;
/// Largest body a refusal may have (a hook's response); beyond it the
/// client gets 500.
const MAX_REFUSAL_BODY: usize = 1024 * 1024;

/// What a connection's first bytes are.
#[derive(Debug)]
pub(crate) enum First {
    /// A whole HTTP/1.1 request head of this many bytes, parsed.
    Head(Box<Head>, usize),
    /// Anything else, for hyper to answer as it would: a head over the
    /// size limit (431), bytes that are not HTTP (400), an unusual head.
    Other,
    /// The peer closed before sending a byte.
    Closed,
}

/// Reads into `buf` until it holds a whole request head, or until it is
/// clear that it will not (bytes that cannot be a head, more than `max`
/// bytes, the end of the stream). Reads at most `max + 1` bytes.
pub(crate) async fn read_head<T>(io: &mut T, buf: &mut BytesMut, max: usize) -> io::Result<First>
where
    T: AsyncRead + Unpin,
{
    // Parsed at the first bytes (what is not HTTP is known at once), then
    // again only once a line ended since the last try: a head sent a byte
    // at a time costs a parse per line, not per byte.
    let mut parsed_up_to = None;
    loop {
        let try_now = match parsed_up_to {
            None => !buf.is_empty(),
            Some(at) => memchr::memchr(b'\n', &buf[at..]).is_some(),
        };
        if try_now {
            // Blank lines before a request are allowed (and skipped), but
            // each would mean another parse from the start: a few are
            // taken, more go to hyper.
            if buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count()
                > MAX_LEADING_BLANK
            {
                return Ok(First::Other);
            }
            match parse(buf) {
                Parsed::Head(head, len) if len <= max => return Ok(First::Head(head, len)),
                Parsed::Head(..) | Parsed::Other => return Ok(First::Other),
                Parsed::Partial => parsed_up_to = Some(buf.len()),
            }
        }
        if buf.len() > max {
            return Ok(First::Other);
        }
        let room = max + 1 - buf.len();
        buf.reserve(room.min(HEAD_CHUNK));
        if (&mut *io).take(room as u64).read_buf(buf).await? == 0 {
            return Ok(if buf.is_empty() {
                First::Closed
            } else {
                First::Other
            });
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

/// What [`parse`] made of the bytes so far.
#[derive(Debug)]
enum Parsed {
    /// A whole head of this many bytes.
    Head(Box<Head>, usize),
    /// Not whole yet.
    Partial,
    /// Not what is answered here: not HTTP, HTTP/1.0, too many headers, a
    /// target that is not a path, bytes `http` refuses.
    Other,
}

/// Parses the start of an HTTP/1.1 request (line endings CRLF or LF, as
/// hyper takes them).
fn parse(bytes: &[u8]) -> Parsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let head = || {
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
        Some(Box::new(Head {
            method,
            uri,
            headers,
        }))
    };
    match head() {
        Some(head) => Parsed::Head(head, len),
        None => Parsed::Other,
    }
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
    let status = parts.status;
    let body = if status == StatusCode::SWITCHING_PROTOCOLS {
        Bytes::new()
    } else if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // Never a body, nor a length (RFC 9110 §8.6).
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
    // A client that does not read (a refusal's body can be large) does
    // not keep the task.
    match tokio::time::timeout(WRITE_TIMEOUT, io.write_all(&out)).await {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Ends a connection after a refusal was written: our side shut down,
/// then what the client still sends read and dropped (at most
/// [`LINGER_BYTES`], for at most [`LINGER`]) until it closes too, so that
/// closing does not reset the connection, which can lose the answer before
/// the client read it.
pub(crate) async fn close_after_refusal<T>(io: &mut T)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
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

    /// The bytes not read yet, and the stream.
    pub(crate) fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() || buf.remaining() == 0 {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // The buffer it pointed into is freed, not kept for the
            // connection's life.
            self.prefix = Bytes::new();
        }
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
    use axum::response::IntoResponse;

    const UPGRADE: &[u8] = b"GET /agents/echo-agent/a?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nX-Two: 1\r\nx-two: 2\r\n\r\n";

    fn head_of(first: First) -> (Box<Head>, usize) {
        match first {
            First::Head(head, len) => (head, len),
            other => panic!("not a head: {other:?}"),
        }
    }

    #[tokio::test]
    async fn reads_a_head_that_arrives_in_pieces_and_keeps_what_follows() {
        // Cut two bytes into the blank line that ends the head, then the
        // rest of the head with a frame after it.
        let cut = UPGRADE.len() - 2;
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in UPGRADE[..cut].chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut rest = UPGRADE[cut..].to_vec();
            rest.extend_from_slice(b"\x81\x00");
            client.write_all(&rest).await.unwrap();
            client
        });
        let mut buf = BytesMut::new();
        let (head, len) = head_of(read_head(&mut server, &mut buf, 8192).await.unwrap());
        let _client = writer.await.unwrap();
        assert_eq!(&buf[..len], UPGRADE);
        assert_eq!(&buf[len..], b"\x81\x00");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/agents/echo-agent/a");
        assert_eq!(head.uri.query(), Some("x=1"));
        let twos: Vec<_> = head.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
    }

    /// Reads `bytes` sent at once (and the stream left open) with `max`.
    async fn first(bytes: &[u8], max: usize) -> (First, usize) {
        let (mut client, mut server) = tokio::io::duplex(1 << 17);
        client.write_all(bytes).await.unwrap();
        let mut buf = BytesMut::new();
        let first = read_head(&mut server, &mut buf, max).await.unwrap();
        (first, buf.len())
    }

    #[tokio::test]
    async fn stops_at_the_limit_at_bad_bytes_and_at_the_end_of_the_stream() {
        // No line end within the limit: read no more than `max + 1` bytes.
        let (got, read) = first(&[b'a'; 5000], 4096).await;
        assert!(matches!(got, First::Other), "{got:?}");
        assert_eq!(read, 4097);
        // A whole head, but over the limit.
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
        assert!(matches!(first(long.as_bytes(), 4096).await.0, First::Other));
        assert_eq!(
            head_of(first(long.as_bytes(), 1 << 20).await.0).1,
            long.len()
        );
        // Bare LF line endings are a head too (hyper takes them).
        let lf = b"GET /a HTTP/1.1\nHost: h\n\n";
        assert_eq!(head_of(first(lf, 8192).await.0).1, lf.len());
        // Not HTTP (a TLS hello, say): known at once, the stream still open.
        let (got, _) = first(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 8192).await;
        assert!(matches!(got, First::Other), "{got:?}");
        // The end of the stream, before a byte and in the middle of a head.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let got = read_head(&mut server, &mut buf, 8192).await.unwrap();
        assert!(matches!(got, First::Other), "{got:?}");
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let got = read_head(&mut server, &mut BytesMut::new(), 8192)
            .await
            .unwrap();
        assert!(matches!(got, First::Closed), "{got:?}");
    }

    #[tokio::test]
    async fn takes_a_few_blank_lines_before_a_request_not_many() {
        let few = b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n";
        assert_eq!(head_of(first(few, 8192).await.0).1, few.len());
        let many = format!(
            "{}GET /a HTTP/1.1\r\n\r\n",
            "\n".repeat(MAX_LEADING_BLANK + 1)
        );
        assert!(matches!(first(many.as_bytes(), 8192).await.0, First::Other));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_a_client_that_does_not_read() {
        let (_client, mut server) = tokio::io::duplex(64);
        let response = (StatusCode::UNAUTHORIZED, "x".repeat(4096)).into_response();
        let err = write_response(&mut server, response).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn leaves_unusual_heads_to_hyper() {
        for bad in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"GET http://h/a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX: \x01\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Other),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse(b"GET /a HTTP/1.1\r\n"), Parsed::Partial));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let many = format!("GET /a HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(many.as_bytes()), Parsed::Other));
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
        // A hook's 204: no body and no length.
        let response = (StatusCode::NO_CONTENT, "ignored").into_response();
        let mut out = Vec::new();
        write_response(&mut out, response).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
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
