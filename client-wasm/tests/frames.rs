//! One rule for server frames: the browser client (here its rule applied
//! to JSON read with JavaScript's semantics; `tests/browser_no_server.rs`
//! runs the real browser reader) and the protocol crate's decoder give the
//! same answer on every frame captured from the reference and on malformed
//! variants of each.

#![cfg(not(target_arch = "wasm32"))]

mod common;

#[path = "../../protocol/tests/fixtures/frames.rs"]
mod fixtures;

#[path = "common/answers.rs"]
mod answers;

use agents_protocol::frame::UNKNOWN_RPC_ERROR;
use answers::{json, protocol_answer, Answer, HOSTILE, VARIANTS};
use serde_json::Value;

fn client_answer(text: &str) -> Answer {
    answers::client_answer(common::sort(text), |v| json(v))
}

#[test]
fn the_client_and_the_protocol_crate_sort_every_frame_alike() {
    let captured: Vec<String> = fixtures::frames()
        .into_iter()
        .filter(|f| f.to_client)
        .map(|f| f.text)
        .collect();
    assert!(captured.len() > 40, "{} frames", captured.len());
    let (mut protocol, mut user) = (0, 0);
    let variants = HOSTILE.iter().chain(VARIANTS).copied();
    for text in captured.iter().map(String::as_str).chain(variants) {
        let ours = client_answer(text);
        assert_eq!(ours, protocol_answer(text), "{text}");
        if ours == Answer::User {
            user += 1;
        } else {
            protocol += 1;
        }
    }
    assert!(
        protocol >= 50 && user >= 25,
        "{protocol} protocol, {user} user"
    );
}

/// The answers the rule gives, spelled out for a few variants.
#[test]
fn the_rule_follows_the_reference_client() {
    assert_eq!(
        client_answer(r#"{"type":"rpc","id":"1"}"#),
        Answer::Error("1".into(), UNKNOWN_RPC_ERROR.into())
    );
    assert_eq!(
        client_answer(r#"{"type":"rpc","id":"1","success":true,"done":null}"#),
        Answer::Result("1".into(), false, None)
    );
    assert_eq!(
        client_answer(r#"{"type":"rpc","id":"a","id":"b","success":true}"#),
        Answer::Result("b".into(), true, None)
    );
    assert_eq!(
        client_answer(r#"{"type":"cf_agent_identity"}"#),
        Answer::User
    );
    assert_eq!(
        client_answer(r#"{"type":"cf_agent_state","state":null}"#),
        Answer::State(Value::Null)
    );
}
