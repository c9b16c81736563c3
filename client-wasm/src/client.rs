//! The Rust API, for Rust web apps (Leptos, Yew, …): the npm package's
//! client — the `AgentClient` class of `js/agent-client.js` driving the same
//! core — with Rust types at the edges: calls and state through `serde`, a
//! `futures` [`Stream`](futures_core::Stream) of messages, typed errors.
//!
//! ```no_run
//! use agents_client::client::{Client, Options};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), agents_client::ClientError> {
//! #[derive(serde::Deserialize)]
//! struct Counter {
//!     count: i64,
//! }
//! let client = Client::new(Options::new("counter-agent", "room-1", "127.0.0.1:8787"))?;
//! client.ready().await;
//! let count: i64 = client.call("increment", &(2,)).await?;
//! let state: Option<Counter> = client.state()?;
//! let mut messages = client.messages();
//! while let Some(message) = messages.next().await {
//!     // every message that is not a protocol frame
//! }
//! # Ok(()) }
//! ```

use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::bindings::{run, CoreCell, Handle, Host, Input, WasmCore};
use crate::error::ClientError;
use crate::js_value::CallOptions;
use crate::machine::Timeout;

mod futures;

pub(crate) use futures::CallSlot;
use futures::{CallFuture, Queue};
pub use futures::{Message, Messages};

#[wasm_bindgen(module = "/js/agent-client.js")]
extern "C" {
    /// The JavaScript `AgentClient` (an `EventTarget`), as the npm package
    /// exports it. [`Client`] wraps one; [`Client::js`] hands it out for
    /// everything the Rust API does not cover.
    #[wasm_bindgen(extends = web_sys::EventTarget)]
    #[derive(Debug, Clone)]
    pub type AgentClient;
    #[wasm_bindgen(js_name = useCore)]
    fn use_core(factory: &js_sys::Function);
    /// `new AgentClient(options)`; throws on bad options.
    #[wasm_bindgen(constructor, catch)]
    pub fn new(options: &JsValue) -> Result<AgentClient, JsValue>;
    /// `send(data)`.
    #[wasm_bindgen(method, catch)]
    pub fn send(this: &AgentClient, data: &JsValue) -> Result<bool, JsValue>;
    /// `close(code, reason)`.
    #[wasm_bindgen(method)]
    pub fn close(this: &AgentClient, code: Option<u16>, reason: Option<String>);
    /// `reconnect(code, reason)`.
    #[wasm_bindgen(method)]
    pub fn reconnect(this: &AgentClient, code: Option<u16>, reason: Option<String>);
    /// `call(method, args, options)`.
    #[wasm_bindgen(method)]
    pub fn call(
        this: &AgentClient,
        method: &str,
        args: &JsValue,
        options: &JsValue,
    ) -> js_sys::Promise;
    /// `setState(state)`.
    #[wasm_bindgen(method, catch, js_name = setState)]
    pub fn set_state(this: &AgentClient, state: &JsValue) -> Result<(), JsValue>;
    /// `state`.
    #[wasm_bindgen(method, getter)]
    pub fn state(this: &AgentClient) -> JsValue;
    /// `ready`.
    #[wasm_bindgen(method, getter)]
    pub fn ready(this: &AgentClient) -> js_sys::Promise;
    /// `identified`.
    #[wasm_bindgen(method, getter)]
    pub fn identified(this: &AgentClient) -> bool;
    /// `agent`.
    #[wasm_bindgen(method, getter)]
    pub fn agent(this: &AgentClient) -> String;
    /// `name`.
    #[wasm_bindgen(method, getter)]
    pub fn name(this: &AgentClient) -> String;
    /// `id`.
    #[wasm_bindgen(method, getter)]
    pub fn id(this: &AgentClient) -> String;
    /// `url`.
    #[wasm_bindgen(method, getter)]
    pub fn url(this: &AgentClient) -> String;
    /// `readyState`.
    #[wasm_bindgen(method, getter, js_name = readyState)]
    pub fn ready_state(this: &AgentClient) -> u16;
    /// `bufferedAmount`.
    #[wasm_bindgen(method, getter, js_name = bufferedAmount)]
    pub fn buffered_amount(this: &AgentClient) -> f64;
    /// `shouldReconnect`.
    #[wasm_bindgen(method, getter, js_name = shouldReconnect)]
    pub fn should_reconnect(this: &AgentClient) -> bool;
    /// `connectionError`.
    #[wasm_bindgen(method, getter, js_name = connectionError)]
    pub fn connection_error(this: &AgentClient) -> JsValue;
    /// `free()`: closes and releases the core now.
    #[wasm_bindgen(method)]
    pub fn free(this: &AgentClient);
    /// `binaryType = …`.
    #[wasm_bindgen(method, setter, js_name = binaryType)]
    pub fn set_binary_type(this: &AgentClient, binary_type: &str);
}

/// `(options, host) => new Core(options, host)`, from Rust.
type Factory = Closure<dyn FnMut(JsValue, JsValue) -> Result<JsValue, JsValue>>;

thread_local! {
    /// The factory the class makes its cores with, kept for the page's life.
    static FACTORY: RefCell<Option<Factory>> = const { RefCell::new(None) };
    /// The core the factory made last, for [`Client::new`] to share.
    static LAST: RefCell<Option<CoreCell>> = const { RefCell::new(None) };
}

/// Makes the JavaScript class build its cores from this module (the npm
/// entry does the same with its own glue). Idempotent.
pub fn install() {
    FACTORY.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            let factory = Factory::new(|options: JsValue, host: JsValue| {
                let core = WasmCore::new(&options, host)?;
                LAST.with(|l| *l.borrow_mut() = Some(core.core.clone()));
                Ok(core.into())
            });
            use_core(factory.as_ref().unchecked_ref());
            *f = Some(factory);
        }
    });
}

/// The options of [`Client::new`]; `None` fields take the reference's
/// defaults (see `AgentClientOptions` in the npm package's types).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    /// Agent class or binding name, kebab-cased into the URL.
    pub agent: String,
    /// Instance name.
    pub name: String,
    /// `host[:port]`. Defaults to the page's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Extra path after the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query parameters after `_pk`.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_object")]
    pub query: Vec<(String, String)>,
    /// The `_pk` connection id. Defaults to a random UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Timeout of calls in ms (0 disables). Defaults to 30 000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_call_timeout: Option<f64>,
    /// Retries after the first attempt. Defaults to unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<f64>,
    /// First backoff delay in ms. Defaults to 3000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_reconnection_delay: Option<f64>,
    /// Largest backoff delay in ms. Defaults to 10 000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_reconnection_delay: Option<f64>,
    /// ms an attempt may take to open. Defaults to 4000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_timeout: Option<f64>,
    /// Do not connect until `reconnect()`.
    #[serde(skip_serializing_if = "core::ops::Not::not")]
    pub start_closed: bool,
}

fn as_object<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

impl Options {
    /// Options for `agent`/`name` on `host`, everything else at the defaults.
    pub fn new(agent: &str, name: &str, host: &str) -> Options {
        Options {
            agent: agent.into(),
            name: name.into(),
            host: Some(host.into()),
            ..Options::default()
        }
    }
}

/// A connection to one agent instance. Cheap to clone (clones share it);
/// it stays connected until [`close`](Self::close)d.
#[derive(Clone)]
pub struct Client {
    js: AgentClient,
    core: CoreCell,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.js.url())
            .finish()
    }
}

fn serde_error(e: impl ToString) -> ClientError {
    ClientError::Serde(e.to_string())
}

fn js_error(e: JsValue) -> ClientError {
    let message = js_sys::Reflect::get(&e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_default();
    ClientError::Options(message)
}

impl Client {
    /// Connects (unless `start_closed`).
    ///
    /// # Errors
    /// [`ClientError::Options`] for options the reference would reject.
    pub fn new(options: Options) -> Result<Client, ClientError> {
        install();
        let object = serde_wasm_bindgen::to_value(&options).map_err(serde_error)?;
        let js = AgentClient::new(&object).map_err(js_error)?;
        let core = LAST.with(|l| l.borrow_mut().take());
        let core = core.ok_or_else(|| ClientError::Options("the client made no core".into()))?;
        Ok(Client { js, core })
    }

    /// The JavaScript object, for listeners and everything else.
    pub fn js(&self) -> &AgentClient {
        &self.js
    }

    /// Resolves once the server's identity (and the state after it) arrived.
    pub async fn ready(&self) {
        let _ = JsFuture::from(self.js.ready()).await;
    }

    /// Calls `method` with `args` (a tuple or a `Vec`, serialized as a JSON
    /// array) and deserializes its result.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] with the server's message, [`ClientError::Timeout`],
    /// [`ClientError::ConnectionClosed`], [`ClientError::QueueFull`], or
    /// [`ClientError::Serde`] when the arguments or the result do not convert.
    pub async fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        let args = args.serialize(&serializer).map_err(serde_error)?;
        if !js_sys::Array::is_array(&args) {
            return Err(ClientError::Serde(
                "call arguments must be a tuple or a sequence".into(),
            ));
        }
        let json = crate::js_value::json(&args, "call arguments must be JSON-serializable")?;
        let slot = Rc::new(CallSlot::default());
        let call = CallOptions {
            args: json,
            timeout: Timeout::Default,
            streaming: false,
            stream: JsValue::UNDEFINED,
        };
        let input = Input::Call(method.into(), call, Handle::Rust(slot.clone()));
        // A call only fails through its slot.
        let _ = run(&self.core, self.js.unchecked_ref::<Host>(), input);
        let value = CallFuture { slot }.await?;
        serde_wasm_bindgen::from_value(value).map_err(serde_error)
    }

    /// The agent's state, if any arrived (or was set).
    ///
    /// # Errors
    /// [`ClientError::Serde`] when it does not deserialize into `S`.
    pub fn state<S: DeserializeOwned>(&self) -> Result<Option<S>, ClientError> {
        let state = self.js.state();
        if state.is_undefined() {
            return Ok(None);
        }
        serde_wasm_bindgen::from_value(state)
            .map(Some)
            .map_err(serde_error)
    }

    /// Sends `state` as the agent's new state (taken locally at once).
    ///
    /// # Errors
    /// [`ClientError::Serde`] when it does not serialize;
    /// [`ClientError::QueueFull`].
    pub fn set_state<S: Serialize + ?Sized>(&self, state: &S) -> Result<(), ClientError> {
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        let value = state.serialize(&serializer).map_err(serde_error)?;
        self.js.set_state(&value).map_err(js_error)
    }

    /// Sends a text message (queued while disconnected); whether it went out now.
    ///
    /// # Errors
    /// [`ClientError::Options`] when the queue is full.
    pub fn send_text(&self, text: &str) -> Result<bool, ClientError> {
        self.js.send(&text.into()).map_err(js_error)
    }

    /// Sends a binary message (queued while disconnected).
    ///
    /// # Errors
    /// [`ClientError::Options`] when the queue is full.
    pub fn send_binary(&self, bytes: &[u8]) -> Result<bool, ClientError> {
        self.js
            .send(&js_sys::Uint8Array::from(bytes).into())
            .map_err(js_error)
    }

    /// Closes and stops reconnecting; pending calls fail with
    /// [`ClientError::ConnectionClosed`].
    pub fn close(&self) {
        self.js.close(None, None);
    }

    /// Reconnects now (also after [`close`](Self::close)).
    pub fn reconnect(&self) {
        self.js.reconnect(None, None);
    }

    /// 0 connecting, 1 open, 2 closing, 3 closed.
    pub fn ready_state(&self) -> u16 {
        self.js.ready_state()
    }

    /// Every message from now on that is not a protocol frame.
    pub fn messages(&self) -> Messages {
        self.js.set_binary_type("arraybuffer");
        let queue = Rc::new(RefCell::new(Queue::default()));
        let q = queue.clone();
        let listener =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                let protocol = js_sys::Reflect::get(&e, &"isProtocol".into());
                if protocol.is_ok_and(|p| p.is_truthy()) {
                    return;
                }
                let data = e.data();
                let message = match data.as_string() {
                    Some(text) => Message::Text(text),
                    None => Message::Binary(js_sys::Uint8Array::new(&data).to_vec()),
                };
                let mut q = q.borrow_mut();
                q.items.push_back(message);
                if let Some(w) = q.waker.take() {
                    w.wake();
                }
            });
        let _ = self
            .js
            .add_event_listener_with_callback("message", listener.as_ref().unchecked_ref());
        Messages {
            queue,
            target: self.js.clone(),
            listener,
        }
    }
}
