//! The client as a pure state machine: socket events, server frames, timers
//! and the user's calls go in; [`Action`]s come out for the host (the
//! JavaScript class in the browser, a test natively) to carry out. No I/O;
//! generic over the value type `V` (a JavaScript value in the browser) and
//! the call handle `H` (whatever settles a call).
//!
//! Every decision lives here: when to connect and reconnect (with the
//! [`Reconnect`] policy and jitter), what is queued and flushed before
//! `open`, the identity/state hold, which calls a close rejects, timeouts.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use crate::action::{Action, Close, Event, Out, Outcome};
use crate::calls::Calls;
use crate::error::ClientError;
use crate::options::{ClientOptions, Query};
use crate::outbox::Outbox;
use crate::reconnect::{AfterClose, Reconnect};
use crate::rng::Rng;
use crate::url::{kebab, with_query};

/// A connection attempt's number: events of older attempts are ignored.
pub type Gen = u32;

/// Timer ids the core uses for itself; call timeouts count up from
/// [`FIRST_CALL_TIMER`].
pub const BACKOFF: u32 = 0;
/// The connection attempt's timeout.
pub const CONNECT: u32 = 1;
/// `minUptime` after `open`.
pub const UPTIME: u32 = 2;
/// The first call timeout's id.
pub const FIRST_CALL_TIMER: u32 = 3;

/// Where the current attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No socket: before the first attempt, in the backoff gap, closed.
    Idle,
    /// Waiting for the `query` function.
    Querying,
    /// The socket is connecting.
    Connecting,
    /// The socket is open.
    Open,
}

/// A pending call's handle and its timeout timer.
#[derive(Debug)]
pub struct CallHandle<H> {
    handle: H,
    /// The timeout's timer id and length in ms.
    timer: Option<(u32, f64)>,
}

/// The identity/state hold: who the server says we talk to.
#[derive(Debug, Default)]
struct Identity {
    identified: bool,
    state_seen: bool,
    held: Option<(String, String)>,
    last: Option<(String, String)>,
}

/// The client's state machine. See the module docs.
#[derive(Debug)]
pub struct Core<V, H> {
    options: ClientOptions<V>,
    base_url: String,
    id: String,
    reconnect: Reconnect,
    outbox: Outbox<(Out<V>, f64)>,
    queued: f64,
    calls: Calls<CallHandle<H>>,
    gen: Gen,
    phase: Phase,
    had_socket: bool,
    closed: bool,
    errored: bool,
    warned_send: bool,
    identity: Identity,
    next_timer: u32,
    rng: Rng,
    actions: Vec<Action<V, H>>,
}

impl<V: Clone, H: Clone> Core<V, H> {
    /// A client for validated `options`; `seed` drives jitter and ids.
    /// Nothing happens until [`start`](Self::start).
    ///
    /// # Errors
    /// [`ClientError::Options`] when the address cannot be connected to.
    pub fn new(options: ClientOptions<V>, seed: u64) -> Result<Self, ClientError> {
        let mut rng = Rng::new(seed);
        let id = match options.id.as_deref() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => rng.uuid(),
        };
        Ok(Core {
            base_url: options.address.base_url()?,
            reconnect: Reconnect::new(options.reconnect.clone(), options.start_closed),
            outbox: Outbox::new(options.max_enqueued_messages),
            closed: options.start_closed,
            options,
            id,
            queued: 0.0,
            calls: Calls::default(),
            gen: 0,
            phase: Phase::Idle,
            had_socket: false,
            errored: false,
            warned_send: false,
            identity: Identity::default(),
            next_timer: FIRST_CALL_TIMER,
            rng,
            actions: Vec::new(),
        })
    }

    /// Takes the actions to carry out, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action<V, H>> {
        core::mem::take(&mut self.actions)
    }

    /// Hands back a drained action list, so the next batch reuses its
    /// memory (no allocation per message).
    pub fn recycle(&mut self, mut spent: Vec<Action<V, H>>) {
        if self.actions.capacity() == 0 {
            spent.clear();
            self.actions = spent;
        }
    }

    fn act(&mut self, action: Action<V, H>) {
        self.actions.push(action);
    }

    /// Announces the names and, unless `startClosed`, starts connecting;
    /// `online` is what the browser says (`navigator.onLine`): offline, a
    /// failed attempt waits for `online` instead of backing off.
    pub fn start(&mut self, online: bool) {
        self.reconnect.set_offline(!online);
        let a = &self.options.address;
        let name = if a.name.is_empty() {
            "default"
        } else {
            &a.name
        };
        self.actions.push(Action::Init {
            id: self.id.clone(),
            agent: kebab(&a.agent),
            name: name.to_owned(),
        });
        if !self.closed {
            self.act(Action::Watch(true));
            self.reconnect.first_attempt();
            self.connect();
        }
    }

    /// Starts an attempt: runs the query function first when there is one.
    fn connect(&mut self) {
        self.gen += 1;
        self.phase = Phase::Querying;
        match &self.options.query {
            Query::Dynamic => self.act(Action::Query(self.gen)),
            Query::Static(pairs) => {
                let pairs = pairs.clone();
                self.queried(self.gen, Ok(pairs));
            }
        }
    }

    /// The query function of attempt `gen` gave `pairs` (or failed).
    pub fn queried(&mut self, gen: Gen, pairs: Result<Vec<(String, String)>, ()>) {
        if gen != self.gen || self.phase != Phase::Querying {
            return;
        }
        let Ok(pairs) = pairs else {
            return self.failed_attempt("query failed", true);
        };
        let url = with_query(
            &self.base_url,
            &self.id,
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        self.phase = Phase::Connecting;
        self.had_socket = true;
        let protocols = self.options.protocols.clone();
        self.act(Action::Open {
            gen,
            url,
            protocols,
        });
        let ms = self.options.reconnect.connection_timeout;
        self.act(Action::Timer { id: CONNECT, ms });
    }

    /// The socket of attempt `gen` could not be created.
    pub fn open_failed(&mut self, gen: Gen) {
        if gen == self.gen && self.phase == Phase::Connecting {
            self.failed_attempt("invalid url", true);
        }
    }

    /// An attempt failed before opening: `error`, then a 1006 `close`.
    fn failed_attempt(&mut self, reason: &str, retry: bool) {
        self.act(Action::Emit(Event::Error));
        self.ended(1006, reason, false, retry);
    }

    /// The socket of attempt `gen` opened: flush the queue, then `open`.
    pub fn opened(&mut self, gen: Gen) {
        if gen != self.gen || self.phase != Phase::Connecting {
            return;
        }
        self.phase = Phase::Open;
        self.cancel(CONNECT);
        for (data, _) in self.outbox.drain() {
            self.act(Action::Send(data));
        }
        self.queued = 0.0;
        self.calls.mark_sent(gen);
        if core::mem::take(&mut self.errored) {
            self.act(Action::ConnectionError(None));
        }
        let ms = self.options.reconnect.min_uptime;
        self.act(Action::Timer { id: UPTIME, ms });
        self.act(Action::Emit(Event::Open));
    }

    /// The socket of attempt `gen` reported an error (its `close` follows).
    pub fn errored(&mut self, gen: Gen) {
        if gen == self.gen && matches!(self.phase, Phase::Connecting | Phase::Open) {
            self.act(Action::Emit(Event::Error));
        }
    }

    /// The socket of attempt `gen` closed.
    pub fn closed(&mut self, gen: Gen, code: u16, reason: &str, clean: bool) {
        self.socket_closed(gen, code, reason, clean, true);
    }

    /// The socket of attempt `gen` closed, and the user's
    /// `shouldReconnectOnClose` answered false: reconnecting stops as for
    /// a terminal code (the reference ANDs the two).
    pub fn closed_for_good(&mut self, gen: Gen, code: u16, reason: &str, clean: bool) {
        self.socket_closed(gen, code, reason, clean, false);
    }

    fn socket_closed(&mut self, gen: Gen, code: u16, reason: &str, clean: bool, retry: bool) {
        if gen == self.gen && matches!(self.phase, Phase::Connecting | Phase::Open) {
            self.act(Action::Shut {
                code: 1000,
                reason: String::new(),
            });
            self.ended(code, reason, clean, retry);
        }
    }

    /// The current socket is gone (or never came): reject what it carried,
    /// decide whether and when to try again, then dispatch `close`.
    fn ended(&mut self, code: u16, reason: &str, clean: bool, retry: bool) {
        self.phase = Phase::Idle;
        self.cancel(CONNECT);
        self.cancel(UPTIME);
        self.unidentify();
        let decision = if retry {
            self.reconnect.after_close(code, self.rng.unit())
        } else {
            self.reconnect.refused()
        };
        let mut rejected = self.calls.take_sent_on(self.gen);
        match decision {
            AfterClose::Retry(ms) if ms.is_finite() => {
                self.act(Action::Timer { id: BACKOFF, ms });
            }
            AfterClose::Retry(_) | AfterClose::Stopped => {}
            AfterClose::Terminal | AfterClose::Exhausted => {
                rejected.extend(self.calls.take_all());
                self.errored = true;
                let close = Close::new(code, reason, clean);
                self.act(Action::Watch(false));
                self.act(Action::ConnectionError(Some(close)));
            }
        }
        self.reject(rejected, &ClientError::ConnectionClosed);
        self.act(Action::Emit(Event::Close(Close::new(code, reason, clean))));
    }

    fn unidentify(&mut self) {
        let i = &mut self.identity;
        i.state_seen = false;
        i.held = None;
        if core::mem::take(&mut i.identified) {
            self.act(Action::Unready);
        }
    }

    /// A timer fired.
    pub fn timer(&mut self, id: u32) {
        self.timer_with(id, true);
    }

    /// The [`CONNECT`] timer fired, and the user's `shouldReconnectOnClose`,
    /// asked with the reference's synthetic close (1000 `timeout`),
    /// answered false: the attempt fails and reconnecting stops.
    pub fn timed_out_for_good(&mut self) {
        self.timer_with(CONNECT, false);
    }

    fn timer_with(&mut self, id: u32, retry: bool) {
        match id {
            BACKOFF if self.phase == Phase::Idle && !self.closed => self.connect(),
            CONNECT if self.phase == Phase::Connecting => {
                self.act(Action::Shut {
                    code: 1000,
                    reason: "timeout".into(),
                });
                self.failed_attempt("timeout", retry);
            }
            UPTIME if self.phase == Phase::Open => self.reconnect.stable(),
            BACKOFF | CONNECT | UPTIME => {}
            timer => {
                let Some(p) = self
                    .calls
                    .take_where(|c| c.timer.is_some_and(|t| t.0 == timer))
                else {
                    return;
                };
                let ms = p.handle.timer.map_or(0.0, |t| t.1);
                let error = ClientError::Timeout {
                    method: p.method,
                    ms: ms as u32,
                };
                self.settle(p.handle.handle, Outcome::Error(error));
            }
        }
    }

    /// The browser went offline (`false`) or online (`true`).
    pub fn network(&mut self, online: bool) {
        self.reconnect.set_offline(!online);
        if online {
            self.wake();
        }
    }

    /// The tab became visible (`true`) or hidden.
    pub fn visible(&mut self, visible: bool) {
        if visible {
            self.wake();
        }
    }

    /// Connects now if reconnecting is on, the browser is not offline and
    /// no attempt is under way.
    fn wake(&mut self) {
        let idle = self.phase == Phase::Idle && !self.closed;
        if idle && self.reconnect.active() && !self.reconnect.offline() {
            self.cancel(BACKOFF);
            self.connect();
        }
    }

    fn cancel(&mut self, id: u32) {
        self.act(Action::Timer { id, ms: -1.0 });
    }
}

mod frames;
mod user;

pub use user::{push_json_string, Timeout};
