//! What hooks get besides the connection: the agent-wide [`AgentContext`]
//! and the per-connect [`ConnectContext`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use agents_protocol::{RawValue, ServerMessage};

use crate::agent::Agent;
use crate::connection::Connection;
use crate::error::{DuplicateConnectionId, StateError};
use crate::message::Message;
use crate::request::RequestInfo;
use crate::storage::InstanceStorage;

/// Given to [`Agent::on_connect`] and the connect-time hooks.
#[derive(Debug, Clone)]
pub struct ConnectContext {
    pub(crate) request: RequestInfo,
}

impl ConnectContext {
    /// The upgrade request (after any rewrite by
    /// [`on_before_connect`](crate::AgentServer::on_before_connect)).
    pub fn request(&self) -> &RequestInfo {
        &self.request
    }
}

/// Who changed the state.
#[derive(Debug, Clone)]
pub enum StateSource {
    /// The agent itself, through [`AgentContext::set_state`].
    Server,
    /// A client's `cf_agent_state` frame on this connection.
    Client(Connection),
}

/// The agent-wide view every hook gets: identity, connections, broadcast and
/// state. Owned by the instance's actor task.
pub struct AgentContext<A: Agent> {
    name: Arc<str>,
    agent: Arc<str>,
    connections: HashMap<u64, Connection>,
    state: Option<A::State>,
    /// The state's JSON, serialized once per change.
    state_json: Option<Box<RawValue>>,
    /// The `cf_agent_state` frame for it, encoded once per change and shared
    /// by every broadcast and connect.
    state_frame: Option<Message>,
    /// The connection whose event is being handled, if any.
    current: Option<Connection>,
    /// Set by [`set_state`](Self::set_state); the runtime then calls
    /// `on_state_update` with [`StateSource::Server`].
    state_changed: bool,
    storage: InstanceStorage,
}

impl<A: Agent> fmt::Debug for AgentContext<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentContext")
            .field("agent", &self.agent)
            .field("name", &self.name)
            .field("connections", &self.connections.len())
            .field("state", &self.state_json)
            .finish_non_exhaustive()
    }
}

impl<A: Agent> AgentContext<A> {
    pub(crate) fn new(agent: Arc<str>, name: Arc<str>, storage: InstanceStorage) -> Self {
        AgentContext {
            storage,
            name,
            agent,
            connections: HashMap::new(),
            state: None,
            state_json: None,
            state_frame: None,
            current: None,
            state_changed: false,
        }
    }

    /// The instance name: the raw (still percent-encoded) URL segment.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's kebab-case name, as in the URL and the identity frame.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The open connections, in no particular order.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> + '_ {
        self.connections.values()
    }

    /// The open connections carrying `tag`.
    pub fn connections_tagged<'a>(
        &'a self,
        tag: &'a str,
    ) -> impl Iterator<Item = &'a Connection> + 'a {
        self.connections.values().filter(move |c| c.has_tag(tag))
    }

    /// The number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The connection with this id.
    ///
    /// # Errors
    /// [`DuplicateConnectionId`] when several live connections share it (ids
    /// are client-chosen), as the reference does.
    pub fn connection(&self, id: &str) -> Result<Option<&Connection>, DuplicateConnectionId> {
        let mut found = self.connections.values().filter(|c| c.id() == id);
        let first = found.next();
        if found.next().is_some() {
            return Err(DuplicateConnectionId(id.to_owned()));
        }
        Ok(first)
    }

    /// Sends `message` to every open connection whose id is not in
    /// `exclude` (so every socket sharing an excluded id is skipped). The
    /// payload is shared, not copied, per recipient. A recipient whose queue
    /// is full is dropped; the others still get the message.
    pub fn broadcast(&self, message: impl Into<Message>, exclude: &[&str]) {
        let message = message.into();
        for conn in self.connections.values() {
            if exclude.contains(&conn.id()) {
                continue;
            }
            let _ = conn.send(message.clone());
        }
    }

    /// The current state, if any.
    pub fn state(&self) -> Option<&A::State> {
        self.state.as_ref()
    }

    /// The current state as JSON, if any.
    pub fn state_json(&self) -> Option<&RawValue> {
        self.state_json.as_deref()
    }

    /// This instance's durable key-value store and SQL access, in the
    /// server's database.
    pub fn storage(&self) -> &InstanceStorage {
        &self.storage
    }

    /// Replaces the state, stores it durably and sends it to every
    /// protocol-enabled connection;
    /// [`Agent::on_state_update`] runs after the current hook returns.
    ///
    /// # Errors
    /// [`StateError::Readonly`] when called while handling an event of a
    /// readonly connection; [`StateError::Serialize`] when the state does not
    /// serialize; [`StateError::Storage`] when it cannot be stored. On error
    /// nothing changes.
    pub fn set_state(&mut self, state: A::State) -> Result<(), StateError> {
        if self.current.as_ref().is_some_and(Connection::is_readonly) {
            return Err(StateError::Readonly);
        }
        let json = serde_json::value::to_raw_value(&state)?;
        self.storage.save_state(json.get())?;
        self.store_state(state, json);
        self.broadcast_state(None);
        self.state_changed = true;
        Ok(())
    }

    pub(crate) fn store_state(&mut self, state: A::State, json: Box<RawValue>) {
        self.state = Some(state);
        self.state_frame = Some(ServerMessage::encode_state(&json).into());
        self.state_json = Some(json);
    }

    /// The current state's `cf_agent_state` frame, if there is state.
    pub(crate) fn state_frame(&self) -> Option<&Message> {
        self.state_frame.as_ref()
    }

    /// Sends the current state to protocol-enabled connections, skipping
    /// those with id `exclude`.
    pub(crate) fn broadcast_state(&self, exclude: Option<&str>) {
        let Some(frame) = &self.state_frame else {
            return;
        };
        for conn in self.connections.values() {
            if !conn.is_protocol_enabled() || exclude.is_some_and(|id| id == conn.id()) {
                continue;
            }
            let _ = conn.send(frame.clone());
        }
    }

    /// A hook for `conn`'s event (or no connection's) begins.
    pub(crate) fn begin_turn(&mut self, conn: Option<&Connection>) {
        self.current = conn.cloned();
    }

    /// The hook returned.
    pub(crate) fn end_turn(&mut self) {
        self.current = None;
    }

    /// Whether [`set_state`](Self::set_state) ran since the last call.
    pub(crate) fn take_state_changed(&mut self) -> bool {
        std::mem::take(&mut self.state_changed)
    }

    pub(crate) fn insert(&mut self, conn: Connection) {
        self.connections.insert(conn.key(), conn);
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<Connection> {
        self.connections.remove(&key)
    }

    pub(crate) fn get(&self, key: u64) -> Option<&Connection> {
        self.connections.get(&key)
    }
}
