//! The core as JavaScript sees it: `Core`, driven by the `AgentClient` class
//! (`js/agent-client.js`, the [`Host`]). Each call carries the host in,
//! feeds the [`Core`] and carries its actions out as calls on the host,
//! after the core is released, so a listener may call back in at once. The
//! host is never stored: a client nobody holds is garbage, with its core.
//!
//! This file only translates; [`crate::js_value`] reads JavaScript values
//! (options, frames) for the pure modules.

use alloc::vec::Vec;
use core::cell::RefCell;

use wasm_bindgen::prelude::*;

use alloc::string::String;

use agents_protocol::frame::ServerFrame;

use crate::action::{Action, Event, Out, Outcome, Source};
use crate::error::ClientError;
use crate::js_value::{self, CallOptions, Keys};
use crate::machine::Core;
use crate::options::Protocols;

#[wasm_bindgen]
extern "C" {
    /// The `AgentClient` object that carries out the core's actions.
    pub type Host;
    #[wasm_bindgen(method, js_name = init_)]
    fn init(this: &Host, id: &str, agent: &str, name: &str);
    #[wasm_bindgen(method, js_name = query_)]
    fn query(this: &Host, gen: u32);
    #[wasm_bindgen(method, catch, js_name = open_)]
    fn open(this: &Host, gen: u32, url: &str, protocols: &JsValue) -> Result<(), JsValue>;
    // The core writes only to an open socket (a closing one drops data
    // without throwing) and closes with codes it checked: neither throws.
    #[wasm_bindgen(method, js_name = write_)]
    fn write(this: &Host, data: &JsValue);
    #[wasm_bindgen(method, js_name = shut_)]
    fn shut(this: &Host, code: u16, reason: &str);
    #[wasm_bindgen(method, js_name = emit_)]
    fn emit(this: &Host, kind: u8, code: u16, reason: &str, clean: bool);
    #[wasm_bindgen(method, js_name = timer_)]
    fn timer(this: &Host, id: u32, ms: f64);
    #[wasm_bindgen(method, js_name = watch_)]
    fn watch(this: &Host, on: bool);
    #[wasm_bindgen(method, js_name = state_)]
    fn state(this: &Host, state: &JsValue, source: &str);
    #[wasm_bindgen(method, js_name = identity_)]
    fn identity(this: &Host, name: &str, agent: &str);
    #[wasm_bindgen(method, js_name = unready_)]
    fn unready(this: &Host);
    #[wasm_bindgen(method, js_name = callback_)]
    fn callback(this: &Host, name: &str, a: &JsValue, b: &JsValue, c: &JsValue, d: &JsValue);
    #[wasm_bindgen(method, js_name = connectionError_)]
    fn connection_error(this: &Host, code: u16, reason: &str, clean: bool);
    #[wasm_bindgen(method, js_name = warn_)]
    fn warn(this: &Host, text: &str, detail: &JsValue);
    #[wasm_bindgen(method, js_name = settle_)]
    fn settle(this: &Host, promise: &JsValue, stream: &JsValue, kind: u8, value: &JsValue);
}

/// Whatever settles a call: the promise's functions and the stream
/// callbacks of `call()`, or (Rust API) a typed slot.
#[derive(Clone)]
pub(crate) enum Handle {
    /// `{ resolve, reject }` and the object holding `onChunk`/`onDone`/`onError`.
    Js(JsValue, JsValue),
    /// [`crate::client::Client::call`]'s slot.
    #[cfg(feature = "rust-api")]
    Rust(alloc::rc::Rc<crate::client::CallSlot>),
}

/// The core, shared with [`crate::client::Client`] in the Rust API.
#[cfg(feature = "rust-api")]
pub(crate) type CoreCell = alloc::rc::Rc<RefCell<Core<JsValue, Handle>>>;
/// The core (the npm build has no Rust callers to share it with).
#[cfg(not(feature = "rust-api"))]
pub(crate) type CoreCell = alloc::boxed::Box<RefCell<Core<JsValue, Handle>>>;

/// The core of one client, for its `AgentClient` object.
#[wasm_bindgen(js_name = Core)]
#[allow(missing_debug_implementations)]
pub struct WasmCore {
    pub(crate) core: CoreCell,
    keys: Keys,
}

/// What the core is told or asked, for [`run`].
pub(crate) enum Input {
    Start(bool),
    Opened(u32),
    Frame(u32, ServerFrame<String, JsValue>),
    /// Attempt, code, reason, clean, and whether reconnecting may go on
    /// (the user's `shouldReconnectOnClose`).
    Closed(u32, u16, String, bool, bool),
    Errored(u32),
    Timer(u32),
    TimedOutForGood,
    Network(bool),
    Visible(bool),
    Queried(u32, Result<Vec<(String, String)>, ()>),
    Send(JsValue, f64),
    Call(String, CallOptions, Handle),
    SetState(String, JsValue),
    Close(u16, String),
    Reconnect(u16, String),
}

/// Feeds `input` to the core, then carries out what it asked for (after
/// the core is released). One non-generic body for every entry point keeps
/// the WebAssembly small. Answers whether a message is for the listeners,
/// or `send`'s and `setState`'s outcome.
#[inline(never)]
pub(crate) fn run(core: &CoreCell, host: &Host, input: Input) -> Result<bool, ClientError> {
    // Borrows are tried, never forced: no JavaScript runs while the core is
    // borrowed, so none fails, and no panic path is left in the module.
    let Ok(mut c) = core.try_borrow_mut() else {
        core::mem::forget(input); // (never happens: nothing to drop)
        return Ok(false);
    };
    let mut out = Ok(false);
    let mut actions = {
        match input {
            Input::Start(online) => c.start(online),
            Input::Opened(gen) => c.opened(gen),
            Input::Frame(gen, frame) => out = Ok(c.frame(gen, frame)),
            Input::Closed(gen, code, reason, clean, true) => c.closed(gen, code, &reason, clean),
            Input::Closed(gen, code, reason, clean, false) => {
                c.closed_for_good(gen, code, &reason, clean);
            }
            Input::Errored(gen) => c.errored(gen),
            Input::Timer(id) => c.timer(id),
            Input::TimedOutForGood => c.timed_out_for_good(),
            Input::Network(on) => c.network(on),
            Input::Visible(on) => c.visible(on),
            Input::Queried(gen, pairs) => c.queried(gen, pairs),
            Input::Send(data, size) => out = c.send(data, size),
            Input::Call(method, call, handle) => {
                c.call(&method, &call.args, call.timeout, call.streaming, handle)
            }
            Input::SetState(json, state) => out = c.set_state(&json, state).map(|()| true),
            Input::Close(code, reason) => c.close(code, &reason),
            Input::Reconnect(code, reason) => c.reconnect(code, &reason),
        }
        let actions = c.take_actions();
        drop(c);
        actions
    };
    while let Some(gen) = perform(host, &mut actions) {
        // `new WebSocket()` threw (a URL the browser refuses): the core
        // decides what follows (error, close, retry).
        let Ok(mut core) = core.try_borrow_mut() else {
            break;
        };
        core.open_failed(gen);
        core.recycle(actions);
        actions = core.take_actions();
    }
    if let Ok(mut core) = core.try_borrow_mut() {
        core.recycle(actions);
    }
    out
}

fn error(e: ClientError) -> JsValue {
    js_sys::Error::new(&e.message()).into()
}

/// What [`WasmCore::on`] reports (the numbers `js/agent-client.js` uses).
mod on {
    pub(super) const START: u8 = 0;
    pub(super) const OPENED: u8 = 1;
    pub(super) const MESSAGE: u8 = 2;
    pub(super) const CLOSED: u8 = 3;
    pub(super) const ERRORED: u8 = 4;
    pub(super) const TIMER: u8 = 5;
    pub(super) const NETWORK: u8 = 6;
    pub(super) const VISIBLE: u8 = 7;
    pub(super) const QUERIED: u8 = 8;
    pub(super) const QUERY_FAILED: u8 = 9;
    /// The socket closed and `shouldReconnectOnClose` answered false.
    pub(super) const CLOSED_FOR_GOOD: u8 = 10;
    /// The connection timer fired and `shouldReconnectOnClose` answered false.
    pub(super) const TIMED_OUT_FOR_GOOD: u8 = 11;
}

/// What [`WasmCore::user`] is asked (the numbers `js/agent-client.js` uses).
mod user {
    pub(super) const SEND: u8 = 0;
    pub(super) const CALL: u8 = 1;
    pub(super) const SET_STATE: u8 = 2;
    pub(super) const CLOSE: u8 = 3;
    pub(super) const RECONNECT: u8 = 4;
    pub(super) const HTTP_URL: u8 = 5;
}

#[wasm_bindgen(js_class = Core)]
impl WasmCore {
    /// Validates `options` (throws a clear `Error` on bad ones); `host` is
    /// the page's `location.host`, the default of the `host` option.
    #[wasm_bindgen(constructor)]
    pub fn new(options: &JsValue, host: JsValue) -> Result<WasmCore, JsValue> {
        let options = js_value::options(options, host).map_err(error)?;
        let seed = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
        Ok(WasmCore {
            core: CoreCell::new(RefCell::new(Core::new(options, seed).map_err(error)?)),
            keys: Keys::new(),
        })
    }

    /// Something happened: `kind` (see `on`), `n` the socket's attempt or
    /// the timer, `a` the event's value (the message's data, the close
    /// event, `navigator.onLine`, the query's result). For a message,
    /// answers 0 to drop it, 1 for a user message, 2 for a protocol frame.
    #[wasm_bindgen(js_name = on_)]
    pub fn on(&self, host: &Host, kind: u8, n: u32, a: JsValue) -> u8 {
        let on = a.as_bool() == Some(true);
        let input = match kind {
            on::START => Input::Start(on),
            on::OPENED => Input::Opened(n),
            on::MESSAGE => Input::Frame(n, js_value::frame(&a, &self.keys)),
            on::CLOSED | on::CLOSED_FOR_GOOD => Input::Closed(
                n,
                js_value::get(&a, "code").as_f64().unwrap_or(1006.0) as u16,
                js_value::get(&a, "reason").as_string().unwrap_or_default(),
                js_value::get(&a, "wasClean").as_bool() == Some(true),
                kind == on::CLOSED,
            ),
            on::ERRORED => Input::Errored(n),
            on::TIMER => Input::Timer(n),
            on::TIMED_OUT_FOR_GOOD => Input::TimedOutForGood,
            on::NETWORK => Input::Network(on),
            on::VISIBLE => Input::Visible(on),
            on::QUERIED if a.is_object() => Input::Queried(n, Ok(js_value::pairs(&a))),
            on::QUERIED | on::QUERY_FAILED => {
                host.warn("agents-rs: the query function failed", &a);
                Input::Queried(n, Err(()))
            }
            _ => return 0,
        };
        let protocol = matches!(&input, Input::Frame(_, f) if f.is_protocol());
        let dispatch = run(&self.core, host, input) == Ok(true);
        u8::from(dispatch) << u8::from(protocol)
    }

    /// The user asks: `send(a)`, `call(a, b, c)` settled through `d`,
    /// `setState(a)`, `close(a, b)`, `reconnect(a, b)`, or `agentFetch`'s URL
    /// (`a`: the query function's result, if any). Throws on bad input;
    /// answers `send`'s boolean or the URL.
    #[wasm_bindgen(js_name = do_)]
    pub fn user(
        &self,
        host: &Host,
        kind: u8,
        a: JsValue,
        b: JsValue,
        c: JsValue,
        d: JsValue,
    ) -> Result<JsValue, JsValue> {
        let input = match kind {
            user::HTTP_URL => {
                let Ok(core) = self.core.try_borrow() else {
                    return Ok(JsValue::UNDEFINED);
                };
                let url = core.http_url(js_value::pairs(&a));
                return url.map(JsValue::from).map_err(error);
            }
            user::SEND => Input::Send(a.clone(), js_value::size(&a, &self.keys).map_err(error)?),
            user::CALL => {
                let call = js_value::call_options(&b, &c).map_err(error)?;
                let stream = call.stream.clone();
                Input::Call(
                    a.as_string().unwrap_or_default(),
                    call,
                    Handle::Js(d, stream),
                )
            }
            user::SET_STATE => {
                let json = js_value::json(&a, "state must be JSON-serializable").map_err(error)?;
                Input::SetState(json, a)
            }
            user::CLOSE | user::RECONNECT => {
                let code = js_value::close_code(&a).map_err(error)?;
                let reason = b.as_string().unwrap_or_default();
                match kind {
                    user::CLOSE => Input::Close(code, reason),
                    _ => Input::Reconnect(code, reason),
                }
            }
            _ => return Ok(JsValue::FALSE),
        };
        run(&self.core, host, input)
            .map(JsValue::from)
            .map_err(error)
    }

    /// A getter: 0 `readyState` (given the socket's, -1 without one), 1
    /// the bytes queued, 2 `retryCount`, 3 `shouldReconnect` (1 or 0).
    #[wasm_bindgen(js_name = get_)]
    pub fn get(&self, kind: u8, socket: i32) -> f64 {
        let Ok(core) = self.core.try_borrow() else {
            return 0.0;
        };
        match kind {
            0 => core.ready_state(u16::try_from(socket).ok()).into(),
            1 => core.queued(),
            2 => core.retry_count().into(),
            _ => u8::from(core.should_reconnect()).into(),
        }
    }
}

/// Carries out the core's actions, in order. Returns the attempt whose
/// socket could not be created, if any.
fn perform(host: &Host, actions: &mut Vec<Action<JsValue, Handle>>) -> Option<u32> {
    let undefined = &JsValue::UNDEFINED;
    let mut failed = None;
    for action in actions.drain(..) {
        match action {
            Action::Init { id, agent, name } => host.init(&id, &agent, &name),
            Action::Query(gen) => host.query(gen),
            Action::Open {
                gen,
                url,
                protocols,
            } => {
                let protocols = match protocols {
                    None => JsValue::UNDEFINED,
                    Some(Protocols::One(p)) => p.into(),
                    Some(Protocols::List(list)) => list,
                };
                if let Err(e) = host.open(gen, &url, &protocols) {
                    host.warn("agents-rs: cannot open a WebSocket", &e);
                    failed = Some(gen);
                }
            }
            Action::Send(Out::User(data)) => host.write(&data),
            Action::Send(Out::Frame(text)) => host.write(&JsValue::from(text)),
            Action::Shut { code, reason } => host.shut(code, &reason),
            Action::Emit(Event::Open) => host.emit(0, 0, "", false),
            Action::Emit(Event::Close(c)) => host.emit(1, c.code, &c.reason, c.clean),
            Action::Emit(Event::Error) => host.emit(2, 0, "", false),
            Action::Timer { id, ms } => host.timer(id, ms),
            Action::Watch(on) => host.watch(on),
            Action::State(state, Source::Server) => host.state(&state, "server"),
            Action::State(state, Source::Client) => host.state(&state, "client"),
            Action::Identity { name, agent } => host.identity(&name, &agent),
            Action::IdentityChange {
                old_name,
                new_name,
                old_agent,
                new_agent,
                callback,
            } => host.callback(
                if callback { "onIdentityChange" } else { "" },
                &old_name.into(),
                &new_name.into(),
                &old_agent.into(),
                &new_agent.into(),
            ),
            Action::Unready => host.unready(),
            Action::StateError(e) => host.callback(
                "onStateUpdateError",
                &e.into(),
                undefined,
                undefined,
                undefined,
            ),
            Action::Mcp(mcp) => host.callback("onMcpUpdate", &mcp, undefined, undefined, undefined),
            Action::ConnectionError(Some(c)) => host.connection_error(c.code, &c.reason, c.clean),
            Action::ConnectionError(None) => host.connection_error(0, "", false),
            Action::Settle(handle, outcome) => settle(host, handle, outcome),
            Action::Warn(text) => host.warn(&text, undefined),
        }
    }
    failed
}

fn settle(host: &Host, handle: Handle, outcome: Outcome<JsValue>) {
    let (kind, value) = match outcome {
        Outcome::Done(v) => (0, v.unwrap_or(JsValue::UNDEFINED)),
        Outcome::Chunk(v) => (1, v.unwrap_or(JsValue::UNDEFINED)),
        Outcome::Error(e) => {
            #[cfg(feature = "rust-api")]
            if let Handle::Rust(slot) = &handle {
                return slot.settle(Err(e));
            }
            (2, JsValue::from(e.message()))
        }
    };
    match handle {
        Handle::Js(promise, stream) => host.settle(&promise, &stream, kind, &value),
        #[cfg(feature = "rust-api")]
        Handle::Rust(slot) if kind != 1 => slot.settle(Ok(value)),
        #[cfg(feature = "rust-api")]
        Handle::Rust(_) => {}
    }
}
