//! The worker's graph cache (`pipeline::datastores::DataStores`) across consume sessions: a graph
//! whose load began before the session ended is never served after it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use cxrel::pipeline::datastores::DataStores;

use crate::helpers::emulator::EmulatorProcess;
use crate::support::{client_for, create_store, ids};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_whose_load_outlived_its_session_is_not_served_to_the_next_one() {
    let emu = EmulatorProcess::spawn();
    let ids = ids(2);
    create_store(&emu, "cache-epoch", &ids).await;
    let cache = Arc::new(DataStores::new(
        client_for(&emu, |_| {}),
        Duration::from_secs(300),
    ));
    // A job of the old session starts loading; its session ends (a new one forgets every graph)
    // before the load has even created the data store's slot.
    emu.set_faults(json!({"latency_ms": 800})).await;
    let old_session = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get("cache-epoch").await.expect("load") }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cache.forget_all().await;
    let stale = old_session.await.unwrap();
    emu.set_faults(json!({"latency_ms": 0})).await;
    // Meanwhile another replica links the two records.
    let writer = client_for(&emu, |_| {});
    let before = writer.get_record("cache-epoch", &ids[0]).await.unwrap();
    let mut fields = serde_json::Map::new();
    fields.insert(
        "parent_child_link".into(),
        json!({"ids": [ids[1]], "cascade_action": "update"}),
    );
    writer
        .patch_record("cache-epoch", &ids[0], &fields, Some(before.version))
        .await
        .unwrap();
    // The new session's first job reads the store again and sees the link.
    let fresh = cache.get("cache-epoch").await.expect("load");
    assert!(
        !Arc::ptr_eq(&stale, &fresh),
        "the old session's graph was served"
    );
    let children = fresh.with_graph(|g| {
        g.children(&ids[0], "parent_child_link")
            .map(|(kids, _)| kids.iter().map(|k| k.to_string()).collect::<Vec<_>>())
    });
    assert_eq!(children, Some(vec![ids[1].clone()]));
}

/// During an outage, jobs waiting on one data store's graph load share its failure: one load's
/// attempts, not one load per waiting job made one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_on_a_failing_graph_load_share_its_error() {
    let emu = EmulatorProcess::spawn();
    create_store(&emu, "cache-down", &ids(2)).await;
    let client = client_for(&emu, |s| {
        s.retry.max_attempts = 3;
        s.retry.min_backoff = Duration::from_millis(5);
        s.retry.max_backoff = Duration::from_millis(20);
    });
    // The schema is cached; then every request fails.
    client.schema("cache-down").await.unwrap();
    emu.set_faults(json!({"error_ratio": 1.0})).await;
    let cache = Arc::new(DataStores::new(client, Duration::from_secs(300)));
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let cache = cache.clone();
        jobs.spawn(async move { cache.get("cache-down").await.map(|_| ()) });
    }
    while let Some(done) = jobs.join_next().await {
        let err = done.unwrap().unwrap_err();
        assert_eq!(err.code(), "server_error", "{err}");
    }
    let stats = emu.stats().await;
    let pages = crate::support::route_count(&stats, "GET", "/records", None);
    // The first load's 3 attempts; a job that asked after it failed may start one more.
    assert!(
        pages <= 6,
        "{pages} record-list requests for 20 waiting jobs"
    );
}
