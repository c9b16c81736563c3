//! Cluster mode on NATS JetStream: many nodes, one owner per instance.
//!
//! - **Lease**: a node holds `n.<id>` in the `agents_nodes` bucket (TTL =
//!   [`ClusterOptions::lease_ttl`]) and renews it every quarter TTL. It
//!   fences itself — stops every instance and forwarded socket — at
//!   *last successful renewal + TTL − margin* on its own monotonic clock,
//!   before any other node can see the lease gone. A node that lost its
//!   lease starts over under a new id.
//! - **Ownership**: `agents_owners` maps an instance to its owner node. The
//!   first node to need an instance claims it (`create`); a node takes it
//!   over (`update` with the expected revision) only when the named node's
//!   lease is gone. The revision of the claim is the instance's fencing
//!   token, which the storage backend stamps into the instance's value.
//! - **Forwarding**: a socket that lands on another node is served there as
//!   usual (WebSocket framing, limits) and its messages travel over NATS to
//!   the owner, which holds the connection like a local one. Frames carry a
//!   sequence number (a gap closes the socket). Peers ping each other every
//!   [`PING_INTERVAL`]; a dead peer's sockets are closed with 1012, and the
//!   client's reconnect is the recovery path. Plain HTTP is forwarded too.
//!
//! Correctness never depends on a watch or on pub/sub delivery: leases and
//! fencing tokens decide who owns what; lost frames end a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, Subscriber};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::actor::{Admit, CloseInfo, Command, InstanceHandle};
use super::InstanceKey;
use crate::connection::{Connection, Outbound};
use crate::log::Trunc;
use crate::message::{Message, Utf8Bytes};
use crate::storage::{bucket_key, NatsStorage, Storage};

/// How often peers with forwarded sockets ping each other.
pub(crate) const PING_INTERVAL: Duration = Duration::from_millis(500);

/// Pings a peer may miss before its sockets are closed.
const MISSED_PINGS: u32 = 3;

/// Default [`ClusterOptions::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// How long a request to another node may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Bucket names.
const NODES: &str = "agents_nodes";
const OWNERS: &str = "agents_owners";
const STATE: &str = "agents_state";

/// Where and how to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    urls: Vec<String>,
    lease_ttl: Duration,
    replicas: usize,
}

impl ClusterOptions {
    /// The NATS servers (each entry may hold several, comma-separated).
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClusterOptions {
            urls: urls
                .into_iter()
                .flat_map(|u| {
                    u.as_ref()
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect(),
            lease_ttl: DEFAULT_LEASE_TTL,
            replicas: 1,
        }
    }

    /// Copies JetStream keeps of the buckets (leases, owners, state) when
    /// it creates them: 3 on a 3-server NATS cluster, so that losing one
    /// NATS server loses nothing. Defaults to 1 (a single NATS server).
    /// Buckets that exist keep their settings.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// How long a node's lease lives without renewal: the longest a dead
    /// node's instances stay unavailable. Defaults to [`DEFAULT_LEASE_TTL`]
    /// (5 s); at least 1 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_secs(1));
        self
    }
}

/// Why joining the cluster failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No NATS server could be reached.
    #[error("cluster error: cannot connect to NATS: {0}")]
    Connect(String),
    /// JetStream refused a bucket or the lease.
    #[error("cluster error: {0}")]
    JetStream(String),
}

/// A joined cluster: give it to [`AgentServer::cluster`](crate::AgentServer::cluster).
#[derive(Clone, Debug)]
pub struct Cluster {
    pub(crate) node: Arc<Node>,
}

/// This node's lease: its id for this incarnation and the lease revision.
#[derive(Debug, Clone)]
struct Lease {
    id: Arc<str>,
    rev: u64,
    /// Cancelled when this lease is lost: everything of this incarnation stops.
    fence: CancellationToken,
}

/// This node in the cluster.
#[derive(Debug)]
pub(crate) struct Node {
    client: async_nats::Client,
    nodes: kv::Store,
    owners: kv::Store,
    pub(crate) storage: Storage,
    ttl: Duration,
    lease: Mutex<Lease>,
    /// Monotonic milliseconds until which the lease is surely ours.
    valid_until: AtomicU64,
    /// Serving: connected, lease valid.
    ready: Arc<AtomicBool>,
    /// Where to reach the runtime (set once by the server).
    runtime: std::sync::OnceLock<Weak<dyn Runtime>>,
    peers: Mutex<HashMap<Arc<str>, Arc<Peer>>>,
    started: Instant,
    /// Set by a graceful shutdown: no new lease after this one.
    leaving: AtomicBool,
}

/// What the cluster needs from the server runtime on this node.
pub(crate) trait Runtime: Send + Sync + std::fmt::Debug {
    /// Registers a forwarded connection with the local instance `key`
    /// (owned here, incarnation `token`); its handle when accepted.
    fn connect_local(
        self: Arc<Self>,
        key: InstanceKey,
        token: u64,
        conn: Connection,
        request: crate::request::RequestInfo,
    ) -> super::registry::BoxFuture<Option<InstanceHandle>>;
    /// Serves a forwarded plain HTTP request locally.
    fn request_local(
        self: Arc<Self>,
        key: InstanceKey,
        token: u64,
        request: http::Request<axum::body::Body>,
    ) -> super::registry::BoxFuture<axum::response::Response>;
    /// A new connection for a forwarded socket.
    fn new_connection(&self, id: String, uri: String) -> Connection;
    /// The largest message a client may send.
    fn max_message(&self) -> usize;
}

/// Who owns an instance.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    /// This node, with the incarnation's fencing token.
    Me(u64),
    /// Another node.
    Node(Arc<str>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn js_err(err: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(err.to_string())
}

fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12)
        .map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rng.random_range(0..32)]))
        .collect()
}

impl Cluster {
    /// Connects to NATS, creates the buckets if needed and takes a lease.
    ///
    /// # Errors
    /// When no server is reachable or JetStream refuses.
    pub async fn connect(options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let ttl = options.lease_ttl;
        let client = async_nats::ConnectOptions::new()
            .name("agents-server")
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50 * attempts as u64).min(500))
            })
            .retain_servers_order()
            .connect(options.urls.clone())
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let bucket = |name: &str, history: i64, max_age: Duration| kv::Config {
            bucket: name.to_owned(),
            history,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        };
        let nodes = js
            .create_key_value(bucket(NODES, 1, ttl))
            .await
            .map_err(js_err)?;
        let owners = js
            .create_key_value(bucket(OWNERS, 1, Duration::ZERO))
            .await
            .map_err(js_err)?;
        let state = js
            .create_key_value(bucket(STATE, 1, Duration::ZERO))
            .await
            .map_err(js_err)?;
        let ready = Arc::new(AtomicBool::new(false));
        let max_payload = client.server_info().max_payload;
        let storage = Storage::from_backend(Arc::new(NatsStorage::new(
            state,
            max_payload,
            ready.clone(),
        )));
        let node = Arc::new(Node {
            client,
            nodes,
            owners,
            storage,
            ttl,
            lease: Mutex::new(Lease {
                id: "".into(),
                rev: 0,
                fence: CancellationToken::new(),
            }),
            valid_until: AtomicU64::new(0),
            ready,
            runtime: std::sync::OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            started: Instant::now(),
            leaving: AtomicBool::new(false),
        });
        node.acquire().await?;
        tokio::spawn(Node::keep_lease(Arc::downgrade(&node)));
        Ok(Cluster { node })
    }

    /// This node's id (it changes when the node loses and retakes its lease).
    pub fn node_id(&self) -> String {
        lock(&self.node.lease).id.to_string()
    }
}

impl Node {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Whether the lease is surely still ours.
    pub(crate) fn valid(&self) -> bool {
        self.now_ms() < self.valid_until.load(Ordering::Acquire)
    }

    /// Whether the node serves (for readiness).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.valid()
    }

    /// The current incarnation's fence token.
    pub(crate) fn fence(&self) -> CancellationToken {
        lock(&self.lease).fence.clone()
    }

    /// This incarnation's id.
    fn id(&self) -> Arc<str> {
        lock(&self.lease).id.clone()
    }

    /// Connects the runtime (once, when the server is built).
    pub(crate) fn attach(self: &Arc<Self>, runtime: Weak<dyn Runtime>) {
        let _ = self.runtime.set(runtime);
        let lease = lock(&self.lease).clone();
        self.clone().serve(lease);
    }

    fn runtime(&self) -> Option<Arc<dyn Runtime>> {
        self.runtime.get()?.upgrade()
    }

    /// Takes a new lease under a fresh id.
    async fn acquire(self: &Arc<Self>) -> Result<(), ClusterError> {
        loop {
            let id: Arc<str> = random_id().into();
            let sent = self.now_ms();
            let value = Bytes::from(format!("{{\"started\":{}}}", self.now_ms()));
            match self.nodes.create(format!("n.{id}"), value).await {
                Ok(rev) => {
                    let fence = CancellationToken::new();
                    *lock(&self.lease) = Lease {
                        id: id.clone(),
                        rev,
                        fence,
                    };
                    self.extend(sent);
                    self.ready.store(true, Ordering::Release);
                    tracing::info!(node = %id, "took a cluster lease");
                    return Ok(());
                }
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(err) => return Err(js_err(err)),
            }
        }
    }

    /// The lease holds until `sent` (when the renewal left) + TTL − margin.
    fn extend(&self, sent: u64) {
        let ttl = self.ttl.as_millis() as u64;
        self.valid_until
            .store(sent + ttl - ttl / 5, Ordering::Release);
    }

    /// Renews the lease every quarter TTL; fences and starts over when it
    /// cannot be renewed in time.
    async fn keep_lease(node: Weak<Node>) {
        loop {
            let Some(this) = node.upgrade() else { return };
            let period = this.ttl / 4;
            let until = this.valid_until.load(Ordering::Acquire);
            let to_deadline = Duration::from_millis(until.saturating_sub(this.now_ms()));
            drop(this);
            tokio::time::sleep(period.min(to_deadline)).await;
            let Some(this) = node.upgrade() else { return };
            if this.leaving.load(Ordering::Acquire) {
                return;
            }
            if !this.valid() {
                this.lost().await;
                continue;
            }
            let (id, rev) = {
                let lease = lock(&this.lease);
                (lease.id.clone(), lease.rev)
            };
            let sent = this.now_ms();
            let value = Bytes::from(format!("{{\"renewed\":{sent}}}"));
            let renew = this.nodes.update(format!("n.{id}"), value, rev);
            match tokio::time::timeout(period, renew).await {
                Ok(Ok(rev)) => {
                    lock(&this.lease).rev = rev;
                    this.extend(sent);
                }
                Ok(Err(err)) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Expired (or not ours any more): this incarnation is over.
                    this.lost().await;
                }
                _ => {
                    // NATS slow or away: fence at the deadline unless a renewal lands.
                }
            }
        }
    }

    /// The lease is lost: everything of this incarnation stops (instances,
    /// forwarded sockets), then a new lease is taken when NATS allows.
    async fn lost(self: &Arc<Self>) {
        self.ready.store(false, Ordering::Release);
        self.valid_until.store(0, Ordering::Release);
        let old = lock(&self.lease).clone();
        tracing::warn!(node = %old.id, "cluster lease lost: stopping this node's instances and forwarded sockets");
        old.fence.cancel();
        for peer in lock(&self.peers).drain().map(|(_, p)| p) {
            peer.dead.cancel();
        }
        loop {
            match self.acquire().await {
                Ok(()) => break,
                Err(err) => {
                    tracing::debug!(%err, "cannot take a new lease yet");
                    tokio::time::sleep(self.ttl / 4).await;
                }
            }
        }
        let lease = lock(&self.lease).clone();
        self.clone().serve(lease);
    }

    /// Leaves the cluster on a graceful shutdown: gives up the lease at
    /// once, so that other nodes take this node's instances over without
    /// waiting for it to expire.
    pub(crate) async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
        self.valid_until.store(0, Ordering::Release);
        let lease = lock(&self.lease).clone();
        lease.fence.cancel();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.nodes.delete(format!("n.{}", lease.id)),
        )
        .await;
        tracing::info!(node = %lease.id, "left the cluster");
    }

    /// Whether node `id`'s lease exists.
    async fn alive(&self, id: &str) -> Result<bool, ClusterError> {
        let entry = self.nodes.entry(format!("n.{id}")).await.map_err(js_err)?;
        Ok(entry.is_some_and(|e| e.operation == kv::Operation::Put))
    }

    /// Who owns `key`, claiming it when nobody (alive) does.
    pub(crate) async fn owner(&self, key: &InstanceKey) -> Result<Owner, ClusterError> {
        let k = bucket_key(&crate::storage::InstanceId {
            agent: key.agent.clone(),
            name: key.name.clone(),
            token: 0,
        });
        for _ in 0..5 {
            if !self.valid() {
                return Err(ClusterError::JetStream(
                    "this node has no valid lease".into(),
                ));
            }
            let me = self.id();
            let claim = Bytes::from(me.to_string());
            let entry = self.owners.entry(k.as_str()).await.map_err(js_err)?;
            match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let owner = String::from_utf8_lossy(&e.value).into_owned();
                    if owner == *me {
                        return Ok(Owner::Me(e.revision));
                    }
                    if self.alive(&owner).await? {
                        return Ok(Owner::Node(owner.into()));
                    }
                    // Its lease is gone: take over, unless someone else does first.
                    if let Ok(rev) = self.owners.update(k.as_str(), claim, e.revision).await {
                        tracing::info!(agent = %Trunc(&key.agent), name = %Trunc(&key.name), from = %owner, "took over an instance");
                        return Ok(Owner::Me(rev));
                    }
                }
                _ => {
                    if let Ok(rev) = self.owners.create(k.as_str(), claim).await {
                        return Ok(Owner::Me(rev));
                    }
                }
            }
        }
        Err(ClusterError::JetStream("ownership kept changing".into()))
    }

    /// Serves this incarnation's subjects (open, http, ping) until it is fenced.
    fn serve(self: Arc<Self>, lease: Lease) {
        let id = lease.id.clone();
        let fence = lease.fence.clone();
        tokio::spawn(async move {
            let subscribe = |what: &str| self.client.subscribe(format!("agents.{id}.{what}"));
            let (Ok(mut open), Ok(mut http), Ok(mut ping)) = (
                subscribe("open").await,
                subscribe("http").await,
                subscribe("ping").await,
            ) else {
                tracing::error!(node = %id, "cannot subscribe to the node's subjects");
                return;
            };
            barrier(&self.client).await;
            loop {
                tokio::select! {
                    _ = fence.cancelled() => return,
                    Some(msg) = ping.next() => {
                        if let Some(reply) = msg.reply {
                            let _ = self.client.publish(reply, Bytes::from_static(b"pong")).await;
                        }
                    }
                    Some(msg) = open.next() => {
                        tokio::spawn(self.clone().accept(msg, fence.clone()));
                    }
                    Some(msg) = http.next() => {
                        tokio::spawn(self.clone().http(msg));
                    }
                    else => return,
                }
            }
        });
    }

    /// A peer node, watched while sockets link us.
    fn peer(self: &Arc<Self>, id: &Arc<str>) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get(id).filter(|p| !p.dead.is_cancelled()) {
            peer.links.fetch_add(1, Ordering::AcqRel);
            return peer.clone();
        }
        let peer = Arc::new(Peer {
            id: id.clone(),
            dead: self.fence().child_token(),
            links: AtomicUsize::new(1),
        });
        peers.insert(id.clone(), peer.clone());
        tokio::spawn(Node::watch(Arc::downgrade(self), peer.clone()));
        peer
    }

    /// Pings `peer` while links remain; on silence, its links end.
    async fn watch(node: Weak<Node>, peer: Arc<Peer>) {
        let mut missed = 0;
        loop {
            tokio::select! {
                _ = peer.dead.cancelled() => return,
                _ = tokio::time::sleep(PING_INTERVAL) => {}
            }
            let Some(this) = node.upgrade() else { return };
            if peer.links.load(Ordering::Acquire) == 0 {
                let mut peers = lock(&this.peers);
                if peer.links.load(Ordering::Acquire) == 0 {
                    peers.remove(&peer.id);
                    return;
                }
            }
            let ping = this
                .client
                .send_request(
                    format!("agents.{}.ping", peer.id),
                    async_nats::Request::new()
                        .payload(Bytes::new())
                        .timeout(Some(PING_INTERVAL)),
                )
                .await;
            match ping {
                Ok(_) => missed = 0,
                Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                    missed = MISSED_PINGS;
                }
                Err(_) => missed += 1,
            }
            if missed >= MISSED_PINGS {
                tracing::warn!(peer = %peer.id, "peer node gone: closing the sockets it served");
                peer.dead.cancel();
                lock(&this.peers).remove(&peer.id);
                return;
            }
        }
    }

    // ---- the entry side: sockets and requests landing here for another owner

    /// Links a socket on this node to instance `key` owned by `owner`: the
    /// owner's frames go into `conn`; returns the link for the client's.
    pub(crate) async fn open_remote(
        self: &Arc<Self>,
        owner: Arc<str>,
        key: &InstanceKey,
        conn: &Connection,
        request: &crate::request::RequestInfo,
    ) -> Option<RemoteLink> {
        let me = self.id();
        let conn_id = format!("{me}.{}", conn.key());
        let down = self
            .client
            .subscribe(format!("agents.{me}.down.{conn_id}"))
            .await
            .ok()?;
        barrier(&self.client).await;
        let peer = self.peer(&owner);
        let mut headers = HeaderMap::new();
        headers.insert("x-agents-conn", conn_id.as_str());
        headers.insert("x-agents-agent", &*key.agent);
        headers.insert("x-agents-name", &*key.name);
        headers.insert("x-agents-id", conn.id());
        headers.insert("x-agents-method", request.method().as_str());
        headers.insert("x-agents-uri", request.uri().to_string().as_str());
        for (name, value) in request.headers() {
            if let Ok(value) = value.to_str() {
                headers.append(format!("h-{}", name.as_str()).as_str(), value);
            }
        }
        let answer = self
            .client
            .send_request(
                format!("agents.{owner}.open"),
                async_nats::Request::new()
                    .headers(headers)
                    .payload(Bytes::new())
                    .timeout(Some(REQUEST_TIMEOUT)),
            )
            .await;
        // The owner's frames (connect frames, or the close of a refusal)
        // flow whatever the answer.
        let stop = peer.dead.child_token();
        tokio::spawn(pump_down(down, conn.clone(), stop.clone()));
        let link = RemoteLink {
            client: self.client.clone(),
            up: format!("agents.{owner}.up.{conn_id}"),
            seq: 0,
            peer,
            stop,
        };
        match answer {
            Ok(reply) if reply.payload.as_ref() == b"ok" => Some(link),
            Ok(_) => {
                // Refused: the owner's close (with its code and reason) is
                // on its way down; let it arrive.
                let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
                while conn.is_open() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            }
            Err(err) => {
                tracing::debug!(owner = %owner, %err, "cannot reach the instance's owner");
                conn.close(1013, "Try again later");
                None
            }
        }
    }

    /// Forwards a plain HTTP request to the owner.
    pub(crate) async fn http_remote(
        &self,
        owner: &str,
        key: &InstanceKey,
        request: http::Request<axum::body::Body>,
        max_body: usize,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let (parts, body) = request.into_parts();
        let Ok(body) = axum::body::to_bytes(body, max_body).await else {
            return (
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
            )
                .into_response();
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-agents-agent", &*key.agent);
        headers.insert("x-agents-name", &*key.name);
        headers.insert("x-agents-method", parts.method.as_str());
        headers.insert("x-agents-uri", parts.uri.to_string().as_str());
        for (name, value) in &parts.headers {
            if let Ok(value) = value.to_str() {
                headers.append(format!("h-{}", name.as_str()).as_str(), value);
            }
        }
        let answer = self
            .client
            .send_request(
                format!("agents.{owner}.http"),
                async_nats::Request::new()
                    .headers(headers)
                    .payload(body)
                    .timeout(Some(REQUEST_TIMEOUT)),
            )
            .await;
        let Ok(reply) = answer else {
            return (http::StatusCode::SERVICE_UNAVAILABLE, "Try again later").into_response();
        };
        let status = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("x-agents-status"))
            .and_then(|s| s.as_str().parse::<u16>().ok())
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .unwrap_or(http::StatusCode::BAD_GATEWAY);
        let mut response = (status, reply.payload).into_response();
        if let Some(h) = &reply.headers {
            for (name, values) in h.iter() {
                let name: &str = name.as_ref();
                let Some(name) = name.strip_prefix("h-") else {
                    continue;
                };
                for value in values {
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::try_from(name),
                        http::HeaderValue::from_str(value.as_str()),
                    ) {
                        response.headers_mut().append(n, v);
                    }
                }
            }
        }
        response
    }

    // ---- the owner side: sockets and requests forwarded here

    /// A forwarded socket asks to join one of our instances.
    async fn accept(self: Arc<Self>, msg: async_nats::Message, fence: CancellationToken) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let answer = |ok: bool| {
            let client = self.client.clone();
            let reply = reply.clone();
            async move {
                let body: &'static [u8] = if ok { b"ok" } else { b"refused" };
                let _ = client.publish(reply, Bytes::from_static(body)).await;
            }
        };
        let (Some(headers), Some(runtime)) = (msg.headers.as_ref(), self.runtime()) else {
            return answer(false).await;
        };
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_owned());
        let (Some(conn_id), Some(agent), Some(name), Some(id), Some(uri)) = (
            get("x-agents-conn"),
            get("x-agents-agent"),
            get("x-agents-name"),
            get("x-agents-id"),
            get("x-agents-uri"),
        ) else {
            return answer(false).await;
        };
        let Some(peer_id) = conn_id.split('.').next().map(Arc::<str>::from) else {
            return answer(false).await;
        };
        let key = InstanceKey {
            agent: agent.into(),
            name: name.into(),
        };
        let token = match self.owner(&key).await {
            Ok(Owner::Me(token)) => token,
            _ => return answer(false).await,
        };
        let request = request_info(headers, &uri);
        let target = request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let conn = runtime.new_connection(id, target);
        let Ok(up) = self
            .client
            .subscribe(format!("agents.{}.up.{conn_id}", self.id()))
            .await
        else {
            return answer(false).await;
        };
        barrier(&self.client).await;
        let peer = self.peer(&peer_id);
        let down = format!("agents.{peer_id}.down.{conn_id}");
        // Frames queued by the connect (identity, or a refusal's close) go
        // down from the start.
        let forward = Forwarder {
            client: self.client.clone(),
            conn: conn.clone(),
            down,
            seq: 0,
            peer,
            fence,
        };
        let handle = runtime.connect_local(key, token, conn, request).await;
        answer(handle.is_some()).await;
        forward.run(up, handle).await;
    }

    /// A forwarded plain HTTP request for one of our instances.
    async fn http(self: Arc<Self>, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let respond = |status: u16, headers: HeaderMap, body: Bytes| {
            let client = self.client.clone();
            let reply = reply.clone();
            async move {
                let mut headers = headers;
                headers.insert("x-agents-status", status.to_string().as_str());
                let _ = client.publish_with_headers(reply, headers, body).await;
            }
        };
        let (Some(headers), Some(runtime)) = (msg.headers.as_ref(), self.runtime()) else {
            return respond(502, HeaderMap::new(), Bytes::new()).await;
        };
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_owned());
        let (Some(agent), Some(name), Some(method), Some(uri)) = (
            get("x-agents-agent"),
            get("x-agents-name"),
            get("x-agents-method"),
            get("x-agents-uri"),
        ) else {
            return respond(400, HeaderMap::new(), Bytes::new()).await;
        };
        let key = InstanceKey {
            agent: agent.into(),
            name: name.into(),
        };
        let Ok(Owner::Me(token)) = self.owner(&key).await else {
            return respond(
                503,
                HeaderMap::new(),
                Bytes::from_static(b"Try again later"),
            )
            .await;
        };
        let mut request = http::Request::new(axum::body::Body::from(msg.payload.clone()));
        *request.method_mut() = method.parse().unwrap_or(http::Method::GET);
        *request.uri_mut() = uri.parse().unwrap_or_default();
        *request.headers_mut() = http_headers(headers);
        let max = runtime.max_message();
        let response = runtime.request_local(key, token, request).await;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, max).await.unwrap_or_default();
        let mut out = HeaderMap::new();
        for (name, value) in &parts.headers {
            if let Ok(value) = value.to_str() {
                out.append(format!("h-{}", name.as_str()).as_str(), value);
            }
        }
        respond(parts.status.as_u16(), out, body).await;
    }
}

/// Waits until the NATS server processed everything this client sent so
/// far (subscriptions included): `flush` alone only writes the socket.
async fn barrier(client: &async_nats::Client) {
    let _ = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.request(format!("_barrier.{}", client.new_inbox()), Bytes::new()),
    )
    .await;
}

/// The HTTP headers forwarded as `h-<name>` NATS headers.
fn http_headers(headers: &HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let Some(name) = name.strip_prefix("h-") else {
            continue;
        };
        let Ok(name) = http::HeaderName::try_from(name) else {
            continue;
        };
        for value in values {
            if let Ok(value) = http::HeaderValue::from_str(value.as_str()) {
                out.append(name.clone(), value);
            }
        }
    }
    out
}

/// The upgrade request as the owner's agent sees it.
fn request_info(headers: &HeaderMap, uri: &str) -> crate::request::RequestInfo {
    let method = headers
        .get("x-agents-method")
        .and_then(|m| m.as_str().parse().ok())
        .unwrap_or(http::Method::GET);
    crate::request::RequestInfo::new(
        method,
        uri.parse().unwrap_or_default(),
        http_headers(headers),
    )
}

/// A node on the other end of forwarded sockets.
#[derive(Debug)]
pub(crate) struct Peer {
    id: Arc<str>,
    /// Cancelled when the peer stops answering (or our lease is lost).
    dead: CancellationToken,
    links: AtomicUsize,
}

impl Peer {
    fn unlink(&self) {
        self.links.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Frame kinds on the wire between nodes: `[kind][seq u64][data]`.
mod kind {
    pub(super) const TEXT: u8 = 1;
    pub(super) const BINARY: u8 = 2;
    /// Down: a close frame for the client (`code u16`, reason).
    pub(super) const CLOSE: u8 = 8;
    /// Up: the socket ended (`code u16`, `clean u8`, reason).
    pub(super) const CLOSED: u8 = 9;
}

fn frame(kind: u8, seq: u64, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + data.len());
    b.put_u8(kind);
    b.put_u64(seq);
    b.put_slice(data);
    b.freeze()
}

/// Splits a node-to-node frame.
fn parse(payload: &Bytes) -> Option<(u8, u64, Bytes)> {
    if payload.len() < 9 {
        return None;
    }
    let seq = u64::from_be_bytes(payload[1..9].try_into().ok()?);
    Some((payload[0], seq, payload.slice(9..)))
}

/// The entry node's end of a forwarded socket: the client's messages go up
/// to the owner. Dropping it stops the owner's frames coming down.
#[derive(Debug)]
pub(crate) struct RemoteLink {
    client: async_nats::Client,
    up: String,
    seq: u64,
    peer: Arc<Peer>,
    /// Ends the task pumping the owner's frames into the connection.
    stop: CancellationToken,
}

impl Drop for RemoteLink {
    fn drop(&mut self) {
        self.stop.cancel();
        self.peer.unlink();
    }
}

impl RemoteLink {
    /// Sends a client message to the owner (in order).
    pub(crate) fn admit(&mut self, message: Message) -> Admit {
        if self.peer.dead.is_cancelled() {
            return Admit::Closed;
        }
        self.seq += 1;
        let payload = match &message {
            Message::Text(t) => frame(kind::TEXT, self.seq, t.as_bytes()),
            Message::Binary(b) => frame(kind::BINARY, self.seq, b),
        };
        let (client, up) = (self.client.clone(), self.up.clone());
        Admit::Wait(Box::pin(async move {
            client.publish(up, payload).await.is_ok()
        }))
    }

    /// The socket ended: tells the owner how.
    pub(crate) async fn closed(mut self, info: CloseInfo) {
        self.seq += 1;
        let mut data = Vec::with_capacity(3 + info.reason.len());
        data.extend_from_slice(&info.code.to_be_bytes());
        data.push(u8::from(info.was_clean));
        data.extend_from_slice(info.reason.as_bytes());
        let _ = self
            .client
            .publish(self.up.clone(), frame(kind::CLOSED, self.seq, &data))
            .await;
    }
}

/// Pushes the owner's frames into the entry node's connection, until the
/// socket ends (`stop`), or the owner is gone (`stop` too: then the client
/// is told to reconnect).
async fn pump_down(mut down: Subscriber, conn: Connection, stop: CancellationToken) {
    let mut expected = 1;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => {
                conn.close(1012, "Service restart");
                return;
            }
            msg = down.next() => msg,
        };
        let Some(msg) = msg else { return };
        let Some((kind, seq, data)) = parse(&msg.payload) else {
            continue;
        };
        if seq != expected {
            tracing::warn!(
                expected,
                seq,
                "frames lost between nodes; closing the socket"
            );
            conn.close(1012, "Service restart");
            return;
        }
        expected += 1;
        match kind {
            kind::TEXT => match Utf8Bytes::try_from(data) {
                Ok(text) => {
                    let _ = conn.send(Message::Text(text));
                }
                Err(_) => conn.close(1011, "Bad frame from the owner"),
            },
            kind::BINARY => {
                let _ = conn.send(Message::Binary(data));
            }
            kind::CLOSE if data.len() >= 2 => {
                let code = u16::from_be_bytes([data[0], data[1]]);
                conn.close(code, &String::from_utf8_lossy(&data[2..]));
                return;
            }
            _ => {}
        }
        if !conn.is_open() {
            return;
        }
    }
}

/// The owner's end of a forwarded socket: drains the connection's queue to
/// the entry node, and hands the client's messages to the instance.
struct Forwarder {
    client: async_nats::Client,
    conn: Connection,
    down: String,
    seq: u64,
    peer: Arc<Peer>,
    fence: CancellationToken,
}

impl Forwarder {
    async fn run(mut self, mut up: Subscriber, handle: Option<InstanceHandle>) {
        let mut taken = std::collections::VecDeque::new();
        let mut expected = 1;
        let mut info: Option<CloseInfo> = None;
        let mut close_deadline: Option<tokio::time::Instant> = None;
        loop {
            let taking = std::future::poll_fn(|cx| self.conn.outbox().poll_take(cx, &mut taken));
            let deadline = async {
                match close_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.peer.dead.cancelled() => break,
                _ = self.fence.cancelled() => break,
                _ = deadline => break,
                _ = taking => {
                    let frames = taken.len();
                    let mut bytes = 0;
                    while let Some(out) = taken.pop_front() {
                        self.seq += 1;
                        let payload = match out {
                            Outbound::Data(Message::Text(t)) => {
                                bytes += t.len();
                                frame(kind::TEXT, self.seq, t.as_bytes())
                            }
                            Outbound::Data(Message::Binary(b)) => {
                                bytes += b.len();
                                frame(kind::BINARY, self.seq, &b)
                            }
                            Outbound::Close(code, reason) => {
                                close_deadline = Some(tokio::time::Instant::now() + crate::config::CLOSE_TIMEOUT);
                                let mut data = code.to_be_bytes().to_vec();
                                data.extend_from_slice(reason.as_bytes());
                                frame(kind::CLOSE, self.seq, &data)
                            }
                        };
                        if self.client.publish(self.down.clone(), payload).await.is_err() {
                            break;
                        }
                    }
                    let closes = usize::from(close_deadline.is_some());
                    self.conn.outbox().written(frames - closes, bytes);
                }
                msg = up.next() => {
                    let Some(msg) = msg else { break };
                    let Some((kind, seq, data)) = parse(&msg.payload) else { continue };
                    if seq != expected {
                        tracing::warn!(expected, seq, "frames lost between nodes; closing the socket");
                        self.conn.close(1012, "Service restart");
                        break;
                    }
                    expected += 1;
                    let message = match kind {
                        kind::TEXT => match Utf8Bytes::try_from(data) {
                            Ok(t) => Message::Text(t),
                            Err(_) => break,
                        },
                        kind::BINARY => Message::Binary(data),
                        kind::CLOSED if data.len() >= 3 => {
                            info = Some(CloseInfo {
                                code: u16::from_be_bytes([data[0], data[1]]),
                                was_clean: data[2] == 1,
                                reason: String::from_utf8_lossy(&data[3..]).into_owned(),
                            });
                            break;
                        }
                        _ => continue,
                    };
                    let Some(handle) = &handle else { continue };
                    let delivered = match handle.try_admit(self.conn.key(), message) {
                        Admit::Done => true,
                        Admit::Wait(waiting) => waiting.await,
                        Admit::Closed => false,
                    };
                    if !delivered {
                        break;
                    }
                }
            }
        }
        self.conn.outbox().shut();
        self.peer.unlink();
        if let Some(handle) = handle {
            let info = info.unwrap_or(CloseInfo {
                code: 1006,
                reason: String::new(),
                was_clean: false,
            });
            let _ = handle
                .send(Command::Closed {
                    key: self.conn.key(),
                    info,
                })
                .await;
        }
    }
}
