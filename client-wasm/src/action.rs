//! What the core asks its host to do: the only way decisions leave it.

use alloc::string::String;

use crate::error::ClientError;
use crate::options::Protocols;

/// Something to write to the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Out<V> {
    /// The user's data, handed over as it came.
    User(V),
    /// A protocol frame the core built (`rpc`, `cf_agent_state`).
    Frame(String),
}

/// An event for the client's listeners (after its `on*` property).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `open`.
    Open,
    /// `close`, well-formed.
    Close(Close),
    /// `error`.
    Error,
}

/// A close: code, reason and whether it was clean.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    /// The close code.
    pub code: u16,
    /// The reason.
    pub reason: String,
    /// Whether the closing handshake completed.
    pub clean: bool,
}

impl Close {
    /// A close event's fields.
    pub fn new(code: u16, reason: &str, clean: bool) -> Close {
        Close {
            code,
            reason: reason.into(),
            clean,
        }
    }
}

/// Who changed the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `cf_agent_state` frame.
    Server,
    /// `setState`.
    Client,
}

/// How a call ends, or a stream chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<V> {
    /// The final result (`None`: the key was absent, i.e. `undefined`).
    Done(Option<V>),
    /// A stream chunk; the call stays pending.
    Chunk(Option<V>),
    /// The call failed.
    Error(ClientError),
}

/// One thing for the host to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<V, H> {
    /// The connection id and the names to show before the server's identity.
    Init {
        /// The `_pk` id.
        id: String,
        /// The kebab-case agent.
        agent: String,
        /// The instance name.
        name: String,
    },
    /// Run the `query` function for attempt `gen`, then report its result.
    Query(u32),
    /// Open a socket to `url` for attempt `gen`.
    Open {
        /// The attempt, to report its events with.
        gen: u32,
        /// The URL with its query.
        url: String,
        /// The subprotocols.
        protocols: Option<Protocols<V>>,
    },
    /// Write to the open socket.
    Send(Out<V>),
    /// Detach the current socket (its events stop) and close it if it is
    /// still connecting or open.
    Shut {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Dispatch an event.
    Emit(Event),
    /// Start timer `id` to fire after `ms`, replacing it if running;
    /// a negative `ms` cancels it.
    Timer {
        /// The timer.
        id: u32,
        /// The delay.
        ms: f64,
    },
    /// Listen to the network and tab visibility (`true`) or stop.
    Watch(bool),
    /// The state changed.
    State(V, Source),
    /// The server's identity: set the names, mark identified, resolve `ready`.
    Identity {
        /// The instance.
        name: String,
        /// The kebab-case agent.
        agent: String,
    },
    /// A reconnect reached another instance: call `onIdentityChange`, or
    /// warn when there is none.
    IdentityChange {
        /// Previous name.
        old_name: String,
        /// New name.
        new_name: String,
        /// Previous agent.
        old_agent: String,
        /// New agent.
        new_agent: String,
        /// Whether `onIdentityChange` was given (else warn).
        callback: bool,
    },
    /// No longer identified: a fresh `ready`.
    Unready,
    /// The server refused a state (`onStateUpdateError`).
    StateError(String),
    /// The MCP servers object (`onMcpUpdate`).
    Mcp(V),
    /// Reconnecting stopped for good (`Some`, `onConnectionError`), or the
    /// error is cleared (`None`).
    ConnectionError(Option<Close>),
    /// Settle or feed a call.
    Settle(H, Outcome<V>),
    /// Log a warning.
    Warn(String),
}
