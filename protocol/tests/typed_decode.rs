//! `TypedClientMessage::decode` (the state parsed straight into the
//! server's type, in one pass) against the two-step reading it replaces:
//! `ClientMessage::decode`, then the state's own slice parsed into the type.
//! Both must agree on every frame — the golden captures and hostile input.

use std::cell::Cell;

use agents_protocol::message::{StateDecodeError, TypedClientMessage};
use agents_protocol::{ClientMessage, Incoming};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

#[path = "fixtures/frames.rs"]
mod fixtures;

/// What a decoding means, in a form two decoders can be compared by.
#[derive(Debug, PartialEq)]
enum Meaning<S> {
    Raw,
    State(Result<S, String>),
    TooLarge { len: usize, max: usize },
    Rpc(String, String, String),
}

fn typed<S: DeserializeOwned>(text: &str, max: usize) -> Meaning<S> {
    match TypedClientMessage::<S>::decode(text, max) {
        Incoming::Raw(raw) => {
            assert_eq!(raw, text, "raw text must be unchanged");
            Meaning::Raw
        }
        Incoming::Protocol(TypedClientMessage::State(Ok(s))) => Meaning::State(Ok(s)),
        Incoming::Protocol(TypedClientMessage::State(Err(StateDecodeError::Invalid(e)))) => {
            Meaning::State(Err(e.to_string()))
        }
        Incoming::Protocol(TypedClientMessage::State(Err(StateDecodeError::TooLarge {
            len,
            max,
        }))) => Meaning::TooLarge { len, max },
        Incoming::Protocol(TypedClientMessage::Rpc(r)) => {
            Meaning::Rpc(r.id, r.method, r.args.get().to_owned())
        }
    }
}

/// The reading the typed decode replaces.
fn two_step<S: DeserializeOwned>(text: &str, max: usize) -> Meaning<S> {
    match ClientMessage::decode(text) {
        Incoming::Raw(_) => Meaning::Raw,
        Incoming::Protocol(ClientMessage::State(raw)) if raw.get().len() > max => {
            Meaning::TooLarge {
                len: raw.get().len(),
                max,
            }
        }
        Incoming::Protocol(ClientMessage::State(raw)) => {
            Meaning::State(serde_json::from_str(raw.get()).map_err(|e| e.to_string()))
        }
        Incoming::Protocol(ClientMessage::Rpc(r)) => {
            Meaning::Rpc(r.id, r.method, r.args.get().to_owned())
        }
    }
}

fn agree<S: DeserializeOwned + PartialEq + std::fmt::Debug>(text: &str, max: usize) -> Meaning<S> {
    let one = typed::<S>(text, max);
    assert_eq!(one, two_step::<S>(text, max), "{text}");
    one
}

#[derive(Debug, PartialEq, Deserialize)]
struct Counter {
    count: i64,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict {
    count: i64,
}

const BIG: usize = 1 << 20;

#[test]
fn every_captured_client_frame_reads_as_before() {
    let mut states = 0;
    for f in fixtures::frames().iter().filter(|f| !f.to_client) {
        if let Meaning::State(Ok(_)) = agree::<Value>(&f.text, BIG) {
            states += 1;
        }
        agree::<Counter>(&f.text, BIG);
        agree::<Option<Strict>>(&f.text, BIG);
        // A limit below every state: each is refused, none parsed.
        if let Meaning::State(_) = agree::<Value>(&f.text, 0) {
            panic!("a state under a zero limit: {}", f.text);
        }
    }
    assert!(states >= 5, "captured client states: {states}");
}

#[test]
fn hostile_frames_read_as_before() {
    let frames = [
        // Well-formed, in both key orders, escaped type, null and odd states.
        r#"{"type":"cf_agent_state","state":{"count":1}}"#,
        r#"{"state":{"count":2},"type":"cf_agent_state"}"#,
        r#"{"type":"cf_agent_st\u0061te","state":{"count":3}}"#,
        r#" {"type":"cf_agent_state","state":null} "#,
        r#"{"type":"cf_agent_state","state":[1,2]}"#,
        r#"{"type":"cf_agent_state","state":"text"}"#,
        r#"{"type":"cf_agent_state","state":7}"#,
        // Unknown fields, in the frame and in the state.
        r#"{"type":"cf_agent_state","extra":{"a":[1,{"b":null}]},"state":{"count":4}}"#,
        r#"{"type":"cf_agent_state","state":{"count":5,"other":true}}"#,
        // The wrong type in the state, error positions within it.
        r#"{"type":"cf_agent_state","state":{"count":"many"}}"#,
        "{\"type\":\"cf_agent_state\",\n\"state\":{\n\"count\":1.5}}",
        // Repeated keys: the last wins, also when an earlier one does not fit.
        r#"{"type":"cf_agent_state","state":"no","state":{"count":6}}"#,
        r#"{"type":"cf_agent_state","state":{"count":7},"state":"no"}"#,
        r#"{"type":"rpc","type":"cf_agent_state","state":{"count":8}}"#,
        r#"{"type":"cf_agent_state","state":{"count":9},"type":"rpc"}"#,
        // Malformed JSON inside the state, trailing garbage, truncation.
        r#"{"type":"cf_agent_state","state":{"count":1,}}"#,
        r#"{"type":"cf_agent_state","state":{"count":01}}"#,
        r#"{"type":"cf_agent_state","state":"\ud800"}"#,
        r#"{"type":"cf_agent_state","state":"bad \x escape"}"#,
        r#"{"type":"cf_agent_state","state":{"count":1}}}"#,
        r#"{"type":"cf_agent_state","state":{"count":1}} x"#,
        r#"{"type":"cf_agent_state","state":{"count":1}"#,
        r#"{"type":"cf_agent_state","state":}"#,
        // No state, another type, not an object.
        r#"{"type":"cf_agent_state"}"#,
        r#"{"type":"cf_agent_state_error","state":{"count":1}}"#,
        r#"{"type":"CF_AGENT_STATE","state":{"count":1}}"#,
        r#"{"type":null,"state":{"count":1}}"#,
        r#"{"state":{"count":1}}"#,
        r#"[{"type":"cf_agent_state","state":{"count":1}}]"#,
        r#""{\"type\":\"cf_agent_state\"}""#,
        "",
        "hello",
        // RPC frames, also next to a state that does not fit.
        r#"{"type":"rpc","id":"1","method":"m","args":[1]}"#,
        r#"{"type":"rpc","id":"1","method":"m","args":[1],"state":"not a counter"}"#,
        r#"{"state":{"count":1},"type":"rpc","id":"1","method":"m","args":[]}"#,
        r#"{"type":"rpc","id":"1","method":"m","args":{}}"#,
        r#"{"type":"rpc","id":"1","method":"m","args":[1],"state":{"count":}}"#,
    ];
    for text in frames {
        agree::<Value>(text, BIG);
        agree::<Counter>(text, BIG);
        agree::<Strict>(text, BIG);
        agree::<Option<Counter>>(text, BIG);
        for max in [0, 5, 11, 12, 13, 40] {
            agree::<Value>(text, max);
            agree::<Counter>(text, max);
        }
    }
    // A few spelled out.
    assert_eq!(
        agree::<Counter>(frames[1], BIG),
        Meaning::State(Ok(Counter { count: 2 }))
    );
    assert_eq!(
        agree::<Counter>(frames[11], BIG),
        Meaning::State(Ok(Counter { count: 6 }))
    );
    assert!(matches!(
        agree::<Strict>(frames[8], BIG),
        Meaning::State(Err(e)) if e.contains("unknown field")
    ));
    assert_eq!(
        agree::<Counter>(frames[10], BIG),
        Meaning::State(Err(
            "invalid type: floating point `1.5`, expected i64 at line 2 column 11".into()
        ))
    );
    assert_eq!(agree::<Value>(frames[15], BIG), Meaning::Raw);
    assert_eq!(agree::<Value>(frames[19], BIG), Meaning::Raw);
    assert!(matches!(
        agree::<Counter>(frames[33], BIG),
        Meaning::Rpc(id, _, _) if id == "1"
    ));
}

/// Counts how often it is deserialized (on this test's thread).
struct Counted;

thread_local! {
    static PARSED: Cell<usize> = const { Cell::new(0) };
}

fn parsed() -> usize {
    PARSED.with(Cell::get)
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PARSED.with(|n| n.set(n.get() + 1));
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Counted)
    }
}

#[test]
fn a_state_over_the_limit_is_measured_never_parsed() {
    let state = format!(r#"{{"blob":"{}"}}"#, "a".repeat(1000));
    let len = state.len();
    let text = format!(r#"{{"type":"cf_agent_state","state":{state}}}"#);
    let before = parsed();
    for max in [0, 1, len - 1] {
        let Incoming::Protocol(TypedClientMessage::State(Err(StateDecodeError::TooLarge {
            len: got,
            max: limit,
        }))) = TypedClientMessage::<Counted>::decode(&text, max)
        else {
            panic!("over the limit of {max}")
        };
        assert_eq!((got, limit), (len, max));
    }
    assert_eq!(parsed(), before, "parsed over the limit");
    // At the limit exactly, and when only the frame is over it: one parse.
    for (text, max) in [
        (text.clone(), len),
        (
            format!(
                r#"{{"pad":"{}","type":"cf_agent_state","state":{state}}}"#,
                "p".repeat(100)
            ),
            len,
        ),
    ] {
        let before = parsed();
        assert!(matches!(
            TypedClientMessage::<Counted>::decode(&text, max),
            Incoming::Protocol(TypedClientMessage::State(Ok(Counted)))
        ));
        assert_eq!(parsed(), before + 1);
    }
    // The tightest frames around a state at the limit and one byte over.
    for (state, max, fits) in [("12345", 5, true), ("123456", 5, false)] {
        for text in [
            format!(r#"{{"state":{state},"type":"cf_agent_state"}}"#),
            format!(r#"{{"type":"cf_agent_state","state":{state}}}"#),
        ] {
            assert_eq!(
                matches!(
                    TypedClientMessage::<Value>::decode(&text, max),
                    Incoming::Protocol(TypedClientMessage::State(Ok(_)))
                ),
                fits,
                "{text}"
            );
            agree::<Value>(&text, max);
        }
    }
    assert_eq!(
        StateDecodeError::TooLarge { len, max: 10 }.to_string(),
        "state is larger than 10 bytes"
    );
}

#[test]
fn a_frame_within_the_limit_is_read_once() {
    let text = r#"{"state":{"n":[1,2,3]},"type":"cf_agent_state"}"#;
    let before = parsed();
    assert!(matches!(
        TypedClientMessage::<Counted>::decode(text, BIG),
        Incoming::Protocol(TypedClientMessage::State(Ok(Counted)))
    ));
    assert_eq!(parsed(), before + 1);
}

#[test]
fn deep_states_read_as_they_would_alone() {
    // Nested as deep as serde_json reads a value alone: one level less
    // inside the frame, so the typed reading falls back and still agrees.
    for depth in [100, 127, 128, 129] {
        let state = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let text = format!(r#"{{"type":"cf_agent_state","state":{state}}}"#);
        agree::<Value>(&text, BIG);
    }
}
