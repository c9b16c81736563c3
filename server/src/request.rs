//! The HTTP request that opened a connection, as agents see it.

use std::collections::HashMap;

use http::{HeaderMap, Method, Uri};

/// The original upgrade (or plain HTTP) request: method, URL with query,
/// headers and parsed cookies. Available in
/// [`ConnectContext::request`](crate::ConnectContext::request) and to the
/// [`on_before_connect`](crate::AgentServer::on_before_connect) hook.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    cookies: HashMap<String, String>,
    query: Vec<(String, String)>,
}

impl RequestInfo {
    /// Captures a request's head.
    pub fn new(method: Method, uri: Uri, headers: HeaderMap) -> Self {
        let cookies = parse_cookies(&headers);
        let query = uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        RequestInfo {
            method,
            uri,
            headers,
            cookies,
            query,
        }
    }

    /// The request method (`GET` for upgrades).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target as received: raw path and query.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The full URL, `http://<host><path>?<query>`, as the reference's
    /// `request.url` (the `Host` header gives the authority).
    pub fn url(&self) -> String {
        let host = self.header("host").unwrap_or("localhost");
        let target = self.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("http://{host}{target}")
    }

    /// All headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Mutable headers: an [`on_before_connect`](crate::AgentServer::on_before_connect)
    /// hook may add some (e.g. a verified user id) for the agent to read.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Decoded query pairs in order (`+` and `%xx` decoded).
    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    /// The first value of a query parameter, decoded.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Cookies from the `Cookie` headers. A repeated name keeps its first value.
    pub fn cookies(&self) -> &HashMap<String, String> {
        &self.cookies
    }

    /// One cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }
}

fn parse_cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut cookies = HashMap::new();
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((name, val)) = pair.split_once('=') else {
                continue;
            };
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(val);
            cookies
                .entry(name.to_owned())
                .or_insert_with(|| val.to_owned());
        }
    }
    cookies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_and_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            "a=1; session=\"abc\"; bad; =x; a=2".parse().unwrap(),
        );
        headers.insert("host", "127.0.0.1:8787".parse().unwrap());
        let req = RequestInfo::new(
            Method::GET,
            "/agents/echo-agent/n?_pk=x&token=a+b%21&token=2"
                .parse()
                .unwrap(),
            headers,
        );
        assert_eq!(req.query("token"), Some("a b!"));
        assert_eq!(req.query("_pk"), Some("x"));
        assert_eq!(req.cookie("a"), Some("1"));
        assert_eq!(req.cookie("session"), Some("abc"));
        assert_eq!(req.cookies().len(), 2);
        assert_eq!(
            req.url(),
            "http://127.0.0.1:8787/agents/echo-agent/n?_pk=x&token=a+b%21&token=2"
        );
    }
}
