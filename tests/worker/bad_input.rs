//! Input that must not hurt (SPEC §10 "no silent loss"): a real worker process, the emulator over
//! HTTP and the local RabbitMQ, fed the corpus of `bad_inputs/`. Every bad body ends in
//! `{prefix}.dead` with its code, nothing is PATCHed because of one, valid jobs wrapped in odd AMQP
//! properties and headers are applied, and the worker is still alive and working afterwards.

mod corpus;

use std::collections::HashMap;
use std::time::Duration;

use corpus::Ids;
use cxrel::amqp::{Publisher, Topology, headers};
use lapin::BasicProperties;
use serde_json::Value;

use crate::helpers::broker;
use crate::helpers::emulator::{EmulatorProcess, named_record};
use crate::helpers::workers::{WorkerProcess, job, op, rid, stored_ids, test_config};

const FIELD: &str = "parent_child_link";

struct Bench {
    emu: EmulatorProcess,
    topology: Topology,
    channel: lapin::Channel,
    publisher: Publisher,
    worker: WorkerProcess,
    _conn: lapin::Connection,
}

/// An emulator with data store `ds` (records 0..100 of set "r"), a declared topology under a
/// prefix of its own, and a ready worker.
async fn bench(test: &str) -> Bench {
    let emu = EmulatorProcess::spawn();
    let records: Vec<Value> = (0..100).map(|n| named_record(&rid("r", n), "x")).collect();
    emu.create_test_datastore("ds", Value::Array(records)).await;
    let prefix = broker::unique_prefix(test);
    let topology = broker::topology(&prefix, &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    cxrel::amqp::topology::declare(&channel, &topology)
        .await
        .unwrap();
    let publisher = Publisher::open(&conn).await.unwrap();
    let worker = WorkerProcess::spawn(&test_config(&emu.base, &prefix));
    worker.wait_ready(Duration::from_secs(30)).await;
    Bench {
        emu,
        topology,
        channel,
        publisher,
        worker,
        _conn: conn,
    }
}

impl Bench {
    async fn publish(&self, message_id: &str, body: &[u8], properties: BasicProperties) {
        let properties = properties.with_message_id(message_id.into());
        self.publisher
            .to_queue(&self.topology.jobs(), body, properties)
            .await
            .unwrap_or_else(|e| panic!("publish {message_id}: {e}"));
    }

    /// Takes `n` dead letters: message id → what its headers say.
    async fn dead_letters(&self, n: usize) -> HashMap<String, DeadLetter> {
        let dead = broker::take(
            &self.channel,
            &self.topology.dead(),
            n,
            Duration::from_secs(120),
        )
        .await;
        dead.iter()
            .map(|m| {
                let p = &m.delivery.properties;
                let t = headers::table(p);
                let id = p.message_id().as_ref().map(|s| s.to_string());
                let letter = DeadLetter {
                    code: headers::get_str(&t, headers::ERROR_CODE).unwrap_or_default(),
                    attempts: headers::get_u64(&t, headers::ATTEMPTS),
                    dropped: headers::get_str(&t, headers::DROPPED),
                    first_failed_at: headers::get_str(&t, headers::FIRST_FAILED_AT),
                };
                (id.unwrap_or_default(), letter)
            })
            .collect()
    }

    /// The worker is still running, ready, and applies a fresh job.
    async fn assert_alive_and_working(&mut self, parent: usize, child: usize) {
        assert!(
            self.worker.child.try_wait().unwrap().is_none(),
            "the worker process exited"
        );
        self.worker.wait_ready(Duration::from_secs(10)).await;
        let (p, c) = (rid("r", parent), rid("r", child));
        let body = job("after-the-corpus", "ds", true, vec![op(&p, FIELD, &[&c])]);
        self.publish(
            "after-the-corpus",
            body.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await;
        assert!(
            self.until_stored(&p, &c, Duration::from_secs(30)).await,
            "a valid job after the corpus is applied"
        );
    }

    /// Waits until `parent`'s field holds `child`; false after `timeout`.
    async fn until_stored(&self, parent: &str, child: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let (_, record) = self.emu.get_record("ds", parent).await;
            if stored_ids(&record, FIELD).iter().any(|id| id == child) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// The headers of one dead letter that the tests read.
struct DeadLetter {
    code: String,
    attempts: Option<u64>,
    dropped: Option<String>,
    first_failed_at: Option<String>,
}

fn ids() -> Ids {
    Ids {
        parent: rid("r", 0),
        child: rid("r", 1),
        ghost: rid("ghost", 0),
    }
}

#[tokio::test]
async fn every_bad_body_is_dead_lettered_with_its_code_and_nothing_is_written() {
    let mut b = bench("badbodies").await;
    let corpus = ids().bad_bodies();
    assert!(corpus.len() >= 60, "corpus of {} bodies", corpus.len());
    for (i, case) in corpus.iter().enumerate() {
        b.publish(&format!("bad-{i}"), &case.body, BasicProperties::default())
            .await;
    }
    let dead = b.dead_letters(corpus.len()).await;
    for (i, case) in corpus.iter().enumerate() {
        let got = dead.get(&format!("bad-{i}")).map(|d| d.code.as_str());
        assert_eq!(got, Some(case.code), "case {i} {:?}", case.name);
    }
    assert_eq!(dead.len(), corpus.len(), "one dead letter per body");
    assert_eq!(b.emu.stats().await["patch_count"], 0, "nothing written");
    b.assert_alive_and_working(90, 91).await;
    broker::teardown(&b.channel, &b.topology).await;
}

#[tokio::test]
async fn valid_jobs_with_odd_properties_and_headers_are_applied() {
    let mut b = bench("oddheaders").await;
    let cases = corpus::odd_metadata();
    assert!(cases.len() >= 10, "{} header cases", cases.len());
    let pair = |i: usize| (rid("r", 10 + i), rid("r", 50 + i));
    for (i, case) in cases.iter().enumerate() {
        let (p, c) = pair(i);
        let body = job(&format!("odd-{i}"), "ds", true, vec![op(&p, FIELD, &[&c])]);
        let properties = case.properties.clone();
        b.publish(&format!("odd-{i}"), body.to_string().as_bytes(), properties)
            .await;
    }
    for (i, case) in cases.iter().enumerate() {
        let (p, c) = pair(i);
        assert!(
            b.until_stored(&p, &c, Duration::from_secs(60)).await,
            "case {i} {:?} applied",
            case.name
        );
    }
    broker::assert_no_dead_letters(&b.channel, &b.topology).await;
    b.assert_alive_and_working(92, 93).await;
    broker::teardown(&b.channel, &b.topology).await;
}

#[tokio::test]
async fn bad_bodies_with_odd_headers_still_end_coded_in_the_dead_queue() {
    let mut b = bench("badodd").await;
    let cases = corpus::odd_metadata_for_bad_bodies();
    for (i, case) in cases.iter().enumerate() {
        b.publish(
            &format!("badodd-{i}"),
            b"{not json",
            case.properties.clone(),
        )
        .await;
    }
    // Past the TTL one case was published with (a dead letter must outlive it).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dead = b.dead_letters(cases.len()).await;
    for (i, case) in cases.iter().enumerate() {
        let letter = dead
            .get(&format!("badodd-{i}"))
            .unwrap_or_else(|| panic!("case {i} {:?} dead-lettered", case.name));
        assert_eq!(letter.code, "invalid_job", "case {:?}", case.name);
        assert!(
            letter.attempts.is_some_and(|a| a >= 1),
            "case {:?}",
            case.name
        );
        assert!(
            letter
                .first_failed_at
                .as_deref()
                .is_some_and(|at| at != corpus::FORGED_FIRST_FAILED_AT),
            "case {:?}: first failed at {:?}",
            case.name,
            letter.first_failed_at
        );
        if case.name.contains("frame limit") {
            assert_eq!(letter.dropped.as_deref(), Some("x-junk"), "{:?}", case.name);
        }
    }
    assert_eq!(b.emu.stats().await["patch_count"], 0, "nothing written");
    b.assert_alive_and_working(94, 95).await;
    broker::teardown(&b.channel, &b.topology).await;
}
