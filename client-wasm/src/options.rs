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

/// The callbacks the options may carry; each must be a function.
pub const CALLBACKS: [&str; 6] = [
    "onStateUpdate",
    "onStateUpdateError",
    "onIdentity",
    "onIdentityChange",
    "onConnectionError",
    "onMcpUpdate",
];

/// The string options, in the order [`parse`] reads them.
const STRINGS: [&str; 8] = [
    "agent", "name", "host", "basePath", "prefix", "path", "protocol", "id",
];

/// The numeric options, each with its minimum.
const NUMBERS: [(&str, u8); 8] = [
    ("minReconnectionDelay", 0),
    ("maxReconnectionDelay", 0),
    ("reconnectionDelayGrowFactor", 1),
    ("minUptime", 0),
    ("connectionTimeout", 0),
    ("maxRetries", 0),
    ("maxEnqueuedMessages", 0),
    ("defaultCallTimeout", 0),
];

fn invalid(key: &str, what: &str) -> ClientError {
    ClientError::Options(key.to_owned() + " must be " + what)
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
    let mut strings: [Option<String>; STRINGS.len()] = Default::default();
    for (slot, key) in strings.iter_mut().zip(STRINGS) {
        *slot = match read(key) {
            Raw::Missing => None,
            Raw::Str(s) => Some(s),
            _ => return Err(invalid(key, "a string")),
        };
    }
    let [agent, name, host, base_path, prefix, path, protocol, id] = strings;
    let mut o = ClientOptions::new("", "default", "");
    o.address = Address {
        agent: agent.unwrap_or_default(),
        name: name.unwrap_or(o.address.name),
        host: host.unwrap_or_default(),
        base_path,
        prefix,
        path,
        protocol,
    };
    o.id = id;
    o.query = match read("query") {
        Raw::Missing => Query::Static(Vec::new()),
        Raw::Func(_) => Query::Dynamic,
        Raw::Object(q) => Query::Static(pairs(&q)),
        _ => return Err(invalid("query", "an object or a function")),
    };
    o.protocols = match read("protocols") {
        Raw::Missing => None,
        Raw::Array(list) => Some(Protocols::List(list)),
        Raw::Str(one) => Some(Protocols::One(one)),
        _ => return Err(invalid("protocols", "a string or an array of strings")),
    };
    let mut numbers = [0.0; NUMBERS.len()];
    for (slot, (key, min)) in numbers.iter_mut().zip(NUMBERS) {
        *slot = match read(key) {
            Raw::Missing => f64::NAN,
            Raw::Num(n) if n >= f64::from(min) => n,
            _ => {
                return Err(invalid(
                    key,
                    if min == 0 {
                        "a number >= 0"
                    } else {
                        "a number >= 1"
                    },
                ))
            }
        };
    }
    let [min_delay, max_delay, grow, uptime, timeout, retries, queue, call_timeout] = numbers;
    let r = &mut o.reconnect;
    let or = |n: f64, d: f64| if n.is_nan() { d } else { n };
    r.min_reconnection_delay = or(min_delay, r.min_reconnection_delay);
    r.max_reconnection_delay = or(max_delay, r.max_reconnection_delay);
    r.reconnection_delay_grow_factor = or(grow, r.reconnection_delay_grow_factor);
    r.min_uptime = or(uptime, r.min_uptime);
    r.connection_timeout = or(timeout, r.connection_timeout);
    r.max_retries = or(retries, r.max_retries);
    let queue = or(queue, f64::INFINITY);
    o.max_enqueued_messages = if queue.is_finite() {
        queue as usize
    } else {
        usize::MAX
    };
    o.default_call_timeout = or(call_timeout, DEFAULT_CALL_TIMEOUT);
    o.start_closed = match read("startClosed") {
        Raw::Missing => false,
        Raw::Bool(b) => b,
        _ => return Err(invalid("startClosed", "a boolean")),
    };
    for key in CALLBACKS {
        match read(key) {
            Raw::Missing => {}
            Raw::Func(_) => o.on_identity_change |= key == "onIdentityChange",
            _ => return Err(invalid(key, "a function")),
        }
    }
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
            base(("protocol", s("http"))),
            "protocol must be \"ws\" or \"wss\", not \"http\""
        );
    }
}
