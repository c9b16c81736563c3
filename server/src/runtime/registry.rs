//! The instance registry: `(agent, name)` → running instance, started on
//! first use, and the registered agent types it starts them from.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::{
    self, ActorEnv, Admit, CloseInfo, Command, Control, Event, Fence, InstanceHandle,
};
use super::cluster::{Node, Owner, RemoteLink, Runtime};
use super::InstanceKey;
use crate::agent::{not_implemented, Agent, DefaultOnRequest};
use crate::config::Config;
use crate::connection::{Connection, QueueLimits};
use crate::metrics::{AgentMetrics, Limit};
use crate::request::RequestInfo;
use crate::storage::Storage;

/// How often a request is offered to a fresh instance when the one it found
/// was stopping at that moment.
const CONNECT_ATTEMPTS: usize = 3;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A registered agent type, with its type erased.
pub(crate) trait Kind: Send + Sync {
    fn class_name(&self) -> &Arc<str>;
    /// Whether the type may implement [`Agent::on_request`]: true until a
    /// response of the default implementation showed it does not.
    fn serves_http(&self) -> &AtomicBool;
    /// Metrics shared by the type's instances.
    fn metrics(&self) -> &Arc<AgentMetrics>;
    /// Makes the agent for a new instance, and its actor: the handle and
    /// the task to spawn.
    fn start(&self, env: ActorEnv) -> (InstanceHandle, BoxFuture<()>);
}

/// [`Kind`] for agent type `A` made by factory `F`.
pub(crate) struct KindOf<A, F> {
    class_name: Arc<str>,
    factory: F,
    serves_http: AtomicBool,
    metrics: Arc<AgentMetrics>,
    _agent: PhantomData<fn() -> A>,
}

impl<A, F> KindOf<A, F> {
    /// The type registered as `class_name` at URL segment `kebab`.
    pub(crate) fn new(class_name: &str, kebab: &str, factory: F) -> Self {
        KindOf {
            class_name: class_name.into(),
            factory,
            serves_http: AtomicBool::new(true),
            metrics: Arc::new(AgentMetrics::new(kebab)),
            _agent: PhantomData,
        }
    }
}

impl<A, F> Kind for KindOf<A, F>
where
    A: Agent,
    F: Fn(&str) -> A + Send + Sync + 'static,
{
    fn class_name(&self) -> &Arc<str> {
        &self.class_name
    }

    fn serves_http(&self) -> &AtomicBool {
        &self.serves_http
    }

    fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.metrics
    }

    fn start(&self, env: ActorEnv) -> (InstanceHandle, BoxFuture<()>) {
        let agent = (self.factory)(&env.key.name);
        let (handle, run) = actor::start(env, agent);
        (handle, Box::pin(run))
    }
}

/// Running instances and how to start more.
pub(crate) struct Registry {
    config: Arc<Config>,
    /// Agent types by kebab-case name.
    kinds: HashMap<String, Arc<dyn Kind>>,
    /// A std mutex: held only to look up, insert or remove, never across an
    /// `.await`, and not on the per-message path.
    instances: Mutex<Instances>,
    storage: Storage,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    next_generation: AtomicU64,
    next_key: AtomicU64,
    /// This node in a cluster, if in cluster mode.
    cluster: Option<Arc<Node>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("agents", &self.kinds.keys().collect::<Vec<_>>())
            .field("instances", &self.instance_count())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(
        config: Arc<Config>,
        kinds: HashMap<String, Arc<dyn Kind>>,
        storage: Storage,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        cluster: Option<Arc<Node>>,
    ) -> Arc<Self> {
        let storage = cluster
            .as_ref()
            .map_or(storage, |node| node.storage.clone());
        let registry = Arc::new(Registry {
            config,
            kinds,
            instances: Mutex::new(Instances::default()),
            storage,
            shutdown,
            tracker,
            next_generation: AtomicU64::new(1),
            next_key: AtomicU64::new(1),
            cluster,
        });
        if let Some(node) = &registry.cluster {
            let runtime: Arc<dyn Runtime> = registry.clone();
            node.attach(Arc::downgrade(&runtime));
        }
        registry
    }

    /// A key for a new connection, unique on this server.
    pub(crate) fn next_connection_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// A connection for a socket with client id `id`, opened at `uri`.
    pub(crate) fn new_connection(&self, id: String, uri: String) -> Connection {
        let limits = QueueLimits {
            frames: self.config.outbound_queue.max(1),
            bytes: self.config.outbound_queue_bytes.max(1),
        };
        Connection::new(self.next_connection_key(), id, uri, limits)
    }

    /// Leaves the cluster, if in one (after every instance stopped).
    pub(crate) async fn leave_cluster(&self) {
        if let Some(node) = &self.cluster {
            node.leave().await;
        }
    }

    /// Whether the node takes traffic (in a cluster: holds a valid lease).
    pub(crate) fn cluster_ready(&self) -> bool {
        self.cluster.as_ref().is_none_or(|node| node.is_ready())
    }

    /// The storage every instance writes to.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The agent type registered at `kebab`.
    pub(crate) fn kind(&self, kebab: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.get(kebab)
    }

    fn instances(&self) -> MutexGuard<'_, Instances> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running instance for `key`, started if needed, evicting the
    /// longest-idle instance when [`max_instances`](crate::AgentServer::max_instances)
    /// are running. While an earlier incarnation of `key` is still stopping
    /// the answer is to wait for it: one instance per key runs at a time.
    fn instance(self: &Arc<Self>, kind: &Arc<dyn Kind>, key: &InstanceKey, token: u64) -> Found {
        let mut map = self.instances();
        if let Some(handle) = map.running.get(key) {
            return if handle.control.evict.is_cancelled() {
                Found::Wait(handle.control.clone())
            } else {
                Found::Running(handle.clone())
            };
        }
        if let Some(control) = map.stopping.get(key) {
            return Found::Wait(control.clone());
        }
        if self.shutdown.is_cancelled() {
            return Found::Unavailable(Unavailable::ShuttingDown);
        }
        if token == 0 && self.cluster.is_some() {
            // It ran here a moment ago and stopped since: its owner must be
            // looked up again (the client retries).
            return Found::Unavailable(Unavailable::Retry);
        }
        if map.running.len() >= self.config.max_instances {
            let oldest = map
                .running
                .iter()
                .filter_map(|(k, h)| Some((h.control.idle_since()?, k)))
                .min_by_key(|(since, _)| *since)
                .map(|(_, k)| k.clone());
            let Some((victim_key, victim)) = oldest.and_then(|k| map.running.remove_entry(&k))
            else {
                tracing::warn!(
                    max = self.config.max_instances,
                    "too many instances; refusing a new one"
                );
                crate::metrics::refused(Limit::Instances);
                return Found::Unavailable(Unavailable::Full);
            };
            victim.control.evict.cancel();
            map.stopping.insert(victim_key, victim.control);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let env = ActorEnv {
            key: key.clone(),
            config: self.config.clone(),
            storage: self.storage.instance(
                &key.agent,
                &key.name,
                token,
                self.config.max_state_bytes,
            ),
            shutdown: self.shutdown.clone(),
            generation,
            metrics: kind.metrics().clone(),
            fence: self.cluster.as_ref().map(|node| Fence {
                token: node.fence().child_token(),
                node: node.clone(),
            }),
        };
        let (handle, run) = kind.start(env);
        map.running.insert(key.clone(), handle.clone());
        let (registry, key, control) = (self.clone(), key.clone(), handle.control.clone());
        self.tracker.spawn(async move {
            run.await;
            registry.finished(&key, generation, &control);
        });
        Found::Running(handle)
    }

    /// Where `key` is served: here (with the incarnation's fencing token,
    /// 0 outside a cluster or when it already runs here), or on its owner.
    async fn route(&self, key: &InstanceKey) -> Result<Route, ()> {
        let Some(node) = &self.cluster else {
            return Ok(Route::Here(0));
        };
        // Running here means owned here (a lost lease stops them all).
        if self.runs(key) {
            return Ok(Route::Here(0));
        }
        match node.owner(key).await {
            Ok(Owner::Me(token)) => Ok(Route::Here(token)),
            Ok(Owner::Node(owner)) => Ok(Route::Node(node.clone(), owner)),
            Err(err) => {
                tracing::warn!(%err, "cannot route in the cluster");
                Err(())
            }
        }
    }

    /// Whether `key` runs here and is not on its way out (its token is
    /// then not needed: it is only used to start an instance).
    fn runs(&self, key: &InstanceKey) -> bool {
        self.instances()
            .running
            .get(key)
            .is_some_and(|h| !h.control.evict.is_cancelled())
    }

    /// An instance's actor ended: it leaves the map, and whoever waits for
    /// its key may start the next incarnation.
    fn finished(&self, key: &InstanceKey, generation: u64, control: &Arc<Control>) {
        let mut map = self.instances();
        if map
            .running
            .get(key)
            .is_some_and(|h| h.generation == generation)
        {
            map.running.remove(key);
        }
        if map
            .stopping
            .get(key)
            .is_some_and(|c| Arc::ptr_eq(c, control))
        {
            map.stopping.remove(key);
        }
        drop(map);
        control.finished.cancel();
    }

    /// Waits (bounded) for a stopping incarnation to end.
    async fn wait_for(&self, control: &Control) {
        let _ =
            tokio::time::timeout(self.config.shutdown_timeout, control.finished.cancelled()).await;
    }

    /// The number of running instances.
    pub(crate) fn instance_count(&self) -> usize {
        self.instances().running.len()
    }

    /// Registers a socket with its instance — here, or (cluster mode) on
    /// the node that owns it. Returns the link when the instance accepted
    /// it; `None` when it refused (it has then queued a close) or the
    /// server is shutting down.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        conn: Connection,
        request: Box<RequestInfo>,
    ) -> Option<Link> {
        let token = match self.route(key).await {
            Ok(Route::Here(token)) => token,
            Ok(Route::Node(node, owner)) => {
                return node
                    .open_remote(owner, key, &conn, &request)
                    .await
                    .map(Link::Remote);
            }
            Err(()) => {
                conn.close(1013, "Try again later");
                return None;
            }
        };
        self.connect_here(kind, key, token, conn, request)
            .await
            .map(Link::Local)
    }

    /// Registers a socket with the instance `key` on this node.
    async fn connect_here(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        token: u64,
        conn: Connection,
        request: Box<RequestInfo>,
    ) -> Option<InstanceHandle> {
        for _ in 0..CONNECT_ATTEMPTS {
            let handle = match self.instance(kind, key, token) {
                Found::Running(handle) => handle,
                Found::Wait(control) => {
                    self.wait_for(&control).await;
                    continue;
                }
                Found::Unavailable(why) => {
                    conn.close(why.close_code(), why.reason());
                    return None;
                }
            };
            let (ack, accepted) = oneshot::channel();
            let cmd = Command::Event(Event::Connect {
                conn: conn.clone(),
                request: request.clone(),
                ack,
            });
            if handle.send(cmd).await.is_err() {
                self.wait_for(&handle.control).await;
                continue;
            }
            match accepted.await {
                Ok(true) => return Some(handle),
                Ok(false) => return None,
                // Bounced by an instance that was stopping: try its next
                // incarnation once it is gone.
                Err(_) => self.wait_for(&handle.control).await,
            }
        }
        conn.close(1013, "Try again later");
        None
    }

    /// Hands a plain HTTP request to its instance — here, or on the node
    /// that owns it.
    pub(crate) async fn request(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        request: http::Request<Body>,
    ) -> Response {
        if !kind.serves_http().load(Ordering::Relaxed) {
            return not_implemented();
        }
        let token = match self.route(key).await {
            Ok(Route::Here(token)) => token,
            Ok(Route::Node(node, owner)) => {
                return node
                    .http_remote(&owner, key, request, self.config.max_message_size)
                    .await;
            }
            Err(()) => return (StatusCode::SERVICE_UNAVAILABLE, "Try again later").into_response(),
        };
        self.request_here(kind, key, token, request).await
    }

    /// Serves a plain HTTP request with the instance `key` on this node.
    async fn request_here(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        token: u64,
        request: http::Request<Body>,
    ) -> Response {
        let mut request = Some(request);
        for _ in 0..CONNECT_ATTEMPTS {
            let handle = match self.instance(kind, key, token) {
                Found::Running(handle) => handle,
                Found::Wait(control) => {
                    self.wait_for(&control).await;
                    continue;
                }
                Found::Unavailable(why) => {
                    return (StatusCode::SERVICE_UNAVAILABLE, why.reason()).into_response();
                }
            };
            let (reply, response) = oneshot::channel();
            let Some(req) = request.take() else { break };
            match handle
                .send(Command::Event(Event::Request {
                    request: Box::new(req),
                    reply,
                }))
                .await
            {
                Ok(()) => {
                    let response = response.await.unwrap_or_else(|_| {
                        (StatusCode::INTERNAL_SERVER_ERROR, "Instance stopped").into_response()
                    });
                    if response.extensions().get::<DefaultOnRequest>().is_some() {
                        // This type has no on_request: answer it without
                        // instances from now on.
                        kind.serves_http().store(false, Ordering::Relaxed);
                    }
                    return response;
                }
                Err(err) => {
                    self.wait_for(&handle.control).await;
                    if let Command::Event(Event::Request { request: r, .. }) = err.0 {
                        request = Some(*r);
                    }
                }
            }
        }
        (StatusCode::SERVICE_UNAVAILABLE, "Try again later").into_response()
    }
}

/// Where a socket's messages go: an instance here, or its owner elsewhere.
#[derive(Debug)]
pub(crate) enum Link {
    Local(InstanceHandle),
    Remote(RemoteLink),
}

impl Link {
    /// Offers a client message (see [`InstanceHandle::try_admit`]).
    pub(crate) fn admit(&mut self, key: u64, message: crate::message::Message) -> Admit {
        match self {
            Link::Local(handle) => handle.try_admit(key, message),
            Link::Remote(remote) => remote.admit(message),
        }
    }

    /// Offers client messages read together, in order, as one event.
    pub(crate) fn admit_many(&mut self, key: u64, messages: Vec<crate::message::Message>) -> Admit {
        match self {
            Link::Local(handle) => handle.try_admit_many(key, messages),
            Link::Remote(remote) => remote.admit_many(messages),
        }
    }

    /// The socket `key` ended: tells its instance how.
    pub(crate) async fn closed(self, key: u64, info: CloseInfo) {
        match self {
            Link::Local(handle) => {
                let _ = handle
                    .send(Command::Event(Event::Closed { key, info }))
                    .await;
            }
            Link::Remote(remote) => remote.closed(info).await,
        }
    }
}

impl Runtime for Registry {
    fn connect_local(
        self: Arc<Self>,
        key: InstanceKey,
        token: u64,
        conn: Connection,
        request: RequestInfo,
    ) -> BoxFuture<Option<InstanceHandle>> {
        Box::pin(async move {
            let Some(kind) = self.kind(&key.agent).cloned() else {
                conn.close(1011, "Unknown agent");
                return None;
            };
            self.connect_here(&kind, &key, token, conn, Box::new(request))
                .await
        })
    }

    fn request_local(
        self: Arc<Self>,
        key: InstanceKey,
        token: u64,
        request: http::Request<Body>,
    ) -> BoxFuture<Response> {
        Box::pin(async move {
            let Some(kind) = self.kind(&key.agent).cloned() else {
                return (StatusCode::BAD_REQUEST, "Invalid request").into_response();
            };
            if !kind.serves_http().load(Ordering::Relaxed) {
                return not_implemented();
            }
            self.request_here(&kind, &key, token, request).await
        })
    }

    fn new_connection(&self, id: String, uri: String) -> Connection {
        Registry::new_connection(self, id, uri)
    }

    fn max_message(&self) -> usize {
        self.config.max_message_size
    }
}

/// Where an instance is served.
enum Route {
    /// Here, with this fencing token.
    Here(u64),
    /// On another node.
    Node(Arc<Node>, Arc<str>),
}

/// What looking up an instance found.
enum Found {
    Running(InstanceHandle),
    /// An earlier incarnation is still stopping: wait for it, then retry.
    Wait(Arc<Control>),
    Unavailable(Unavailable),
}

/// Running instances, and evicted ones still stopping.
#[derive(Default)]
struct Instances {
    running: HashMap<InstanceKey, InstanceHandle>,
    stopping: HashMap<InstanceKey, Arc<Control>>,
}

/// Why no instance could be had.
#[derive(Debug, Clone, Copy)]
enum Unavailable {
    /// [`max_instances`](crate::AgentServer::max_instances) are running and none is idle.
    Full,
    ShuttingDown,
    /// Cluster mode: the instance stopped here meanwhile; ask again.
    Retry,
}

impl Unavailable {
    fn close_code(self) -> u16 {
        match self {
            Unavailable::Full | Unavailable::Retry => 1013,
            Unavailable::ShuttingDown => 1001,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Unavailable::Full => "Too many instances",
            Unavailable::ShuttingDown => "Server shutting down",
            Unavailable::Retry => "Try again later",
        }
    }
}
