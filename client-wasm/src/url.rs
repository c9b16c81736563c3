//! Building the socket URL exactly as the reference (partysocket's
//! `getPartyInfo` plus `AgentClient`'s option mapping).

use alloc::borrow::ToOwned;
use alloc::string::String;

use crate::error::ClientError;
use crate::text::push_hex_upper;

/// The address parts of the options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Address {
    /// Agent class or binding name; kebab-cased into the URL.
    pub agent: String,
    /// Instance name (default `"default"`).
    pub name: String,
    /// `host[:port]`, optionally with a scheme prefix.
    pub host: String,
    /// Replaces `<prefix>/<agent>/<name>` when set.
    pub base_path: Option<String>,
    /// Defaults to `agents`.
    pub prefix: Option<String>,
    /// Appended after the name; must not start with `/`.
    pub path: Option<String>,
    /// `ws` or `wss`; chosen from the host when absent.
    pub protocol: Option<String>,
}

impl Address {
    /// The URL without the query:
    /// `<ws|wss>://<host>/<basePath | prefix/kebab(agent)/name>[/<path>]`.
    pub fn base_url(&self) -> Result<String, ClientError> {
        let host = normalize_host(&self.host);
        if host.is_empty() {
            return Err(ClientError::Options("host must not be empty".into()));
        }
        let suffix = match self.path.as_deref() {
            Some(p) if p.starts_with('/') => {
                return Err(ClientError::Options(
                    "path must not start with a slash".into(),
                ))
            }
            Some("") | None => String::new(),
            Some(p) => "/".to_owned() + p,
        };
        let scheme = match self.protocol.as_deref() {
            Some(p @ ("ws" | "wss")) => p,
            Some(other) => {
                return Err(ClientError::Options(
                    "protocol must be \"ws\" or \"wss\", not \"".to_owned() + other + "\"",
                ))
            }
            None if is_local(host) => "ws",
            None => "wss",
        };
        let target = match self.base_path.as_deref().filter(|b| !b.is_empty()) {
            Some(base) => base.to_owned(),
            None => {
                if self.agent.is_empty() {
                    return Err(ClientError::Options("agent is required".into()));
                }
                let prefix = self
                    .prefix
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("agents");
                let name = if self.name.is_empty() {
                    "default"
                } else {
                    &self.name
                };
                prefix.to_owned() + "/" + &kebab(&self.agent) + "/" + name
            }
        };
        Ok(scheme.to_owned() + "://" + host + "/" + &target + &suffix)
    }

    /// The instance's URL over HTTP(S) for `agentFetch`: the socket URL's
    /// scheme swapped, no `_pk`, and always a `?` (as the reference's).
    pub fn http_url<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<String, ClientError> {
        let base = self.base_url()?;
        let mut url = String::from("http") + base.strip_prefix("ws").unwrap_or(&base) + "?";
        push_pairs(&mut url, pairs, "");
        Ok(url)
    }
}

/// The reference's kebab-case rule. In the browser the Unicode case mapping
/// is JavaScript's, so Rust's case tables stay out of the WebAssembly.
pub fn kebab(agent: &str) -> String {
    #[cfg(target_arch = "wasm32")]
    {
        agents_protocol::camel_case_to_kebab_case_with(
            agent,
            |s| js_case(s, true),
            |s| js_case(s, false),
        )
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        agents_protocol::camel_case_to_kebab_case(agent)
    }
}

/// JavaScript's `toUpperCase()` or `toLowerCase()` of `s`.
#[cfg(target_arch = "wasm32")]
fn js_case(s: &str, upper: bool) -> String {
    let s = js_sys::JsString::from(s);
    let cased = if upper {
        s.to_upper_case()
    } else {
        s.to_lower_case()
    };
    cased.as_string().unwrap_or_default()
}

/// Strips one leading scheme and one trailing `/`.
fn normalize_host(host: &str) -> &str {
    let host = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find_map(|p| host.strip_prefix(p))
        .unwrap_or(host);
    host.strip_suffix('/').unwrap_or(host)
}

/// partysocket's "plain ws" heuristic (string comparisons, as the original).
fn is_local(host: &str) -> bool {
    if [
        "localhost:",
        "127.0.0.1:",
        "192.168.",
        "10.",
        "[::ffff:7f00:1]:",
    ]
    .iter()
    .any(|p| host.starts_with(p))
    {
        return true;
    }
    if let Some(rest) = host.strip_prefix("172.") {
        let end = rest.bytes().position(|b| b == b'.').unwrap_or(rest.len());
        let second = rest.get(..end).unwrap_or("");
        // A string comparison, like the original's.
        return ("16"..="31").contains(&second);
    }
    false
}

/// `base?_pk=<id>&k=v…`, encoded like `URLSearchParams` (space → `+`).
pub fn with_query<'a>(
    base: &str,
    id: &str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut url = String::with_capacity(base.len() + 64);
    url.push_str(base);
    url.push_str("?_pk=");
    form_encode(&mut url, id);
    push_pairs(&mut url, pairs, "&");
    url
}

/// Appends `k=v` pairs joined by `&`, the first preceded by `first`.
fn push_pairs<'a>(
    url: &mut String,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    first: &str,
) {
    let mut sep = first;
    for (k, v) in pairs {
        url.push_str(sep);
        sep = "&";
        form_encode(url, k);
        url.push('=');
        form_encode(url, v);
    }
}

/// application/x-www-form-urlencoded, as `URLSearchParams.toString()`.
fn form_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                push_hex_upper(out, b.into(), 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(agent: &str, name: &str, host: &str) -> Address {
        Address {
            agent: agent.into(),
            name: name.into(),
            host: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_spec_examples() {
        let a = addr("ChatRoom", "lobby", "app.example.com");
        assert_eq!(
            a.base_url().unwrap(),
            "wss://app.example.com/agents/chat-room/lobby"
        );
        let mut b = addr("MyAgent", "", "localhost:8787");
        b.path = Some("settings".into());
        let url = with_query(&b.base_url().unwrap(), "id-1", [("token", "t")]);
        assert_eq!(
            url,
            "ws://localhost:8787/agents/my-agent/default/settings?_pk=id-1&token=t"
        );
    }

    #[test]
    fn host_and_scheme_rules() {
        let base = |h: &str| addr("A", "n", h).base_url().unwrap();
        assert_eq!(base("https://example.com/"), "wss://example.com/agents/a/n");
        assert_eq!(base("127.0.0.1:8787"), "ws://127.0.0.1:8787/agents/a/n");
        assert_eq!(base("localhost"), "wss://localhost/agents/a/n");
        assert_eq!(base("192.168.1.2"), "ws://192.168.1.2/agents/a/n");
        assert_eq!(base("172.16.0.1"), "ws://172.16.0.1/agents/a/n");
        assert_eq!(base("172.32.0.1"), "wss://172.32.0.1/agents/a/n");
        // String comparisons, as the original: "2" lies between "16" and "31".
        assert_eq!(base("172.2.0.1"), "ws://172.2.0.1/agents/a/n");
        assert_eq!(base("172.4.0.1"), "wss://172.4.0.1/agents/a/n");
        let mut explicit = addr("A", "n", "example.com");
        explicit.protocol = Some("ws".into());
        assert_eq!(explicit.base_url().unwrap(), "ws://example.com/agents/a/n");
    }

    #[test]
    fn base_path_prefix_and_errors() {
        let mut a = addr("A", "n", "h.com");
        a.prefix = Some("api/v1".into());
        assert_eq!(a.base_url().unwrap(), "wss://h.com/api/v1/a/n");
        a.base_path = Some("custom/route".into());
        a.path = Some("x".into());
        assert_eq!(a.base_url().unwrap(), "wss://h.com/custom/route/x");
        a.path = Some("/x".into());
        assert_eq!(
            a.base_url().unwrap_err().to_string(),
            "path must not start with a slash"
        );
        assert!(addr("", "n", "h").base_url().is_err());
        assert!(addr("A", "n", "").base_url().is_err());
        let mut p = addr("A", "n", "h");
        p.protocol = Some("http".into());
        assert!(p.base_url().is_err());
    }

    #[test]
    fn http_url_for_agent_fetch() {
        let a = addr("CounterAgent", "c 1", "127.0.0.1:8787");
        assert_eq!(
            a.http_url([]).unwrap(),
            "http://127.0.0.1:8787/agents/counter-agent/c 1?"
        );
        let b = addr("A", "n", "example.com");
        assert_eq!(
            b.http_url([("t", "x y"), ("k", "v")]).unwrap(),
            "https://example.com/agents/a/n?t=x+y&k=v"
        );
    }

    #[test]
    fn query_encoding_matches_url_search_params() {
        let url = with_query("ws://h/a", "x y", [("q", "a&b=c"), ("é", "~!*'()")]);
        assert_eq!(url, "ws://h/a?_pk=x+y&q=a%26b%3Dc&%C3%A9=%7E%21*%27%28%29");
    }
}
