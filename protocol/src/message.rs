//! The protocol frames, and the one place they are encoded and decoded.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::mcp::McpState;
use crate::rpc::{RpcRequest, RpcResponse};

/// The result of decoding a text frame: a protocol message, or text that is
/// not one and belongs to user code unchanged.
#[derive(Debug, Clone)]
pub enum Incoming<'a, M> {
    /// A well-formed protocol frame.
    Protocol(M),
    /// Anything else: non-JSON, JSON of another `type`, or a malformed
    /// protocol frame. The original text is handed on as is.
    Raw(&'a str),
}

/// `cf_agent_identity`: who the client is talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The instance name (the raw URL segment).
    pub name: String,
    /// The kebab-case agent class name.
    pub agent: String,
    /// `true` when a `cf_agent_state` frame follows at once.
    pub state_follows: bool,
}

/// What a server's `cf_agent_state` frame holds before the state's JSON:
/// the frame is this, the state, then [`STATE_FRAME_SUFFIX`]. Lets a server
/// serialize the state straight into the frame and keep one buffer for both.
pub const STATE_FRAME_PREFIX: &str = r#"{"type":"cf_agent_state","state":"#;

/// What a server's `cf_agent_state` frame holds after the state's JSON.
pub const STATE_FRAME_SUFFIX: &str = "}";

/// Frames the server sends.
#[derive(Debug, Clone)]
pub enum ServerMessage {
    /// `{"type":"cf_agent_identity","name","agent",["stateFollows":true]}`.
    Identity(Identity),
    /// `{"type":"cf_agent_state","state":…}`; the state is any JSON value.
    State(Box<RawValue>),
    /// `{"type":"cf_agent_state_error","error":…}`.
    StateError(String),
    /// `{"type":"cf_agent_mcp_servers","mcp":{…}}`.
    McpServers(McpState),
    /// `{"type":"rpc",…}`: a reply, a stream chunk or an error.
    Rpc(RpcResponse),
}

/// Frames the client sends.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    /// `{"type":"cf_agent_state","state":…}`: the client's new state. JSON
    /// `null` is a valid state.
    State(Box<RawValue>),
    /// `{"type":"rpc","id","method","args":[…]}`.
    Rpc(RpcRequest),
}

/// The text frame the server sends, without a `type`, when connection setup
/// fails: `{"error":"…"}`. It is followed by close 1011.
#[derive(Debug, Clone, Serialize)]
pub struct SetupError {
    /// What went wrong.
    pub error: String,
}

impl SetupError {
    /// Encodes the frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a string map always serializes")
    }
}

/// Every field any frame may carry, each kept raw and `Some` exactly when the
/// key is present (so `"state":null` differs from no `state`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    state: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    args: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    name: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    agent: Option<&'a RawValue>,
    #[serde(rename = "stateFollows", borrow, deserialize_with = "present")]
    state_follows: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    mcp: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    success: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    done: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Envelope<'a> {
    /// Parses `text` if it is a JSON object; anything else is not protocol.
    fn parse(text: &'a str) -> Option<Self> {
        // Cheap pre-check: protocol frames are JSON objects.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    fn type_is(&self, want: &str) -> bool {
        self.ty.and_then(as_string).is_some_and(|t| t == want)
    }
}

fn as_string(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn to_owned_raw(raw: &RawValue) -> Box<RawValue> {
    raw.to_owned()
}

impl ClientMessage {
    /// Decodes a text frame from a client. Only two shapes are protocol, as in
    /// the reference: a `cf_agent_state` object with a `state` key, and an
    /// `rpc` object whose `id` and `method` are strings and `args` an array.
    /// Everything else is [`Incoming::Raw`].
    pub fn decode(text: &str) -> Incoming<'_, ClientMessage> {
        let Some(env) = Envelope::parse(text) else {
            return Incoming::Raw(text);
        };
        if env.type_is("cf_agent_state") {
            if let Some(state) = env.state {
                return Incoming::Protocol(ClientMessage::State(to_owned_raw(state)));
            }
        } else if env.type_is("rpc") {
            let id = env.id.and_then(as_string);
            let method = env.method.and_then(as_string);
            let args = env.args.filter(|a| a.get().starts_with('['));
            if let (Some(id), Some(method), Some(args)) = (id, method, args) {
                return Incoming::Protocol(ClientMessage::Rpc(RpcRequest {
                    id,
                    method,
                    args: to_owned_raw(args),
                }));
            }
        }
        Incoming::Raw(text)
    }

    /// Encodes the frame as the reference client does.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct StateOut<'a> {
            state: &'a RawValue,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        #[derive(Serialize)]
        struct RpcOut<'a> {
            args: &'a RawValue,
            id: &'a str,
            method: &'a str,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        let out = match self {
            ClientMessage::State(state) => serde_json::to_string(&StateOut {
                state,
                ty: "cf_agent_state",
            }),
            ClientMessage::Rpc(r) => serde_json::to_string(&RpcOut {
                args: &r.args,
                id: &r.id,
                method: &r.method,
                ty: "rpc",
            }),
        };
        out.expect("protocol frames always serialize")
    }
}

impl ServerMessage {
    /// Decodes a text frame from a server (what a client does). Frames of
    /// other types, and malformed ones, are [`Incoming::Raw`].
    pub fn decode(text: &str) -> Incoming<'_, ServerMessage> {
        match Envelope::parse(text).and_then(|env| Self::from_envelope(&env)) {
            Some(msg) => Incoming::Protocol(msg),
            None => Incoming::Raw(text),
        }
    }

    fn from_envelope(env: &Envelope<'_>) -> Option<ServerMessage> {
        let ty = as_string(env.ty?)?;
        Some(match ty.as_str() {
            "cf_agent_identity" => ServerMessage::Identity(Identity {
                name: as_string(env.name?)?,
                agent: as_string(env.agent?)?,
                state_follows: matches!(env.state_follows.map(RawValue::get), Some("true")),
            }),
            "cf_agent_state" => ServerMessage::State(to_owned_raw(env.state?)),
            "cf_agent_state_error" => ServerMessage::StateError(as_string(env.error?)?),
            "cf_agent_mcp_servers" => {
                ServerMessage::McpServers(serde_json::from_str(env.mcp?.get()).ok()?)
            }
            "rpc" => {
                let id = as_string(env.id?)?;
                match env.success.map(RawValue::get) {
                    Some("true") => ServerMessage::Rpc(RpcResponse::Success {
                        id,
                        result: env.result.map(to_owned_raw),
                        // A missing `done` means a final reply.
                        done: !matches!(env.done.map(RawValue::get), Some("false")),
                    }),
                    Some("false") => ServerMessage::Rpc(RpcResponse::Error {
                        id,
                        error: env.error.and_then(as_string).unwrap_or_default(),
                    }),
                    _ => return None,
                }
            }
            _ => return None,
        })
    }

    /// Encodes `{"type":"cf_agent_state","state":…}` from a borrowed state,
    /// so a server can build the frame without copying its state first.
    pub fn encode_state(state: &RawValue) -> String {
        let mut frame = String::with_capacity(
            STATE_FRAME_PREFIX.len() + state.get().len() + STATE_FRAME_SUFFIX.len(),
        );
        frame.push_str(STATE_FRAME_PREFIX);
        frame.push_str(state.get());
        frame.push_str(STATE_FRAME_SUFFIX);
        frame
    }

    /// Encodes the frame. Key order follows the reference where it is fixed
    /// (`type` first on connect frames, alphabetical on broadcasts and RPC
    /// replies); readers must not depend on it.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct IdentityOut<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            name: &'a str,
            agent: &'a str,
            #[serde(rename = "stateFollows", skip_serializing_if = "std::ops::Not::not")]
            state_follows: bool,
        }
        #[derive(Serialize)]
        struct ErrorOut<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            error: &'a str,
        }
        #[derive(Serialize)]
        struct McpOut<'a> {
            mcp: &'a McpState,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        #[derive(Serialize)]
        struct RpcSuccessOut<'a> {
            done: bool,
            id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            result: Option<&'a RawValue>,
            success: bool,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        #[derive(Serialize)]
        struct RpcErrorOut<'a> {
            error: &'a str,
            id: &'a str,
            success: bool,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        let out = match self {
            ServerMessage::Identity(i) => serde_json::to_string(&IdentityOut {
                ty: "cf_agent_identity",
                name: &i.name,
                agent: &i.agent,
                state_follows: i.state_follows,
            }),
            ServerMessage::State(state) => return Self::encode_state(state),
            ServerMessage::StateError(error) => serde_json::to_string(&ErrorOut {
                ty: "cf_agent_state_error",
                error,
            }),
            ServerMessage::McpServers(mcp) => serde_json::to_string(&McpOut {
                mcp,
                ty: "cf_agent_mcp_servers",
            }),
            ServerMessage::Rpc(RpcResponse::Success { id, result, done }) => {
                serde_json::to_string(&RpcSuccessOut {
                    done: *done,
                    id,
                    result: result.as_deref(),
                    success: true,
                    ty: "rpc",
                })
            }
            ServerMessage::Rpc(RpcResponse::Error { id, error }) => {
                serde_json::to_string(&RpcErrorOut {
                    error,
                    id,
                    success: false,
                    ty: "rpc",
                })
            }
        };
        out.expect("protocol frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn state_null_is_a_state_but_missing_state_is_not() {
        let Incoming::Protocol(ClientMessage::State(s)) =
            ClientMessage::decode(r#"{"type":"cf_agent_state","state":null}"#)
        else {
            panic!("null state must decode")
        };
        assert_eq!(s.get(), "null");
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"cf_agent_state"}"#),
            Incoming::Raw(_)
        ));
    }

    #[test]
    fn malformed_rpc_is_raw() {
        for text in [
            r#"{"type":"rpc","id":"r2","method":"increment"}"#,
            r#"{"type":"rpc","method":"increment","args":[1]}"#,
            r#"{"type":"rpc","id":7,"method":"increment","args":[1]}"#,
            r#"{"type":"rpc","id":"x","method":"increment","args":{"0":1}}"#,
            r#"{"type":"rpc","id":"x","method":null,"args":[]}"#,
            r#"{"type":"rpc","type":"rpc","id":"x","method":"m","args":[]}"#,
            "{bad json",
            "",
            "[1,2]",
            "\"rpc\"",
            r#"{"type":7}"#,
            r#"{"type":"cf_agent_identity","name":"a","agent":"b"}"#,
        ] {
            assert!(
                matches!(ClientMessage::decode(text), Incoming::Raw(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn escaped_type_strings_are_recognised() {
        let text = r#"{"type":"\u0072pc","id":"a\"b","method":"m","args":[]}"#;
        let Incoming::Protocol(ClientMessage::Rpc(r)) = ClientMessage::decode(text) else {
            panic!("escaped type must decode")
        };
        assert_eq!(r.id, "a\"b");
    }

    #[test]
    fn rpc_result_absent_vs_null() {
        let absent = ServerMessage::Rpc(RpcResponse::Success {
            id: "1".into(),
            result: None,
            done: true,
        });
        assert_eq!(
            absent.to_json(),
            r#"{"done":true,"id":"1","success":true,"type":"rpc"}"#
        );
        let null = ServerMessage::Rpc(RpcResponse::Success {
            id: "1".into(),
            result: Some(raw("null")),
            done: true,
        });
        assert_eq!(
            null.to_json(),
            r#"{"done":true,"id":"1","result":null,"success":true,"type":"rpc"}"#
        );
        // A reply without `done` is final.
        let Incoming::Protocol(ServerMessage::Rpc(RpcResponse::Success { done, result, .. })) =
            ServerMessage::decode(r#"{"type":"rpc","id":"1","success":true}"#)
        else {
            panic!()
        };
        assert!(done);
        assert!(result.is_none());
    }

    #[test]
    fn args_deserialize_into_typed_tuples() {
        let r = RpcRequest::new("1", "increment", raw("[2]"));
        assert_eq!(r.args_as::<(i64,)>().unwrap(), (2,));
        assert!(r.args_as::<(String,)>().is_err());
    }

    #[test]
    fn setup_error_frame() {
        assert_eq!(
            SetupError {
                error: "boom".into()
            }
            .to_json(),
            r#"{"error":"boom"}"#
        );
    }
}
