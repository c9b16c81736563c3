//! The protocol frames, and the one place they are encoded and decoded.

use std::borrow::Cow;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::frame::{classify, FrameFields, FrameType, ServerFrame, UNKNOWN_RPC_ERROR};

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
/// key is present (so `"state":null` differs from no `state`). As with
/// `JSON.parse`, a repeated key keeps its last value. `state` is read as
/// `St`: raw, or (for [`TypedClientMessage`]) the server's state type.
struct Envelope<'a, St = &'a RawValue> {
    ty: Option<&'a RawValue>,
    state: Option<St>,
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    args: Option<&'a RawValue>,
    name: Option<&'a RawValue>,
    agent: Option<&'a RawValue>,
    state_follows: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
    mcp: Option<&'a RawValue>,
    success: Option<&'a RawValue>,
    done: Option<&'a RawValue>,
    result: Option<&'a RawValue>,
}

impl<St> Default for Envelope<'_, St> {
    fn default() -> Self {
        Envelope {
            ty: None,
            state: None,
            id: None,
            method: None,
            args: None,
            name: None,
            agent: None,
            state_follows: None,
            error: None,
            mcp: None,
            success: None,
            done: None,
            result: None,
        }
    }
}

impl<'de: 'a, 'a, St: Deserialize<'de>> Deserialize<'de> for Envelope<'a, St> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<'a, St>(core::marker::PhantomData<(&'a (), St)>);
        impl<'de: 'a, 'a, St: Deserialize<'de>> Visitor<'de> for Fields<'a, St> {
            type Value = Envelope<'a, St>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut env = Envelope::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "state" {
                        // Parsed once, straight into its type.
                        env.state = Some(map.next_value()?);
                        continue;
                    }
                    let value: &'de RawValue = map.next_value()?;
                    let slot = match key.as_ref() {
                        "type" => &mut env.ty,
                        "id" => &mut env.id,
                        "method" => &mut env.method,
                        "args" => &mut env.args,
                        "name" => &mut env.name,
                        "agent" => &mut env.agent,
                        "stateFollows" => &mut env.state_follows,
                        "error" => &mut env.error,
                        "mcp" => &mut env.mcp,
                        "success" => &mut env.success,
                        "done" => &mut env.done,
                        "result" => &mut env.result,
                        _ => continue,
                    };
                    *slot = Some(value);
                }
                Ok(env)
            }
        }
        d.deserialize_map(Fields(core::marker::PhantomData))
    }
}

/// Cheap pre-check: protocol frames are JSON objects (`{` after JSON
/// whitespace); other text is the user's without a parse.
fn looks_like_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

impl<'a, St: Deserialize<'a>> Envelope<'a, St> {
    /// Parses `text` if it is a JSON object; anything else is not protocol.
    fn parse(text: &'a str) -> Option<Self> {
        if !looks_like_object(text) {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    fn type_is(&self, want: &str) -> bool {
        self.ty.and_then(as_string).is_some_and(|t| t == want)
    }

    /// The RPC request, when the frame is a well-formed `rpc` frame.
    fn rpc(&self) -> Option<RpcRequest> {
        if !self.type_is("rpc") {
            return None;
        }
        let id = self.id.and_then(as_string)?;
        let method = self.method.and_then(as_string)?;
        let args = self.args.filter(|a| a.get().starts_with('['))?;
        Some(RpcRequest {
            id,
            method,
            args: to_owned_raw(args),
        })
    }
}

impl<'a> Envelope<'a> {
    fn field(&self, key: &str) -> Option<&'a RawValue> {
        match key {
            "state" => self.state,
            "id" => self.id,
            "name" => self.name,
            "agent" => self.agent,
            "stateFollows" => self.state_follows,
            "error" => self.error,
            "mcp" => self.mcp,
            "success" => self.success,
            "done" => self.done,
            "result" => self.result,
            _ => None,
        }
    }
}

/// The envelope as the shared rule reads it ([`crate::frame`]).
impl<'a> FrameFields for Envelope<'a> {
    type Value = &'a RawValue;
    type Str = String;

    fn frame_type(&self) -> Option<FrameType> {
        FrameType::from_name(&as_string(self.ty?)?)
    }

    fn value(&self, key: &'static str) -> Option<&'a RawValue> {
        self.field(key)
    }

    fn string(&self, key: &'static str) -> Option<String> {
        as_string(self.field(key)?)
    }

    fn truthy(&self, raw: &&'a RawValue) -> bool {
        match raw.get() {
            "false" | "null" | "\"\"" => false,
            // Numbers as JavaScript reads them: `1e-400` is 0, `1e400` Infinity.
            n if n.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                n.parse::<f64>() != Ok(0.0)
            }
            _ => true,
        }
    }

    fn is_true(&self, key: &'static str) -> bool {
        self.field(key).is_some_and(|v| v.get() == "true")
    }

    fn is_object(&self, key: &'static str) -> bool {
        self.field(key).is_some_and(|v| v.get().starts_with('{'))
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
        let Some(env) = <Envelope<'_>>::parse(text) else {
            return Incoming::Raw(text);
        };
        if env.type_is("cf_agent_state") {
            if let Some(state) = env.state {
                return Incoming::Protocol(ClientMessage::State(to_owned_raw(state)));
            }
        } else if let Some(rpc) = env.rpc() {
            return Incoming::Protocol(ClientMessage::Rpc(rpc));
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

/// The state frame's type as it appears in a frame's JSON (unescaped).
const STATE_TYPE_LITERAL: &str = "\"cf_agent_state\"";

/// The fewest bytes a `cf_agent_state` frame holds besides its state:
/// `{"state":…,"type":"cf_agent_state"}` (keys and the type may be escaped,
/// which only makes them longer).
const STATE_FRAME_MIN_OVERHEAD: usize = r#"{"state":,"type":"cf_agent_state"}"#.len();

/// A client frame as a server with state type `S` reads it: the same frames
/// as [`ClientMessage`], with the state already deserialized into `S` — in
/// the pass that reads the frame, not in a second parse of a copy.
#[derive(Debug)]
pub enum TypedClientMessage<S> {
    /// `{"type":"cf_agent_state","state":…}`: the state, or why it cannot
    /// be one.
    State(Result<S, StateDecodeError>),
    /// `{"type":"rpc","id","method","args":[…]}`.
    Rpc(RpcRequest),
}

/// Why a `cf_agent_state` frame's state was not read.
#[derive(Debug)]
pub enum StateDecodeError {
    /// Its JSON is `len` bytes, over the limit of `max`; it was not parsed.
    TooLarge {
        /// The state's JSON length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// It is not a valid `S`. Positions in the error are relative to the
    /// state's own JSON, as if it had been parsed alone.
    Invalid(serde_json::Error),
}

impl core::fmt::Display for StateDecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateDecodeError::TooLarge { max, .. } => {
                write!(f, "state is larger than {max} bytes")
            }
            StateDecodeError::Invalid(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for StateDecodeError {}

impl<S: DeserializeOwned> TypedClientMessage<S> {
    /// Decodes a text frame from a client as [`ClientMessage::decode`] does
    /// (the same frames are protocol, the same are [`Incoming::Raw`]), with
    /// a state of at most `max_state` bytes of JSON deserialized into `S`.
    ///
    /// A frame that names `"cf_agent_state"` and is too short to hold a
    /// state over the limit is read in one pass, its state straight into
    /// `S`. Any other frame — without that string (user messages and RPC
    /// calls: their `state` keys, if any, are never parsed into `S`),
    /// longer, malformed, or whose state does not fit `S` — is read as
    /// [`ClientMessage::decode`] reads it, then a state within the limit is
    /// parsed from its own slice; so a state over the limit is never parsed,
    /// and errors read as they would for the state alone.
    pub fn decode(text: &str, max_state: usize) -> Incoming<'_, TypedClientMessage<S>> {
        if !looks_like_object(text) {
            return Incoming::Raw(text);
        }
        if text.len() <= max_state.saturating_add(STATE_FRAME_MIN_OVERHEAD)
            && text.contains(STATE_TYPE_LITERAL)
        {
            if let Some(env) = Envelope::<'_, S>::parse(text) {
                if env.type_is("cf_agent_state") {
                    if let Some(state) = env.state {
                        return Incoming::Protocol(TypedClientMessage::State(Ok(state)));
                    }
                } else if let Some(rpc) = env.rpc() {
                    return Incoming::Protocol(TypedClientMessage::Rpc(rpc));
                }
                return Incoming::Raw(text);
            }
        }
        match ClientMessage::decode(text) {
            Incoming::Protocol(ClientMessage::State(raw)) => {
                let len = raw.get().len();
                let state = if len > max_state {
                    Err(StateDecodeError::TooLarge {
                        len,
                        max: max_state,
                    })
                } else {
                    serde_json::from_str(raw.get()).map_err(StateDecodeError::Invalid)
                };
                Incoming::Protocol(TypedClientMessage::State(state))
            }
            Incoming::Protocol(ClientMessage::Rpc(rpc)) => {
                Incoming::Protocol(TypedClientMessage::Rpc(rpc))
            }
            Incoming::Raw(text) => Incoming::Raw(text),
        }
    }
}

impl ServerMessage {
    /// Decodes a text frame from a server (what a client does), by the rule
    /// of [`crate::frame`] that the browser client applies too. Frames of
    /// other types, and malformed ones, are [`Incoming::Raw`].
    pub fn decode(text: &str) -> Incoming<'_, ServerMessage> {
        let frame = match <Envelope<'_>>::parse(text) {
            Some(env) => classify(&env),
            None => ServerFrame::User,
        };
        let msg = match frame {
            ServerFrame::User => return Incoming::Raw(text),
            ServerFrame::Identity {
                name,
                agent,
                state_follows,
            } => ServerMessage::Identity(Identity {
                name,
                agent,
                state_follows,
            }),
            ServerFrame::State(state) => ServerMessage::State(to_owned_raw(state)),
            ServerFrame::StateError(error) => ServerMessage::StateError(error),
            ServerFrame::McpServers(mcp) => ServerMessage::McpServers(McpState::from_object(mcp)),
            ServerFrame::RpcResult { id, done, result } => {
                ServerMessage::Rpc(RpcResponse::Success {
                    id,
                    result: result.map(to_owned_raw),
                    done,
                })
            }
            ServerFrame::RpcError { id, error } => ServerMessage::Rpc(RpcResponse::Error {
                id,
                error: error.unwrap_or_else(|| UNKNOWN_RPC_ERROR.into()),
            }),
        };
        Incoming::Protocol(msg)
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
    fn a_repeated_key_keeps_its_last_value_as_json_parse() {
        let text = r#"{"type":"x","type":"rpc","id":"a","id":"b","method":"m","args":[]}"#;
        let Incoming::Protocol(ClientMessage::Rpc(r)) = ClientMessage::decode(text) else {
            panic!("the last type is rpc")
        };
        assert_eq!(r.id, "b");
        let text = r#"{"type":"rpc","type":"cf_agent_nope","id":"x","method":"m","args":[]}"#;
        assert!(matches!(ClientMessage::decode(text), Incoming::Raw(_)));
    }

    #[test]
    fn server_rpc_frames_follow_the_reference_client() {
        let decode = |text: &str| match ServerMessage::decode(text) {
            Incoming::Protocol(ServerMessage::Rpc(r)) => Some(r),
            _ => None,
        };
        // No `success`: the reference rejects the call (`!response.success`).
        let Some(RpcResponse::Error { id, error }) = decode(r#"{"type":"rpc","id":"1"}"#) else {
            panic!()
        };
        assert_eq!(
            (id.as_str(), error.as_str()),
            ("1", crate::frame::UNKNOWN_RPC_ERROR)
        );
        // Truthy `success`; a present but falsy `done` is a chunk.
        for (text, want_done) in [
            (r#"{"type":"rpc","id":"1","success":1,"done":null}"#, false),
            (r#"{"type":"rpc","id":"1","success":"y","done":0}"#, false),
            (
                r#"{"type":"rpc","id":"1","success":true,"done":"yes"}"#,
                true,
            ),
            (r#"{"type":"rpc","id":"1","success":[]}"#, true),
        ] {
            let Some(RpcResponse::Success { done, .. }) = decode(text) else {
                panic!("{text}")
            };
            assert_eq!(done, want_done, "{text}");
        }
        for text in [
            r#"{"type":"rpc","id":"1","success":0}"#,
            r#"{"type":"rpc","id":"1","success":-0.0e5}"#,
            r#"{"type":"rpc","id":"1","success":1e-400,"error":"e"}"#,
            r#"{"type":"rpc","id":"1","success":""}"#,
            r#"{"type":"rpc","id":"1","success":null}"#,
        ] {
            assert!(
                matches!(decode(text), Some(RpcResponse::Error { .. })),
                "{text}"
            );
        }
        // Without a string id it is a user frame.
        assert!(decode(r#"{"type":"rpc","id":7,"success":true}"#).is_none());
        assert!(decode(r#"{"type":"rpc","success":true}"#).is_none());
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
