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
//! # Layout
//! - [`agent`]: the [`Agent`] trait and its lifecycle.
//! - [`context`]: [`AgentContext`] (broadcast, connections, state) and [`ConnectContext`].
//! - [`connection`]: the [`Connection`] handle and the socket reader/writer.
//! - `actor`: one task per instance; `registry`: `(agent, name)` → instance.
//! - [`rpc`]: callable methods ([`Agent::on_call`]).
//! - [`storage`]: the SQLite database for state and per-instance key-value data.
//! - [`server`]: the [`AgentServer`] builder, routing and `serve`.
//! - [`config`]: every limit with its default.
//! - [`demo`]: the example agents of the `agents-server` binary.
//!
//! # HTTP results
//! | request | result |
//! |---|---|
//! | `/<prefix>/<unknown-agent>/<name>` | 400 `Invalid request` |
//! | `/<prefix>/<agent>` (no name) | 404 `Not found` |
//! | plain GET to an instance without [`Agent::on_request`] | 404 `Not implemented` |
//! | refused by [`AgentServer::on_before_connect`] | the hook's response |
//!
//! # Close codes the server sends
//! | code | when |
//! |---|---|
//! | 1000–4999 as received | answering a client's close (same code and reason) |
//! | 1001 `Server shutting down` | graceful shutdown |
//! | 1009 `Message is too large: <n> > <max>` | message over [`AgentServer::max_message_size`] |
//! | 1011 `Uncaught exception during session setup` | `on_connect` failed, after a `{"error":"…"}` frame |
//! | 1013 `Too many connections` | over [`AgentServer::max_connections_per_instance`] |
//! | none (TCP dropped) | the client stopped reading and its queue filled |

mod actor;
pub mod agent;
pub mod config;
pub mod connection;
pub mod context;
pub mod demo;
mod error;
mod message;
mod registry;
mod request;
pub mod rpc;
pub mod server;
pub mod storage;

pub use agent::Agent;
pub use agents_protocol as protocol;
pub use config::{
    CLOSE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_INBOX_CAPACITY,
    DEFAULT_MAX_CONNECTIONS_PER_INSTANCE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_OUTBOUND_QUEUE,
    DEFAULT_OUTBOUND_QUEUE_BYTES, MAX_NAME_LEN, MAX_TAGS, MAX_TAG_LEN,
};
pub use connection::Connection;
pub use context::{AgentContext, ConnectContext, StateSource};
pub use error::{BoxError, DuplicateConnectionId, HookError, SendError, StateError, TagError};
pub use message::{Message, Utf8Bytes};
pub use registry::Route;
pub use request::RequestInfo;
pub use rpc::{Call, CallStream, Reply, RpcError};
pub use server::{AgentServer, Agents};
pub use storage::{InstanceStorage, Storage, StorageError};
