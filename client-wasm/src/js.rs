//! The JavaScript surface: `AgentClient` as `agents/client` exports it. Only
//! translates between JS values and [`Client`]; no logic of its own.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use js_sys::{Array, Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, Event};

use crate::client::{Callbacks, Client, ClientOptions, Query, DEFAULT_CALL_TIMEOUT};
use crate::error::ClientError;
use crate::reconnect::ReconnectOptions;
use crate::sys::get;
use crate::text::decimal;
use crate::url::Address;

#[wasm_bindgen(typescript_custom_section)]
const TS: &'static str = include_str!("types.d.ts");

impl From<ClientError> for JsValue {
    fn from(err: ClientError) -> JsValue {
        js_sys::Error::new(&err.message()).into()
    }
}

/// A reconnecting WebSocket to one agent instance, wire-compatible with
/// `agents/client`'s `AgentClient`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct AgentClient {
    client: Client,
}

fn string_opt(options: &JsValue, key: &str) -> Result<Option<String>, ClientError> {
    let v = get(options, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| ClientError::Options(key.to_owned() + " must be a string"))
}

fn number_opt(options: &JsValue, key: &str, default: f64, min: u8) -> Result<f64, ClientError> {
    let v = get(options, key);
    if v.is_undefined() || v.is_null() {
        return Ok(default);
    }
    match v.as_f64() {
        Some(n) if n >= f64::from(min) && !n.is_nan() => Ok(n),
        _ => Err(ClientError::Options(
            key.to_owned() + " must be a number >= " + &decimal(min.into()),
        )),
    }
}

fn function_opt(options: &JsValue, key: &str) -> Result<Option<Function>, ClientError> {
    let v = get(options, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into::<Function>()
        .map(Some)
        .map_err(|_| ClientError::Options(key.to_owned() + " must be a function"))
}

fn parse_options(options: &JsValue) -> Result<ClientOptions, ClientError> {
    if !options.is_object() {
        return Err(ClientError::Options(
            "AgentClient needs an options object".into(),
        ));
    }
    let host = match string_opt(options, "host")? {
        Some(h) => h,
        None => get(&get(&js_sys::global(), "location"), "host")
            .as_string()
            .unwrap_or_default(),
    };
    let address = Address {
        agent: string_opt(options, "agent")?.unwrap_or_default(),
        name: string_opt(options, "name")?.unwrap_or_else(|| "default".into()),
        host,
        base_path: string_opt(options, "basePath")?,
        prefix: string_opt(options, "prefix")?,
        path: string_opt(options, "path")?,
        protocol: string_opt(options, "protocol")?,
    };
    let query = get(options, "query");
    let query = if query.is_function() {
        Query::Dynamic(query.unchecked_into())
    } else if query.is_undefined() || query.is_null() {
        Query::Static(Vec::new())
    } else if query.is_object() {
        Query::Static(crate::client::query_pairs(&query))
    } else {
        return Err(ClientError::Options(
            "query must be an object or a function".into(),
        ));
    };
    let protocols = get(options, "protocols");
    if !(protocols.is_undefined()
        || protocols.is_null()
        || protocols.is_string()
        || Array::is_array(&protocols))
    {
        return Err(ClientError::Options(
            "protocols must be a string or an array of strings".into(),
        ));
    }
    let protocols = if protocols.is_string() {
        Array::of1(&protocols).into()
    } else {
        protocols
    };
    let d = ReconnectOptions::default();
    let reconnect = ReconnectOptions {
        min_reconnection_delay: number_opt(
            options,
            "minReconnectionDelay",
            d.min_reconnection_delay,
            0,
        )?,
        max_reconnection_delay: number_opt(
            options,
            "maxReconnectionDelay",
            d.max_reconnection_delay,
            0,
        )?,
        reconnection_delay_grow_factor: number_opt(
            options,
            "reconnectionDelayGrowFactor",
            d.reconnection_delay_grow_factor,
            1,
        )?,
        min_uptime: number_opt(options, "minUptime", d.min_uptime, 0)?,
        connection_timeout: number_opt(options, "connectionTimeout", d.connection_timeout, 0)?,
        max_retries: number_opt(options, "maxRetries", d.max_retries, 0)?,
    };
    let max_enqueued = number_opt(options, "maxEnqueuedMessages", f64::INFINITY, 0)?;
    let start_closed = get(options, "startClosed");
    if !(start_closed.is_undefined() || start_closed.as_bool().is_some()) {
        return Err(ClientError::Options("startClosed must be a boolean".into()));
    }
    Ok(ClientOptions {
        address,
        query,
        id: string_opt(options, "id")?,
        protocols,
        reconnect,
        max_enqueued_messages: if max_enqueued.is_finite() {
            max_enqueued as usize
        } else {
            usize::MAX
        },
        start_closed: start_closed == JsValue::TRUE,
        default_call_timeout: number_opt(options, "defaultCallTimeout", DEFAULT_CALL_TIMEOUT, 0)?,
        callbacks: Callbacks {
            on_state_update: function_opt(options, "onStateUpdate")?,
            on_state_update_error: function_opt(options, "onStateUpdateError")?,
            on_identity: function_opt(options, "onIdentity")?,
            on_identity_change: function_opt(options, "onIdentityChange")?,
            on_connection_error: function_opt(options, "onConnectionError")?,
            on_mcp_update: function_opt(options, "onMcpUpdate")?,
        },
    })
}

#[wasm_bindgen]
impl AgentClient {
    /// Creates the client and starts connecting (unless `startClosed`).
    /// Throws on bad options.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "AgentClientOptions")] options: JsValue,
    ) -> Result<AgentClient, JsValue> {
        let client = Client::new(parse_options(&options)?)?;
        Ok(AgentClient { client })
    }

    /// `addEventListener(type, listener, options)` for `open`, `message`,
    /// `close` and `error`.
    #[wasm_bindgen(js_name = addEventListener)]
    pub fn add_event_listener(
        &self,
        #[wasm_bindgen(unchecked_param_type = "\"open\" | \"message\" | \"close\" | \"error\"")] ty: &str,
        #[wasm_bindgen(unchecked_param_type = "EventListenerOrEventListenerObject | null")]
        listener: &JsValue,
        #[wasm_bindgen(unchecked_param_type = "boolean | AddEventListenerOptions")] options: Option<
            JsValue,
        >,
    ) {
        self.client
            .target()
            .add_listener(ty, listener, &options.unwrap_or(JsValue::UNDEFINED));
    }

    /// `removeEventListener(type, listener, options)`.
    #[wasm_bindgen(js_name = removeEventListener)]
    pub fn remove_event_listener(
        &self,
        ty: &str,
        #[wasm_bindgen(unchecked_param_type = "EventListenerOrEventListenerObject | null")]
        listener: &JsValue,
        #[wasm_bindgen(unchecked_param_type = "boolean | EventListenerOptions")] options: Option<
            JsValue,
        >,
    ) {
        self.client
            .target()
            .remove_listener(ty, listener, &options.unwrap_or(JsValue::UNDEFINED));
    }

    /// Dispatches `event` to the listeners.
    #[wasm_bindgen(js_name = dispatchEvent)]
    pub fn dispatch_event(&self, event: &Event) -> bool {
        self.client.target().dispatch(event)
    }

    /// Sends (or queues while disconnected) a string, `ArrayBuffer`,
    /// `ArrayBufferView` or `Blob`. Returns `true` when it went out now.
    /// Throws when the queue is full.
    pub fn send(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | ArrayBufferLike | ArrayBufferView | Blob")]
        data: JsValue,
    ) -> Result<bool, JsValue> {
        Ok(self.client.send(data)?)
    }

    /// Closes and stops reconnecting; pending calls reject with
    /// `Connection closed`. Code defaults to 1000.
    pub fn close(&self, code: Option<u16>, reason: Option<String>) {
        self.client
            .close(code.unwrap_or(1000), reason.as_deref().unwrap_or(""));
    }

    /// Reconnects now (also after `close()` or a terminal close).
    pub fn reconnect(&self, code: Option<u16>, reason: Option<String>) {
        self.client
            .reconnect(code.unwrap_or(1000), reason.as_deref().unwrap_or(""));
    }

    /// Calls a callable method; resolves with its result. Options:
    /// `{ timeout?: number, stream?: { onChunk, onDone, onError } }` (or the
    /// legacy `{ onChunk, onDone, onError }`).
    #[wasm_bindgen(unchecked_return_type = "Promise<any>")]
    pub fn call(
        &self,
        method: &str,
        #[wasm_bindgen(unchecked_param_type = "unknown[]")] args: Option<Array>,
        #[wasm_bindgen(unchecked_param_type = "CallOptions")] options: Option<JsValue>,
    ) -> Result<Promise, JsValue> {
        let options = &options.unwrap_or(JsValue::UNDEFINED);
        let args = args.unwrap_or_default();
        let stream_obj = get(options, "stream");
        let legacy = ["onChunk", "onDone", "onError"]
            .iter()
            .any(|k| !get(options, k).is_undefined());
        let source = if legacy { options.clone() } else { stream_obj };
        let callbacks = [
            function_opt(&source, "onChunk")?,
            function_opt(&source, "onDone")?,
            function_opt(&source, "onError")?,
        ];
        let streaming = callbacks.iter().any(Option::is_some);
        let timeout = get(options, "timeout");
        let timeout_ms = match timeout.as_f64() {
            Some(ms) if ms >= 0.0 => ms,
            Some(_) => return Err(ClientError::Options("timeout must be >= 0".into()).into()),
            None if streaming => 0.0,
            None => self.client.default_call_timeout(),
        };
        Ok(self.client.call(method, &args, timeout_ms, callbacks))
    }

    /// Sends `cf_agent_state` and updates `state` at once.
    #[wasm_bindgen(js_name = setState)]
    pub fn set_state(&self, state: JsValue) -> Result<(), JsValue> {
        Ok(self.client.set_state(state)?)
    }

    /// The last state from the server or `setState` (`undefined` before any).
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> JsValue {
        self.client.state()
    }

    /// Resolves when the identity (and the state that follows it) arrived.
    #[wasm_bindgen(getter, unchecked_return_type = "Promise<void>")]
    pub fn ready(&self) -> Promise {
        self.client.ready()
    }

    /// Whether the server's identity has been received on this socket.
    #[wasm_bindgen(getter)]
    pub fn identified(&self) -> bool {
        self.client.identified()
    }

    /// The agent's kebab-case name (the server's, once identified).
    #[wasm_bindgen(getter)]
    pub fn agent(&self) -> String {
        self.client.agent()
    }

    /// The instance name (the server's, once identified).
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.client.name()
    }

    /// The connection id sent as `_pk`; kept across reconnects.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> String {
        self.client.id()
    }

    /// The live socket's URL, or `""`.
    #[wasm_bindgen(getter)]
    pub fn url(&self) -> String {
        self.client.url()
    }

    /// The live socket's selected subprotocol, or `""`.
    #[wasm_bindgen(getter)]
    pub fn protocol(&self) -> String {
        self.client.protocol()
    }

    /// 0 connecting, 1 open, 2 closing, 3 closed.
    #[wasm_bindgen(getter, js_name = readyState)]
    pub fn ready_state(&self) -> u16 {
        self.client.ready_state()
    }

    /// Bytes queued while disconnected plus the socket's buffer.
    #[wasm_bindgen(getter, js_name = bufferedAmount)]
    pub fn buffered_amount(&self) -> f64 {
        self.client.buffered_amount()
    }

    /// Retries since the last stable connection.
    #[wasm_bindgen(getter, js_name = retryCount)]
    pub fn retry_count(&self) -> u32 {
        self.client.retry_count()
    }

    /// Whether automatic reconnection is on.
    #[wasm_bindgen(getter, js_name = shouldReconnect)]
    pub fn should_reconnect(&self) -> bool {
        self.client.should_reconnect()
    }

    /// The terminal close (code 1008 or 4000–4999) or retry exhaustion as an
    /// `AgentConnectionError` (`code`, `reason`, `wasClean`), else `null`.
    #[wasm_bindgen(getter, js_name = connectionError, unchecked_return_type = "AgentConnectionError | null")]
    pub fn connection_error(&self) -> JsValue {
        self.client.connection_error()
    }

    /// `"blob"` (default) or `"arraybuffer"`.
    #[wasm_bindgen(getter, js_name = binaryType)]
    pub fn binary_type(&self) -> BinaryType {
        self.client.binary_type()
    }

    /// Sets the binary type (kept across reconnects).
    #[wasm_bindgen(setter, js_name = binaryType)]
    pub fn set_binary_type(&self, binary_type: BinaryType) {
        self.client.set_binary_type(binary_type);
    }

    /// `onopen` handler property.
    #[wasm_bindgen(getter)]
    pub fn onopen(&self) -> Option<Function> {
        self.client.handler("open")
    }
    /// Sets `onopen`.
    #[wasm_bindgen(setter)]
    pub fn set_onopen(&self, f: Option<Function>) {
        self.client.set_handler("open", f);
    }
    /// `onmessage` handler property.
    #[wasm_bindgen(getter)]
    pub fn onmessage(&self) -> Option<Function> {
        self.client.handler("message")
    }
    /// Sets `onmessage`.
    #[wasm_bindgen(setter)]
    pub fn set_onmessage(&self, f: Option<Function>) {
        self.client.set_handler("message", f);
    }
    /// `onclose` handler property.
    #[wasm_bindgen(getter)]
    pub fn onclose(&self) -> Option<Function> {
        self.client.handler("close")
    }
    /// Sets `onclose`.
    #[wasm_bindgen(setter)]
    pub fn set_onclose(&self, f: Option<Function>) {
        self.client.set_handler("close", f);
    }
    /// `onerror` handler property.
    #[wasm_bindgen(getter)]
    pub fn onerror(&self) -> Option<Function> {
        self.client.handler("error")
    }
    /// Sets `onerror`.
    #[wasm_bindgen(setter)]
    pub fn set_onerror(&self, f: Option<Function>) {
        self.client.set_handler("error", f);
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.client.close(1000, "client dropped");
    }
}
