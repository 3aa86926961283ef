//! The console's JSON API against the real broker and the real `cxrel console` binary, each test
//! under its own queue prefix: filters, replay (confirmed, stamped, rate-capped), purge and its
//! export guard, auth, CSRF, audit lines, metrics.

use std::time::{Duration, Instant};

use cxrel::amqp::headers;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::broker;
use crate::support;
use crate::support::ConsoleProcess;

const TOKEN: &str = "console-test-token-7f3a";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(c: &ConsoleProcess, path: &str) -> (StatusCode, Value) {
    let r = client().get(c.url(path)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(
    c: &ConsoleProcess,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = client().post(c.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_summary_groups_by_code_and_stage_and_filters_select_the_list() {
    let (topo, conn, channel) = support::seeded("console-filters").await;
    let c = ConsoleProcess::spawn(topo.prefix(), "", &[]);

    let (status, summary) = get(&c, "/api/dead-letters/summary").await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["depth"], 5);
    assert_eq!(summary["by_code"][0]["key"], "server_error");
    assert_eq!(summary["by_code"][0]["count"], 3);
    assert!(
        summary["by_code"][0]["oldest_age_seconds"]
            .as_u64()
            .unwrap()
            >= 10_800
    );
    assert!(
        summary["by_code"][0]["newest_age_seconds"]
            .as_u64()
            .unwrap()
            < 60
    );
    assert_eq!(summary["by_stage"][0]["key"], "apply");
    assert_eq!(summary["by_stage"][0]["count"], 4);
    assert_eq!(summary["can_write"], false);

    let (_, list) = get(&c, "/api/dead-letters?code=server_error").await;
    assert_eq!(ids(&list), vec!["j3", "j2", "j1"], "newest failure first");
    let (_, list) = get(&c, "/api/dead-letters?stage=apply&datastore=ds-b").await;
    assert_eq!(ids(&list), vec!["j3", "j5"]);
    let (_, list) = get(&c, "/api/dead-letters?older_than=30m").await;
    assert_eq!(ids(&list), vec!["j4", "j1"]);
    let (_, list) = get(&c, "/api/dead-letters?newer_than=2m&code=").await;
    assert_eq!(ids(&list), vec!["j3", "j5", "j2"]);
    let (_, list) = get(&c, "/api/dead-letters?per_page=2&page=2").await;
    assert_eq!((list["matching"].as_u64(), ids(&list).len()), (Some(5), 2));
    let (status, bad) = get(&c, "/api/dead-letters?older_than=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    let (status, one) = get(&c, "/api/dead-letters/j4").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["headers"]["x-cxrel-error-code"], "cycle_detected");
    assert_eq!(one["body"]["datastore_id"], "ds-a");
    let (status, none) = get(&c, "/api/dead-letters/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{none}");

    let metrics = client().get(c.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("cxrel_dead_letters{code=\"server_error\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("cxrel_dead_letters_oldest_age_seconds{code=\"cycle_detected\"}"),
        "{text}"
    );

    assert_eq!(
        cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(),
        5,
        "reads remove nothing"
    );

    // Another consumer holding a dead letter: the console says its counts are incomplete.
    use futures::StreamExt;
    let holder = conn.create_channel().await.unwrap();
    holder.basic_qos(1, Default::default()).await.unwrap();
    let mut consumer = holder
        .basic_consume(
            topo.dead().as_str().into(),
            "holder".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let _held = consumer.next().await.unwrap().unwrap();
    let (_, summary) = get(&c, "/api/dead-letters/summary").await;
    assert_eq!(
        (summary["depth"].as_u64(), summary["other_readers"].as_u64()),
        (Some(4), Some(1))
    );
    let page = client()
        .get(c.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("1 other reader(s) are attached"), "{page}");
    holder.close(200, "done".into()).await.unwrap();
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn writes_need_the_token_and_the_same_origin() {
    let (topo, _conn, channel) = support::seeded("console-auth").await;
    let read_only = ConsoleProcess::spawn(topo.prefix(), "", &[]);
    let body = json!({"code": "timeout", "reason": "r"});
    let (status, error) = post(
        &read_only,
        "/api/dead-letters/replay",
        Some(TOKEN),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        error["error"].as_str().unwrap().contains("[console].token"),
        "{error}"
    );
    drop(read_only);

    let c = ConsoleProcess::spawn(topo.prefix(), TOKEN, &[]);
    let (status, _) = post(&c, "/api/dead-letters/replay", None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&c, "/api/dead-letters/purge", Some("wrong"), body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = client()
            .post(c.url("/api/dead-letters/replay"))
            .bearer_auth(TOKEN)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}: {value}");
    }
    assert_eq!(
        cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(),
        5,
        "nothing moved"
    );

    // The page's login: a wrong token is refused, the right one sets a strict HttpOnly cookie
    // that then allows writes from the same origin only.
    let r = client()
        .post(c.url("/login"))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("set-cookie").is_none());
    let r = client()
        .post(c.url("/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let origin = c.base.clone();
    let with_cookie = |origin: &str| {
        client()
            .post(c.url("/api/dead-letters/replay"))
            .header("cookie", session.clone())
            .header("origin", origin.to_owned())
            .json(&json!({"code": "timeout", "dry_run": true}))
    };
    assert_eq!(
        with_cookie(&origin).send().await.unwrap().status(),
        StatusCode::OK
    );
    let cross = with_cookie("http://127.0.0.2:1").send().await.unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);

    // Guesses sent all at once are held to the per-minute budget (two were spent above).
    let guesses = (0..12).map(|i| {
        client()
            .post(c.url("/login"))
            .form(&[("token", format!("guess-{i}"))])
            .send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // 10 a minute, two spent above: 4 refused, or 3 if a slow run let one cell come back.
    assert!(throttled >= 3, "10 attempts a minute: {statuses:?}");

    assert!(
        !c.log_text().contains(TOKEN),
        "the token never reaches the log"
    );
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn replay_publishes_confirmed_stamped_copies_and_removes_only_those() {
    let (topo, _conn, channel) = support::seeded("console-replay").await;
    let c = ConsoleProcess::spawn(topo.prefix(), TOKEN, &[]);
    let path = "/api/dead-letters/replay";

    let (status, dry) = post(
        &c,
        path,
        Some(TOKEN),
        json!({"code": "server_error", "dry_run": true}),
    )
    .await;
    assert_eq!((status, dry["matched"].as_u64()), (StatusCode::OK, Some(3)));
    let (status, error) = post(&c, path, Some(TOKEN), json!({"code": "server_error"})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a reason is required: {error}"
    );
    let (status, error) = post(
        &c,
        path,
        Some(TOKEN),
        json!({"code": "nope", "reason": "r"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error["error"].as_str().unwrap().contains("matched nothing"),
        "{error}"
    );

    let body = json!({"code": "server_error", "datastore": "ds-a", "reason": "store is back"});
    let (status, done) = post(&c, path, Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["replayed"], 2);

    let jobs = broker::take(&channel, &topo.jobs(), 3, Duration::from_secs(5)).await;
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        let t = headers::table(&job.delivery.properties);
        let job_id = headers::get_str(&t, headers::JOB_ID).unwrap();
        assert!(job_id == "j1" || job_id == "j2", "{job_id}");
        assert_eq!(
            headers::get_str(&t, "x-cxrel-replay-reason").as_deref(),
            Some("store is back")
        );
        assert_eq!(headers::get_u64(&t, "x-cxrel-replay-count"), Some(1));
        assert!(headers::get_str(&t, "x-cxrel-replayed-at").is_some());
        assert_eq!(
            headers::get_u64(&t, headers::ATTEMPTS),
            None,
            "attempts reset"
        );
        assert_eq!(
            headers::get_str(&t, headers::ERROR_CODE).as_deref(),
            Some("server_error")
        );
    }
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 3);

    let log = c.log_text();
    let audit = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "cxrel::audit" && l["action"] == "replay" && l["outcome"] == "ok")
        .unwrap_or_else(|| panic!("an audit line for the replay: {log}"));
    assert_eq!(audit["count"], 2);
    assert_eq!(audit["reason"], "store is back");
    assert_eq!(audit["filter"], "code=server_error datastore=ds-a");
    assert!(
        audit["actor"]
            .as_str()
            .unwrap()
            .starts_with("token@127.0.0.1")
    );
    assert!(audit["at"].as_str().is_some());

    // "Replay selected": only the listed ids move, whatever else matches.
    let body = json!({"ids": ["j5", "j4"], "reason": "picked by hand"});
    let (status, done) = post(&c, path, Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let mut moved: Vec<String> = serde_json::from_value(done["ids"].clone()).unwrap();
    moved.sort();
    assert_eq!(moved, vec!["j4", "j5"]);
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 1);

    // The jobs queue is gone: the publish is refused, and the dead copy stays, ready at once.
    channel
        .queue_delete(topo.jobs().as_str().into(), Default::default())
        .await
        .unwrap();
    let (status, error) = post(&c, path, Some(TOKEN), json!({"reason": "no target"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("topology declare"),
        "{error}"
    );
    assert_eq!(
        cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(),
        1,
        "nothing lost"
    );
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn replay_honours_its_rate_cap_and_the_console_ceiling() {
    let (topo, _conn, channel) = support::seeded("console-rate").await;
    let c = ConsoleProcess::spawn(
        topo.prefix(),
        TOKEN,
        &[("CXREL__CONSOLE__REPLAY_RATE", "4")],
    );
    // Three messages at 4/s at most (1000/s asked, clamped): the third goes at 0.5 s.
    let started = Instant::now();
    let body = json!({"code": "server_error", "reason": "paced", "rate": 1000});
    let (status, done) = post(&c, "/api/dead-letters/replay", Some(TOKEN), body).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["replayed"], 3);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // `limit` stops after that many.
    let body = json!({"reason": "one more", "limit": 1});
    let (_, done) = post(&c, "/api/dead-letters/replay", Some(TOKEN), body).await;
    assert_eq!(done["replayed"], 1);
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 1);
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn purge_needs_a_complete_export_first_unless_told_otherwise() {
    let (topo, _conn, channel) = support::seeded("console-purge").await;
    let c = ConsoleProcess::spawn(topo.prefix(), TOKEN, &[]);
    let path = "/api/dead-letters/purge";

    let (status, refused) = post(&c, path, Some(TOKEN), json!({"code": "server_error"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("export first"),
        "{refused}"
    );
    // In the API's terms, not the CLI's flags.
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains(r#""without_export": true"#),
        "{refused}"
    );

    // A reader without the token may export, but that does not count for the guard: else anyone
    // who can reach the console could unlock a purge with an export sent nowhere.
    let anonymous = client()
        .get(c.url("/api/dead-letters/export?code=server_error"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    let (status, refused) = post(&c, path, Some(TOKEN), json!({"code": "server_error"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");

    let export = client()
        .get(c.url("/api/dead-letters/export?code=server_error"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let lines: Vec<Value> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    // That export covers those three, not others, though it counted more than would go.
    let (status, refused) = post(&c, path, Some(TOKEN), json!({"code": "timeout"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("1 of the 1"),
        "{refused}"
    );
    // Its preview says so too: of what would go, the export holds none.
    let (_, dry) = post(
        &c,
        path,
        Some(TOKEN),
        json!({"code": "timeout", "dry_run": true}),
    )
    .await;
    assert_eq!(
        (dry["matched"].as_u64(), dry["exported"].as_u64()),
        (Some(1), Some(0)),
        "{dry}"
    );

    let (status, dry) = post(
        &c,
        path,
        Some(TOKEN),
        json!({"code": "server_error", "dry_run": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (dry["matched"].as_u64(), dry["exported"].as_u64()),
        (Some(3), Some(3))
    );
    let (status, done) = post(&c, path, Some(TOKEN), json!({"code": "server_error"})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["purged"], 3);
    assert_eq!(cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(), 2);

    // The export was used up by that purge: the rest needs another export, or the override.
    let (status, _) = post(&c, path, Some(TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, done) = post(&c, path, Some(TOKEN), json!({"without_export": true})).await;
    assert_eq!((status, done["purged"].as_u64()), (StatusCode::OK, Some(2)));
    let (status, none) = post(&c, path, Some(TOKEN), json!({"without_export": true})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an empty queue says so: {none}"
    );
    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn a_misspelt_key_or_a_bad_value_is_a_json_400_and_nothing_is_touched() {
    let (topo, _conn, channel) = support::seeded("console-strict").await;
    let c = ConsoleProcess::spawn(topo.prefix(), TOKEN, &[]);
    let depth = cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap();
    let purge = json!({"jobid": "m0", "without_export": true});
    let (status, error) = post(&c, "/api/dead-letters/purge", Some(TOKEN), purge).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("jobid") && message.contains("job_id"),
        "{error}"
    );
    let replay = json!({"cod": "timeout", "reason": "typo", "dry_run": true});
    let (status, error) = post(&c, "/api/dead-letters/replay", Some(TOKEN), replay).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    // A limit of 0 is refused as the CLI refuses `--limit 0`, not "matched nothing".
    let replay = json!({"code": "timeout", "reason": "none", "limit": 0});
    let (status, error) = post(&c, "/api/dead-letters/replay", Some(TOKEN), replay).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("limit"),
        "{error}"
    );
    let (status, error) = post(
        &c,
        "/api/dead-letters/purge",
        Some(TOKEN),
        json!({"code": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error["error"].is_string(), "{error}");
    for path in [
        "/api/dead-letters?jobid=m0",
        "/api/dead-letters?per_page=many",
        "/api/dead-letters/export?stag=apply",
    ] {
        let (status, error) = get(&c, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {error}");
        assert!(error["error"].is_string(), "{path}: {error}");
    }
    let r = client()
        .post(c.url("/api/dead-letters/purge"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let error: Value = r.json().await.expect("a JSON error");
    assert!(error["error"].is_string(), "{error}");
    // Unknown routes, wrong methods and oversized bodies answer JSON errors too.
    let (status, error) = get(&c, "/api/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert!(error["error"].is_string(), "{error}");
    let (status, error) = get(&c, "/api/dead-letters/purge").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{error}");
    assert!(error["error"].is_string(), "{error}");
    let huge = json!({"reason": "x".repeat(200_000), "dry_run": true});
    let (status, error) = post(&c, "/api/dead-letters/replay", Some(TOKEN), huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert!(error["error"].is_string(), "{error}");
    assert_eq!(
        cxrel::dlq::depth(&channel, &topo.dead()).await.unwrap(),
        depth
    );
    broker::teardown(&channel, &topo).await;
}
