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
//!   sequence number (a gap closes the socket), and a socket's messages
//!   are flow-controlled ([`UP_WINDOW`]): the owner grants more as its
//!   instance takes them. Peers ping each other every
//!   [`PING_INTERVAL`]; a dead peer's sockets are closed with 1012, and the
//!   client's reconnect is the recovery path. Plain HTTP is forwarded too.
//! - **Downlinks**: everything an owner sends to the sockets of one entry
//!   node travels on one subject per (entry, owner) pair, in order, with its
//!   own sequence; a frame for several of those sockets at once (a
//!   broadcast) is published once with their ids, not once per socket.
//!
//! Correctness never depends on a watch or on pub/sub delivery: leases and
//! fencing tokens decide who owns what; lost frames end a socket — a gap
//! in a sequence, or a lost NATS connection, after which a lost last frame
//! would go unseen (every forwarded link ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, Subject};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::actor::{Admit, CloseInfo, Command, Event, InstanceHandle};
use super::direct::{self, LinkTx};
use super::InstanceKey;
use crate::connection::{Connection, KeyMap, Outbound};
use crate::lock;
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

/// How long after failing to connect to a peer directly an entry node
/// links to it through NATS without trying again (a try can take up to
/// [`REQUEST_TIMEOUT`] and [`direct::HELLO_TIMEOUT`] while sockets wait to
/// open). A link, once made, lasts while sockets use it.
const DIRECT_RETRY: Duration = Duration::from_secs(30);

/// Default [`ClusterOptions::forward_timeout`]: how long a plain HTTP
/// request or a socket's opening, forwarded to the instance's owner, may
/// take there (its `on_request` or `on_connect`, which on one node have no
/// limit, may await slow work): HTTP 504, or close 1013, after it. An
/// owner that dies meanwhile is noticed as soon as it is found dead (three
/// missed pings, 500 ms apart): HTTP 503, or close 1012.
pub const FORWARDED_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

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
    forward_timeout: Duration,
    /// Where this node listens for direct connections from other nodes,
    /// and the address they reach it at.
    direct: Option<(std::net::SocketAddr, Option<String>)>,
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
            forward_timeout: FORWARDED_REQUEST_TIMEOUT,
            direct: None,
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

    /// How long a plain HTTP request, or a socket's opening, that landed on
    /// another node waits for the owner's `on_request` or `on_connect`:
    /// after it the client gets HTTP 504 (*The agent took too long*) or
    /// close 1013 (*Try again later*), though the hook may still finish on
    /// the owner. Defaults to [`FORWARDED_REQUEST_TIMEOUT`] (5 minutes); at
    /// least 100 ms.
    pub fn forward_timeout(mut self, timeout: Duration) -> Self {
        self.forward_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Listens on `bind` (TCP) for direct connections from other nodes,
    /// which then send the frames of sockets forwarded here over them
    /// instead of through NATS: a forwarded round trip wakes two
    /// processes instead of three, which on a small machine more than
    /// doubles forwarded throughput (`docs/cluster.md`). Other nodes reach
    /// this one at `advertise`, or at `bind` when it names one interface.
    /// NATS still carries everything else, and tells the other nodes the
    /// address and a secret that both ends of a connection prove they know
    /// (a challenge and HMAC-SHA256 answer each way; the secret itself
    /// never crosses the connection). The frames that follow cross it
    /// unencrypted: keep the port on a private network that only the nodes
    /// reach. Off by default:
    /// frames then go through NATS, as they also do to and from nodes
    /// without it.
    pub fn direct(mut self, bind: std::net::SocketAddr, advertise: Option<String>) -> Self {
        self.direct = Some((bind, advertise));
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
    /// The listener for direct connections from other nodes
    /// ([`ClusterOptions::direct`]) could not be set up.
    #[error("cluster error: cannot listen for other nodes on {addr}: {why}")]
    Direct {
        /// The address given.
        addr: String,
        /// What went wrong.
        why: String,
    },
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
    /// [`ClusterOptions::forward_timeout`].
    forward_timeout: Duration,
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
    /// Cancelled (and replaced) when messages between nodes may have been
    /// lost unseen: see [`Node::break_links`].
    links: Mutex<CancellationToken>,
    /// Where other nodes reach this one directly, if it listens.
    direct: Option<DirectInfo>,
    /// Owner side: the peers linked to this node directly, by their id.
    direct_in: Mutex<HashMap<Arc<str>, Arc<Peer>>>,
    /// Entry side: peers a direct connection to failed, and when; their
    /// frames go through NATS until [`DIRECT_RETRY`] later.
    unreachable: Mutex<HashMap<Arc<str>, tokio::time::Instant>>,
    /// Cancelled when this node is dropped: the direct listener, which
    /// holds it only weakly, stops (and frees its port) at once.
    gone: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

/// What a node tells other nodes (over NATS) about its direct listener.
#[derive(Debug)]
struct DirectInfo {
    advertise: String,
    secret: direct::Secret,
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
        // The connection's events, for the node once it exists.
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name("agents-server")
            .event_callback(move |event| {
                let _ = events_tx.send(event);
                std::future::ready(())
            })
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
        let listener = match options.direct {
            Some((bind, advertise)) => {
                let fail = |why: String| ClusterError::Direct {
                    addr: bind.to_string(),
                    why,
                };
                let listener = tokio::net::TcpListener::bind(bind)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let bound = listener.local_addr().map_err(|e| fail(e.to_string()))?;
                let advertise =
                    direct::advertised(bound, advertise.as_deref()).map_err(|e| fail(e.into()))?;
                Some((
                    listener,
                    DirectInfo {
                        advertise,
                        secret: direct::new_secret(),
                    },
                ))
            }
            None => None,
        };
        let (listener, direct) = listener
            .map(|(listener, info)| ((listener, info.secret), info))
            .unzip();
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
            forward_timeout: options.forward_timeout,
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
            links: Mutex::new(CancellationToken::new()),
            direct,
            direct_in: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            gone: CancellationToken::new(),
        });
        if let Some((listener, secret)) = listener {
            let gone = node.gone.clone();
            tokio::spawn(Node::listen(Arc::downgrade(&node), listener, secret, gone));
        }
        node.acquire().await?;
        tokio::spawn(Node::keep_lease(Arc::downgrade(&node)));
        tokio::spawn(Node::on_events(Arc::downgrade(&node), events));
        Ok(Cluster { node })
    }

    /// This node's id (it changes when the node loses and retakes its lease).
    pub fn node_id(&self) -> String {
        lock(&self.node.lease).id.to_string()
    }

    /// Where other nodes reach this one directly
    /// ([`ClusterOptions::direct`]), if it listens.
    pub fn direct_addr(&self) -> Option<String> {
        self.node.direct.as_ref().map(|d| d.advertise.clone())
    }
}

impl Node {
    /// Warns (once, at startup) when the NATS server's `max_payload` is
    /// below this server's limits, where cluster mode would fail later.
    pub(crate) fn check_limits(&self, config: &crate::config::Config) {
        let max_payload = self.client.server_info().max_payload;
        if let Some(warning) = payload_warning(max_payload, config.max_state_bytes) {
            tracing::warn!(
                max_payload,
                max_state_bytes = config.max_state_bytes,
                "{warning}"
            );
        }
    }

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
        for peer in lock(&self.direct_in).drain().map(|(_, p)| p) {
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

    /// Reacts to the NATS connection's events: a lost connection may have
    /// lost messages between nodes that no later message reveals (a gap in
    /// a sequence is noticed only when something follows it), so every
    /// forwarded link ends. A subscription that could not keep up (a
    /// socket's messages arriving faster than its instance takes them)
    /// drops messages of that socket only, which its sequence reveals at
    /// the next message: logged, at most once a second, not acted on here
    /// (async-nats does not say whose subscription it was).
    async fn on_events(
        node: Weak<Node>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    ) {
        let mut slow_logged: Option<Instant> = None;
        while let Some(event) = events.recv().await {
            let Some(this) = node.upgrade() else { return };
            match event {
                async_nats::Event::Disconnected => this.break_links(&event),
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::SlowConsumer(_) => {
                    if slow_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        slow_logged = Some(Instant::now());
                        tracing::warn!("a NATS subscription fell behind and lost messages");
                    }
                }
                _ => tracing::debug!(%event, "NATS event"),
            }
        }
    }

    /// Ends everything in flight between this node and others, because
    /// messages may have been lost (`why`): forwarded sockets on both ends
    /// are closed with 1012 (*Service restart*; the clients reconnect),
    /// forwarded HTTP requests still waiting answer 503 and sockets still
    /// opening close with 1012, as when the owner is found dead. Instances
    /// and their local sockets go on.
    fn break_links(&self, why: &async_nats::Event) {
        let broken = std::mem::take(&mut *lock(&self.links));
        broken.cancel();
        let peers: Vec<Arc<Peer>> = lock(&self.peers).values().cloned().collect();
        if peers.is_empty() {
            return;
        }
        tracing::warn!(%why, "messages between nodes may have been lost: closing forwarded sockets");
        for peer in peers {
            if let Some(inbound) = peer.inbound.get() {
                inbound.close_all();
                inbound.restart.store(true, Ordering::Release);
            }
        }
    }

    /// Cancelled when the links between nodes as they are now break.
    fn links(&self) -> CancellationToken {
        lock(&self.links).clone()
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
            // Only a node that listens answers where (`direct`): others
            // get "no responders" and send frames through NATS.
            let direct = async {
                match &self.direct {
                    Some(_) => subscribe("direct").await.map(Some),
                    None => Ok(None),
                }
            };
            let (Ok(mut open), Ok(mut http), Ok(mut ping), Ok(mut where_direct)) = (
                subscribe("open").await,
                subscribe("http").await,
                subscribe("ping").await,
                direct.await,
            ) else {
                tracing::error!(node = %id, "cannot subscribe to the node's subjects");
                return;
            };
            barrier(&self.client).await;
            loop {
                let asked = async {
                    match &mut where_direct {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = fence.cancelled() => return,
                    Some(msg) = ping.next() => {
                        if let Some(reply) = msg.reply {
                            let _ = self.client.publish(reply, Bytes::from_static(b"pong")).await;
                        }
                    }
                    Some(msg) = asked => {
                        if let (Some(reply), Some(info)) = (msg.reply, &self.direct) {
                            let answer = format!("{} {}", info.advertise, direct::secret_hex(&info.secret));
                            let _ = self.client.publish(reply, answer.into()).await;
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
        let peer = Arc::new(Peer::new(id.clone(), self.fence().child_token()));
        peers.insert(id.clone(), peer.clone());
        tokio::spawn(Node::watch(Arc::downgrade(self), peer.clone(), true));
        peer
    }

    /// Forgets `peer` (if it is still the one known by its id).
    fn forget(&self, peer: &Arc<Peer>) {
        for map in [&self.peers, &self.direct_in] {
            let mut map = lock(map);
            if map.get(&peer.id).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                map.remove(&peer.id);
            }
        }
    }

    /// Owner side: takes direct connections from other nodes, until this
    /// node is gone.
    async fn listen(
        node: Weak<Node>,
        listener: tokio::net::TcpListener,
        secret: direct::Secret,
        gone: CancellationToken,
    ) {
        let hellos = Arc::new(tokio::sync::Semaphore::new(direct::MAX_HELLOS));
        loop {
            let accepted = tokio::select! {
                () = gone.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut stream, _)) = accepted else {
                // (Out of file descriptors, say: try again shortly.)
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // At most so many strangers are heard at once; more are
            // turned away at once (they hold a file descriptor each).
            let Ok(hearing) = hellos.clone().try_acquire_owned() else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let Some(hello) = direct::hello(&mut stream, &secret).await else {
                    return;
                };
                drop(hearing);
                // (A stranger's hello does not keep a dropped node alive.)
                let Some(this) = node.upgrade() else { return };
                // Known before the peer hears it may go on: its next
                // open request finds the link.
                let peer = this.link_from(&hello, stream);
                if let Some((peer, stream)) = peer {
                    this.linked(peer, stream).await;
                }
            });
        }
    }

    /// Owner side: registers a peer that said hello (a link it made
    /// before this one is gone for it: it links once per time it finds us
    /// alive), then tells it so; `None` if that fails.
    fn link_from(
        &self,
        hello: &direct::Hello,
        stream: tokio::net::TcpStream,
    ) -> Option<(Arc<Peer>, direct::Records)> {
        let id: Arc<str> = hello.id.as_str().into();
        let peer = Arc::new(Peer::new(id.clone(), self.fence().child_token()));
        let (old, welcomed, records) = {
            // Started and welcomed under the lock: whatever finds the link
            // (an open request of that peer) sends after the welcome, and
            // the link's heartbeat cannot come first either.
            let mut direct_in = lock(&self.direct_in);
            let (tx, records) = direct::start(stream, peer.dead.clone());
            let _ = peer.direct_down.set(tx.clone());
            let old = direct_in.insert(id, peer.clone());
            (old, tx.welcome(hello), records)
        };
        if let Some(old) = old {
            old.dead.cancel();
        }
        if !welcomed {
            peer.dead.cancel();
            self.forget(&peer);
            return None;
        }
        Some((peer, records))
    }

    /// Owner side: a peer linked directly: its sockets' frames arrive here
    /// and their owner's frames go down the same connection, until it
    /// closes (then the sockets forwarded over it end, as when a peer dies).
    async fn linked(self: Arc<Self>, peer: Arc<Peer>, mut records: direct::Records) {
        // Pinged like any peer (a paused peer keeps its connection open),
        // but not dropped for lack of sockets: the entry node decides that.
        let node = Arc::downgrade(&self);
        tokio::spawn(Node::watch(node.clone(), peer.clone(), false));
        drop(self);
        let dead = peer.dead.clone();
        loop {
            let record = tokio::select! {
                () = dead.cancelled() => break,
                record = records.next() => record,
            };
            let Some((key, frame)) = record else { break };
            if let Some(up) = lock(&peer.uplinks).get(&key) {
                let _ = up.send(frame);
            }
        }
        peer.dead.cancel();
        if let Some(this) = node.upgrade() {
            this.forget(&peer);
        }
    }

    /// Owner side: `peer`'s forwarded connections (its downlink task
    /// starts with the first).
    fn downlink(&self, peer: &Peer, packs: bool) -> Arc<Downlink> {
        peer.downlink
            .get_or_init(|| {
                let link = Arc::new(Downlink::default());
                let wire = match peer.direct_down.get() {
                    Some(tx) => Wire::Direct(tx.clone(), 0),
                    None => Wire::Nats(
                        Arc::new(self.client.clone()),
                        Subject::from(format!("agents.{}.down.{}", peer.id, self.id())),
                    ),
                };
                let packer = Packer {
                    epoch: rand::random(),
                    max_payload: self.client.server_info().max_payload,
                    packs,
                };
                tokio::spawn(downlink(wire, link.clone(), peer.dead.clone(), packer));
                link
            })
            .clone()
    }

    /// Entry side: the sockets `peer`'s frames go to, on first use linked
    /// directly when the peer listens for that, else subscribed (and the
    /// subscription known to NATS).
    async fn inbound(&self, me: &str, peer: &Peer) -> Option<Arc<Inbound>> {
        peer.inbound
            .get_or_try_init(|| async {
                let inbound = Arc::new(Inbound::default());
                let down: futures_util::stream::BoxStream<'static, Bytes> =
                    match self.link_to(me, peer).await {
                        Some((tx, records)) => {
                            let _ = peer.direct_up.set(tx);
                            crate::metrics::cluster_link(true);
                            records.map(|(_, frame)| frame).boxed()
                        }
                        None => {
                            let down = self
                                .client
                                .subscribe(format!("agents.{me}.down.{}", peer.id))
                                .await
                                .map_err(|_| ())?;
                            barrier(&self.client).await;
                            crate::metrics::cluster_link(false);
                            down.map(|msg| msg.payload).boxed()
                        }
                    };
                let dead = peer.dead.clone();
                let demuxed = inbound.clone();
                tokio::spawn(async move {
                    demux(down, demuxed, dead.clone()).await;
                    // (A direct connection that closed: the peer's gone
                    // for us, as if it stopped answering pings.)
                    dead.cancel();
                });
                Ok::<_, ()>(inbound)
            })
            .await
            .ok()
            .cloned()
    }

    /// Entry side: a direct connection to `peer`, if it listens for one
    /// and can be reached (else its frames go through NATS).
    async fn link_to(&self, me: &str, peer: &Peer) -> Option<(LinkTx, direct::Records)> {
        let now = tokio::time::Instant::now();
        {
            let mut unreachable = lock(&self.unreachable);
            unreachable.retain(|_, at| now.duration_since(*at) < DIRECT_RETRY);
            if unreachable.contains_key(&peer.id) {
                return None;
            }
        }
        // No answer (the peer does not listen), or not "address secret":
        // through NATS.
        let answer = self
            .client
            .request(format!("agents.{}.direct", peer.id), Bytes::new())
            .await
            .ok();
        let target = answer
            .as_ref()
            .and_then(|answer| std::str::from_utf8(&answer.payload).ok())
            .and_then(|answer| answer.split_once(' '))
            .and_then(|(addr, secret)| Some((addr, direct::parse_secret(secret)?)));
        let connected = match target {
            Some((addr, secret)) => direct::connect(addr, &secret, me)
                .await
                .inspect_err(|err| {
                    tracing::warn!(peer = %peer.id, %addr, %err, "cannot connect to a node directly; its frames go through NATS for a while");
                })
                .ok(),
            None => None,
        };
        match connected {
            Some(stream) => Some(direct::start(stream, peer.dead.clone())),
            None => {
                lock(&self.unreachable).insert(peer.id.clone(), now);
                None
            }
        }
    }

    /// Pings `peer` while links remain (or, unless `reap`, while it is
    /// alive); on silence, its links end.
    async fn watch(node: Weak<Node>, peer: Arc<Peer>, reap: bool) {
        let mut missed = 0;
        loop {
            tokio::select! {
                _ = peer.dead.cancelled() => return,
                _ = tokio::time::sleep(PING_INTERVAL) => {}
            }
            let Some(this) = node.upgrade() else { return };
            if reap && peer.links.load(Ordering::Acquire) == 0 {
                let mut peers = lock(&this.peers);
                if peer.links.load(Ordering::Acquire) == 0 {
                    if peers.get(&peer.id).is_some_and(|p| Arc::ptr_eq(p, &peer)) {
                        peers.remove(&peer.id);
                    }
                    // Nothing links us any more: its downlink and demux
                    // tasks (and their subscription) end too.
                    peer.dead.cancel();
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
                this.forget(&peer);
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
        let links = self.links();
        let peer = self.peer(&owner);
        // Unlinks the peer if this future ends (or is dropped) before the
        // link below takes that over.
        let unlink = Unlink(Some(peer.clone()));
        let inbound = self.inbound(&me, &peer).await?;
        if peer.dead.is_cancelled() {
            return None;
        }
        // The owner's frames (connect frames, or the close of a refusal)
        // flow from its answer on, whatever the answer. From here the link
        // unregisters the socket and unlinks the peer when dropped, also
        // if this future is.
        lock(&inbound.conns).insert(conn.key(), conn.clone());
        let credit = Arc::new(Credit::new());
        lock(&inbound.credits).insert(conn.key(), credit.clone());
        unlink.disarm();
        let direct = peer.direct_up.get().cloned();
        let up = match &direct {
            Some(tx) => Wire::Direct(tx.clone(), conn.key()),
            None => Wire::Nats(
                Arc::new(self.client.clone()),
                Subject::from(format!("agents.{owner}.up.{conn_id}")),
            ),
        };
        let mut link = RemoteLink {
            up,
            seq: 0,
            packs: false,
            max_payload: self.client.server_info().max_payload,
            credit,
            sent: 0,
            waited: None,
            peer,
            inbound,
            conn: conn.clone(),
            told: false,
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-agents-conn", conn_id.as_str());
        headers.insert(LINK, "1");
        if direct.is_some() {
            headers.insert(DIRECT, "1");
        }
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
        let open = self.client.send_request(
            format!("agents.{owner}.open"),
            async_nats::Request::new()
                .headers(headers)
                .payload(Bytes::new())
                .timeout(Some(self.forward_timeout)),
        );
        // (The owner answers once `on_connect` returned; a dead one never,
        // and the answer may be lost when the links break.)
        let answer = tokio::select! {
            answer = open => answer,
            () = link.peer.dead.cancelled() => {
                conn.close(1012, "Service restart");
                return None;
            }
            () = links.cancelled() => {
                conn.close(1012, "Service restart");
                return None;
            }
        };
        match answer {
            Ok(reply) if reply.payload.as_ref() == b"ok" => {
                link.packs = reply.headers.is_some_and(|h| h.get(LINK).is_some());
                Some(link)
            }
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
        self: &Arc<Self>,
        owner: &Arc<str>,
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
        let request = self.client.send_request(
            format!("agents.{owner}.http"),
            async_nats::Request::new()
                .headers(headers)
                .payload(body)
                .timeout(Some(self.forward_timeout)),
        );
        // Watched while it runs: a dead owner never answers, and the
        // answer may be lost when the links break.
        let links = self.links();
        let peer = self.peer(owner);
        // Unlinked however this ends (the client may go, dropping us).
        let _unlink = Unlink(Some(peer.clone()));
        let answer = tokio::select! {
            answer = request => Some(answer),
            () = peer.dead.cancelled() => None,
            () = links.cancelled() => None,
        };
        let reply = match answer {
            Some(Ok(reply)) => reply,
            Some(Err(err)) if err.kind() == async_nats::RequestErrorKind::TimedOut => {
                return (http::StatusCode::GATEWAY_TIMEOUT, "The agent took too long")
                    .into_response();
            }
            Some(Err(_)) | None => {
                return (http::StatusCode::SERVICE_UNAVAILABLE, "Try again later").into_response();
            }
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
                let mut headers = HeaderMap::new();
                headers.insert(LINK, "1");
                let _ = client
                    .publish_with_headers(reply, headers, Bytes::from_static(body))
                    .await;
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
        let Some((peer_id, remote_key)) = conn_id
            .split_once('.')
            .and_then(|(peer, key)| Some((Arc::<str>::from(peer), key.parse::<u64>().ok()?)))
        else {
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
        let links = self.links();
        let grants = headers.get(LINK).is_some();
        let (up, peer, _uplink) = if headers.get(DIRECT).is_some() {
            // The peer linked directly before it asked (a link that broke
            // since ended this socket on its side too).
            let peer = lock(&self.direct_in).get(&peer_id).cloned();
            let Some(peer) = peer.filter(|p| !p.dead.is_cancelled()) else {
                return answer(false).await;
            };
            peer.links.fetch_add(1, Ordering::AcqRel);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            lock(&peer.uplinks).insert(remote_key, tx);
            let up = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            })
            .boxed();
            let uplink = Uplink(peer.clone(), remote_key);
            (up, peer, Some(uplink))
        } else {
            let Ok(up) = self
                .client
                .subscribe(format!("agents.{}.up.{conn_id}", self.id()))
                .await
            else {
                return answer(false).await;
            };
            barrier(&self.client).await;
            (up.map(|msg| msg.payload).boxed(), self.peer(&peer_id), None)
        };
        // Frames queued by the connect (identity, or a refusal's close) go
        // down from the start.
        let forward = Forwarder {
            conn: conn.clone(),
            down: self.downlink(&peer, grants),
            remote_key,
            peer,
            fence,
            links,
            grants,
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
    /// Owner side: the peer's forwarded connections, for its downlink task.
    downlink: std::sync::OnceLock<Arc<Downlink>>,
    /// Entry side: the peer's frames for our sockets.
    inbound: tokio::sync::OnceCell<Arc<Inbound>>,
    /// Entry side: the direct connection to the owner, when there is one
    /// (our sockets' frames go up on it).
    direct_up: std::sync::OnceLock<LinkTx>,
    /// Owner side, for a peer in [`Node::direct_in`] only: the direct
    /// connection from it (its downlink goes on it). A peer that is both
    /// (each owns instances the other forwards to) has two [`Peer`]s, so
    /// that frames for its sockets forwarded through NATS never take a
    /// connection it did not open for them.
    direct_down: std::sync::OnceLock<LinkTx>,
    /// Owner side, linked directly: each forwarded socket's frames, by its
    /// key on the peer (at most [`UP_WINDOW`] of them on their way, as the
    /// owner grants).
    uplinks: Mutex<KeyMap<tokio::sync::mpsc::UnboundedSender<Bytes>>>,
}

impl Peer {
    fn new(id: Arc<str>, dead: CancellationToken) -> Peer {
        Peer {
            id,
            dead,
            links: AtomicUsize::new(1),
            downlink: std::sync::OnceLock::new(),
            inbound: tokio::sync::OnceCell::new(),
            direct_up: std::sync::OnceLock::new(),
            direct_down: std::sync::OnceLock::new(),
            uplinks: Mutex::default(),
        }
    }

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
    /// Down: drop the socket without a closing handshake (its queue went
    /// far over budget on the owner, as [`SendError::QueueFull`] does to
    /// a local socket).
    ///
    /// [`SendError::QueueFull`]: crate::SendError::QueueFull
    pub(super) const DROP: u8 = 10;
    /// Several frames in one message, each `[kind u8][n u16][n × conn key
    /// u64][len u32][data]` (no keys up): down, what one wake of a downlink
    /// took; up, client messages read together. Sent only to a node that
    /// said it reads them ([`LINK`](super::LINK)).
    pub(super) const PACK: u8 = 11;
    /// Down: `[upto u64]`, how much of client messages the socket may
    /// have sent up in all ([`UP_WINDOW`](super::UP_WINDOW)).
    pub(super) const CREDIT: u8 = 12;
}

/// The header with which an entry node's open request, and an owner's
/// answer to it, say that this node reads [`kind::PACK`] messages and
/// keeps to [`kind::CREDIT`] (a node from before them gets one frame per
/// message, and its sockets' messages are not held back).
const LINK: &str = "x-agents-link";

/// The header with which an entry node's open request says that the
/// socket's frames go over the direct connection between the two nodes.
const DIRECT: &str = "x-agents-direct";

/// How many bytes of a forwarded socket's messages ([`up_cost`]) may be
/// on their way to the owner and not yet taken by its instance: the entry
/// node reads no more from the socket until the owner grants more
/// ([`kind::CREDIT`]), as a socket on its instance's own node waits for
/// room in the instance's inbox. A larger message goes alone
/// ([`UP_ALONE`]). Without it a client could pile messages up on the owner
/// as fast as NATS carries them.
pub(crate) const UP_WINDOW: u64 = 1024 * 1024;

/// What a message costs of [`UP_WINDOW`] on top of its bytes, so that a
/// window holds at most 16,384 messages, well below the 65,536 that
/// async-nats keeps per subscription.
const UP_MESSAGE_COST: u64 = 64;

/// What client messages cost of [`UP_WINDOW`].
fn up_cost<'a>(messages: impl IntoIterator<Item = &'a Message>) -> u64 {
    messages
        .into_iter()
        .map(|m| m.len() as u64 + UP_MESSAGE_COST)
        .sum()
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

/// Most sockets one downlink message names.
const MAX_GROUP: usize = 512;

/// A frame for one forwarded socket, by its key on the entry node.
#[derive(Debug)]
struct Down {
    conn: u64,
    kind: u8,
    data: Bytes,
}

/// Owner side: one peer's forwarded connections. The peer's downlink task
/// takes their frames straight from their queues (each connection's queue
/// registers a waker that marks it ready here), so a frame for a forwarded
/// socket costs no task of its own, and it stays counted in its
/// connection's queue budget until published: a slow peer holds its
/// instances back exactly like a slow local client.
#[derive(Debug, Default)]
struct Downlink {
    /// The connections, by their key on this node.
    members: Mutex<KeyMap<Member>>,
    /// Keys of members whose queue got frames since the task last looked.
    ready: Mutex<Vec<u64>>,
    /// The downlink task, woken when `ready` gets a key.
    task: AtomicWaker,
    /// Credits to send: (socket key on the entry node, bytes it may send).
    credits: Mutex<Vec<(u64, u64)>>,
}

/// A connection on a downlink.
#[derive(Debug)]
struct Member {
    conn: Connection,
    /// The socket's key on the entry node.
    remote: u64,
    /// What the connection's queue wakes: marks the member ready.
    waker: Waker,
    ready: Arc<Ready>,
    /// Cancelled once the connection's close (or drop) was taken.
    closing: CancellationToken,
}

/// A member's waker: puts its key in the downlink's ready list, once until
/// the task takes it.
#[derive(Debug)]
struct Ready {
    key: u64,
    listed: AtomicBool,
    link: Weak<Downlink>,
}

impl std::task::Wake for Ready {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.listed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(link) = self.link.upgrade() {
            lock(&link.ready).push(self.key);
            link.task.wake();
        }
    }
}

/// Per connection, what a downlink took and counts as written once published.
type Taken = Vec<(Connection, usize, usize)>;

impl Downlink {
    /// Adds a forwarded connection (what it queued already goes down
    /// first); the token is cancelled once its close was taken.
    fn attach(self: &Arc<Self>, conn: Connection, remote: u64) -> CancellationToken {
        let ready = Arc::new(Ready {
            key: conn.key(),
            listed: AtomicBool::new(false),
            link: Arc::downgrade(self),
        });
        let waker = Waker::from(ready.clone());
        let closing = CancellationToken::new();
        let member = Member {
            conn,
            remote,
            waker: waker.clone(),
            ready,
            closing: closing.clone(),
        };
        lock(&self.members).insert(member.conn.key(), member);
        waker.wake();
        closing
    }

    /// Lets the entry node's socket `remote` send up to `upto` bytes of
    /// client messages in all.
    fn credit(&self, remote: u64, upto: u64) {
        lock(&self.credits).push((remote, upto));
        self.task.wake();
    }

    /// Removes a connection: nothing more of it goes down.
    fn detach(&self, key: u64) {
        lock(&self.members).remove(&key);
    }

    /// Whether a member's queue woke the task since it last took.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.task.register(cx.waker());
        if lock(&self.ready).is_empty() && lock(&self.credits).is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Takes every frame the ready members queued, in order, into `batch`;
    /// `taken` says what to count as written once they are published. A
    /// connection its instance dropped (queue far over budget) goes down as
    /// a [`kind::DROP`].
    fn take(&self, batch: &mut Vec<Down>, taken: &mut Taken) {
        for (conn, upto) in lock(&self.credits).drain(..) {
            batch.push(Down {
                conn,
                kind: kind::CREDIT,
                data: Bytes::copy_from_slice(&upto.to_be_bytes()),
            });
        }
        let keys = std::mem::take(&mut *lock(&self.ready));
        let members = lock(&self.members);
        let mut frames = std::collections::VecDeque::new();
        for key in keys {
            let Some(m) = members.get(&key) else { continue };
            m.ready.listed.store(false, Ordering::Release);
            let outbox = m.conn.outbox();
            if outbox.is_killed() {
                if !m.closing.is_cancelled() {
                    // Its frames will never go: free them now (as a local
                    // socket does), so that the instance is not held back
                    // by them until the forwarder ends.
                    outbox.shut();
                    m.closing.cancel();
                    batch.push(Down {
                        conn: m.remote,
                        kind: kind::DROP,
                        data: Bytes::new(),
                    });
                }
                continue;
            }
            let mut cx = Context::from_waker(&m.waker);
            if outbox.poll_take(&mut cx, &mut frames).is_pending() {
                continue;
            }
            let (mut count, mut bytes) = (0, 0);
            for out in frames.drain(..) {
                let (kind, data) = match out {
                    Outbound::Data(Message::Text(t)) => {
                        count += 1;
                        bytes += t.len();
                        (kind::TEXT, t.into_bytes())
                    }
                    Outbound::Data(Message::Binary(b)) => {
                        count += 1;
                        bytes += b.len();
                        (kind::BINARY, b)
                    }
                    Outbound::Close(code, reason) => {
                        m.closing.cancel();
                        (kind::CLOSE, close_data(code, &reason))
                    }
                };
                batch.push(Down {
                    conn: m.remote,
                    kind,
                    data,
                });
            }
            taken.push((m.conn.clone(), count, bytes));
        }
    }
}

/// Bytes of a downlink message besides its socket keys and data.
const DOWN_HEADER: usize = 19;

/// A downlink message:
/// `[kind][seq u64][epoch u64][n u16][n × conn key u64][data]`.
fn down_frame(kind: u8, epoch: u64, seq: u64, conns: &[u64], data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(DOWN_HEADER + 8 * conns.len() + data.len());
    b.put_u8(kind);
    b.put_u64(seq);
    b.put_u64(epoch);
    b.put_u16(conns.len() as u16);
    for conn in conns {
        b.put_u64(*conn);
    }
    b.put_slice(data);
    b.freeze()
}

/// A downlink message read back.
#[derive(Debug, PartialEq)]
struct DownMessage {
    kind: u8,
    epoch: u64,
    seq: u64,
    conns: Vec<u64>,
    data: Bytes,
}

/// Splits a downlink message into its parts.
fn parse_down(payload: &Bytes) -> Option<DownMessage> {
    let (kind, seq, rest) = parse(payload)?;
    let epoch = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let n = usize::from(u16::from_be_bytes(rest.get(8..10)?.try_into().ok()?));
    let keys = rest.get(10..10 + 8 * n)?;
    let conns = keys
        .chunks_exact(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap_or_default()))
        .collect();
    Some(DownMessage {
        kind,
        epoch,
        seq,
        conns,
        data: rest.slice(10 + 8 * n..),
    })
}

/// Owner side: publishes the frames the peer's sockets queued, each
/// socket's in order, grouped as [`plan`] says (a broadcast once, naming
/// all its sockets). Ends when the peer is gone.
async fn downlink(wire: Wire, link: Arc<Downlink>, dead: CancellationToken, packer: Packer) {
    let mut seq = 0;
    let (mut batch, mut taken) = (Vec::new(), Taken::new());
    let gone = dead.cancelled();
    tokio::pin!(gone);
    loop {
        tokio::select! {
            () = &mut gone => return,
            () = std::future::poll_fn(|cx| link.poll_ready(cx)) => {}
        }
        link.take(&mut batch, &mut taken);
        let planned = plan(&batch, packer.max_payload);
        for payload in packer.messages(planned, &mut seq) {
            // Once the peer is gone (or no socket links it any more) these
            // frames are for sockets that are gone too.
            if dead.is_cancelled() {
                return;
            }
            if !wire.send(payload).await {
                // The peer's sockets can no longer hear from us: end them
                // here (their forwarders stop) rather than go silent.
                tracing::warn!("cannot send to a peer node; dropping its sockets");
                dead.cancel();
                return;
            }
        }
        batch.clear();
        // Published: off their connections' budgets.
        for (conn, frames, bytes) in taken.drain(..) {
            conn.outbox().written(frames, bytes);
        }
    }
}

/// A frame as planned for the downlink: its kind, the sockets (their keys
/// on the entry node) and its data.
type Planned = (u8, Vec<u64>, Bytes);

/// Bytes of a [`kind::PACK`] record besides its socket keys and data.
const RECORD_HEADER: usize = 7;

/// Bytes of a [`kind::PACK`] record naming `conns` sockets, with `data`
/// bytes.
fn record_len(conns: usize, data: usize) -> usize {
    RECORD_HEADER + 8 * conns + data
}

/// Owner side: how one downlink puts planned frames into NATS messages.
#[derive(Debug)]
struct Packer {
    /// This downlink's id, so that the entry node tells a new one (after
    /// the peer was dropped and taken up again) from frames lost in this one.
    epoch: u64,
    /// The largest message NATS takes.
    max_payload: usize,
    /// Whether the entry node reads [`kind::PACK`] messages.
    packs: bool,
}

impl Packer {
    /// The messages for `planned` frames, in order, numbered from `seq`
    /// on: as many frames per message as fit in `max_payload` when the
    /// entry node reads packs (a lone frame goes as itself), else one each.
    /// A frame larger than NATS carries becomes a close (1009, as for a
    /// message over the limit) for its sockets; the others go on.
    fn messages(&self, planned: Vec<Planned>, seq: &mut u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut group = Vec::new();
        let mut size = DOWN_HEADER;
        for (kind, conns, data) in planned {
            let (kind, data) = if DOWN_HEADER + 8 * conns.len() + data.len() > self.max_payload {
                tracing::warn!(
                    bytes = data.len(),
                    max_payload = self.max_payload,
                    "frame too large for NATS; closing its forwarded sockets"
                );
                (kind::CLOSE, close_data(1009, "Message too big"))
            } else {
                (kind, data)
            };
            let record = record_len(conns.len(), data.len());
            if !group.is_empty() && (!self.packs || size + record > self.max_payload) {
                out.push(self.message(std::mem::take(&mut group), size - DOWN_HEADER, seq));
                size = DOWN_HEADER;
            }
            size += record;
            group.push((kind, conns, data));
        }
        if !group.is_empty() {
            out.push(self.message(group, size - DOWN_HEADER, seq));
        }
        out
    }

    /// One message with `group`'s frames (`records` bytes as a pack): the
    /// next number in `seq`.
    fn message(&self, mut group: Vec<Planned>, records: usize, seq: &mut u64) -> Bytes {
        *seq += 1;
        if group.len() == 1 {
            let (kind, conns, data) = group.pop().unwrap_or_default();
            return down_frame(kind, self.epoch, *seq, &conns, &data);
        }
        let mut records = BytesMut::with_capacity(records);
        for (kind, conns, data) in group {
            put_record(&mut records, kind, &conns, &data);
        }
        down_frame(kind::PACK, self.epoch, *seq, &[], &records)
    }
}

/// Appends one record of a [`kind::PACK`] message.
fn put_record(buf: &mut BytesMut, kind: u8, conns: &[u64], data: &[u8]) {
    buf.put_u8(kind);
    buf.put_u16(conns.len() as u16);
    for conn in conns {
        buf.put_u64(*conn);
    }
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
}

/// The frames of a [`kind::PACK`] message's data; `None` when it is
/// malformed.
fn unpack(mut data: Bytes) -> Option<Vec<Planned>> {
    use bytes::Buf;
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 3 {
            return None;
        }
        let kind = data.get_u8();
        let n = usize::from(data.get_u16());
        if data.len() < 8 * n + 4 {
            return None;
        }
        let conns = (0..n).map(|_| data.get_u64()).collect();
        let len = data.get_u32() as usize;
        if data.len() < len {
            return None;
        }
        out.push((kind, conns, data.split_to(len)));
    }
    Some(out)
}

/// The downlink messages for a batch of frames: each frame once, each
/// socket's frames in their order, and a frame that several sockets have
/// next with the very same bytes (one shared buffer: a broadcast) sent once
/// for all of them — as many as fit in `max_payload` and [`MAX_GROUP`]. A
/// close or drop always goes alone. (The downlink takes each socket's
/// frames at once, so a run of broadcasts arrives socket by socket, not
/// broadcast by broadcast.)
fn plan(batch: &[Down], max_payload: usize) -> Vec<Planned> {
    // Each socket's frames, sockets in the order they first appear.
    let mut queues: Vec<(u64, std::collections::VecDeque<&Down>)> = Vec::new();
    let mut index: KeyMap<usize> = KeyMap::default();
    let mut left = 0;
    for down in batch {
        let i = *index.entry(down.conn).or_insert_with(|| {
            queues.push((down.conn, std::collections::VecDeque::new()));
            queues.len() - 1
        });
        queues[i].1.push_back(down);
        left += 1;
    }
    let same = |a: &Down, b: &Down| {
        a.kind == b.kind
            && matches!(a.kind, kind::TEXT | kind::BINARY)
            && a.data.as_ptr() == b.data.as_ptr()
            && a.data.len() == b.data.len()
    };
    let mut out = Vec::new();
    let mut first = 0;
    while left > 0 {
        while queues[first].1.is_empty() {
            first += 1;
        }
        let Some(head) = queues[first].1.pop_front() else {
            break;
        };
        left -= 1;
        let most =
            (max_payload.saturating_sub(DOWN_HEADER + head.data.len()) / 8).clamp(1, MAX_GROUP);
        let mut conns = vec![head.conn];
        for (conn, queue) in &mut queues[first + 1..] {
            if conns.len() >= most {
                break;
            }
            if queue.front().is_some_and(|next| same(next, head)) {
                queue.pop_front();
                left -= 1;
                conns.push(*conn);
            }
        }
        out.push((head.kind, conns, head.data.clone()));
    }
    out
}

/// Entry side: the sockets on this node that one owner's frames go to.
#[derive(Debug, Default)]
struct Inbound {
    conns: Mutex<KeyMap<Connection>>,
    /// What the owner lets each socket send (sockets whose owner grants).
    credits: Mutex<KeyMap<Arc<Credit>>>,
    /// Set when the links broke ([`Node::break_links`]): the sockets that
    /// may have missed frames are closed, so the downlink's sequence
    /// starts over with the next message.
    restart: AtomicBool,
}

impl Inbound {
    /// Closes every socket (1012: the client reconnects).
    fn close_all(&self) {
        let conns: Vec<Connection> = lock(&self.conns).drain().map(|(_, c)| c).collect();
        for conn in conns {
            conn.close(1012, "Service restart");
        }
        for credit in lock(&self.credits).values() {
            credit.close();
        }
    }

    /// Hands one frame to each of `keys`' sockets.
    fn deliver(&self, kind: u8, keys: &[u64], data: Bytes) {
        if kind == kind::CREDIT {
            let Ok(upto) = data.as_ref().try_into().map(u64::from_be_bytes) else {
                return;
            };
            let credits = lock(&self.credits);
            for credit in keys.iter().filter_map(|key| credits.get(key)) {
                credit.grant(upto);
            }
            return;
        }
        let text = match kind {
            kind::TEXT => Utf8Bytes::try_from(data.clone()).ok(),
            _ => None,
        };
        let mut conns = lock(&self.conns);
        for key in keys {
            let Some(conn) = conns.get(key) else { continue };
            match kind {
                kind::TEXT => match &text {
                    Some(text) => {
                        let _ = conn.send(Message::Text(text.clone()));
                    }
                    None => conn.close(1011, "Bad frame from the owner"),
                },
                kind::BINARY => {
                    let _ = conn.send(Message::Binary(data.clone()));
                }
                kind::DROP => conn.outbox().kill(),
                kind::CLOSE if data.len() >= 2 => {
                    let code = u16::from_be_bytes([data[0], data[1]]);
                    conn.close(code, &String::from_utf8_lossy(&data[2..]));
                }
                _ => {}
            }
            if !conn.is_open() {
                conns.remove(key);
                if let Some(credit) = lock(&self.credits).get(key) {
                    credit.close();
                }
            }
        }
    }
}

/// Entry side: reads one owner's downlink into the sockets, until the
/// owner is gone (then every socket it served is closed with 1012). A gap
/// in the sequence means frames were lost: the sockets linked at that
/// moment are closed (1012), later ones are served. The first message read
/// sets the sequence (the owner's downlink may be older than this
/// subscription: its earlier frames were for sockets gone before), and so
/// does the first after the links broke (the sockets that may have missed
/// frames were closed then); a downlink the owner started anew (another
/// epoch) must begin at 1.
async fn demux(
    mut down: futures_util::stream::BoxStream<'static, Bytes>,
    inbound: Arc<Inbound>,
    dead: CancellationToken,
) {
    let mut at: Option<(u64, u64)> = None; // (epoch, next seq)
    let dead = dead.cancelled();
    tokio::pin!(dead);
    loop {
        let msg = tokio::select! {
            () = &mut dead => {
                inbound.close_all();
                return;
            }
            msg = down.next() => msg,
        };
        let Some(payload) = msg else {
            inbound.close_all();
            return;
        };
        let Some(m) = parse_down(&payload) else {
            continue;
        };
        if inbound.restart.swap(false, Ordering::AcqRel) {
            at = None;
        }
        let lost = match at {
            None => false,
            Some((epoch, next)) if epoch == m.epoch => m.seq != next,
            Some(_) => m.seq != 1,
        };
        if lost {
            tracing::warn!(
                seq = m.seq,
                "frames lost between nodes; closing the sockets"
            );
            inbound.close_all();
        }
        at = Some((m.epoch, m.seq + 1));
        if m.kind != kind::PACK {
            inbound.deliver(m.kind, &m.conns, m.data);
            continue;
        }
        // A pack holds frames for sockets only (no pack in a pack).
        let frames = unpack(m.data).filter(|frames| {
            frames.iter().all(|(kind, ..)| {
                matches!(
                    *kind,
                    kind::TEXT | kind::BINARY | kind::CLOSE | kind::DROP | kind::CREDIT
                )
            })
        });
        let Some(frames) = frames else {
            tracing::warn!(seq = m.seq, "bad frame from the owner; closing the sockets");
            inbound.close_all();
            continue;
        };
        for (kind, conns, data) in frames {
            inbound.deliver(kind, &conns, data);
        }
    }
}

/// Entry side: how many bytes of client messages a forwarded socket may
/// have sent up in all, as its owner grants ([`UP_WINDOW`] to start).
#[derive(Debug)]
struct Credit {
    granted: AtomicU64,
    /// Set when the socket is being closed: nothing more goes up.
    closed: AtomicBool,
    /// The socket's admission waiting for more.
    waker: AtomicWaker,
}

/// The most of [`UP_WINDOW`] one message (or read) waits for: the owner
/// grants once a quarter window was taken since its last grant, so when it
/// has taken everything up to three quarters are surely free — a larger
/// message goes then, alone.
const UP_ALONE: u64 = UP_WINDOW - UP_WINDOW / 4;

impl Credit {
    fn new() -> Self {
        Credit {
            granted: AtomicU64::new(UP_WINDOW),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn grant(&self, upto: u64) {
        self.granted.fetch_max(upto, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The socket is being closed: a wait for room ends (with nothing sent).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether messages costing `len` may go after `sent`: while at most
    /// [`UP_WINDOW`] is in flight (a message costing more than
    /// [`UP_ALONE`] once no more than a quarter is).
    fn has_room(&self, sent: u64, len: u64) -> bool {
        self.granted.load(Ordering::Acquire) >= sent + len.min(UP_ALONE)
    }

    /// Ready with true once messages costing `len` may go after `sent`,
    /// with false once the socket is being closed.
    fn poll_room(&self, cx: &mut Context<'_>, sent: u64, len: u64) -> Poll<bool> {
        for _ in 0..2 {
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            if self.has_room(sent, len) {
                return Poll::Ready(true);
            }
            self.waker.register(cx.waker());
        }
        Poll::Pending
    }
}

/// Unlinks a peer when dropped, unless disarmed.
struct Unlink(Option<Arc<Peer>>);

/// Owner side: a directly linked socket's frames stop arriving when this
/// is dropped.
struct Uplink(Arc<Peer>, u64);

impl Drop for Uplink {
    fn drop(&mut self) {
        lock(&self.0.uplinks).remove(&self.1);
    }
}

impl Unlink {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Some(peer) = self.0.take() {
            peer.unlink();
        }
    }
}

/// The entry node's end of a forwarded socket: the client's messages go up
/// to the owner. Dropping it stops the owner's frames coming down.
#[derive(Debug)]
pub(crate) struct RemoteLink {
    /// Where this socket's frames go up.
    up: Wire,
    seq: u64,
    /// Whether the owner reads [`kind::PACK`] messages and grants
    /// [`kind::CREDIT`].
    packs: bool,
    /// The largest message NATS takes.
    max_payload: usize,
    /// What the owner lets this socket send, and what it sent (bytes).
    credit: Arc<Credit>,
    sent: u64,
    /// The last send that waited for credit: how many of its frames went
    /// out, and the sequence number before them (a socket that ends while
    /// it waits numbers its `CLOSED` after what really went).
    waited: Option<(Arc<AtomicU64>, u64)>,
    peer: Arc<Peer>,
    /// Where the owner's frames for this socket arrive.
    inbound: Arc<Inbound>,
    conn: Connection,
    /// Whether the owner was told how the socket ended ([`Self::closed`]).
    told: bool,
}

impl Drop for RemoteLink {
    fn drop(&mut self) {
        lock(&self.inbound.credits).remove(&self.conn.key());
        let linked = lock(&self.inbound.conns).remove(&self.conn.key());
        if linked.is_some() {
            self.conn.close(1012, "Service restart");
        }
        self.peer.unlink();
        if !self.told {
            // Dropped without `closed` (the socket went while it was being
            // opened): the owner would keep the connection until this node
            // goes. Tell it the socket is gone — and again 2 s later, in
            // case the owner had not subscribed to it yet (it subscribes
            // before running `on_connect`, so a slow hook is covered).
            let up = self.up.clone();
            let gone = frame(kind::CLOSED, self.next_seq(), &closed_data(1006, false, ""));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    up.send(gone.clone()).await;
                    tokio::time::sleep(REQUEST_TIMEOUT).await;
                    up.send(gone).await;
                });
            }
        }
    }
}

/// The frames up for client messages read together, numbered on from
/// `seq`: as many per NATS message as fit in `max_payload` when the owner
/// reads packs (a lone one goes as itself), else one each.
fn up_frames(messages: &[Message], seq: &mut u64, packs: bool, max_payload: usize) -> Vec<Bytes> {
    let record = |m: &Message| record_len(0, m.len());
    let mut out = Vec::with_capacity(if packs { 1 } else { messages.len() });
    let mut start = 0;
    while start < messages.len() {
        let (mut end, mut size) = (start + 1, 9 + record(&messages[start]));
        while packs && end < messages.len() && size + record(&messages[end]) <= max_payload {
            size += record(&messages[end]);
            end += 1;
        }
        if end - start == 1 {
            out.push(up_frame(&messages[start], seq));
        } else {
            *seq += 1;
            let mut b = BytesMut::with_capacity(size);
            b.put_u8(kind::PACK);
            b.put_u64(*seq);
            for message in &messages[start..end] {
                let (kind, data) = message_parts(message);
                put_record(&mut b, kind, &[], data);
            }
            out.push(b.freeze());
        }
        start = end;
    }
    out
}

/// The frame up for one client message: the next number in `seq`.
fn up_frame(message: &Message, seq: &mut u64) -> Bytes {
    *seq += 1;
    let (kind, data) = message_parts(message);
    frame(kind, *seq, data)
}

/// A client message's frame kind and bytes.
fn message_parts(message: &Message) -> (u8, &[u8]) {
    match message {
        Message::Text(t) => (kind::TEXT, t.as_bytes()),
        Message::Binary(b) => (kind::BINARY, b),
    }
}

/// The client message of a `TEXT` or `BINARY` frame; `None` for anything
/// else, or text that is not UTF-8.
fn client_message(kind: u8, data: Bytes) -> Option<Message> {
    match kind {
        kind::TEXT => Utf8Bytes::try_from(data).ok().map(Message::Text),
        kind::BINARY => Some(Message::Binary(data)),
        _ => None,
    }
}

/// The data of a `CLOSE` frame (down, to the client): `[code u16][reason]`.
fn close_data(code: u16, reason: &str) -> Bytes {
    let mut data = BytesMut::with_capacity(2 + reason.len());
    data.put_u16(code);
    data.put_slice(reason.as_bytes());
    data.freeze()
}

/// The data of a `CLOSED` frame (up, to the owner): `[code u16][clean u8][reason]`.
fn closed_data(code: u16, was_clean: bool, reason: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(3 + reason.len());
    data.extend_from_slice(&code.to_be_bytes());
    data.push(u8::from(was_clean));
    data.extend_from_slice(reason.as_bytes());
    data
}

impl RemoteLink {
    /// Sends a client message to the owner (in order).
    pub(crate) fn admit(&mut self, message: Message) -> Admit {
        self.send_up(std::slice::from_ref(&message))
    }

    /// Sends client messages read together to the owner (in order).
    pub(crate) fn admit_many(&mut self, messages: Vec<Message>) -> Admit {
        self.send_up(&messages)
    }

    /// Publishes `messages` up in order once the owner's credit has room
    /// for them (at once when it has).
    fn send_up(&mut self, messages: &[Message]) -> Admit {
        if self.peer.dead.is_cancelled() {
            return Admit::Closed;
        }
        let (sent, len) = (self.sent, up_cost(messages));
        self.sent += len;
        let before = self.seq;
        match messages {
            // (One message, the common case, without a vector.)
            [message] => {
                let frame = up_frame(message, &mut self.seq);
                self.publish(std::iter::once(frame), before, sent, len)
            }
            _ => {
                let frames = up_frames(messages, &mut self.seq, self.packs, self.max_payload);
                self.publish(frames, before, sent, len)
            }
        }
    }

    /// Publishes `frames` (numbered after `before`) once the owner's
    /// credit has room for messages costing `len` after `sent`.
    fn publish<F>(&mut self, frames: F, before: u64, sent: u64, len: u64) -> Admit
    where
        F: IntoIterator<Item = Bytes> + Send + 'static,
        F::IntoIter: Send,
    {
        let up = self.up.clone();
        if !self.packs || self.credit.has_room(sent, len) {
            self.waited = None;
            return Admit::Wait(Box::pin(publish_up(up, frames, None)));
        }
        let (credit, went) = (self.credit.clone(), Arc::new(AtomicU64::new(0)));
        self.waited = Some((went.clone(), before));
        Admit::Wait(Box::pin(async move {
            if !std::future::poll_fn(|cx| credit.poll_room(cx, sent, len)).await {
                // Being closed: these messages no longer reach the agent
                // (as on one node), and the socket reads on to its close.
                return true;
            }
            publish_up(up, frames, Some(went)).await
        }))
    }

    /// The sequence number of the next frame up, after those that really
    /// went (frames of a send that never got room did not).
    fn next_seq(&mut self) -> u64 {
        if let Some((went, before)) = self.waited.take() {
            self.seq = before + went.load(Ordering::Acquire);
        }
        self.seq += 1;
        self.seq
    }

    /// The socket ended: tells the owner how.
    pub(crate) async fn closed(mut self, info: CloseInfo) {
        let seq = self.next_seq();
        self.told = true;
        let data = closed_data(info.code, info.was_clean, &info.reason);
        self.up.send(frame(kind::CLOSED, seq, &data)).await;
    }
}

/// Where frames for a peer go: a NATS subject, or the direct connection
/// with it (up, with the socket's key on the entry node).
#[derive(Debug, Clone)]
enum Wire {
    Nats(Arc<async_nats::Client>, Subject),
    Direct(LinkTx, u64),
}

impl Wire {
    /// Sends one frame (in order); false when it cannot go.
    async fn send(&self, frame: Bytes) -> bool {
        match self {
            Wire::Nats(client, subject) => client.publish(subject.clone(), frame).await.is_ok(),
            Wire::Direct(tx, key) => tx.send(*key, frame).await,
        }
    }
}

/// Publishes `frames` up in order, counting in `went` those that went;
/// false when one cannot go (NATS refused it, or the direct connection is gone).
async fn publish_up(
    up: Wire,
    frames: impl IntoIterator<Item = Bytes>,
    went: Option<Arc<AtomicU64>>,
) -> bool {
    for frame in frames {
        if !up.send(frame).await {
            return false;
        }
        if let Some(went) = &went {
            went.fetch_add(1, Ordering::AcqRel);
        }
    }
    true
}

/// What one up frame brought: a client message, or several (a pack).
enum Up {
    One(Message),
    Many(Vec<Message>),
}

/// The owner's end of a forwarded socket: hands the client's messages to
/// the instance, and ends the connection when the socket or its peer does
/// (the peer's [`Downlink`] carries its frames down).
struct Forwarder {
    conn: Connection,
    /// The peer's downlink, and this socket's key on the peer.
    down: Arc<Downlink>,
    remote_key: u64,
    peer: Arc<Peer>,
    fence: CancellationToken,
    /// Cancelled when messages between the nodes may have been lost.
    links: CancellationToken,
    /// Whether the entry node keeps to credits ([`UP_WINDOW`]).
    grants: bool,
}

impl Forwarder {
    async fn run(
        self,
        mut up: futures_util::stream::BoxStream<'static, Bytes>,
        handle: Option<InstanceHandle>,
    ) {
        // Frames queued by the connect (identity, or a refusal's close) go
        // down first thing.
        let closing = self.down.attach(self.conn.clone(), self.remote_key);
        let mut expected = 1;
        // Bytes of client messages the instance took, and when the last
        // credit went down.
        let (mut consumed, mut credited) = (0u64, 0u64);
        let mut info: Option<CloseInfo> = None;
        let mut close_deadline: Option<tokio::time::Instant> = None;
        // Made once, not per message (each registers with its token).
        let (dead, fenced, closed, broken) = (
            self.peer.dead.cancelled(),
            self.fence.cancelled(),
            closing.cancelled(),
            self.links.cancelled(),
        );
        tokio::pin!(dead, fenced, closed, broken);
        loop {
            let deadline = async {
                match close_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut dead => break,
                () = &mut fenced => break,
                // Ends as below: the client hears 1012 and reconnects.
                () = &mut broken => break,
                () = deadline => break,
                // Our close went down: the entry node answers with CLOSED.
                () = &mut closed, if close_deadline.is_none() => {
                    close_deadline =
                        Some(tokio::time::Instant::now() + crate::config::CLOSE_TIMEOUT);
                }
                msg = up.next() => {
                    let Some(payload) = msg else { break };
                    let Some((kind, seq, data)) = parse(&payload) else { continue };
                    if seq != expected {
                        tracing::warn!(expected, seq, "frames lost between nodes; closing the socket");
                        break;
                    }
                    expected += 1;
                    let up = match kind {
                        kind::TEXT | kind::BINARY => match client_message(kind, data) {
                            Some(message) => Up::One(message),
                            None => break,
                        },
                        kind::PACK => {
                            let messages = unpack(data).and_then(|records| {
                                records
                                    .into_iter()
                                    .map(|(kind, _, data)| client_message(kind, data))
                                    .collect::<Option<Vec<_>>>()
                            });
                            match messages {
                                Some(messages) if !messages.is_empty() => Up::Many(messages),
                                _ => break,
                            }
                        }
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
                    let (admit, len) = match up {
                        Up::One(message) => {
                            let len = up_cost([&message]);
                            (handle.try_admit(self.conn.key(), message), len)
                        }
                        Up::Many(messages) => {
                            let len = up_cost(&messages);
                            (handle.try_admit_many(self.conn.key(), messages), len)
                        }
                    };
                    let delivered = match admit {
                        Admit::Done => true,
                        Admit::Wait(waiting) => waiting.await,
                        Admit::Closed => false,
                    };
                    if !delivered {
                        break;
                    }
                    // Taken: the entry node may send as much again (told
                    // in quarters of the window, not per message).
                    consumed += len;
                    if self.grants && consumed - credited >= UP_WINDOW / 4 {
                        credited = consumed;
                        self.down.credit(self.remote_key, consumed + UP_WINDOW);
                    }
                }
            }
        }
        // Ended here (a gap, a bad frame, the instance gone, the links
        // broken) rather than by
        // the entry node (CLOSED) or a close we sent: the client still has
        // to hear it — the instance's own close if it queued one (this one
        // is then ignored), else 1012 so that it reconnects. Wait (a
        // little) until the downlink took it.
        if info.is_none() && !self.peer.dead.is_cancelled() && !self.fence.is_cancelled() {
            self.conn.close(1012, "Service restart");
            tokio::select! {
                _ = closing.cancelled() => {}
                _ = self.peer.dead.cancelled() => {}
                _ = tokio::time::sleep(crate::config::CLOSE_TIMEOUT) => {}
            }
        }
        self.down.detach(self.conn.key());
        self.conn.outbox().shut();
        self.peer.unlink();
        if let Some(handle) = handle {
            let info = info.unwrap_or(CloseInfo {
                code: 1006,
                reason: String::new(),
                was_clean: false,
            });
            let _ = handle
                .send(Command::Event(Event::Closed {
                    key: self.conn.key(),
                    info,
                }))
                .await;
        }
    }
}

/// What an operator is told when NATS's `max_payload` (the largest message
/// it takes) is below `max_state_bytes`: an instance's state and key-value
/// data are stored as one value, so a state the agent may set (up to
/// `max_state_bytes`) would fail to store (`StorageError::TooLarge`), where
/// a single node takes it. `None` when they fit (with room for the
/// key-value data and encoding).
fn payload_warning(max_payload: usize, max_state_bytes: usize) -> Option<String> {
    // The stored value's encoding around the state, and some key-value data.
    const ROOM: usize = 64 * 1024;
    (max_payload < max_state_bytes.saturating_add(ROOM)).then(|| {
        format!(
            "the NATS server's max_payload ({max_payload} bytes) is below max_state_bytes \
             ({max_state_bytes}) plus room for key-value data: larger states fail to store, \
             and forwarded messages over max_payload close their sockets with 1009; raise \
             max_payload in the NATS configuration (8 MB is NATS's recommended maximum) or \
             lower --max-state-bytes (docs/cluster.md)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_payload_below_the_state_limit_is_reported() {
        let mib = 1024 * 1024;
        // NATS's default (1 MiB) against the default state limit (2 MiB).
        let warning = payload_warning(mib, 2 * mib).expect("1 MiB cannot hold a 2 MiB state");
        assert!(warning.contains("max_payload (1048576 bytes)"), "{warning}");
        assert!(warning.contains("max_state_bytes (2097152)"), "{warning}");
        // The recommended 8 MB holds it; so does 1 MiB with a 512 KiB limit.
        assert_eq!(payload_warning(8_000_000, 2 * mib), None);
        assert_eq!(payload_warning(mib, mib / 2), None);
        // Equal is not enough: the value holds more than the state.
        assert!(payload_warning(2 * mib, 2 * mib).is_some());
    }

    fn down(conn: u64, kind: u8, data: &Bytes) -> Down {
        Down {
            conn,
            kind,
            data: data.clone(),
        }
    }

    #[test]
    fn a_broadcast_goes_down_once_per_node_in_order() {
        let state = Bytes::from_static(b"{\"type\":\"cf_agent_state\"}");
        let next = Bytes::from(b"{\"type\":\"cf_agent_state\",\"n\":2}".to_vec());
        let reply = Bytes::from(b"{\"type\":\"rpc\"}".to_vec());
        // Equal text in another buffer is another frame (not a broadcast).
        let lookalike = Bytes::from(state.to_vec());
        let conns = |plan: &[Planned]| -> Vec<Vec<u64>> {
            plan.iter().map(|(_, c, _)| c.clone()).collect()
        };
        // Socket by socket, as forwarders queue them: two broadcasts, a
        // reply between them for socket 2, a lookalike, a binary frame with
        // the same bytes, closes.
        let batch = vec![
            down(1, kind::TEXT, &state),
            down(1, kind::TEXT, &next),
            down(2, kind::TEXT, &state),
            down(2, kind::TEXT, &reply),
            down(2, kind::TEXT, &next),
            down(3, kind::TEXT, &state),
            down(3, kind::TEXT, &next),
            down(4, kind::TEXT, &lookalike),
            down(5, kind::BINARY, &state),
            down(6, kind::CLOSE, &state),
            down(7, kind::CLOSE, &state),
        ];
        let planned = plan(&batch, 1 << 20);
        assert_eq!(
            conns(&planned),
            [
                vec![1, 2, 3],
                vec![1, 3],
                vec![2],
                vec![2],
                vec![4],
                vec![5],
                vec![6],
                vec![7]
            ]
        );
        assert_eq!(planned[0].2, state);
        assert_eq!(
            (planned[1].2.clone(), planned[2].2.clone()),
            (next.clone(), reply)
        );
        assert_eq!(planned[3].2, next);
        assert_eq!(planned[5].0, kind::BINARY);
        // Each socket's frames in order, each frame once.
        for socket in 1..=7u64 {
            let mine: Vec<&Bytes> = planned
                .iter()
                .filter(|(_, c, _)| c.contains(&socket))
                .map(|(_, _, d)| d)
                .collect();
            let expected = match socket {
                1 | 3 => 2,
                2 => 3,
                _ => 1,
            };
            assert_eq!(mine.len(), expected, "socket {socket}");
        }
        // Bounded by the payload NATS takes and by MAX_GROUP.
        let many = |n: u64| {
            (0..n)
                .map(|c| down(c, kind::TEXT, &state))
                .collect::<Vec<_>>()
        };
        let sizes = |p: Vec<Planned>| p.iter().map(|(_, c, _)| c.len()).collect::<Vec<_>>();
        assert_eq!(
            sizes(plan(&many(1100), 1 << 20)),
            [MAX_GROUP, MAX_GROUP, 76]
        );
        assert_eq!(
            sizes(plan(&many(7), DOWN_HEADER + state.len() + 8 * 3)),
            [3, 3, 1]
        );
        assert_eq!(sizes(plan(&many(2), 10)), [1, 1]);
        assert!(plan(&[], 1 << 20).is_empty());
    }

    fn forwarded(key: u64) -> (Connection, Arc<crate::connection::Flow>) {
        let limits = crate::connection::QueueLimits {
            frames: 2,
            bytes: 1 << 20,
        };
        let conn = Connection::new(key, format!("c{key}"), "/".into(), limits);
        let flow = Arc::new(crate::connection::Flow::new(Default::default()));
        conn.outbox().attach(flow.clone());
        (conn, flow)
    }

    fn is_ready(link: &Downlink) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        link.poll_ready(&mut cx).is_ready()
    }

    fn taken(link: &Downlink) -> (Vec<(u64, u8, Bytes)>, Taken) {
        let (mut batch, mut taken) = (Vec::new(), Taken::new());
        link.take(&mut batch, &mut taken);
        let batch = batch
            .into_iter()
            .map(|d| (d.conn, d.kind, d.data))
            .collect();
        (batch, taken)
    }

    #[test]
    fn the_downlink_takes_what_forwarded_connections_queue() {
        let link = Arc::new(Downlink::default());
        let (a, flow) = forwarded(1);
        let closing = link.attach(a.clone(), 10);
        // Attached with nothing queued: looked at once, nothing taken.
        assert!(is_ready(&link));
        assert!(taken(&link).0.is_empty());
        assert!(!is_ready(&link));
        // Three frames (over the budget of two) mark it ready once; taken
        // in order under the entry node's key.
        for text in ["a", "b", "c"] {
            a.send(text).unwrap();
        }
        assert!(flow.is_behind());
        assert_eq!(lock(&link.ready).len(), 1);
        let (batch, written) = taken(&link);
        let texts: Vec<_> = batch.iter().map(|(c, k, d)| (*c, *k, d.clone())).collect();
        assert_eq!(
            texts,
            [
                (10, kind::TEXT, Bytes::from_static(b"a")),
                (10, kind::TEXT, Bytes::from_static(b"b")),
                (10, kind::TEXT, Bytes::from_static(b"c")),
            ]
        );
        // Still counted in the connection's budget until published.
        assert!(flow.is_behind());
        for (conn, frames, bytes) in written {
            assert_eq!((frames, bytes), (3, 3));
            conn.outbox().written(frames, bytes);
        }
        assert!(!flow.is_behind());
        // A close is taken like a frame and cancels the token.
        assert!(!closing.is_cancelled());
        a.close(4000, "bye");
        let (batch, _) = taken(&link);
        assert_eq!(batch, [(10, kind::CLOSE, close_data(4000, "bye"))]);
        assert!(closing.is_cancelled());
        // Detached: its frames are no longer taken.
        let (b, _) = forwarded(2);
        let _ = link.attach(b.clone(), 20);
        link.detach(2);
        b.send("x").unwrap();
        assert!(taken(&link).0.is_empty());
    }

    #[test]
    fn a_dropped_forwarded_connection_goes_down_as_a_drop_once() {
        let link = Arc::new(Downlink::default());
        let (conn, flow) = forwarded(3);
        let closing = link.attach(conn.clone(), 30);
        let _ = taken(&link);
        // One turn queues far past the hard limit: the connection is dropped.
        let refused = (0..20).map(|_| conn.send("x")).find_map(Result::err);
        assert!(matches!(refused, Some(crate::SendError::QueueFull)));
        assert!(flow.is_behind());
        let (batch, _) = taken(&link);
        assert_eq!(batch, [(30, kind::DROP, Bytes::new())]);
        assert!(closing.is_cancelled());
        // Its frames are freed: the instance is not held back by them.
        assert!(!flow.is_behind());
        // Woken again, it is not dropped twice.
        conn.outbox().kill();
        assert!(taken(&link).0.is_empty());
        // The entry node drops its socket (no closing handshake).
        let inbound = Inbound::default();
        let (entry, _) = forwarded(30);
        lock(&inbound.conns).insert(30, entry.clone());
        inbound.deliver(kind::DROP, &[30], Bytes::new());
        assert!(entry.outbox().is_killed());
        assert!(lock(&inbound.conns).is_empty());
    }

    #[test]
    fn frames_go_down_packed_as_they_fit() {
        let frame = |kind, conns: &[u64], data: &'static [u8]| {
            (kind, conns.to_vec(), Bytes::from_static(data))
        };
        let planned = vec![
            frame(kind::TEXT, &[1], b"one"),
            frame(kind::BINARY, &[2, 3], b"two"),
            frame(kind::CLOSE, &[1], b"\x03\xe8bye"),
        ];
        let read = |payloads: Vec<Bytes>| -> Vec<(u64, Vec<Planned>)> {
            payloads
                .iter()
                .map(|p| {
                    let m = parse_down(p).unwrap();
                    assert_eq!(m.epoch, 9);
                    let frames = match m.kind {
                        kind::PACK => unpack(m.data).unwrap(),
                        kind => vec![(kind, m.conns, m.data)],
                    };
                    (m.seq, frames)
                })
                .collect()
        };
        let mut packer = Packer {
            epoch: 9,
            max_payload: 1 << 20,
            packs: true,
        };
        // All in one message, numbered on from `seq`.
        let mut seq = 4;
        let payloads = packer.messages(planned.clone(), &mut seq);
        assert_eq!(parse_down(&payloads[0]).unwrap().kind, kind::PACK);
        assert_eq!(read(payloads), [(5, planned.clone())]);
        assert_eq!(seq, 5);
        // A lone frame goes as itself.
        let one = vec![planned[0].clone()];
        let payloads = packer.messages(one.clone(), &mut seq);
        assert_eq!(parse_down(&payloads[0]).unwrap().kind, kind::TEXT);
        assert_eq!(read(payloads), [(6, one)]);
        // As many as fit: the first two (header 19 + records 7+8+3 and
        // 7+16+3) fit in 63 bytes, the third not.
        packer.max_payload = 63;
        let payloads = packer.messages(planned.clone(), &mut seq);
        assert!(payloads.iter().all(|p| p.len() <= 63));
        assert_eq!(
            read(payloads),
            [(7, planned[..2].to_vec()), (8, planned[2..].to_vec())]
        );
        // Too large for NATS alone: a close (1009) for its sockets instead.
        packer.max_payload = DOWN_HEADER + 8 + 20;
        let big = vec![frame(kind::TEXT, &[4], b"far too long for NATS here")];
        let payloads = packer.messages(big, &mut seq);
        assert!(payloads.iter().all(|p| p.len() <= packer.max_payload));
        assert_eq!(
            read(payloads),
            [(
                9,
                vec![(kind::CLOSE, vec![4], close_data(1009, "Message too big"))]
            )]
        );
        // An entry node that does not read packs gets one frame a message.
        let mut seq = 0;
        let old = Packer {
            epoch: 9,
            max_payload: 1 << 20,
            packs: false,
        };
        let payloads = old.messages(planned.clone(), &mut seq);
        assert!(payloads
            .iter()
            .all(|p| parse_down(p).unwrap().kind != kind::PACK));
        let frames: Vec<_> = read(payloads).into_iter().flat_map(|(_, f)| f).collect();
        assert_eq!(frames, planned);
        // Malformed packs are refused, not half read.
        let whole = packer_records(&planned);
        for cut in [1, 5, whole.len() - 1] {
            assert!(unpack(whole.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert_eq!(unpack(whole).unwrap(), planned);
    }

    #[test]
    fn client_messages_read_together_go_up_packed_as_they_fit() {
        let messages = vec![
            Message::Text("one".into()),
            Message::Binary(Bytes::from_static(b"\x00\x01")),
            Message::Text("three".into()),
        ];
        // What the owner makes of them: (seq, messages).
        let read = |frames: Vec<Bytes>| -> Vec<(u64, Vec<Message>)> {
            frames
                .iter()
                .map(|f| {
                    let (kind, seq, data) = parse(f).unwrap();
                    let messages = match kind {
                        kind::PACK => unpack(data)
                            .unwrap()
                            .into_iter()
                            .map(|(kind, conns, data)| {
                                assert!(conns.is_empty());
                                client_message(kind, data).unwrap()
                            })
                            .collect(),
                        kind => vec![client_message(kind, data).unwrap()],
                    };
                    (seq, messages)
                })
                .collect()
        };
        let mut seq = 2;
        let frames = up_frames(&messages, &mut seq, true, 1 << 20);
        assert_eq!(read(frames), [(3, messages.clone())]);
        // As many as fit: header 9 + records 7+3 and 7+2 = 28 bytes.
        let frames = up_frames(&messages, &mut seq, true, 28);
        assert!(frames.iter().all(|f| f.len() <= 28));
        assert_eq!(
            read(frames),
            [(4, messages[..2].to_vec()), (5, messages[2..].to_vec())]
        );
        // An owner that does not read packs: one a message.
        let frames = up_frames(&messages, &mut seq, false, 1 << 20);
        let singles: Vec<_> = messages.iter().map(|m| vec![m.clone()]).collect();
        assert_eq!(read(frames), (6..=8).zip(singles).collect::<Vec<_>>());
        // Text that is not UTF-8 is no client message.
        assert!(client_message(kind::TEXT, Bytes::from_static(b"\xff")).is_none());
        assert!(client_message(kind::CLOSED, Bytes::new()).is_none());
    }

    /// The records of a pack of `planned`, as the data of its message.
    fn packer_records(planned: &[Planned]) -> Bytes {
        let packer = Packer {
            epoch: 0,
            max_payload: 1 << 20,
            packs: true,
        };
        parse_down(&packer.messages(planned.to_vec(), &mut 0)[0])
            .unwrap()
            .data
    }

    #[test]
    fn a_forwarded_socket_sends_within_its_credit() {
        // Tiny messages cost more than their bytes: a window holds far
        // fewer than async-nats keeps per subscription.
        assert_eq!(up_cost(&[Message::Text("ab".into())]), 2 + UP_MESSAGE_COST);
        const { assert!(UP_WINDOW / UP_MESSAGE_COST <= 65_536 / 4) };
        let credit = Credit::new();
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Count(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        // A window's worth goes at once, not a byte more.
        assert!(credit.poll_room(&mut cx, 0, UP_WINDOW).is_ready());
        assert!(credit.poll_room(&mut cx, UP_WINDOW, 1).is_pending());
        // The owner took some: as much again may go, and the wait ends.
        credit.grant(UP_WINDOW + 10);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert!(credit.poll_room(&mut cx, UP_WINDOW, 10).is_ready());
        assert!(credit.poll_room(&mut cx, UP_WINDOW, 11).is_pending());
        // Credits only grow (a late, smaller one changes nothing).
        credit.grant(5);
        assert!(credit.poll_room(&mut cx, UP_WINDOW, 10).is_ready());
        // A message larger than three quarters of the window goes alone,
        // once no more than a quarter is in flight.
        let (sent, big) = (UP_WINDOW / 4 + 20, 3 * UP_WINDOW);
        assert!(credit.poll_room(&mut cx, sent, big).is_pending());
        credit.grant(sent + UP_ALONE);
        assert_eq!(credit.poll_room(&mut cx, sent, big), Poll::Ready(true));
        // Being closed ends a wait, with nothing sent.
        assert!(credit.poll_room(&mut cx, sent + big, 1).is_pending());
        credit.close();
        assert_eq!(credit.poll_room(&mut cx, sent + big, 1), Poll::Ready(false));
        // The owner's credits go down on the downlink, as the entry node
        // reads them.
        let link = Arc::new(Downlink::default());
        let upto = UP_WINDOW + 1234;
        link.credit(7, upto);
        assert!(is_ready(&link));
        let (batch, _) = taken(&link);
        assert_eq!(
            batch,
            [(7, kind::CREDIT, Bytes::copy_from_slice(&upto.to_be_bytes()))]
        );
        let inbound = Inbound::default();
        let credit = Arc::new(Credit::new());
        lock(&inbound.credits).insert(7, credit.clone());
        inbound.deliver(kind::CREDIT, &[7, 8], batch[0].2.clone());
        assert_eq!(credit.granted.load(Ordering::SeqCst), upto);
    }

    #[test]
    fn every_message_gets_room_once_the_owner_took_all_before_it() {
        // The owner's rule (Forwarder::run): after taking messages, grant
        // `taken + UP_WINDOW` once a quarter window was taken since the
        // last grant. Whatever the sizes, a message waiting behind nothing
        // the owner has not taken has room.
        let credit = Credit::new();
        let (mut sent, mut consumed, mut credited) = (0u64, 0u64, 0u64);
        let sizes = [66, 2 << 20, 10, 700 << 10, 64, 300 << 10, 5 << 20, 1, 1];
        for len in sizes.into_iter().cycle().take(40) {
            assert!(credit.has_room(sent, len), "stuck at {sent} (+{len})");
            sent += len;
            consumed += len;
            if consumed - credited >= UP_WINDOW / 4 {
                credited = consumed;
                credit.grant(consumed + UP_WINDOW);
            }
        }
    }

    #[test]
    fn downlink_messages_read_back() {
        let data = Bytes::from_static(b"hello");
        let payload = down_frame(kind::TEXT, 42, 7, &[3, u64::MAX], &data);
        assert_eq!(
            parse_down(&payload),
            Some(DownMessage {
                kind: kind::TEXT,
                epoch: 42,
                seq: 7,
                conns: vec![3, u64::MAX],
                data
            })
        );
        // Truncated: more sockets announced than present.
        assert_eq!(parse_down(&payload.slice(..20)), None);
        assert_eq!(parse_down(&Bytes::from_static(b"short")), None);
    }
}
