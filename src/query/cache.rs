//! The result cache: whole results of endpoints that opt in (`[cache]` in endpoint.toml),
//! bounded by bytes (the `moka` crate), with single-flight misses.
//!
//! - **Keys never mix callers who could see different bytes.** A key holds the endpoint, the
//!   deployment's catalog+policy version, the role (which decides the ClickHouse user and every
//!   limit setting), the tenant, every caller parameter the query binds, the typed parameter
//!   values after defaults and normalisation, and the output format. Keys are compared whole,
//!   never by a hash alone, so a collision cannot hand one tenant another's entry.
//! - **Single-flight.** Concurrent misses of one key run one query: the first caller leads a
//!   flight, the others follow it and get its entry. A failed flight is not cached and its
//!   failure is not handed out: followers try again (one of them leads the next flight), and
//!   after [`FOLLOW_ATTEMPTS`] failed flights a follower runs its own query. A leader that
//!   goes away (its client hung up) ends its flight the same way.
//! - **Stale-while-revalidate.** After its TTL an entry may be served for `stale` more seconds
//!   while one background refresh runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use moka::sync::Cache;
use tokio::sync::watch;

use super::bind::BoundParams;
use crate::access::Grant;
use crate::catalog::format::OutputFormat;

/// How many failed flights a follower waits out before running its own query.
pub const FOLLOW_ATTEMPTS: u32 = 2;

/// Everything that decides a cached result's bytes, as one length-prefixed byte string: the
/// endpoint, the deployment version, the role, the tenant, each caller parameter, each typed
/// value (as sent to ClickHouse) and the format. Built with one allocation, compared whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<[u8]>);

/// Appends one length-prefixed field, so that no two different field lists encode alike.
fn push_field(key: &mut Vec<u8>, field: &[u8]) {
    key.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_le_bytes());
    key.extend_from_slice(field);
}

impl CacheKey {
    pub fn new(version: &str, grant: &Grant<'_>, params: &BoundParams, format: OutputFormat) -> Self {
        let mut key = Vec::with_capacity(256);
        push_field(&mut key, grant.endpoint().name().as_bytes());
        push_field(&mut key, version.as_bytes());
        push_field(&mut key, grant.role().name.as_bytes());
        // A marker byte tells "no tenant" from an empty one.
        match grant.tenant() {
            Some(tenant) => {
                key.push(1);
                push_field(&mut key, tenant.as_bytes());
            }
            None => key.push(0),
        }
        for (name, value) in grant.caller_params() {
            push_field(&mut key, name.as_bytes());
            push_field(&mut key, value.as_bytes());
        }
        for (name, value) in params.iter() {
            push_field(&mut key, name.as_bytes());
            // The value as it is sent to ClickHouse: two spellings of one value (a date with or
            // without its time) parse to the same typed value and share an entry. Written in
            // place behind a length that is filled in afterwards.
            let at = key.len();
            key.extend_from_slice(&[0; 4]);
            if serde_json::to_writer(&mut key, value).is_err() {
                key.truncate(at + 4);
            }
            let length = u32::try_from(key.len() - at - 4).unwrap_or(u32::MAX);
            key[at..at + 4].copy_from_slice(&length.to_le_bytes());
        }
        push_field(&mut key, format.name().as_bytes());
        Self(key.into_boxed_slice())
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A cached result.
#[derive(Debug)]
pub struct CachedResult {
    pub body: Bytes,
    /// A strong validator: the body's SHA-256, quoted.
    pub etag: String,
    pub created: Instant,
    pub fresh_for: Duration,
    pub stale_for: Duration,
}

impl CachedResult {
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }
    /// How much longer the entry is fresh (zero once stale).
    pub fn fresh_left(&self) -> Duration {
        self.fresh_for.saturating_sub(self.age())
    }
}

/// The body's entity tag.
pub fn etag_of(body: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, body);
    format!("\"{}\"", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..18]))
}

/// What the cache holds for a key.
#[derive(Debug)]
pub enum Lookup {
    Fresh(Arc<CachedResult>),
    /// Past its TTL, within its stale window: serve it and refresh.
    Stale(Arc<CachedResult>),
    Miss,
}

/// How a flight ended, as its followers see it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Stored(Arc<CachedResult>),
    /// The result is too big to cache: each follower runs its own query.
    TooLarge,
    /// The query failed, or its leader went away: try again.
    Failed,
}

type Flights = Mutex<HashMap<Arc<CacheKey>, (u64, watch::Receiver<Option<Outcome>>)>>;

/// The cache and its flights.
#[derive(Clone)]
pub struct ResultCache {
    entries: Cache<Arc<CacheKey>, Arc<CachedResult>>,
    /// Keys whose last result was over the entry limit, for as long as that entry would have
    /// lived: their callers run their own queries at once instead of waiting on a flight that
    /// cannot give them an entry.
    too_large: Cache<Arc<CacheKey>, Instant>,
    flights: Arc<Flights>,
    next_flight: Arc<AtomicU64>,
    max_entry_bytes: usize,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

/// How many too-large keys are remembered.
const TOO_LARGE_KEYS: u64 = 10_000;

/// Expiry at the instant stored as the value.
struct UntilInstant;

impl moka::Expiry<Arc<CacheKey>, Instant> for UntilInstant {
    fn expire_after_create(&self, _key: &Arc<CacheKey>, until: &Instant, created_at: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(created_at))
    }
}

struct EntryExpiry;

impl moka::Expiry<Arc<CacheKey>, Arc<CachedResult>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<CacheKey>,
        entry: &Arc<CachedResult>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.fresh_for + entry.stale_for)
    }
}

/// Joining the flight of a key.
#[derive(Debug)]
pub enum Join {
    /// No flight was running: this caller runs the query and must [`FlightLead::finish`] it.
    Lead(FlightLead),
    Follow(FlightWait),
}

/// The leader's side of a flight. Dropped without `finish`, it ends the flight as failed.
#[derive(Debug)]
pub struct FlightLead {
    flights: Arc<Flights>,
    key: Arc<CacheKey>,
    id: u64,
    sender: watch::Sender<Option<Outcome>>,
}

/// A follower's side of a flight.
#[derive(Debug)]
pub struct FlightWait {
    receiver: watch::Receiver<Option<Outcome>>,
}

impl ResultCache {
    /// A cache of at most `max_bytes` of results, none over `max_entry_bytes`.
    pub fn new(max_bytes: u64, max_entry_bytes: usize) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Arc<CacheKey>, entry: &Arc<CachedResult>| {
                    u32::try_from(entry.body.len() + key.len() + 256).unwrap_or(u32::MAX)
                })
                .expire_after(EntryExpiry)
                .build(),
            too_large: Cache::builder()
                .max_capacity(TOO_LARGE_KEYS)
                .expire_after(UntilInstant)
                .build(),
            flights: Arc::default(),
            next_flight: Arc::default(),
            max_entry_bytes,
        }
    }

    /// Remembers that `key`'s result is over the entry limit, for `ttl`.
    pub fn mark_too_large(&self, key: Arc<CacheKey>, ttl: Duration) {
        self.too_large.insert(key, Instant::now() + ttl);
    }

    /// Whether `key`'s result was over the entry limit lately.
    pub fn is_too_large(&self, key: &CacheKey) -> bool {
        self.too_large.get(key).is_some_and(|until| until > Instant::now())
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    pub fn lookup(&self, key: &CacheKey) -> Lookup {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let age = entry.age();
        if age < entry.fresh_for {
            Lookup::Fresh(entry)
        } else if age < entry.fresh_for + entry.stale_for {
            Lookup::Stale(entry)
        } else {
            Lookup::Miss
        }
    }

    /// Leads a new flight for `key`, or follows the one running.
    pub fn join(&self, key: &Arc<CacheKey>) -> Join {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, receiver)) = flights.get(key) {
            return Join::Follow(FlightWait {
                receiver: receiver.clone(),
            });
        }
        Join::Lead(self.lead_locked(&mut flights, key))
    }

    /// Leads a flight for `key` only if none is running (a background refresh).
    pub fn try_lead(&self, key: &Arc<CacheKey>) -> Option<FlightLead> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        (!flights.contains_key(key)).then(|| self.lead_locked(&mut flights, key))
    }

    fn lead_locked(
        &self,
        flights: &mut HashMap<Arc<CacheKey>, (u64, watch::Receiver<Option<Outcome>>)>,
        key: &Arc<CacheKey>,
    ) -> FlightLead {
        let (sender, receiver) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        flights.insert(Arc::clone(key), (id, receiver));
        FlightLead {
            flights: Arc::clone(&self.flights),
            key: Arc::clone(key),
            id,
            sender,
        }
    }

    /// Stores a complete result (if it fits) and returns it as an entry either way.
    pub fn store(
        &self,
        key: Arc<CacheKey>,
        body: Bytes,
        fresh_for: Duration,
        stale_for: Duration,
    ) -> Arc<CachedResult> {
        let entry = Arc::new(CachedResult {
            etag: etag_of(&body),
            body,
            created: Instant::now(),
            fresh_for,
            stale_for,
        });
        if entry.body.len() <= self.max_entry_bytes {
            self.entries.insert(key, Arc::clone(&entry));
        }
        entry
    }

    /// Flights in progress.
    #[cfg(test)]
    fn flights_in_progress(&self) -> usize {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl FlightLead {
    /// Ends the flight, telling every follower how.
    pub fn finish(self, outcome: Outcome) {
        // Removed from the map before the followers wake, so one that retries starts a new
        // flight rather than rejoining this one.
        self.remove();
        self.sender.send_replace(Some(outcome));
    }

    fn remove(&self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

impl Drop for FlightLead {
    fn drop(&mut self) {
        // Finished flights were removed already; an abandoned one is removed here, and its
        // dropped sender wakes the followers, who retry.
        self.remove();
    }
}

impl FlightWait {
    /// The flight's outcome; `Failed` when its leader went away without one.
    pub async fn outcome(mut self) -> Outcome {
        match self.receiver.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Outcome::Failed),
            Err(_) => Outcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str) -> Arc<CacheKey> {
        let mut key = Vec::new();
        for field in ["e", "v1", "analyst", tenant, "limit", "10", "json"] {
            push_field(&mut key, field.as_bytes());
        }
        Arc::new(CacheKey(key.into_boxed_slice()))
    }

    #[test]
    fn fields_are_length_prefixed_so_shifted_boundaries_differ() {
        let encode = |fields: &[&str]| {
            let mut key = Vec::new();
            for field in fields {
                push_field(&mut key, field.as_bytes());
            }
            key
        };
        assert_ne!(encode(&["ab", "c"]), encode(&["a", "bc"]));
        assert_ne!(encode(&["a", ""]), encode(&["a"]));
    }

    #[test]
    fn entries_are_fresh_then_stale_then_gone() {
        let cache = ResultCache::new(1 << 20, 1 << 10);
        let k = key("acme");
        assert!(matches!(cache.lookup(&k), Lookup::Miss));
        let entry = cache.store(
            Arc::clone(&k),
            Bytes::from_static(b"[1]"),
            Duration::from_millis(30),
            Duration::from_millis(30),
        );
        assert_eq!(entry.etag, etag_of(b"[1]"));
        assert!(matches!(cache.lookup(&k), Lookup::Fresh(_)));
        std::thread::sleep(Duration::from_millis(35));
        assert!(matches!(cache.lookup(&k), Lookup::Stale(_)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(cache.lookup(&k), Lookup::Miss));
    }

    #[test]
    fn too_large_keys_are_remembered_for_their_ttl() {
        let cache = ResultCache::new(1 << 20, 4);
        assert!(!cache.is_too_large(&key("a")));
        cache.mark_too_large(key("a"), Duration::from_millis(30));
        assert!(cache.is_too_large(&key("a")));
        assert!(!cache.is_too_large(&key("b")));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.is_too_large(&key("a")));
    }

    #[test]
    fn tenants_do_not_share_entries() {
        let cache = ResultCache::new(1 << 20, 1 << 10);
        cache.store(
            key("acme"),
            Bytes::from_static(b"acme"),
            Duration::from_secs(60),
            Duration::ZERO,
        );
        assert!(matches!(cache.lookup(&key("acme")), Lookup::Fresh(_)));
        assert!(matches!(cache.lookup(&key("globex")), Lookup::Miss));
    }

    #[test]
    fn results_over_the_entry_limit_are_not_kept() {
        let cache = ResultCache::new(1 << 20, 4);
        let entry = cache.store(
            key("a"),
            Bytes::from_static(b"12345"),
            Duration::from_secs(60),
            Duration::ZERO,
        );
        assert_eq!(&entry.body[..], b"12345");
        assert!(matches!(cache.lookup(&key("a")), Lookup::Miss));
    }

    #[tokio::test]
    async fn followers_get_the_leaders_entry() {
        let cache = ResultCache::new(1 << 20, 1 << 10);
        let k = key("a");
        let Join::Lead(lead) = cache.join(&k) else {
            panic!("first is the leader")
        };
        let Join::Follow(wait) = cache.join(&k) else {
            panic!("second follows")
        };
        assert!(cache.try_lead(&k).is_none(), "a refresh does not start beside a flight");
        let entry = cache.store(
            Arc::clone(&k),
            Bytes::from_static(b"x"),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        lead.finish(Outcome::Stored(entry));
        assert!(matches!(wait.outcome().await, Outcome::Stored(e) if &e.body[..] == b"x"));
        assert_eq!(cache.flights_in_progress(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_flight_tells_followers_to_retry_and_frees_the_key() {
        let cache = ResultCache::new(1 << 20, 1 << 10);
        let k = key("a");
        let Join::Lead(lead) = cache.join(&k) else {
            panic!("leader")
        };
        let Join::Follow(wait) = cache.join(&k) else {
            panic!("follower")
        };
        drop(lead);
        assert!(matches!(wait.outcome().await, Outcome::Failed));
        assert!(
            matches!(cache.join(&k), Join::Lead(_)),
            "the next caller leads a new flight"
        );
    }

    #[tokio::test]
    async fn a_finished_flight_is_not_rejoined() {
        let cache = ResultCache::new(1 << 20, 1 << 10);
        let k = key("a");
        let Join::Lead(lead) = cache.join(&k) else {
            panic!("leader")
        };
        lead.finish(Outcome::Failed);
        let Join::Lead(second) = cache.join(&k) else {
            panic!("a new flight")
        };
        // The first flight's late cleanup must not remove the second flight.
        drop(second);
        assert_eq!(cache.flights_in_progress(), 0);
    }
}
