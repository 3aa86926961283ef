//! The emulator's record API (SPEC §3) over real HTTP: schema, pagination, ETags, PATCH with
//! If-Match, field checks, locks and cascade delete.

use serde_json::{Value, json};

use crate::helpers::emulator;
use crate::helpers::emulator::{EmulatorProcess, client, fetch_json, named_record};

#[tokio::test]
async fn the_schema_is_served_as_created() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([])).await;
    let token = emu.token().await;
    let schema = fetch_json(
        client()
            .get(emu.url("/api/v2/datastores/ds/schema"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(schema["fields"], emulator::test_schema());
}

#[tokio::test]
async fn pagination_walks_every_record_once_across_pages() {
    let emu = EmulatorProcess::spawn();
    let records: Vec<Value> = (0..25)
        .map(|i| named_record(&format!("r{i:02}"), "n"))
        .collect();
    emu.create_test_datastore("ds", Value::Array(records)).await;
    let token = emu.token().await;
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut page_token: Option<String> = None;
    loop {
        let mut request = client()
            .get(emu.records_url("ds"))
            .bearer_auth(&token)
            .query(&[("page_size", "10")]);
        if let Some(t) = &page_token {
            request = request.query(&[("page_token", t)]);
        }
        let page = fetch_json(request).await;
        pages += 1;
        for r in page["records"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_owned());
            assert_eq!(r["_version"], 1);
        }
        match page["next_page_token"].as_str() {
            Some(t) => page_token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("r{i:02}")).collect();
    assert_eq!(seen, expected);

    let bad = client()
        .get(emu.records_url("ds"))
        .bearer_auth(&token)
        .query(&[("page_token", "%%%")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn patch_merges_fields_bumps_the_version_and_honours_if_match() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("p", "parent")]))
        .await;
    let token = emu.token().await;
    let http = client();

    let got = http
        .get(emu.record_url("ds", "p"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["etag"], "\"1\"");

    let link = json!({"ids": ["c1", "missing-record"], "cascade_action": "update"});
    let patched = http
        .patch(emu.record_url("ds", "p"))
        .bearer_auth(&token)
        .header("If-Match", "\"1\"")
        .json(&json!({"fields": {"parent_child_link": link}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(patched.headers()["etag"], "\"2\"");
    let body: Value = patched.json().await.unwrap();
    assert_eq!(body["_version"], 2);
    assert_eq!(body["fields"]["name"], "parent", "other fields are kept");
    assert_eq!(
        body["fields"]["parent_child_link"], link,
        "ids of missing records are stored as given"
    );
    assert_eq!(
        body["_links"]["self"]["href"],
        "/api/v2/datastores/ds/records/p"
    );

    // A stale version is refused and changes nothing; a bare number is accepted as If-Match.
    let stale = http
        .patch(emu.record_url("ds", "p"))
        .bearer_auth(&token)
        .header("If-Match", "\"1\"")
        .json(&json!({"fields": {"name": "late"}}))
        .send()
        .await
        .unwrap();
    emulator::assert_error(stale, 412, "version_mismatch").await;
    let bare = http
        .patch(emu.record_url("ds", "p"))
        .bearer_auth(&token)
        .header("If-Match", "2")
        .json(&json!({"fields": {"name": "renamed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 200);
    let (_, now) = emu.get_record("ds", "p").await;
    assert_eq!(now["fields"]["name"], "renamed");
    assert_eq!(now["_version"], 3);
}

#[tokio::test]
async fn unknown_fields_and_bad_relationship_shapes_are_400() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("p", "parent")]))
        .await;
    let token = emu.token().await;
    let cases = [
        (json!({"fields": {"colour": "red"}}), "unknown_field"),
        (
            json!({"fields": {"parent_child_link": ["c1"]}}),
            "invalid_field_value",
        ),
        (
            json!({"fields": {"parent_child_link": {"ids": ["c1"], "cascade_action": "boom"}}}),
            "invalid_field_value",
        ),
        (json!({"fields": {"name": 42}}), "invalid_field_value"),
        (json!({"field": {}}), "invalid_request"),
    ];
    for (body, code) in cases {
        let response = client()
            .patch(emu.record_url("ds", "p"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        emulator::assert_error(response, 400, code).await;
    }
    let (_, record) = emu.get_record("ds", "p").await;
    assert_eq!(record["_version"], 1, "refused patches change nothing");
}

#[tokio::test]
async fn missing_data_stores_and_records_are_404_with_their_codes() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([])).await;
    let token = emu.token().await;
    let http = client();
    let no_ds = fetch_json(http.get(emu.records_url("nope")).bearer_auth(&token)).await;
    assert_eq!(no_ds["error"], "datastore_not_found");
    let response = http
        .patch(emu.record_url("ds", "ghost"))
        .bearer_auth(&token)
        .json(&json!({"fields": {}}))
        .send()
        .await
        .unwrap();
    emulator::assert_error(response, 404, "record_not_found").await;
}

#[tokio::test]
async fn a_locked_record_refuses_patch_and_delete_with_409_until_unlocked() {
    let emu = EmulatorProcess::spawn();
    emu.create_test_datastore("ds", json!([named_record("p", "parent")]))
        .await;
    let token = emu.token().await;
    let http = client();
    let lock = emu
        .control_post("/_emulator/records/ds/p/lock", &json!({}))
        .await;
    assert_eq!(lock.status(), 200);
    let patch = || {
        http.patch(emu.record_url("ds", "p"))
            .bearer_auth(&token)
            .json(&json!({"fields": {"name": "x"}}))
    };
    let refused = patch().send().await.unwrap();
    emulator::assert_error(refused, 409, "record_locked").await;
    let delete = http
        .delete(emu.record_url("ds", "p"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 409);
    emu.control_post("/_emulator/records/ds/p/unlock", &json!({}))
        .await;
    assert_eq!(patch().send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn delete_cascades_through_delete_links_only_and_survives_cycles() {
    let emu = EmulatorProcess::spawn();
    let rel = |ids: &[&str], action: &str| json!({"ids": ids, "cascade_action": action});
    let records = json!([
        {"id": "root", "fields": {"parent_child_link": rel(&["a", "b", "ghost"], "delete")}},
        {"id": "a", "fields": {"owner_link": rel(&["a1"], "delete")}},
        {"id": "a1", "fields": {"parent_child_link": rel(&["root"], "delete")}},
        {"id": "b", "fields": {"parent_child_link": rel(&["kept"], "update")}},
        {"id": "kept", "fields": {"name": "survives"}},
        {"id": "other", "fields": {"name": "unrelated"}}
    ]);
    emu.create_test_datastore("ds", records).await;
    let token = emu.token().await;
    let response = client()
        .delete(emu.record_url("ds", "root"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["x-emulator-deleted"], "4");
    for gone in ["root", "a", "a1", "b"] {
        assert_eq!(emu.get_record("ds", gone).await.0, 404, "{gone}");
    }
    for kept in ["kept", "other"] {
        assert_eq!(emu.get_record("ds", kept).await.0, 200, "{kept}");
    }
}

#[tokio::test]
async fn the_shipped_seed_loads_and_is_listed() {
    let emu = EmulatorProcess::spawn_seeded();
    let list = fetch_json(client().get(emu.url("/_emulator/datastores"))).await;
    let accounts = &list["datastores"][0];
    assert_eq!(accounts["id"], "accounts");
    assert!(accounts["records"].as_u64().unwrap() >= 300);
    // A full reset restores the seed after a delete.
    let token = emu.token().await;
    let page = fetch_json(
        client()
            .get(emu.records_url("accounts"))
            .bearer_auth(&token),
    )
    .await;
    let first = page["records"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(emu.delete_record("accounts", &first).await, 204);
    assert_eq!(
        emu.control_post("/_emulator/reset", &json!({}))
            .await
            .status(),
        204
    );
    assert_eq!(emu.get_record("accounts", &first).await.0, 200);
}

#[tokio::test]
async fn a_locked_record_in_a_cascade_or_a_stale_if_match_stops_the_whole_delete() {
    let emu = EmulatorProcess::spawn();
    let records = json!([
        {"id": "root", "fields": {"parent_child_link": {"ids": ["kid"], "cascade_action": "delete"}}},
        {"id": "kid", "fields": {"name": "k"}}
    ]);
    emu.create_test_datastore("ds", records).await;
    let token = emu.token().await;
    let http = client();
    emu.lock_record("ds", "kid").await;
    let refused = http
        .delete(emu.record_url("ds", "root"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    assert_eq!(
        emu.get_record("ds", "root").await.0,
        200,
        "nothing was deleted"
    );
    emu.unlock_record("ds", "kid").await;
    let stale = http
        .delete(emu.record_url("ds", "root"))
        .bearer_auth(&token)
        .header("If-Match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let deleted = http
        .delete(emu.record_url("ds", "root"))
        .bearer_auth(&token)
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(emu.get_record("ds", "kid").await.0, 404);
}
