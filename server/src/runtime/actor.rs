//! One agent instance = one actor task: the [`InstanceHandle`] the sockets
//! and the registry hold (a bounded inbox, bounded in bytes too), and the
//! task that owns the agent value, its context, state and connections, and
//! runs every hook one at a time in arrival order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use agents_protocol::message::{StateDecodeError, TypedClientMessage};
use agents_protocol::{
    ClientMessage, Identity, Incoming, McpState, RpcRequest, RpcResponse, ServerMessage,
    SetupError, READONLY_ERROR, SETUP_FAILED_REASON, STATE_REJECTED_ERROR,
};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

use super::hooks::{guarded, guarded_sync};
use super::signals::{Signal, Signals};
use super::InstanceKey;
use crate::agent::Agent;
use crate::config::{Config, MAX_TAGS, MAX_TAG_LEN};
use crate::connection::{Connection, Flow};
use crate::context::{AgentContext, ConnectContext, StateFrame, StateSource};
use crate::error::{HookError, RpcError, StorageError, TagError};
use crate::log::{CloseDisplay, Trunc};
use crate::message::Message;
use crate::metrics::{AgentMetrics, InstanceMetrics, Limit};
use crate::request::RequestInfo;
use crate::rpc::Call;
use crate::storage::InstanceStorage;

/// Accounting charge of a message in an inbox, on top of its payload (the
/// queue entry), so that many tiny messages count too.
pub(crate) const INBOX_OVERHEAD: usize = 128;

/// Events handled in one batch before the sockets that got frames are woken
/// (a socket read's messages count one each: the last event may take the
/// batch up to 31 turns over).
const BATCH_EVENTS: usize = 64;

/// Batches an instance takes straight from a busy inbox before it looks
/// at shutdown, eviction and its lease again.
const QUICK_BATCHES: u32 = 32;

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

/// How a socket ended, for `on_close`.
#[derive(Debug, Clone)]
pub(crate) struct CloseInfo {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) was_clean: bool,
}

/// Events for an instance, handled one at a time in arrival order.
#[derive(Debug)]
pub(crate) enum Command {
    /// A data message from a registered socket, holding `cost` of the
    /// inbox's byte budget until handled (the actor gives the budget back
    /// once per batch, not per message).
    Message {
        key: u64,
        message: Message,
        cost: u32,
    },
    /// Data messages from one read of a registered socket, in order; each
    /// is handled as its own [`Command::Message`] would be. `cost` as there.
    Messages {
        key: u64,
        messages: Vec<Message>,
        cost: u32,
    },
    /// Anything else, handled as it comes.
    Event(Event),
}

/// The events besides data messages. (Boxed parts keep every command
/// small: one is moved several times on its way, and messages are most of
/// them.)
#[derive(Debug)]
pub(crate) enum Event {
    /// Register a socket; `ack` answers whether it was accepted.
    Connect {
        conn: Connection,
        request: Box<RequestInfo>,
        ack: oneshot::Sender<bool>,
    },
    /// A registered socket ended.
    Closed { key: u64, info: CloseInfo },
    /// A plain HTTP request to the instance.
    Request {
        request: Box<http::Request<Body>>,
        reply: oneshot::Sender<Response>,
    },
}

impl Command {
    /// The bytes of the inbox's budget the command holds.
    fn cost(&self) -> u32 {
        match self {
            Command::Message { cost, .. } | Command::Messages { cost, .. } => *cost,
            Command::Event(_) => 0,
        }
    }
}

/// What [`Actor::turn`] handles: one message (alone, or one of a read's
/// [`Command::Messages`]) or another event.
enum Turn {
    Message { key: u64, message: Message },
    Event(Event),
}

/// What offering a message to an instance did.
pub(crate) enum Admit {
    /// It is in the inbox.
    Done,
    /// The inbox is full: this completes (true) once it is in, or (false)
    /// when the instance stopped.
    Wait(Pin<Box<dyn Future<Output = bool> + Send>>),
    /// The instance stopped.
    Closed,
}

/// Cheap-to-clone handle to one instance's actor.
#[derive(Debug, Clone)]
pub(crate) struct InstanceHandle {
    tx: mpsc::Sender<Command>,
    /// Bytes the inbox may still take.
    inbox_bytes: Arc<Semaphore>,
    inbox_budget: usize,
    pub(crate) generation: u64,
    pub(crate) control: Arc<Control>,
}

/// What the registry sees of, and asks of, a running instance.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// When the instance last became idle (no connections), as
    /// milliseconds on [`Control::clock`]; 0 while it is busy.
    idle_since: AtomicU64,
    /// Asks the instance to stop now (the registry needs room).
    pub(crate) evict: CancellationToken,
    /// Cancelled once the actor ended and left the registry.
    pub(crate) finished: CancellationToken,
}

impl Control {
    /// Milliseconds since the first call; never 0.
    fn clock() -> u64 {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let epoch = *EPOCH.get_or_init(std::time::Instant::now);
        epoch.elapsed().as_millis() as u64 + 1
    }

    fn set_idle(&self, idle: bool) {
        let now = if idle { Self::clock() } else { 0 };
        // Keep the first moment of a stretch of idleness.
        let _ = self
            .idle_since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |since| {
                match (idle, since) {
                    (true, 0) => Some(now),
                    (true, _) => None,
                    (false, _) => Some(0),
                }
            });
    }

    /// Since when the instance is idle, if it is.
    pub(crate) fn idle_since(&self) -> Option<u64> {
        match self.idle_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since),
        }
    }
}

impl InstanceHandle {
    /// Queues an event, waiting for room in the inbox.
    pub(crate) async fn send(&self, cmd: Command) -> Result<(), mpsc::error::SendError<Command>> {
        self.tx.send(cmd).await
    }

    /// Offers a socket's message; takes its bytes from the inbox budget.
    pub(crate) fn try_admit(&self, key: u64, message: Message) -> Admit {
        let cost = self.cost(message.len() + INBOX_OVERHEAD);
        self.offer(Command::Message { key, message, cost })
    }

    /// Offers messages one read of a socket brought, as one event.
    pub(crate) fn try_admit_many(&self, key: u64, messages: Vec<Message>) -> Admit {
        let bytes = messages.iter().map(|m| m.len() + INBOX_OVERHEAD).sum();
        let cost = self.cost(bytes);
        self.offer(Command::Messages {
            key,
            messages,
            cost,
        })
    }

    /// What `bytes` of messages take from the budget: a message (or read)
    /// larger than the whole budget still passes, alone.
    fn cost(&self, bytes: usize) -> u32 {
        bytes.min(self.inbox_budget) as u32
    }

    fn offer(&self, cmd: Command) -> Admit {
        // The bytes leave the budget (the permit is forgotten) only once
        // the command is in the inbox: the actor gives them back. A message
        // that never got in (its socket gave up waiting) returns them.
        match self.inbox_bytes.try_acquire_many(cmd.cost()) {
            Ok(permit) => match self.tx.try_send(cmd) {
                Ok(()) => {
                    permit.forget();
                    Admit::Done
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Admit::Closed,
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    drop(permit);
                    self.admit_later(cmd)
                }
            },
            Err(TryAcquireError::Closed) => Admit::Closed,
            Err(TryAcquireError::NoPermits) => self.admit_later(cmd),
        }
    }

    /// Waits for `cmd`'s bytes of budget and a slot for it.
    fn admit_later(&self, cmd: Command) -> Admit {
        let (tx, bytes, cost) = (self.tx.clone(), self.inbox_bytes.clone(), cmd.cost());
        Admit::Wait(Box::pin(async move {
            let Ok(permit) = bytes.acquire_many_owned(cost).await else {
                return false;
            };
            let sent = tx.send(cmd).await.is_ok();
            if sent {
                permit.forget();
            }
            sent
        }))
    }
}

/// What an actor needs from the server: its key, the limits, its storage
/// and the shutdown signal — nothing else.
#[derive(Debug)]
pub(crate) struct ActorEnv {
    pub(crate) key: InstanceKey,
    pub(crate) config: Arc<Config>,
    pub(crate) storage: InstanceStorage,
    pub(crate) shutdown: CancellationToken,
    pub(crate) generation: u64,
    /// Metrics of the agent type.
    pub(crate) metrics: Arc<AgentMetrics>,
    /// Cluster mode: this node's hold on the instance.
    pub(crate) fence: Option<Fence>,
}

/// In cluster mode, what ends an instance here: this node's lease, lost or
/// expiring (checked before every batch of events).
#[derive(Debug)]
pub(crate) struct Fence {
    pub(crate) token: CancellationToken,
    pub(crate) node: Arc<super::cluster::Node>,
}

impl Fence {
    fn holds(&self) -> bool {
        !self.token.is_cancelled() && self.node.valid()
    }
}

/// Creates the actor for one instance; the caller spawns the returned task.
pub(crate) fn start<A: Agent>(
    env: ActorEnv,
    agent: A,
) -> (InstanceHandle, impl Future<Output = ()> + Send) {
    let (tx, rx) = mpsc::channel(env.config.inbox_capacity.max(1));
    let budget = env
        .config
        .inbox_bytes
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let flow = Arc::new(Flow::new(env.storage.progress().clone()));
    let control = Arc::new(Control::default());
    let (failures, failed) = mpsc::unbounded_channel();
    let replies = Arc::new(Replies::default());
    env.storage.on_settle({
        let (flow, replies) = (flow.clone(), replies.clone());
        Arc::new(move |seq, result: Result<(), StorageError>| {
            replies.settle(seq, result.as_ref().err());
            flow.settle(seq, result.is_ok());
            if let Err(error) = result {
                let _ = failures.send((seq, error));
            }
        })
    });
    let inbox_bytes = Arc::new(Semaphore::new(budget));
    let handle = InstanceHandle {
        tx,
        inbox_bytes: inbox_bytes.clone(),
        inbox_budget: budget,
        generation: env.generation,
        control: control.clone(),
    };
    let instance_metrics = InstanceMetrics::start(&env.key.agent);
    let cx = AgentContext::new(
        env.key.agent.clone(),
        env.key.name.clone(),
        env.storage.clone(),
        env.config.max_state_bytes,
        instance_metrics.state_writes.clone(),
    );
    let actor = Actor {
        agent,
        cx,
        rx,
        queued: VecDeque::new(),
        got: Vec::new(),
        quick: 0,
        inbox: InboxBudget {
            bytes: inbox_bytes,
            freed: 0,
        },
        env,
        flow,
        control,
        failed,
        replies,
        lost_upto: 0,
        broken: None,
        moved: None,
        stopping: false,
        _metrics: instance_metrics,
    };
    (handle, actor.run())
}

struct Actor<A: Agent> {
    agent: A,
    cx: AgentContext<A>,
    rx: mpsc::Receiver<Command>,
    /// Events taken from `rx` and not yet handled, in order (at most
    /// [`BATCH_EVENTS`] beyond the inbox's capacity; their bytes stay in
    /// the byte budget until handled); `got` is where
    /// [`Actor::next_queued`] receives them.
    queued: VecDeque<Command>,
    got: Vec<Command>,
    /// Batches in a row taken without looking at the other signals.
    quick: u32,
    inbox: InboxBudget,
    env: ActorEnv,
    flow: Arc<Flow>,
    control: Arc<Control>,
    /// Batches that failed to become durable.
    failed: mpsc::UnboundedReceiver<(u64, StorageError)>,
    /// Who gets an error reply if a batch fails.
    replies: Arc<Replies>,
    /// Batches up to this one were lost with a failure already handled.
    lost_upto: u64,
    /// Why the instance cannot run (its stored state cannot be read).
    broken: Option<String>,
    /// Another node owns the instance now: stop.
    moved: Option<()>,
    /// Server shutdown began: refuse new connections, exit once empty.
    stopping: bool,
    /// Counts the instance live while it exists.
    _metrics: InstanceMetrics,
}

/// The actor's side of the inbox's byte budget: what handled messages
/// held, given back once per batch (one lock of the semaphore, not one per
/// message); closed when the actor goes, so that a socket waiting for room
/// learns the instance stopped.
struct InboxBudget {
    bytes: Arc<Semaphore>,
    freed: usize,
}

impl InboxBudget {
    /// Bytes of the budget (a command's `cost`, or part of it) are being
    /// handled: they are free after this batch.
    fn took_bytes(&mut self, cost: u32) {
        self.freed += cost as usize;
    }

    /// The batch is handled: its bytes go back to the budget.
    fn give_back(&mut self) {
        let freed = std::mem::take(&mut self.freed);
        if freed > 0 {
            self.bytes.add_permits(freed);
        }
    }
}

impl Drop for InboxBudget {
    fn drop(&mut self) {
        self.bytes.close();
    }
}

/// A client waiting for the outcome of a batch: its reply or state update
/// becomes an error if the batch fails.
#[derive(Debug)]
enum Waiter {
    Rpc { conn: Connection, id: String },
    State { conn: Connection },
}

/// The waiters of batches not yet settled, in batch order.
#[derive(Debug, Default)]
struct Replies {
    waiting: std::sync::Mutex<std::collections::VecDeque<(u64, Waiter)>>,
}

impl Replies {
    fn add(&self, seq: u64, waiter: Waiter) {
        self.lock().push_back((seq, waiter));
    }

    /// Batch `seq` settled: its waiters are done, with an error reply if it failed.
    fn settle(&self, seq: u64, error: Option<&StorageError>) {
        let mut waiting = self.lock();
        while waiting.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, waiter) = waiting.pop_front().expect("a front entry");
            let Some(error) = error else { continue };
            match waiter {
                Waiter::Rpc { conn, id } => {
                    let reply = RpcResponse::Error {
                        id,
                        error: error.to_string(),
                    };
                    conn.send_now(ServerMessage::Rpc(reply).to_json());
                }
                Waiter::State { conn } => {
                    let error = format!("{STATE_REJECTED_ERROR}: {error}");
                    conn.send_now(ServerMessage::StateError(error).to_json());
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, Waiter)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<A: Agent> Actor<A> {
    async fn run(mut self) {
        self.start().await;
        let shutdown = self.env.shutdown.clone();
        let evict = self.control.evict.clone();
        let fenced = self
            .env
            .fence
            .as_ref()
            .map_or_else(CancellationToken::new, |f| f.token.clone());
        let idle_timeout = self.env.config.idle_timeout;
        let mut signals = Signals::new(&fenced, &evict, &shutdown);
        loop {
            let idle = self.cx.connection_count() == 0;
            let behind = self.flow.is_behind();
            if self.moved.is_some() || self.env.fence.as_ref().is_some_and(|f| !f.holds()) {
                self.leave();
                break;
            }
            // What the inbox holds (or was taken from it earlier, when a
            // client fell behind mid-batch), without the select below:
            // failed writes and whether a signal woke us are checked each
            // time (cheaply), the signals themselves every QUICK_BATCHES
            // batches and whenever the inbox is empty.
            let quick =
                !behind && self.quick < QUICK_BATCHES && self.failed.is_empty() && !signals.woke();
            let queued = if quick {
                self.next_queued().await
            } else {
                None
            };
            let cmd = if let Some(cmd) = queued {
                self.quick += 1;
                cmd
            } else {
                self.quick = 0;
                tokio::select! {
                biased;
                signal = std::future::poll_fn(|cx| signals.poll_next(cx)) => match signal {
                    Signal::Fenced => continue,
                    Signal::Evicted => {
                        // Chosen while idle; a socket that raced in
                        // reconnects to the instance's next incarnation.
                        for conn in self.cx.connections() {
                            conn.close(1013, "Try again later");
                        }
                        tracing::debug!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), "evicted to make room");
                        self.env.metrics.evicted("capacity");
                        break;
                    }
                    Signal::Shutdown => {
                        self.stopping = true;
                        for conn in self.cx.connections() {
                            conn.close(1001, "Server shutting down");
                        }
                        if idle {
                            break;
                        }
                        continue;
                    }
                },
                Some((seq, error)) = self.failed.recv() => {
                    self.write_failed(seq, error).await;
                    continue;
                }
                // A client is behind its queue budget: take no input until
                // it catches up (or its socket gives up on it).
                _ = self.flow.caught_up(), if behind => continue,
                // Taken earlier: next, once the signals above were seen.
                () = std::future::ready(()), if !behind && !self.queued.is_empty() => {
                    match self.queued.pop_front() {
                        Some(cmd) => cmd,
                        None => continue,
                    }
                }
                cmd = self.rx.recv(), if !behind && self.queued.is_empty() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                // (A timer only while idle: made when first polled.)
                () = async { tokio::time::sleep(idle_timeout).await }, if idle && !self.stopping => {
                    tracing::debug!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), "evicting idle instance");
                    self.env.metrics.evicted("idle");
                    break;
                }
                }
            };
            // Everything already in the inbox is handled before the sockets
            // are woken, so a burst leaves each socket in one write.
            self.flow.begin_batch();
            let mut turns = self.handle(cmd).await;
            while turns < BATCH_EVENTS {
                if self.flow.is_behind() {
                    break;
                }
                let Some(cmd) = self.next_queued().await else {
                    break;
                };
                turns += self.handle(cmd).await;
            }
            self.flow.end_batch();
            self.inbox.give_back();
            let idle = self.cx.connection_count() == 0;
            self.control.set_idle(idle);
            if self.stopping && idle {
                break;
            }
        }
        self.stop().await;
    }

    /// Restores the stored state through [`Agent::upgrade_state`]: `Ok(false)`
    /// when there is none; an error (the instance cannot run) when it cannot
    /// be read. Stored state is never deleted here.
    async fn restore(&mut self) -> Result<bool, String> {
        let key = &self.env.key;
        let stored = match self.cx.storage().load_state().await {
            Ok(stored) => stored,
            Err(StorageError::Fenced) => {
                self.moved = Some(());
                return Err("The instance moved to another node".into());
            }
            Err(err) => {
                tracing::error!(agent = %Trunc(&key.agent), name = %Trunc(&key.name), %err, "cannot load state");
                return Err(format!("Cannot load state: {err}"));
            }
        };
        let Some(json) = stored else { return Ok(false) };
        let len = json.len();
        let agent = &self.agent;
        let upgraded = crate::offload::json(len, || {
            guarded_sync("upgrade_state", || {
                let stored: serde_json::Value = serde_json::from_str(&json)?;
                agent.upgrade_state(stored)
            })
        });
        match upgraded {
            Ok(state) => {
                self.cx.restore_state(state, len);
                Ok(true)
            }
            Err(err) => {
                let err = err.client_message();
                tracing::error!(agent = %Trunc(&key.agent), name = %Trunc(&key.name), err = %Trunc(&err), "stored state does not fit the agent's state type; the instance will not start (see Agent::upgrade_state)");
                Err(format!("Stored state does not fit: {err}"))
            }
        }
    }

    async fn start(&mut self) {
        match self.restore().await {
            Ok(true) => {}
            Ok(false) => self.seed_initial_state().await,
            Err(reason) => {
                if self.moved.is_none() {
                    self.broken = Some(reason);
                }
                return;
            }
        }
        self.cx.storage().begin_turn();
        let (agent, cx) = (&mut self.agent, &mut self.cx);
        let result = guarded("on_start", || agent.on_start(cx)).await;
        if let Err(err) = result {
            self.report(None, err).await;
        }
        self.after_hook().await;
        self.cx.storage().end_turn();
    }

    async fn seed_initial_state(&mut self) {
        let agent = &self.agent;
        match guarded_sync("initial_state", || Ok(agent.initial_state())) {
            Ok(Some(state)) => self.cx.restore_state(state, 0),
            Ok(None) => {}
            Err(err) => self.report(None, err).await,
        }
    }

    /// A batch failed to become durable. Its output (and that of every
    /// batch after it) is gone, and its waiters got error replies; here the
    /// instance returns to what is on disk and tells the agent.
    async fn write_failed(&mut self, seq: u64, error: StorageError) {
        if seq <= self.lost_upto {
            return;
        }
        if matches!(error, StorageError::Fenced) {
            // Another node took the instance over: it serves from now on.
            self.moved = Some(());
            return;
        }
        // Batches opened so far fail with it (the backend refuses them
        // until the reset, which queues behind them).
        self.lost_upto = self.cx.storage().progress().opened.load(Ordering::Acquire);
        tracing::error!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), %error, "writes lost; the state returns to what is stored");
        self.cx.storage().reset();
        match self.restore().await {
            Ok(true) => {}
            Ok(false) => self.seed_initial_state().await,
            Err(reason) => {
                for conn in self.cx.connections() {
                    conn.close(1011, &reason);
                }
                self.broken = Some(reason);
            }
        }
        self.report(None, HookError::Storage(error)).await;
    }

    /// This node no longer owns the instance (cluster mode): its clients
    /// reconnect, and reach the new owner.
    fn leave(&mut self) {
        tracing::info!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), "instance no longer owned here; closing its sockets");
        for conn in self.cx.connections() {
            conn.close(1012, "Service restart");
        }
    }

    /// Stops taking events; what is still queued is handled or bounced (a
    /// connect gets no ack, so its socket retries on a fresh instance).
    async fn stop(&mut self) {
        self.rx.close();
        while let Some(cmd) = match self.queued.pop_front() {
            Some(cmd) => Some(cmd),
            None => self.rx.recv().await,
        } {
            match cmd {
                Command::Event(event @ (Event::Closed { .. } | Event::Request { .. })) => {
                    self.turn(Turn::Event(event)).await;
                }
                Command::Event(Event::Connect { .. })
                | Command::Message { .. }
                | Command::Messages { .. } => {}
            }
        }
        self.cx.storage().release();
    }

    /// The next event already taken, or else in the inbox now (whatever it
    /// holds is taken at once: its slots go back to senders in one go, not
    /// one lock per event); `None` when there is none.
    async fn next_queued(&mut self) -> Option<Command> {
        if self.queued.is_empty() {
            let (rx, got) = (&mut self.rx, &mut self.got);
            std::future::poll_fn(|cx| {
                let _ = rx.poll_recv_many(cx, got, BATCH_EVENTS);
                Poll::Ready(())
            })
            .await;
            self.queued.extend(self.got.drain(..));
        }
        self.queued.pop_front()
    }

    /// Handles an event; returns the turns it took (a read's messages take
    /// one each, so that a batch of events stays a batch of turns).
    async fn handle(&mut self, cmd: Command) -> usize {
        let turn = match cmd {
            Command::Messages {
                key,
                messages,
                cost,
            } => return self.messages(key, messages, cost).await,
            Command::Message { key, message, cost } => {
                self.inbox.took_bytes(cost);
                Turn::Message { key, message }
            }
            Command::Event(event) => Turn::Event(event),
        };
        self.turn(turn).await;
        1
    }

    /// One read's messages: each its own turn, as if it came alone.
    async fn messages(&mut self, key: u64, messages: Vec<Message>, cost: u32) -> usize {
        let mut messages = messages.into_iter();
        let mut turns = 0;
        while let Some(message) = messages.next() {
            turns += 1;
            self.turn(Turn::Message { key, message }).await;
            if messages.len() > 0 && self.flow.is_behind() {
                // A client fell behind: the rest waits with whatever else
                // was taken, holding its share of the budget until handled.
                let rest: Vec<Message> = messages.collect();
                let bytes: usize = rest.iter().map(|m| m.len() + INBOX_OVERHEAD).sum();
                let held = u32::try_from(bytes).map_or(cost, |bytes| bytes.min(cost));
                self.inbox.took_bytes(cost - held);
                self.queued.push_front(Command::Messages {
                    key,
                    messages: rest,
                    cost: held,
                });
                return turns;
            }
        }
        self.inbox.took_bytes(cost);
        turns
    }

    async fn turn(&mut self, turn: Turn) {
        self.cx.storage().begin_turn();
        self.dispatch(turn).await;
        self.cx.storage().end_turn();
    }

    async fn dispatch(&mut self, turn: Turn) {
        if let Some(reason) = &self.broken {
            match turn {
                Turn::Event(Event::Connect { conn, ack, .. }) => {
                    conn.close(1011, reason);
                    let _ = ack.send(false);
                }
                Turn::Event(Event::Request { reply, .. }) => {
                    let _ = reply
                        .send((StatusCode::INTERNAL_SERVER_ERROR, reason.clone()).into_response());
                }
                Turn::Message { .. } | Turn::Event(Event::Closed { .. }) => {}
            }
            return;
        }
        match turn {
            Turn::Event(Event::Connect { conn, request, ack }) => {
                // The rarer events' futures are boxed: every message moves
                // this future, sized by its largest branch.
                let accepted = Box::pin(self.connect(conn, *request)).await;
                let _ = ack.send(accepted);
            }
            Turn::Message { key, message } => {
                let Some(conn) = self.cx.get(key).cloned() else {
                    return;
                };
                self.cx.begin_message_turn(key);
                self.message(conn, message).await;
                self.cx.end_turn();
                self.after_hook().await;
            }
            Turn::Event(Event::Closed { key, info }) => Box::pin(self.closed(key, info)).await,
            Turn::Event(Event::Request { request, reply }) => {
                let (agent, cx) = (&mut self.agent, &mut self.cx);
                let result = guarded("on_request", || agent.on_request(cx, *request)).await;
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
        if self.cx.connection_count() >= self.env.config.max_connections_per_instance {
            tracing::warn!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), "too many connections");
            crate::metrics::refused(Limit::ConnectionsPerInstance);
            conn.close(1013, "Too many connections");
            return false;
        }
        conn.outbox().attach(self.flow.clone());
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
        self.cx.begin_turn(Some(&conn));
        let (agent, cx) = (&mut self.agent, &mut self.cx);
        let result = guarded("on_connect", || agent.on_connect(cx, &conn, &ctx)).await;
        self.cx.end_turn();
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
    fn send_connect_frames(&mut self, conn: &Connection) {
        let state = self.cx.state_frame();
        let identity = ServerMessage::Identity(Identity {
            name: self.cx.name().to_owned(),
            agent: self.cx.agent().to_owned(),
            state_follows: state.is_some(),
        });
        let _ = conn.send(identity.to_json());
        if let Some(state) = state {
            let _ = conn.send(state);
        }
        let _ = conn.send(ServerMessage::McpServers(McpState::default()).to_json());
    }

    async fn fail_setup(&mut self, conn: &Connection, err: HookError) -> bool {
        tracing::warn!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), id = %Trunc(conn.id()), err = %Trunc(&err.to_string()), "connection setup failed");
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
        let (max, readonly) = (self.cx.max_state_bytes(), conn.is_readonly());
        let inbound = match &message {
            Message::Text(text) if crate::offload::is_large(text.len()) => {
                let text = text.clone();
                Box::pin(crate::offload::json_owned(text.len(), move || {
                    Inbound::<A::State>::decode(&text, max, readonly)
                }))
                .await
            }
            Message::Text(text) => Inbound::decode(text, max, readonly),
            Message::Binary(_) => Inbound::User,
        };
        match inbound {
            Inbound::State(state) => {
                Box::pin(self.client_state(conn, state, message.len())).await;
            }
            Inbound::ReadonlyState => {
                let _ = conn.send(ServerMessage::StateError(READONLY_ERROR.to_owned()).to_json());
            }
            Inbound::Rpc(call) => Box::pin(self.rpc(&conn, call)).await,
            Inbound::User => {
                let (agent, cx) = (&mut self.agent, &mut self.cx);
                let result = guarded("on_message", || agent.on_message(cx, &conn, message)).await;
                if let Err(err) = result {
                    tracing::warn!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), id = %Trunc(conn.id()), err = %Trunc(&err.to_string()), "on_message failed");
                    self.report(Some(conn), err).await;
                }
            }
        }
    }

    /// validate → encode → store → broadcast to the others → notify. `len`:
    /// the frame's length, to size the new frame.
    async fn client_state(
        &mut self,
        conn: Connection,
        next: Result<A::State, StateDecodeError>,
        len: usize,
    ) {
        let refuse = |error: String| {
            let _ = conn.send(ServerMessage::StateError(error).to_json());
        };
        let next = match next {
            Ok(next) => next,
            Err(err) => {
                if matches!(err, StateDecodeError::TooLarge { .. }) {
                    crate::metrics::refused(Limit::StateSize);
                }
                return refuse(format!("{STATE_REJECTED_ERROR}: {err}"));
            }
        };
        let source = StateSource::Client(conn.clone());
        let agent = &self.agent;
        if let Err(err) = guarded_sync("validate_state_change", || {
            agent.validate_state_change(&next, &source)
        }) {
            tracing::info!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), id = %Trunc(conn.id()), err = %Trunc(&err.to_string()), "state update rejected");
            return refuse(STATE_REJECTED_ERROR.to_owned());
        }
        // Encoded once, about as long as it came: the frame the others get
        // and the text storage writes.
        let max = self.cx.max_state_bytes();
        let (next, frame) = crate::offload::json_owned(len, move || {
            let frame = StateFrame::encode(&next, max, len);
            (next, frame)
        })
        .await;
        let frame = match frame {
            Ok(frame) => self.cx.install_state(next, frame),
            Err(err) => {
                tracing::error!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), %err, "state not stored");
                return refuse(format!("{STATE_REJECTED_ERROR}: {err}"));
            }
        };
        self.cx.broadcast_frame(frame, Some(conn.id()));
        self.wait_for_batch(Waiter::State { conn: conn.clone() });
        let (agent, cx) = (&mut self.agent, &mut self.cx);
        let result = guarded("on_state_update", || agent.on_state_update(cx, source)).await;
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
        let started = std::time::Instant::now();
        let mut call = Call::new(request.id, request.method, request.args, conn.clone());
        let outcome = {
            let (agent, cx, call) = (&mut self.agent, &mut self.cx, &mut call);
            guarded("on_call", || {
                let fut = agent.on_call(cx, call);
                async { Ok(fut.await) }
            })
            .await
        };
        let (id, method) = call.into_parts();
        let known = !matches!(outcome, Ok(Err(RpcError::NoSuchMethod)));
        let failed = !matches!(outcome, Ok(Ok(_)));
        self.env
            .metrics
            .rpc(&method, known, failed, started.elapsed().as_secs_f64());
        let reply = match outcome {
            Ok(Ok(reply)) => RpcResponse::Success {
                id,
                result: reply.into_result(),
                done: true,
            },
            Ok(Err(err)) => {
                if !matches!(err, RpcError::NoSuchMethod) {
                    tracing::info!(method = %Trunc(&method), err = %Trunc(&err.to_string()), "rpc error");
                }
                RpcResponse::Error {
                    error: err.into_message(&method),
                    id,
                }
            }
            Err(err) => {
                tracing::error!(method = %Trunc(&method), err = %Trunc(&err.to_string()), "rpc method panicked");
                RpcResponse::Error {
                    error: err.client_message(),
                    id,
                }
            }
        };
        if let RpcResponse::Success { id, .. } = &reply {
            self.wait_for_batch(Waiter::Rpc {
                conn: conn.clone(),
                id: id.clone(),
            });
        }
        let _ = conn.send(ServerMessage::Rpc(reply).to_json());
    }

    /// If this turn wrote, `waiter` hears about its batch's failure.
    fn wait_for_batch(&self, waiter: Waiter) {
        if let Some(seq) = self.cx.storage().progress().waiting_for() {
            self.replies.add(seq, waiter);
        }
    }

    async fn closed(&mut self, key: u64, info: CloseInfo) {
        let Some(conn) = self.cx.remove(key) else {
            return;
        };
        tracing::debug!(id = %Trunc(conn.id()), close = %CloseDisplay(info.code, &info.reason), "connection closed");
        self.cx.begin_turn(Some(&conn));
        let (agent, cx) = (&mut self.agent, &mut self.cx);
        let result = guarded("on_close", || {
            agent.on_close(cx, &conn, info.code, &info.reason, info.was_clean)
        })
        .await;
        self.cx.end_turn();
        if let Err(err) = result {
            self.report(Some(conn), err).await;
        }
        self.after_hook().await;
    }

    /// Runs `on_state_update` for a state the agent itself changed.
    async fn after_hook(&mut self) {
        if !self.cx.take_state_changed() {
            return;
        }
        // Boxed (as `report`'s hook): this future is part of every
        // message's, and most messages change no state.
        let (agent, cx) = (&mut self.agent, &mut self.cx);
        let result = Box::pin(guarded("on_state_update", || {
            agent.on_state_update(cx, StateSource::Server)
        }))
        .await;
        // A change made inside on_state_update is not re-notified.
        self.cx.take_state_changed();
        if let Err(err) = result {
            self.report(None, err).await;
        }
    }

    async fn report(&mut self, conn: Option<Connection>, err: HookError) {
        let (agent, cx) = (&mut self.agent, &mut self.cx);
        let result = Box::pin(guarded("on_error", || {
            let fut = agent.on_error(cx, conn.as_ref(), err);
            async {
                fut.await;
                Ok(())
            }
        }))
        .await;
        if let Err(err) = result {
            tracing::error!(agent = %Trunc(&self.env.key.agent), name = %Trunc(&self.env.key.name), err = %Trunc(&err.to_string()), "on_error failed");
        }
    }
}

/// Why a state was refused whose type's `Deserialize` panicked.
const STATE_PANICKED: &str = "the state could not be read (its type's Deserialize panicked)";

/// What a client's data message is to the instance.
enum Inbound<S> {
    /// A state frame: the state, or why it is refused.
    State(Result<S, StateDecodeError>),
    /// A state frame from a readonly connection (not parsed).
    ReadonlyState,
    /// An RPC call.
    Rpc(RpcRequest),
    /// Anything else: the agent's `on_message` gets it unchanged.
    User,
}

impl<S: DeserializeOwned> Inbound<S> {
    /// Decodes a text message; a state of at most `max` bytes is parsed
    /// into `S` in the same pass, unless the connection is `readonly`.
    fn decode(text: &str, max: usize, readonly: bool) -> Self {
        if readonly {
            return Self::untyped(text, || Inbound::ReadonlyState);
        }
        // `S`'s `Deserialize` is the agent's code: a panic in it refuses
        // this state (as an invalid one), it never ends the instance.
        let typed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            TypedClientMessage::<S>::decode(text, max)
        }));
        match typed {
            Ok(Incoming::Protocol(TypedClientMessage::State(state))) => Inbound::State(state),
            Ok(Incoming::Protocol(TypedClientMessage::Rpc(call))) => Inbound::Rpc(call),
            Ok(Incoming::Raw(_)) => Inbound::User,
            Err(_) => {
                tracing::warn!("the state type's Deserialize panicked; state refused");
                Self::untyped(text, || {
                    let err = serde::de::Error::custom(STATE_PANICKED);
                    Inbound::State(Err(StateDecodeError::Invalid(err)))
                })
            }
        }
    }

    /// Decodes a text message without parsing its state; a state frame is
    /// what `state` makes.
    fn untyped(text: &str, state: impl FnOnce() -> Self) -> Self {
        match ClientMessage::decode(text) {
            Incoming::Protocol(ClientMessage::State(_)) => state(),
            Incoming::Protocol(ClientMessage::Rpc(call)) => Inbound::Rpc(call),
            Incoming::Raw(_) => Inbound::User,
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
                tag: Trunc(tag).to_string(),
                max: MAX_TAG_LEN,
            });
        }
    }
    Ok(tags.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose inbox holds one event and `budget` bytes.
    fn handle(budget: usize) -> (InstanceHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(1);
        let handle = InstanceHandle {
            tx,
            inbox_bytes: Arc::new(Semaphore::new(budget)),
            inbox_budget: budget,
            generation: 0,
            control: Arc::default(),
        };
        (handle, rx)
    }

    #[tokio::test]
    async fn a_message_that_never_got_in_gives_its_bytes_back() {
        let budget = 1000;
        let (handle, mut rx) = handle(budget);
        let text = |t: &str| Message::Text(t.into());
        let cost = "ab".len() + INBOX_OVERHEAD;
        // In the inbox: its bytes are out of the budget until the actor
        // gives them back.
        assert!(matches!(handle.try_admit(1, text("ab")), Admit::Done));
        assert_eq!(handle.inbox_bytes.available_permits(), budget - cost);
        // The inbox is full: a socket that stops waiting (it closed) takes
        // nothing from the budget.
        let Admit::Wait(waiting) = handle.try_admit(1, text("cd")) else {
            panic!("the inbox is full")
        };
        drop(waiting);
        assert_eq!(handle.inbox_bytes.available_permits(), budget - cost);
        // Over the budget: the same while waiting for bytes.
        let big = "x".repeat(900);
        let Admit::Wait(mut waiting) = handle.try_admit(1, text(&big)) else {
            panic!("over the budget")
        };
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(waiting);
        assert_eq!(handle.inbox_bytes.available_permits(), budget - cost);
        // Once a waiting message is in, its bytes are out.
        let Admit::Wait(waiting) = handle.try_admit(1, text("ef")) else {
            panic!("the inbox is full")
        };
        let taken = tokio::spawn(waiting);
        assert!(rx.recv().await.is_some());
        assert!(taken.await.unwrap());
        assert_eq!(handle.inbox_bytes.available_permits(), budget - 2 * cost);
    }

    #[tokio::test]
    async fn one_read_of_messages_is_one_event_costing_all_their_bytes() {
        let budget = 1000;
        let (handle, mut rx) = handle(budget);
        let text = |t: &str| Message::Text(t.into());
        let three = vec![text("a"), text("bc"), text("def")];
        assert!(matches!(handle.try_admit_many(7, three), Admit::Done));
        let cost = 6 + 3 * INBOX_OVERHEAD;
        assert_eq!(handle.inbox_bytes.available_permits(), budget - cost);
        let Some(Command::Messages {
            key: 7,
            messages,
            cost: c,
        }) = rx.recv().await
        else {
            panic!("one event with the three messages")
        };
        assert_eq!(c as usize, cost);
        assert_eq!(
            messages.iter().map(Message::len).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // More than the whole budget: still passes, alone, costing all of it.
        let many = (0..20).map(|_| text("xx")).collect();
        handle.inbox_bytes.add_permits(cost);
        assert!(matches!(handle.try_admit_many(7, many), Admit::Done));
        assert_eq!(handle.inbox_bytes.available_permits(), 0);
    }

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
