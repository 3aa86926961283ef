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
