//! Every limit and timeout of the server, each a named default that an
//! [`AgentServer`](crate::AgentServer) option changes. The README's limits
//! table lists them with what exceeding each does.

use std::time::Duration;

/// Default [`max_message_size`](crate::AgentServer::max_message_size): 32 MiB,
/// like the reference. A larger incoming message closes the socket with 1009.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// Default [`max_connections_per_instance`](crate::AgentServer::max_connections_per_instance).
/// A connection beyond it is closed with 1013 (try again later).
pub const DEFAULT_MAX_CONNECTIONS_PER_INSTANCE: usize = 20_000;

/// Default [`max_connections`](crate::AgentServer::max_connections): open
/// WebSockets on the whole server. An upgrade beyond it gets HTTP 503.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Default [`max_instances`](crate::AgentServer::max_instances): instances in
/// memory. Past it, idle instances are evicted first; when none is idle,
/// new instances are refused (HTTP 503, or close 1013 for a socket).
pub const DEFAULT_MAX_INSTANCES: usize = 10_000;

/// Default [`outbound_queue`](crate::AgentServer::outbound_queue): frames
/// queued for one client before it counts as behind (its instance then
/// takes no input until it catches up).
pub const DEFAULT_OUTBOUND_QUEUE: usize = 4096;

/// Default [`outbound_queue_bytes`](crate::AgentServer::outbound_queue_bytes):
/// bytes queued for one client before it counts as behind. A single frame
/// is always admitted into an empty queue, so this never rejects a legal
/// message.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Default [`slow_consumer_timeout`](crate::AgentServer::slow_consumer_timeout):
/// how long a socket may accept no bytes at all while frames wait for it
/// before it is closed and its queue freed.
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`idle_timeout`](crate::AgentServer::idle_timeout): how long an
/// instance with no connections stays in memory before it is evicted.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default [`inbox_capacity`](crate::AgentServer::inbox_capacity): events
/// queued for one instance (the messages of one socket read are one event);
/// sockets stop reading (TCP back-pressure) when it is full.
pub const DEFAULT_INBOX_CAPACITY: usize = 1024;

/// Default [`inbox_bytes`](crate::AgentServer::inbox_bytes): bytes of
/// messages queued for one instance; sockets stop reading when it is full.
pub const DEFAULT_INBOX_BYTES: usize = 8 * 1024 * 1024;

/// Default [`max_unfinished_bytes`](crate::AgentServer::max_unfinished_bytes):
/// bytes read off all sockets and not yet taken by an instance (messages
/// still arriving, or waiting for room in an inbox). The socket that would
/// pass it is closed with 1013.
pub const DEFAULT_MAX_UNFINISHED_BYTES: usize = 64 * 1024 * 1024;

/// Default [`message_timeout`](crate::AgentServer::message_timeout): how long
/// a message may take to arrive in all. Past it the socket is closed with
/// 1013.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`message_idle_timeout`](crate::AgentServer::message_idle_timeout):
/// how long a message being received may make no progress.
pub const DEFAULT_MESSAGE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`ping_interval`](crate::AgentServer::ping_interval): the server
/// pings a socket it has heard nothing from for this long, and closes it
/// after two intervals of silence.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Default [`max_state_bytes`](crate::AgentServer::max_state_bytes): the
/// largest state, as JSON (the size of one row in the reference's storage).
pub const DEFAULT_MAX_STATE_BYTES: usize = 2 * 1024 * 1024;

/// Default [`shutdown_timeout`](crate::AgentServer::shutdown_timeout): how
/// long a graceful shutdown may take before the remaining sockets are
/// dropped.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`drain_delay`](crate::AgentServer::drain_delay): after SIGTERM,
/// how long the server goes on accepting while it reports not ready.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;

/// Default [`header_read_timeout`](crate::AgentServer::header_read_timeout):
/// how long a client may take to send a request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`max_request_head`](crate::AgentServer::max_request_head): the
/// largest HTTP request head (request line and headers). A larger one gets
/// HTTP 431.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long a closing handshake may take before the socket is dropped,
/// counted from when the close was queued.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest accepted instance name (the raw URL segment), in bytes. Longer
/// names get HTTP 400 `Invalid request`.
pub const MAX_NAME_LEN: usize = 1024;

/// At most this many connection tags, counting the id tag (as the reference).
pub const MAX_TAGS: usize = 10;

/// Longest connection tag, in characters (as the reference).
pub const MAX_TAG_LEN: usize = 256;

/// The server's tunables. Built through [`AgentServer`](crate::AgentServer).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// URL prefix before `<agent>/<name>`, split on `/`.
    pub(crate) prefix: Vec<String>,
    pub(crate) max_message_size: usize,
    pub(crate) max_connections_per_instance: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_instances: usize,
    pub(crate) outbound_queue: usize,
    pub(crate) outbound_queue_bytes: usize,
    pub(crate) slow_consumer_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) inbox_capacity: usize,
    pub(crate) inbox_bytes: usize,
    pub(crate) max_unfinished_bytes: usize,
    pub(crate) message_timeout: Duration,
    pub(crate) message_idle_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) max_state_bytes: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_request_head: usize,
    /// `Origin`s allowed to open sockets; `None` allows all.
    pub(crate) allowed_origins: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: vec!["agents".to_owned()],
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_connections_per_instance: DEFAULT_MAX_CONNECTIONS_PER_INSTANCE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_instances: DEFAULT_MAX_INSTANCES,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            slow_consumer_timeout: DEFAULT_SLOW_CONSUMER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            inbox_bytes: DEFAULT_INBOX_BYTES,
            max_unfinished_bytes: DEFAULT_MAX_UNFINISHED_BYTES,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            message_idle_timeout: DEFAULT_MESSAGE_IDLE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            drain_delay: DEFAULT_DRAIN_DELAY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            allowed_origins: None,
        }
    }
}
