//! The client's error type.

use alloc::borrow::ToOwned;
use alloc::string::String;

use crate::text::push_decimal;

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
    /// (Rust API) A value did not convert to or from JSON.
    #[cfg(feature = "rust-api")]
    Serde(String),
}

impl ClientError {
    /// The message (the `Display` text), built without `core::fmt`.
    pub fn message(&self) -> String {
        match self {
            ClientError::Options(m) | ClientError::Rpc(m) => m.clone(),
            #[cfg(feature = "rust-api")]
            ClientError::Serde(m) => "cannot convert: ".to_owned() + m,
            ClientError::ConnectionClosed => "Connection closed".into(),
            ClientError::Timeout { method, ms } => {
                let mut m = "RPC call to ".to_owned() + method + " timed out after ";
                push_decimal(&mut m, (*ms).into());
                m + "ms"
            }
            ClientError::QueueFull => "send queue is full".into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl core::error::Error for ClientError {}
