//! The server's metrics, through the [`metrics`] facade: install any
//! recorder before serving (the `agents-server` binary installs a Prometheus
//! one and serves it on its admin listener) and these appear; without one
//! they cost nothing. Handles are looked up once per agent type (sockets)
//! or per agent and method (RPC), then cost an atomic add each. Every label
//! has bounded cardinality: agent names are the registered ones, RPC
//! methods are those an agent answered (at most [`MAX_METHOD_LABELS`] per
//! agent, the rest `other`), close codes are grouped.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agents_connections` | gauge | `agent` |
//! | `agents_instances` | gauge | `agent` |
//! | `agents_instance_activations_total` | counter | `agent` |
//! | `agents_instance_evictions_total` | counter | `agent`, `reason` (`idle`, `capacity`) |
//! | `agents_messages_received_total`, `agents_received_bytes_total` | counter | `agent` |
//! | `agents_messages_sent_total`, `agents_sent_bytes_total` | counter | `agent` |
//! | `agents_closes_total` | counter | `code` (1000–1015 as is; `3xxx`, `4xxx`, `other`) |
//! | `agents_slow_consumers_total` | counter | — |
//! | `agents_budget_refusals_total` | counter | `limit` |
//! | `agents_rpc_calls_total`, `agents_rpc_errors_total` | counter | `agent`, `method` |
//! | `agents_rpc_duration_seconds` | histogram | `agent`, `method` |
//! | `agents_state_writes_total` | counter | `agent` |
//! | `agents_storage_commit_seconds` | histogram | — |
//! | `agents_storage_failures_total` | counter | — |
//! | `agents_cluster_links_total` | counter | `via` (`direct`, `nats`): links to owner nodes set up |

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub use metrics::{Counter, Gauge, Histogram};

/// Distinct RPC method labels per agent; further methods count as `other`.
pub const MAX_METHOD_LABELS: usize = 64;

/// Bucket bounds (seconds) fit for the latency histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Which limit refused something (`agents_budget_refusals_total{limit}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    MessageSize,
    StateSize,
    Connections,
    ConnectionsPerInstance,
    Instances,
    UnfinishedBytes,
    MessageTimeout,
    OutboundQueue,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::MessageSize => "max_message_size",
            Limit::StateSize => "max_state_bytes",
            Limit::Connections => "max_connections",
            Limit::ConnectionsPerInstance => "max_connections_per_instance",
            Limit::Instances => "max_instances",
            Limit::UnfinishedBytes => "max_unfinished_bytes",
            Limit::MessageTimeout => "message_timeout",
            Limit::OutboundQueue => "outbound_queue",
        }
    }
}

/// Counts a link to an owner node set up for forwarded sockets, by how
/// their frames travel (directly, or through NATS).
pub(crate) fn cluster_link(direct: bool) {
    let via = if direct { "direct" } else { "nats" };
    metrics::counter!("agents_cluster_links_total", "via" => via).increment(1);
}

/// Counts a refusal by `limit`.
pub(crate) fn refused(limit: Limit) {
    metrics::counter!("agents_budget_refusals_total", "limit" => limit.label()).increment(1);
}

/// Counts a close frame the server sent or answered, by code group.
pub(crate) fn closed(code: u16) {
    let label: &'static str = match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1010 => "1010",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        1014 => "1014",
        1015 => "1015",
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    };
    metrics::counter!("agents_closes_total", "code" => label).increment(1);
}

/// Counts a socket closed for making no progress.
pub(crate) fn slow_consumer() {
    metrics::counter!("agents_slow_consumers_total").increment(1);
}

/// A socket's handles: copies of its agent type's (an atomic add each).
/// Counts the socket open until dropped.
#[derive(Debug)]
pub(crate) struct SocketMetrics(SocketHandles);

/// An agent type's socket handles, looked up in the recorder once.
#[derive(Debug, Clone)]
pub(crate) struct SocketHandles {
    pub(crate) received: Counter,
    pub(crate) received_bytes: Counter,
    pub(crate) sent: Counter,
    pub(crate) sent_bytes: Counter,
    connections: Gauge,
}

impl SocketHandles {
    fn lookup(agent: &str) -> SocketHandles {
        let agent = agent.to_owned();
        SocketHandles {
            received: metrics::counter!("agents_messages_received_total", "agent" => agent.clone()),
            received_bytes: metrics::counter!("agents_received_bytes_total", "agent" => agent.clone()),
            sent: metrics::counter!("agents_messages_sent_total", "agent" => agent.clone()),
            sent_bytes: metrics::counter!("agents_sent_bytes_total", "agent" => agent.clone()),
            connections: metrics::gauge!("agents_connections", "agent" => agent),
        }
    }
}

impl SocketMetrics {
    /// Handles for a socket of `agent` (looked up at its first socket).
    pub(crate) fn open(agent: &AgentMetrics) -> SocketMetrics {
        let handles = agent
            .sockets
            .get_or_init(|| SocketHandles::lookup(&agent.agent))
            .clone();
        handles.connections.increment(1.0);
        SocketMetrics(handles)
    }
}

impl std::ops::Deref for SocketMetrics {
    type Target = SocketHandles;

    fn deref(&self) -> &SocketHandles {
        &self.0
    }
}

impl Drop for SocketMetrics {
    fn drop(&mut self) {
        self.0.connections.decrement(1.0);
    }
}

/// One RPC label's handles (an atomic add or a histogram push each).
#[derive(Debug)]
struct RpcHandles {
    calls: Counter,
    errors: Counter,
    duration: Histogram,
}

impl RpcHandles {
    fn new(agent: &str, method: &str) -> RpcHandles {
        let (agent, method) = (agent.to_owned(), method.to_owned());
        RpcHandles {
            calls: metrics::counter!("agents_rpc_calls_total", "agent" => agent.clone(), "method" => method.clone()),
            errors: metrics::counter!("agents_rpc_errors_total", "agent" => agent.clone(), "method" => method.clone()),
            duration: metrics::histogram!("agents_rpc_duration_seconds", "agent" => agent, "method" => method),
        }
    }
}

/// Per agent type: the RPC methods it answered (labels, shared by all its
/// instances so that their number stays bounded) and their handles, looked
/// up in the recorder at a method's first call, and its sockets' handles,
/// looked up at its first socket — install a recorder before serving, as
/// `agents-server --admin-addr` does.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    agent: String,
    methods: Mutex<HashMap<String, RpcHandles>>,
    other: OnceLock<RpcHandles>,
    /// What each socket's handles are copied from.
    sockets: OnceLock<SocketHandles>,
}

impl AgentMetrics {
    pub(crate) fn new(agent: &str) -> Self {
        AgentMetrics {
            agent: agent.to_owned(),
            methods: Mutex::new(HashMap::new()),
            other: OnceLock::new(),
            sockets: OnceLock::new(),
        }
    }

    /// Records an RPC call of `method` that took `seconds`; `known` when the
    /// agent has the method (only those become labels, at most
    /// [`MAX_METHOD_LABELS`] per agent; the rest count as `other`).
    pub(crate) fn rpc(&self, method: &str, known: bool, failed: bool, seconds: f64) {
        let record = |h: &RpcHandles| {
            h.calls.increment(1);
            if failed {
                h.errors.increment(1);
            }
            h.duration.record(seconds);
        };
        if known {
            let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = methods.get(method) {
                return record(h);
            }
            if methods.len() < MAX_METHOD_LABELS {
                let h = RpcHandles::new(&self.agent, method);
                record(&h);
                methods.insert(method.to_owned(), h);
                return;
            }
        }
        record(
            self.other
                .get_or_init(|| RpcHandles::new(&self.agent, "other")),
        );
    }

    /// Counts an eviction (`idle` or `capacity`).
    pub(crate) fn evicted(&self, reason: &'static str) {
        metrics::counter!("agents_instance_evictions_total", "agent" => self.agent.clone(), "reason" => reason)
            .increment(1);
    }
}

/// Per-instance handles; the instance counts as live until they drop.
#[derive(Debug)]
pub(crate) struct InstanceMetrics {
    instances: Gauge,
    pub(crate) state_writes: Counter,
}

impl InstanceMetrics {
    pub(crate) fn start(agent: &str) -> InstanceMetrics {
        let m = InstanceMetrics {
            instances: metrics::gauge!("agents_instances", "agent" => agent.to_owned()),
            state_writes: metrics::counter!("agents_state_writes_total", "agent" => agent.to_owned()),
        };
        metrics::counter!("agents_instance_activations_total", "agent" => agent.to_owned())
            .increment(1);
        m.instances.increment(1.0);
        m
    }
}

impl Drop for InstanceMetrics {
    fn drop(&mut self) {
        self.instances.decrement(1.0);
    }
}

/// Records a storage batch that took `seconds` from submit to settled.
pub(crate) fn commit(seconds: f64, ok: bool) {
    metrics::histogram!("agents_storage_commit_seconds").record(seconds);
    if !ok {
        metrics::counter!("agents_storage_failures_total").increment(1);
    }
}
