//! Golden test: every JSON frame captured from the real Cloudflare Agent
//! (`tests/fixtures/reference-*.log`, copied from `shared/fixtures`) decodes,
//! and re-encoding it gives the same JSON value.

use agents_protocol::{ClientMessage, Incoming, ServerMessage};
use serde_json::Value;

#[path = "fixtures/frames.rs"]
mod fixtures;
use fixtures::frames;

/// The spec's rule for a client frame being protocol (§2.4, §2.5), written
/// independently of the crate with `serde_json::Value`.
fn is_client_protocol(v: &Value) -> bool {
    match v.get("type").and_then(Value::as_str) {
        Some("cf_agent_state") => v.get("state").is_some(),
        Some("rpc") => {
            v.get("id").is_some_and(Value::is_string)
                && v.get("method").is_some_and(Value::is_string)
                && v.get("args").is_some_and(Value::is_array)
        }
        _ => false,
    }
}

/// The re-encoding of a protocol frame; `None` for raw text, which must be
/// handed on unchanged.
fn encoded<M>(decoded: Incoming<'_, M>, text: &str, encode: fn(&M) -> String) -> Option<String> {
    match decoded {
        Incoming::Protocol(msg) => Some(encode(&msg)),
        Incoming::Raw(t) => {
            assert_eq!(t, text, "raw text must be unchanged");
            None
        }
    }
}

const SERVER_TYPES: [&str; 5] = [
    "cf_agent_identity",
    "cf_agent_state",
    "cf_agent_state_error",
    "cf_agent_mcp_servers",
    "rpc",
];

#[test]
fn every_reference_frame_round_trips() {
    let frames = frames();
    assert!(
        frames.len() > 60,
        "expected the full captures, found {} frames",
        frames.len()
    );
    let (mut protocol, mut raw) = (0, 0);
    for f in &frames {
        let json: Option<Value> = serde_json::from_str(&f.text).ok();
        // Re-encoded frame, or `None` when the frame decoded as raw text.
        let (expect_protocol, reencoded) = if f.to_client {
            let expect = json.as_ref().is_some_and(|v| {
                v.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| SERVER_TYPES.contains(&t))
            });
            (
                expect,
                encoded(
                    ServerMessage::decode(&f.text),
                    &f.text,
                    ServerMessage::to_json,
                ),
            )
        } else {
            let expect = json.as_ref().is_some_and(is_client_protocol);
            (
                expect,
                encoded(
                    ClientMessage::decode(&f.text),
                    &f.text,
                    ClientMessage::to_json,
                ),
            )
        };
        match reencoded {
            Some(ours) => {
                assert!(expect_protocol, "decoded a non-protocol frame: {}", f.text);
                let ours: Value = serde_json::from_str(&ours).unwrap();
                assert_eq!(&ours, json.as_ref().unwrap(), "re-encoding {}", f.text);
                protocol += 1;
            }
            None => {
                assert!(!expect_protocol, "failed to decode {}", f.text);
                raw += 1;
            }
        }
    }
    // The captures hold both kinds; make sure neither path went untested.
    assert!(protocol >= 40, "protocol frames: {protocol}");
    assert!(raw >= 10, "raw frames: {raw}");
}

/// The connect frames of an agent with state, byte for byte as the reference
/// sends them.
#[test]
fn connect_frames_are_byte_identical() {
    use agents_protocol::{Identity, McpState, RawValue};
    let identity = ServerMessage::Identity(Identity {
        name: "c".into(),
        agent: "counter-agent".into(),
        state_follows: true,
    });
    assert_eq!(
        identity.to_json(),
        r#"{"type":"cf_agent_identity","name":"c","agent":"counter-agent","stateFollows":true}"#
    );
    let state = ServerMessage::State(RawValue::from_string(r#"{"count":0}"#.into()).unwrap());
    assert_eq!(
        state.to_json(),
        r#"{"type":"cf_agent_state","state":{"count":0}}"#
    );
    assert_eq!(
        ServerMessage::McpServers(McpState::default()).to_json(),
        r#"{"mcp":{"prompts":[],"resources":[],"servers":{},"tools":[]},"type":"cf_agent_mcp_servers"}"#
    );
}
