//! `AgentClient` for the browser, in Rust compiled to WebAssembly.
//!
//! # Layout
//! - Pure logic, tested natively with `cargo test`: [`url`] (socket URL as
//!   the reference builds it), [`reconnect`] (backoff, retry and terminal
//!   rules), [`outbox`] (the bounded send queue), [`calls`] (pending RPCs).
//! - [`error`]: [`ClientError`].

pub mod calls;
pub mod error;
pub mod outbox;
pub mod reconnect;
pub mod url;

pub use error::ClientError;
