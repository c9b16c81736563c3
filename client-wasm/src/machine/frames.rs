//! Server frames, sorted by the protocol crate's rule: the identity/state
//! hold and RPC answers.

use alloc::string::String;

use agents_protocol::frame::{ServerFrame, UNKNOWN_RPC_ERROR};

use super::{Core, Gen, Phase};
use crate::action::{Action, Outcome, Source};
use crate::error::ClientError;

impl<V: Clone, H: Clone> Core<V, H> {
    /// A text frame from the socket of attempt `gen`, already sorted.
    /// Returns whether it is for the listeners (false only for a socket
    /// that is no longer current).
    pub fn frame(&mut self, gen: Gen, frame: ServerFrame<String, V>) -> bool {
        if gen != self.gen || self.phase != Phase::Open {
            return false;
        }
        match frame {
            ServerFrame::User => {}
            ServerFrame::Identity {
                name,
                agent,
                state_follows,
            } => {
                if state_follows && !self.identity.state_seen {
                    self.identity.held = Some((name, agent));
                } else {
                    self.identify(name, agent);
                }
            }
            ServerFrame::State(state) => {
                self.act(Action::State(state, Source::Server));
                self.identity.state_seen = true;
                if let Some((name, agent)) = self.identity.held.take() {
                    self.identify(name, agent);
                }
            }
            ServerFrame::StateError(error) => self.act(Action::StateError(error)),
            ServerFrame::McpServers(mcp) => self.act(Action::Mcp(mcp)),
            ServerFrame::RpcResult { id, done, result } => {
                if !done {
                    if let Some(p) = self.calls.get(&id) {
                        let handle = p.handle.handle.clone();
                        self.settle(handle, Outcome::Chunk(result));
                    }
                } else if let Some(p) = self.calls.take(&id) {
                    self.finish(p.handle, Outcome::Done(result));
                }
            }
            ServerFrame::RpcError { id, error } => {
                if let Some(p) = self.calls.take(&id) {
                    let error = error.unwrap_or_else(|| UNKNOWN_RPC_ERROR.into());
                    self.finish(p.handle, Outcome::Error(ClientError::Rpc(error)));
                }
            }
        }
        true
    }

    fn finish(&mut self, call: super::CallHandle<H>, outcome: Outcome<V>) {
        if let Some((id, _)) = call.timer {
            self.cancel(id);
        }
        self.settle(call.handle, outcome);
    }

    /// Applies the server's identity; the server is authoritative.
    fn identify(&mut self, name: String, agent: String) {
        self.identity.identified = true;
        let new = (name.clone(), agent.clone());
        let old = self.identity.last.replace(new.clone());
        self.act(Action::Identity { name, agent });
        let Some((old_name, old_agent)) = old.filter(|old| *old != new) else {
            return;
        };
        let (new_name, new_agent) = new;
        self.act(Action::IdentityChange {
            old_name,
            new_name,
            old_agent,
            new_agent,
            callback: self.options.on_identity_change,
        });
    }
}
