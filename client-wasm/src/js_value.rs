//! Reading JavaScript values for the pure modules: the options object into
//! [`Raw`] values, a message into a sorted [`ServerFrame`] (through the
//! protocol crate's rule), `call()`'s options. Reads only; decides nothing.

use alloc::string::String;
use alloc::vec::Vec;

use agents_protocol::frame::{classify, FrameFields, FrameType, ServerFrame};
use js_sys::{Array, JsString, Object};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::error::ClientError;
use crate::machine::Timeout;
use crate::options::{self, ClientOptions, Raw};

#[wasm_bindgen]
extern "C" {
    /// `JSON.parse(text)` on a JS string, without copying it into wasm memory.
    #[wasm_bindgen(catch, js_namespace = JSON, js_name = parse)]
    fn json_parse(text: &JsValue) -> Result<JsValue, JsValue>;
    /// `JSON.stringify(value)`.
    #[wasm_bindgen(catch, js_namespace = JSON, js_name = stringify)]
    fn json_stringify(value: &JsValue) -> Result<JsValue, JsValue>;
    /// `String(value)`, as `URLSearchParams` converts values.
    #[wasm_bindgen(js_name = String)]
    fn to_string(value: &JsValue) -> String;
    /// An object read with plain property access (see [`field`]).
    type Plain;
    #[wasm_bindgen(method, structural, indexing_getter)]
    fn field(this: &Plain, key: &JsValue) -> JsValue;
}

/// `obj[key]`: one property read, for objects the client got from the
/// browser (a parsed frame) or from the user.
fn field(obj: &JsValue, key: &JsValue) -> JsValue {
    obj.unchecked_ref::<Plain>().field(key)
}

/// `obj[key]` for a key given as Rust text; `undefined` for non-objects.
pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() && !obj.is_function() {
        return JsValue::UNDEFINED;
    }
    field(obj, &key.into())
}

fn raw(v: JsValue) -> Raw<JsValue> {
    if v.is_undefined() || v.is_null() {
        Raw::Missing
    } else if let Some(s) = v.as_string() {
        Raw::Str(s)
    } else if let Some(n) = v.as_f64() {
        Raw::Num(n)
    } else if let Some(b) = v.as_bool() {
        Raw::Bool(b)
    } else if v.is_function() {
        Raw::Func(v)
    } else if Array::is_array(&v) {
        Raw::Array(v)
    } else if v.is_object() {
        Raw::Object(v)
    } else {
        Raw::Other
    }
}

/// Reads and validates the constructor options; the `host` option
/// defaults to `host` (the page's `location.host`).
pub(crate) fn options(o: &JsValue, host: JsValue) -> Result<ClientOptions<JsValue>, ClientError> {
    if !o.is_object() {
        return Err(ClientError::Options(
            "AgentClient needs an options object".into(),
        ));
    }
    let mut host = Some(host);
    let mut read = |key: &'static str| match raw(get(o, key)) {
        Raw::Missing if key == "host" => raw(host.take().unwrap_or(JsValue::UNDEFINED)),
        value => value,
    };
    options::parse(&mut read, pairs)
}

/// Query pairs from an object, as `URLSearchParams` takes them: `null` and
/// `undefined` values skipped, others converted with `String()`.
pub(crate) fn pairs(obj: &JsValue) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if !obj.is_object() {
        return pairs;
    }
    let entries = Object::entries(obj.unchecked_ref());
    // Every entry is a `[key, value]` array: the first `undefined` is the end.
    for at in 0.. {
        let pair: Array = entries.get(at).unchecked_into();
        if pair.is_undefined() {
            break;
        }
        let value = pair.get(1);
        if !(value.is_null() || value.is_undefined()) {
            pairs.push((to_string(&pair.get(0)), to_string(&value)));
        }
    }
    pairs
}

/// `JSON.stringify(value)`, or `error` when it throws or gives nothing.
pub(crate) fn json(value: &JsValue, error: &str) -> Result<String, ClientError> {
    json_stringify(value)
        .ok()
        .and_then(|s| s.as_string())
        .ok_or_else(|| ClientError::Options(error.into()))
}

/// What a message adds to `bufferedAmount` while queued: UTF-16 units of a
/// string, `byteLength` of buffers, `size` of a Blob.
///
/// # Errors
/// For anything `WebSocket.send` does not take.
pub(crate) fn size(data: &JsValue, keys: &Keys) -> Result<f64, ClientError> {
    let key = if data.is_string() {
        "length"
    } else if data.is_instance_of::<js_sys::ArrayBuffer>() || js_sys::ArrayBuffer::is_view(data) {
        "byteLength"
    } else if data.is_instance_of::<web_sys::Blob>() {
        "size"
    } else {
        ""
    };
    if !key.is_empty() {
        return Ok(field(data, keys.key(key)).as_f64().unwrap_or(0.0));
    }
    let error = "send() takes a string, ArrayBuffer, ArrayBufferView or Blob";
    Err(ClientError::Options(error.into()))
}

/// The code of `close(code)`/`reconnect(code)`: 1000 when absent, else
/// what `WebSocket.close` takes.
///
/// # Errors
/// For other codes (the browser would throw `InvalidAccessError`).
pub(crate) fn close_code(code: &JsValue) -> Result<u16, ClientError> {
    match code.as_f64() {
        None if code.is_undefined() => Ok(1000),
        Some(c) if c == 1000.0 || (3000.0..=4999.0).contains(&c) && c == f64::from(c as u16) => {
            Ok(c as u16)
        }
        _ => Err(ClientError::Options(
            "close code must be 1000 or 3000-4999".into(),
        )),
    }
}

/// `call()`'s arguments and options, read.
pub(crate) struct CallOptions {
    /// The arguments' JSON text.
    pub(crate) args: String,
    /// The `timeout` option.
    pub(crate) timeout: Timeout,
    /// Whether stream callbacks were given.
    pub(crate) streaming: bool,
    /// The object holding them (`options.stream`, or `options` itself in
    /// the legacy shape), or `undefined`.
    pub(crate) stream: JsValue,
}

/// Reads `call(method, args = [], options)`: `{ timeout?, stream? }` or the
/// legacy `{ onChunk?, onDone?, onError? }` (any of the keys present).
pub(crate) fn call_options(args: &JsValue, options: &JsValue) -> Result<CallOptions, ClientError> {
    let args = if args.is_undefined() {
        "[]".into()
    } else {
        json(args, "call arguments must be JSON-serializable")?
    };
    let legacy = options.is_object()
        && ["onChunk", "onDone", "onError"]
            .iter()
            .any(|k| js_sys::Reflect::has(options, &(*k).into()) == Ok(true));
    let stream = if legacy {
        options.clone()
    } else {
        get(options, "stream")
    };
    let timeout = match raw(get(options, "timeout")) {
        Raw::Missing => Timeout::Default,
        Raw::Num(ms) if ms >= 0.0 => Timeout::Ms(ms),
        _ => return Err(ClientError::Options("timeout must be a number >= 0".into())),
    };
    Ok(CallOptions {
        args,
        timeout,
        streaming: stream.is_truthy(),
        stream,
    })
}

/// The keys and names the per-message path reads, made once per client as
/// JavaScript strings (a key made from Rust text costs a UTF-8 decode).
pub(crate) struct Keys {
    ty: JsValue,
    rpc: JsValue,
    /// `{ "cf_agent_identity": 0, … }`: each type's index in [`FrameType::ALL`].
    types: JsValue,
    names: [JsValue; 13],
}

const NAMES: [&str; 13] = [
    "state",
    "id",
    "name",
    "agent",
    "stateFollows",
    "error",
    "mcp",
    "success",
    "done",
    "result",
    "length",
    "byteLength",
    "size",
];

impl Keys {
    pub(crate) fn new() -> Keys {
        let mut types = String::from("{");
        for (i, t) in FrameType::ALL.iter().enumerate() {
            if i > 0 {
                types.push(',');
            }
            crate::machine::push_json_string(&mut types, t.name());
            types.push(':');
            crate::text::push_decimal(&mut types, i as u64);
        }
        types.push('}');
        Keys {
            ty: "type".into(),
            rpc: FrameType::Rpc.name().into(),
            types: json_parse(&types.into()).unwrap_or(JsValue::UNDEFINED),
            names: NAMES.map(JsValue::from),
        }
    }

    fn key(&self, name: &str) -> &JsValue {
        let at = NAMES.iter().position(|n| *n == name).unwrap_or(0);
        &self.names[at]
    }
}

/// Longest string [`text`] reads a code unit at a time.
const SHORT_TEXT: u32 = 64;

/// A frame's string (a call id, a name) as Rust text. Short ASCII strings
/// are read a code unit at a time with `charCodeAt`: `as_string()` goes
/// through the glue's `TextEncoder.encode`, which allocates an
/// `ArrayBuffer` per string (in Chromium 10+ µs for a call id, most of the
/// client's own cost per stream chunk). Longer or non-ASCII strings take
/// that path.
fn text(value: &JsValue) -> Option<String> {
    let s = value.dyn_ref::<JsString>()?;
    let mut out = String::new();
    for at in 0..SHORT_TEXT {
        let unit = s.char_code_at(at);
        if unit.is_nan() {
            return Some(out); // the end
        }
        if unit >= 128.0 {
            break;
        }
        out.push(char::from(unit as u8));
    }
    value.as_string()
}

/// A parsed frame as the protocol crate's rule reads it.
struct JsFrame<'a> {
    obj: JsValue,
    keys: &'a Keys,
}

impl JsFrame<'_> {
    #[inline(never)]
    fn at(&self, key: &'static str) -> JsValue {
        field(&self.obj, self.keys.key(key))
    }
}

// Each read is its own function: inlined at every use in `classify` they
// cost kilobytes of WebAssembly.
impl FrameFields for JsFrame<'_> {
    type Value = JsValue;
    type Str = String;

    #[inline(never)]
    fn frame_type(&self) -> Option<FrameType> {
        let ty = field(&self.obj, &self.keys.ty);
        // The frequent case first (call results and stream chunks).
        if ty == self.keys.rpc {
            return Some(FrameType::Rpc);
        }
        // Only a string names a type (a property read would convert others,
        // `["rpc"]` to `"rpc"`); inherited properties are no numbers.
        if !ty.is_string() {
            return None;
        }
        let at = field(&self.keys.types, &ty).as_f64()?;
        FrameType::ALL.get(at as usize).copied()
    }
    #[inline(never)]
    fn value(&self, key: &'static str) -> Option<JsValue> {
        Some(self.at(key)).filter(|v| !v.is_undefined())
    }
    #[inline(never)]
    fn string(&self, key: &'static str) -> Option<String> {
        text(&self.at(key))
    }
    #[inline(never)]
    fn truthy(&self, value: &JsValue) -> bool {
        value.is_truthy()
    }
    #[inline(never)]
    fn is_true(&self, key: &'static str) -> bool {
        self.at(key).as_bool() == Some(true)
    }
    #[inline(never)]
    fn is_object(&self, key: &'static str) -> bool {
        let v = self.at(key);
        v.is_object() && !Array::is_array(&v)
    }
}

/// Sorts a message: text that parses as a JSON object goes through the
/// rule, everything else is the user's. The text stays a JavaScript string.
pub(crate) fn frame(data: &JsValue, keys: &Keys) -> ServerFrame<String, JsValue> {
    let Some(text) = data.dyn_ref::<JsString>() else {
        return ServerFrame::User;
    };
    // `{`, or JSON whitespace before it (NaN for "", no separate check).
    let first = text.char_code_at(0);
    if !(first == 123.0 || first == 32.0 || first == 9.0 || first == 10.0 || first == 13.0) {
        return ServerFrame::User;
    }
    match json_parse(data) {
        // Text that starts with `{` parses to an object or not at all.
        Ok(obj) if first == 123.0 || obj.is_object() => classify(&JsFrame { obj, keys }),
        _ => ServerFrame::User,
    }
}

/// The sorting of `text` as the browser client does it (for tests that
/// compare it with the protocol crate's decoder).
#[doc(hidden)]
pub fn sort_frame(text: &str) -> ServerFrame<String, JsValue> {
    frame(&JsValue::from(text), &Keys::new())
}
