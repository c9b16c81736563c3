//! The constructor options: which keys exist, what each must be, and their
//! defaults (the reference's). Pure: the caller reads the raw values (from a
//! JavaScript object in the browser) and this module decides.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::ClientError;
use crate::reconnect::ReconnectOptions;
use crate::url::Address;

/// Default timeout of non-streaming calls, in ms (`0` disables).
pub const DEFAULT_CALL_TIMEOUT: f64 = 30_000.0;

/// An option's value as the caller read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw<V> {
    /// `undefined` or `null`.
    Missing,
    /// A string.
    Str(String),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A function.
    Func(V),
    /// An array.
    Array(V),
    /// Any other object.
    Object(V),
    /// Anything else (a symbol, a bigint).
    Other,
}

/// Where the query parameters come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Fixed pairs, read once.
    Static(Vec<(String, String)>),
    /// A function (sync or async) run before every connection attempt.
    Dynamic,
}

/// The `protocols` option.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocols<V> {
    /// One subprotocol.
    One(String),
    /// An array of them, handed to the socket as it is.
    List(V),
}

/// Validated options.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions<V> {
    /// Where to connect.
    pub address: Address,
    /// Query parameters after `_pk`.
    pub query: Query,
    /// The `_pk` connection id. Defaults to a random UUID.
    pub id: Option<String>,
    /// WebSocket subprotocols.
    pub protocols: Option<Protocols<V>>,
    /// Backoff and retry tuning.
    pub reconnect: ReconnectOptions,
    /// Most messages queued while disconnected. Defaults to unlimited.
    pub max_enqueued_messages: usize,
    /// Do not connect until `reconnect()`. Defaults to `false`.
    pub start_closed: bool,
    /// Timeout of non-streaming calls in ms; 0 disables. Defaults to 30 000.
    pub default_call_timeout: f64,
    /// Whether `onIdentityChange` is given (else a change is a warning).
    pub on_identity_change: bool,
}

impl<V> ClientOptions<V> {
    /// Options for `agent`/`name` on `host`, everything else at the
    /// reference's defaults.
    pub fn new(agent: &str, name: &str, host: &str) -> Self {
        ClientOptions {
            address: Address {
                agent: agent.to_owned(),
                name: name.to_owned(),
                host: host.to_owned(),
                ..Address::default()
            },
            query: Query::Static(Vec::new()),
            id: None,
            protocols: None,
            reconnect: ReconnectOptions::default(),
            max_enqueued_messages: usize::MAX,
            start_closed: false,
            default_call_timeout: DEFAULT_CALL_TIMEOUT,
            on_identity_change: false,
        }
    }
}

/// What an option's value must be (when it is not `undefined`/`null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Str,
    /// A number at least 0.
    Num0,
    /// A number at least 1.
    Num1,
    Bool,
    Func,
    /// An object or a function.
    Query,
    /// A string or an array.
    Protocols,
}

/// Every option the client reads, in the order [`parse`] checks them, with
/// its rule. The indices below name the ones [`parse`] takes out.
const OPTIONS: [(&str, Rule); 26] = [
    ("agent", Rule::Str),
    ("name", Rule::Str),
    ("host", Rule::Str),
    ("basePath", Rule::Str),
    ("prefix", Rule::Str),
    ("path", Rule::Str),
    ("protocol", Rule::Str),
    ("id", Rule::Str),
    ("query", Rule::Query),
    ("protocols", Rule::Protocols),
    ("minReconnectionDelay", Rule::Num0),
    ("maxReconnectionDelay", Rule::Num0),
    ("reconnectionDelayGrowFactor", Rule::Num1),
    ("minUptime", Rule::Num0),
    ("connectionTimeout", Rule::Num0),
    ("maxRetries", Rule::Num0),
    ("maxEnqueuedMessages", Rule::Num0),
    ("defaultCallTimeout", Rule::Num0),
    ("startClosed", Rule::Bool),
    ("onStateUpdate", Rule::Func),
    ("onStateUpdateError", Rule::Func),
    ("onIdentity", Rule::Func),
    ("onIdentityChange", Rule::Func),
    ("onConnectionError", Rule::Func),
    ("onMcpUpdate", Rule::Func),
    ("shouldReconnectOnClose", Rule::Func),
];

/// What each [`Rule`] asks for, in an error message.
const EXPECTED: [&str; 7] = [
    "a string",
    "a number >= 0",
    "a number >= 1",
    "a boolean",
    "a function",
    "an object or a function",
    "a string or an array of strings",
];

fn string<V>(raw: &mut Raw<V>) -> Option<String> {
    match core::mem::replace(raw, Raw::Missing) {
        Raw::Str(s) => Some(s),
        _ => None,
    }
}

fn number<V>(raw: &Raw<V>, default: f64) -> f64 {
    match raw {
        Raw::Num(n) => *n,
        _ => default,
    }
}

/// Validates the options. `read(key)` gives each raw value; `pairs(query)`
/// turns a query object into its pairs.
///
/// # Errors
/// [`ClientError::Options`] naming the first bad option.
pub fn parse<V>(
    mut read: impl FnMut(&'static str) -> Raw<V>,
    pairs: impl Fn(&V) -> Vec<(String, String)>,
) -> Result<ClientOptions<V>, ClientError> {
    let mut v: [Raw<V>; OPTIONS.len()] = core::array::from_fn(|_| Raw::Missing);
    for (slot, (key, rule)) in v.iter_mut().zip(OPTIONS) {
        let raw = read(key);
        let ok = match (&raw, rule) {
            (Raw::Missing, _)
            | (Raw::Str(_), Rule::Str | Rule::Protocols)
            | (Raw::Bool(_), Rule::Bool)
            | (Raw::Func(_), Rule::Func | Rule::Query)
            | (Raw::Object(_), Rule::Query)
            | (Raw::Array(_), Rule::Protocols) => true,
            (Raw::Num(n), Rule::Num0) => *n >= 0.0,
            (Raw::Num(n), Rule::Num1) => *n >= 1.0,
            _ => false,
        };
        if !ok {
            let what = EXPECTED[rule as usize];
            return Err(ClientError::Options(key.to_owned() + " must be " + what));
        }
        *slot = raw;
    }
    let r = ReconnectOptions::default();
    let queue = number(&v[16], f64::INFINITY);
    let o = ClientOptions {
        address: Address {
            agent: string(&mut v[0]).unwrap_or_default(),
            name: string(&mut v[1]).unwrap_or_else(|| "default".into()),
            host: string(&mut v[2]).unwrap_or_default(),
            base_path: string(&mut v[3]),
            prefix: string(&mut v[4]),
            path: string(&mut v[5]),
            protocol: string(&mut v[6]),
        },
        id: string(&mut v[7]),
        query: match core::mem::replace(&mut v[8], Raw::Missing) {
            Raw::Object(q) => Query::Static(pairs(&q)),
            Raw::Func(_) => Query::Dynamic,
            _ => Query::Static(Vec::new()),
        },
        protocols: match core::mem::replace(&mut v[9], Raw::Missing) {
            Raw::Array(list) => Some(Protocols::List(list)),
            Raw::Str(one) => Some(Protocols::One(one)),
            _ => None,
        },
        reconnect: ReconnectOptions {
            min_reconnection_delay: number(&v[10], r.min_reconnection_delay),
            max_reconnection_delay: number(&v[11], r.max_reconnection_delay),
            reconnection_delay_grow_factor: number(&v[12], r.reconnection_delay_grow_factor),
            min_uptime: number(&v[13], r.min_uptime),
            connection_timeout: number(&v[14], r.connection_timeout),
            max_retries: number(&v[15], r.max_retries),
        },
        max_enqueued_messages: if queue.is_finite() {
            queue as usize
        } else {
            usize::MAX
        },
        default_call_timeout: number(&v[17], DEFAULT_CALL_TIMEOUT),
        start_closed: matches!(v[18], Raw::Bool(true)),
        on_identity_change: matches!(v[22], Raw::Func(_)),
    };
    // The URL rules reject what cannot be connected to.
    o.address.base_url()?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads from a list of `(key, value)`; every other key is missing.
    fn parse_with(values: &[(&str, Raw<u8>)]) -> Result<ClientOptions<u8>, ClientError> {
        let mut read = |key: &'static str| {
            let found = values.iter().find(|(k, _)| *k == key);
            found.map_or(Raw::Missing, |(_, v)| v.clone())
        };
        parse(&mut read, |_| vec![("k".into(), "v".into())])
    }

    fn message(values: &[(&str, Raw<u8>)]) -> String {
        parse_with(values).unwrap_err().to_string()
    }

    fn s(v: &str) -> Raw<u8> {
        Raw::Str(v.into())
    }

    #[test]
    fn defaults_are_the_references() {
        let o = parse_with(&[("agent", s("ChatAgent")), ("host", s("h:1"))]).unwrap();
        assert_eq!(o.address.name, "default");
        assert_eq!(o.reconnect, ReconnectOptions::default());
        assert_eq!(o.max_enqueued_messages, usize::MAX);
        assert_eq!(o.default_call_timeout, 30_000.0);
        assert!(!o.start_closed && !o.on_identity_change);
        assert_eq!(o.query, Query::Static(vec![]));
        assert_eq!(o.protocols, None);
        let o = parse_with(&[
            ("agent", s("A")),
            ("host", s("h")),
            ("query", Raw::Object(0)),
            ("protocols", s("p")),
            ("maxRetries", Raw::Num(2.0)),
            ("maxEnqueuedMessages", Raw::Num(5.0)),
            ("startClosed", Raw::Bool(true)),
            ("onIdentityChange", Raw::Func(1)),
        ])
        .unwrap();
        assert_eq!(o.query, Query::Static(vec![("k".into(), "v".into())]));
        assert_eq!(o.protocols, Some(Protocols::One("p".into())));
        assert_eq!(o.reconnect.max_retries, 2.0);
        assert_eq!(o.max_enqueued_messages, 5);
        assert!(o.start_closed && o.on_identity_change);
    }

    #[test]
    fn bad_options_are_named() {
        let base = |extra: (&str, Raw<u8>)| message(&[("agent", s("A")), ("host", s("h")), extra]);
        assert_eq!(message(&[("host", s("h"))]), "agent is required");
        assert_eq!(message(&[("agent", s("A"))]), "host must not be empty");
        assert_eq!(base(("name", Raw::Num(5.0))), "name must be a string");
        assert_eq!(base(("path", s("/x"))), "path must not start with a slash");
        assert_eq!(
            base(("maxRetries", Raw::Num(-1.0))),
            "maxRetries must be a number >= 0"
        );
        assert_eq!(
            base(("reconnectionDelayGrowFactor", Raw::Num(0.5))),
            "reconnectionDelayGrowFactor must be a number >= 1"
        );
        assert_eq!(
            base(("minUptime", s("5"))),
            "minUptime must be a number >= 0"
        );
        assert_eq!(
            base(("query", Raw::Num(5.0))),
            "query must be an object or a function"
        );
        assert_eq!(
            base(("protocols", Raw::Num(1.0))),
            "protocols must be a string or an array of strings"
        );
        assert_eq!(
            base(("startClosed", s("yes"))),
            "startClosed must be a boolean"
        );
        assert_eq!(
            base(("onIdentity", s("f"))),
            "onIdentity must be a function"
        );
        assert_eq!(
            base(("shouldReconnectOnClose", Raw::Bool(false))),
            "shouldReconnectOnClose must be a function"
        );
        assert_eq!(
            base(("protocol", s("http"))),
            "protocol must be \"ws\" or \"wss\", not \"http\""
        );
    }
}
