//! What a server frame means, comparable across readers: the protocol
//! crate's decoder and the browser client's rule (natively and in the
//! browser), plus malformed variants of every protocol frame.

#![allow(dead_code, unreachable_pub, missing_docs)]

use agents_protocol::frame::{ServerFrame, UNKNOWN_RPC_ERROR};
use agents_protocol::{Incoming, RpcResponse, ServerMessage};
use serde_json::Value;

/// What a frame means, comparable across the two readers.
#[derive(Debug, PartialEq)]
pub enum Answer {
    User,
    Identity(String, String, bool),
    State(Value),
    StateError(String),
    Mcp,
    Result(String, bool, Option<Value>),
    Error(String, String),
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

pub fn protocol_answer(text: &str) -> Answer {
    match ServerMessage::decode(text) {
        Incoming::Raw(raw) => {
            assert_eq!(raw, text);
            Answer::User
        }
        Incoming::Protocol(ServerMessage::Identity(i)) => {
            Answer::Identity(i.name, i.agent, i.state_follows)
        }
        Incoming::Protocol(ServerMessage::State(s)) => Answer::State(json(s.get())),
        Incoming::Protocol(ServerMessage::StateError(e)) => Answer::StateError(e),
        Incoming::Protocol(ServerMessage::McpServers(_)) => Answer::Mcp,
        Incoming::Protocol(ServerMessage::Rpc(RpcResponse::Success { id, result, done })) => {
            Answer::Result(id, done, result.map(|r| json(r.get())))
        }
        Incoming::Protocol(ServerMessage::Rpc(RpcResponse::Error { id, error })) => {
            Answer::Error(id, error)
        }
    }
}

/// The client's answer, given how its reader turns a value into JSON.
pub fn client_answer<V>(frame: ServerFrame<String, V>, to_json: impl Fn(&V) -> Value) -> Answer {
    match frame {
        ServerFrame::User => Answer::User,
        ServerFrame::Identity {
            name,
            agent,
            state_follows,
        } => Answer::Identity(name, agent, state_follows),
        ServerFrame::State(s) => Answer::State(to_json(&s)),
        ServerFrame::StateError(e) => Answer::StateError(e),
        ServerFrame::McpServers(_) => Answer::Mcp,
        ServerFrame::RpcResult { id, done, result } => {
            Answer::Result(id, done, result.map(|r| to_json(&r)))
        }
        ServerFrame::RpcError { id, error } => {
            Answer::Error(id, error.unwrap_or_else(|| UNKNOWN_RPC_ERROR.into()))
        }
    }
}

/// Text frames a client must hand to listeners and otherwise ignore:
/// malformed JSON, unknown or ill-typed protocol frames, answers to calls it
/// never made.
pub const HOSTILE: &[&str] = &[
    "{",
    "{}",
    "[1,2]",
    "null",
    r#""{\"type\":\"rpc\"}""#,
    r#"{"type":42}"#,
    r#"{"type":"cf_agent_no_such_frame"}"#,
    r#"{"type":"cf_agent_identity"}"#,
    r#"{"type":"cf_agent_identity","name":5,"agent":null}"#,
    r#"{"type":"cf_agent_state"}"#,
    r#"{"type":"cf_agent_mcp_servers","mcp":[1]}"#,
    r#"{"type":"rpc"}"#,
    r#"{"type":"rpc","id":"never-sent","success":true,"done":true,"result":1}"#,
    r#"{"type":"rpc","id":7,"success":false,"error":{}}"#,
    r#"{"type":"rpc","id":"never-sent","success":false,"error":{"not":"a string"}}"#,
];

/// Malformed variants of every protocol frame: fields missing, of the wrong
/// type, repeated, truthy and falsy values, not an object at all.
pub const VARIANTS: &[&str] = &[
    "",
    " {\"type\":\"cf_agent_state\",\"state\":1}",
    r#"{"type":"CF_AGENT_STATE","state":1}"#,
    r#"{"type":"cf_agent_identity","name":"a"}"#,
    r#"{"type":"cf_agent_identity","name":"a","agent":"b","stateFollows":1}"#,
    r#"{"type":"cf_agent_identity","name":"a","agent":"b","stateFollows":"true"}"#,
    r#"{"type":"cf_agent_state","state":null}"#,
    r#"{"type":"cf_agent_state","state":{"x":[1,{"y":"z"}]}}"#,
    r#"{"type":"cf_agent_state_error"}"#,
    r#"{"type":"cf_agent_state_error","error":5}"#,
    r#"{"type":"cf_agent_mcp_servers"}"#,
    r#"{"type":"cf_agent_mcp_servers","mcp":null}"#,
    r#"{"type":"cf_agent_mcp_servers","mcp":{"tools":5}}"#,
    r#"{"type":"rpc","id":7,"success":true}"#,
    r#"{"type":"rpc","id":"1"}"#,
    r#"{"type":"rpc","id":"1","success":false}"#,
    r#"{"type":"rpc","id":"1","success":false,"error":{"not":"a string"}}"#,
    r#"{"type":"rpc","id":"1","success":0,"error":"zero"}"#,
    r#"{"type":"rpc","id":"1","success":"","error":"empty"}"#,
    r#"{"type":"rpc","id":"1","success":null}"#,
    r#"{"type":"rpc","id":"1","success":1,"result":2}"#,
    r#"{"type":"rpc","id":"1","success":"yes","done":false,"result":2}"#,
    r#"{"type":"rpc","id":"1","success":true,"done":null}"#,
    r#"{"type":"rpc","id":"1","success":true,"done":0}"#,
    r#"{"type":"rpc","id":"1","success":true,"done":"x"}"#,
    r#"{"type":"rpc","id":"1","success":true,"result":null}"#,
    r#"{"type":"rpc","id":"1","success":true}"#,
    r#"{"type":"rpc","id":"a","id":"b","success":true}"#,
    r#"{"type":"x","type":"rpc","id":"1","success":true}"#,
    r#"{"type":"rpc","type":"x","id":"1","success":true}"#,
    r#"{"type":"\u0072pc","id":"\"q\"","success":true}"#,
];
