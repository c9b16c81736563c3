//! One agent instance = one actor task: the [`AgentHandle`] (a cloneable
//! sender) and the task that owns the agent, its state and its connections.

use std::sync::Arc;

use agents_protocol::{
    ClientMessage, Identity, Incoming, McpState, RpcRequest, RpcResponse, ServerMessage,
    SetupError, READONLY_ERROR, SETUP_FAILED_REASON, STATE_REJECTED_ERROR,
};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{guarded, guarded_sync, Agent};
use crate::config::{MAX_TAGS, MAX_TAG_LEN};
use crate::connection::{CloseInfo, Connection};
use crate::context::{AgentContext, ConnectContext, StateSource};
use crate::error::{CloseDisplay, HookError, TagError};
use crate::message::Message;
use crate::registry::{InstanceKey, Shared};
use crate::request::RequestInfo;
use crate::rpc::{Call, RpcError};

/// Hook and base-class names a client may not call over RPC; the reply is
/// `Method <m> is not callable`, as the reference answers for its own hooks.
const NOT_CALLABLE: &[&str] = &[
    "onStart",
    "onConnect",
    "onMessage",
    "onError",
    "onClose",
    "onRequest",
    "onStateUpdate",
    "onStateChanged",
    "validateStateChange",
    "setState",
    "broadcast",
    "getConnection",
    "getConnections",
    "getConnectionTags",
    "shouldConnectionBeReadonly",
    "shouldSendProtocolMessages",
    "on_start",
    "on_connect",
    "on_message",
    "on_error",
    "on_close",
    "on_request",
    "on_state_update",
    "validate_state_change",
    "set_state",
    "initial_state",
    "connection_tags",
    "should_connection_be_readonly",
    "should_send_protocol_messages",
];

/// Events for an instance, processed one at a time in arrival order.
#[derive(Debug)]
pub(crate) enum Command {
    /// Register a socket; `ack` answers whether it was accepted.
    Connect {
        conn: Connection,
        request: RequestInfo,
        ack: oneshot::Sender<bool>,
    },
    /// A data frame from a registered socket.
    Message { key: u64, message: Message },
    /// A registered socket ended.
    Closed { key: u64, info: CloseInfo },
    /// A plain HTTP request to the instance.
    Request {
        request: http::Request<Body>,
        reply: oneshot::Sender<Response>,
    },
}

/// Cheap-to-clone sender to one instance's actor.
#[derive(Debug, Clone)]
pub(crate) struct AgentHandle {
    tx: mpsc::Sender<Command>,
    pub(crate) generation: u64,
}

impl AgentHandle {
    pub(crate) async fn send(&self, cmd: Command) -> Result<(), mpsc::error::SendError<Command>> {
        self.tx.send(cmd).await
    }
}

/// Starts the actor task for one instance and returns its handle.
pub(crate) fn spawn<A: Agent>(
    shared: &Arc<Shared>,
    key: InstanceKey,
    agent: A,
    generation: u64,
) -> AgentHandle {
    let (tx, rx) = mpsc::channel(shared.config.inbox_capacity.max(1));
    let storage = shared.storage.instance(&key.agent, &key.name);
    let cx = AgentContext::new(key.agent.clone(), key.name.clone(), storage);
    let actor = Actor {
        agent,
        cx,
        rx,
        shared: shared.clone(),
        key,
        generation,
        stopping: false,
    };
    shared.tracker.spawn(actor.run());
    AgentHandle { tx, generation }
}

struct Actor<A: Agent> {
    agent: A,
    cx: AgentContext<A>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    key: InstanceKey,
    generation: u64,
    /// Server shutdown began: refuse new connections, exit once empty.
    stopping: bool,
}

impl<A: Agent> Actor<A> {
    async fn run(mut self) {
        self.start().await;
        let shutdown = self.shared.shutdown.clone();
        let idle_timeout = self.shared.config.idle_timeout;
        loop {
            let idle = self.cx.connection_count() == 0;
            let cmd = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    for conn in self.cx.connections() {
                        conn.close(1001, "Server shutting down");
                    }
                    if idle {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep(idle_timeout), if idle && !self.stopping => {
                    tracing::debug!(agent = %self.key.agent, name = %self.key.name, "evicting idle instance");
                    break;
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            self.handle(cmd).await;
            if self.stopping && self.cx.connection_count() == 0 {
                break;
            }
        }
        self.stop().await;
    }

    /// Restores the stored state, or falls back to the initial state when
    /// there is none or it no longer fits the state type.
    fn load_state(&mut self) -> bool {
        let stored = match self.cx.storage().load_state() {
            Ok(stored) => stored,
            Err(err) => {
                tracing::error!(agent = %self.key.agent, name = %self.key.name, %err, "cannot load state");
                return false;
            }
        };
        let Some(json) = stored else { return false };
        let parsed = serde_json::from_str::<A::State>(&json)
            .map_err(|e| e.to_string())
            .and_then(|state| {
                RawValue::from_string(json)
                    .map(|raw| (state, raw))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok((state, raw)) => {
                self.cx.store_state(state, raw);
                true
            }
            Err(err) => {
                tracing::warn!(agent = %self.key.agent, name = %self.key.name, %err, "stored state does not fit; using the initial state");
                let _ = self.cx.storage().delete_state();
                false
            }
        }
    }

    async fn start(&mut self) {
        if self.load_state() {
            // Restored: the initial state is not used.
        } else {
            self.seed_initial_state().await;
        }
        let result = guarded("on_start", self.agent.on_start(&mut self.cx)).await;
        if let Err(err) = result {
            self.report(None, err).await;
        }
        self.after_hook().await;
    }

    async fn seed_initial_state(&mut self) {
        match guarded_sync("initial_state", || Ok(self.agent.initial_state())) {
            Ok(Some(state)) => match serde_json::value::to_raw_value(&state) {
                Ok(json) => self.cx.store_state(state, json),
                Err(err) => tracing::error!(cause = %err, "initial state does not serialize"),
            },
            Ok(None) => {}
            Err(err) => self.report(None, err).await,
        }
    }

    /// Leaves the registry, then bounces what is still queued: a connect
    /// arriving now gets no ack, so its socket retries on a fresh instance.
    async fn stop(&mut self) {
        self.shared.remove_instance(&self.key, self.generation);
        self.rx.close();
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                Command::Connect { .. } => {}
                Command::Closed { key, info } => self.closed(key, info).await,
                cmd @ Command::Request { .. } => self.handle(cmd).await,
                Command::Message { .. } => {}
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { conn, request, ack } => {
                let accepted = self.connect(conn, request).await;
                let _ = ack.send(accepted);
            }
            Command::Message { key, message } => {
                let Some(conn) = self.cx.get(key).cloned() else {
                    return;
                };
                self.cx.current = Some(conn.clone());
                self.message(conn, message).await;
                self.cx.current = None;
                self.after_hook().await;
            }
            Command::Closed { key, info } => self.closed(key, info).await,
            Command::Request { request, reply } => {
                let result =
                    guarded("on_request", self.agent.on_request(&mut self.cx, request)).await;
                let response = match result {
                    Ok(response) => response,
                    Err(err) => {
                        let body = err.client_message();
                        self.report(None, err).await;
                        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
                    }
                };
                let _ = reply.send(response);
                self.after_hook().await;
            }
        }
    }

    async fn connect(&mut self, conn: Connection, request: RequestInfo) -> bool {
        if self.stopping {
            conn.close(1001, "Server shutting down");
            return false;
        }
        if self.cx.connection_count() >= self.shared.config.max_connections_per_instance {
            tracing::warn!(agent = %self.key.agent, name = %self.key.name, "too many connections");
            conn.close(1013, "Too many connections");
            return false;
        }
        let ctx = ConnectContext { request };
        let agent = &self.agent;
        let setup = guarded_sync("connection_tags", || {
            let tags = validate_tags(conn.id(), agent.connection_tags(&conn, &ctx))?;
            let readonly = agent.should_connection_be_readonly(&conn, &ctx);
            let protocol = agent.should_send_protocol_messages(&conn, &ctx);
            Ok((tags, readonly, protocol))
        });
        let (tags, readonly, protocol) = match setup {
            Ok(flags) => flags,
            Err(err) => return self.fail_setup(&conn, err).await,
        };
        conn.set_tags(tags);
        conn.set_readonly(readonly);
        conn.set_protocol_enabled(protocol);
        self.cx.insert(conn.clone());
        if protocol {
            self.send_connect_frames(&conn);
        }
        self.cx.current = Some(conn.clone());
        let result = guarded(
            "on_connect",
            self.agent.on_connect(&mut self.cx, &conn, &ctx),
        )
        .await;
        self.cx.current = None;
        let accepted = match result {
            Ok(()) => true,
            Err(err) => {
                self.cx.remove(conn.key());
                self.fail_setup(&conn, err).await
            }
        };
        self.after_hook().await;
        accepted
    }

    /// Identity (with `stateFollows` when state exists), state, MCP — the
    /// reference's order.
    fn send_connect_frames(&self, conn: &Connection) {
        let state = self.cx.state_frame();
        let identity = ServerMessage::Identity(Identity {
            name: self.cx.name().to_owned(),
            agent: self.cx.agent().to_owned(),
            state_follows: state.is_some(),
        });
        let _ = conn.send(identity.to_json());
        if let Some(state) = state {
            let _ = conn.send(state.clone());
        }
        let _ = conn.send(ServerMessage::McpServers(McpState::default()).to_json());
    }

    async fn fail_setup(&mut self, conn: &Connection, err: HookError) -> bool {
        tracing::warn!(agent = %self.key.agent, name = %self.key.name, id = conn.id(), %err, "connection setup failed");
        let _ = conn.send(
            SetupError {
                error: err.client_message(),
            }
            .to_json(),
        );
        conn.close(1011, SETUP_FAILED_REASON);
        self.report(Some(conn.clone()), err).await;
        false
    }

    async fn message(&mut self, conn: Connection, message: Message) {
        let protocol = match &message {
            Message::Text(text) => match ClientMessage::decode(text.as_str()) {
                Incoming::Protocol(msg) => Some(msg),
                Incoming::Raw(_) => None,
            },
            Message::Binary(_) => None,
        };
        match protocol {
            Some(ClientMessage::State(state)) => self.client_state(conn, state).await,
            Some(ClientMessage::Rpc(call)) => self.rpc(&conn, call).await,
            None => {
                let result = guarded(
                    "on_message",
                    self.agent.on_message(&mut self.cx, &conn, message),
                )
                .await;
                if let Err(err) = result {
                    tracing::warn!(agent = %self.key.agent, name = %self.key.name, id = conn.id(), %err, "on_message failed");
                    self.report(Some(conn), err).await;
                }
            }
        }
    }

    /// validate → store → broadcast to the others → notify.
    async fn client_state(&mut self, conn: Connection, json: Box<RawValue>) {
        if conn.is_readonly() {
            let _ = conn.send(ServerMessage::StateError(READONLY_ERROR.to_owned()).to_json());
            return;
        }
        let next: A::State = match serde_json::from_str(json.get()) {
            Ok(next) => next,
            Err(err) => {
                let error = format!("{STATE_REJECTED_ERROR}: {err}");
                let _ = conn.send(ServerMessage::StateError(error).to_json());
                return;
            }
        };
        let source = StateSource::Client(conn.clone());
        let agent = &self.agent;
        if let Err(err) = guarded_sync("validate_state_change", || {
            agent.validate_state_change(&next, &source)
        }) {
            tracing::info!(agent = %self.key.agent, name = %self.key.name, id = conn.id(), %err, "state update rejected");
            let _ = conn.send(ServerMessage::StateError(STATE_REJECTED_ERROR.to_owned()).to_json());
            return;
        }
        let json = match serde_json::value::to_raw_value(&next) {
            Ok(json) => json,
            Err(err) => {
                let error = format!("{STATE_REJECTED_ERROR}: {err}");
                let _ = conn.send(ServerMessage::StateError(error).to_json());
                return;
            }
        };
        if let Err(err) = self.cx.storage().save_state(json.get()) {
            tracing::error!(agent = %self.key.agent, name = %self.key.name, %err, "cannot store state");
            let error = format!("{STATE_REJECTED_ERROR}: {err}");
            let _ = conn.send(ServerMessage::StateError(error).to_json());
            return;
        }
        self.cx.store_state(next, json);
        self.cx.broadcast_state(Some(conn.id()));
        let result = guarded(
            "on_state_update",
            self.agent.on_state_update(&mut self.cx, source),
        )
        .await;
        if let Err(err) = result {
            self.report(Some(conn), err).await;
        }
    }

    async fn rpc(&mut self, conn: &Connection, request: RpcRequest) {
        if NOT_CALLABLE.contains(&request.method.as_str()) {
            let reply = RpcResponse::not_callable(request.id, &request.method);
            let _ = conn.send(ServerMessage::Rpc(reply).to_json());
            return;
        }
        let mut call = Call {
            id: request.id,
            method: request.method,
            args: request.args,
            conn: conn.clone(),
            streamed: false,
        };
        let outcome = {
            let fut = self.agent.on_call(&mut self.cx, &mut call);
            guarded("on_call", async { Ok(fut.await) }).await
        };
        let reply = match outcome {
            Ok(Ok(reply)) => RpcResponse::Success {
                id: call.id,
                result: reply.result,
                done: true,
            },
            Ok(Err(err)) => {
                if !matches!(err, RpcError::NoSuchMethod) {
                    tracing::info!(method = %call.method, %err, "rpc error");
                }
                RpcResponse::Error {
                    error: err.into_message(&call.method),
                    id: call.id,
                }
            }
            Err(err) => {
                tracing::error!(method = %call.method, %err, "rpc method panicked");
                RpcResponse::Error {
                    error: err.client_message(),
                    id: call.id,
                }
            }
        };
        let _ = conn.send(ServerMessage::Rpc(reply).to_json());
    }

    async fn closed(&mut self, key: u64, info: CloseInfo) {
        let Some(conn) = self.cx.remove(key) else {
            return;
        };
        tracing::debug!(id = conn.id(), close = %CloseDisplay(info.code, &info.reason), "connection closed");
        self.cx.current = Some(conn.clone());
        let result = guarded(
            "on_close",
            self.agent
                .on_close(&mut self.cx, &conn, info.code, &info.reason, info.was_clean),
        )
        .await;
        self.cx.current = None;
        if let Err(err) = result {
            self.report(Some(conn), err).await;
        }
        self.after_hook().await;
    }

    /// Runs `on_state_update` for a state the agent itself changed.
    async fn after_hook(&mut self) {
        if !std::mem::take(&mut self.cx.state_changed) {
            return;
        }
        let result = guarded(
            "on_state_update",
            self.agent
                .on_state_update(&mut self.cx, StateSource::Server),
        )
        .await;
        // A change made inside on_state_update is not re-notified.
        self.cx.state_changed = false;
        if let Err(err) = result {
            self.report(None, err).await;
        }
    }

    async fn report(&mut self, conn: Option<Connection>, err: HookError) {
        let fut = self.agent.on_error(&mut self.cx, conn.as_ref(), err);
        let result = guarded("on_error", async {
            fut.await;
            Ok(())
        })
        .await;
        if let Err(err) = result {
            tracing::error!(agent = %self.key.agent, name = %self.key.name, %err, "on_error failed");
        }
    }
}

/// `[id, ...tags]` with the id once, checked against the reference's limits.
fn validate_tags(id: &str, extra: Vec<String>) -> Result<Box<[String]>, TagError> {
    let mut tags = vec![id.to_owned()];
    tags.extend(extra.into_iter().filter(|t| t != id));
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany { max: MAX_TAGS });
    }
    for tag in &tags {
        if tag.is_empty() {
            return Err(TagError::Empty);
        }
        if tag.chars().count() > MAX_TAG_LEN {
            return Err(TagError::TooLong {
                tag: tag.clone(),
                max: MAX_TAG_LEN,
            });
        }
    }
    Ok(tags.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_reference_rules() {
        assert_eq!(
            &*validate_tags("id", vec!["a".into(), "id".into()]).unwrap(),
            ["id", "a"]
        );
        assert_eq!(
            validate_tags("id", vec![String::new()]),
            Err(TagError::Empty)
        );
        assert!(matches!(
            validate_tags("id", (0..10).map(|i| i.to_string()).collect()),
            Err(TagError::TooMany { max: 10 })
        ));
        assert!(validate_tags("id", (0..9).map(|i| i.to_string()).collect()).is_ok());
        assert!(matches!(
            validate_tags("id", vec!["x".repeat(257)]),
            Err(TagError::TooLong { .. })
        ));
    }
}
