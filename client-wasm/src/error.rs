//! The client's error type.

use alloc::string::String;

use core::fmt;

/// What can go wrong in the client. Thrown to JavaScript as an `Error`
/// whose message is the `Display` text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad constructor options.
    Options(String),
    /// The call's socket closed before it was answered, or the client was closed.
    ConnectionClosed,
    /// The call got no answer in time.
    Timeout {
        /// The method.
        method: String,
        /// The timeout in ms.
        ms: u32,
    },
    /// The server answered with an error.
    Rpc(String),
    /// The send queue is full (`maxEnqueuedMessages`).
    QueueFull,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Options(m) => f.write_str(m),
            ClientError::ConnectionClosed => f.write_str("Connection closed"),
            ClientError::Timeout { method, ms } => {
                write!(f, "RPC call to {method} timed out after {ms}ms")
            }
            ClientError::Rpc(m) => f.write_str(m),
            ClientError::QueueFull => f.write_str("send queue is full"),
        }
    }
}

impl core::error::Error for ClientError {}
