//! `AgentClient` — the class the npm package ships, driving the wasm core —
//! in headless Chromium against the real `agents-server` binary, run by
//! `scripts/test.sh` with `AGENTS_SERVER_HOST` and `AGENTS_CONTROL` (the
//! supervisor that kills and restarts the server) set.
//!
//! Every test here needs the server and fails without it: the negative run
//! of `scripts/test.sh` requires exactly as many failures as there are
//! `#[wasm_bindgen_test]`s in this file. Tests that need no server live in
//! `browser_no_server.rs`. Every wait is bounded ([`WAIT_MS`]); nothing
//! asserts on how long something took.

#![cfg(target_arch = "wasm32")]
#![allow(missing_docs)]

use std::cell::RefCell;
use std::rc::Rc;

#[path = "common/answers.rs"]
mod answers;

use agents_client::client::{install, AgentClient};
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
export async function control(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`control ${url}: ${r.status}`);
  return await r.text();
}
export function within(p, ms, what) {
  let timer;
  const late = new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
export function next_task() { return new Promise((r) => setTimeout(r, 0)); }
export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
export function pretend(obj, key, value) {
  Object.defineProperty(obj, key, { configurable: true, get: () => value });
}
export function forget(obj, key) { delete obj[key]; }
// Records the timers each client asks for (the class's `timer_(id, ms)`).
export function record_timers(Class) {
  const asked = new Map();
  const timer = Class.prototype.timer_;
  Class.prototype.timer_ = function (id, ms) {
    if (!asked.has(this)) asked.set(this, []);
    asked.get(this).push([id, ms]);
    return timer.call(this, id, ms);
  };
  return { asked, stop: () => { Class.prototype.timer_ = timer; } };
}
// Counts the page's live WebSockets (made, and not yet closed).
export function count_sockets() {
  const Native = WebSocket;
  let live = 0;
  globalThis.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      live++;
      this.addEventListener('close', () => live--);
    }
  };
  return { live: () => live, stop: () => { globalThis.WebSocket = Native; } };
}
")]
extern "C" {
    #[wasm_bindgen(catch)]
    fn control(url: &str) -> Result<js_sys::Promise, JsValue>;
    fn within(p: &js_sys::Promise, ms: f64, what: &str) -> js_sys::Promise;
    fn next_task() -> js_sys::Promise;
    fn sleep(ms: f64) -> js_sys::Promise;
    fn pretend(obj: &JsValue, key: &str, value: &JsValue);
    fn forget(obj: &JsValue, key: &str);
    fn record_timers(class: &JsValue) -> JsValue;
    fn count_sockets() -> JsValue;
}

fn host() -> &'static str {
    HOST.expect("AGENTS_SERVER_HOST is not set: run these through scripts/test.sh (did you set AGENTS_SERVER_HOST?)")
}

async fn ctl(action: &str) -> String {
    let base = CONTROL.expect("AGENTS_CONTROL is not set (did you run scripts/test.sh?)");
    let reply = JsFuture::from(within(
        &control(&format!("{base}/{action}")).unwrap(),
        WAIT_MS,
        action,
    ))
    .await;
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

fn client(o: &Object) -> AgentClient {
    install();
    AgentClient::new(o).unwrap()
}

fn set_fn(o: &Object, key: &str, f: &JsValue) {
    Reflect::set(o, &key.into(), f).unwrap();
}

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &key.into()).unwrap()
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
            client
                .add_event_listener_with_callback(ty, f.as_ref().unchecked_ref())
                .unwrap();
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

    /// Every message's data, in order.
    fn data(&self) -> Vec<JsValue> {
        let events = self.events.borrow();
        let messages = events.iter().filter(|(t, _)| t == "message");
        messages.map(|(_, e)| get(e, "data")).collect()
    }

    /// User messages (not marked `isProtocol`), in order.
    fn messages(&self) -> Vec<JsValue> {
        let events = self.events.borrow();
        let messages = events
            .iter()
            .filter(|(t, e)| t == "message" && !get(e, "isProtocol").is_truthy());
        messages.map(|(_, e)| get(e, "data")).collect()
    }

    fn texts(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(JsValue::as_string)
            .collect()
    }

    fn last(&self, ty: &str) -> Option<JsValue> {
        let events = self.events.borrow();
        events
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
            JsFuture::from(next_task()).await.unwrap();
        }
    }

    fn summary(&self) -> Vec<String> {
        let events = self.events.borrow();
        let line = |(t, e): &(String, JsValue)| match t.as_str() {
            "message" => format!("message {:?}", get(e, "data").as_string()),
            "close" => format!("close {:?}", get(e, "code").as_f64()),
            other => other.to_owned(),
        };
        events.iter().map(line).collect()
    }
}

/// Dispatches `online` or `offline` on the window, as the browser would.
fn signal(ty: &str) {
    let window = web_sys::window().unwrap();
    window
        .dispatch_event(&web_sys::Event::new(ty).unwrap())
        .unwrap();
}

/// Waits until `done()`, at most [`WAIT_MS`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = now();
    while !done() {
        assert!(now() - start < WAIT_MS, "timed out waiting for {what}");
        JsFuture::from(next_task()).await.unwrap();
    }
}

/// A round trip through the server on another connection: whatever the
/// client under test would have done by itself in the meantime (a
/// reconnect, a second send) has had its chance to show.
async fn sentinel() {
    let echo = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}"}}"#,
        unique("sentinel")
    )));
    let rec = Recorder::new(&echo);
    echo.send(&"sentinel".into()).unwrap();
    rec.until("the sentinel", |r| r.texts() == ["sentinel"])
        .await;
    echo.free();
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
            let line = format!(
                "{} {}",
                JSON::stringify(&state).unwrap(),
                source.as_string().unwrap()
            );
            s.borrow_mut().push(line);
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
    let args = JSON::parse(args).unwrap();
    let promise = within(&client.call(method, &args, opts), WAIT_MS, method);
    JsFuture::from(promise)
        .await
        .map_err(|e| get(&e, "message").as_string().unwrap_or_default())
}

#[wasm_bindgen_test]
async fn echoes_text_and_binary_and_marks_protocol_frames() {
    server_up().await;
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}"}}"#,
        unique("echo")
    )));
    c.set_binary_type("arraybuffer");
    let rec = Recorder::new(&c);
    ready(&c).await;
    assert!(c.identified());
    assert_eq!(c.agent(), "echo-agent");
    // Raw listeners see the protocol frames too, marked `isProtocol`.
    rec.until("identity frame", |r| {
        r.data().iter().any(|d| {
            d.as_string()
                .is_some_and(|s| s.contains("cf_agent_identity"))
        })
    })
    .await;
    assert!(rec.messages().is_empty(), "{:?}", rec.summary());
    assert!(c.send(&"hello".into()).unwrap());
    c.send(&Uint8Array::from(&[0u8, 1, 2, 250, 255][..]).into())
        .unwrap();
    // Text that only looks like a frame is the user's.
    c.send(&r#"{"type":"not_a_protocol","x":1}"#.into())
        .unwrap();
    rec.until("the echoes", |r| r.messages().len() == 3).await;
    let msgs = rec.messages();
    assert_eq!(msgs[0].as_string().as_deref(), Some("hello"));
    assert!(msgs[1].is_instance_of::<js_sys::ArrayBuffer>());
    assert_eq!(Uint8Array::new(&msgs[1]).to_vec(), vec![0, 1, 2, 250, 255]);
    let url = c.url();
    assert!(
        url.starts_with(&format!("ws://{}/agents/echo-agent/echo-", host())),
        "{url}"
    );
    assert!(url.contains(&format!("?_pk={}", c.id())), "{url}");
    let open = rec.last("open").unwrap();
    assert_eq!(
        get(&open, "target"),
        JsValue::from(c.clone()),
        "events come from the client"
    );
    c.close(None, None);
}

#[wasm_bindgen_test]
async fn identity_and_state_handshake() {
    server_up().await;
    let (seen, on_state) = state_recorder();
    let name = unique("hs");
    let o = options(&format!(r#"{{"agent":"CounterAgent","name":"{name}"}}"#));
    set_fn(&o, "onStateUpdate", on_state.as_ref());
    let c = client(&o);
    assert_eq!(c.ready_state(), 0);
    ready(&c).await;
    assert_eq!(c.ready_state(), 1);
    assert_eq!(c.name(), name);
    assert_eq!(c.agent(), "counter-agent");
    assert_eq!(JSON::stringify(&c.state()).unwrap(), r#"{"count":0}"#);
    // `ready` resolved only after the state was applied.
    assert_eq!(*seen.borrow(), [r#"{"count":0} server"#]);
    c.close(None, None);
}

#[wasm_bindgen_test]
async fn two_clients_sync_state() {
    server_up().await;
    let (seen, on_state) = state_recorder();
    let name = unique("sync");
    let a = client(&options(&format!(
        r#"{{"agent":"CounterAgent","name":"{name}"}}"#
    )));
    let ob = options(&format!(r#"{{"agent":"CounterAgent","name":"{name}"}}"#));
    set_fn(&ob, "onStateUpdate", on_state.as_ref());
    let b = client(&ob);
    ready(&a).await;
    ready(&b).await;
    a.set_state(&JSON::parse(r#"{"count":41}"#).unwrap())
        .unwrap();
    assert_eq!(JSON::stringify(&a.state()).unwrap(), r#"{"count":41}"#);
    until("b sees the state", || {
        seen.borrow().iter().any(|s| s == r#"{"count":41} server"#)
    })
    .await;
    // And the server's own change (RPC) reaches both.
    assert_eq!(
        call(&a, "increment", "[1]", &JsValue::UNDEFINED)
            .await
            .unwrap(),
        42
    );
    until("b's state", || {
        JSON::stringify(&b.state()).unwrap() == r#"{"count":42}"#
    })
    .await;
    a.close(None, None);
    b.close(None, None);
}

#[wasm_bindgen_test]
async fn calls_succeed_fail_and_stream() {
    server_up().await;
    let c = client(&options(&format!(
        r#"{{"agent":"CounterAgent","name":"{}"}}"#,
        unique("rpc")
    )));
    ready(&c).await;
    assert_eq!(
        call(&c, "increment", "[2]", &JsValue::UNDEFINED)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        call(&c, "nope", "[]", &JsValue::UNDEFINED)
            .await
            .unwrap_err(),
        "Method nope does not exist"
    );
    let err = call(&c, "increment", r#"["x"]"#, &JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert!(err.starts_with("Invalid arguments for increment"), "{err}");

    let chunks = Rc::new(RefCell::new(Vec::new()));
    let ch = chunks.clone();
    let on_chunk = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
        ch.borrow_mut().push(v.as_f64().unwrap())
    });
    let done = Rc::new(RefCell::new(None));
    let d = done.clone();
    let on_done =
        Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| *d.borrow_mut() = v.as_f64());
    let stream = Object::new();
    set_fn(&stream, "onChunk", on_chunk.as_ref());
    set_fn(&stream, "onDone", on_done.as_ref());
    let opts = Object::new();
    Reflect::set(&opts, &"stream".into(), &stream).unwrap();
    assert_eq!(call(&c, "count_to", "[5]", &opts).await.unwrap(), 5);
    assert_eq!(*chunks.borrow(), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(*done.borrow(), Some(5.0));

    c.close(None, None);
    // A call after close() rejects at once.
    assert_eq!(
        call(&c, "increment", "[1]", &JsValue::UNDEFINED)
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
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{name}"}}"#
    )));
    let rec = Recorder::new(&c);
    ready(&c).await;
    // Built and compared on the JS side, so the test itself does not grow
    // wasm memory.
    let big: JsValue = js_sys::JsString::from(r#"{"type":"rpc","id":""#)
        .concat(&js_sys::JsString::from("x").repeat(200_000))
        .into();
    let hostile: Vec<JsValue> = answers::HOSTILE
        .iter()
        .map(|s| JsValue::from_str(s))
        .chain([big, "after".into()])
        .collect();
    for text in &hostile {
        c.send(text).unwrap();
    }
    let first = hostile[0].clone();
    rec.until("every frame back", |r| {
        let all = r.data();
        all.iter()
            .position(|d| *d == first)
            .is_some_and(|at| all.len() - at == hostile.len())
    })
    .await;
    let all = rec.data();
    let at = all.iter().position(|d| *d == first).unwrap();
    for (i, (got, want)) in all[at..].iter().zip(&hostile).enumerate() {
        assert!(got == want, "frame {i} came back changed");
    }
    // Nothing else happened: same identity, no close or error, still usable.
    assert_eq!(c.agent(), "echo-agent");
    assert_eq!(c.name(), name);
    assert!(c.identified());
    assert_eq!(rec.count("close"), 0);
    assert_eq!(rec.count("error"), 0);
    assert_eq!(c.ready_state(), 1);
    c.close(None, None);
}

/// With the server down, a call waits in the queue and times out; sends
/// are queued and, when the server is back, flushed in order before
/// `open`: inside the `open` listener nothing is left queued.
#[wasm_bindgen_test]
async fn queued_sends_flush_before_open_after_a_restart() {
    server_up().await;
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","minReconnectionDelay":20,"maxReconnectionDelay":100,"connectionTimeout":1000}}"#,
        unique("restart")
    )));
    let rec = Recorder::new(&c);
    ready(&c).await;
    c.send(&"m0".into()).unwrap();
    rec.until("m0", |r| r.texts() == ["m0"]).await;

    ctl("kill").await;
    rec.until("close", |r| r.count("close") >= 1).await;
    assert!(c.should_reconnect());
    let opts = Object::new();
    Reflect::set(&opts, &"timeout".into(), &50.into()).unwrap();
    assert_eq!(
        call(&c, "nope", "[]", &opts).await.unwrap_err(),
        "RPC call to nope timed out after 50ms"
    );
    for i in 1..=5 {
        assert!(
            !c.send(&format!("m{i}").into()).unwrap(),
            "queued while down"
        );
    }
    assert!(c.buffered_amount() >= 10.0);
    // Inside the `open` listener the queue is already flushed: a send goes
    // out at once, after the queued messages.
    let in_open = Rc::new(RefCell::new(Vec::new()));
    let seen = in_open.clone();
    let probe = c.clone();
    let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        seen.borrow_mut()
            .push(probe.send(&"sent in open".into()).unwrap());
    });
    c.add_event_listener_with_callback("open", on_open.as_ref().unchecked_ref())
        .unwrap();
    ctl("start").await;
    rec.until("the queued messages", |r| r.texts().len() == 7)
        .await;
    assert_eq!(
        rec.texts(),
        ["m0", "m1", "m2", "m3", "m4", "m5", "sent in open"]
    );
    assert_eq!(*in_open.borrow(), [true], "written at once, not queued");
    // Nothing is sent twice: a sentinel on the same socket comes back next.
    c.send(&"sentinel".into()).unwrap();
    rec.until("the sentinel", |r| r.texts().len() == 8).await;
    assert_eq!(rec.texts()[7], "sentinel");
    c.close(None, None);
}

#[wasm_bindgen_test]
async fn terminal_close_does_not_reconnect() {
    server_up().await;
    let errors = Rc::new(RefCell::new(Vec::new()));
    let e = errors.clone();
    let on_error = Closure::<dyn FnMut(JsValue)>::new(move |err: JsValue| e.borrow_mut().push(err));
    let o = options(&format!(
        r#"{{"agent":"PrivateAgent","name":"{}","minReconnectionDelay":10,"maxReconnectionDelay":20}}"#,
        unique("denied")
    ));
    set_fn(&o, "onConnectionError", on_error.as_ref());
    let c = client(&o);
    let rec = Recorder::new(&c);
    rec.until("close", |r| r.count("close") == 1).await;
    let close = rec.last("close").unwrap();
    assert!(close.is_instance_of::<web_sys::CloseEvent>());
    assert_eq!(get(&close, "code"), 4001);
    assert_eq!(get(&close, "reason"), "Unauthorized");
    assert_eq!(get(&close, "wasClean"), true);
    let err = c.connection_error();
    assert_eq!(get(&err, "code"), 4001);
    assert_eq!(get(&err, "name"), "AgentConnectionError");
    assert_eq!(
        get(&err, "message"),
        "Agent connection closed: Unauthorized"
    );
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(errors.borrow().len(), 1);
    assert!(errors.borrow()[0] == err);
    assert!(!c.should_reconnect());
    sentinel().await;
    assert_eq!(rec.count("open"), 1, "no reconnect after 4001");

    // With the token it connects and works.
    let ok = client(&options(&format!(
        r#"{{"agent":"PrivateAgent","name":"{}","query":{{"token":"let-me-in"}}}}"#,
        unique("allowed")
    )));
    let rec = Recorder::new(&ok);
    ready(&ok).await;
    ok.send(&"secret".into()).unwrap();
    rec.until("echo", |r| r.texts() == ["secret"]).await;
    ok.close(None, None);
}

/// `shouldReconnectOnClose` is asked with the close event; `false` stops
/// reconnecting as a terminal code does, whatever the code (here the
/// server going away: 1006).
#[wasm_bindgen_test]
async fn should_reconnect_on_close_false_stops_reconnecting() {
    server_up().await;
    let asked = Rc::new(RefCell::new(Vec::new()));
    let a = asked.clone();
    let predicate = Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |e: JsValue| {
        a.borrow_mut().push(get(&e, "code"));
        JsValue::FALSE
    });
    let o = options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","minReconnectionDelay":10,"maxReconnectionDelay":20}}"#,
        unique("refuse")
    ));
    set_fn(&o, "shouldReconnectOnClose", predicate.as_ref());
    let c = client(&o);
    let rec = Recorder::new(&c);
    ready(&c).await;
    ctl("kill").await;
    rec.until("close", |r| r.count("close") == 1).await;
    ctl("start").await;
    assert_eq!(*asked.borrow(), [JsValue::from(1006)]);
    assert!(!c.should_reconnect());
    assert_eq!(get(&c.connection_error(), "code"), 1006);
    sentinel().await;
    assert_eq!(rec.count("open"), 1, "no reconnect once refused");
    // `reconnect()` starts again.
    c.reconnect(None, None);
    ready(&c).await;
    assert_eq!(rec.count("open"), 2);
    c.close(None, None);
}

/// A connection timeout asks `shouldReconnectOnClose` too, with the
/// reference's synthetic close (1000 `timeout`); `false` stops there.
#[wasm_bindgen_test]
async fn should_reconnect_on_close_is_asked_on_a_connection_timeout() {
    let silent = ctl("silent").await;
    let asked = Rc::new(RefCell::new(Vec::new()));
    let a = asked.clone();
    let predicate = Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |e: JsValue| {
        a.borrow_mut().push((get(&e, "code"), get(&e, "reason")));
        JsValue::FALSE
    });
    let o = options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","connectionTimeout":200,"minReconnectionDelay":10,"maxReconnectionDelay":20}}"#,
        unique("silent")
    ));
    Reflect::set(&o, &"host".into(), &silent.into()).unwrap();
    set_fn(&o, "shouldReconnectOnClose", predicate.as_ref());
    let c = client(&o);
    let rec = Recorder::new(&c);
    rec.until("close", |r| r.count("close") == 1).await;
    assert_eq!(
        *asked.borrow(),
        [(JsValue::from(1000), JsValue::from("timeout"))]
    );
    assert!(!c.should_reconnect());
    assert_eq!(get(&c.connection_error(), "reason"), "timeout");
    // No second attempt (it would time out and close again).
    JsFuture::from(sleep(600.0)).await.unwrap();
    assert_eq!(rec.count("close"), 1);
    assert_eq!(asked.borrow().len(), 1);
    c.close(None, None);
}

#[wasm_bindgen_test]
async fn close_stops_reconnecting_and_dispatches_close_at_once() {
    server_up().await;
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","minReconnectionDelay":10,"maxReconnectionDelay":20}}"#,
        unique("closed")
    )));
    let rec = Recorder::new(&c);
    ready(&c).await;
    c.close(Some(4000), Some("done here".into()));
    // Synchronously, as the reference.
    assert_eq!(rec.count("close"), 1);
    assert_eq!(c.ready_state(), 3);
    let close = rec.last("close").unwrap();
    assert_eq!(get(&close, "code"), 4000);
    assert_eq!(get(&close, "reason"), "done here");
    sentinel().await;
    assert_eq!(rec.count("open"), 1);
    assert_eq!(rec.count("close"), 1);
    // Sends after close() wait for reconnect().
    assert!(!c.send(&"later".into()).unwrap());
    c.reconnect(None, None);
    rec.until("reopen and flush", |r| r.texts() == ["later"])
        .await;
    assert_eq!(rec.count("open"), 2);
    c.close(None, None);
}

/// Create/close cycles (some closing while still connecting) leave no live
/// sockets and no growing wasm memory. A few hundred cycles show a leak;
/// the count stays small enough for a slow machine.
#[wasm_bindgen_test]
async fn create_close_cycles_do_not_leak() {
    server_up().await;
    const CYCLES: usize = 300;
    let name = unique("cycles");
    let sockets = count_sockets();
    let live = || {
        let f: js_sys::Function = get(&sockets, "live").unchecked_into();
        f.call0(&JsValue::NULL).unwrap().as_f64().unwrap()
    };
    let memory = || {
        let memory = wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>();
        memory
            .buffer()
            .unchecked_into::<js_sys::ArrayBuffer>()
            .byte_length()
    };
    let mut after_warmup = 0;
    for i in 0..CYCLES {
        let c = client(&options(&format!(
            r#"{{"agent":"EchoAgent","name":"{name}"}}"#
        )));
        let rec = Recorder::new(&c);
        // Every 10th closes while still connecting; the others after the handshake.
        if i % 10 != 0 {
            rec.until("open", |r| r.count("open") == 1).await;
        }
        c.free();
        drop(rec);
        if i == 50 {
            after_warmup = memory();
        }
    }
    let start = now();
    while live() != 0.0 {
        assert!(now() - start < WAIT_MS, "{} sockets still open", live());
        JsFuture::from(next_task()).await.unwrap();
    }
    let stop: js_sys::Function = get(&sockets, "stop").unchecked_into();
    stop.call0(&JsValue::NULL).unwrap();
    let grown = memory().saturating_sub(after_warmup);
    assert!(
        grown <= 64 * 1024,
        "wasm memory grew by {grown} bytes over {} cycles",
        CYCLES - 50
    );
}

/// Resolves `fut`, or panics after [`WAIT_MS`].
async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    use futures_util::future::{select, Either};
    let timeout = JsFuture::from(sleep(WAIT_MS));
    match select(Box::pin(fut), timeout).await {
        Either::Left((v, _)) => v,
        Either::Right(_) => panic!("timed out waiting for {what}"),
    }
}

/// The Rust API (for Leptos/Yew apps): typed calls and state through serde,
/// a `Stream` of user messages, typed errors.
#[wasm_bindgen_test]
async fn rust_api_types_calls_state_and_messages() {
    use agents_client::client::{Client, Message, Options};
    use agents_client::ClientError;
    use futures_util::StreamExt;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Counter {
        count: i64,
    }
    server_up().await;
    let client = Client::new(Options::new("CounterAgent", &unique("rust"), host())).unwrap();
    timed("ready", client.ready()).await;
    assert_eq!(
        client.state::<Counter>().unwrap(),
        Some(Counter { count: 0 })
    );
    let mut messages = client.messages();
    client.send_text("broadcast:from rust").unwrap();
    timed("the broadcast", async {
        // Protocol frames never reach the stream.
        assert_eq!(
            messages.next().await,
            Some(Message::Text("from rust".into()))
        );
    })
    .await;
    let count: i64 = timed("increment", client.call("increment", &(4,)))
        .await
        .unwrap();
    assert_eq!(count, 4);
    let err = timed("nope", client.call::<_, i64>("nope", &[0u8; 0]))
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::Rpc("Method nope does not exist".into()));
    let err = timed("wrong type", client.call::<_, String>("increment", &(1,)))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Serde(_)), "{err:?}");
    client.set_state(&Counter { count: 10 }).unwrap();
    assert_eq!(
        client.state::<Counter>().unwrap(),
        Some(Counter { count: 10 })
    );
    client.close();
    let err = client.call::<_, i64>("increment", &(1,)).await.unwrap_err();
    assert_eq!(err, ClientError::ConnectionClosed);

    // A call queued on a client that cannot connect times out, typed.
    let mut options = Options::new("CounterAgent", &unique("rust-down"), "127.0.0.1:9");
    options.default_call_timeout = Some(150.0);
    let unreachable = Client::new(options).unwrap();
    let err = timed(
        "the timeout",
        unreachable.call::<_, i64>("increment", &(1,)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ClientError::Timeout {
            method: "increment".into(),
            ms: 150
        }
    );
    unreachable.close();
}

/// Offline, failed attempts do not use up retries; `online` reconnects at
/// once (with a 60 s backoff, reopening at all proves it).
#[wasm_bindgen_test]
async fn offline_keeps_retries_and_online_reconnects_at_once() {
    server_up().await;
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","maxRetries":0,"minReconnectionDelay":60000,"maxReconnectionDelay":60000}}"#,
        unique("offline")
    )));
    let rec = Recorder::new(&c);
    ready(&c).await;
    signal("offline");
    ctl("kill").await;
    rec.until("close", |r| r.count("close") >= 1).await;
    // With maxRetries 0 this would have been terminal, were we online.
    assert!(c.connection_error().is_null());
    assert!(c.should_reconnect());
    ctl("start").await;
    signal("online");
    rec.until("reopen", |r| r.count("open") == 2).await;
    c.close(None, None);
}

/// A page that starts offline (`navigator.onLine` false) tries once, then
/// waits for `online` rather than backing off and giving up.
#[wasm_bindgen_test]
async fn a_client_started_offline_connects_when_online() {
    server_up().await;
    let navigator: JsValue = web_sys::window().unwrap().navigator().into();
    pretend(&navigator, "onLine", &false.into());
    ctl("kill").await;
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","maxRetries":0,"minReconnectionDelay":60000,"maxReconnectionDelay":60000}}"#,
        unique("start-offline")
    )));
    let rec = Recorder::new(&c);
    rec.until("the failed attempt", |r| r.count("close") == 1)
        .await;
    forget(&navigator, "onLine");
    assert!(c.should_reconnect(), "offline attempts do not count");
    ctl("start").await;
    signal("online");
    ready(&c).await;
    c.close(None, None);
}

/// A hidden tab whose socket died reconnects as soon as it is visible
/// again, not after its (60 s) backoff.
#[wasm_bindgen_test]
async fn a_tab_that_becomes_visible_reconnects_at_once() {
    server_up().await;
    let c = client(&options(&format!(
        r#"{{"agent":"EchoAgent","name":"{}","minReconnectionDelay":60000,"maxReconnectionDelay":60000}}"#,
        unique("visible")
    )));
    let rec = Recorder::new(&c);
    ready(&c).await;
    let document: JsValue = web_sys::window().unwrap().document().unwrap().into();
    pretend(&document, "hidden", &true.into());
    ctl("restart").await;
    rec.until("close", |r| r.count("close") == 1).await;
    let visibility = web_sys::Event::new("visibilitychange").unwrap();
    web_sys::EventTarget::from(document.clone())
        .dispatch_event(&visibility)
        .unwrap();
    assert_eq!(rec.count("open"), 1, "still hidden: waits");
    forget(&document, "hidden");
    web_sys::EventTarget::from(document)
        .dispatch_event(&visibility)
        .unwrap();
    rec.until("reopen", |r| r.count("open") == 2).await;
    c.close(None, None);
}

/// The backoff the browser really waits: every retry's delay is random in
/// `[0, base]` (full jitter), the base grows by the factor, and clients
/// that fail together do not retry together.
#[wasm_bindgen_test]
async fn backoff_has_random_jitter_and_grows() {
    server_up().await;
    const CLIENTS: usize = 12;
    const RETRIES: usize = 4;
    let class = get(
        &JsValue::from(client(&options(
            r#"{"agent":"EchoAgent","startClosed":true}"#,
        ))),
        "constructor",
    );
    let recorder = record_timers(&class);
    let clients: Vec<AgentClient> = (0..CLIENTS)
        .map(|_| {
            let o: Object = JSON::parse(&format!(
                r#"{{"agent":"EchoAgent","host":"127.0.0.1:7","maxRetries":{RETRIES},"minReconnectionDelay":20,"maxReconnectionDelay":10000,"reconnectionDelayGrowFactor":2}}"#
            ))
            .unwrap()
            .unchecked_into();
            client(&o)
        })
        .collect();
    // The browser serialises failed attempts to one endpoint: allow longer
    // than one event's wait.
    let start = now();
    while clients.iter().any(|c| c.connection_error().is_null()) {
        assert!(
            now() - start < 3.0 * WAIT_MS,
            "timed out waiting for every client to give up"
        );
        JsFuture::from(next_task()).await.unwrap();
    }
    let stop: js_sys::Function = get(&recorder, "stop").unchecked_into();
    stop.call0(&JsValue::NULL).unwrap();
    let asked: js_sys::Map = get(&recorder, "asked").unchecked_into();
    let mut by_attempt = vec![Vec::new(); RETRIES];
    for c in &clients {
        let timers: Array = asked.get(c).unchecked_into();
        // Timer 0 is the backoff; a negative delay cancels.
        let delays: Vec<f64> = timers
            .iter()
            .map(|t| Array::from(&t))
            .filter(|t| t.get(0) == 0 && t.get(1).as_f64().unwrap() >= 0.0)
            .map(|t| t.get(1).as_f64().unwrap())
            .collect();
        assert_eq!(delays.len(), RETRIES, "{delays:?}");
        for (k, d) in delays.iter().enumerate() {
            let base = 20.0 * 2f64.powi(k as i32);
            assert!((0.0..=base).contains(d), "retry {k}: {d} > {base}");
            by_attempt[k].push(*d);
        }
    }
    for delays in &by_attempt {
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "no jitter: {delays:?}");
    }
    let mean = |k: usize| by_attempt[k].iter().sum::<f64>() / CLIENTS as f64;
    // Uniform on [0, 20], then on [0, 160]: means near 10 and 80.
    assert!(
        mean(RETRIES - 1) > mean(0) * 2.0,
        "grows: {} then {}",
        mean(0),
        mean(RETRIES - 1)
    );
    clients.iter().for_each(AgentClient::free);
}

/// A `query` function (here async) runs before every connection attempt, so
/// a token can be refreshed on reconnect.
#[wasm_bindgen_test]
async fn async_query_runs_on_every_attempt() {
    server_up().await;
    let calls = Rc::new(RefCell::new(0));
    let n = calls.clone();
    let query = Closure::<dyn FnMut() -> js_sys::Promise>::new(move || {
        *n.borrow_mut() += 1;
        let q = Object::new();
        Reflect::set(&q, &"token".into(), &"let-me-in".into()).unwrap();
        js_sys::Promise::resolve(&JsValue::from(q))
    });
    let o = options(&format!(
        r#"{{"agent":"PrivateAgent","name":"{}","minReconnectionDelay":20,"maxReconnectionDelay":50}}"#,
        unique("query")
    ));
    set_fn(&o, "query", query.as_ref());
    let c = client(&o);
    let rec = Recorder::new(&c);
    ready(&c).await;
    assert!(c.url().contains("&token=let-me-in"), "{}", c.url());
    assert_eq!(*calls.borrow(), 1);
    ctl("restart").await;
    rec.until("reopen", |r| r.count("open") >= 2).await;
    assert!(
        *calls.borrow() >= 2,
        "the query function must run again on reconnect"
    );
    c.send(&"still authorized".into()).unwrap();
    rec.until("echo", |r| {
        r.texts().contains(&"still authorized".to_owned())
    })
    .await;
    c.close(None, None);
}
