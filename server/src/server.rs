//! The [`AgentServer`] builder, the axum router it produces (routing,
//! auth hooks, the WebSocket upgrade) and the HTTP server that serves it
//! with bounded request heads and a bounded shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agents_protocol::camel_case_to_kebab_case;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::{Bytes, BytesMut};
use http::{header, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::agent::Agent;
use crate::config::{Config, MAX_NAME_LEN};
use crate::connection::Connection;
use crate::cors::Cors;
use crate::head::{self, First, Head, Prefixed};
use crate::log::Trunc;
use crate::metrics::{Limit, SocketMetrics};
use crate::request::RequestInfo;
use crate::runtime::cluster::Cluster;
use crate::runtime::registry::{Kind, KindOf, Registry};
use crate::runtime::socket::{self, ReadBudget, SocketEnv};
use crate::runtime::InstanceKey;
use crate::storage::Storage;
use crate::upgrade;

/// Which agent and instance a request is for; given to
/// [`on_before_connect`](AgentServer::on_before_connect) and
/// [`on_before_request`](AgentServer::on_before_request).
#[derive(Debug, Clone)]
pub struct Route {
    /// The class name the agent was registered under, e.g. `ChatAgent`.
    pub class_name: Arc<str>,
    /// Its kebab-case URL segment, e.g. `chat-agent`.
    pub agent: Arc<str>,
    /// The instance name, raw as in the URL.
    pub name: Arc<str>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BeforeConnect =
    Arc<dyn Fn(RequestInfo, Route) -> BoxFuture<Result<RequestInfo, Response>> + Send + Sync>;
type BeforeRequest = Arc<
    dyn Fn(http::Request<Body>, Route) -> BoxFuture<Result<http::Request<Body>, Response>>
        + Send
        + Sync,
>;

/// Builds an agent server: register agent types, set limits, then
/// [`serve`](Self::serve) it or [`build`](Self::build) a router to mount in
/// your own axum app.
///
/// ```no_run
/// # use agents_server::{Agent, AgentServer};
/// # #[derive(Default)] struct EchoAgent;
/// # impl Agent for EchoAgent { type State = (); }
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
/// AgentServer::new()
///     .agent("EchoAgent", |_name| EchoAgent)
///     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
#[must_use]
pub struct AgentServer {
    config: Config,
    kinds: HashMap<String, Arc<dyn Kind>>,
    before_connect: Option<BeforeConnect>,
    before_request: Option<BeforeRequest>,
    storage: Option<Storage>,
    cors: Option<Cors>,
    cluster: Option<Cluster>,
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
            before_request: None,
            storage: None,
            cors: None,
            cluster: None,
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
        let kind = KindOf::new(class_name, &kebab, factory);
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

    /// Most open WebSockets on the server; an upgrade beyond it gets HTTP
    /// 503. Defaults to [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Most instances in memory; past it idle instances are evicted, and
    /// when none is idle new ones are refused (HTTP 503, close 1013).
    /// Defaults to [`DEFAULT_MAX_INSTANCES`](crate::DEFAULT_MAX_INSTANCES).
    pub fn max_instances(mut self, max: usize) -> Self {
        self.config.max_instances = max;
        self
    }

    /// Frames queued for one client before it counts as behind (its
    /// instance then takes no input until it catches up). Defaults to
    /// [`DEFAULT_OUTBOUND_QUEUE`](crate::DEFAULT_OUTBOUND_QUEUE).
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.config.outbound_queue = frames;
        self
    }

    /// Bytes queued for one client before it counts as behind. Defaults to
    /// [`DEFAULT_OUTBOUND_QUEUE_BYTES`](crate::DEFAULT_OUTBOUND_QUEUE_BYTES) (8 MiB).
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.outbound_queue_bytes = bytes;
        self
    }

    /// How long a socket may take no bytes at all while frames wait for it
    /// before it is closed. Defaults to
    /// [`DEFAULT_SLOW_CONSUMER_TIMEOUT`](crate::DEFAULT_SLOW_CONSUMER_TIMEOUT) (10 s).
    pub fn slow_consumer_timeout(mut self, timeout: Duration) -> Self {
        self.config.slow_consumer_timeout = timeout;
        self
    }

    /// How long an instance without connections stays in memory. Defaults to
    /// [`DEFAULT_IDLE_TIMEOUT`](crate::DEFAULT_IDLE_TIMEOUT) (60 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Events queued per instance before sockets stop reading. Defaults to
    /// [`DEFAULT_INBOX_CAPACITY`](crate::DEFAULT_INBOX_CAPACITY). The
    /// messages one read of a socket brought are one event (up to 32 of
    /// them; each still its own turn); [`inbox_bytes`](Self::inbox_bytes)
    /// counts every message. (An instance working through a batch holds up
    /// to 64 more events, taken from the queue at once; the byte budget
    /// covers those too.)
    pub fn inbox_capacity(mut self, events: usize) -> Self {
        self.config.inbox_capacity = events;
        self
    }

    /// Bytes of messages queued per instance before sockets stop reading.
    /// Defaults to [`DEFAULT_INBOX_BYTES`](crate::DEFAULT_INBOX_BYTES) (8 MiB).
    pub fn inbox_bytes(mut self, bytes: usize) -> Self {
        self.config.inbox_bytes = bytes;
        self
    }

    /// Bytes read off all sockets and not yet taken by an instance; the
    /// socket that would pass it is closed with 1013. Defaults to
    /// [`DEFAULT_MAX_UNFINISHED_BYTES`](crate::DEFAULT_MAX_UNFINISHED_BYTES) (64 MiB).
    pub fn max_unfinished_bytes(mut self, bytes: usize) -> Self {
        self.config.max_unfinished_bytes = bytes;
        self
    }

    /// How long one message may take to arrive in all; past it the socket
    /// is closed with 1013. Defaults to
    /// [`DEFAULT_MESSAGE_TIMEOUT`](crate::DEFAULT_MESSAGE_TIMEOUT) (30 s).
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.config.message_timeout = timeout;
        self
    }

    /// How long a message being received may make no progress; past it the
    /// socket is closed with 1013. Defaults to
    /// [`DEFAULT_MESSAGE_IDLE_TIMEOUT`](crate::DEFAULT_MESSAGE_IDLE_TIMEOUT) (10 s).
    pub fn message_idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.message_idle_timeout = timeout;
        self
    }

    /// How long a socket may be silent before the server pings it; after
    /// two such intervals it is closed. Defaults to
    /// [`DEFAULT_PING_INTERVAL`](crate::DEFAULT_PING_INTERVAL) (30 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval;
        self
    }

    /// The largest state, as JSON, from a client or from
    /// [`set_state`](crate::AgentContext::set_state). Defaults to
    /// [`DEFAULT_MAX_STATE_BYTES`](crate::DEFAULT_MAX_STATE_BYTES) (2 MiB).
    pub fn max_state_bytes(mut self, bytes: usize) -> Self {
        self.config.max_state_bytes = bytes;
        self
    }

    /// How long the server keeps accepting after it was asked to stop, while
    /// `/readyz` already answers 503 (so a balancer that probes every few
    /// seconds moves new clients elsewhere first). Defaults to
    /// [`DEFAULT_DRAIN_DELAY`](crate::DEFAULT_DRAIN_DELAY) (0 s).
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.config.drain_delay = delay;
        self
    }

    /// How long a graceful shutdown may take before remaining sockets are
    /// dropped (counted after the drain delay). Defaults to
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`](crate::DEFAULT_SHUTDOWN_TIMEOUT) (10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// How long a client may take to send a request head. Defaults to
    /// [`DEFAULT_HEADER_READ_TIMEOUT`](crate::DEFAULT_HEADER_READ_TIMEOUT) (10 s).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// The largest request head; a larger one gets HTTP 431. At least 8 KiB.
    /// Defaults to [`DEFAULT_MAX_REQUEST_HEAD`](crate::DEFAULT_MAX_REQUEST_HEAD) (64 KiB).
    pub fn max_request_head(mut self, bytes: usize) -> Self {
        self.config.max_request_head = bytes.max(8192);
        self
    }

    /// Only pages from these origins (e.g. `https://app.example.com`) may
    /// open sockets: an upgrade with another `Origin` header gets HTTP 403.
    /// Requests without an `Origin` (not from a browser) are let through.
    /// By default every origin is allowed, as in the reference.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = Some(
            origins
                .into_iter()
                .map(|o| o.into().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        );
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

    /// A hook that runs before every plain HTTP request to an instance (the
    /// reference's `onBeforeRequest`), with the same contract as
    /// [`on_before_connect`](Self::on_before_connect): `Ok(request)` goes on
    /// to [`Agent::on_request`], `Err(response)` is the answer. Without it,
    /// the [`on_before_connect`](Self::on_before_connect) hook guards plain
    /// HTTP too (with the request's head), so one auth hook covers both.
    pub fn on_before_request<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(http::Request<Body>, Route) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<http::Request<Body>, Response>> + Send + 'static,
    {
        self.before_request = Some(Arc::new(move |req, route| Box::pin(hook(req, route))));
        self
    }

    /// CORS for plain HTTP to agents (e.g. `agentFetch` from a page on
    /// another origin): preflights are answered, and responses under the
    /// prefix get the headers. Off by default, as in the reference.
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Cluster mode: this server is one node of many on NATS JetStream
    /// ([`Cluster::connect`]). Every instance runs on exactly one node; a
    /// socket or request landing on another is forwarded to it; state and
    /// key-value data live in JetStream (the [`storage`](Self::storage)
    /// setting is not used, nor is SQL). See `docs/cluster.md`.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
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
        let config = Arc::new(self.config);
        if let Some(cluster) = &self.cluster {
            cluster.node.check_limits(&config);
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let registry = Registry::new(
            config.clone(),
            self.kinds,
            storage,
            shutdown.clone(),
            tracker.clone(),
            self.cluster.map(|c| c.node),
        );
        let sockets = SocketEnv {
            max_message: config.max_message_size,
            ping_interval: config.ping_interval,
            slow_consumer_timeout: config.slow_consumer_timeout,
            message_timeout: config.message_timeout,
            message_idle_timeout: config.message_idle_timeout,
            read_budget: ReadBudget::new(config.max_unfinished_bytes.max(config.max_message_size)),
        };
        Agents {
            server: Arc::new(Server {
                config,
                registry,
                before_connect: self.before_connect,
                before_request: self.before_request,
                cors: self.cors,
                sockets,
                open_sockets: AtomicUsize::new(0),
                ready: AtomicBool::new(false),
                shutdown,
                tracker,
            }),
        }
    }

    /// Serves the agents on `listener` until `shutdown` completes, then
    /// closes every socket with 1001 and waits (at most
    /// [`shutdown_timeout`](Self::shutdown_timeout)) for the instances to finish.
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

/// What the router and the sockets share.
struct Server {
    config: Arc<Config>,
    registry: Arc<Registry>,
    before_connect: Option<BeforeConnect>,
    before_request: Option<BeforeRequest>,
    cors: Option<Cors>,
    sockets: SocketEnv,
    open_sockets: AtomicUsize,
    /// Serving and not draining.
    ready: AtomicBool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A built server: hands out the router and controls shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Agents {
    server: Arc<Server>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("instances", &self.instance_count())
            .field("sockets", &self.socket_count())
            .finish()
    }
}

impl Server {
    /// Whether a connection's first request is one [`Agents::serve`]
    /// answers without `app`: a `GET` upgrade to a WebSocket, without a
    /// body, at `/<prefix>/<agent>/…` (the router's own route) for a
    /// registered agent.
    fn answers_directly(&self, head: &Head) -> bool {
        if head.method != http::Method::GET
            || !upgrade::is_upgrade(&head.headers)
            || head.headers.contains_key(header::CONTENT_LENGTH)
            || head.headers.contains_key(header::TRANSFER_ENCODING)
        {
            return false;
        }
        let mut rest = head.uri.path();
        for want in &self.config.prefix {
            match rest
                .strip_prefix('/')
                .and_then(|r| r.strip_prefix(want.as_str()))
            {
                Some(r) => rest = r,
                None => return false,
            }
        }
        let agent = rest
            .strip_prefix('/')
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        self.registry.kind(agent).is_some()
    }
}

impl Agents {
    /// The axum router answering `/<prefix>/…`; merge it into your app.
    /// Paths it does not own are left to your app (or its fallback).
    pub fn router(&self) -> Router {
        let base = format!("/{}", self.server.config.prefix.join("/"));
        let base = if base == "/" { String::new() } else { base };
        Router::new()
            .route(&format!("{base}/{{*rest}}"), any(handle))
            .with_state(self.server.clone())
    }

    /// Serves `app` (which should contain [`router`](Self::router)) on
    /// `listener` until `shutdown` completes, then shuts down: no new
    /// connections, 1001 to every socket, and back within
    /// [`shutdown_timeout`](AgentServer::shutdown_timeout) whatever the
    /// clients do. Request heads are bounded in size (431) and in time.
    ///
    /// A connection whose first request is a WebSocket upgrade to a
    /// registered agent (`/<prefix>/<agent>/<name>`) is answered here, not
    /// by `app`: the head is parsed, checked and answered (the same checks,
    /// hooks and refusals as [`router`](Self::router)'s) and the socket
    /// runs in the task that accepted it, which saves hyper's connection
    /// and a second task per socket. Layers of `app` therefore do not see
    /// agents' upgrades; put such checks in
    /// [`on_before_connect`](AgentServer::on_before_connect), or serve
    /// [`router`](Self::router) with your own loop (e.g. `axum::serve`),
    /// where every request goes through `app`. Every other request (plain
    /// HTTP, other paths, a later request on a kept-alive connection) goes
    /// to `app` through hyper.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The accept loop runs as a task of the runtime: awaited from
        // `#[tokio::main]`, this future runs on the main thread, not on a
        // worker, and every connection it accepted was handed across
        // threads (a context switch per connect on a busy core). Dropping
        // this future still stops it (the listener closes once the aborted
        // task is dropped, a moment later).
        use tracing::Instrument;
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread
        {
            // One thread: nothing to cross.
            return self.accept_loop(listener, app, shutdown).await;
        }
        let this = self.clone();
        let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            async move { this.accept_loop(listener, app, shutdown).await }.in_current_span(),
        ));
        match task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(std::io::Error::other(err)),
        }
    }

    async fn accept_loop(
        &self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let config = &self.server.config;
        // HTTP/1.1 only (WebSockets upgrade from it), so that an upgraded
        // socket is the plain `TcpStream` again (see `downcast` below).
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_request_head)
            .max_buf_size(config.max_request_head);
        let http = Arc::new(http);
        let stop = self.server.shutdown.clone();
        let connections = TaskTracker::new();
        tokio::pin!(shutdown);
        self.server.ready.store(true, Ordering::Release);
        // Set once asked to stop: accept on until then (the drain delay).
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            let drained = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let (stream, _peer) = tokio::select! {
                biased;
                _ = &mut shutdown, if drain_until.is_none() => {
                    // Not ready at once (balancers stop sending new
                    // clients), still accepting for the drain delay.
                    self.server.ready.store(false, Ordering::Release);
                    tracing::info!(drain_delay = ?config.drain_delay, "draining");
                    drain_until = Some(tokio::time::Instant::now() + config.drain_delay);
                    continue;
                }
                _ = drained => break,
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: wait, retry.
                        tracing::warn!(cause = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (http, app, stop) = (http.clone(), app.clone(), stop.clone());
            let server = self.server.clone();
            let task = async move {
                // The first request head is read here: an agent's upgrade
                // is answered and its socket run in this task; anything
                // else goes to hyper, with the bytes read put back.
                let mut stream = stream;
                let mut buf = BytesMut::new();
                let config = &server.config;
                let read = head::read_head(&mut stream, &mut buf, config.max_request_head);
                let read = tokio::select! {
                    biased;
                    _ = stop.cancelled() => None,
                    read = tokio::time::timeout(config.header_read_timeout, read) => Some(read),
                };
                let first = match read {
                    Some(Ok(Ok(first))) => first,
                    // Asked to stop in the middle of a head: hyper takes
                    // it, answers it and closes.
                    None if !buf.is_empty() => First::Other,
                    // Nothing sent yet when asked to stop, the head timed
                    // out (hyper drops such a connection too), or failed.
                    _ => return,
                };
                match first {
                    First::Head(head, len) if server.answers_directly(&head) => {
                        let read_ahead = buf.split_off(len).freeze();
                        drop(buf);
                        // Boxed: its state is gone once the socket runs.
                        let opened = Box::pin(upgrade_directly(&server, &mut stream, *head)).await;
                        if let Some((opening, _tracked)) = opened {
                            opening.run(stream, read_ahead).await;
                        }
                        return;
                    }
                    First::Head(..) | First::Other => {}
                    First::Closed => return,
                }
                drop(server);
                let io = TokioIo::new(Prefixed::new(buf.freeze(), stream));
                // Boxed: a socket's task is sized for the direct path.
                Box::pin(async move {
                    let service = TowerToHyperService::new(app);
                    let conn = http.serve_connection(io, service).with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                })
                .await
            };
            connections.spawn(task);
        }
        self.server.ready.store(false, Ordering::Release);
        drop(listener);
        connections.close();
        let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
        self.server.shutdown.cancel();
        if tokio::time::timeout_at(deadline, self.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out; dropping the remaining sockets");
        }
        // HTTP connections still reading a head or a body are dropped.
        let _ = tokio::time::timeout_at(deadline, connections.wait()).await;
        Ok(())
    }

    /// Closes every socket with 1001 `Server shutting down`, lets in-flight
    /// events finish, waits for every instance and socket to stop, and for
    /// every write to be durable.
    pub async fn shutdown(&self) {
        self.server.shutdown.cancel();
        self.server.tracker.close();
        self.server.tracker.wait().await;
        self.server.registry.storage().flush().await;
        self.server.registry.leave_cluster().await;
    }

    /// The number of instances in memory.
    pub fn instance_count(&self) -> usize {
        self.server.registry.instance_count()
    }

    /// The number of open WebSockets.
    pub fn socket_count(&self) -> usize {
        self.server.open_sockets.load(Ordering::Relaxed)
    }

    /// Whether the server takes agent traffic: serving, not draining, and
    /// its storage backend reachable.
    pub fn is_ready(&self) -> bool {
        self.server.ready.load(Ordering::Acquire)
            && !self.server.shutdown.is_cancelled()
            && self.server.registry.storage().backend().is_ready()
            && self.server.registry.cluster_ready()
    }

    /// The operators' endpoints, for an admin listener kept apart from
    /// agent traffic: `GET /healthz` (200 while the process runs),
    /// `GET /readyz` (200 when [`is_ready`](Self::is_ready), else 503:
    /// starting, draining, or the backend unreachable) and `GET /metrics`
    /// (what `render` returns, e.g. a Prometheus recorder's text).
    pub fn admin_router<F>(&self, render: F) -> Router
    where
        F: Fn() -> String + Send + Sync + 'static,
    {
        let agents = self.clone();
        let render = Arc::new(render);
        Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let ready = agents.is_ready();
                    async move {
                        if ready {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let body = render();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            body,
                        )
                    }
                }),
            )
    }
}

async fn handle(State(server): State<Arc<Server>>, request: Request) -> Response {
    let Some(cors) = &server.cors else {
        return route(&server, request).await;
    };
    if upgrade::is_upgrade(request.headers()) {
        return route(&server, request).await;
    }
    if let Some(preflight) = cors.preflight(request.method(), request.headers()) {
        return preflight;
    }
    let headers = request.headers().clone();
    let mut response = route(&server, request).await;
    cors.decorate(&headers, &mut response);
    response
}

async fn route(server: &Arc<Server>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let (kind, key) = match resolve(server, parts.uri.path()) {
        Ok(target) => target,
        Err((status, why)) => return upgrade::refuse(status, why),
    };
    if !upgrade::is_upgrade(&parts.headers) {
        let route = route_of(&kind, &key);
        let mut request = http::Request::from_parts(parts, body);
        if let Some(hook) = &server.before_request {
            match hook(request, route).await {
                Ok(r) => request = r,
                Err(response) => return response,
            }
        } else if let Some(hook) = &server.before_connect {
            let (parts, body) = request.into_parts();
            let info = RequestInfo::new(
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            );
            if let Err(response) = hook(info, route).await {
                return response;
            }
            request = http::Request::from_parts(parts, body);
        }
        return server.registry.request(&kind, &key, request).await;
    }
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    };
    let (response, opening, on_upgrade) = match open(server, kind, key, head, on_upgrade).await {
        Ok(opened) => opened,
        Err(refusal) => return refusal,
    };
    server.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => opening.run(parts.io.into_inner(), parts.read_buf).await,
                Err(upgraded) => match upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() {
                    // From `serve`, which read the connection's first head.
                    Ok(parts) => {
                        let (unread, stream) = parts.io.into_inner().into_parts();
                        let read_ahead = if unread.is_empty() {
                            parts.read_buf
                        } else {
                            [parts.read_buf, unread].concat().into()
                        };
                        opening.run(stream, read_ahead).await
                    }
                    // Another loop's stream; boxed, so it costs the task
                    // no room.
                    Err(upgraded) => {
                        Box::pin(opening.run(TokioIo::new(upgraded), Bytes::new())).await
                    }
                },
            },
            Err(err) => tracing::debug!(cause = %err, "upgrade failed"),
        }
    });
    response
}

/// The agent type and instance a path names (after the prefix), or the
/// refusal: 404 when the path is not an agent's, 400 for an unknown agent
/// or an overlong name.
fn resolve(server: &Server, path: &str) -> Result<(Arc<dyn Kind>, InstanceKey), upgrade::Refusal> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    for want in &server.config.prefix {
        if segments.next() != Some(want.as_str()) {
            return Err((StatusCode::NOT_FOUND, "Not found"));
        }
    }
    let (Some(agent), Some(name)) = (segments.next(), segments.next()) else {
        return Err((StatusCode::NOT_FOUND, "Not found"));
    };
    let Some(kind) = server.registry.kind(agent).cloned() else {
        tracing::warn!(agent = %Trunc(agent), "request for an unknown agent");
        return Err((StatusCode::BAD_REQUEST, "Invalid request"));
    };
    if name.len() > MAX_NAME_LEN {
        return Err((StatusCode::BAD_REQUEST, "Invalid request"));
    }
    let key = InstanceKey {
        agent: agent.into(),
        name: name.into(),
    };
    Ok((kind, key))
}

/// What the hooks are told a request is for.
fn route_of(kind: &Arc<dyn Kind>, key: &InstanceKey) -> Route {
    Route {
        class_name: kind.class_name().clone(),
        agent: key.agent.clone(),
        name: key.name.clone(),
    }
}

/// Checks a WebSocket request for an instance — its origin, the
/// [`on_before_connect`](AgentServer::on_before_connect) hook, the
/// handshake, that it can be upgraded (`upgrade`: how the socket will be
/// had), the socket limit — and opens its connection: the `101` answer and
/// what runs the socket once it is out. Or the refusal to answer instead.
async fn open<U>(
    server: &Arc<Server>,
    kind: Arc<dyn Kind>,
    key: InstanceKey,
    head: Head,
    upgrade: Option<U>,
) -> Result<(Response, Opening, U), Response> {
    if let Some(allowed) = &server.config.allowed_origins {
        if let Some(origin) = head.headers.get(header::ORIGIN) {
            let origin = origin
                .to_str()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_ascii_lowercase();
            if !allowed.contains(&origin) {
                tracing::info!(origin = %Trunc(&origin), "upgrade from a refused origin");
                return Err(upgrade::refuse(StatusCode::FORBIDDEN, "Origin not allowed"));
            }
        }
    }
    // Worked out on the request as it came; told only after the hook,
    // which may refuse first.
    let answer = upgrade::accept(&head.method, &head.headers);
    let mut info = RequestInfo::new(head.method, head.uri, head.headers);
    if let Some(hook) = &server.before_connect {
        info = hook(info, route_of(&kind, &key)).await?;
    }
    let response = answer.map_err(|(status, why)| upgrade::refuse(status, why))?;
    let Some(upgrade) = upgrade else {
        return Err(upgrade::refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ));
    };
    // Counted from here, so that a burst of upgrades cannot overshoot.
    let open = server.open_sockets.fetch_add(1, Ordering::AcqRel);
    let counted = Counted(server.clone());
    if open >= server.config.max_connections || server.shutdown.is_cancelled() {
        drop(counted);
        crate::metrics::refused(Limit::Connections);
        tracing::warn!(open, "refusing an upgrade: too many connections");
        return Err(upgrade::refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many connections",
        ));
    }
    let id = info
        .query("_pk")
        .filter(|s| !s.is_empty())
        .map_or_else(nanoid, str::to_owned);
    let target = info
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let conn = server.registry.new_connection(id, target);
    let opening = Opening {
        counted,
        conn,
        kind,
        key,
        info: Box::new(info),
    };
    Ok((response, opening, upgrade))
}

/// One of the server's open sockets, from its upgrade's acceptance to its
/// end: uncounted when dropped.
struct Counted(Arc<Server>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted upgrade, whose socket runs once the `101` is out. Small:
/// the socket's task keeps it for the socket's life.
struct Opening {
    counted: Counted,
    conn: Connection,
    kind: Arc<dyn Kind>,
    key: InstanceKey,
    /// Handed to the instance when the socket registers.
    info: Box<RequestInfo>,
}

impl Opening {
    /// Runs the socket to its end and tells the instance about it.
    async fn run<T: socket::Transport>(self, io: T, read_ahead: Bytes) {
        let server = &self.counted.0;
        let conn_key = self.conn.key();
        let metrics = SocketMetrics::open(self.kind.metrics());
        // Boxed: its state (large in cluster mode) is freed once
        // registered instead of taking room in the socket's task for its
        // whole life.
        let register = Box::pin(server.registry.connect(
            &self.kind,
            &self.key,
            self.conn.clone(),
            self.info,
        ));
        let ended = socket::run(
            io,
            read_ahead,
            self.conn,
            metrics,
            &server.sockets,
            register,
        )
        .await;
        if let Some((link, close)) = ended {
            link.closed(conn_key, close).await;
        }
    }
}

/// Answers a WebSocket upgrade that [`Agents::serve`] read itself: the
/// socket to run (tracked from its acceptance, as one upgraded by hyper
/// is: a shutdown from here on waits for it), or `None` once a refusal
/// was written.
async fn upgrade_directly(
    server: &Arc<Server>,
    stream: &mut TcpStream,
    head: Head,
) -> Option<(Opening, TaskTrackerToken)> {
    let opened = match resolve(server, head.uri.path()) {
        Ok((kind, key)) => open(server, kind, key, head, Some(())).await,
        Err((status, why)) => Err(upgrade::refuse(status, why)),
    };
    match opened {
        Ok((response, opening, ())) => {
            let tracked = server.tracker.token();
            head::write_response(stream, response).await.ok()?;
            Some((opening, tracked))
        }
        Err(refusal) => {
            if head::write_response(stream, refusal).await.is_ok() {
                head::close_after_refusal(stream).await;
            }
            None
        }
    }
}

/// A 21-character URL-safe random id, like the reference's `nanoid()`.
fn nanoid() -> String {
    use rand::Rng;
    const ALPHABET: &[u8; 64] = b"useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict";
    let mut rng = rand::rng();
    (0..21)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoid_shape() {
        let id = nanoid();
        assert_eq!(id.len(), 21);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert_ne!(id, nanoid());
    }
}
