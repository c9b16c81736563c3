//! Integration tests of agents-server: a real server on 127.0.0.1:0 and
//! tokio-tungstenite clients.

#![allow(missing_docs, missing_debug_implementations, unreachable_pub)]

mod util;

mod budgets;
mod errors;
mod hostile;
mod lifecycle;
mod limits;
mod routing;
mod rpc;
mod state;
mod storage;
mod wire;
