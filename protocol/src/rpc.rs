//! RPC requests (client → server) and responses (server → client).

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// A call of an agent method: `{"type":"rpc","id","method","args":[…]}`.
#[derive(Debug, Clone)]
pub struct RpcRequest {
    /// Correlates the responses with this call; chosen by the client.
    pub id: String,
    /// Name of the callable method.
    pub method: String,
    /// The JSON `args` array, kept raw so the server can deserialize it
    /// straight into the method's typed parameters.
    pub args: Box<RawValue>,
}

impl RpcRequest {
    /// Builds a request; `args` must be a JSON array.
    pub fn new(id: impl Into<String>, method: impl Into<String>, args: Box<RawValue>) -> Self {
        RpcRequest {
            id: id.into(),
            method: method.into(),
            args,
        }
    }

    /// Deserializes `args` into `T`, typically a tuple of the parameters:
    /// `[2]` reads as `(i64,)`.
    pub fn args_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.args.get())
    }
}

/// A reply to an [`RpcRequest`], matched to it by `id`.
#[derive(Debug, Clone)]
pub enum RpcResponse {
    /// `{"type":"rpc","id","success":true,"done",["result"]}`. Streaming
    /// methods send `done:false` chunks and end with `done:true`.
    Success {
        /// The request's id.
        id: String,
        /// The value; `None` means the key is absent (JavaScript `undefined`).
        result: Option<Box<RawValue>>,
        /// `false` for a stream chunk, `true` for the final reply.
        done: bool,
    },
    /// `{"type":"rpc","id","success":false,"error"}`.
    Error {
        /// The request's id.
        id: String,
        /// What went wrong, e.g. `Method nope does not exist`.
        error: String,
    },
}

impl RpcResponse {
    /// The id of the request this answers.
    pub fn id(&self) -> &str {
        match self {
            RpcResponse::Success { id, .. } | RpcResponse::Error { id, .. } => id,
        }
    }

    /// The error reply for a method that does not exist.
    pub fn no_such_method(id: impl Into<String>, method: &str) -> Self {
        RpcResponse::Error {
            id: id.into(),
            error: no_such_method_error(method),
        }
    }

    /// The error reply for a method that exists but is not callable.
    pub fn not_callable(id: impl Into<String>, method: &str) -> Self {
        RpcResponse::Error {
            id: id.into(),
            error: format!("Method {method} is not callable"),
        }
    }
}

/// The error text for a call of a method that does not exist, as the
/// reference words it: `Method <m> does not exist`.
pub fn no_such_method_error(method: &str) -> String {
    format!("Method {method} does not exist")
}
