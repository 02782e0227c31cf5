//! The sample analytics data loads through the crate's insert API and is deterministic.

use xtask::sample;

use crate::helpers::TestDatabase;

#[tokio::test]
async fn sample_events_load_completely_and_deterministically() {
    let db = TestDatabase::create().await;
    let client = db.client();
    sample::load(&client, "events", 50_000, sample::DEFAULT_SEED)
        .await
        .expect("loading");
    let first: (u64, u64, u64) = client
        .query("SELECT count(), uniqExact(tenant_id), sum(cityHash64(session_id, path, ts))  FROM events")
        .fetch_one()
        .await
        .expect("summary");
    assert_eq!(first.0, 50_000, "every generated row is stored");
    assert_eq!(first.1, sample::TENANTS.len() as u64);

    sample::load(&client, "events", 50_000, sample::DEFAULT_SEED)
        .await
        .expect("loading again");
    let second: (u64, u64, u64) = client
        .query("SELECT count(), uniqExact(tenant_id), sum(cityHash64(session_id, path, ts)) FROM events")
        .fetch_one()
        .await
        .expect("summary");
    assert_eq!(
        first, second,
        "the same seed loads the same rows, replacing the old ones"
    );
}
