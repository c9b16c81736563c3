//! Self-hosted agents over WebSockets: an axum + tokio server that speaks the
//! wire protocol of Cloudflare's `agents` SDK, so its `AgentClient` and
//! `useAgent` (and ours) connect unchanged.
//!
//! You implement [`Agent`] for a type, register it on an [`AgentServer`]
//! under a class name, and every `/agents/<kebab-name>/<instance>` URL gets
//! its own instance: one actor task owning one value of your type, its
//! state and its connections. See the [`agent`] module for the lifecycle.
//!
//! ```no_run
//! use agents_server::{Agent, AgentContext, AgentServer, BoxError, Connection, Message};
//!
//! struct Room;
//!
//! impl Agent for Room {
//!     type State = serde_json::Value;
//!
//!     async fn on_message(
//!         &mut self,
//!         cx: &mut AgentContext<Self>,
//!         _conn: &Connection,
//!         message: Message,
//!     ) -> Result<(), BoxError> {
//!         cx.broadcast(message, &[]);
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//!     AgentServer::new()
//!         .agent("Room", |_name| Room) // ws://127.0.0.1:8787/agents/room/<name>
//!         .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!         .await
//! }
//! ```
//!
//! # Layers
//! Each module depends only on the layers above it in this list, never on
//! one below, so each can be read and replaced on its own:
//! 1. Leaves: [`message`] (what is sent), [`error`] (every error type),
//!    [`config`] (every limit), [`request`] (the HTTP request an agent
//!    sees), [`storage`] (durable state and key-value data), [`metrics`]
//!    (what operators watch), `log`.
//! 2. [`connection`]: the [`Connection`] handle and its outbound queue — no
//!    runtime types inside.
//! 3. The agent-facing API: [`agent`] (the [`Agent`] trait), [`context`]
//!    ([`AgentContext`], [`ConnectContext`]), [`rpc`] (callable methods).
//! 4. The runtime (private): `runtime::socket` (one task per socket:
//!    WebSocket frames, limits, deadlines), `runtime::actor` (one task per
//!    instance), `runtime::registry` (instances by key). An actor gets a
//!    small environment (its key, the limits, its storage, the shutdown
//!    signal), not the server.
//! 5. [`server`]: the [`AgentServer`] builder, the axum router and upgrade,
//!    serving with bounded heads and shutdown (`head`: a connection's first
//!    request head read and answered without hyper, for upgrades); [`Cors`] for plain HTTP from
//!    other origins; [`static_files`] for a web app.
//!
//! # HTTP results
//! | request | result |
//! |---|---|
//! | `/<prefix>/<unknown-agent>/<name>` | 400 `Invalid request` |
//! | `/<prefix>/<agent>` (no name) | 404 `Not found` |
//! | plain GET to an instance without [`Agent::on_request`] | 404 `Not implemented` |
//! | refused by [`AgentServer::on_before_connect`] / [`AgentServer::on_before_request`] | the hook's response |
//! | upgrade from an origin not in [`AgentServer::allowed_origins`] | 403 |
//! | upgrade over [`AgentServer::max_connections`] | 503 |
//! | request head over [`AgentServer::max_request_head`] | 431 |
//!
//! # Close codes the server sends
//! | code | when |
//! |---|---|
//! | 1000–4999 as received | answering a client's close (same code and reason) |
//! | 1001 `Server shutting down` | graceful shutdown |
//! | 1002 `Protocol error: …` | a frame breaking the WebSocket protocol |
//! | 1007 `Invalid UTF-8 in text frame` | text that is not UTF-8 |
//! | 1009 `Message is too large: <n> > <max>` | message over [`AgentServer::max_message_size`] |
//! | 1011 `Uncaught exception during session setup` | `on_connect` failed, after a `{"error":"…"}` frame |
//! | 1013 `Too many connections` | over [`AgentServer::max_connections_per_instance`] |
//! | 1013 `Server busy` | over [`AgentServer::max_unfinished_bytes`] |
//! | 1013 `Message took too long` | over [`AgentServer::message_timeout`] or [`AgentServer::message_idle_timeout`] |
//! | none (TCP dropped) | no write progress for [`AgentServer::slow_consumer_timeout`], silent for two [`AgentServer::ping_interval`]s, or a closing handshake over 5 s |

pub mod agent;
pub mod config;
pub mod connection;
pub mod context;
mod cors;
pub mod error;
mod head;
mod log;
pub mod message;
pub mod metrics;
mod offload;
pub mod request;
pub mod rpc;
mod runtime;
pub mod server;
mod static_files;
pub mod storage;
mod upgrade;

pub use agent::Agent;
pub use agents_protocol as protocol;
pub use config::{
    CLOSE_TIMEOUT, DEFAULT_DRAIN_DELAY, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INBOX_BYTES, DEFAULT_INBOX_CAPACITY, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_INSTANCE, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_REQUEST_HEAD, DEFAULT_MAX_STATE_BYTES, DEFAULT_MAX_UNFINISHED_BYTES,
    DEFAULT_MESSAGE_IDLE_TIMEOUT, DEFAULT_MESSAGE_TIMEOUT, DEFAULT_OUTBOUND_QUEUE,
    DEFAULT_OUTBOUND_QUEUE_BYTES, DEFAULT_PING_INTERVAL, DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SLOW_CONSUMER_TIMEOUT, MAX_NAME_LEN, MAX_TAGS, MAX_TAG_LEN,
};
pub use connection::Connection;
pub use context::{AgentContext, ConnectContext, StateSource};
pub use cors::Cors;
pub use error::{
    BoxError, DuplicateConnectionId, HookError, RpcError, SendError, StateError, StorageError,
    TagError,
};
pub use log::MAX_LOG_FIELD;
pub use message::{Message, Utf8Bytes};
pub use offload::LARGE_JSON;
pub use request::RequestInfo;
pub use rpc::{Call, CallStream, Reply};
pub use runtime::cluster::{
    Cluster, ClusterError, ClusterOptions, DEFAULT_LEASE_TTL, FORWARDED_REQUEST_TIMEOUT,
};
pub use server::{AgentServer, Agents, Route};
pub use static_files::static_files;
pub use storage::{InstanceStorage, Storage};

/// Locks `m`, also after a panic while it was held: what it guards is
/// always left consistent between statements, so a panic elsewhere (in an
/// agent's code) must not make it unusable for everyone else.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
