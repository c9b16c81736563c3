//! The example agents served by the `agents-server` binary (and used by the
//! server's own tests): see [`demo`].

pub mod demo;
