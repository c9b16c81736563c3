//! `AgentClient` in headless Chromium against the real `agents-server`
//! binary, run by `scripts/test.sh` with `AGENTS_SERVER_HOST` and
//! `AGENTS_CONTROL` (the supervisor that kills and restarts the server) set.
//! Every test fails when the server is not running.

#![cfg(target_arch = "wasm32")]
#![allow(missing_docs)]

use std::cell::RefCell;
use std::rc::Rc;

use agents_client::AgentClient;
use js_sys::{Array, Object, Reflect, Uint8Array, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const HOST: Option<&str> = option_env!("AGENTS_SERVER_HOST");
const CONTROL: Option<&str> = option_env!("AGENTS_CONTROL");
/// Longest wait for any one event.
const WAIT_MS: f64 = 10_000.0;

#[wasm_bindgen(inline_js = "
export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
export async function control(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`control ${url}: ${r.status}`);
  return await r.text();
}
export function within(p, ms, what) {
  return Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), ms))]);
}
")]
extern "C" {
    fn sleep(ms: u32) -> js_sys::Promise;
    #[wasm_bindgen(catch)]
    fn control(url: &str) -> Result<js_sys::Promise, JsValue>;
    fn within(p: &js_sys::Promise, ms: f64, what: &str) -> js_sys::Promise;
}

fn host() -> &'static str {
    HOST.expect("AGENTS_SERVER_HOST is not set: run these through scripts/test.sh (did you set AGENTS_SERVER_HOST?)")
}

async fn ctl(action: &str) -> String {
    let base = CONTROL.expect("AGENTS_CONTROL is not set (did you run scripts/test.sh?)");
    let reply = JsFuture::from(control(&format!("{base}/{action}")).unwrap()).await;
    reply
        .expect("the test supervisor is not running")
        .as_string()
        .unwrap()
}

/// Fails at once when the server is down.
async fn server_up() {
    assert_eq!(
        ctl("status").await,
        "running",
        "agents-server is not running"
    );
}

async fn pause(ms: u32) {
    JsFuture::from(sleep(ms)).await.unwrap();
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// A unique instance name per test run.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e9) as u64)
}

/// Options from JSON plus the test server's host.
fn options(json: &str) -> Object {
    let o: Object = JSON::parse(json).unwrap().unchecked_into();
    Reflect::set(&o, &"host".into(), &host().into()).unwrap();
    o
}

fn set_fn(o: &Object, key: &str, f: &Closure<dyn FnMut(JsValue, JsValue)>) {
    Reflect::set(o, &key.into(), f.as_ref()).unwrap();
}

/// Records every event a client dispatches.
struct Recorder {
    events: Rc<RefCell<Vec<(String, JsValue)>>>,
    _listeners: Vec<Closure<dyn FnMut(web_sys::Event)>>,
}

impl Recorder {
    fn new(client: &AgentClient) -> Recorder {
        let events = Rc::new(RefCell::new(Vec::new()));
        let mut listeners = Vec::new();
        for ty in ["open", "message", "close", "error"] {
            let events = events.clone();
            let f = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                events.borrow_mut().push((ty.to_owned(), e.into()));
            });
            client.add_event_listener(ty, f.as_ref(), None);
            listeners.push(f);
        }
        Recorder {
            events,
            _listeners: listeners,
        }
    }

    fn count(&self, ty: &str) -> usize {
        self.events.borrow().iter().filter(|(t, _)| t == ty).count()
    }

    /// User messages (text that is not a protocol frame, and binary), in order.
    fn messages(&self) -> Vec<JsValue> {
        self.events
            .borrow()
            .iter()
            .filter(|(t, _)| t == "message")
            .map(|(_, e)| Reflect::get(e, &"data".into()).unwrap())
            .filter(|d| {
                !d.as_string().is_some_and(|s| {
                    s.contains("\"type\":\"cf_agent") || s.contains("\"type\":\"rpc\"")
                })
            })
            .collect()
    }

    fn texts(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(JsValue::as_string)
            .collect()
    }

    fn last(&self, ty: &str) -> Option<JsValue> {
        self.events
            .borrow()
            .iter()
            .rev()
            .find(|(t, _)| t == ty)
            .map(|(_, e)| e.clone())
    }

    async fn until(&self, what: &str, mut done: impl FnMut(&Recorder) -> bool) {
        let start = now();
        while !done(self) {
            assert!(
                now() - start < WAIT_MS,
                "timed out waiting for {what}; events: {:?}",
                self.summary()
            );
            pause(5).await;
        }
    }

    fn summary(&self) -> Vec<String> {
        self.events
            .borrow()
            .iter()
            .map(|(t, e)| match t.as_str() {
                "message" => format!(
                    "message {:?}",
                    Reflect::get(e, &"data".into()).unwrap().as_string()
                ),
                "close" => format!(
                    "close {:?}",
                    Reflect::get(e, &"code".into()).unwrap().as_f64()
                ),
                other => other.to_owned(),
            })
            .collect()
    }
}

/// What a recording callback saw, and the callback.
type Recorded = (
    Rc<RefCell<Vec<String>>>,
    Closure<dyn FnMut(JsValue, JsValue)>,
);

/// An `onStateUpdate` callback recording `"<state JSON> <source>"` lines.
fn state_recorder() -> Recorded {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let on_state =
        Closure::<dyn FnMut(JsValue, JsValue)>::new(move |state: JsValue, source: JsValue| {
            s.borrow_mut().push(format!(
                "{} {}",
                JSON::stringify(&state).unwrap(),
                source.as_string().unwrap()
            ));
        });
    (seen, on_state)
}

async fn ready(client: &AgentClient) {
    JsFuture::from(within(&client.ready(), WAIT_MS, "ready"))
        .await
        .unwrap();
}

async fn call(
    client: &AgentClient,
    method: &str,
    args: &str,
    opts: &JsValue,
) -> Result<JsValue, String> {
    let args: Array = JSON::parse(args).unwrap().unchecked_into();
    let promise = client
        .call(method, Some(args), Some(opts.clone()))
        .map_err(|e| format!("{e:?}"))?;
    JsFuture::from(promise).await.map_err(|e| {
        Reflect::get(&e, &"message".into())
            .unwrap()
            .as_string()
            .unwrap_or_default()
    })
}

#[wasm_bindgen_test]
async fn echoes_text_and_binary() {
    server_up().await;
    let client = AgentClient::new(
        options(&format!(
            r#"{{"agent":"EchoAgent","name":"{}"}}"#,
            unique("echo")
        ))
        .into(),
    )
    .unwrap();
    client.set_binary_type(web_sys::BinaryType::Arraybuffer);
    let rec = Recorder::new(&client);
    ready(&client).await;
    assert!(client.identified());
    assert_eq!(client.agent(), "echo-agent");
    // Raw listeners see the protocol frames as well.
    rec.until("identity frame", |r| {
        r.summary().iter().any(|m| m.contains("cf_agent_identity"))
    })
    .await;
    assert!(client.send("hello".into()).unwrap());
    let bytes = Uint8Array::from(&[0u8, 1, 2, 250, 255][..]);
    client.send(bytes.into()).unwrap();
    rec.until("both echoes", |r| r.messages().len() == 2).await;
    let msgs = rec.messages();
    assert_eq!(msgs[0].as_string().as_deref(), Some("hello"));
    assert!(msgs[1].is_instance_of::<js_sys::ArrayBuffer>());
    assert_eq!(Uint8Array::new(&msgs[1]).to_vec(), vec![0, 1, 2, 250, 255]);
    let url = client.url();
    assert!(
        url.starts_with(&format!("ws://{}/agents/echo-agent/echo-", host())),
        "{url}"
    );
    assert!(url.contains(&format!("?_pk={}", client.id())), "{url}");
    client.close(None, None);
}

#[wasm_bindgen_test]
async fn identity_and_state_handshake() {
    server_up().await;
    let (seen, on_state) = state_recorder();
    let name = unique("hs");
    let o = options(&format!(r#"{{"agent":"CounterAgent","name":"{name}"}}"#));
    set_fn(&o, "onStateUpdate", &on_state);
    let client = AgentClient::new(o.into()).unwrap();
    assert_eq!(client.ready_state(), 0);
    ready(&client).await;
    assert_eq!(client.ready_state(), 1);
    assert_eq!(client.name(), name);
    assert_eq!(client.agent(), "counter-agent");
    assert_eq!(JSON::stringify(&client.state()).unwrap(), r#"{"count":0}"#);
    // `ready` resolved only after the state was applied.
    assert_eq!(*seen.borrow(), [r#"{"count":0} server"#]);
    client.close(None, None);
}

#[wasm_bindgen_test]
async fn two_clients_sync_state() {
    server_up().await;
    let (seen, on_state) = state_recorder();
    let name = unique("sync");
    let a =
        AgentClient::new(options(&format!(r#"{{"agent":"CounterAgent","name":"{name}"}}"#)).into())
            .unwrap();
    let ob = options(&format!(r#"{{"agent":"CounterAgent","name":"{name}"}}"#));
    set_fn(&ob, "onStateUpdate", &on_state);
    let b = AgentClient::new(ob.into()).unwrap();
    ready(&a).await;
    ready(&b).await;
    a.set_state(JSON::parse(r#"{"count":41}"#).unwrap())
        .unwrap();
    assert_eq!(JSON::stringify(&a.state()).unwrap(), r#"{"count":41}"#);
    let start = now();
    while !seen.borrow().iter().any(|s| s == r#"{"count":41} server"#) {
        assert!(
            now() - start < WAIT_MS,
            "b never saw the state: {:?}",
            seen.borrow()
        );
        pause(5).await;
    }
    // And the server's own change (RPC) reaches both.
    assert_eq!(
        call(&a, "increment", "[1]", &JsValue::UNDEFINED)
            .await
            .unwrap(),
        42
    );
    let start = now();
    while JSON::stringify(&b.state()).unwrap() != r#"{"count":42}"# {
        assert!(
            now() - start < WAIT_MS,
            "b state {:?}",
            JSON::stringify(&b.state())
        );
        pause(5).await;
    }
    a.close(None, None);
    b.close(None, None);
}

#[wasm_bindgen_test]
async fn calls_succeed_fail_and_stream() {
    server_up().await;
    let client = AgentClient::new(
        options(&format!(
            r#"{{"agent":"CounterAgent","name":"{}"}}"#,
            unique("rpc")
        ))
        .into(),
    )
    .unwrap();
    ready(&client).await;
    assert_eq!(
        call(&client, "increment", "[2]", &JsValue::UNDEFINED)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        call(&client, "nope", "[]", &JsValue::UNDEFINED)
            .await
            .unwrap_err(),
        "Method nope does not exist"
    );
    let err = call(&client, "increment", r#"["x"]"#, &JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert!(err.starts_with("Invalid arguments for increment"), "{err}");

    let chunks = Rc::new(RefCell::new(Vec::new()));
    let c = chunks.clone();
    let on_chunk = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
        c.borrow_mut().push(v.as_f64().unwrap())
    });
    let done = Rc::new(RefCell::new(None));
    let d = done.clone();
    let on_done =
        Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| *d.borrow_mut() = v.as_f64());
    let stream = Object::new();
    Reflect::set(&stream, &"onChunk".into(), on_chunk.as_ref()).unwrap();
    Reflect::set(&stream, &"onDone".into(), on_done.as_ref()).unwrap();
    let opts = Object::new();
    Reflect::set(&opts, &"stream".into(), &stream).unwrap();
    let result = call(&client, "count_to", "[5]", &opts).await.unwrap();
    assert_eq!(result, 5);
    assert_eq!(*chunks.borrow(), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(*done.borrow(), Some(5.0));

    client.close(None, None);
    // A call after close() rejects at once.
    assert_eq!(
        call(&client, "increment", "[1]", &JsValue::UNDEFINED)
            .await
            .unwrap_err(),
        "Connection closed"
    );
}

/// Frames the client cannot use — malformed JSON, unknown or ill-typed
/// protocol frames, answers to calls it never made, a large invalid frame —
/// reach the listeners unchanged and in order, and change nothing else.
/// (echo-agent sends back whatever is not a client→server protocol frame.)
#[wasm_bindgen_test]
async fn hostile_frames_reach_listeners_and_change_nothing() {
    server_up().await;
    let name = unique("hostile");
    let client =
        AgentClient::new(options(&format!(r#"{{"agent":"EchoAgent","name":"{name}"}}"#)).into())
            .unwrap();
    let rec = Recorder::new(&client);
    ready(&client).await;
    // Built and compared on the JS side, so the test itself does not grow
    // wasm memory (the leak test measures it concurrently).
    let big: JsValue = js_sys::JsString::from(r#"{"type":"rpc","id":""#)
        .concat(&js_sys::JsString::from("x").repeat(200_000))
        .into();
    let hostile: Vec<JsValue> = [
        "{",
        "{}",
        "[1,2]",
        "null",
        r#""{\"type\":\"rpc\"}""#,
        r#"{"type":42}"#,
        r#"{"type":"cf_agent_no_such_frame"}"#,
        r#"{"type":"cf_agent_identity"}"#,
        r#"{"type":"cf_agent_identity","name":5,"agent":null}"#,
        r#"{"type":"rpc"}"#,
        r#"{"type":"rpc","id":"never-sent","success":true,"done":true,"result":1}"#,
        r#"{"type":"rpc","id":7,"success":false,"error":{}}"#,
        r#"{"type":"rpc","id":"never-sent","success":false,"error":{"not":"a string"}}"#,
    ]
    .iter()
    .map(|s| JsValue::from_str(s))
    .chain([big, "after".into()])
    .collect();
    for text in &hostile {
        client.send(text.clone()).unwrap();
    }
    let data = |r: &Recorder| -> Vec<JsValue> {
        r.events
            .borrow()
            .iter()
            .filter(|(t, _)| t == "message")
            .map(|(_, e)| Reflect::get(e, &"data".into()).unwrap())
            .collect()
    };
    let first = hostile[0].clone();
    rec.until("every frame back", |r| {
        let all = data(r);
        all.iter()
            .position(|d| *d == first)
            .is_some_and(|at| all.len() - at == hostile.len())
    })
    .await;
    let all = data(&rec);
    let at = all.iter().position(|d| *d == first).unwrap();
    for (i, (got, want)) in all[at..].iter().zip(&hostile).enumerate() {
        assert!(got == want, "frame {i} came back changed");
    }
    // Nothing else happened: same identity, no close or error, still usable.
    assert_eq!(client.agent(), "echo-agent");
    assert_eq!(client.name(), name);
    assert!(client.identified());
    assert_eq!(rec.count("close"), 0);
    assert_eq!(rec.count("error"), 0);
    assert_eq!(client.ready_state(), 1);
    client.close(None, None);
}

/// With the server down, a call waits in the queue and times out.
#[wasm_bindgen_test]
async fn call_times_out_and_queued_sends_survive_a_restart() {
    server_up().await;
    let client = AgentClient::new(
        options(&format!(
            r#"{{"agent":"EchoAgent","name":"{}","minReconnectionDelay":20,"maxReconnectionDelay":100,"connectionTimeout":1000}}"#,
            unique("restart")
        ))
        .into(),
    )
    .unwrap();
    let rec = Recorder::new(&client);
    ready(&client).await;
    client.send("m0".into()).unwrap();
    rec.until("m0", |r| r.texts() == ["m0"]).await;

    ctl("kill").await;
    rec.until("close", |r| r.count("close") >= 1).await;
    assert!(client.should_reconnect());
    let opts = Object::new();
    Reflect::set(&opts, &"timeout".into(), &50.into()).unwrap();
    assert_eq!(
        call(&client, "nope", "[]", &opts).await.unwrap_err(),
        "RPC call to nope timed out after 50ms"
    );
    for i in 1..=5 {
        assert!(
            !client.send(format!("m{i}").into()).unwrap(),
            "queued while down"
        );
    }
    assert!(client.buffered_amount() >= 10.0);
    ctl("start").await;
    rec.until("the queued messages", |r| r.texts().len() == 6)
        .await;
    assert_eq!(rec.texts(), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert!(rec.count("open") >= 2);
    // Nothing is sent twice.
    pause(100).await;
    assert_eq!(rec.texts().len(), 6);
    client.close(None, None);
}

#[wasm_bindgen_test]
async fn terminal_close_does_not_reconnect() {
    server_up().await;
    let errors = Rc::new(RefCell::new(0));
    let e = errors.clone();
    let on_error = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_: JsValue, _: JsValue| {
        *e.borrow_mut() += 1
    });
    let o = options(&format!(
        r#"{{"agent":"PrivateAgent","name":"{}","minReconnectionDelay":10,"maxReconnectionDelay":20}}"#,
        unique("denied")
    ));
    set_fn(&o, "onConnectionError", &on_error);
    let client = AgentClient::new(o.into()).unwrap();
    let rec = Recorder::new(&client);
    rec.until("close", |r| r.count("close") == 1).await;
    let close = rec.last("close").unwrap();
    assert_eq!(Reflect::get(&close, &"code".into()).unwrap(), 4001);
    assert_eq!(
        Reflect::get(&close, &"reason".into()).unwrap(),
        "Unauthorized"
    );
    assert_eq!(Reflect::get(&close, &"wasClean".into()).unwrap(), true);
    assert!(close.is_instance_of::<web_sys::CloseEvent>());
    let err = client.connection_error();
    assert_eq!(Reflect::get(&err, &"code".into()).unwrap(), 4001);
    assert_eq!(
        Reflect::get(&err, &"name".into()).unwrap(),
        "AgentConnectionError"
    );
    assert_eq!(*errors.borrow(), 1);
    pause(200).await;
    assert_eq!(rec.count("open"), 1, "no reconnect after 4001");
    assert!(!client.should_reconnect());

    // With the token it connects and works.
    let ok = AgentClient::new(
        options(&format!(
            r#"{{"agent":"PrivateAgent","name":"{}","query":{{"token":"let-me-in"}}}}"#,
            unique("allowed")
        ))
        .into(),
    )
    .unwrap();
    let rec = Recorder::new(&ok);
    ready(&ok).await;
    ok.send("secret".into()).unwrap();
    rec.until("echo", |r| r.texts() == ["secret"]).await;
    ok.close(None, None);
}

#[wasm_bindgen_test]
async fn close_stops_reconnecting_and_dispatches_close_at_once() {
    server_up().await;
    let client = AgentClient::new(
        options(&format!(r#"{{"agent":"EchoAgent","name":"{}","minReconnectionDelay":10,"maxReconnectionDelay":20}}"#, unique("closed"))).into(),
    )
    .unwrap();
    let rec = Recorder::new(&client);
    ready(&client).await;
    client.close(Some(4000), Some("done here".into()));
    // Synchronously, as the reference.
    assert_eq!(rec.count("close"), 1);
    assert_eq!(client.ready_state(), 3);
    let close = rec.last("close").unwrap();
    assert_eq!(Reflect::get(&close, &"code".into()).unwrap(), 4000);
    assert_eq!(Reflect::get(&close, &"reason".into()).unwrap(), "done here");
    pause(200).await;
    assert_eq!(rec.count("open"), 1);
    assert_eq!(rec.count("close"), 1);
    // Sends after close() wait for reconnect().
    assert!(!client.send("later".into()).unwrap());
    client.reconnect(None, None);
    rec.until("reopen and flush", |r| r.texts() == ["later"])
        .await;
    assert_eq!(rec.count("open"), 2);
    client.close(None, None);
}

#[wasm_bindgen_test]
fn bad_options_throw_clear_errors() {
    let message = |json: &str| {
        let err = AgentClient::new(options(json).into()).unwrap_err();
        Reflect::get(&err, &"message".into())
            .unwrap()
            .as_string()
            .unwrap()
    };
    assert_eq!(
        message(r#"{"agent":"EchoAgent","path":"/x"}"#),
        "path must not start with a slash"
    );
    assert_eq!(message(r#"{"name":"x"}"#), "agent is required");
    assert_eq!(
        message(r#"{"agent":"EchoAgent","maxRetries":-1}"#),
        "maxRetries must be a number >= 0"
    );
    assert_eq!(
        message(r#"{"agent":"EchoAgent","name":5}"#),
        "name must be a string"
    );
    assert_eq!(
        message(r#"{"agent":"EchoAgent","protocol":"http"}"#),
        "protocol must be \"ws\" or \"wss\", not \"http\""
    );
    assert!(AgentClient::new(JsValue::from(5)).is_err());
}

/// A thousand create/close cycles leave no live sockets and no growing memory.
#[wasm_bindgen_test]
async fn create_close_cycles_do_not_leak() {
    server_up().await;
    let name = unique("cycles");
    let memory = || {
        wasm_bindgen::memory()
            .unchecked_into::<js_sys::WebAssembly::Memory>()
            .buffer()
            .unchecked_into::<js_sys::ArrayBuffer>()
            .byte_length()
    };
    let mut after_warmup = 0;
    for i in 0..1000 {
        let client = AgentClient::new(
            options(&format!(r#"{{"agent":"EchoAgent","name":"{name}"}}"#)).into(),
        )
        .unwrap();
        let rec = Recorder::new(&client);
        if i % 10 == 0 {
            // Every 10th closes while still connecting; the others after the handshake.
        } else {
            rec.until("open", |r| r.count("open") == 1).await;
        }
        client.close(None, None);
        drop(rec);
        drop(client);
        if i == 100 {
            after_warmup = memory();
        }
        if i % 100 == 0 {
            pause(0).await;
        }
    }
    assert_eq!(agents_client::client::live_sockets(), 0);
    let grown = memory().saturating_sub(after_warmup);
    assert!(
        grown <= 64 * 1024,
        "wasm memory grew by {grown} bytes over 900 cycles"
    );
}

/// Resolves `fut`, or panics after `WAIT_MS`.
async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    use futures_util::future::{select, Either};
    let timeout = JsFuture::from(sleep(WAIT_MS as u32));
    match select(Box::pin(fut), timeout).await {
        Either::Left((v, _)) => v,
        Either::Right(_) => panic!("timed out waiting for {what}"),
    }
}

/// The Rust API (for Leptos/Yew apps): a `Stream` of messages and `async` calls.
#[wasm_bindgen_test]
async fn rust_api_streams_messages_and_awaits_calls() {
    use agents_client::client::{Client, ClientOptions};
    use agents_client::stream::Message;
    use futures_util::StreamExt;
    server_up().await;
    let client = Client::new(ClientOptions::new("CounterAgent", &unique("rust"), host())).unwrap();
    let mut messages = client.messages();
    client.send_text("broadcast:from rust").unwrap();
    timed("the broadcast", async {
        while let Some(m) = messages.next().await {
            if m == Message::Text("from rust".into()) {
                break;
            }
        }
    })
    .await;
    let count = timed("increment", client.call_async("increment", &[4.into()]))
        .await
        .unwrap();
    assert_eq!(count, 4);
    let err = timed("nope", client.call_async("nope", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        agents_client::ClientError::Rpc("Method nope does not exist".into())
    );
    client.close(1000, "");
    let err = client
        .call_async("increment", &[1.into()])
        .await
        .unwrap_err();
    assert_eq!(err, agents_client::ClientError::ConnectionClosed);

    // Typed errors for the other failures too: a call queued on a client
    // that cannot connect times out; arguments JSON cannot carry.
    let mut options = ClientOptions::new("CounterAgent", &unique("rust-down"), "127.0.0.1:9");
    options.default_call_timeout = 150.0;
    let unreachable = Client::new(options).unwrap();
    let err = timed(
        "the timeout",
        unreachable.call_async("increment", &[1.into()]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        agents_client::ClientError::Timeout {
            method: "increment".into(),
            ms: 150
        }
    );
    let err = timed(
        "the rejection",
        unreachable.call_async("increment", &[js_sys::BigInt::from(1).into()]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, agents_client::ClientError::Options(ref m) if m.contains("JSON")),
        "{err:?}"
    );
    unreachable.close(1000, "");
}

/// Offline, failed attempts do not use up retries; `online` reconnects at once.
#[wasm_bindgen_test]
async fn offline_keeps_retries_and_online_reconnects_at_once() {
    server_up().await;
    let client = AgentClient::new(
        options(&format!(
            r#"{{"agent":"EchoAgent","name":"{}","maxRetries":0,"minReconnectionDelay":60000,"maxReconnectionDelay":60000}}"#,
            unique("offline")
        ))
        .into(),
    )
    .unwrap();
    let rec = Recorder::new(&client);
    ready(&client).await;
    let window = web_sys::window().unwrap();
    window
        .dispatch_event(&web_sys::Event::new("offline").unwrap())
        .unwrap();
    ctl("kill").await;
    rec.until("close", |r| r.count("close") >= 1).await;
    pause(100).await;
    // With maxRetries 0 this would have been terminal, were we online.
    assert!(client.connection_error().is_null());
    assert!(client.should_reconnect());
    ctl("start").await;
    let before = now();
    window
        .dispatch_event(&web_sys::Event::new("online").unwrap())
        .unwrap();
    rec.until("reopen", |r| r.count("open") == 2).await;
    assert!(
        now() - before < 5000.0,
        "online must reconnect at once, not after the 60 s backoff"
    );
    client.close(None, None);
}

/// A `query` function (here async) runs before every connection attempt, so a
/// token can be refreshed on reconnect.
#[wasm_bindgen_test]
async fn async_query_runs_on_every_attempt() {
    server_up().await;
    let calls = Rc::new(RefCell::new(0));
    let c = calls.clone();
    let query = Closure::<dyn FnMut() -> js_sys::Promise>::new(move || {
        *c.borrow_mut() += 1;
        let q = Object::new();
        Reflect::set(&q, &"token".into(), &"let-me-in".into()).unwrap();
        js_sys::Promise::resolve(&JsValue::from(q))
    });
    let o = options(&format!(
        r#"{{"agent":"PrivateAgent","name":"{}","minReconnectionDelay":20,"maxReconnectionDelay":50}}"#,
        unique("query")
    ));
    Reflect::set(&o, &"query".into(), query.as_ref()).unwrap();
    let client = AgentClient::new(o.into()).unwrap();
    let rec = Recorder::new(&client);
    ready(&client).await;
    assert!(
        client.url().contains("&token=let-me-in"),
        "{}",
        client.url()
    );
    assert_eq!(*calls.borrow(), 1);
    ctl("restart").await;
    rec.until("reopen", |r| r.count("open") >= 2).await;
    assert!(
        *calls.borrow() >= 2,
        "the query function must run again on reconnect"
    );
    client.send("still authorized".into()).unwrap();
    rec.until("echo", |r| {
        r.texts().contains(&"still authorized".to_owned())
    })
    .await;
    client.close(None, None);
}
