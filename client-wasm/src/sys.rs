//! Small bindings the client needs beyond `web-sys`: timers that cancel on
//! drop, and `EventTarget` calls that pass JavaScript options through.

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
