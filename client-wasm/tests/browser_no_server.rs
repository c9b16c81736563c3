//! Browser tests that need no server (the negative run of `scripts/test.sh`
//! leaves them out; every test in `browser.rs` needs one): construction
//! errors, the `EventTarget` surface, and the browser's frame reader
//! against the protocol crate's decoder.

#![cfg(target_arch = "wasm32")]
#![allow(missing_docs)]

#[path = "common/answers.rs"]
mod answers;
#[path = "../../protocol/tests/fixtures/frames.rs"]
mod fixtures;

use agents_client::client::{install, AgentClient};
use js_sys::{Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn client(json: &str) -> Result<AgentClient, JsValue> {
    install();
    AgentClient::new(&JSON::parse(json).unwrap())
}

#[wasm_bindgen_test]
fn bad_options_throw_clear_errors() {
    let message = |json: &str| {
        let err = client(json).unwrap_err();
        assert!(err.is_instance_of::<js_sys::Error>());
        Reflect::get(&err, &"message".into())
            .unwrap()
            .as_string()
            .unwrap()
    };
    let cases = [
        (
            r#"{"agent":"EchoAgent","path":"/x"}"#,
            "path must not start with a slash",
        ),
        (r#"{"name":"x"}"#, "agent is required"),
        (
            r#"{"agent":"EchoAgent","maxRetries":-1}"#,
            "maxRetries must be a number >= 0",
        ),
        (r#"{"agent":"EchoAgent","name":5}"#, "name must be a string"),
        (
            r#"{"agent":"EchoAgent","protocol":"http"}"#,
            "protocol must be \"ws\" or \"wss\", not \"http\"",
        ),
        (
            r#"{"agent":"EchoAgent","query":5}"#,
            "query must be an object or a function",
        ),
        (r#"5"#, "AgentClient needs an options object"),
    ];
    for (json, want) in cases {
        assert_eq!(message(json), want, "{json}");
    }
}

/// A real `EventTarget`: `instanceof`, `dispatchEvent` reaching listeners,
/// `once` and removal handled by the platform.
#[wasm_bindgen_test]
fn the_client_is_an_event_target() {
    let c = client(r#"{"agent":"EchoAgent","host":"127.0.0.1:9","startClosed":true}"#).unwrap();
    assert!(c.is_instance_of::<web_sys::EventTarget>());
    assert_eq!(c.ready_state(), 3, "startClosed opens nothing");
    assert_eq!(c.url(), "");
    assert_eq!(c.agent(), "echo-agent");
    assert_eq!(c.name(), "default");
    assert_eq!(c.id().len(), 36);
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    let s = seen.clone();
    let f = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        assert_eq!(e.type_(), "custom");
        s.set(s.get() + 1);
    });
    let once = web_sys::AddEventListenerOptions::new();
    once.set_once(true);
    c.add_event_listener_with_callback_and_add_event_listener_options(
        "custom",
        f.as_ref().unchecked_ref(),
        &once,
    )
    .unwrap();
    let event = web_sys::Event::new("custom").unwrap();
    assert!(c.dispatch_event(&event).unwrap());
    assert!(c
        .dispatch_event(&web_sys::Event::new("custom").unwrap())
        .unwrap());
    assert_eq!(seen.get(), 1, "once");
    c.free();
}

/// The browser's reader (`JSON.parse` and JavaScript objects) sorts every
/// captured frame and every malformed variant as the protocol crate decodes
/// it.
#[wasm_bindgen_test]
fn frames_sort_as_the_protocol_crate_decodes_them() {
    let to_json = |v: &JsValue| {
        let text = JSON::stringify(v).unwrap().as_string().unwrap();
        answers::json(&text)
    };
    let captured = fixtures::frames()
        .into_iter()
        .filter(|f| f.to_client)
        .map(|f| f.text);
    let variants = answers::HOSTILE
        .iter()
        .chain(answers::VARIANTS)
        .map(|v| v.to_string());
    let mut count = 0;
    for text in captured.chain(variants) {
        let ours = answers::client_answer(agents_client::js_value::sort_frame(&text), to_json);
        assert_eq!(ours, answers::protocol_answer(&text), "{text}");
        count += 1;
    }
    assert!(count > 80, "{count}");
}
