//! Request limits as the access policy declares them: per role, a rate (token bucket) and a
//! concurrency bound for each caller (subject) and for each tenant; for the instance, a bound
//! on in-flight ClickHouse queries with a short queue. Plain data; `query::limits` enforces it.
//!
//! ```toml
//! [limits]                       # this instance (APIM's rate-limit-by-key spans instances)
//! max_inflight_queries = 32
//! queue = 64
//! queue_timeout = 2              # seconds a request may wait for a query slot
//!
//! [roles.analyst.limits]
//! caller = { rate = 20, burst = 40, concurrency = 8 }    # per subject; rate per second
//! tenant = { rate = 100, burst = 200, concurrency = 32 } # per tenant
//! ```

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

/// `[limits]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceLimitsToml {
    pub max_inflight_queries: Option<u32>,
    pub queue: Option<u32>,
    pub queue_timeout: Option<f64>,
}

/// `[roles.<name>.limits]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLimitsToml {
    pub caller: Option<KeyLimitsToml>,
    pub tenant: Option<KeyLimitsToml>,
}

/// One key's limits as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsToml {
    /// Requests per second, sustained.
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate (default: one second's worth, at least 1).
    pub burst: Option<u32>,
    /// Requests in progress at once.
    pub concurrency: Option<u32>,
}

/// A token bucket: `burst` requests at once, refilled one every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Requests per second, for the RateLimit-Policy header.
    pub fn per_second(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }
}

/// The limits on one key (a caller or a tenant) of a role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rate: Option<Rate>,
    pub concurrency: Option<NonZeroU32>,
}

/// A role's request limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleLimits {
    pub caller: KeyLimits,
    pub tenant: KeyLimits,
}

/// The instance's bound on ClickHouse queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    pub max_inflight_queries: NonZeroU32,
    /// Requests that may wait for a query slot; more are refused at once.
    pub queue: u32,
    pub queue_timeout: Duration,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        Self {
            max_inflight_queries: NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN),
            queue: 64,
            queue_timeout: Duration::from_secs(2),
        }
    }
}

impl RoleLimits {
    pub fn parse(role: &str, toml: &RoleLimitsToml, problems: &mut Vec<String>) -> Self {
        let mut key = |which: &str, toml: &Option<KeyLimitsToml>| -> KeyLimits {
            let Some(toml) = toml else {
                return KeyLimits::default();
            };
            let rate = match toml.rate {
                None => {
                    if toml.burst.is_some() {
                        problems.push(format!("role {role}: limits.{which}.burst needs limits.{which}.rate"));
                    }
                    None
                }
                Some(rate) if !(rate.is_finite() && (0.001..=1_000_000.0).contains(&rate)) => {
                    problems.push(format!(
                        "role {role}: limits.{which}.rate must be requests per second between 0.001 and 1000000"
                    ));
                    None
                }
                Some(rate) => {
                    // A rate of at least 0.001 rounds up to a default burst of at least 1.
                    match NonZeroU32::new(toml.burst.unwrap_or(rate.ceil() as u32)) {
                        Some(burst) => Some(Rate {
                            interval: Duration::from_secs_f64(1.0 / rate),
                            burst,
                        }),
                        None => {
                            problems.push(format!("role {role}: limits.{which}.burst must be at least 1"));
                            None
                        }
                    }
                }
            };
            let concurrency = match toml.concurrency {
                None => None,
                Some(n) => {
                    let bound = NonZeroU32::new(n);
                    if bound.is_none() {
                        problems.push(format!("role {role}: limits.{which}.concurrency must be at least 1"));
                    }
                    bound
                }
            };
            KeyLimits { rate, concurrency }
        };
        Self {
            caller: key("caller", &toml.caller),
            tenant: key("tenant", &toml.tenant),
        }
    }
}

impl InstanceLimits {
    /// `[limits]`, with `max_inflight_override` (an app setting) taking precedence.
    pub fn parse(toml: &InstanceLimitsToml, max_inflight_override: Option<&str>, problems: &mut Vec<String>) -> Self {
        let defaults = Self::default();
        let max_inflight = match max_inflight_override {
            Some(text) => match text.trim().parse::<u32>().ok().and_then(NonZeroU32::new) {
                Some(n) => Some(n),
                None => {
                    problems.push(format!(
                        "app setting CHGATE_MAX_INFLIGHT_QUERIES must be a whole number of at least 1, not {text:?}"
                    ));
                    None
                }
            },
            None => match toml.max_inflight_queries {
                Some(n) => {
                    let bound = NonZeroU32::new(n);
                    if bound.is_none() {
                        problems.push("limits.max_inflight_queries must be at least 1".into());
                    }
                    bound
                }
                None => None,
            },
        };
        let queue_timeout = match toml.queue_timeout {
            None => defaults.queue_timeout,
            Some(seconds) if seconds.is_finite() && (0.0..=230.0).contains(&seconds) => {
                Duration::from_secs_f64(seconds)
            }
            Some(_) => {
                problems.push("limits.queue_timeout must be 0 to 230 seconds".into());
                defaults.queue_timeout
            }
        };
        Self {
            max_inflight_queries: max_inflight.unwrap_or(defaults.max_inflight_queries),
            queue: toml.queue.unwrap_or(defaults.queue),
            queue_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(text: &str) -> (RoleLimits, Vec<String>) {
        let toml: RoleLimitsToml = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        (RoleLimits::parse("r", &toml, &mut problems), problems)
    }

    #[test]
    fn a_rate_becomes_a_bucket_with_a_default_burst_of_one_second() {
        let (limits, problems) = role("caller = { rate = 4, concurrency = 2 }");
        assert!(problems.is_empty(), "{problems:?}");
        let rate = limits.caller.rate.expect("rate");
        assert_eq!(rate.interval, Duration::from_millis(250));
        assert_eq!(rate.burst.get(), 4);
        assert_eq!(limits.caller.concurrency.map(NonZeroU32::get), Some(2));
        assert_eq!(limits.tenant, KeyLimits::default());
    }

    #[test]
    fn slow_rates_keep_a_burst_of_one() {
        let (limits, _) = role("tenant = { rate = 0.5 }");
        let rate = limits.tenant.rate.expect("rate");
        assert_eq!(rate.burst.get(), 1);
        assert_eq!(rate.interval, Duration::from_secs(2));
    }

    #[test]
    fn nonsense_limits_are_refused_with_the_key_to_fix() {
        let (_, problems) = role("caller = { rate = 0, burst = 3, concurrency = 0 }");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("limits.caller.rate"));
        assert!(problems[1].contains("limits.caller.concurrency"));
        let (_, problems) = role("tenant = { burst = 3 }");
        assert!(problems[0].contains("limits.tenant.burst needs limits.tenant.rate"));
        let (_, problems) = role("caller = { rate = 5, burst = 0 }");
        assert!(problems[0].contains("burst must be at least 1"));
    }

    #[test]
    fn the_app_setting_overrides_the_inflight_bound() {
        let toml: InstanceLimitsToml = toml::from_str("max_inflight_queries = 8\nqueue = 3").expect("toml");
        let mut problems = Vec::new();
        let limits = InstanceLimits::parse(&toml, None, &mut problems);
        assert_eq!((limits.max_inflight_queries.get(), limits.queue), (8, 3));
        let limits = InstanceLimits::parse(&toml, Some("100"), &mut problems);
        assert_eq!(limits.max_inflight_queries.get(), 100);
        assert!(problems.is_empty());
        InstanceLimits::parse(&toml, Some("0"), &mut problems);
        assert!(problems[0].contains("CHGATE_MAX_INFLIGHT_QUERIES"));
    }
}
