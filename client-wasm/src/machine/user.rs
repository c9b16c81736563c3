//! What the user asks of the core: send, call, set the state, close,
//! reconnect, and the values its getters show.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use super::{CallHandle, Core, Phase, BACKOFF, CONNECT, UPTIME};
use crate::action::{Action, Close, Event, Out, Outcome, Source};
use crate::calls::Pending;
use crate::error::ClientError;

/// How long a call may take, as the caller asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timeout {
    /// No `timeout` option: `defaultCallTimeout`, or none for streaming calls.
    Default,
    /// This many ms; 0 disables.
    Ms(f64),
}

impl<V: Clone, H: Clone> Core<V, H> {
    /// Sends `data` now when the socket is open, else queues it (`size`
    /// counts toward `bufferedAmount`). Returns whether it went out now.
    ///
    /// # Errors
    /// [`ClientError::QueueFull`] at `maxEnqueuedMessages`.
    pub fn send(&mut self, data: V, size: f64) -> Result<bool, ClientError> {
        self.write(Out::User(data), size)
    }

    fn write(&mut self, out: Out<V>, size: f64) -> Result<bool, ClientError> {
        if self.phase == Phase::Open {
            self.act(Action::Send(out));
            return Ok(true);
        }
        if self.closed && !core::mem::replace(&mut self.warned_send, true) {
            let warning = "agents-rs: send() after close() is queued until reconnect()";
            self.act(Action::Warn(warning.into()));
        }
        self.outbox
            .push((out, size))
            .map_err(|_| ClientError::QueueFull)?;
        self.queued += size;
        Ok(false)
    }

    fn write_frame(&mut self, frame: String) -> Result<bool, ClientError> {
        let size = frame.encode_utf16().count() as f64;
        self.write(Out::Frame(frame), size)
    }

    /// Calls `method` with `args` (a JSON array's text). `streaming` calls
    /// (with stream callbacks) get no default timeout. The outcome arrives
    /// as [`Action::Settle`] for `handle` — at once when the client is
    /// closed or the queue is full.
    pub fn call(&mut self, method: &str, args: &str, timeout: Timeout, streaming: bool, handle: H) {
        if self.closed || self.errored {
            return self.settle(handle, Outcome::Error(ClientError::ConnectionClosed));
        }
        let id = self.calls.next_id(self.rng.next_u64());
        let ms = match timeout {
            Timeout::Ms(ms) => ms,
            Timeout::Default if streaming => 0.0,
            Timeout::Default => self.options.default_call_timeout,
        };
        let timer = (ms > 0.0).then(|| {
            self.next_timer += 1;
            (self.next_timer, ms)
        });
        if let Some((id, ms)) = timer {
            self.act(Action::Timer { id, ms });
        }
        let frame = rpc_frame(&id, method, args);
        let handle = CallHandle { handle, timer };
        let pending = Pending {
            method: method.to_owned(),
            socket: None,
            streaming,
            handle,
        };
        self.calls.insert(id.clone(), pending);
        match self.write_frame(frame) {
            Ok(true) => self.calls.mark_one_sent(&id, self.gen),
            Ok(false) => {}
            Err(error) => {
                let p = self.calls.take(&id);
                self.reject(p.into_iter().collect(), &error);
            }
        }
    }

    /// Sends `cf_agent_state` with `state` (its JSON text `json`) and takes
    /// it as the state at once (optimistically, as the reference).
    ///
    /// # Errors
    /// [`ClientError::QueueFull`] when it cannot be queued.
    pub fn set_state(&mut self, json: &str, state: V) -> Result<(), ClientError> {
        let frame = String::from("{\"state\":") + json + ",\"type\":\"cf_agent_state\"}";
        self.write_frame(frame)?;
        self.act(Action::State(state, Source::Client));
        Ok(())
    }

    /// Closes for good (until [`reconnect`](Self::reconnect)): rejects every
    /// pending call, closes the socket and dispatches `close` at once.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.closed = true;
        self.reconnect.stop();
        for id in [BACKOFF, CONNECT, UPTIME] {
            self.cancel(id);
        }
        self.act(Action::Watch(false));
        let rejected = self.calls.take_all();
        self.reject(rejected, &ClientError::ConnectionClosed);
        self.end_socket(code, reason);
        self.gen += 1;
    }

    /// Reconnects now: clears `close()` or a terminal close, resets the
    /// retry count and replaces a live socket.
    pub fn reconnect(&mut self, code: u16, reason: &str) {
        self.closed = false;
        self.reconnect.restart();
        self.reconnect.first_attempt();
        self.cancel(BACKOFF);
        if core::mem::take(&mut self.errored) {
            self.act(Action::ConnectionError(None));
        }
        self.act(Action::Watch(true));
        let rejected = self.calls.take_sent_on(self.gen);
        self.reject(rejected, &ClientError::ConnectionClosed);
        self.end_socket(code, reason);
        self.connect();
    }

    /// A live socket closed on the user's behalf: `close` at once.
    fn end_socket(&mut self, code: u16, reason: &str) {
        let live = matches!(self.phase, Phase::Connecting | Phase::Open);
        self.phase = Phase::Idle;
        self.unidentify();
        if live {
            self.act(Action::Shut {
                code,
                reason: reason.into(),
            });
            let close = Close::new(code, reason, true);
            self.act(Action::Emit(Event::Close(close)));
        }
    }

    pub(super) fn reject(&mut self, calls: Vec<Pending<CallHandle<H>>>, error: &ClientError) {
        for p in calls {
            self.settle(p.handle.handle, Outcome::Error(error.clone()));
            if let Some((id, _)) = p.handle.timer {
                self.cancel(id);
            }
        }
    }

    pub(super) fn settle(&mut self, handle: H, outcome: Outcome<V>) {
        self.act(Action::Settle(handle, outcome));
    }

    /// `readyState`, given the socket's own (`None` when there is none):
    /// CLOSED after `close()` and between attempts, CONNECTING before the
    /// first socket.
    pub fn ready_state(&self, socket: Option<u16>) -> u16 {
        match socket {
            _ if self.closed => 3,
            Some(state) => state,
            None if self.had_socket => 3,
            None => 0,
        }
    }

    /// Bytes queued while disconnected (UTF-16 units for strings).
    pub fn queued(&self) -> f64 {
        self.queued
    }

    /// Retries since the last stable connection.
    pub fn retry_count(&self) -> u32 {
        self.reconnect.retry_count()
    }

    /// Whether automatic reconnection is on.
    pub fn should_reconnect(&self) -> bool {
        self.reconnect.active()
    }

    /// `agentFetch`'s URL: the instance's over HTTP(S), with the static
    /// query, or `query` (the query function's result) when there is a
    /// function.
    ///
    /// # Errors
    /// Never for options [`Core::new`] accepted.
    pub fn http_url(&self, query: Vec<(String, String)>) -> Result<String, ClientError> {
        let pairs = match &self.options.query {
            crate::options::Query::Static(pairs) => pairs,
            crate::options::Query::Dynamic => &query,
        };
        let pairs = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        self.options.address.http_url(pairs)
    }

    /// The `_pk` connection id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// `{"args":…,"id":"…","method":"…","type":"rpc"}`, keys in the
/// reference's order.
fn rpc_frame(id: &str, method: &str, args: &str) -> String {
    let mut frame = String::with_capacity(args.len() + method.len() + 64);
    frame.push_str("{\"args\":");
    frame.push_str(args);
    frame.push_str(",\"id\":\"");
    frame.push_str(id);
    frame.push_str("\",\"method\":");
    push_json_string(&mut frame, method);
    frame.push_str(",\"type\":\"rpc\"}");
    frame
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                crate::text::push_hex(out, c as u64, 2);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
