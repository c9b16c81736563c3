//! Every error type of the server library.

use std::fmt;

/// The error type user hooks return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a user hook did not complete; handed to [`Agent::on_error`](crate::Agent::on_error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The hook returned an error.
    #[error("{hook} failed: {source}")]
    Failed {
        /// The hook's name, e.g. `on_message`.
        hook: &'static str,
        /// What it returned.
        source: BoxError,
    },
    /// The hook panicked; the instance and its connections stay up.
    #[error("{hook} panicked: {message}")]
    Panicked {
        /// The hook's name, e.g. `on_message`.
        hook: &'static str,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Writes of earlier hooks could not be made durable: they are lost,
    /// their replies were turned into errors, and the state is back to what
    /// is on disk.
    #[error("{0}")]
    Storage(StorageError),
}

impl HookError {
    /// The message a client may see: the error's own text, without the hook name.
    pub fn client_message(&self) -> String {
        match self {
            HookError::Failed { source, .. } => source.to_string(),
            HookError::Panicked { message, .. } => message.clone(),
            HookError::Storage(err) => err.to_string(),
        }
    }

    pub(crate) fn from_panic(hook: &'static str, payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic payload".to_owned()
        };
        HookError::Panicked { hook, message }
    }
}

/// Sending on a [`Connection`](crate::Connection) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("send error: connection is closed")]
    Closed,
    /// The client stopped reading and its outbound queue is full; the
    /// connection has been dropped.
    #[error("send error: outbound queue full, connection dropped")]
    QueueFull,
}

/// Changing the agent's state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The invocation belongs to a readonly connection.
    #[error("Connection is readonly")]
    Readonly,
    /// The state could not be serialized to JSON.
    #[error("state error: cannot serialize state: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The state's JSON is over [`max_state_bytes`](crate::AgentServer::max_state_bytes).
    #[error("state error: state is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The state could not be stored; nothing changed.
    #[error("state error: {0}")]
    Storage(#[from] StorageError),
}

/// Two live connections share the id asked for (ids are the client's `_pk`,
/// so they can collide).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("More than one connection found for id {0}")]
pub struct DuplicateConnectionId(pub String);

/// Invalid connection tags returned by
/// [`Agent::connection_tags`](crate::Agent::connection_tags).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// More than [`MAX_TAGS`](crate::MAX_TAGS) tags, counting the id.
    #[error("A connection can only have {max} tags, including the default id tag")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// An empty tag.
    #[error("A connection tag must not be empty")]
    Empty,
    /// A tag longer than [`MAX_TAG_LEN`](crate::MAX_TAG_LEN) characters.
    #[error("A connection tag must be at most {max} characters: {tag}")]
    TooLong {
        /// The tag (cut to [`MAX_LOG_FIELD`](crate::MAX_LOG_FIELD) bytes).
        tag: String,
        /// The limit.
        max: usize,
    },
}

/// Errors of [`Storage`](crate::Storage) and [`InstanceStorage`](crate::InstanceStorage).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// SQLite failed.
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value did not (de)serialize.
    #[error("storage error: bad value: {0}")]
    Json(#[from] serde_json::Error),
    /// The data directory could not be created.
    #[error("storage error: cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A value's JSON is over [`max_state_bytes`](crate::AgentServer::max_state_bytes).
    #[error("storage error: value is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A write could not be made durable (disk full, …); nothing of its
    /// batch was stored.
    #[error("storage error: write failed: {0}")]
    Failed(String),
    /// Another node owns the instance now (cluster mode): this
    /// incarnation's writes are refused.
    #[error("storage error: the instance moved to another node")]
    Fenced,
    /// The backend cannot do this (e.g. SQL on a backend without it).
    #[error("storage error: not supported by this backend: {0}")]
    Unsupported(&'static str),
}

/// Why a call failed; becomes `{"success":false,"error":…}`.
///
/// Any error converts into it with `?` (as [`RpcError::Failed`] with the
/// error's text), which is why it does not implement `std::error::Error`
/// itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpcError {
    /// The agent has no such method: `Method <m> does not exist`.
    NoSuchMethod,
    /// The arguments did not deserialize.
    InvalidArgs(String),
    /// The method failed with this message.
    Failed(String),
}

impl RpcError {
    /// A failure with a message for the client.
    pub fn msg(message: impl Into<String>) -> Self {
        RpcError::Failed(message.into())
    }

    /// The error text the client gets for a call of `method`.
    pub(crate) fn into_message(self, method: &str) -> String {
        match self {
            RpcError::NoSuchMethod => agents_protocol::rpc::no_such_method_error(method),
            RpcError::InvalidArgs(m) | RpcError::Failed(m) => m,
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::NoSuchMethod => f.write_str("no such method"),
            RpcError::InvalidArgs(m) | RpcError::Failed(m) => f.write_str(m),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for RpcError {
    fn from(err: E) -> Self {
        RpcError::Failed(err.to_string())
    }
}
