//! CORS for plain HTTP to agents (`agentFetch` from another origin), as the
//! reference's `routeAgentRequest({ cors })`: preflights are answered by the
//! server, and every non-WebSocket response under the prefix carries the
//! headers. WebSocket upgrades never do (browsers do not use CORS for them;
//! see [`AgentServer::allowed_origins`](crate::AgentServer::allowed_origins)).

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

/// Which origins may call, and how. Build with [`Cors::permissive`] (the
/// reference's `cors: true`) or [`Cors::origins`].
#[derive(Debug, Clone)]
pub struct Cors {
    /// `None`: any origin (`*`).
    origins: Option<Vec<String>>,
    credentials: bool,
    methods: HeaderValue,
    headers: HeaderValue,
    max_age: HeaderValue,
}

impl Cors {
    /// Any origin, methods `GET, POST, HEAD, OPTIONS`, any header, preflight
    /// cached for a day — the reference's defaults.
    pub fn permissive() -> Self {
        Cors {
            origins: None,
            credentials: false,
            methods: HeaderValue::from_static("GET, POST, HEAD, OPTIONS"),
            headers: HeaderValue::from_static("*"),
            max_age: HeaderValue::from_static("86400"),
        }
    }

    /// Only these origins (e.g. `https://app.example.com`), otherwise as
    /// [`permissive`](Self::permissive). Each allowed origin is echoed back,
    /// with `Vary: Origin`.
    pub fn origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cors {
            origins: Some(origins.into_iter().map(|o| normalize(&o.into())).collect()),
            ..Self::permissive()
        }
    }

    /// Lets browsers send cookies and HTTP auth (`credentials: "include"`):
    /// the origin is then always echoed rather than `*`, and the request's
    /// asked-for headers are echoed rather than `*`.
    pub fn allow_credentials(mut self, allow: bool) -> Self {
        self.credentials = allow;
        self
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`,
    /// if it may be served.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match (&self.origins, origin) {
            (None, Some(origin)) if self.credentials => Some(origin.clone()),
            (None, _) => Some(HeaderValue::from_static("*")),
            (Some(list), Some(origin)) => {
                let o = normalize(origin.to_str().ok()?);
                list.contains(&o).then(|| origin.clone())
            }
            (Some(_), None) => None,
        }
    }

    /// The answer to a preflight (`OPTIONS`), if this is one.
    pub(crate) fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if method != Method::OPTIONS {
            return None;
        }
        let mut response = StatusCode::OK.into_response();
        let origin = headers.get(header::ORIGIN);
        if let Some(allow) = self.allow_origin(origin) {
            let out = response.headers_mut();
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
            let allow_headers = match asked {
                Some(asked) if self.credentials => asked.clone(),
                _ => self.headers.clone(),
            };
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
            out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            self.common(out);
        }
        Some(response)
    }

    /// Adds the headers to a response for a request with `headers`.
    pub(crate) fn decorate(&self, headers: &HeaderMap, response: &mut Response) {
        if let Some(allow) = self.allow_origin(headers.get(header::ORIGIN)) {
            let out = response.headers_mut();
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            self.common(out);
        }
    }

    fn common(&self, out: &mut HeaderMap) {
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.origins.is_some() || self.credentials {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(o: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(o));
        h
    }

    #[test]
    fn permissive_answers_every_preflight_like_the_reference() {
        let cors = Cors::permissive();
        let r = cors
            .preflight(&Method::OPTIONS, &origin("https://x.example"))
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(
            h["access-control-allow-methods"],
            "GET, POST, HEAD, OPTIONS"
        );
        assert_eq!(h["access-control-allow-headers"], "*");
        assert_eq!(h["access-control-max-age"], "86400");
        assert!(cors.preflight(&Method::GET, &origin("https://x")).is_none());
    }

    #[test]
    fn a_list_echoes_allowed_origins_only() {
        let cors = Cors::origins(["https://App.example/"]).allow_credentials(true);
        let mut ok = StatusCode::OK.into_response();
        cors.decorate(&origin("https://app.example"), &mut ok);
        assert_eq!(
            ok.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
        assert_eq!(ok.headers()["vary"], "Origin");
        let mut other = StatusCode::OK.into_response();
        cors.decorate(&origin("https://evil.example"), &mut other);
        assert!(other.headers().get("access-control-allow-origin").is_none());
        let pre = cors
            .preflight(&Method::OPTIONS, &origin("https://evil.example"))
            .unwrap();
        assert!(pre.headers().get("access-control-allow-origin").is_none());
    }
}
