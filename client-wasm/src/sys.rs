//! Small bindings the client needs beyond `web-sys`: timers that cancel on
//! drop, `EventTarget` calls that pass JavaScript options through, and the
//! per-message helpers ([`field`], [`Keys`]) that avoid string conversions.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &js_sys::Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);

    /// A DOM `EventTarget`, with options passed through verbatim.
    #[wasm_bindgen(js_name = EventTarget)]
    #[derive(Clone, Debug)]
    pub(crate) type Target;
    #[wasm_bindgen(constructor, js_class = "EventTarget")]
    pub(crate) fn new() -> Target;
    /// `target.addEventListener(type, listener, options)`.
    #[wasm_bindgen(method, js_class = "EventTarget", js_name = addEventListener)]
    pub(crate) fn add_listener(this: &Target, ty: &str, f: &JsValue, options: &JsValue);
    /// `target.removeEventListener(type, listener, options)`.
    #[wasm_bindgen(method, js_class = "EventTarget", js_name = removeEventListener)]
    pub(crate) fn remove_listener(this: &Target, ty: &str, f: &JsValue, options: &JsValue);
    /// `JSON.parse(text)` on a JS string, without copying it into wasm memory.
    #[wasm_bindgen(catch, js_namespace = JSON, js_name = parse)]
    pub(crate) fn json_parse(text: &JsValue) -> Result<JsValue, JsValue>;

    /// An object whose properties are plain data (see [`field`]).
    type Plain;
    #[wasm_bindgen(method, structural, indexing_getter)]
    fn field(this: &Plain, key: &JsValue) -> JsValue;

    /// A `WebSocket`, for a `send` that takes any JS value.
    #[wasm_bindgen(js_name = WebSocket)]
    pub(crate) type AnySend;
    /// `socket.send(data)` with `data` passed through as a JS value.
    #[wasm_bindgen(method, catch, js_class = "WebSocket")]
    pub(crate) fn send(this: &AnySend, data: &JsValue) -> Result<(), JsValue>;

    /// A `MessageEvent` built with the type as a JS string (web-sys takes
    /// `&str`, which costs a UTF-8 decode per message).
    #[wasm_bindgen(extends = web_sys::Event, js_name = MessageEvent)]
    pub(crate) type NewMessageEvent;
    /// `new MessageEvent(type, init)`.
    #[wasm_bindgen(constructor, js_class = "MessageEvent")]
    pub(crate) fn new(ty: &JsValue, init: &JsValue) -> NewMessageEvent;

    /// `target.dispatchEvent(event)`.
    #[wasm_bindgen(method, js_class = "EventTarget", js_name = dispatchEvent)]
    pub(crate) fn dispatch(this: &Target, event: &web_sys::Event) -> bool;
}

/// A `setTimeout` that is cleared when dropped; the callback runs at most once.
#[must_use = "a Timeout is cancelled when dropped"]
pub(crate) struct Timeout {
    id: JsValue,
    _closure: Closure<dyn FnMut()>,
}

impl Timeout {
    pub(crate) fn new(ms: f64, f: impl FnOnce() + 'static) -> Timeout {
        let mut f = Some(f);
        let closure = Closure::<dyn FnMut()>::new(move || {
            if let Some(f) = f.take() {
                f();
            }
        });
        let id = set_timeout(
            closure.as_ref().unchecked_ref(),
            ms.clamp(0.0, 2_147_483_647.0),
        );
        Timeout {
            id,
            _closure: closure,
        }
    }
}

impl Drop for Timeout {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

/// An event listener on a target, removed when dropped.
pub(crate) struct Listener {
    target: Target,
    ty: &'static str,
    closure: Closure<dyn FnMut(JsValue)>,
}

impl Listener {
    pub(crate) fn new(
        target: Target,
        ty: &'static str,
        f: impl FnMut(JsValue) + 'static,
    ) -> Listener {
        let closure = Closure::<dyn FnMut(JsValue)>::new(f);
        target.add_listener(ty, closure.as_ref(), &JsValue::UNDEFINED);
        Listener {
            target,
            ty,
            closure,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.target
            .remove_listener(self.ty, self.closure.as_ref(), &JsValue::UNDEFINED);
    }
}

/// Reads `obj[key]` (undefined when missing or not an object).
pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() && !obj.is_function() {
        return JsValue::UNDEFINED;
    }
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// Sets `obj[key] = value`.
pub(crate) fn set(obj: &JsValue, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(obj, &JsValue::from_str(key), value);
}

/// `obj[key]` for a key that is already a JS string, on an object the client
/// made or got from the browser (a parsed frame, a socket event): one plain
/// property read in JavaScript, no string decoding, no exception handling.
/// For the per-message path; [`get`] is for objects from the user.
pub(crate) fn field(obj: &JsValue, key: &JsValue) -> JsValue {
    obj.unchecked_ref::<Plain>().field(key)
}

/// The property names and strings the per-message path uses, created once
/// per client as JS strings.
pub(crate) struct Keys {
    pub(crate) data: JsValue,
    pub(crate) message: JsValue,
    pub(crate) ty: JsValue,
    pub(crate) rpc: JsValue,
    pub(crate) id: JsValue,
    pub(crate) success: JsValue,
    pub(crate) done: JsValue,
    pub(crate) result: JsValue,
    /// The init dictionary of every `message` event (read at construction,
    /// so one object serves them all).
    pub(crate) message_init: web_sys::MessageEventInit,
}

impl Keys {
    pub(crate) fn new() -> Keys {
        Keys {
            data: "data".into(),
            message: "message".into(),
            ty: "type".into(),
            rpc: agents_protocol::frame_type::RPC.into(),
            id: "id".into(),
            success: "success".into(),
            done: "done".into(),
            result: "result".into(),
            message_init: web_sys::MessageEventInit::new(),
        }
    }
}
