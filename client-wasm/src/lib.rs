//! `AgentClient` for the browser, in Rust compiled to WebAssembly.
//!
//! # Layout
//! - Pure logic, tested natively with `cargo test`: [`url`] (socket URL as
//!   the reference builds it), [`reconnect`] (backoff, retry and terminal
//!   rules), [`outbox`] (the bounded send queue), [`calls`] (pending RPCs).
//! - [`error`]: the [`ClientError`] type.
//! - Browser glue (wasm32 only): `client` (the Rust API, [`client::Client`]:
//!   the socket, protocol and events; usable from Leptos or Yew), `js` (the
//!   exported `AgentClient` class, translating only), `sys` (timers and
//!   listeners that clean up on drop).

pub mod calls;
pub mod error;
pub mod outbox;
pub mod reconnect;
pub mod url;

#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(target_arch = "wasm32")]
mod sys;

pub use error::ClientError;
#[cfg(target_arch = "wasm32")]
pub use js::AgentClient;
