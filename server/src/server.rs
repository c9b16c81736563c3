//! The [`AgentServer`] builder, the axum router it produces, and `serve`.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use agents_protocol::camel_case_to_kebab_case;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http::{header, StatusCode};
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::config::{Config, MAX_NAME_LEN, READ_BUFFER_SIZE};
use crate::connection::{self, nanoid, Connection};
use crate::registry::{BeforeConnect, InstanceKey, Kind, KindOf, Route, Shared};
use crate::request::RequestInfo;
use crate::storage::Storage;

/// Builds an agent server: register agent types, set limits, then
/// [`serve`](Self::serve) it or [`build`](Self::build) a router to mount in
/// your own axum app.
///
/// ```no_run
/// # use agents_server::{AgentServer, demo::{EchoAgent, CounterAgent}};
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
/// AgentServer::new()
///     .agent("EchoAgent", |_name| EchoAgent)
///     .agent("CounterAgent", |_name| CounterAgent::default())
///     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
#[must_use]
pub struct AgentServer {
    config: Config,
    kinds: HashMap<String, Arc<dyn Kind>>,
    before_connect: Option<BeforeConnect>,
    storage: Option<Storage>,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("config", &self.config)
            .field("agents", &self.kinds.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for AgentServer {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentServer {
    /// A server with no agents and the default limits.
    pub fn new() -> Self {
        AgentServer {
            config: Config::default(),
            kinds: HashMap::new(),
            before_connect: None,
            storage: None,
        }
    }

    /// Registers an agent type under `class_name`. It is reached at
    /// `/<prefix>/<kebab(class_name)>/<name>` (`ChatAgent` → `chat-agent`,
    /// `AIAssistant` → `a-i-assistant`, exactly as the reference).
    /// `factory` makes the agent value for a new instance from its name.
    ///
    /// # Panics
    /// When two class names map to the same URL segment.
    pub fn agent<A, F>(mut self, class_name: &str, factory: F) -> Self
    where
        A: Agent,
        F: Fn(&str) -> A + Send + Sync + 'static,
    {
        let kebab = camel_case_to_kebab_case(class_name);
        let kind = KindOf {
            class_name: class_name.into(),
            factory,
            _agent: PhantomData,
        };
        let previous = self.kinds.insert(kebab.clone(), Arc::new(kind));
        assert!(previous.is_none(), "two agents are registered at `{kebab}`");
        self
    }

    /// The URL prefix before `<agent>/<name>`; may contain `/`. Defaults to
    /// `agents`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.config.prefix = prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        self
    }

    /// Largest incoming message in bytes; a larger one closes the socket with
    /// 1009. Defaults to [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE) (32 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// Most connections one instance holds; more are closed with 1013.
    /// Defaults to [`DEFAULT_MAX_CONNECTIONS_PER_INSTANCE`](crate::DEFAULT_MAX_CONNECTIONS_PER_INSTANCE).
    pub fn max_connections_per_instance(mut self, max: usize) -> Self {
        self.config.max_connections_per_instance = max;
        self
    }

    /// Frames queued for one client before it counts as not reading and is
    /// dropped. Defaults to [`DEFAULT_OUTBOUND_QUEUE`](crate::DEFAULT_OUTBOUND_QUEUE).
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.config.outbound_queue = frames;
        self
    }

    /// Bytes queued for one client before it is dropped. Defaults to
    /// [`DEFAULT_OUTBOUND_QUEUE_BYTES`](crate::DEFAULT_OUTBOUND_QUEUE_BYTES) (64 MiB).
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.outbound_queue_bytes = bytes;
        self
    }

    /// How long an instance without connections stays in memory. Defaults to
    /// [`DEFAULT_IDLE_TIMEOUT`](crate::DEFAULT_IDLE_TIMEOUT) (60 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Events queued per instance before readers wait. Defaults to
    /// [`DEFAULT_INBOX_CAPACITY`](crate::DEFAULT_INBOX_CAPACITY).
    pub fn inbox_capacity(mut self, events: usize) -> Self {
        self.config.inbox_capacity = events;
        self
    }

    /// A hook that runs before every WebSocket upgrade, for auth: return
    /// `Ok(request)` (possibly with added headers, which the agent then sees
    /// in `ctx.request()`) to continue, or `Err(response)` — e.g. a 401 — to
    /// refuse. Browsers cannot set headers on WebSockets, so read tokens from
    /// the query ([`RequestInfo::query`]) or cookies ([`RequestInfo::cookie`]).
    pub fn on_before_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(RequestInfo, Route) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RequestInfo, Response>> + Send + 'static,
    {
        self.before_connect = Some(Arc::new(move |req, route| Box::pin(hook(req, route))));
        self
    }

    /// Where state and key-value data live. Defaults to
    /// [`Storage::in_memory`], which forgets everything when the server stops;
    /// use [`Storage::open_dir`] to keep it across restarts.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> Agents {
        let storage = self.storage.unwrap_or_else(Storage::in_memory);
        Agents {
            shared: Arc::new(Shared::new(
                self.config,
                self.kinds,
                self.before_connect,
                storage,
            )),
        }
    }

    /// Serves the agents on `listener` until `shutdown` completes, then
    /// closes every socket with 1001 and waits for the instances to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let agents = self.build();
        let router = agents.router();
        agents.serve(listener, router, shutdown).await
    }
}

/// A built server: hands out the router and controls shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Agents {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("instances", &self.shared.instance_count())
            .finish()
    }
}

impl Agents {
    /// The axum router answering `/<prefix>/…`; merge it into your app.
    /// Paths it does not own are left to your app (or its fallback).
    pub fn router(&self) -> Router {
        let base = format!("/{}", self.shared.config.prefix.join("/"));
        let base = if base == "/" { String::new() } else { base };
        Router::new()
            .route(&format!("{base}/{{*rest}}"), any(handle))
            .with_state(self.shared.clone())
    }

    /// Serves `app` (which should contain [`router`](Self::router)) on
    /// `listener` until `shutdown` completes, then shuts the agents down.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let token = self.shared.shutdown.clone();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = token.cancelled() => {}
                }
            })
            .await;
        self.shutdown().await;
        result
    }

    /// Closes every socket with 1001 `Server shutting down`, lets in-flight
    /// events finish and waits for every instance to stop.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    /// The number of instances in memory.
    pub fn instance_count(&self) -> usize {
        self.shared.instance_count()
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
        body,
    )
        .into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    for want in &shared.config.prefix {
        if segments.next() != Some(want.as_str()) {
            return text(StatusCode::NOT_FOUND, "Not found");
        }
    }
    let (Some(agent), Some(name)) = (segments.next(), segments.next()) else {
        return text(StatusCode::NOT_FOUND, "Not found");
    };
    let Some(kind) = shared.kinds.get(agent).cloned() else {
        tracing::warn!(agent, "request for an unknown agent");
        return text(StatusCode::BAD_REQUEST, "Invalid request");
    };
    if name.len() > MAX_NAME_LEN {
        return text(StatusCode::BAD_REQUEST, "Invalid request");
    }
    let key = InstanceKey {
        agent: agent.into(),
        name: name.into(),
    };
    let is_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !is_upgrade {
        return shared
            .request(&kind, &key, http::Request::from_parts(parts, body))
            .await;
    }
    let mut info = RequestInfo::new(
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    if let Some(hook) = &shared.before_connect {
        let route = Route {
            class_name: kind.class_name().clone(),
            agent: key.agent.clone(),
            name: key.name.clone(),
        };
        match hook(info, route).await {
            Ok(rewritten) => info = rewritten,
            Err(response) => return response,
        }
    }
    // A browser fails the handshake unless one offered subprotocol is
    // selected; we take the client's first.
    let offered = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
        .and_then(|p| p.parse().ok());
    let mut ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if let Some(protocol) = offered {
        ws.set_selected_protocol(protocol);
    }
    let max = shared.config.max_message_size;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_SIZE)
        .on_upgrade(move |socket| async move {
            let _running = shared.tracker.token();
            let id = info
                .query("_pk")
                .filter(|s| !s.is_empty())
                .map_or_else(nanoid, str::to_owned);
            let (conn, rx) = Connection::new(
                shared.next_connection_key(),
                id,
                info.url(),
                shared.config.outbound_queue,
                shared.config.outbound_queue_bytes,
            );
            let key_num = conn.key();
            let registered = connection::drive(socket, conn, rx, async |conn: Connection| {
                shared.connect(&kind, &key, conn, info).await
            })
            .await;
            if let Some((handle, info)) = registered {
                let _ = handle
                    .send(crate::actor::Command::Closed { key: key_num, info })
                    .await;
            }
        })
}
