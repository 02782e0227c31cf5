//! Enforcing the request limits of the access policy, per instance: token buckets (the
//! `governor` crate) and concurrency counts per caller and per tenant of each role, and a gate
//! on in-flight ClickHouse queries with a short, bounded queue.
//!
//! A refusal says which limit and when to retry; the HTTP edge turns it into 429 (the caller's
//! or tenant's own limits) or 503 (the instance is full).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access::limits::{InstanceLimits, KeyLimits, Rate};
use crate::access::{AccessPolicy, Who};

/// Which key a limit is counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Caller,
    Tenant,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Tenant => "tenant",
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The key's token bucket is empty.
    Rate {
        scope: Scope,
        rate: Rate,
        retry_after: Duration,
    },
    /// The key already has `limit` requests in progress.
    Concurrency { scope: Scope, limit: u32 },
    /// Every query slot of this instance is taken and the queue is full or the wait ran out.
    Busy { retry_after: Duration },
}

/// What the caller's buckets had left when it was admitted, for the RateLimit headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remaining {
    pub scope: Scope,
    pub rate: Rate,
    pub remaining: u32,
}

impl Remaining {
    /// How long until the bucket is full again.
    pub fn until_full(&self) -> Duration {
        let burst = self.rate.burst.get();
        self.rate.interval * (burst - self.remaining.min(burst))
    }
}

type Bucket = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Counts of requests in progress per key.
#[derive(Debug, Default)]
struct InProgress {
    counts: Mutex<HashMap<String, u32>>,
}

impl InProgress {
    fn enter(self: &Arc<Self>, key: &str, limit: NonZeroU32) -> Option<InProgressGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.to_owned()).or_insert(0);
        if *count >= limit.get() {
            return None;
        }
        *count += 1;
        Some(InProgressGuard {
            counts: Arc::clone(self),
            key: key.to_owned(),
        })
    }
}

/// One request in progress; leaving drops the count (and the key at zero, so the map stays
/// as small as the set of busy keys).
#[derive(Debug)]
struct InProgressGuard {
    counts: Arc<InProgress>,
    key: String,
}

impl Drop for InProgressGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The limits of one key kind (callers or tenants) of one role.
struct KeyLimiter {
    scope: Scope,
    limits: KeyLimits,
    bucket: Option<Bucket>,
    in_progress: Arc<InProgress>,
}

impl KeyLimiter {
    fn new(scope: Scope, limits: KeyLimits) -> Self {
        let bucket = limits.rate.and_then(|rate| {
            Quota::with_period(rate.interval)
                .map(|quota| RateLimiter::keyed(quota.allow_burst(rate.burst)).with_middleware())
        });
        Self {
            scope,
            limits,
            bucket,
            in_progress: Arc::default(),
        }
    }

    /// Counts the request against the key's concurrency bound.
    fn enter(&self, key: &str, guards: &mut Vec<InProgressGuard>) -> Result<(), Refusal> {
        if let Some(limit) = self.limits.concurrency {
            let guard = self.in_progress.enter(key, limit).ok_or(Refusal::Concurrency {
                scope: self.scope,
                limit: limit.get(),
            })?;
            guards.push(guard);
        }
        Ok(())
    }

    /// Takes a token from the key's bucket.
    fn take_token(&self, key: &str) -> Result<Option<Remaining>, Refusal> {
        let (Some(bucket), Some(rate)) = (&self.bucket, self.limits.rate) else {
            return Ok(None);
        };
        match bucket.check_key(&key.to_owned()) {
            Ok(snapshot) => Ok(Some(Remaining {
                scope: self.scope,
                rate,
                remaining: snapshot.remaining_burst_capacity(),
            })),
            Err(not_until) => Err(Refusal::Rate {
                scope: self.scope,
                rate,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
        }
    }

    #[cfg(test)]
    fn admit(&self, key: &str, guards: &mut Vec<InProgressGuard>) -> Result<Option<Remaining>, Refusal> {
        self.enter(key, guards)?;
        self.take_token(key)
    }

    /// Forgets buckets that are full again, so idle callers cost no memory.
    fn forget_idle(&self) {
        if let Some(bucket) = &self.bucket {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
    }
}

/// A request admitted under its caller's and tenant's limits; dropping it ends the request's
/// share of their concurrency.
#[derive(Debug)]
pub struct Admission {
    _in_progress: Vec<InProgressGuard>,
    /// The tighter of the buckets that applied (fewest requests left).
    pub remaining: Option<Remaining>,
}

/// The limits of every role, and the instance's query gate.
pub struct Limiter {
    roles: HashMap<String, (KeyLimiter, KeyLimiter)>,
    gate: QueryGate,
    last_sweep: Mutex<Instant>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

/// How often idle buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Limiter {
    pub fn new(policy: &AccessPolicy) -> Self {
        let roles = policy
            .roles()
            .map(|role| {
                (
                    role.name.clone(),
                    (
                        KeyLimiter::new(Scope::Caller, role.limits.caller),
                        KeyLimiter::new(Scope::Tenant, role.limits.tenant),
                    ),
                )
            })
            .collect();
        Self {
            roles,
            gate: QueryGate::new(policy.instance_limits()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Admits a request of the granted caller, or says which limit refuses it.
    pub fn admit(&self, grant: &Who<'_>) -> Result<Admission, Refusal> {
        self.sweep_now_and_then();
        let mut guards = Vec::new();
        let Some((callers, tenants)) = self.roles.get(&grant.role().name) else {
            return Ok(Admission {
                _in_progress: guards,
                remaining: None,
            });
        };
        // Keys are per role: the same caller under two roles has two budgets, as the policy
        // reads. A caller is its issuer and subject: `sub` is unique only within an issuer.
        // Concurrency before rates, so that a request refused for concurrency spends no
        // token; the caller's bucket before the tenant's, so that one caller over its own rate
        // does not spend its colleagues' tenant budget.
        callers.enter(grant.caller_key(), &mut guards)?;
        if let Some(tenant) = grant.tenant() {
            tenants.enter(tenant, &mut guards)?;
        }
        let caller = callers.take_token(grant.caller_key())?;
        let tenant = match grant.tenant() {
            Some(tenant) => tenants.take_token(tenant)?,
            None => None,
        };
        let remaining = [caller, tenant]
            .into_iter()
            .flatten()
            .min_by_key(|remaining| remaining.remaining);
        Ok(Admission {
            _in_progress: guards,
            remaining,
        })
    }

    /// Waits for a ClickHouse query slot, at most until `deadline`.
    pub async fn query_slot(&self, deadline: Instant) -> Result<QuerySlot, Refusal> {
        self.gate.enter(deadline).await
    }

    /// A query slot for a background refresh: only when at least a quarter of the slots are
    /// free, so refreshes never take the last slots from callers (and never queue).
    pub fn spare_query_slot(&self) -> Option<QuerySlot> {
        let reserve = (self.gate.limits.max_inflight_queries.get() as usize).div_ceil(4);
        (self.gate.free() > reserve).then(|| self.gate.try_enter()).flatten()
    }

    /// A query slot if one is free now.
    #[cfg(test)]
    fn try_query_slot(&self) -> Option<QuerySlot> {
        self.gate.try_enter()
    }

    fn sweep_now_and_then(&self) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if last.elapsed() < SWEEP_EVERY {
            return;
        }
        *last = Instant::now();
        for (callers, tenants) in self.roles.values() {
            callers.forget_idle();
            tenants.forget_idle();
        }
    }
}

/// The instance's bound on in-flight ClickHouse queries.
#[derive(Debug)]
struct QueryGate {
    slots: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicU32,
    limits: InstanceLimits,
}

/// A ClickHouse query slot, held while the query runs and its result streams.
#[derive(Debug)]
pub struct QuerySlot {
    _permit: OwnedSemaphorePermit,
}

/// A place in the query gate's queue, given up when dropped.
struct QueuePlace<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl QueryGate {
    /// Free query slots now.
    fn free(&self) -> usize {
        self.slots.available_permits()
    }

    fn new(limits: InstanceLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_inflight_queries.get() as usize)),
            waiting: Default::default(),
            limits,
        }
    }

    fn try_enter(&self) -> Option<QuerySlot> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|permit| QuerySlot { _permit: permit })
    }

    async fn enter(&self, deadline: Instant) -> Result<QuerySlot, Refusal> {
        use std::sync::atomic::Ordering;
        if let Some(slot) = self.try_enter() {
            return Ok(slot);
        }
        let busy = Refusal::Busy {
            retry_after: self.limits.queue_timeout.max(Duration::from_secs(1)),
        };
        // Join the queue only while it has room: a full queue refuses at once, so a pile-up
        // costs nothing but the refusal.
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.limits.queue).then_some(waiting + 1)
            })
            .is_ok();
        if !joined {
            return Err(busy);
        }
        // Leaves the queue however the wait ends, also when the waiting request is dropped
        // (its client hung up, or its deadline passed).
        let _in_queue = QueuePlace(&self.waiting);
        let wait_until = deadline.min(Instant::now() + self.limits.queue_timeout);
        let acquired = tokio::time::timeout_at(wait_until.into(), Arc::clone(&self.slots).acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(QuerySlot { _permit: permit }),
            _ => Err(busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::limits::RoleLimits;
    use crate::access::policy::Role;

    fn limiter(caller: KeyLimits, tenant: KeyLimits) -> Limiter {
        let role = Role {
            name: "r".into(),
            limits: RoleLimits { caller, tenant },
            ..Role::default()
        };
        Limiter {
            roles: [(
                role.name.clone(),
                (
                    KeyLimiter::new(Scope::Caller, role.limits.caller),
                    KeyLimiter::new(Scope::Tenant, role.limits.tenant),
                ),
            )]
            .into(),
            gate: QueryGate::new(InstanceLimits {
                max_inflight_queries: NonZeroU32::MIN,
                queue: 1,
                queue_timeout: Duration::from_millis(50),
            }),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    fn rate(per_second: u64, burst: u32) -> Option<Rate> {
        Some(Rate {
            interval: Duration::from_millis(1000 / per_second),
            burst: NonZeroU32::new(burst).expect("burst"),
        })
    }

    #[test]
    fn a_bucket_admits_its_burst_then_says_when_to_retry() {
        let callers = KeyLimiter::new(
            Scope::Caller,
            KeyLimits {
                rate: rate(1, 2),
                concurrency: None,
            },
        );
        let mut guards = Vec::new();
        assert_eq!(
            callers.admit("a", &mut guards).expect("first").map(|r| r.remaining),
            Some(1)
        );
        assert_eq!(
            callers.admit("a", &mut guards).expect("second").map(|r| r.remaining),
            Some(0)
        );
        match callers.admit("a", &mut guards) {
            Err(Refusal::Rate {
                scope: Scope::Caller,
                retry_after,
                ..
            }) => {
                assert!(retry_after > Duration::from_millis(500) && retry_after <= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        // Another caller has a bucket of its own.
        assert!(callers.admit("b", &mut guards).is_ok());
    }

    #[test]
    fn concurrency_is_counted_while_admissions_live_and_freed_when_they_end() {
        let callers = KeyLimiter::new(
            Scope::Tenant,
            KeyLimits {
                rate: None,
                concurrency: NonZeroU32::new(2),
            },
        );
        let mut first = Vec::new();
        let mut second = Vec::new();
        callers.admit("t", &mut first).expect("1");
        callers.admit("t", &mut second).expect("2");
        assert_eq!(
            callers.admit("t", &mut Vec::new()),
            Err(Refusal::Concurrency {
                scope: Scope::Tenant,
                limit: 2
            })
        );
        drop(first);
        callers.admit("t", &mut Vec::new()).expect("a slot again");
        drop(second);
        assert!(callers.in_progress.counts.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_refusal_for_concurrency_spends_no_token() {
        let callers = KeyLimiter::new(
            Scope::Caller,
            KeyLimits {
                rate: rate(1, 1),
                concurrency: NonZeroU32::new(1),
            },
        );
        let mut held = Vec::new();
        callers.admit("a", &mut held).expect("first");
        assert!(matches!(
            callers.admit("a", &mut Vec::new()),
            Err(Refusal::Concurrency { .. })
        ));
        drop(held);
        // The bucket is empty from the first request, not from the refused one: the refusal
        // names the rate, with a retry time within one interval.
        assert!(matches!(callers.admit("a", &mut Vec::new()), Err(Refusal::Rate { .. })));
    }

    #[tokio::test]
    async fn the_query_gate_queues_briefly_then_refuses_as_busy() {
        let limiter = limiter(KeyLimits::default(), KeyLimits::default());
        let far = Instant::now() + Duration::from_secs(10);
        let slot = limiter.query_slot(far).await.expect("the one slot");
        assert!(limiter.try_query_slot().is_none());
        // One may queue (and times out after 50 ms); a second queuer is refused at once.
        let started = Instant::now();
        let (queued, refused) = tokio::join!(limiter.query_slot(far), async {
            tokio::task::yield_now().await;
            limiter.query_slot(far).await
        });
        assert!(matches!(refused, Err(Refusal::Busy { .. })));
        assert!(matches!(queued, Err(Refusal::Busy { .. })));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(slot);
        assert!(limiter.query_slot(far).await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_dropped_while_queued_gives_its_place_back() {
        let limiter = limiter(KeyLimits::default(), KeyLimits::default());
        let far = Instant::now() + Duration::from_secs(10);
        let _slot = limiter.query_slot(far).await.expect("the one slot");
        for _ in 0..3 {
            // Queued (the queue holds one), then dropped before the wait ends.
            let waited = tokio::time::timeout(Duration::from_millis(5), limiter.query_slot(far)).await;
            assert!(waited.is_err(), "still waiting when dropped");
        }
        assert_eq!(limiter.gate.waiting.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_slot_when_it_frees() {
        let limiter = Arc::new(limiter(KeyLimits::default(), KeyLimits::default()));
        let slot = limiter.try_query_slot().expect("slot");
        let waiter = {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move {
                limiter
                    .query_slot(Instant::now() + Duration::from_secs(5))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(slot);
        assert!(waiter.await.expect("join"));
    }
}
