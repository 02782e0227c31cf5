//! Tokens already verified, so a caller sending the same token again skips the signature
//! check: keyed by the token's SHA-256 (the token itself is never kept), bounded in bytes, and
//! each entry lives no longer than the token's `exp` (nor than [`MAX_ENTRY_LIFE`], so a key the
//! issuer withdraws stops being trusted soon after its next fetch).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use moka::sync::Cache;

use super::token::Claims;

/// How many bytes of verified tokens' claims are remembered (weighed by the token's length,
/// which bounds its claims').
const CAPACITY_BYTES: u64 = 16 << 20;

/// The longest an entry is trusted without verifying the token again.
pub const MAX_ENTRY_LIFE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Entry {
    claims: Arc<Claims>,
    /// The token's `exp`, seconds since the epoch.
    exp: f64,
    /// When the entry stops being trusted.
    until: Instant,
    /// Bytes it holds, about.
    weight: u32,
}

struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Entry>> for UntilExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], entry: &Arc<Entry>, created_at: Instant) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(created_at))
    }
}

/// A token's cache key.
#[derive(Debug, Clone, Copy)]
pub struct TokenKey([u8; 32]);

/// The verified-token cache.
pub struct VerifiedTokens {
    entries: Cache<[u8; 32], Arc<Entry>>,
    skew: Duration,
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn key_of(token: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    key
}

impl VerifiedTokens {
    pub fn new(skew: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(CAPACITY_BYTES)
                .weigher(|_key: &[u8; 32], entry: &Arc<Entry>| entry.weight)
                .expire_after(UntilExpiry)
                .build(),
            skew,
        }
    }

    /// The key of a token (its SHA-256: the token itself is never kept).
    pub fn key_of(token: &str) -> TokenKey {
        TokenKey(key_of(token))
    }

    /// The claims of the token if it was verified before and has not expired since.
    pub fn get(&self, key: &TokenKey) -> Option<Arc<Claims>> {
        let key = key.0;
        let entry = self.entries.get(&key)?;
        // Checked here as well as by the entry's lifetime: the cache evicts lazily.
        if entry.exp + self.skew.as_secs_f64() <= now_seconds() || entry.until <= Instant::now() {
            self.entries.invalidate(&key);
            return None;
        }
        Some(Arc::clone(&entry.claims))
    }

    /// Remembers a token that has just been verified; `token_bytes` is its length.
    pub fn insert(&self, key: TokenKey, token_bytes: usize, claims: Arc<Claims>) {
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_f64) else {
            return;
        };
        let left = exp + self.skew.as_secs_f64() - now_seconds();
        if left.is_nan() || left <= 0.0 {
            return;
        }
        let life = Duration::from_secs_f64(left.min(MAX_ENTRY_LIFE.as_secs_f64()));
        self.entries.insert(
            key.0,
            Arc::new(Entry {
                claims,
                exp,
                until: Instant::now() + life,
                // The claims are at most the token's size; the map and Arc cost a little more.
                weight: u32::try_from(token_bytes.saturating_mul(2) + 128).unwrap_or(u32::MAX),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp: f64) -> Arc<Claims> {
        Arc::new(json!({"sub": "a", "exp": exp}).as_object().expect("object").clone())
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let cache = VerifiedTokens::new(Duration::ZERO);
        let key = VerifiedTokens::key_of;
        cache.insert(key("t1"), 2, claims(now_seconds() + 60.0));
        assert_eq!(cache.get(&key("t1")).expect("hit")["sub"], "a");
        assert!(cache.get(&key("t2")).is_none());
        // Already expired (within no skew): never remembered.
        cache.insert(key("t3"), 2, claims(now_seconds() - 1.0));
        assert!(cache.get(&key("t3")).is_none());
    }

    #[test]
    fn an_entry_stops_being_trusted_when_the_token_expires() {
        let cache = VerifiedTokens::new(Duration::ZERO);
        let key = VerifiedTokens::key_of("t");
        cache.insert(key, 1, claims(now_seconds() + 0.05));
        assert!(cache.get(&key).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn a_token_without_exp_is_not_remembered() {
        let cache = VerifiedTokens::new(Duration::ZERO);
        let key = VerifiedTokens::key_of("t");
        cache.insert(
            key,
            1,
            Arc::new(json!({"sub": "a"}).as_object().expect("object").clone()),
        );
        assert!(cache.get(&key).is_none());
    }
}
