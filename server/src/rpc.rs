//! Callable methods: what a client's `call("method", args)` reaches.
//!
//! # Why a `match` and not a macro
//! An agent answers RPC in one hook, [`Agent::on_call`](crate::Agent::on_call),
//! by matching on the method name:
//!
//! ```
//! # use agents_server::{Agent, AgentContext, rpc::{Call, Reply, RpcError}};
//! # struct Counter { count: i64 }
//! # impl Agent for Counter {
//! # type State = ();
//! async fn on_call(&mut self, cx: &mut AgentContext<Self>, call: &mut Call) -> Result<Reply, RpcError> {
//!     match call.method() {
//!         "increment" => {
//!             let (by,): (i64,) = call.args()?;
//!             self.count += by;
//!             Reply::json(&self.count)
//!         }
//!         _ => Err(RpcError::NoSuchMethod),
//!     }
//! }
//! # }
//! ```
//!
//! The names clients call are plain strings you can grep for, arguments are
//! typed by the tuple you deserialize into (a mismatch becomes an error
//! reply, never a panic), `?` works on any error, and there is no generated
//! code to debug or to slow the build. Anything not matched is
//! "Method X does not exist"; the agent's own hooks (`onMessage`, …) are
//! refused as "not callable" before `on_call` runs, as in the reference.

use agents_protocol::{RawValue, RpcResponse, ServerMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
pub use crate::error::RpcError;

/// One RPC call being handled.
#[derive(Debug)]
pub struct Call {
    id: String,
    method: String,
    args: Box<RawValue>,
    conn: Connection,
}

impl Call {
    pub(crate) fn new(id: String, method: String, args: Box<RawValue>, conn: Connection) -> Self {
        Call {
            id,
            method,
            args,
            conn,
        }
    }

    /// The call's id and method, once it is answered.
    pub(crate) fn into_parts(self) -> (String, String) {
        (self.id, self.method)
    }

    /// The method name the client called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The call id chosen by the client.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The calling connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The arguments, deserialized into `T` — usually a tuple: `[2]` reads
    /// as `(i64,)`, `[]` as `()`.
    ///
    /// # Errors
    /// [`RpcError::InvalidArgs`] when they do not fit `T`.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        serde_json::from_str(self.args.get()).map_err(|err| {
            RpcError::InvalidArgs(format!("Invalid arguments for {}: {err}", self.method))
        })
    }

    /// The raw JSON `args` array.
    pub fn raw_args(&self) -> &RawValue {
        &self.args
    }

    /// Turns this into a streaming call: send chunks (`done:false`) with the
    /// returned [`CallStream`]; the method's [`Reply`] ends the stream.
    pub fn stream(&mut self) -> CallStream {
        CallStream {
            conn: self.conn.clone(),
            id: self.id.clone(),
        }
    }
}

/// Sends the chunks of a streaming call.
#[derive(Debug, Clone)]
pub struct CallStream {
    conn: Connection,
    id: String,
}

impl CallStream {
    /// Sends one chunk (`{"done":false,"result":chunk,…}`).
    pub fn send<T: Serialize + ?Sized>(&self, chunk: &T) -> Result<(), RpcError> {
        let result = serde_json::value::to_raw_value(chunk)?;
        let frame = RpcResponse::Success {
            id: self.id.clone(),
            result: Some(result),
            done: false,
        };
        self.conn.send(ServerMessage::Rpc(frame).to_json())?;
        Ok(())
    }
}

/// A method's successful result.
#[derive(Debug, Clone)]
pub struct Reply {
    result: Option<Box<RawValue>>,
}

impl Reply {
    /// The JSON result, `None` for JavaScript `undefined`.
    pub(crate) fn into_result(self) -> Option<Box<RawValue>> {
        self.result
    }

    /// Replies with `value` as JSON.
    ///
    /// # Errors
    /// [`RpcError::Failed`] when it does not serialize.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Reply, RpcError> {
        Ok(Reply {
            result: Some(serde_json::value::to_raw_value(value)?),
        })
    }

    /// Replies without a result (JavaScript `undefined`).
    pub fn none() -> Result<Reply, RpcError> {
        Ok(Reply { result: None })
    }
}
