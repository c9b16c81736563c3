//! How a client sorts the text frames a server sends: the one rule the
//! browser client applies and [`ServerMessage::decode`](crate::ServerMessage::decode)
//! is built on, so the two cannot disagree.
//!
//! The rule follows the reference client (`agents/client` 0.32,
//! `AgentClient`'s message listener), with one deliberate difference: a frame
//! whose fields do not fit its `type` is a *user* frame (it reaches user
//! code unchanged and does nothing), where the reference would act on
//! `undefined` fields.
//!
//! | frame (a JSON object whose `type` is …) | it is | otherwise |
//! |---|---|---|
//! | `cf_agent_identity` with string `name` and `agent` | [`ServerFrame::Identity`]; `stateFollows` counts only when it is `true` | user |
//! | `cf_agent_state` with a `state` key (`null` included) | [`ServerFrame::State`] | user |
//! | `cf_agent_state_error` with a string `error` | [`ServerFrame::StateError`] | user |
//! | `cf_agent_mcp_servers` whose `mcp` is an object | [`ServerFrame::McpServers`] | user |
//! | `rpc` with a string `id`, `success` truthy (as JavaScript's `if`) | [`ServerFrame::RpcResult`]: final unless a `done` key is present and falsy | user |
//! | `rpc` with a string `id`, `success` absent or falsy | [`ServerFrame::RpcError`] (the reference rejects the call: `!response.success`) | user |
//!
//! Anything else — not JSON, not an object, another `type` — is the
//! user's. Both readers parse JSON as `JSON.parse` does: when a key repeats,
//! the last value wins.

/// The `type`s a client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// `cf_agent_identity`.
    Identity,
    /// `cf_agent_state`.
    State,
    /// `cf_agent_state_error`.
    StateError,
    /// `cf_agent_mcp_servers`.
    McpServers,
    /// `rpc`.
    Rpc,
}

impl FrameType {
    /// Every type, in wire-name order of [`crate::frame_type`].
    pub const ALL: [FrameType; 5] = [
        FrameType::Identity,
        FrameType::State,
        FrameType::StateError,
        FrameType::McpServers,
        FrameType::Rpc,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        use crate::frame_type::*;
        match self {
            FrameType::Identity => IDENTITY,
            FrameType::State => STATE,
            FrameType::StateError => STATE_ERROR,
            FrameType::McpServers => MCP_SERVERS,
            FrameType::Rpc => RPC,
        }
    }

    /// The type named `name`, if it is one of the five.
    pub fn from_name(name: &str) -> Option<FrameType> {
        FrameType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Read access to a parsed JSON object, as the reader holds it (a
/// `serde_json` envelope, a JavaScript object, …).
pub trait FrameFields {
    /// A field's value.
    type Value;
    /// A string field.
    type Str;
    /// The type, when `type` is a string naming one of the five.
    fn frame_type(&self) -> Option<FrameType>;
    /// `key`'s value when the key is present (JSON `null` included).
    fn value(&self, key: &'static str) -> Option<Self::Value>;
    /// `key`'s value when it is a string.
    fn string(&self, key: &'static str) -> Option<Self::Str>;
    /// Whether a value is truthy as JavaScript's `if` sees it (not `false`,
    /// `null`, `0`, `-0` or `""`).
    fn truthy(&self, value: &Self::Value) -> bool;
    /// Whether `key` is present and exactly `true`.
    fn is_true(&self, key: &'static str) -> bool;
    /// Whether `key` holds a JSON object (not an array, not `null`).
    fn is_object(&self, key: &'static str) -> bool;
}

/// What a server frame means to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame<S, V> {
    /// Not a protocol frame: it belongs to user code, unchanged.
    User,
    /// `cf_agent_identity`: the server's name for the instance and agent.
    Identity {
        /// The instance name.
        name: S,
        /// The kebab-case agent name.
        agent: S,
        /// A `cf_agent_state` frame follows at once.
        state_follows: bool,
    },
    /// `cf_agent_state`: the agent's state.
    State(V),
    /// `cf_agent_state_error`: the server refused a client's state.
    StateError(S),
    /// `cf_agent_mcp_servers`: the MCP servers object.
    McpServers(V),
    /// A successful `rpc` answer: a stream chunk (`done == false`) or the
    /// final result (`None` when the key is absent, i.e. `undefined`).
    RpcResult {
        /// The call's id.
        id: S,
        /// `false` for a stream chunk.
        done: bool,
        /// The result.
        result: Option<V>,
    },
    /// A failed `rpc` answer; `error` is `None` when it is not a string
    /// (clients then report [`UNKNOWN_RPC_ERROR`]).
    RpcError {
        /// The call's id.
        id: S,
        /// The server's message.
        error: Option<S>,
    },
}

impl<S, V> ServerFrame<S, V> {
    /// Whether the frame is a protocol frame (consumed by the client's
    /// protocol layer; `useAgent` keeps these out of `onMessage`).
    pub fn is_protocol(&self) -> bool {
        !matches!(self, ServerFrame::User)
    }
}

/// The message of an `rpc` error frame without a string `error`.
pub const UNKNOWN_RPC_ERROR: &str = "Unknown error";

/// Applies the rule (see the module docs) to a parsed JSON object.
pub fn classify<F: FrameFields>(f: &F) -> ServerFrame<F::Str, F::Value> {
    let Some(ty) = f.frame_type() else {
        return ServerFrame::User;
    };
    let frame = match ty {
        FrameType::Identity => match (f.string("name"), f.string("agent")) {
            (Some(name), Some(agent)) => Some(ServerFrame::Identity {
                name,
                agent,
                state_follows: f.is_true("stateFollows"),
            }),
            _ => None,
        },
        FrameType::State => f.value("state").map(ServerFrame::State),
        FrameType::StateError => f.string("error").map(ServerFrame::StateError),
        FrameType::McpServers if f.is_object("mcp") => f.value("mcp").map(ServerFrame::McpServers),
        FrameType::McpServers => None,
        FrameType::Rpc => f.string("id").map(|id| {
            if f.value("success").is_some_and(|s| f.truthy(&s)) {
                ServerFrame::RpcResult {
                    id,
                    done: f.value("done").is_none_or(|d| f.truthy(&d)),
                    result: f.value("result"),
                }
            } else {
                ServerFrame::RpcError {
                    id,
                    error: f.string("error"),
                }
            }
        }),
    };
    frame.unwrap_or(ServerFrame::User)
}
