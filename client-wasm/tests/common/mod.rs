//! Helpers for the native tests of the core: a core with plain Rust values,
//! frames read from JSON as the browser reads them, and action filters.

#![allow(dead_code, missing_docs, unreachable_pub)]

use agents_client::action::{Action, Close, Event, Out, Outcome};
use agents_client::machine::{Core, BACKOFF};
use agents_client::options::ClientOptions;
use agents_protocol::frame::{classify, FrameFields, FrameType, ServerFrame};
use serde_json::Value;

/// Values are JSON texts, call handles numbers.
pub type TestCore = Core<String, u32>;
pub type TestAction = Action<String, u32>;

pub fn options() -> ClientOptions<String> {
    ClientOptions::new("CounterAgent", "room", "127.0.0.1:8787")
}

/// A started core (its start-up actions taken).
pub fn started(tune: impl FnOnce(&mut ClientOptions<String>)) -> TestCore {
    let mut o = options();
    tune(&mut o);
    let mut core = Core::new(o, 7).unwrap();
    core.start(true);
    core.take_actions();
    core
}

/// A core whose first socket is open, with the handshake's actions taken.
pub fn open(tune: impl FnOnce(&mut ClientOptions<String>)) -> TestCore {
    let mut core = started(tune);
    core.opened(1);
    core.take_actions();
    core
}

/// A parsed JSON object read with JavaScript's semantics (what the browser
/// client's reader does with a `JSON.parse`d object).
pub struct JsonFrame<'a>(pub &'a serde_json::Map<String, Value>);

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

impl FrameFields for JsonFrame<'_> {
    type Value = String;
    type Str = String;
    fn frame_type(&self) -> Option<FrameType> {
        FrameType::from_name(self.0.get("type")?.as_str()?)
    }
    fn value(&self, key: &'static str) -> Option<String> {
        self.0.get(key).map(Value::to_string)
    }
    fn string(&self, key: &'static str) -> Option<String> {
        self.0.get(key)?.as_str().map(str::to_owned)
    }
    fn truthy(&self, value: &String) -> bool {
        truthy(&serde_json::from_str(value).unwrap())
    }
    fn is_true(&self, key: &'static str) -> bool {
        self.0.get(key) == Some(&Value::Bool(true))
    }
    fn is_object(&self, key: &'static str) -> bool {
        self.0.get(key).is_some_and(Value::is_object)
    }
}

/// Sorts `text` as the browser client does: a JSON object through the rule,
/// anything else the user's.
pub fn sort(text: &str) -> ServerFrame<String, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => classify(&JsonFrame(&map)),
        _ => ServerFrame::User,
    }
}

/// Feeds a frame text to the open socket of attempt `gen`.
pub fn receive(core: &mut TestCore, gen: u32, text: &str) -> Vec<TestAction> {
    assert!(core.frame(gen, sort(text)), "frame dropped: {text}");
    core.take_actions()
}

pub fn sent(actions: &[TestAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Out::User(v)) => Some(v.clone()),
            Action::Send(Out::Frame(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

pub fn settled(actions: &[TestAction]) -> Vec<(u32, Outcome<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Settle(h, o) => Some((*h, o.clone())),
            _ => None,
        })
        .collect()
}

pub fn events(actions: &[TestAction]) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub fn close_event(code: u16, reason: &str, clean: bool) -> Event {
    Event::Close(Close::new(code, reason, clean))
}

/// The timers started (`ms >= 0`) by `actions`.
pub fn timers(actions: &[TestAction]) -> Vec<(u32, f64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Timer { id, ms } if *ms >= 0.0 => Some((*id, *ms)),
            _ => None,
        })
        .collect()
}

/// The backoff delay `actions` started, if any.
pub fn backoff(actions: &[TestAction]) -> Option<f64> {
    timers(actions)
        .iter()
        .find(|(id, _)| *id == BACKOFF)
        .map(|t| t.1)
}

/// The URLs of the sockets `actions` open, with their attempt.
pub fn opens(actions: &[TestAction]) -> Vec<(u32, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Open { gen, url, .. } => Some((*gen, url.clone())),
            _ => None,
        })
        .collect()
}
