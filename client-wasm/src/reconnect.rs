//! The reconnect policy: partysocket's backoff and retry rules (plus full
//! jitter), as a pure state machine the transport drives.

/// Reconnect tuning; `Default` is the reference's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectOptions {
    /// First backoff delay in ms. Defaults to 3000.
    pub min_reconnection_delay: f64,
    /// Largest backoff delay in ms. Defaults to 10000.
    pub max_reconnection_delay: f64,
    /// Growth per retry. Defaults to 1.3.
    pub reconnection_delay_grow_factor: f64,
    /// ms a connection must stay open before the retry count resets. Defaults to 5000.
    pub min_uptime: f64,
    /// ms an attempt may take to open. Defaults to 4000.
    pub connection_timeout: f64,
    /// Retries after the first attempt (`N` means `N+1` attempts). Defaults to infinity.
    pub max_retries: f64,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            min_reconnection_delay: 3000.0,
            max_reconnection_delay: 10000.0,
            reconnection_delay_grow_factor: 1.3,
            min_uptime: 5000.0,
            connection_timeout: 4000.0,
            max_retries: f64::INFINITY,
        }
    }
}

impl ReconnectOptions {
    /// The reference's delay before attempt `retry` (0 for the first), no jitter:
    /// 0, 3000, 3900, 5070, 6591, 8568.3, 10000, …
    pub fn base_delay(&self, retry: u32) -> f64 {
        if retry == 0 {
            return 0.0;
        }
        // min * grow^(retry - 1), capped; by repeated multiplication since
        // `f64::powi` needs `std`, stopping once the cap is reached.
        let mut d = self.min_reconnection_delay;
        for _ in 1..retry {
            if d >= self.max_reconnection_delay {
                break;
            }
            d *= self.reconnection_delay_grow_factor;
        }
        d.min(self.max_reconnection_delay)
    }
}

/// Whether a close code forbids reconnecting: 1008 and 4000–4999.
pub fn is_terminal(code: u16) -> bool {
    agents_protocol::is_terminal_close_code(code)
}

/// What to do after a socket ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterClose {
    /// Try again after this many ms.
    Retry(f64),
    /// Stop: a terminal close code.
    Terminal,
    /// Stop: retries used up.
    Exhausted,
    /// Stop: the user closed the client.
    Stopped,
}

/// Retry bookkeeping. `retry` counts attempts since the last stable
/// connection; it resets only after `min_uptime` of being open.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// The policy.
    pub options: ReconnectOptions,
    retry: u32,
    attempted: bool,
    stopped: bool,
    offline: bool,
}

impl Reconnect {
    /// A fresh policy; `start_closed` waits for [`restart`](Self::restart).
    pub fn new(options: ReconnectOptions, start_closed: bool) -> Self {
        Reconnect {
            options,
            retry: 0,
            attempted: false,
            stopped: start_closed,
            offline: false,
        }
    }

    /// Retries made since the last stable connection.
    pub fn retry_count(&self) -> u32 {
        self.retry
    }

    /// Whether automatic reconnection is on.
    pub fn active(&self) -> bool {
        !self.stopped
    }

    /// The user called `reconnect()`: start over at once.
    pub fn restart(&mut self) {
        self.stopped = false;
        self.retry = 0;
        self.attempted = false;
    }

    /// The user called `close()`, or a terminal close happened.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The browser went offline/online. Offline, failed attempts do not
    /// count against `max_retries`, and going online reconnects at once.
    pub fn set_offline(&mut self, offline: bool) {
        self.offline = offline;
    }

    /// Whether the browser reported being offline.
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// The connection stayed up for `min_uptime`: the count resets, and the
    /// first reconnect after it drops waits the minimum delay (as observed
    /// with the reference).
    pub fn stable(&mut self) {
        self.retry = 0;
        self.attempted = true;
    }

    /// Decides the next step after a socket closed (or failed to open) with
    /// `code`. `jitter` is a random number in `[0, 1)`: the delay is drawn
    /// uniformly from `[0, base]` (full jitter) so clients do not return in
    /// lockstep.
    pub fn after_close(&mut self, code: u16, jitter: f64) -> AfterClose {
        if self.stopped {
            return AfterClose::Stopped;
        }
        if is_terminal(code) {
            self.stopped = true;
            return AfterClose::Terminal;
        }
        if self.offline {
            // Wait for `online`; do not burn retries.
            return AfterClose::Retry(f64::INFINITY);
        }
        if self.attempted && f64::from(self.retry) >= self.options.max_retries {
            self.stopped = true;
            return AfterClose::Exhausted;
        }
        if self.attempted {
            self.retry += 1;
        }
        self.attempted = true;
        AfterClose::Retry(self.options.base_delay(self.retry) * jitter.clamp(0.0, 1.0))
    }

    /// The user's `shouldReconnectOnClose` refused to reconnect: stops as a
    /// terminal code does (unless already stopped).
    pub fn refused(&mut self) -> AfterClose {
        if core::mem::replace(&mut self.stopped, true) {
            return AfterClose::Stopped;
        }
        AfterClose::Terminal
    }

    /// Records the very first attempt (made at once, with no delay).
    pub fn first_attempt(&mut self) {
        self.attempted = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_sequence_equals_the_reference() {
        let o = ReconnectOptions::default();
        let seq: Vec<f64> = (0..9).map(|r| o.base_delay(r)).collect();
        let want = [
            0.0, 3000.0, 3900.0, 5070.0, 6591.0, 8568.3, 10000.0, 10000.0, 10000.0,
        ];
        for (got, want) in seq.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{seq:?}");
        }
    }

    #[test]
    fn retries_count_after_the_first_attempt() {
        let mut r = Reconnect::new(
            ReconnectOptions {
                max_retries: 2.0,
                ..Default::default()
            },
            false,
        );
        r.first_attempt();
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Retry(3000.0));
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Retry(3900.0));
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Exhausted);
        assert!(!r.active());
        r.restart();
        assert!(r.active());
        r.first_attempt();
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Retry(3000.0));
    }

    #[test]
    fn full_jitter_stays_within_the_base_delay() {
        let mut r = Reconnect::new(ReconnectOptions::default(), false);
        r.first_attempt();
        assert_eq!(r.after_close(1006, 0.5), AfterClose::Retry(1500.0));
        assert_eq!(r.after_close(1006, 0.0), AfterClose::Retry(0.0));
    }

    #[test]
    fn a_stable_connection_resets_the_count() {
        let mut r = Reconnect::new(ReconnectOptions::default(), false);
        r.first_attempt();
        r.after_close(1006, 1.0);
        r.after_close(1006, 1.0);
        r.stable();
        // The first reconnect after a long-lived connection waits min delay (observed).
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Retry(3000.0));
    }

    #[test]
    fn terminal_codes_stop() {
        for code in [1008, 4000, 4001, 4999] {
            let mut r = Reconnect::new(ReconnectOptions::default(), false);
            r.first_attempt();
            assert_eq!(r.after_close(code, 1.0), AfterClose::Terminal, "{code}");
            assert!(!r.active());
        }
        for code in [1000, 1001, 1006, 1011, 1013, 3000, 5000] {
            let mut r = Reconnect::new(ReconnectOptions::default(), false);
            r.first_attempt();
            assert!(
                matches!(r.after_close(code, 1.0), AfterClose::Retry(_)),
                "{code}"
            );
        }
    }

    #[test]
    fn offline_does_not_burn_retries_and_close_stops() {
        let mut r = Reconnect::new(
            ReconnectOptions {
                max_retries: 0.0,
                ..Default::default()
            },
            false,
        );
        r.first_attempt();
        r.set_offline(true);
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Retry(f64::INFINITY));
        r.set_offline(false);
        assert_eq!(r.after_close(1006, 1.0), AfterClose::Exhausted);
        let mut s = Reconnect::new(ReconnectOptions::default(), true);
        assert!(!s.active());
        assert_eq!(s.after_close(1006, 1.0), AfterClose::Stopped);
    }
}
