//! `AgentClient` for the browser, in Rust compiled to WebAssembly.
//!
//! # Layout
//! - The core, pure and tested natively with `cargo test`: [`machine`] (the
//!   state machine: [`machine::Core`] takes socket events, server frames,
//!   timers and user calls and answers [`action::Action`]s), and the
//!   policies it applies: [`options`] (which options exist, their rules and
//!   defaults), [`url`] (the socket URL as the reference builds it),
//!   [`reconnect`] (backoff, jitter, retry and terminal rules), [`outbox`]
//!   (the bounded send queue), [`calls`] (pending RPCs), [`rng`]. Server
//!   frames are sorted by `agents_protocol::frame`, the rule the server's
//!   protocol crate decodes by too.
//! - In the browser (wasm32 only): `bindings` (the exported `Core` the
//!   JavaScript class drives: socket events in, actions out as calls on the
//!   class) and `js/agent-client.js` (the `AgentClient` class itself:
//!   `extends EventTarget`, owns the WebSocket, timers and listeners, and
//!   decides nothing).
//! - For Rust apps (the default `rust-api` feature): [`client`], typed
//!   calls, a `Stream` of messages and typed state over the same class.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(all(feature = "small-alloc", target_arch = "wasm32"))]
mod standalone;

pub mod action;
pub mod calls;
pub mod error;
pub mod machine;
pub mod options;
pub mod outbox;
pub mod reconnect;
pub mod rng;
pub mod text;
pub mod url;

#[cfg(target_arch = "wasm32")]
mod bindings;
#[cfg(all(target_arch = "wasm32", feature = "rust-api"))]
pub mod client;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod js_value;

pub use error::ClientError;
