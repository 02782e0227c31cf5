//! Sample web-analytics data: the `events` schema and a deterministic generator.
//!
//! The same seed always yields the same rows, so figures taken on the sample data can be
//! compared between runs and machines. Tenants differ in size by two orders of magnitude and
//! pages, countries and referrers follow skewed (Zipf-like) popularity, as real traffic does.

use anyhow::Context;
use clickhouse::Client;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Geometric, LogNormal, Zipf};
use serde::Serialize;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

/// The seed used when none is given.
pub const DEFAULT_SEED: u64 = 20_261_201;

/// First instant of the sample window (inclusive); the window is [`WINDOW_DAYS`] long.
pub const WINDOW_START: OffsetDateTime = datetime!(2026-09-01 00:00:00 UTC);

/// Length of the sample window in days (September to November 2026).
pub const WINDOW_DAYS: i64 = 91;

/// Tenants and their share of the traffic.
pub const TENANTS: &[(&str, u32)] = &[
    ("acme", 450),
    ("globex", 250),
    ("initech", 150),
    ("umbrella", 100),
    ("hooli", 40),
    ("piedpiper", 10),
];

const COUNTRIES: &[(&str, u32)] = &[
    ("US", 300),
    ("DE", 100),
    ("GB", 90),
    ("IN", 80),
    ("FR", 60),
    ("BR", 50),
    ("JP", 50),
    ("CA", 40),
    ("NL", 30),
    ("AU", 30),
    ("ES", 25),
    ("IT", 25),
    ("SE", 15),
    ("PL", 15),
    ("MX", 15),
    ("KR", 12),
    ("CH", 8),
    ("NG", 5),
];

const DEVICES: &[(&str, u32)] = &[("desktop", 55), ("mobile", 40), ("tablet", 5)];

const REFERRERS: &[(&str, u32)] = &[
    ("", 400),
    ("https://www.google.com/", 300),
    ("https://www.bing.com/", 40),
    ("https://duckduckgo.com/", 30),
    ("https://news.ycombinator.com/", 40),
    ("https://www.reddit.com/", 40),
    ("https://twitter.com/", 30),
    ("https://www.linkedin.com/", 30),
    ("https://github.com/", 50),
    ("https://newsletter.example.com/", 40),
];

/// Relative traffic per hour of the day (UTC): low at night, peaks mid-morning and afternoon.
const HOURLY_WEIGHT: [u32; 24] = [
    20, 14, 10, 8, 8, 10, 18, 35, 60, 80, 90, 92, 85, 88, 95, 96, 90, 80, 70, 60, 50, 42, 34, 26,
];

const SECTIONS: &[&str] = &["docs", "blog", "product", "integrations", "changelog"];
const PAGES_PER_SECTION: u64 = 60;

/// The DDL of the events table, for a table name (which may be database-qualified).
pub fn events_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table}
(
    ts          DateTime64(3, 'UTC'),
    tenant_id   LowCardinality(String),
    user_id     UInt64,
    session_id  UUID,
    path        String,
    referrer    LowCardinality(String),
    country     LowCardinality(String),
    device      LowCardinality(String),
    duration_ms UInt32,
    revenue     Decimal(18, 2)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, ts, path)
SETTINGS non_replicated_deduplication_window = 1000"
    )
}

/// One page view, as stored in the events table.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct Event {
    #[serde(with = "clickhouse::serde::time::datetime64::millis")]
    pub ts: OffsetDateTime,
    pub tenant_id: &'static str,
    pub user_id: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    pub path: String,
    pub referrer: &'static str,
    pub country: &'static str,
    pub device: &'static str,
    pub duration_ms: u32,
    /// Decimal(18, 2) as its raw value: hundredths.
    #[serde(rename = "revenue")]
    pub revenue_cents: i64,
}

/// An endless, deterministic stream of events, generated a session at a time.
#[derive(Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
    tenants: WeightedIndex<u32>,
    countries: WeightedIndex<u32>,
    devices: WeightedIndex<u32>,
    referrers: WeightedIndex<u32>,
    hours: WeightedIndex<u32>,
    page_rank: Zipf<f64>,
    session_length: Geometric,
    dwell_ms: LogNormal<f64>,
    order_value: LogNormal<f64>,
    pending: Vec<Event>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        let weights = |table: &[(&str, u32)]| {
            WeightedIndex::new(table.iter().map(|(_, w)| *w)).expect("static weights are valid")
        };
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            tenants: weights(TENANTS),
            countries: weights(COUNTRIES),
            devices: weights(DEVICES),
            referrers: weights(REFERRERS),
            hours: WeightedIndex::new(HOURLY_WEIGHT).expect("static weights are valid"),
            page_rank: Zipf::new(SECTIONS.len() as f64 * PAGES_PER_SECTION as f64 + 6.0, 1.1)
                .expect("static parameters are valid"),
            session_length: Geometric::new(0.3).expect("static parameters are valid"),
            dwell_ms: LogNormal::new(9.6, 1.1).expect("static parameters are valid"),
            order_value: LogNormal::new(3.9, 0.8).expect("static parameters are valid"),
            pending: Vec::new(),
        }
    }

    fn session(&mut self) {
        let rng = &mut self.rng;
        let (tenant_id, share) = TENANTS[self.tenants.sample(rng)];
        // Users recur: each tenant's audience is a pool in proportion to its traffic.
        let user_id = rng.random_range(1..=u64::from(share) * 400);
        let session_id = Uuid::from_u128(rng.random());
        let country = COUNTRIES[self.countries.sample(rng)].0;
        let device = DEVICES[self.devices.sample(rng)].0;
        let referrer = REFERRERS[self.referrers.sample(rng)].0;
        let day = rng.random_range(0..WINDOW_DAYS);
        let weekday = (WINDOW_START + Duration::days(day)).weekday().number_days_from_monday();
        // Weekends see about half the traffic: re-draw most weekend sessions onto weekdays.
        let day = if weekday >= 5 && rng.random_bool(0.5) {
            (day + 2) % WINDOW_DAYS
        } else {
            day
        };
        let hour = self.hours.sample(rng) as i64;
        let mut ts = WINDOW_START
            + Duration::days(day)
            + Duration::hours(hour)
            + Duration::milliseconds(rng.random_range(0..3_600_000));
        let views = 1 + self.session_length.sample(rng).min(30);
        for view in 0..views {
            let path = page_path(self.page_rank.sample(rng) as u64);
            let duration_ms = (self.dwell_ms.sample(rng) as u64).clamp(200, 1_800_000) as u32;
            let buys = path == "/checkout" && rng.random_bool(0.25);
            let revenue_cents = if buys {
                (self.order_value.sample(rng) * 100.0) as i64
            } else {
                0
            };
            self.pending.push(Event {
                ts,
                tenant_id,
                user_id,
                session_id,
                path,
                referrer: if view == 0 { referrer } else { "" },
                country,
                device,
                duration_ms,
                revenue_cents,
            });
            ts += Duration::milliseconds(i64::from(duration_ms) + rng.random_range(100..5_000));
        }
        // Emitted in order by `next`, which pops from the back.
        self.pending.reverse();
    }
}

/// The page at a popularity rank (1 is the most visited).
fn page_path(rank: u64) -> String {
    match rank {
        1 => "/".to_owned(),
        2 => "/pricing".to_owned(),
        3 => "/docs".to_owned(),
        4 => "/signup".to_owned(),
        5 => "/checkout".to_owned(),
        6 => "/login".to_owned(),
        n => {
            let n = n - 7;
            let section = SECTIONS[(n % SECTIONS.len() as u64) as usize];
            format!("/{section}/{}", n / SECTIONS.len() as u64 + 1)
        }
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.pending.is_empty() {
            self.session();
        }
        self.pending.pop()
    }
}

/// Creates `table` if needed, empties it, and loads `rows` events made from `seed` through
/// the crate's insert API.
pub async fn load(client: &Client, table: &str, rows: u64, seed: u64) -> anyhow::Result<()> {
    client
        .query(&events_ddl(table))
        .execute()
        .await
        .with_context(|| format!("creating {table}"))?;
    client
        .query(&format!("TRUNCATE TABLE {table}"))
        .execute()
        .await
        .with_context(|| format!("emptying {table}"))?;
    let mut insert = client.insert::<Event>(table).await?;
    for event in Generator::new(seed).take(rows as usize) {
        insert.write(&event).await.context("sending events")?;
    }
    insert.end().await.context("finishing the insert")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_rows() {
        let a: Vec<Event> = Generator::new(7).take(1_000).collect();
        let b: Vec<Event> = Generator::new(7).take(1_000).collect();
        let c: Vec<Event> = Generator::new(8).take(1_000).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_event_falls_inside_the_window() {
        let end = WINDOW_START + Duration::days(WINDOW_DAYS + 1);
        for event in Generator::new(DEFAULT_SEED).take(20_000) {
            assert!(event.ts >= WINDOW_START && event.ts < end, "{:?}", event.ts);
        }
    }

    #[test]
    fn tenants_are_skewed_and_all_present() {
        let mut counts = std::collections::HashMap::new();
        for event in Generator::new(DEFAULT_SEED).take(100_000) {
            *counts.entry(event.tenant_id).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), TENANTS.len());
        assert!(counts["acme"] > 20 * counts["piedpiper"], "{counts:?}");
    }

    #[test]
    fn revenue_appears_only_on_checkout() {
        let events: Vec<Event> = Generator::new(DEFAULT_SEED).take(100_000).collect();
        assert!(events.iter().any(|e| e.revenue_cents > 0));
        assert!(
            events
                .iter()
                .filter(|e| e.revenue_cents > 0)
                .all(|e| e.path == "/checkout")
        );
    }
}
