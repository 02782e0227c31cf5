//! A circuit breaker in front of ClickHouse. After `threshold` consecutive failures to reach
//! it, the circuit opens: requests fail at once (503 with Retry-After) instead of each waiting
//! on a dead server. After `cooldown` one probe goes through (half-open); its success closes
//! the circuit, its failure opens it again.
//!
//! Only unavailability counts (refused connections, broken connections, gateway errors): a
//! query ClickHouse answered, even with an exception, proves the server is up. The probe is a
//! cheap `SELECT 1` with a short timeout, not a caller's query, so a long query cannot hold
//! the circuit half-open and a server that accepts connections but never answers keeps it
//! open.
//!
//! Hand-written rather than taken from a crate: the state machine is a few lines, and the
//! maintained breaker crates wrap futures in ways that hide the "the probe was abandoned"
//! case a disconnecting client creates.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over; `probing` while the one probe is out.
    HalfOpen {
        probing: bool,
    },
}

/// The breaker's state, shared by every request.
#[derive(Debug)]
pub struct Breaker {
    state: Arc<Mutex<State>>,
    threshold: u32,
    cooldown: Duration,
}

/// Refused: the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub retry_after: Duration,
}

/// Permission to send one query; report how it went with [`Pass::succeeded`] or
/// [`Pass::failed`]. A pass dropped without a report (the client went away) reports nothing,
/// except that an abandoned probe lets the next request probe instead.
#[derive(Debug)]
pub struct Pass {
    state: Arc<Mutex<State>>,
    probe: bool,
    threshold: u32,
    cooldown: Duration,
    reported: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// A pass for one query, or how long until the circuit may let one through.
    pub fn pass(&self) -> Result<Pass, Open> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(Open {
                        retry_after: until - now,
                    });
                }
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => {
                return Err(Open {
                    retry_after: Duration::from_secs(1),
                });
            }
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
        };
        Ok(Pass {
            state: Arc::clone(&self.state),
            probe,
            threshold: self.threshold,
            cooldown: self.cooldown,
            reported: false,
        })
    }

    /// A pass only while the circuit is closed: for work nobody waits on (a background
    /// refresh), which must never be the probe that decides whether the circuit closes.
    pub fn pass_if_closed(&self) -> Option<Pass> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(*state, State::Closed { .. }).then(|| Pass {
            state: Arc::clone(&self.state),
            probe: false,
            threshold: self.threshold,
            cooldown: self.cooldown,
            reported: false,
        })
    }

    /// How long until the circuit lets a request through, while it is open and cooling down;
    /// `None` when a request may try now. Lets a request fail fast before it queues.
    pub fn open_for(&self) -> Option<Open> {
        match *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Open { until } => until
                .checked_duration_since(Instant::now())
                .map(|retry_after| Open { retry_after }),
            _ => None,
        }
    }

    /// Whether the circuit is not closed.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            State::Closed { .. }
        )
    }
}

impl Pass {
    /// Whether this pass is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// ClickHouse answered (with a result or an exception): the circuit closes.
    pub fn succeeded(mut self) {
        self.reported = true;
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = State::Closed { failures: 0 };
    }

    /// ClickHouse could not be reached.
    pub fn failed(mut self) {
        self.reported = true;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let open = State::Open {
            until: Instant::now() + self.cooldown,
        };
        *state = match *state {
            _ if self.probe => open,
            State::Closed { failures } if failures + 1 >= self.threshold => open,
            State::Closed { failures } => State::Closed { failures: failures + 1 },
            // Already open (another request's failure opened it): keep its time.
            other => other,
        };
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_open_the_circuit_and_a_success_in_between_resets_the_count() {
        let breaker = Breaker::new(3, Duration::from_secs(60));
        breaker.pass().expect("closed").failed();
        breaker.pass().expect("closed").failed();
        breaker.pass().expect("closed").succeeded();
        breaker.pass().expect("closed").failed();
        breaker.pass().expect("closed").failed();
        assert!(!breaker.is_open());
        breaker.pass().expect("closed").failed();
        let open = breaker.pass().expect_err("open");
        assert!(open.retry_after > Duration::from_secs(59));
        assert!(breaker.is_open());
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_through_and_its_outcome_decides() {
        let breaker = Breaker::new(1, Duration::from_millis(20));
        breaker.pass().expect("closed").failed();
        assert!(breaker.pass().is_err());
        std::thread::sleep(Duration::from_millis(25));
        let probe = breaker.pass().expect("half-open probe");
        assert!(breaker.pass().is_err(), "only one probe at a time");
        probe.failed();
        assert!(breaker.pass().is_err(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(25));
        breaker.pass().expect("probe").succeeded();
        assert!(!breaker.is_open());
        breaker.pass().expect("closed");
        breaker.pass().expect("closed");
    }

    #[test]
    fn refreshes_pass_only_a_closed_circuit_and_requests_fail_fast_while_it_cools() {
        let breaker = Breaker::new(1, Duration::from_millis(20));
        assert!(breaker.open_for().is_none());
        breaker.pass_if_closed().expect("closed").failed();
        assert!(breaker.pass_if_closed().is_none());
        assert!(breaker.open_for().expect("cooling down").retry_after <= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(25));
        assert!(breaker.open_for().is_none(), "cooled down: a request may probe");
        assert!(breaker.pass_if_closed().is_none(), "but a refresh may not");
        assert!(breaker.pass().expect("probe").is_probe());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let breaker = Breaker::new(1, Duration::from_millis(1));
        breaker.pass().expect("closed").failed();
        std::thread::sleep(Duration::from_millis(5));
        drop(breaker.pass().expect("probe"));
        breaker.pass().expect("the next probe").succeeded();
        assert!(!breaker.is_open());
    }
}
