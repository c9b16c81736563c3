//! The [`Agent`] trait: what a Rust developer implements.
//!
//! # Lifecycle
//! Each named instance (`/agents/<kebab-agent>/<name>`) is one actor task
//! that owns one value of your type, created by the factory you registered
//! on first use. Every hook runs on that task, **one at a time, in arrival
//! order** — the single-threaded guarantee a Durable Object gives — so hooks
//! take `&mut self` and need no locks.
//!
//! For an instance:
//! 1. [`initial_state`](Agent::initial_state), then [`on_start`](Agent::on_start), once, before any event.
//! 2. Per connection: [`connection_tags`](Agent::connection_tags),
//!    [`should_connection_be_readonly`](Agent::should_connection_be_readonly),
//!    [`should_send_protocol_messages`](Agent::should_send_protocol_messages);
//!    then the protocol frames (identity, state, MCP) are sent; then
//!    [`on_connect`](Agent::on_connect).
//! 3. Then any number of [`on_message`](Agent::on_message) (protocol frames
//!    are handled by the framework and never reach it), RPC calls
//!    ([`on_call`](Agent::on_call)), state updates
//!    ([`validate_state_change`](Agent::validate_state_change) then
//!    [`on_state_update`](Agent::on_state_update)) and [`on_request`](Agent::on_request).
//! 4. [`on_close`](Agent::on_close) once per connection that completed `on_connect`;
//!    the framework then answers a client's close with the same code and reason.
//! 5. After [`idle_timeout`](crate::AgentServer::idle_timeout) without connections the
//!    instance is dropped; the next use creates a fresh one.
//!
//! A hook that returns an error or panics never takes down the instance: a
//! failure in `on_connect` sends `{"error":"…"}` and closes that socket with
//! 1011; a failure anywhere else is logged and passed to
//! [`on_error`](Agent::on_error), and the connection stays open.
//!
//! # Why this shape
//! The hooks mirror the reference's `Agent` class so code ports over, but
//! they get the agent-wide [`AgentContext`] (broadcast, connections, state)
//! as an explicit argument instead of `this`, and the connection as a cheap
//! [`Connection`] handle. Hooks are `async` and return
//! `impl Future + Send` so an `async fn` in your `impl` just works, with no
//! boxing and no macro.

use std::future::Future;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::context::{AgentContext, ConnectContext, StateSource};
use crate::error::{BoxError, HookError};
use crate::log::Trunc;
use crate::message::Message;
use crate::rpc::{Call, Reply, RpcError};

/// An agent type. Implement the hooks you need; all have no-op defaults.
///
/// ```no_run
/// use agents_server::{Agent, AgentContext, AgentServer, BoxError, Connection, Message};
///
/// #[derive(Default)]
/// struct Echo;
///
/// impl Agent for Echo {
///     type State = serde_json::Value;
///
///     async fn on_message(
///         &mut self,
///         _cx: &mut AgentContext<Self>,
///         conn: &Connection,
///         message: Message,
///     ) -> Result<(), BoxError> {
///         conn.send(message)?;
///         Ok(())
///     }
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
/// AgentServer::new()
///     .agent("Echo", |_name| Echo)
///     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
pub trait Agent: Send + Sized + 'static {
    /// The agent's state, synced to every client as `cf_agent_state`. Use
    /// `serde_json::Value` for untyped state. Client updates that do not
    /// deserialize into it are rejected with `cf_agent_state_error`.
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The state a new instance starts with; `None` (the default) means "no
    /// state", and then no `cf_agent_state` frame is sent on connect.
    fn initial_state(&self) -> Option<Self::State> {
        None
    }

    /// Turns a stored state into the current `State` type, when an instance
    /// starts with state on disk — the place to migrate state stored by an
    /// older version of your agent (renamed fields, new shapes). The default
    /// decodes it as is.
    ///
    /// Stored state is never deleted or overwritten because it does not
    /// fit: on an error, the instance does not start (its sockets are closed
    /// with 1011 and the reason, plain HTTP gets 500) and the row stays as it
    /// is until a version of the agent that can read it runs.
    ///
    /// ```
    /// # use agents_server::{Agent, BoxError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Counter { count: i64 }
    /// # struct A;
    /// # impl Agent for A {
    /// # type State = Counter;
    /// fn upgrade_state(&self, stored: serde_json::Value) -> Result<Counter, BoxError> {
    ///     // Version 1 stored `{"cnt": n}`.
    ///     if let Some(n) = stored.get("cnt").and_then(|n| n.as_i64()) {
    ///         return Ok(Counter { count: n });
    ///     }
    ///     Ok(serde_json::from_value(stored)?)
    /// }
    /// # }
    /// ```
    fn upgrade_state(&self, stored: serde_json::Value) -> Result<Self::State, BoxError> {
        Ok(serde_json::from_value(stored)?)
    }

    /// Runs once when the instance starts, before any connection or request.
    fn on_start(
        &mut self,
        cx: &mut AgentContext<Self>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// Extra tags for a new connection (the id is always the first tag). At
    /// most [`MAX_TAGS`](crate::MAX_TAGS) including the id, each non-empty and
    /// at most [`MAX_TAG_LEN`](crate::MAX_TAG_LEN) characters; otherwise the
    /// connection fails like a failing `on_connect`.
    fn connection_tags(&self, conn: &Connection, ctx: &ConnectContext) -> Vec<String> {
        let _ = (conn, ctx);
        Vec::new()
    }

    /// Whether state frames from this connection are refused (answered with
    /// `cf_agent_state_error` "Connection is readonly"). Defaults to `false`.
    fn should_connection_be_readonly(&self, conn: &Connection, ctx: &ConnectContext) -> bool {
        let _ = (conn, ctx);
        false
    }

    /// Whether this connection gets protocol frames (identity, state, MCP).
    /// Defaults to `true`; return `false` for e.g. binary-only devices.
    fn should_send_protocol_messages(&self, conn: &Connection, ctx: &ConnectContext) -> bool {
        let _ = (conn, ctx);
        true
    }

    /// A client connected; the protocol frames have been sent. `ctx.request()`
    /// is the upgrade request. An error or panic sends `{"error":"…"}` and
    /// closes the socket with 1011.
    fn on_connect(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        ctx: &ConnectContext,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (cx, conn, ctx);
        async { Ok(()) }
    }

    /// A message that is not a protocol frame: any binary frame, and any
    /// text that is not a well-formed `cf_agent_state` or `rpc` frame,
    /// unchanged.
    fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (cx, conn, message);
        async { Ok(()) }
    }

    /// A hook failed or panicked. `conn` is the connection whose event it was
    /// handling, if any. The default logs the error with `tracing`.
    fn on_error(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: Option<&Connection>,
        error: HookError,
    ) -> impl Future<Output = ()> + Send {
        tracing::error!(
            agent = %Trunc(cx.agent()),
            name = %Trunc(cx.name()),
            connection = %Trunc(conn.map_or("-", Connection::id)),
            error = %Trunc(&error.to_string()),
            "agent error"
        );
        async {}
    }

    /// A connection closed. `code` and `reason` are what the client sent
    /// (1005 when its close frame had no code); without a close frame,
    /// `code` is 1006 and `was_clean` is false.
    fn on_close(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        code: u16,
        reason: &str,
        was_clean: bool,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (cx, conn, code, reason, was_clean);
        async { Ok(()) }
    }

    /// A plain HTTP request (not an upgrade) to the instance's URL. The
    /// default answers 404 `Not implemented`, like the reference. An error or
    /// panic answers 500.
    ///
    /// An agent type that keeps this default costs no instances for plain
    /// HTTP: once the first such request showed that the type does not
    /// implement it, the server answers 404 itself, without starting one.
    fn on_request(
        &mut self,
        cx: &mut AgentContext<Self>,
        request: http::Request<Body>,
    ) -> impl Future<Output = Result<Response, BoxError>> + Send {
        let _ = (cx, request);
        async { Ok(not_implemented()) }
    }

    /// A client's RPC call (`call(method, args)`): match on
    /// [`call.method()`](Call::method) and return the result; anything not
    /// matched should be `Err(RpcError::NoSuchMethod)` (the default for every
    /// method). Errors and panics become an error reply; the connection stays
    /// up. See the [`rpc`](crate::rpc) module for why this is a `match`.
    fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> impl Future<Output = Result<Reply, RpcError>> + Send {
        let _ = (cx, call);
        async { Err(RpcError::NoSuchMethod) }
    }

    /// Gate for a client's state update. An error (or panic) rejects it: the
    /// client gets `cf_agent_state_error` "State update rejected" and nothing
    /// changes.
    fn validate_state_change(
        &self,
        next: &Self::State,
        source: &StateSource,
    ) -> Result<(), BoxError> {
        let _ = (next, source);
        Ok(())
    }

    /// The state changed (already stored and broadcast); read it with
    /// [`AgentContext::state`]. `source` says who changed it. Errors go to
    /// [`on_error`](Agent::on_error) and do not undo the change.
    fn on_state_update(
        &mut self,
        cx: &mut AgentContext<Self>,
        source: StateSource,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (cx, source);
        async { Ok(()) }
    }
}

/// Marks the response of the default [`Agent::on_request`], so the server
/// learns that an agent type has none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DefaultOnRequest;

/// 404 `Not implemented`, as the reference answers without `onRequest`.
pub(crate) fn not_implemented() -> Response {
    let mut response = (StatusCode::NOT_FOUND, "Not implemented").into_response();
    response.extensions_mut().insert(DefaultOnRequest);
    response
}
