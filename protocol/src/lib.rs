//! Wire messages of the Cloudflare `agents` WebSocket protocol, shared by the
//! agents-rs server and browser client.
//!
//! Every protocol message is one text frame holding one JSON object whose
//! string field `type` names it. Binary frames and any text that is not a
//! well-formed protocol frame are *user* messages: decoding never fails, it
//! answers [`Incoming::Raw`] and the caller hands the text on unchanged.
//!
//! | `type` | direction | Rust type |
//! |---|---|---|
//! | `cf_agent_identity` | server → client | [`ServerMessage::Identity`] |
//! | `cf_agent_state` | both | [`ServerMessage::State`], [`ClientMessage::State`] |
//! | `cf_agent_state_error` | server → client | [`ServerMessage::StateError`] |
//! | `cf_agent_mcp_servers` | server → client | [`ServerMessage::McpServers`] |
//! | `rpc` | both | [`ClientMessage::Rpc`] ([`RpcRequest`]), [`ServerMessage::Rpc`] ([`RpcResponse`]) |
//!
//! ```
//! use agents_protocol::{ClientMessage, Incoming};
//!
//! let text = r#"{"type":"rpc","id":"1","method":"increment","args":[2]}"#;
//! match ClientMessage::decode(text) {
//!     Incoming::Protocol(ClientMessage::Rpc(call)) => assert_eq!(call.method, "increment"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! assert!(matches!(ClientMessage::decode("hello"), Incoming::Raw("hello")));
//! ```
//!
//! # Layout
//! - [`message`]: the [`ServerMessage`] and [`ClientMessage`] enums, their
//!   encoding and decoding (the only place frames are parsed or written).
//! - [`rpc`]: RPC requests and responses.
//! - [`mcp`]: the MCP servers frame payload.
//! - [`kebab`]: the reference's class name → URL segment rule.
//! - [`frame`]: the rule that sorts server frames into protocol and user
//!   frames, shared with the browser client (which reads JavaScript objects).
//!
//! Everything but [`kebab`], [`frame`], [`frame_type`] and the constants sits
//! behind the default `json` feature.

#![cfg_attr(not(feature = "json"), no_std)]

extern crate alloc;

pub mod frame;
pub mod kebab;
#[cfg(feature = "json")]
pub mod mcp;
#[cfg(feature = "json")]
pub mod message;
#[cfg(feature = "json")]
pub mod rpc;

pub use kebab::{camel_case_to_kebab_case, camel_case_to_kebab_case_with};
#[cfg(feature = "json")]
pub use mcp::{McpServer, McpState};
#[cfg(feature = "json")]
pub use message::{
    ClientMessage, Identity, Incoming, ServerMessage, SetupError, STATE_FRAME_PREFIX,
    STATE_FRAME_SUFFIX,
};
#[cfg(feature = "json")]
pub use rpc::{RpcRequest, RpcResponse};
#[cfg(feature = "json")]
pub use serde_json::value::RawValue;

/// The `type` of each protocol frame, as on the wire.
pub mod frame_type {
    /// `cf_agent_identity` (server → client).
    pub const IDENTITY: &str = "cf_agent_identity";
    /// `cf_agent_state` (both directions).
    pub const STATE: &str = "cf_agent_state";
    /// `cf_agent_state_error` (server → client).
    pub const STATE_ERROR: &str = "cf_agent_state_error";
    /// `cf_agent_mcp_servers` (server → client).
    pub const MCP_SERVERS: &str = "cf_agent_mcp_servers";
    /// `rpc` (both directions).
    pub const RPC: &str = "rpc";
}

/// The reason sent with close code 1011 when connection setup fails.
pub const SETUP_FAILED_REASON: &str = "Uncaught exception during session setup";

/// The `cf_agent_state_error` text for a state frame from a readonly connection.
pub const READONLY_ERROR: &str = "Connection is readonly";

/// The `cf_agent_state_error` text for a state frame rejected by validation.
pub const STATE_REJECTED_ERROR: &str = "State update rejected";

/// Close codes after which a client must not reconnect: 1008 and 4000–4999.
pub fn is_terminal_close_code(code: u16) -> bool {
    code == 1008 || (4000..=4999).contains(&code)
}
