//! Payload of the `cf_agent_mcp_servers` frame.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `mcp` object of a `cf_agent_mcp_servers` frame. `Default` is the empty
/// skeleton every agent without MCP clients sends on connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpState {
    /// Prompts offered by connected MCP servers (MCP SDK objects).
    #[serde(default)]
    pub prompts: Vec<Value>,
    /// Resources offered by connected MCP servers (MCP SDK objects).
    #[serde(default)]
    pub resources: Vec<Value>,
    /// MCP servers by id.
    #[serde(default)]
    pub servers: Map<String, Value>,
    /// Tools offered by connected MCP servers (MCP SDK objects).
    #[serde(default)]
    pub tools: Vec<Value>,
}

impl McpState {
    /// Reads the `mcp` object of a frame leniently, as a client that only
    /// hands it on must: a field of the wrong type reads as empty, so every
    /// JSON object is a valid payload (the rule of [`crate::frame`]).
    pub fn from_object(raw: &serde_json::value::RawValue) -> McpState {
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(raw.get()) else {
            return McpState::default();
        };
        let mut list = |key: &str| match map.remove(key) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let (prompts, resources, tools) = (list("prompts"), list("resources"), list("tools"));
        let servers = match map.remove("servers") {
            Some(Value::Object(servers)) => servers,
            _ => Map::new(),
        };
        McpState {
            prompts,
            resources,
            servers,
            tools,
        }
    }
}

/// One entry of [`McpState::servers`], as the reference builds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServer {
    /// Display name.
    pub name: String,
    /// The server's URL.
    pub server_url: String,
    /// One of `authenticating`, `connecting`, `connected`, `discovering`,
    /// `ready`, `failed`, `not-connected`.
    pub state: String,
    /// OAuth URL while authenticating.
    pub auth_url: Option<String>,
    /// Server capabilities once known.
    pub capabilities: Option<Value>,
    /// Last error (at most 500 characters).
    pub error: Option<String>,
    /// Server instructions once known.
    pub instructions: Option<String>,
}
