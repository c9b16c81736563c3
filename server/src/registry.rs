//! The instance registry: `(agent, name)` → running actor, spawned on first
//! use, plus everything the server shares across requests.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actor::{self, AgentHandle, Command};
use crate::agent::Agent;
use crate::config::Config;
use crate::connection::Connection;
use crate::request::RequestInfo;
use crate::storage::Storage;

/// Identifies one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct InstanceKey {
    /// Kebab-case agent name.
    pub(crate) agent: Arc<str>,
    /// Raw instance name.
    pub(crate) name: Arc<str>,
}

/// Which agent and instance a request is for; given to
/// [`on_before_connect`](crate::AgentServer::on_before_connect).
#[derive(Debug, Clone)]
pub struct Route {
    /// The class name the agent was registered under, e.g. `ChatAgent`.
    pub class_name: Arc<str>,
    /// Its kebab-case URL segment, e.g. `chat-agent`.
    pub agent: Arc<str>,
    /// The instance name, raw as in the URL.
    pub name: Arc<str>,
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type BeforeConnect =
    Arc<dyn Fn(RequestInfo, Route) -> BoxFuture<Result<RequestInfo, Response>> + Send + Sync>;

/// A registered agent type, with its type erased.
pub(crate) trait Kind: Send + Sync {
    fn class_name(&self) -> &Arc<str>;
    fn spawn(&self, shared: &Arc<Shared>, key: InstanceKey, generation: u64) -> AgentHandle;
}

pub(crate) struct KindOf<A, F> {
    pub(crate) class_name: Arc<str>,
    pub(crate) factory: F,
    pub(crate) _agent: PhantomData<fn() -> A>,
}

impl<A, F> Kind for KindOf<A, F>
where
    A: Agent,
    F: Fn(&str) -> A + Send + Sync + 'static,
{
    fn class_name(&self) -> &Arc<str> {
        &self.class_name
    }

    fn spawn(&self, shared: &Arc<Shared>, key: InstanceKey, generation: u64) -> AgentHandle {
        let agent = (self.factory)(&key.name);
        actor::spawn(shared, key, agent, generation)
    }
}

/// State shared by the router, the socket tasks and the actors.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Agent types by kebab-case name.
    pub(crate) kinds: HashMap<String, Arc<dyn Kind>>,
    /// Running instances. A std mutex: it is held only to look up, insert or
    /// remove, never across an `.await`, and it is not on the per-message path.
    instances: Mutex<HashMap<InstanceKey, AgentHandle>>,
    pub(crate) before_connect: Option<BeforeConnect>,
    pub(crate) storage: Storage,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    next_key: AtomicU64,
    next_generation: AtomicU64,
}

/// How often a socket is offered to a fresh instance when the one it found
/// was being evicted at that moment.
const CONNECT_ATTEMPTS: usize = 3;

impl Shared {
    pub(crate) fn new(
        config: Config,
        kinds: HashMap<String, Arc<dyn Kind>>,
        before_connect: Option<BeforeConnect>,
        storage: Storage,
    ) -> Self {
        Shared {
            storage,
            config,
            kinds,
            instances: Mutex::new(HashMap::new()),
            before_connect,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_key: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_connection_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// The running instance for `key`, started if needed; `None` once the
    /// server is shutting down.
    fn instance(self: &Arc<Self>, kind: &Arc<dyn Kind>, key: &InstanceKey) -> Option<AgentHandle> {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = instances.get(key) {
            return Some(handle.clone());
        }
        if self.shutdown.is_cancelled() {
            return None;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let handle = kind.spawn(self, key.clone(), generation);
        instances.insert(key.clone(), handle.clone());
        Some(handle)
    }

    /// Removes an instance's entry if it is still that generation's.
    pub(crate) fn remove_instance(&self, key: &InstanceKey, generation: u64) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if instances
            .get(key)
            .is_some_and(|h| h.generation == generation)
        {
            instances.remove(key);
        }
    }

    /// The number of running instances.
    pub(crate) fn instance_count(&self) -> usize {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
    ) -> Option<AgentHandle> {
        for _ in 0..CONNECT_ATTEMPTS {
            let Some(handle) = self.instance(kind, key) else {
                break;
            };
            let (ack, accepted) = oneshot::channel();
            let cmd = Command::Connect {
                conn: conn.clone(),
                request: request.clone(),
                ack,
            };
            if handle.send(cmd).await.is_err() {
                self.remove_instance(key, handle.generation);
                continue;
            }
            match accepted.await {
                Ok(true) => return Some(handle),
                Ok(false) => return None,
                // Bounced by an instance that was stopping: try a fresh one.
                Err(_) => self.remove_instance(key, handle.generation),
            }
        }
        conn.close(1001, "Server shutting down");
        None
    }

    /// Hands a plain HTTP request to its instance.
    pub(crate) async fn request(
        self: &Arc<Self>,
        kind: &Arc<dyn Kind>,
        key: &InstanceKey,
        request: http::Request<Body>,
    ) -> Response {
        let mut request = Some(request);
        for _ in 0..CONNECT_ATTEMPTS {
            let Some(handle) = self.instance(kind, key) else {
                break;
            };
            let (reply, response) = oneshot::channel();
            let cmd = Command::Request {
                request: request.take().expect("request present"),
                reply,
            };
            match handle.send(cmd).await {
                Ok(()) => {
                    return response.await.unwrap_or_else(|_| {
                        (StatusCode::INTERNAL_SERVER_ERROR, "Instance stopped").into_response()
                    });
                }
                Err(err) => {
                    self.remove_instance(key, handle.generation);
                    let Command::Request { request: r, .. } = err.0 else {
                        unreachable!()
                    };
                    request = Some(r);
                }
            }
        }
        (StatusCode::SERVICE_UNAVAILABLE, "Server shutting down").into_response()
    }
}
