//! The WebSocket opening handshake (RFC 6455 §4.2) on an HTTP/1.1 request:
//! checks the request and builds the `101 Switching Protocols` answer.

use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use sha1::{Digest, Sha1};

/// The GUID every accept key is derived with.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Why a WebSocket request is refused: the status and the text saying why.
pub(crate) type Refusal = (StatusCode, &'static str);

/// Checks a WebSocket request and answers with the `101` response, or says
/// what is wrong with it.
pub(crate) fn accept(method: &Method, headers: &HeaderMap) -> Result<Response, Refusal> {
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method must be `GET`",
        ));
    }
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    if !connection_upgrade {
        return Err((
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        ));
    };
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()));
    // A browser fails the handshake unless one offered subprotocol is
    // selected; we take the client's first.
    if let Some(protocol) = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        out.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok(response)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

/// A plain-text refusal.
pub(crate) fn refuse(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn checks_each_part_of_the_request() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", " , chat, superchat"),
        ];
        let ok = accept(&Method::GET, &headers(&good)).unwrap();
        assert_eq!(ok.status(), 101);
        assert_eq!(ok.headers()["sec-websocket-protocol"], "chat");
        assert_eq!(accept(&Method::POST, &headers(&good)).unwrap_err().0, 405);
        for drop in ["connection", "sec-websocket-version", "sec-websocket-key"] {
            let partial: Vec<_> = good.iter().copied().filter(|(k, _)| *k != drop).collect();
            assert_eq!(
                accept(&Method::GET, &headers(&partial)).unwrap_err().0,
                400,
                "{drop}"
            );
        }
    }
}
