//! The browser client: the reconnecting socket, the protocol (identity,
//! state, RPC) and event dispatch. The only module that touches
//! `web_sys::WebSocket`; the policies it applies live in the pure modules.
//!
//! Re-entrancy rule: JavaScript callbacks and event dispatch never run
//! while the `RefCell` is borrowed, so listeners may call back into the
//! client freely.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use alloc::rc::{Rc, Weak};
use core::cell::RefCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use agents_protocol::frame_type;
use js_sys::{Array, Function, Object, Promise, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, CloseEventInit, Event, WebSocket};

use crate::calls::{Calls, Pending};
use crate::error::ClientError;
use crate::outbox::Outbox;
use crate::reconnect::{AfterClose, Reconnect, ReconnectOptions};
use crate::sys::{field, get, set, Keys, Listener, NewMessageEvent, Target, Timeout};
use crate::text::{decimal, push_hex};
use crate::url::{with_query, Address};

/// Default timeout of non-streaming calls, in ms (`0` disables).
pub const DEFAULT_CALL_TIMEOUT: f64 = 30_000.0;

/// `readyState` values.
pub const CONNECTING: u16 = 0;
/// The socket is open.
pub const OPEN: u16 = 1;
/// The socket is closing.
pub const CLOSING: u16 = 2;
/// The socket is closed (also between attempts, as the reference).
pub const CLOSED: u16 = 3;

/// Where the query comes from.
#[derive(Debug, Clone)]
pub enum Query {
    /// Fixed pairs, computed once.
    Static(Vec<(String, String)>),
    /// A JS function (sync or async) re-run before every attempt.
    Dynamic(Function),
}

/// The JS callbacks of the options; all optional.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    /// `onStateUpdate(state, "server" | "client")`.
    pub on_state_update: Option<Function>,
    /// `onStateUpdateError(error)`.
    pub on_state_update_error: Option<Function>,
    /// `onIdentity(name, agent)`.
    pub on_identity: Option<Function>,
    /// `onIdentityChange(oldName, newName, oldAgent, newAgent)`.
    pub on_identity_change: Option<Function>,
    /// `onConnectionError(error)`.
    pub on_connection_error: Option<Function>,
    /// `onMcpUpdate(mcp)`.
    pub on_mcp_update: Option<Function>,
}

/// Everything `AgentClient` is configured with.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where to connect.
    pub address: Address,
    /// Query parameters after `_pk`.
    pub query: Query,
    /// The `_pk` connection id; generated once per client when `None`.
    pub id: Option<String>,
    /// Subprotocols (a string or an array), or undefined.
    pub protocols: JsValue,
    /// Backoff and retry tuning.
    pub reconnect: ReconnectOptions,
    /// Most messages queued while disconnected. Defaults to unlimited, as the reference.
    pub max_enqueued_messages: usize,
    /// Do not connect until `reconnect()`.
    pub start_closed: bool,
    /// Timeout of non-streaming calls in ms; 0 disables. Defaults to 30 000.
    pub default_call_timeout: f64,
    /// JS callbacks.
    pub callbacks: Callbacks,
}

impl ClientOptions {
    /// Options for `agent`/`name` on `host`, everything else at the
    /// reference's defaults.
    pub fn new(agent: &str, name: &str, host: &str) -> Self {
        ClientOptions {
            address: Address {
                agent: agent.to_owned(),
                name: name.to_owned(),
                host: host.to_owned(),
                ..Address::default()
            },
            query: Query::Static(Vec::new()),
            id: None,
            protocols: JsValue::UNDEFINED,
            reconnect: ReconnectOptions::default(),
            max_enqueued_messages: usize::MAX,
            start_closed: false,
            default_call_timeout: DEFAULT_CALL_TIMEOUT,
            callbacks: Callbacks::default(),
        }
    }
}

/// A Rust closure JavaScript can call with one value.
type JsCallback = Closure<dyn FnMut(JsValue)>;

/// Where a call's outcome goes.
pub(crate) enum Settle {
    /// `call()` from JavaScript: the promise's functions.
    Promise { resolve: Function, reject: Function },
    /// [`Client::call_async`]: a typed slot its future polls. (Not in the
    /// npm build, which has no Rust callers.)
    #[cfg(not(feature = "standalone"))]
    Slot(Rc<CallSlot>),
}

/// The outcome of a [`Client::call_async`] call, and the task to wake.
#[cfg(not(feature = "standalone"))]
#[derive(Default)]
pub(crate) struct CallSlot {
    pub(crate) outcome: RefCell<Option<Result<JsValue, ClientError>>>,
    pub(crate) waker: RefCell<Option<core::task::Waker>>,
}

impl Settle {
    fn resolve(&self, value: &JsValue) {
        match self {
            Settle::Promise { resolve, .. } => {
                let _ = resolve.call1(&JsValue::NULL, value);
            }
            #[cfg(not(feature = "standalone"))]
            Settle::Slot(slot) => slot.settle(Ok(value.clone())),
        }
    }

    /// Rejects with `error`: JavaScript sees an `Error` with its message.
    fn reject(&self, error: ClientError) {
        match self {
            Settle::Promise { reject, .. } => {
                let _ = reject.call1(&JsValue::NULL, &error_value(&error.message()));
            }
            #[cfg(not(feature = "standalone"))]
            Settle::Slot(slot) => slot.settle(Err(error)),
        }
    }
}

#[cfg(not(feature = "standalone"))]
impl CallSlot {
    fn settle(&self, outcome: Result<JsValue, ClientError>) {
        *self.outcome.borrow_mut() = Some(outcome);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

struct CallHandle {
    settle: Settle,
    on_chunk: Option<Function>,
    on_done: Option<Function>,
    on_error: Option<Function>,
    _timeout: Option<Timeout>,
}

struct Socket {
    ws: WebSocket,
    generation: u64,
    // One closure type for all four handlers keeps the wasm smaller.
    _onopen: Closure<dyn FnMut(JsValue)>,
    _onmessage: Closure<dyn FnMut(JsValue)>,
    _onclose: Closure<dyn FnMut(JsValue)>,
    _onerror: Closure<dyn FnMut(JsValue)>,
    _timeout: Option<Timeout>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        if matches!(self.ws.ready_state(), CONNECTING | OPEN) {
            let _ = self.ws.close();
        }
        LIVE_SOCKETS.fetch_sub(1, Ordering::Relaxed);
    }
}

static LIVE_SOCKETS: AtomicUsize = AtomicUsize::new(0);

/// Sockets currently held by any client (for leak tests).
#[doc(hidden)]
pub fn live_sockets() -> usize {
    LIVE_SOCKETS.load(Ordering::Relaxed)
}

/// The `on*` properties.
#[derive(Default)]
struct Handlers {
    open: Option<Function>,
    message: Option<Function>,
    close: Option<Function>,
    error: Option<Function>,
}

struct Inner {
    options: ClientOptions,
    base_url: String,
    id: String,
    reconnect: Reconnect,
    outbox: Outbox<JsValue>,
    calls: Calls<CallHandle>,
    socket: Option<Socket>,
    generation: u64,
    backoff: Option<Timeout>,
    uptime: Option<Timeout>,
    binary_type: BinaryType,
    handlers: Handlers,
    state: JsValue,
    identified: bool,
    state_seen: bool,
    held_identity: Option<(String, String)>,
    last_identity: Option<(String, String)>,
    agent: String,
    name: String,
    ready: Promise,
    resolve_ready: Option<Function>,
    connection_error: JsValue,
    closed: bool,
    env: Vec<Listener>,
    warned_closed_send: bool,
    /// Settle callbacks of the pending async `query`, if any.
    query_callbacks: Option<(JsCallback, JsCallback)>,
}

struct Core {
    inner: RefCell<Inner>,
    target: Target,
    keys: Keys,
}

/// The client. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Client {
    core: Rc<Core>,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let i = self.core.inner.borrow();
        f.debug_struct("Client")
            .field("url", &i.base_url)
            .field("id", &i.id)
            .finish()
    }
}

fn new_ready() -> (Promise, Option<Function>) {
    let mut resolve = None;
    let promise = Promise::new(&mut |res, _rej| resolve = Some(res));
    (promise, resolve)
}

/// A random hex id (not cryptographic; ids only need to be unique per client).
fn random_u64() -> u64 {
    let hi = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let lo = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (hi << 32) | lo
}

/// A UUID-v4-shaped random id for `_pk`.
fn random_uuid() -> String {
    let (a, b) = (random_u64(), random_u64());
    // {:08x}-{:04x}-4{:03x}-{8..b}{:03x}-{:012x}
    let mut id = String::with_capacity(36);
    let parts = [
        (a >> 32, 8, "-"),
        ((a >> 16) & 0xffff, 4, "-4"),
        (a & 0xfff, 3, "-"),
        (8 | (b >> 62), 1, ""),
        ((b >> 48) & 0xfff, 3, "-"),
        (b & 0xffff_ffff_ffff, 12, ""),
    ];
    for (value, width, then) in parts {
        push_hex(&mut id, value, width);
        id.push_str(then);
    }
    id
}

fn call1(f: &Option<Function>, a: &JsValue) {
    if let Some(f) = f {
        let _ = f.call1(&JsValue::NULL, a);
    }
}

fn error_value(message: &str) -> JsValue {
    js_sys::Error::new(message).into()
}

fn close_event(code: u16, reason: &str, was_clean: bool) -> CloseEvent {
    let init = CloseEventInit::new();
    init.set_code(code);
    init.set_reason(reason);
    init.set_was_clean(was_clean);
    CloseEvent::new_with_event_init_dict("close", &init).unwrap_throw()
}

/// UTF-16 length of strings, `size` of Blobs, `byteLength` of buffers.
fn size_of(data: &JsValue) -> f64 {
    if let Some(s) = data.as_string() {
        return s.encode_utf16().count() as f64;
    }
    let n = get(data, "byteLength")
        .as_f64()
        .or_else(|| get(data, "size").as_f64());
    n.unwrap_or(0.0)
}

impl Client {
    /// Creates the client and, unless `start_closed`, starts connecting.
    ///
    /// # Errors
    /// [`ClientError::Options`] for options the reference would reject.
    pub fn new(options: ClientOptions) -> Result<Client, ClientError> {
        let base_url = options.address.base_url()?;
        let id = options
            .id
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(random_uuid);
        let (ready, resolve_ready) = new_ready();
        let agent = crate::url::kebab(&options.address.agent);
        let name = if options.address.name.is_empty() {
            "default".into()
        } else {
            options.address.name.clone()
        };
        let inner = Inner {
            reconnect: Reconnect::new(options.reconnect.clone(), options.start_closed),
            outbox: Outbox::new(options.max_enqueued_messages),
            calls: Calls::default(),
            socket: None,
            generation: 0,
            backoff: None,
            uptime: None,
            binary_type: BinaryType::Blob,
            handlers: Handlers::default(),
            state: JsValue::UNDEFINED,
            identified: false,
            state_seen: false,
            held_identity: None,
            last_identity: None,
            agent,
            name,
            ready,
            resolve_ready,
            connection_error: JsValue::NULL,
            closed: options.start_closed,
            env: Vec::new(),
            warned_closed_send: false,
            query_callbacks: None,
            options,
            base_url,
            id,
        };
        let client = Client {
            core: Rc::new(Core {
                inner: RefCell::new(inner),
                target: Target::new(),
                keys: Keys::new(),
            }),
        };
        client.watch_environment();
        if !client.core.inner.borrow().closed {
            client.core.inner.borrow_mut().reconnect.first_attempt();
            client.connect();
        }
        Ok(client)
    }

    fn weak(&self) -> Weak<Core> {
        Rc::downgrade(&self.core)
    }

    fn from_weak(weak: &Weak<Core>) -> Option<Client> {
        weak.upgrade().map(|core| Client { core })
    }

    /// `online`/`offline` and tab visibility: reconnect at once when the
    /// network returns or a hidden tab with a dead socket becomes visible.
    fn watch_environment(&self) {
        let global = JsValue::from(js_sys::global());
        if !global.is_object() || get(&global, "addEventListener").is_undefined() {
            return;
        }
        let target: Target = global.unchecked_into();
        let mut env = Vec::new();
        let weak = self.weak();
        env.push(Listener::new(target.clone(), "offline", move |_| {
            if let Some(c) = Client::from_weak(&weak) {
                c.core.inner.borrow_mut().reconnect.set_offline(true);
            }
        }));
        let weak = self.weak();
        env.push(Listener::new(target.clone(), "online", move |_| {
            if let Some(c) = Client::from_weak(&weak) {
                c.core.inner.borrow_mut().reconnect.set_offline(false);
                c.wake();
            }
        }));
        let document = get(&JsValue::from(js_sys::global()), "document");
        if document.is_object() {
            let document: Target = document.unchecked_into();
            let weak = self.weak();
            let doc = document.clone();
            env.push(Listener::new(document, "visibilitychange", move |_| {
                if get(&doc, "visibilityState").as_string().as_deref() == Some("visible") {
                    if let Some(c) = Client::from_weak(&weak) {
                        c.wake();
                    }
                }
            }));
        }
        if get(
            &get(&JsValue::from(js_sys::global()), "navigator"),
            "onLine",
        ) == JsValue::FALSE
        {
            self.core.inner.borrow_mut().reconnect.set_offline(true);
        }
        self.core.inner.borrow_mut().env = env;
    }

    /// Connects now if reconnecting is on and no socket is alive.
    fn wake(&self) {
        {
            let mut i = self.core.inner.borrow_mut();
            let dead = i
                .socket
                .as_ref()
                .is_none_or(|s| s.ws.ready_state() >= CLOSING);
            if !dead || !i.reconnect.active() || i.closed {
                return;
            }
            i.backoff = None;
        }
        self.connect();
    }

    /// Starts an attempt: resolves the query (re-running a query function),
    /// then opens the socket.
    fn connect(&self) {
        let (generation, query) = {
            let mut i = self.core.inner.borrow_mut();
            i.generation += 1;
            i.socket = None;
            (i.generation, i.options.query.clone())
        };
        match query {
            Query::Static(pairs) => self.open_socket(generation, &pairs),
            Query::Dynamic(f) => match f.call0(&JsValue::NULL) {
                Ok(v) if v.is_instance_of::<Promise>() => {
                    // Settled through two closures owned by the client (replaced
                    // on the next attempt, freed with the client): nothing leaks.
                    let ok = self.query_callback(generation, true);
                    let err = self.query_callback(generation, false);
                    let _ = v.unchecked_into::<Promise>().then2(&ok, &err);
                    self.core.inner.borrow_mut().query_callbacks = Some((ok, err));
                }
                Ok(obj) => self.open_socket(generation, &query_pairs(&obj)),
                Err(err) => self.query_failed(generation, &err),
            },
        }
    }

    /// A settle callback for a query promise of attempt `generation`.
    fn query_callback(&self, generation: u64, ok: bool) -> Closure<dyn FnMut(JsValue)> {
        let weak = self.weak();
        Closure::<dyn FnMut(JsValue)>::new(move |value: JsValue| {
            let Some(client) = Client::from_weak(&weak) else {
                return;
            };
            if client.core.inner.borrow().generation != generation {
                return;
            }
            if ok {
                client.open_socket(generation, &query_pairs(&value));
            } else {
                client.query_failed(generation, &value);
            }
        })
    }

    fn query_failed(&self, generation: u64, err: &JsValue) {
        web_sys::console::error_2(&"agents-rs: query function failed".into(), err);
        self.on_close(generation, 1006, "query failed", false);
    }

    fn open_socket(&self, generation: u64, pairs: &[(String, String)]) {
        let mut i = self.core.inner.borrow_mut();
        if i.generation != generation || i.closed {
            return;
        }
        let url = with_query(
            &i.base_url,
            &i.id,
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let protocols = &i.options.protocols;
        let ws = if protocols.is_undefined() || protocols.is_null() {
            WebSocket::new(&url)
        } else {
            WebSocket::new_with_str_sequence(&url, protocols)
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(err) => {
                drop(i);
                web_sys::console::error_2(&"agents-rs: cannot open WebSocket".into(), &err);
                self.dispatch_error();
                self.on_close(generation, 1006, "invalid url", false);
                return;
            }
        };
        ws.set_binary_type(i.binary_type);
        let w = self.weak();
        let onopen = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(c) = Client::from_weak(&w) {
                c.on_open(generation);
            }
        });
        let w = self.weak();
        let onmessage = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if let Some(c) = Client::from_weak(&w) {
                let data = field(&e, &c.core.keys.data);
                c.on_message(generation, data);
            }
        });
        let w = self.weak();
        let onclose = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if let Some(c) = Client::from_weak(&w) {
                let code = get(&e, "code").as_f64().unwrap_or(1006.0) as u16;
                let reason = get(&e, "reason").as_string().unwrap_or_default();
                c.on_close(
                    generation,
                    code,
                    &reason,
                    get(&e, "wasClean") == JsValue::TRUE,
                );
            }
        });
        let w = self.weak();
        let onerror = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(c) = Client::from_weak(&w) {
                if c.core.inner.borrow().generation == generation {
                    c.dispatch_error();
                }
            }
        });
        ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
        ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
        ws.set_onerror(Some(onerror.as_ref().unchecked_ref()));
        let w = self.weak();
        let timeout = Timeout::new(i.reconnect.options.connection_timeout, move || {
            if let Some(c) = Client::from_weak(&w) {
                let stuck = {
                    let i = c.core.inner.borrow();
                    i.generation == generation
                        && i.socket
                            .as_ref()
                            .is_some_and(|s| s.ws.ready_state() == CONNECTING)
                };
                if stuck {
                    c.dispatch_error();
                    c.on_close(generation, 1006, "timeout", false);
                }
            }
        });
        LIVE_SOCKETS.fetch_add(1, Ordering::Relaxed);
        i.socket = Some(Socket {
            ws,
            generation,
            _onopen: onopen,
            _onmessage: onmessage,
            _onclose: onclose,
            _onerror: onerror,
            _timeout: Some(timeout),
        });
    }

    fn on_open(&self, generation: u64) {
        let handler = {
            let mut i = self.core.inner.borrow_mut();
            if i.generation != generation {
                return;
            }
            let Some(socket) = i.socket.as_mut() else {
                return;
            };
            socket._timeout = None;
            let ws = socket.ws.clone();
            ws.set_binary_type(i.binary_type);
            // Flush what was queued, in order, before announcing `open`.
            for data in i.outbox.drain() {
                let _ = send_on(&ws, &data);
            }
            i.calls.mark_sent(generation);
            i.connection_error = JsValue::NULL;
            let w = self.weak();
            let min_uptime = i.reconnect.options.min_uptime;
            i.uptime = Some(Timeout::new(min_uptime, move || {
                if let Some(c) = Client::from_weak(&w) {
                    c.core.inner.borrow_mut().reconnect.stable();
                }
            }));
            i.handlers.open.clone()
        };
        self.emit(&handler, &Event::new("open").unwrap_throw());
    }

    fn on_message(&self, generation: u64, data: JsValue) {
        if self.core.inner.borrow().generation != generation {
            return;
        }
        // Only JSON objects can be protocol frames. The text stays a JS
        // string: checked and parsed on the JS side, never copied into wasm.
        if let Some(text) = data.dyn_ref::<js_sys::JsString>() {
            // NaN for "", so no separate length check (one call fewer).
            if text.char_code_at(0) == f64::from(b'{') {
                if let Ok(frame) = crate::sys::json_parse(&data) {
                    self.handle_frame(&frame);
                }
            }
        }
        let handler = self.core.inner.borrow().handlers.message.clone();
        let keys = &self.core.keys;
        keys.message_init.set_data(&data);
        let event = NewMessageEvent::new(&keys.message, &keys.message_init);
        // So the shared init object does not keep the last message alive.
        keys.message_init.set_data(&JsValue::UNDEFINED);
        self.emit(&handler, &event);
    }

    /// Acts on protocol frames; every frame still reaches the listeners.
    fn handle_frame(&self, frame: &JsValue) {
        let ty = field(frame, &self.core.keys.ty);
        // The frequent case (call results and stream chunks) without copying
        // the type into wasm.
        if ty == self.core.keys.rpc {
            return self.handle_rpc(frame);
        }
        let ty = ty.as_string().unwrap_or_default();
        match ty.as_str() {
            frame_type::IDENTITY => {
                // A frame without both names is malformed: it reaches the
                // listeners but changes no identity.
                let (Some(name), Some(agent)) = (
                    get(frame, "name").as_string(),
                    get(frame, "agent").as_string(),
                ) else {
                    return;
                };
                let hold = {
                    let mut i = self.core.inner.borrow_mut();
                    let hold = get(frame, "stateFollows") == JsValue::TRUE && !i.state_seen;
                    if hold {
                        i.held_identity = Some((name.clone(), agent.clone()));
                    }
                    hold
                };
                if !hold {
                    self.apply_identity(name, agent);
                }
            }
            frame_type::STATE => {
                let state = get(frame, "state");
                let (callback, held) = {
                    let mut i = self.core.inner.borrow_mut();
                    i.state = state.clone();
                    i.state_seen = true;
                    (
                        i.options.callbacks.on_state_update.clone(),
                        i.held_identity.take(),
                    )
                };
                if let Some(f) = callback {
                    let _ = f.call2(&JsValue::NULL, &state, &"server".into());
                }
                if let Some((name, agent)) = held {
                    self.apply_identity(name, agent);
                }
            }
            frame_type::STATE_ERROR => {
                let callback = self
                    .core
                    .inner
                    .borrow()
                    .options
                    .callbacks
                    .on_state_update_error
                    .clone();
                call1(&callback, &get(frame, "error"));
            }
            frame_type::MCP_SERVERS => {
                let callback = self
                    .core
                    .inner
                    .borrow()
                    .options
                    .callbacks
                    .on_mcp_update
                    .clone();
                call1(&callback, &get(frame, "mcp"));
            }
            _ => {}
        }
    }

    fn apply_identity(&self, name: String, agent: String) {
        let (resolve, on_identity, on_change, previous) = {
            let mut i = self.core.inner.borrow_mut();
            i.identified = true;
            i.name = name.clone();
            i.agent = agent.clone();
            let previous = i.last_identity.replace((name.clone(), agent.clone()));
            let previous = previous.filter(|p| *p != (name.clone(), agent.clone()));
            (
                i.resolve_ready.take(),
                i.options.callbacks.on_identity.clone(),
                i.options.callbacks.on_identity_change.clone(),
                previous,
            )
        };
        if let Some(resolve) = resolve {
            let _ = resolve.call0(&JsValue::NULL);
        }
        if let Some(f) = on_identity {
            let _ = f.call2(&JsValue::NULL, &name.clone().into(), &agent.clone().into());
        }
        if let Some((old_name, old_agent)) = previous {
            match on_change {
                Some(f) => {
                    let args = Array::of4(
                        &old_name.into(),
                        &name.into(),
                        &old_agent.into(),
                        &agent.into(),
                    );
                    let _ = f.apply(&JsValue::NULL, &args);
                }
                None => web_sys::console::warn_1(
                    &("agents-rs: identity changed from ".to_owned()
                        + &old_agent
                        + "/"
                        + &old_name
                        + " to "
                        + &agent
                        + "/"
                        + &name)
                        .into(),
                ),
            }
        }
    }

    fn handle_rpc(&self, frame: &JsValue) {
        let keys = &self.core.keys;
        let Some(id) = field(frame, &keys.id).as_string() else {
            return;
        };
        let success = field(frame, &keys.success).as_bool();
        let done = field(frame, &keys.done).as_bool();
        let result = field(frame, &keys.result);
        let mut i = self.core.inner.borrow_mut();
        if success == Some(false) {
            let Some(p) = i.calls.take(&id) else { return };
            drop(i);
            let error = get(frame, "error")
                .as_string()
                .unwrap_or_else(|| "Unknown error".into());
            fail_call(
                &p.handle.on_error,
                &p.handle.settle,
                ClientError::Rpc(error),
            );
        } else if done == Some(false) {
            let on_chunk = i.calls.get(&id).and_then(|p| p.handle.on_chunk.clone());
            drop(i);
            call1(&on_chunk, &result);
        } else {
            let Some(p) = i.calls.take(&id) else { return };
            drop(i);
            p.handle.settle.resolve(&result);
            call1(&p.handle.on_done, &result);
        }
    }

    fn on_close(&self, generation: u64, code: u16, reason: &str, was_clean: bool) {
        let (decision, rejected, handler, on_error, error) = {
            let mut i = self.core.inner.borrow_mut();
            if i.generation != generation
                || i.socket
                    .as_ref()
                    .is_some_and(|s| s.generation != generation)
            {
                return;
            }
            i.socket = None;
            i.uptime = None;
            i.identified = false;
            i.state_seen = false;
            i.held_identity = None;
            let (ready, resolve) = new_ready();
            i.ready = ready;
            i.resolve_ready = resolve;
            let decision = i.reconnect.after_close(code, js_sys::Math::random());
            let mut rejected = i.calls.take_sent_on(generation);
            let mut error = JsValue::NULL;
            match decision {
                AfterClose::Retry(ms) if ms.is_finite() => {
                    let w = self.weak();
                    i.backoff = Some(Timeout::new(ms, move || {
                        if let Some(c) = Client::from_weak(&w) {
                            c.core.inner.borrow_mut().backoff = None;
                            c.connect();
                        }
                    }));
                }
                AfterClose::Retry(_) | AfterClose::Stopped => {}
                AfterClose::Terminal | AfterClose::Exhausted => {
                    rejected.extend(i.calls.take_all());
                    error = connection_error(code, reason, was_clean);
                    i.connection_error = error.clone();
                }
            }
            let on_error = i.options.callbacks.on_connection_error.clone();
            (
                decision,
                rejected,
                i.handlers.close.clone(),
                on_error,
                error,
            )
        };
        reject_all(rejected, &ClientError::ConnectionClosed);
        if matches!(decision, AfterClose::Terminal | AfterClose::Exhausted) {
            call1(&on_error, &error);
        }
        self.emit(&handler, &close_event(code, reason, was_clean));
    }

    fn dispatch_error(&self) {
        let handler = self.core.inner.borrow().handlers.error.clone();
        self.emit(&handler, &Event::new("error").unwrap_throw());
    }

    /// Calls the `on*` property, then the listeners (the reference's order).
    fn emit(&self, handler: &Option<Function>, event: &Event) {
        call1(handler, event);
        self.core.target.dispatch(event);
    }

    /// Closes a socket on the user's behalf (`close()`, `reconnect()`) and,
    /// if it was live, dispatches `close` at once as the reference does; the
    /// socket's own close event is detached and never arrives.
    fn close_now(&self, socket: Socket, code: u16, reason: &str) {
        if !matches!(socket.ws.ready_state(), CONNECTING | OPEN) {
            return;
        }
        socket.ws.set_onclose(None);
        let _ = socket.ws.close_with_code_and_reason(code, reason);
        drop(socket);
        let handler = self.core.inner.borrow().handlers.close.clone();
        self.emit(&handler, &close_event(code, reason, true));
    }

    /// Sends `data` (a string, `ArrayBuffer`, typed array/`DataView` or
    /// `Blob`) now if the socket is open, else queues it. Returns whether it
    /// went out now.
    ///
    /// # Errors
    /// [`ClientError::QueueFull`] when the queue is at `maxEnqueuedMessages`;
    /// [`ClientError::Options`] for an unsupported type.
    pub fn send(&self, data: JsValue) -> Result<bool, ClientError> {
        if !(data.is_string()
            || data.is_instance_of::<js_sys::ArrayBuffer>()
            || js_sys::ArrayBuffer::is_view(&data)
            || data.is_instance_of::<web_sys::Blob>())
        {
            return Err(ClientError::Options(
                "send() takes a string, ArrayBuffer, ArrayBufferView or Blob".into(),
            ));
        }
        let mut i = self.core.inner.borrow_mut();
        if let Some(socket) = i.socket.as_ref().filter(|s| s.ws.ready_state() == OPEN) {
            send_on(&socket.ws, &data).map_err(|_| ClientError::ConnectionClosed)?;
            return Ok(true);
        }
        if i.closed && !i.warned_closed_send {
            i.warned_closed_send = true;
            web_sys::console::warn_1(
                &"agents-rs: send() after close() is queued until reconnect()".into(),
            );
        }
        i.outbox.push(data).map_err(|_| ClientError::QueueFull)?;
        Ok(false)
    }

    /// Closes for good (until [`reconnect`](Self::reconnect)): rejects
    /// pending calls, closes the socket and dispatches `close` at once.
    pub fn close(&self, code: u16, reason: &str) {
        let (socket, rejected) = {
            let mut i = self.core.inner.borrow_mut();
            i.closed = true;
            i.reconnect.stop();
            i.backoff = None;
            i.uptime = None;
            i.identified = false;
            i.generation += 1;
            (i.socket.take(), i.calls.take_all())
        };
        reject_all(rejected, &ClientError::ConnectionClosed);
        if let Some(socket) = socket {
            self.close_now(socket, code, reason);
        }
    }

    /// Reconnects now: clears a terminal state or `close()`, resets the
    /// retry count and replaces any live socket.
    pub fn reconnect(&self, code: u16, reason: &str) {
        let socket = {
            let mut i = self.core.inner.borrow_mut();
            i.closed = false;
            i.reconnect.restart();
            i.reconnect.first_attempt();
            i.backoff = None;
            i.connection_error = JsValue::NULL;
            i.socket.take()
        };
        if let Some(socket) = socket {
            let rejected = self
                .core
                .inner
                .borrow_mut()
                .calls
                .take_sent_on(socket.generation);
            reject_all(rejected, &ClientError::ConnectionClosed);
            self.close_now(socket, code, reason);
        }
        self.connect();
    }

    /// Calls `method` with `args` (a JS array). `stream` callbacks receive
    /// chunks; `timeout_ms` of 0 disables the timeout. The promise rejects
    /// with an `Error` whose message is the [`ClientError`]'s.
    pub fn call(
        &self,
        method: &str,
        args: &JsValue,
        timeout_ms: f64,
        stream: [Option<Function>; 3],
    ) -> Promise {
        let mut parts = None;
        let promise = Promise::new(&mut |res, rej| parts = Some((res, rej)));
        let (resolve, reject) = parts.unwrap_throw(); // the executor runs synchronously
        self.start_call(
            method,
            args,
            timeout_ms,
            stream,
            Settle::Promise { resolve, reject },
        );
        promise
    }

    /// Sends the call frame (or queues it) and records where its outcome goes.
    pub(crate) fn start_call(
        &self,
        method: &str,
        args: &JsValue,
        timeout_ms: f64,
        stream: [Option<Function>; 3],
        settle: Settle,
    ) {
        let [on_chunk, on_done, on_error] = stream;
        let (closed, id) = {
            let mut i = self.core.inner.borrow_mut();
            let closed = i.closed || !i.connection_error.is_null();
            (closed, i.calls.next_id(random_u64()))
        };
        if closed {
            return fail_call(&on_error, &settle, ClientError::ConnectionClosed);
        }
        let frame = Object::new();
        set(&frame, "type", &frame_type::RPC.into());
        set(&frame, "id", &id.as_str().into());
        set(&frame, "method", &method.into());
        set(&frame, "args", args);
        let Ok(text) = JSON::stringify(&frame) else {
            let error = "call arguments must be JSON-serializable";
            return settle.reject(ClientError::Options(error.into()));
        };
        let timer = (timeout_ms > 0.0).then(|| {
            let w = self.weak();
            let id = id.clone();
            let method = method.to_owned();
            Timeout::new(timeout_ms, move || {
                let Some(c) = Client::from_weak(&w) else {
                    return;
                };
                let Some(p) = c.core.inner.borrow_mut().calls.take(&id) else {
                    return;
                };
                let error = ClientError::Timeout {
                    method,
                    ms: timeout_ms as u32,
                };
                fail_call(&p.handle.on_error, &p.handle.settle, error);
            })
        });
        let streaming = on_chunk.is_some() || on_done.is_some() || on_error.is_some();
        let handle = CallHandle {
            settle,
            on_chunk,
            on_done,
            on_error,
            _timeout: timer,
        };
        let pending = Pending {
            method: method.to_owned(),
            socket: None,
            streaming,
            handle,
        };
        self.core
            .inner
            .borrow_mut()
            .calls
            .insert(id.clone(), pending);
        match self.send(JsValue::from(text)) {
            Ok(true) => {
                let mut i = self.core.inner.borrow_mut();
                let generation = i.generation;
                i.calls.mark_one_sent(&id, generation);
            }
            Ok(false) => {}
            Err(err) => {
                let p = self.core.inner.borrow_mut().calls.take(&id);
                reject_all(p.into_iter().collect(), &err);
            }
        }
    }

    /// Sends `cf_agent_state`, updates [`state`](Self::state) and calls
    /// `onStateUpdate(state, "client")` (optimistically, as the reference).
    pub fn set_state(&self, state: JsValue) -> Result<(), ClientError> {
        let frame = Object::new();
        set(&frame, "type", &frame_type::STATE.into());
        set(&frame, "state", &state);
        let text = JSON::stringify(&frame)
            .map_err(|_| ClientError::Options("state must be JSON-serializable".into()))?;
        self.send(text.into())?;
        let callback = {
            let mut i = self.core.inner.borrow_mut();
            i.state = state.clone();
            i.options.callbacks.on_state_update.clone()
        };
        if let Some(f) = callback {
            let _ = f.call2(&JsValue::NULL, &state, &"client".into());
        }
        Ok(())
    }

    /// The event target listeners are added to.
    pub(crate) fn target(&self) -> &Target {
        &self.core.target
    }

    /// `readyState`: 0 connecting, 1 open, 2 closing, 3 closed (also between
    /// attempts and after `close()`).
    pub fn ready_state(&self) -> u16 {
        let i = self.core.inner.borrow();
        if i.closed {
            return CLOSED;
        }
        match &i.socket {
            Some(s) => s.ws.ready_state(),
            None if i.generation == 0 => CONNECTING,
            None => CLOSED,
        }
    }

    /// The live socket's URL, or `""`.
    pub fn url(&self) -> String {
        self.core
            .inner
            .borrow()
            .socket
            .as_ref()
            .map(|s| s.ws.url())
            .unwrap_or_default()
    }

    /// The live socket's selected subprotocol, or `""`.
    pub fn protocol(&self) -> String {
        self.core
            .inner
            .borrow()
            .socket
            .as_ref()
            .map(|s| s.ws.protocol())
            .unwrap_or_default()
    }

    /// The `_pk` connection id.
    pub fn id(&self) -> String {
        self.core.inner.borrow().id.clone()
    }

    /// The agent (kebab-case; the server's identity once identified).
    pub fn agent(&self) -> String {
        self.core.inner.borrow().agent.clone()
    }

    /// The instance name (the server's identity once identified).
    pub fn name(&self) -> String {
        self.core.inner.borrow().name.clone()
    }

    /// The last state seen or set (`undefined` before any).
    pub fn state(&self) -> JsValue {
        self.core.inner.borrow().state.clone()
    }

    /// Whether the identity frame has been applied on this socket.
    pub fn identified(&self) -> bool {
        self.core.inner.borrow().identified
    }

    /// Resolves once identified (after the state when one follows).
    pub fn ready(&self) -> Promise {
        self.core.inner.borrow().ready.clone()
    }

    /// The terminal close or retry exhaustion, or `null`.
    pub fn connection_error(&self) -> JsValue {
        self.core.inner.borrow().connection_error.clone()
    }

    /// Retries since the last stable connection.
    pub fn retry_count(&self) -> u32 {
        self.core.inner.borrow().reconnect.retry_count()
    }

    /// Whether automatic reconnection is on.
    pub fn should_reconnect(&self) -> bool {
        self.core.inner.borrow().reconnect.active()
    }

    /// `"blob"` (default) or `"arraybuffer"`; kept across reconnects.
    pub fn binary_type(&self) -> BinaryType {
        self.core.inner.borrow().binary_type
    }

    /// Sets the binary type for this and every later socket.
    pub fn set_binary_type(&self, binary_type: BinaryType) {
        let mut i = self.core.inner.borrow_mut();
        i.binary_type = binary_type;
        if let Some(s) = &i.socket {
            s.ws.set_binary_type(binary_type);
        }
    }

    /// Queued bytes (UTF-16 units for strings) plus the socket's own buffer.
    pub fn buffered_amount(&self) -> f64 {
        let i = self.core.inner.borrow();
        let queued: f64 = i.outbox.iter().map(size_of).sum();
        queued
            + i.socket
                .as_ref()
                .map_or(0.0, |s| f64::from(s.ws.buffered_amount()))
    }

    /// The `on*` property for `kind` (`open`, `message`, `close`, `error`).
    pub fn handler(&self, kind: &str) -> Option<Function> {
        let i = self.core.inner.borrow();
        match kind {
            "open" => i.handlers.open.clone(),
            "message" => i.handlers.message.clone(),
            "close" => i.handlers.close.clone(),
            _ => i.handlers.error.clone(),
        }
    }

    /// Sets the `on*` property for `kind`.
    pub fn set_handler(&self, kind: &str, f: Option<Function>) {
        let mut i = self.core.inner.borrow_mut();
        match kind {
            "open" => i.handlers.open = f,
            "message" => i.handlers.message = f,
            "close" => i.handlers.close = f,
            _ => i.handlers.error = f,
        }
    }

    /// The default timeout of non-streaming calls, in ms.
    pub fn default_call_timeout(&self) -> f64 {
        self.core.inner.borrow().options.default_call_timeout
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let i = self.inner.get_mut();
        i.env.clear();
        i.backoff = None;
        i.uptime = None;
        i.socket = None;
    }
}

/// `ws.send(data)` for any of the accepted types, handed over as the same
/// JS value: a string is never copied through wasm memory (two UTF-8
/// conversions per message before).
fn send_on(ws: &WebSocket, data: &JsValue) -> Result<(), JsValue> {
    ws.unchecked_ref::<crate::sys::AnySend>().send(data)
}

fn reject_all(calls: Vec<Pending<CallHandle>>, error: &ClientError) {
    for p in calls {
        fail_call(&p.handle.on_error, &p.handle.settle, error.clone());
    }
}

/// Fails a call: its `onError` gets the message, its promise (or
/// `call_async`) the error.
fn fail_call(on_error: &Option<Function>, settle: &Settle, error: ClientError) {
    call1(on_error, &error.message().into());
    settle.reject(error);
}

/// An `Error` named `AgentConnectionError` carrying `code`, `reason`, `wasClean`.
fn connection_error(code: u16, reason: &str, was_clean: bool) -> JsValue {
    let err = js_sys::Error::new(
        &("Connection closed: ".to_owned() + &decimal(code.into()) + " " + reason),
    );
    err.set_name("AgentConnectionError");
    set(&err, "code", &code.into());
    set(&err, "reason", &reason.into());
    set(&err, "wasClean", &was_clean.into());
    err.into()
}

/// Query pairs from a JS object, skipping `null`/`undefined` values.
pub fn query_pairs(obj: &JsValue) -> Vec<(String, String)> {
    if !obj.is_object() {
        return Vec::new();
    }
    let entries = Object::entries(obj.unchecked_ref());
    entries
        .iter()
        .filter_map(|pair| {
            let pair: Array = pair.unchecked_into();
            let key = pair.get(0).as_string()?;
            let value = pair.get(1);
            if value.is_null() || value.is_undefined() {
                return None;
            }
            let value = value.as_string().unwrap_or_else(|| {
                String::from(js_sys::JSON::stringify(&value).unwrap_or_default())
            });
            Some((key, value))
        })
        .collect()
}
