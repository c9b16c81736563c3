//! The runtime behind the agent API: one task per instance ([`actor`]), one
//! task per socket ([`socket`], speaking WebSocket [`frame`]s), and the
//! [`registry`] that finds or starts the instance for a request.
//!
//! A frame crosses two tasks: the socket task decodes it and hands it to
//! the instance's inbox; the instance runs the hook, whose sends go to the
//! connections' queues, which their socket tasks write out.

pub(crate) mod actor;
pub(crate) mod cluster;
pub(crate) mod direct;
pub(crate) mod frame;
pub(crate) mod hooks;
pub(crate) mod registry;
pub(crate) mod signals;
pub(crate) mod socket;

use std::sync::Arc;

/// Identifies one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct InstanceKey {
    /// Kebab-case agent name.
    pub(crate) agent: Arc<str>,
    /// Raw instance name.
    pub(crate) name: Arc<str>,
}
