//! What hooks get besides the connection: the agent-wide [`AgentContext`]
//! and the per-connect [`ConnectContext`].

use std::fmt;
use std::sync::{Arc, Weak};

use agents_protocol::{STATE_FRAME_PREFIX, STATE_FRAME_SUFFIX};
use bytes::Bytes;
use serde::Serialize;

use crate::agent::Agent;
use crate::connection::{Connection, KeyMap};
use crate::error::{DuplicateConnectionId, StateError};
use crate::message::{Message, Utf8Bytes};
use crate::request::RequestInfo;
use crate::storage::{InstanceStorage, SharedJson};

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

/// The connection whose event a hook handles.
#[derive(Debug)]
enum Current {
    /// None (a scheduled or HTTP event, or no hook running).
    None,
    /// This one: its connect and close, when it may not be in the map.
    Conn(Connection),
    /// The one in the map with this key: its messages, without a
    /// reference count to take.
    Key(u64),
}

/// The agent-wide view every hook gets: identity, connections, broadcast and
/// state. Owned by the instance's actor task.
pub struct AgentContext<A: Agent> {
    name: Arc<str>,
    agent: Arc<str>,
    connections: KeyMap<Connection>,
    state: StateCell<A::State>,
    /// The connection whose event is being handled, if any.
    current: Current,
    /// Set by [`set_state`](Self::set_state); the runtime then calls
    /// `on_state_update` with [`StateSource::Server`].
    state_changed: bool,
    storage: InstanceStorage,
    state_writes: metrics::Counter,
}

impl<A: Agent> fmt::Debug for AgentContext<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentContext")
            .field("agent", &self.agent)
            .field("name", &self.name)
            .field("connections", &self.connections.len())
            .field("has_state", &self.state.value.is_some())
            .finish_non_exhaustive()
    }
}

impl<A: Agent> AgentContext<A> {
    pub(crate) fn new(
        agent: Arc<str>,
        name: Arc<str>,
        storage: InstanceStorage,
        max_state_bytes: usize,
        state_writes: metrics::Counter,
    ) -> Self {
        AgentContext {
            storage,
            name,
            agent,
            connections: KeyMap::default(),
            state: StateCell {
                value: None,
                frame: Weak::new(),
                max_bytes: max_state_bytes,
                last_len: 0,
            },
            current: Current::None,
            state_changed: false,
            state_writes,
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
        self.state.value.as_ref()
    }

    /// The current state as JSON, if any (serialized on each call).
    pub fn state_json(&self) -> Option<String> {
        serde_json::to_string(self.state.value.as_ref()?).ok()
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
    /// readonly connection; [`StateError::TooLarge`] when its JSON is over
    /// [`max_state_bytes`](crate::AgentServer::max_state_bytes) (found
    /// without serializing more than that); [`StateError::Serialize`] when
    /// it does not serialize; [`StateError::Storage`] when it cannot be
    /// stored. On error nothing changes and nothing is sent.
    pub fn set_state(&mut self, state: A::State) -> Result<(), StateError> {
        let current = match &self.current {
            Current::None => None,
            Current::Conn(conn) => Some(conn),
            Current::Key(key) => self.connections.get(key),
        };
        if current.is_some_and(Connection::is_readonly) {
            return Err(StateError::Readonly);
        }
        let frame = self.replace_state(state)?;
        self.broadcast_frame(frame, None);
        self.state_changed = true;
        Ok(())
    }

    /// Encodes and checks `state`, writes it (durable with the turn), then
    /// makes it the current state; returns its frame.
    pub(crate) fn replace_state(&mut self, state: A::State) -> Result<Message, StateError> {
        let (max, hint) = (self.state.max_bytes, self.state.last_len);
        let frame = crate::offload::json(hint, || StateFrame::encode(&state, max, hint))?;
        Ok(self.install_state(state, frame))
    }

    /// The limit on the state's JSON.
    pub(crate) fn max_state_bytes(&self) -> usize {
        self.state.max_bytes
    }

    /// Writes `state`, already encoded as `frame`, (durable with the turn)
    /// and makes it the current state; returns the frame to broadcast.
    pub(crate) fn install_state(&mut self, state: A::State, frame: StateFrame) -> Message {
        self.state.last_len = frame.json().len();
        self.storage.save_state(frame.shared_json());
        self.state_writes.increment(1);
        self.state.value = Some(state);
        self.state.cache(frame)
    }

    /// Makes `state` (restored, of `len` bytes of JSON, or initial) the
    /// current state.
    pub(crate) fn restore_state(&mut self, state: A::State, len: usize) {
        self.state.value = Some(state);
        self.state.frame = Weak::new();
        self.state.last_len = len;
    }

    /// The current state's `cf_agent_state` frame, if there is state.
    pub(crate) fn state_frame(&mut self) -> Option<Message> {
        self.state.frame()
    }

    /// Sends a state frame to protocol-enabled connections, skipping those
    /// with id `exclude`.
    pub(crate) fn broadcast_frame(&self, frame: Message, exclude: Option<&str>) {
        for conn in self.connections.values() {
            if !conn.is_protocol_enabled() || exclude.is_some_and(|id| id == conn.id()) {
                continue;
            }
            let _ = conn.send(frame.clone());
        }
    }

    /// A hook for `conn`'s event (or no connection's) begins.
    pub(crate) fn begin_turn(&mut self, conn: Option<&Connection>) {
        self.current = conn.map_or(Current::None, |conn| Current::Conn(conn.clone()));
    }

    /// A hook for a message of the connection `key` (one of
    /// `connections`) begins.
    pub(crate) fn begin_message_turn(&mut self, key: u64) {
        self.current = Current::Key(key);
    }

    /// The hook returned.
    pub(crate) fn end_turn(&mut self) {
        self.current = Current::None;
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

/// The agent's state: the typed value (the one copy kept), and its encoded
/// `cf_agent_state` frame for as long as anything (a socket's queue, a
/// storage write) still holds it, so that a burst of connects and
/// broadcasts encodes it once.
struct StateCell<S> {
    value: Option<S>,
    frame: Weak<Vec<u8>>,
    max_bytes: usize,
    /// The JSON length of the last state encoded (to foresee large work).
    last_len: usize,
}

impl<S: Serialize> StateCell<S> {
    /// The frame of the current state, encoded anew if no copy is alive.
    fn frame(&mut self) -> Option<Message> {
        if let Some(text) = self.frame.upgrade().and_then(shared) {
            return Some(Message::Text(text));
        }
        let value = self.value.as_ref()?;
        // Restored states may predate the size limit: never refused here.
        let hint = self.last_len;
        let frame =
            crate::offload::json(hint, || StateFrame::encode(value, usize::MAX, hint)).ok()?;
        Some(self.cache(frame))
    }

    /// Keeps a weak handle on `frame` and returns it as a message.
    fn cache(&mut self, frame: StateFrame) -> Message {
        self.frame = frame.buf;
        Message::Text(frame.text)
    }
}

/// A state's `cf_agent_state` frame, encoded once: every socket it goes to
/// shares its buffer, and its JSON is what storage writes.
#[derive(Debug)]
pub(crate) struct StateFrame {
    text: Utf8Bytes,
    buf: Weak<Vec<u8>>,
}

impl StateFrame {
    /// `{"type":"cf_agent_state","state":…}` for `state`, serializing at
    /// most `max` bytes of state, into a buffer sized for `hint` bytes.
    pub(crate) fn encode<S: Serialize>(
        state: &S,
        max: usize,
        hint: usize,
    ) -> Result<StateFrame, StateError> {
        struct Capped {
            buf: Vec<u8>,
            limit: usize,
        }
        impl std::io::Write for Capped {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                if self.buf.len() + data.len() > self.limit {
                    return Err(std::io::Error::other("state too large"));
                }
                self.buf.extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let framing = STATE_FRAME_PREFIX.len() + STATE_FRAME_SUFFIX.len();
        // Room for the expected JSON (never more than the limit) and a
        // little growth: one allocation, no copying as it grows.
        let expected = hint.min(max);
        let room = expected.saturating_add(expected / 16 + 64);
        let mut buf = Vec::with_capacity(framing.saturating_add(room));
        buf.extend_from_slice(STATE_FRAME_PREFIX.as_bytes());
        let mut out = Capped {
            buf,
            limit: STATE_FRAME_PREFIX.len().saturating_add(max),
        };
        if let Err(err) = serde_json::to_writer(&mut out, state) {
            if err.is_io() {
                return Err(StateError::TooLarge { max });
            }
            return Err(StateError::Serialize(err));
        }
        out.buf.extend_from_slice(STATE_FRAME_SUFFIX.as_bytes());
        let buf = Arc::new(out.buf);
        let weak = Arc::downgrade(&buf);
        // JSON is UTF-8; this check is the one pass over it after writing.
        let text = shared(buf)
            .ok_or_else(|| StateError::Serialize(serde::ser::Error::custom("not UTF-8")))?;
        Ok(StateFrame { text, buf: weak })
    }

    /// The state's JSON.
    pub(crate) fn json(&self) -> &str {
        &self.text[self.json_range()]
    }

    /// The state's JSON, sharing the frame's buffer.
    fn shared_json(&self) -> SharedJson {
        SharedJson::new(self.text.clone(), self.json_range())
            .expect("the JSON lies between the ASCII prefix and suffix")
    }

    fn json_range(&self) -> std::ops::Range<usize> {
        STATE_FRAME_PREFIX.len()..self.text.len() - STATE_FRAME_SUFFIX.len()
    }
}

/// Text sharing `frame`'s buffer (`None` if it is not UTF-8).
fn shared(frame: Arc<Vec<u8>>) -> Option<Utf8Bytes> {
    struct Owner(Arc<Vec<u8>>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    Utf8Bytes::try_from(Bytes::from_owner(Owner(frame))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<S: Serialize>(state: &S, max: usize, hint: usize) -> Result<String, StateError> {
        StateFrame::encode(state, max, hint).map(|f| f.text.as_str().to_owned())
    }

    #[test]
    fn state_frames_are_capped_and_shared() {
        for hint in [0, 5, 1000] {
            assert_eq!(
                encode(&serde_json::json!({"count": 1}), 100, hint).unwrap(),
                r#"{"type":"cf_agent_state","state":{"count":1}}"#
            );
            assert!(matches!(
                encode(&"x".repeat(100), 100, hint),
                Err(StateError::TooLarge { max: 100 })
            ));
            assert!(encode(&"x".repeat(98), 100, hint).is_ok());
        }
        let frame = StateFrame::encode(&serde_json::json!({"a": [1, "b"]}), 100, 0).unwrap();
        assert_eq!(frame.json(), r#"{"a":[1,"b"]}"#);
        let mut cell = StateCell {
            value: Some(5),
            frame: Weak::new(),
            max_bytes: 10,
            last_len: 0,
        };
        let a = cell.frame().unwrap();
        let b = cell.frame().unwrap();
        // The second came from the first's buffer.
        let (Message::Text(a), Message::Text(b)) = (a, b) else {
            unreachable!()
        };
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        drop((a, b));
        assert!(cell.frame.upgrade().is_none());
    }
}
