//! `AgentClient` for the browser, in Rust compiled to WebAssembly.
//!
//! # Layout
//! - Pure logic, tested natively with `cargo test`: [`url`] (socket URL as
//!   the reference builds it), [`reconnect`] (backoff, retry and terminal
//!   rules), [`outbox`] (the bounded send queue), [`calls`] (pending RPCs).
//! - [`error`]: the [`ClientError`] type.
//! - Browser glue (wasm32 only): `client` (the Rust API, [`client::Client`]:
//!   the socket, protocol and events; usable from Leptos or Yew), `js` (the
//!   exported `AgentClient` class, translating only), `stream` (for Rust
//!   apps: `async` calls and a `Stream` of messages), `sys` (timers and
//!   listeners that clean up on drop).
//!
//! # From Rust
//! ```ignore
//! use agents_client::client::{Client, ClientOptions};
//! use futures_util::StreamExt;
//!
//! let client = Client::new(ClientOptions::new("counter-agent", "room-1", "127.0.0.1:8787"))?;
//! let mut messages = client.messages();
//! let count = client.call_async("increment", &[1.into()]).await?;
//! while let Some(message) = messages.next().await { /* … */ }
//! ```

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(all(feature = "small-alloc", target_arch = "wasm32"))]
mod standalone;

pub mod calls;
pub mod error;
pub mod outbox;
pub mod reconnect;
pub mod text;
pub mod url;

#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(all(target_arch = "wasm32", not(feature = "standalone")))]
pub mod stream;
#[cfg(target_arch = "wasm32")]
mod sys;

pub use error::ClientError;
#[cfg(target_arch = "wasm32")]
pub use js::AgentClient;
