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

use super::actor::{self, ActorEnv, Command, InstanceHandle};
use super::InstanceKey;
use crate::agent::{not_implemented, Agent, DefaultOnRequest};
use crate::config::Config;
use crate::connection::Connection;
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
    /// Makes the agent for a new instance, and its actor: the handle and
    /// the task to spawn.
    fn start(&self, env: ActorEnv) -> (InstanceHandle, BoxFuture<()>);
}

/// [`Kind`] for agent type `A` made by factory `F`.
pub(crate) struct KindOf<A, F> {
    class_name: Arc<str>,
    factory: F,
    serves_http: AtomicBool,
    _agent: PhantomData<fn() -> A>,
}

impl<A, F> KindOf<A, F> {
    pub(crate) fn new(class_name: &str, factory: F) -> Self {
        KindOf {
            class_name: class_name.into(),
            factory,
            serves_http: AtomicBool::new(true),
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
    instances: Mutex<HashMap<InstanceKey, InstanceHandle>>,
    storage: Storage,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    next_generation: AtomicU64,
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
    ) -> Self {
        Registry {
            config,
            kinds,
            instances: Mutex::new(HashMap::new()),
            storage,
            shutdown,
            tracker,
            next_generation: AtomicU64::new(1),
        }
    }

    /// The agent type registered at `kebab`.
    pub(crate) fn kind(&self, kebab: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.get(kebab)
    }

    fn instances(&self) -> MutexGuard<'_, HashMap<InstanceKey, InstanceHandle>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running instance for `key`, started if needed, evicting the
    /// longest-idle instance when [`max_instances`](crate::AgentServer::max_instances)
    /// are running.
    fn instance(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
    ) -> Result<InstanceHandle, Unavailable> {
        let mut instances = self.instances();
        if let Some(handle) = instances.get(key) {
            return Ok(handle.clone());
        }
        if self.shutdown.is_cancelled() {
            return Err(Unavailable::ShuttingDown);
        }
        if instances.len() >= self.config.max_instances {
            let oldest = instances
                .iter()
                .filter_map(|(k, h)| Some((h.control.idle_since()?, k)))
                .min_by_key(|(since, _)| *since)
                .map(|(_, k)| k.clone());
            let Some(victim) = oldest.and_then(|k| instances.remove(&k)) else {
                tracing::warn!(
                    max = self.config.max_instances,
                    "too many instances; refusing a new one"
                );
                return Err(Unavailable::Full);
            };
            victim.control.evict.cancel();
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let env = ActorEnv {
            key: key.clone(),
            config: self.config.clone(),
            storage: self.storage.instance(&key.agent, &key.name),
            shutdown: self.shutdown.clone(),
            generation,
        };
        let (handle, run) = kind.start(env);
        instances.insert(key.clone(), handle.clone());
        // The instance leaves the map when its actor ends (unless a newer
        // generation replaced it by then).
        let (registry, key) = (self.clone(), key.clone());
        self.tracker.spawn(async move {
            run.await;
            registry.remove(&key, generation);
        });
        Ok(handle)
    }

    /// Removes an instance's entry if it is still that generation's.
    fn remove(&self, key: &InstanceKey, generation: u64) {
        let mut instances = self.instances();
        if instances
            .get(key)
            .is_some_and(|h| h.generation == generation)
        {
            instances.remove(key);
        }
    }

    /// The number of running instances.
    pub(crate) fn instance_count(&self) -> usize {
        self.instances().len()
    }

    /// Registers a socket with its instance. Returns the handle when the
    /// instance accepted it; `None` when it refused (it has then queued a
    /// close) or the server is shutting down.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        conn: Connection,
        request: RequestInfo,
    ) -> Option<InstanceHandle> {
        for _ in 0..CONNECT_ATTEMPTS {
            let handle = match self.instance(kind, key) {
                Ok(handle) => handle,
                Err(why) => {
                    conn.close(why.close_code(), why.reason());
                    return None;
                }
            };
            let (ack, accepted) = oneshot::channel();
            let cmd = Command::Connect {
                conn: conn.clone(),
                request: request.clone(),
                ack,
            };
            if handle.send(cmd).await.is_err() {
                self.remove(key, handle.generation);
                continue;
            }
            match accepted.await {
                Ok(true) => return Some(handle),
                Ok(false) => return None,
                // Bounced by an instance that was stopping: try a fresh one.
                Err(_) => self.remove(key, handle.generation),
            }
        }
        conn.close(1013, "Try again later");
        None
    }

    /// Hands a plain HTTP request to its instance.
    pub(crate) async fn request(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        request: http::Request<Body>,
    ) -> Response {
        if !kind.serves_http().load(Ordering::Relaxed) {
            return not_implemented();
        }
        let mut request = Some(request);
        for _ in 0..CONNECT_ATTEMPTS {
            let handle = match self.instance(kind, key) {
                Ok(handle) => handle,
                Err(why) => {
                    return (StatusCode::SERVICE_UNAVAILABLE, why.reason()).into_response();
                }
            };
            let (reply, response) = oneshot::channel();
            let Some(req) = request.take() else { break };
            match handle
                .send(Command::Request {
                    request: req,
                    reply,
                })
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
                    self.remove(key, handle.generation);
                    if let Command::Request { request: r, .. } = err.0 {
                        request = Some(r);
                    }
                }
            }
        }
        (StatusCode::SERVICE_UNAVAILABLE, "Try again later").into_response()
    }
}

/// Why no instance could be had.
#[derive(Debug, Clone, Copy)]
enum Unavailable {
    /// [`max_instances`](crate::AgentServer::max_instances) are running and none is idle.
    Full,
    ShuttingDown,
}

impl Unavailable {
    fn close_code(self) -> u16 {
        match self {
            Unavailable::Full => 1013,
            Unavailable::ShuttingDown => 1001,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Unavailable::Full => "Too many instances",
            Unavailable::ShuttingDown => "Server shutting down",
        }
    }
}
