//! Limits and timeouts of the server, each with its documented default.

use std::time::Duration;

/// Default [`max_message_size`](crate::AgentServer::max_message_size): 32 MiB,
/// like the reference. A larger incoming message closes the socket with 1009.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// Default [`max_connections_per_instance`](crate::AgentServer::max_connections_per_instance).
/// A connection beyond it is closed with 1013 (try again later).
pub const DEFAULT_MAX_CONNECTIONS_PER_INSTANCE: usize = 20_000;

/// Default [`outbound_queue`](crate::AgentServer::outbound_queue): frames
/// queued for one client before it counts as not reading and is dropped.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 4096;

/// Default [`outbound_queue_bytes`](crate::AgentServer::outbound_queue_bytes):
/// bytes queued for one client before it is dropped. A single frame is always
/// admitted into an empty queue, so this never rejects a legal message.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Default [`idle_timeout`](crate::AgentServer::idle_timeout): how long an
/// instance with no connections stays in memory before it is evicted.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default [`inbox_capacity`](crate::AgentServer::inbox_capacity): events
/// queued for one instance; readers wait (TCP back-pressure) when it is full.
pub const DEFAULT_INBOX_CAPACITY: usize = 1024;

/// How long a closing handshake may take before the socket is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest accepted instance name (the raw URL segment), in bytes. Longer
/// names get HTTP 400 `Invalid request`.
pub const MAX_NAME_LEN: usize = 1024;

/// At most this many connection tags, counting the id tag (as the reference).
pub const MAX_TAGS: usize = 10;

/// Longest connection tag, in characters (as the reference).
pub const MAX_TAG_LEN: usize = 256;

/// Read buffer per socket. Small buffers keep idle connections cheap and
/// avoid zero-filling large buffers on every read (see performance notes).
pub const READ_BUFFER_SIZE: usize = 4 * 1024;

/// The server's tunables. Built through [`AgentServer`](crate::AgentServer).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// URL prefix before `<agent>/<name>`, split on `/`.
    pub(crate) prefix: Vec<String>,
    pub(crate) max_message_size: usize,
    pub(crate) max_connections_per_instance: usize,
    pub(crate) outbound_queue: usize,
    pub(crate) outbound_queue_bytes: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) inbox_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: vec!["agents".to_owned()],
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_connections_per_instance: DEFAULT_MAX_CONNECTIONS_PER_INSTANCE,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
        }
    }
}
