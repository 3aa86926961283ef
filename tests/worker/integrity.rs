//! The relationship rules under concurrency and change (issue 10, SPEC §10): conflicting jobs
//! published back to back to 1 or 3 real worker processes (the active one killed mid-run), records
//! and a relationship field created behind a running worker, a deletion confirmed before it is
//! reported, and a cached violation the store no longer has. The final store is checked against
//! every rule of SPEC §2.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cxrel::amqp::headers;
use serde_json::{Value, json};

use crate::helpers::emulator::{EmulatorProcess, named_record};
use crate::helpers::workers::{
    InProcessWorker, QUICK_BACKOFF, WorkerProcess, job, publish_jobs, rid, test_config,
};
use crate::helpers::{broker, emulator, workers};

const LINK: &str = "parent_child_link";
const OWNER: &str = "owner_link";
const DS: &str = "graph";
const LINK_DEPTH: usize = 3;

/// Two relationship fields: `parent_child_link` (acyclic, max_depth 3) and `owner_link` (acyclic,
/// unique_parent, max_depth 5).
fn schema(extra: &[Value]) -> Value {
    let mut fields = vec![
        json!({"name": "name", "type": "string"}),
        json!({"name": LINK, "type": "relationship",
               "constraints": {"max_depth": LINK_DEPTH, "acyclic": true}}),
        json!({"name": OWNER, "type": "relationship",
               "constraints": {"max_depth": 5, "unique_parent": true, "acyclic": true}}),
    ];
    fields.extend_from_slice(extra);
    Value::Array(fields)
}

fn link(parent: &str, field: &str, children: &[&str], cascade: &str) -> Value {
    json!({"parent_id": parent, "relationship_field": field, "child_ids": children,
           "cascade_action": cascade})
}

/// Two jobs that cannot both apply, and the code the loser must be rejected with.
struct Conflict {
    jobs: Vec<String>,
    code: &'static str,
}

/// The workload: 200 cycle pairs, 40 depth chains of 4 links, 40 second-parent pairs and 40
/// ownership pairs, interleaved so conflicting jobs are published back to back.
fn workload() -> (Vec<Value>, Vec<Conflict>, usize) {
    let mut jobs = Vec::new();
    let mut conflicts = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        rid("g", n)
    };
    let mut add = |code: &'static str, ops: Vec<Value>, jobs: &mut Vec<Value>| {
        let ids: Vec<String> = (0..ops.len())
            .map(|k| format!("{code}-{}-{k}", jobs.len()))
            .collect();
        for (id, op) in ids.iter().zip(ops) {
            jobs.push(job(id, DS, true, vec![op]));
        }
        conflicts.push(Conflict { jobs: ids, code });
    };
    for _ in 0..200 {
        let (a, b) = (next(), next());
        let ops = vec![link(&a, LINK, &[&b], "none"), link(&b, LINK, &[&a], "none")];
        add("cycle_detected", ops, &mut jobs);
    }
    for _ in 0..40 {
        let chain: Vec<String> = (0..5).map(|_| next()).collect();
        let ops = chain
            .windows(2)
            .map(|w| link(&w[0], LINK, &[&w[1]], "none"))
            .collect();
        add("max_depth_exceeded", ops, &mut jobs);
    }
    for _ in 0..40 {
        let (p, q, c) = (next(), next(), next());
        let ops = vec![
            link(&p, OWNER, &[&c], "none"),
            link(&q, OWNER, &[&c], "none"),
        ];
        add("parent_conflict", ops, &mut jobs);
    }
    for _ in 0..40 {
        let (p, q, c) = (next(), next(), next());
        let ops = vec![
            link(&p, LINK, &[&c], "delete"),
            link(&q, OWNER, &[&c], "none"),
        ];
        add("ownership_conflict", ops, &mut jobs);
    }
    (jobs, conflicts, n)
}

struct Setup {
    emu: EmulatorProcess,
    q: workers::Queues,
}

async fn setup(test: &str, records: usize, extra_fields: &[Value]) -> Setup {
    let emu = EmulatorProcess::spawn();
    let list: Vec<Value> = (1..=records)
        .map(|n| named_record(&rid("g", n), &format!("g{n}")))
        .collect();
    emu.create_datastore(DS, schema(extra_fields), Value::Array(list))
        .await;
    let q = workers::queues(test, &[200, 400, 800]).await;
    Setup { emu, q }
}

fn completed(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e["type"] == "cxrel.job.completed")
        .filter_map(|e| e["data"]["job_id"].as_str().map(str::to_owned))
        .collect()
}

/// Job id → error code of every dead letter (a job dead-lettered twice, e.g. redelivered after a
/// kill, counts once).
async fn dead_letters(s: &Setup, at_least: usize) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let taken = broker::take(
        &s.q.channel,
        &s.q.topology.dead(),
        at_least + 50,
        Duration::from_secs(5),
    )
    .await;
    for message in taken {
        let table = headers::table(&message.delivery.properties);
        let id = headers::get_str(&table, headers::JOB_ID).unwrap_or_default();
        let code = headers::get_str(&table, headers::ERROR_CODE).unwrap_or_default();
        out.insert(id, code);
    }
    out
}

/// Each field's children per parent, read from the store's record list.
async fn stored_graph(
    emu: &EmulatorProcess,
) -> HashMap<String, HashMap<String, (Vec<String>, String)>> {
    let mut fields: HashMap<String, HashMap<String, (Vec<String>, String)>> = HashMap::new();
    for record in workers::pairs::list_records(emu, DS).await {
        let id = record["id"].as_str().unwrap().to_owned();
        for field in [LINK, OWNER] {
            let ids = workers::stored_ids(&record, field);
            let cascade = record["fields"][field]["cascade_action"]
                .as_str()
                .unwrap_or("none")
                .to_owned();
            fields
                .entry(field.to_owned())
                .or_default()
                .insert(id.clone(), (ids, cascade));
        }
    }
    fields
}

/// Every rule of SPEC §2 on the stored graph: no cycle across both (acyclic) fields, depth within
/// each field's max, one parent in the unique_parent field, a child held under cascade delete has
/// no other parent.
fn assert_rules_hold(graph: &HashMap<String, HashMap<String, (Vec<String>, String)>>) {
    let mut union: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut parents: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (field, records) in graph {
        for (parent, (children, cascade)) in records {
            for c in children {
                union.entry(parent).or_default().push(c);
                parents.entry(c).or_default().insert(parent);
                if field == OWNER {
                    let owners = records
                        .values()
                        .filter(|(kids, _)| kids.contains(c))
                        .count();
                    assert!(owners <= 1, "{c} has {owners} parents in {OWNER}");
                }
                if cascade == "delete" {
                    let all = parents_of(graph, c);
                    assert_eq!(
                        all, 1,
                        "{c} is held under cascade delete by {parent} but has {all} parents"
                    );
                }
            }
        }
    }
    for start in union.keys() {
        assert!(
            !reaches(&union, start, start, &mut HashSet::new()),
            "cycle through {start}"
        );
    }
    for (field, max) in [(LINK, LINK_DEPTH), (OWNER, 5)] {
        let edges: HashMap<&str, Vec<&str>> = graph[field]
            .iter()
            .map(|(p, (kids, _))| (p.as_str(), kids.iter().map(String::as_str).collect()))
            .collect();
        for start in edges.keys() {
            let depth = longest(&edges, start);
            assert!(depth <= max, "{field}: depth {depth} from {start} > {max}");
        }
    }
}

fn parents_of(
    graph: &HashMap<String, HashMap<String, (Vec<String>, String)>>,
    child: &str,
) -> usize {
    graph
        .values()
        .flat_map(|records| records.iter())
        .filter(|(_, (kids, _))| kids.iter().any(|k| k == child))
        .map(|(p, _)| p.as_str())
        .collect::<HashSet<_>>()
        .len()
}

fn reaches<'a>(
    edges: &HashMap<&'a str, Vec<&'a str>>,
    from: &'a str,
    target: &str,
    seen: &mut HashSet<&'a str>,
) -> bool {
    for &next in edges.get(from).map(Vec::as_slice).unwrap_or_default() {
        if next == target {
            return true;
        }
        if seen.insert(next) && reaches(edges, next, target, seen) {
            return true;
        }
    }
    false
}

fn longest(edges: &HashMap<&str, Vec<&str>>, from: &str) -> usize {
    edges
        .get(from)
        .map(|kids| {
            kids.iter()
                .map(|k| 1 + longest(edges, k))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Publishes the workload to `workers`, killing the active one (SIGKILL) a third of the way when
/// there are several; then checks that every job settled, each conflict has exactly one loser
/// with its code, and the store breaks no rule.
async fn run_workload(test: &str, worker_count: usize) {
    let (jobs, conflicts, records) = workload();
    let mut s = setup(test, records, &[]).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix());
    let mut procs: Vec<WorkerProcess> = (0..worker_count)
        .map(|_| WorkerProcess::spawn(&config))
        .collect();
    for w in &procs {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    publish_jobs(&s.q.publisher, &s.q.topology, &jobs).await;
    let all: HashSet<String> = jobs
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    if worker_count > 1 {
        let third = all.len() / 3;
        assert!(
            s.q.tap
                .until(Duration::from_secs(120), |e| completed(e).len() >= third)
                .await
        );
        let mut active = None;
        for (i, w) in procs.iter().enumerate() {
            if w.metrics().await.contains("cxrel_jobs_total{") {
                active = Some(i);
            }
        }
        let active = active.expect("one worker consumed");
        procs[active].signal("KILL");
        procs.remove(active);
    }
    let done =
        s.q.tap
            .until(Duration::from_secs(300), |e| completed(e).is_superset(&all))
            .await;
    let missing = all.difference(&completed(&s.q.tap.events)).count();
    assert!(done, "{missing} of {} jobs never completed", all.len());

    let losers = conflicts
        .iter()
        .map(|c| c.jobs.len() - if c.code == "max_depth_exceeded" { 3 } else { 1 })
        .sum();
    let dead = dead_letters(&s, losers).await;
    for conflict in &conflicts {
        let rejected: Vec<&String> = conflict
            .jobs
            .iter()
            .filter(|j| dead.contains_key(*j))
            .collect();
        assert_eq!(
            rejected.len(),
            1,
            "exactly one loser among {:?} (dead: {rejected:?})",
            conflict.jobs
        );
        assert_eq!(dead[rejected[0]], conflict.code, "{}", rejected[0]);
    }
    assert_eq!(dead.len(), losers, "no other job was dead-lettered");
    assert_rules_hold(&stored_graph(&s.emu).await);
    drop(procs);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_jobs_back_to_back_on_one_worker_leave_a_store_that_breaks_no_rule() {
    run_workload("integrity-1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_jobs_on_three_workers_with_the_active_one_killed_break_no_rule() {
    run_workload("integrity-3", 3).await;
}

/// Loads records through the control API, as another writer of the store would create them.
/// The active replica is stopped (SIGTERM) while its jobs wait on a slow store, and the reverse
/// edges are published at once: the standby may take the queue only when the draining replica
/// no longer writes, so each reverse edge sees its forward edge and is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_draining_after_sigterm_keeps_the_queue_until_its_writes_landed() {
    const PAIRS: usize = 10;
    let mut s = setup("integrity-drain", 2 * PAIRS, &[]).await;
    let config = test_config(&s.emu.base, s.q.topology.prefix());
    let mut procs = vec![WorkerProcess::spawn(&config)];
    procs[0].wait_ready(Duration::from_secs(30)).await;
    // Started second: the standby of the single active consumer.
    procs.push(WorkerProcess::spawn(&config));
    procs[1].wait_ready(Duration::from_secs(30)).await;
    s.emu.set_faults(json!({"latency_ms": 800})).await;
    // Pair i links g(2i+1) -> g(2i+2) forward, the other way in reverse.
    let edges = |name: &str, reversed: bool| -> Vec<Value> {
        (0..PAIRS)
            .map(|i| {
                let (mut a, mut b) = (rid("g", 2 * i + 1), rid("g", 2 * i + 2));
                if reversed {
                    std::mem::swap(&mut a, &mut b);
                }
                let op = link(&a, LINK, &[&b], "none");
                job(&format!("{name}-{i}"), DS, true, vec![op])
            })
            .collect()
    };
    let (forward, reverse) = (edges("fwd", false), edges("rev", true));
    publish_jobs(&s.q.publisher, &s.q.topology, &forward).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs[0].signal("TERM");
    publish_jobs(&s.q.publisher, &s.q.topology, &reverse).await;
    assert_eq!(procs[0].wait_exit(Duration::from_secs(60)), Some(0));
    let all: HashSet<String> = forward
        .iter()
        .chain(&reverse)
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    let done =
        s.q.tap
            .until(Duration::from_secs(120), |e| completed(e).is_superset(&all))
            .await;
    assert!(done, "not every job completed");
    let dead = dead_letters(&s, PAIRS).await;
    for i in 0..PAIRS {
        let id = format!("rev-{i}");
        assert_eq!(
            dead.get(&id).map(String::as_str),
            Some("cycle_detected"),
            "{id}"
        );
    }
    assert_eq!(dead.len(), PAIRS, "only the reverse edges lose: {dead:?}");
    assert_rules_hold(&stored_graph(&s.emu).await);
    drop(procs);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

async fn create_records(emu: &EmulatorProcess, ids: &[String]) {
    let records: Vec<Value> = ids.iter().map(|id| named_record(id, "late")).collect();
    emu.add_records(DS, Value::Array(records)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_a_field_created_behind_a_running_worker_are_linked_at_once() {
    let mut s = setup("integrity-late", 4, &[]).await;
    let worker = InProcessWorker::start(&test_config(&s.emu.base, s.q.topology.prefix())).await;
    // Warm-up: the worker reads the graph (4 records).
    let warm = job(
        "warm",
        DS,
        true,
        vec![link(&rid("g", 1), LINK, &[&rid("g", 2)], "none")],
    );
    publish_jobs(&s.q.publisher, &s.q.topology, &[warm]).await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed(e).contains("warm"))
            .await
    );

    // 40 records created behind the worker, then 20 jobs linking them.
    let late: Vec<String> = (0..40).map(|n| rid("late", n)).collect();
    create_records(&s.emu, &late).await;
    let jobs: Vec<Value> = (0..20)
        .map(|i| {
            job(
                &format!("late-{i}"),
                DS,
                true,
                vec![link(&late[2 * i], LINK, &[&late[2 * i + 1]], "none")],
            )
        })
        .collect();
    publish_jobs(&s.q.publisher, &s.q.topology, &jobs).await;

    // A relationship field added behind the worker, then 5 jobs using it.
    let team =
        json!({"name": "team_link", "type": "relationship", "constraints": {"acyclic": true}});
    let response = emulator::client()
        .put(s.emu.url(&format!("/_emulator/datastores/{DS}/schema")))
        .json(&json!({"fields": schema(&[team])}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let team_jobs: Vec<Value> = (0..5)
        .map(|i| {
            job(
                &format!("team-{i}"),
                DS,
                true,
                vec![link(&late[i], "team_link", &[&late[39 - i]], "none")],
            )
        })
        .collect();
    publish_jobs(&s.q.publisher, &s.q.topology, &team_jobs).await;

    let ids: HashSet<String> = jobs
        .iter()
        .chain(&team_jobs)
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        s.q.tap
            .until(Duration::from_secs(60), |e| completed(e).is_superset(&ids))
            .await
    );
    broker::assert_no_dead_letters(&s.q.channel, &s.q.topology).await;
    for i in 0..20 {
        let (_, record) = s.emu.get_record(DS, &late[2 * i]).await;
        assert_eq!(
            workers::stored_ids(&record, LINK),
            vec![late[2 * i + 1].clone()]
        );
    }
    let (_, record) = s.emu.get_record(DS, &late[0]).await;
    assert_eq!(
        workers::stored_ids(&record, "team_link"),
        vec![late[39].clone()]
    );
    worker.stop().await;
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_reported_only_after_the_store_confirmed_it_and_a_stale_violation_is_not() {
    let mut s = setup("integrity-confirm", 6, &[]).await;
    let worker = WorkerProcess::spawn(&test_config(&s.emu.base, s.q.topology.prefix()));
    let (a, b, c, d) = (rid("g", 1), rid("g", 2), rid("g", 3), rid("g", 4));
    // The worker's graph gets a → b.
    let warm = job("warm", DS, true, vec![link(&a, LINK, &[&b], "none")]);
    publish_jobs(&s.q.publisher, &s.q.topology, &[warm]).await;
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed(e).contains("warm"))
            .await
    );

    // Behind the worker: a's link removed, d deleted.
    let reset = json!({"records": [{"id": a, "fields": {"name": "a", LINK: {"ids": [], "cascade_action": "none"}}, "_version": 50}]});
    let response = s
        .emu
        .control_post(&format!("/_emulator/datastores/{DS}/records"), &reset)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(s.emu.delete_record(DS, &d).await, 204);
    let before = s.emu.stats().await;

    // b → a is a cycle only in the cached graph; d → c writes a record that is gone.
    let jobs = vec![
        job("stale-cycle", DS, true, vec![link(&b, LINK, &[&a], "none")]),
        job("gone", DS, true, vec![link(&d, LINK, &[&c], "none")]),
    ];
    publish_jobs(&s.q.publisher, &s.q.topology, &jobs).await;
    let ids: HashSet<String> = ["stale-cycle".to_owned(), "gone".to_owned()].into();
    assert!(
        s.q.tap
            .until(Duration::from_secs(30), |e| completed(e).is_superset(&ids))
            .await
    );

    let dead = dead_letters(&s, 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead.get("gone").map(String::as_str),
        Some("record_not_found")
    );
    let (_, record) = s.emu.get_record(DS, &b).await;
    assert_eq!(
        workers::stored_ids(&record, LINK),
        vec![a.clone()],
        "the stale cycle was re-read and applied"
    );
    // The cycle was confirmed by reading a back; d's 404 came from the store itself.
    let after = s.emu.stats().await;
    let gets = |stats: &Value| -> u64 {
        stats["requests"]["GET /api/v2/datastores/{ds}/records/{id}"]
            .as_object()
            .map(|by_status| by_status.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    assert!(
        gets(&after) >= gets(&before) + 2,
        "confirming GETs: {before} → {after}"
    );
    let metrics = worker.metrics().await;
    assert!(metrics.contains("cxrel_confirm_reads_total"), "{metrics}");
    drop(worker);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// A move in one atomic job (C from X to Y in the unique_parent field) whose second parent, X, is
/// locked throughout. The active replica writes Y and is killed (SIGKILL) before X's 409 reaches
/// it, so it never restores Y; the standby takes the queue, gets the job again and fails it too.
/// Y holding C is then the killed replica's half-write, not a value from before the job: nothing
/// of the failed atomic job may remain, so C is under X only and the store breaks no rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_job_half_written_by_a_killed_replica_is_undone_by_the_one_that_takes_over() {
    // Added to every record-API request: Y's PATCH lands this long before X's 409 is answered.
    const LATENCY_MS: u64 = 1500;
    const PATCH: &str = "PATCH /api/v2/datastores/{ds}/records/{id}";
    let (mut s, [x, y, c]) = move_setup("integrity-takeover", "move").await;
    // One PATCH at a time in job order (Y, then X), and a short in-client retry budget.
    let config = test_config(&s.emu.base, s.q.topology.prefix())
        .parallel_patches(1)
        .store_retry(2, QUICK_BACKOFF, Duration::from_secs(3));
    let mut procs = vec![WorkerProcess::spawn(&config)];
    procs[0].wait_ready(Duration::from_secs(30)).await;
    // Started second: the standby of the single active consumer.
    procs.push(WorkerProcess::spawn(&config));
    procs[1].wait_ready(Duration::from_secs(30)).await;

    s.emu.lock_record(DS, &x).await;
    s.emu.set_faults(json!({"latency_ms": LATENCY_MS})).await;
    let ops = move_ops(&x, &y, &c);
    publish_jobs(&s.q.publisher, &s.q.topology, &[job("move", DS, true, ops)]).await;

    // X is locked, so the first PATCH to land is Y's: the active replica is killed at once.
    first_patch_landed(&s.emu, "Y").await;
    procs[0].signal("KILL");
    let stats = s.emu.stats().await;
    assert_eq!(stats["patch_count"], 1, "Y written once: {stats}");
    assert_eq!(
        stats["requests"][PATCH]["409"].as_u64().unwrap_or(0),
        0,
        "killed before X's 409 was answered, so before it could restore Y: {stats}"
    );
    s.emu.set_faults(json!({"latency_ms": 0})).await;

    let ended =
        s.q.tap
            .until(Duration::from_secs(90), |e| completed(e).contains("move"))
            .await;
    assert!(ended, "the job never ended");
    let standby = procs[1].metrics().await;
    assert!(
        standby.contains("cxrel_jobs_total{"),
        "the standby handled the job: {standby}"
    );
    assert!(
        standby.contains("cxrel_intent_restores_total{outcome=\"undone\"} 1"),
        "the standby put Y back from the intent the killed replica left: {standby}"
    );
    let (_, y_record) = s.emu.get_record(DS, &y).await;
    assert!(
        workers::stored_ids(&y_record, OWNER).is_empty(),
        "nothing of the failed atomic job stays written: {y_record}"
    );
    let (_, x_record) = s.emu.get_record(DS, &x).await;
    assert_eq!(
        workers::stored_ids(&x_record, OWNER),
        vec![c.clone()],
        "{x_record}"
    );
    assert_rules_hold(&stored_graph(&s.emu).await);
    let dead = dead_letters(&s, 1).await;
    assert!(
        dead.contains_key("move"),
        "the job is dead-lettered: {dead:?}"
    );
    assert_eq!(
        s.q.tap.count("cxrel.relationship.applied"),
        0,
        "no operation of the failed job is reported applied"
    );
    drop(procs);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// The active replica half-writes a move (X emptied; Y locked), then keeps trying to put X back
/// while X is locked too; the broker then closes its connection, the process living on. The
/// standby restores from the intent and completes the job once the locks go. The old process
/// must start no write after losing its connection: its compensation, had it gone on, would find
/// the job's values on X (now the new owner's) and put C back under X as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_connection_never_undoes_what_the_new_owner_wrote() {
    let (mut s, [x, y, c]) = move_setup("integrity-zombie", "zombie").await;
    // A restore budget ([retry].max_elapsed) that outlasts the locks.
    let config = |name: &str| {
        test_config(&s.emu.base, s.q.topology.prefix())
            .instance(name)
            .parallel_patches(1)
            .store_retry(3, QUICK_BACKOFF, Duration::from_secs(30))
    };
    let old = WorkerProcess::spawn(&config("zombie-old"));
    old.wait_ready(Duration::from_secs(30)).await;
    let new = WorkerProcess::spawn(&config("zombie-new"));
    new.wait_ready(Duration::from_secs(30)).await;

    s.emu.lock_record(DS, &y).await;
    s.emu.set_faults(json!({"latency_ms": 1000})).await;
    let ops = vec![
        json!({"parent_id": x, "relationship_field": OWNER, "child_ids": [], "mode": "replace"}),
        json!({"parent_id": y, "relationship_field": OWNER, "child_ids": [c], "mode": "replace"}),
    ];
    publish_jobs(
        &s.q.publisher,
        &s.q.topology,
        &[job("zombie", DS, true, ops)],
    )
    .await;
    first_patch_landed(&s.emu, "X").await;
    // X is written: its restore, after Y's 409, now keeps meeting a lock too.
    s.emu.lock_record(DS, &x).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let closed = tokio::task::spawn_blocking(|| {
        workers::close_broker_connections("cxrel worker zombie-old")
    })
    .await
    .unwrap();
    assert_eq!(closed, 1, "the old owner's connection was found and closed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.emu.set_faults(json!({"latency_ms": 0})).await;
    s.emu.unlock_record(DS, &y).await;
    s.emu.unlock_record(DS, &x).await;

    let applied = |events: &[Value]| completed_applying(events, "zombie", 2);
    assert!(
        s.q.tap.until(Duration::from_secs(90), applied).await,
        "the new owner completed the job"
    );
    // The old owner's restore tried every 2 s at most: give it time to strike, had it gone on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, x_record) = s.emu.get_record(DS, &x).await;
    let (_, y_record) = s.emu.get_record(DS, &y).await;
    assert!(
        workers::stored_ids(&x_record, OWNER).is_empty(),
        "X stays as the completed job left it: {x_record}"
    );
    assert_eq!(workers::stored_ids(&y_record, OWNER), vec![c.clone()]);
    assert_rules_hold(&stored_graph(&s.emu).await);
    drop((old, new));
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// Records X, Y and C, with C under X in the `unique_parent` field, for a move of C to Y; and the
/// test's queues.
async fn move_setup(test: &str, ids: &str) -> (Setup, [String; 3]) {
    let (x, y, c) = (rid(ids, 1), rid(ids, 2), rid(ids, 3));
    let emu = EmulatorProcess::spawn();
    let mut owner = named_record(&x, "x");
    owner["fields"][OWNER] = json!({"ids": [c], "cascade_action": "none"});
    let records = vec![owner, named_record(&y, "y"), named_record(&c, "c")];
    emu.create_datastore(DS, schema(&[]), Value::Array(records))
        .await;
    let q = workers::queues(test, &[200, 400, 800]).await;
    (Setup { emu, q }, [x, y, c])
}

/// The replica that takes over finds a half-written move whose parent stays locked past its
/// restore budget several times over. Its jobs wait, held, until the parent can be put back: a
/// session ended and begun again for each try would hand them back each time, and the broker's
/// delivery limit (11) would dead-letter them unhandled within the 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_a_leftover_that_cannot_be_undone_yet_without_being_dead_lettered() {
    let (mut s, [x, y, c]) = move_setup("integrity-blocked", "blocked").await;
    let config = test_config(&s.emu.base, s.q.topology.prefix())
        .parallel_patches(1)
        .store_retry(2, QUICK_BACKOFF, Duration::from_secs(1));
    let mut procs = vec![WorkerProcess::spawn(&config)];
    procs[0].wait_ready(Duration::from_secs(30)).await;
    procs.push(WorkerProcess::spawn(&config));
    procs[1].wait_ready(Duration::from_secs(30)).await;

    s.emu.lock_record(DS, &x).await;
    s.emu.set_faults(json!({"latency_ms": 1500})).await;
    let ops = move_ops(&x, &y, &c);
    publish_jobs(
        &s.q.publisher,
        &s.q.topology,
        &[job("blocked", DS, true, ops)],
    )
    .await;
    first_patch_landed(&s.emu, "Y").await;
    // Y is written: locked now, the standby cannot put it back for a while.
    s.emu.lock_record(DS, &y).await;
    procs[0].signal("KILL");
    s.emu.set_faults(json!({"latency_ms": 0})).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    s.emu.unlock_record(DS, &y).await;
    s.emu.unlock_record(DS, &x).await;

    let applied = |events: &[Value]| completed_applying(events, "blocked", 2);
    assert!(
        s.q.tap.until(Duration::from_secs(90), applied).await,
        "the job waited and then completed"
    );
    let metrics = procs[1].metrics().await;
    assert!(
        metrics.contains("cxrel_intent_restores_total{outcome=\"blocked\"}"),
        "the restore was blocked for a while: {metrics}"
    );
    broker::assert_no_dead_letters(&s.q.channel, &s.q.topology).await;
    assert_rules_hold(&stored_graph(&s.emu).await);
    drop(procs);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// A dead replica's intent with no job left to deliver (its job was dead-lettered by the broker,
/// say): activation, which undoes leftovers, begins only with a delivery, so the worker sends a
/// probe through the jobs queue and the active replica (itself here) undoes the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_intent_with_no_job_behind_it_is_undone_after_a_probe() {
    use cxrel::pipeline::intent::{Intent, IntentPatch};
    let (s, [x, y, c]) = move_setup("integrity-probe", "probe").await;
    // The half-written move: Y holds C as well as X.
    let value = |ids: &[&str]| json!({"ids": ids, "cascade_action": "none"});
    let body = json!({"fields": {OWNER: value(&[&c])}});
    let token = s.emu.token().await;
    let written = emulator::client()
        .patch(s.emu.record_url(DS, &y))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let field = |ids: &[&str]| serde_json::Map::from_iter([(OWNER.to_owned(), value(ids))]);
    let intent = Intent {
        datastore_id: DS.to_owned(),
        job_id: "left".to_owned(),
        patches: vec![
            IntentPatch {
                parent: y.clone(),
                fields: field(&[&c]),
                previous: field(&[]),
            },
            IntentPatch {
                parent: x.clone(),
                fields: field(&[]),
                previous: field(&[&c]),
            },
        ],
    };
    let properties = lapin::BasicProperties::default().with_message_id("left-intent".into());
    s.q.publisher
        .to_queue(
            &s.q.topology.intents(),
            &serde_json::to_vec(&intent).unwrap(),
            properties,
        )
        .await
        .unwrap();
    let worker = WorkerProcess::spawn(&test_config(&s.emu.base, s.q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    // Seen on two looks 30 s apart, then probed.
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let (_, y_record) = s.emu.get_record(DS, &y).await;
        if workers::stored_ids(&y_record, OWNER).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Y was never put back: {y_record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, x_record) = s.emu.get_record(DS, &x).await;
    assert_eq!(workers::stored_ids(&x_record, OWNER), vec![c.clone()]);
    assert_rules_hold(&stored_graph(&s.emu).await);
    broker::assert_no_dead_letters(&s.q.channel, &s.q.topology).await;
    drop(worker);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// A non-atomic move of C from X to Y accepts the add to Y only because the remove from X comes
/// first. With X locked, only Y's PATCH lands: C under both parents would break `unique_parent`,
/// so the worker undoes Y's write, reports it rolled back, and the retry completes the move once
/// X is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_atomic_move_whose_release_did_not_land_takes_back_its_claim() {
    let (mut s, [x, y, c]) = move_setup("integrity-partial", "partial").await;
    let config = test_config(&s.emu.base, s.q.topology.prefix()).store_retry(
        2,
        QUICK_BACKOFF,
        Duration::from_secs(1),
    );
    let worker = WorkerProcess::spawn(&config);
    worker.wait_ready(Duration::from_secs(30)).await;
    s.emu.lock_record(DS, &x).await;
    let ops = vec![
        json!({"parent_id": x, "relationship_field": OWNER, "child_ids": [c], "mode": "remove"}),
        json!({"parent_id": y, "relationship_field": OWNER, "child_ids": [c], "mode": "add"}),
    ];
    publish_jobs(
        &s.q.publisher,
        &s.q.topology,
        &[job("partial", DS, false, ops)],
    )
    .await;
    let undone = |events: &[Value]| {
        events.iter().any(|e| {
            e["type"] == "cxrel.relationship.rolled_back"
                && e["data"]["code"] == "depends_on_unwritten_operation"
                && e["data"]["parent_id"] == y.as_str()
        })
    };
    assert!(
        s.q.tap.until(Duration::from_secs(60), undone).await,
        "Y's write, which relied on X's, was undone: {:?}",
        s.q.tap.events
    );
    let graph = stored_graph(&s.emu).await;
    assert_rules_hold(&graph);
    assert_eq!(
        graph[OWNER][&x].0,
        vec![c.clone()],
        "C is back under X only"
    );
    assert!(graph[OWNER][&y].0.is_empty());

    s.emu.unlock_record(DS, &x).await;
    let applied = |events: &[Value]| completed_applying(events, "partial", 2);
    assert!(
        s.q.tap.until(Duration::from_secs(60), applied).await,
        "the retry moved C once X was free"
    );
    let graph = stored_graph(&s.emu).await;
    assert_rules_hold(&graph);
    assert_eq!(graph[OWNER][&y].0, vec![c]);
    drop(worker);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// Upstream publishes, for each of 20 parents, "set [X]", "add Y", "remove Y" back to back. Jobs
/// on one parent run in the order the queue delivered them, so every parent ends with [X] (a
/// remove checked before the add it follows would find nothing to remove and leave Y behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_one_parent_apply_in_the_order_they_were_published() {
    let mut s = setup("integrity-order", 22, &[]).await;
    let worker = WorkerProcess::spawn(&test_config(&s.emu.base, s.q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    let (x, y) = (rid("g", 21), rid("g", 22));
    let mut jobs = Vec::new();
    for n in 1..=20 {
        let p = rid("g", n);
        for (kind, child, mode) in [
            ("set", &x, "replace"),
            ("add", &y, "add"),
            ("rm", &y, "remove"),
        ] {
            let op = json!({"parent_id": p, "relationship_field": LINK, "child_ids": [child], "mode": mode});
            jobs.push(job(&format!("{kind}-{n}"), DS, true, vec![op]));
        }
    }
    publish_jobs(&s.q.publisher, &s.q.topology, &jobs).await;
    let all = |events: &[Value]| completed(events).len() == jobs.len();
    assert!(
        s.q.tap.until(Duration::from_secs(60), all).await,
        "every job completed"
    );
    let graph = stored_graph(&s.emu).await;
    assert_rules_hold(&graph);
    let out_of_order: Vec<&String> = (1..=20)
        .map(|n| rid("g", n))
        .filter(|p| graph[LINK][p].0 != vec![x.clone()])
        .map(|p| graph[LINK].get_key_value(&p).unwrap().0)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "parents not ending with [X] alone: {out_of_order:?}"
    );
    drop(worker);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// A non-atomic job whose one parent keeps changing under it (every PATCH of X answered 412)
/// runs out of conflict rounds and is retried; the operation it wrote and kept on Y is reported
/// applied by that attempt, not unprocessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_out_of_conflict_rounds_reports_the_write_it_kept_as_applied() {
    let (mut s, [x, y, c]) = move_setup("integrity-rounds", "rounds").await;
    let worker = WorkerProcess::spawn(&test_config(&s.emu.base, s.q.topology.prefix()));
    worker.wait_ready(Duration::from_secs(30)).await;
    s.emu.set_faults(json!({"conflict_records": [x]})).await;
    let ops = vec![
        json!({"parent_id": y, "relationship_field": LINK, "child_ids": [c], "mode": "add"}),
        json!({"parent_id": x, "relationship_field": LINK, "child_ids": [y], "mode": "add"}),
    ];
    publish_jobs(
        &s.q.publisher,
        &s.q.topology,
        &[job("rounds", DS, false, ops)],
    )
    .await;
    let kept = |events: &[Value]| {
        events.iter().any(|e| {
            e["type"] == "cxrel.relationship.applied"
                && e["data"]["job_id"] == "rounds"
                && e["data"]["parent_id"] == y.as_str()
        })
    };
    assert!(
        s.q.tap.until(Duration::from_secs(60), kept).await,
        "the attempt that ran out of rounds reported Y's write: {:?}",
        s.q.tap.events
    );
    assert!(
        !completed_applying(&s.q.tap.events, "rounds", 2),
        "X still refuses every write"
    );
    s.emu.set_faults(json!({"conflict_records": []})).await;
    let applied = |events: &[Value]| completed_applying(events, "rounds", 2);
    assert!(
        s.q.tap.until(Duration::from_secs(60), applied).await,
        "the retry wrote X once it stopped changing"
    );
    let graph = stored_graph(&s.emu).await;
    assert_rules_hold(&graph);
    assert_eq!(graph[LINK][&x].0, vec![y.clone()]);
    assert_eq!(graph[LINK][&y].0, vec![c]);
    drop(worker);
    broker::teardown(&s.q.channel, &s.q.topology).await;
}

/// Waits (up to a minute) until the store answered its first PATCH, `parent`'s.
async fn first_patch_landed(emu: &EmulatorProcess, parent: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while emu.stats().await["patch_count"] == 0 {
        assert!(
            Instant::now() < deadline,
            "the active replica never wrote {parent}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True once `job_id` completed with `applied` operations applied.
fn completed_applying(events: &[Value], job_id: &str, applied: u64) -> bool {
    events.iter().any(|e| {
        e["type"] == "cxrel.job.completed"
            && e["data"]["job_id"] == job_id
            && e["data"]["summary"]["applied"] == applied
    })
}

/// The move of C from X to Y, Y's write first (parents are written in the order they appear).
fn move_ops(x: &str, y: &str, c: &str) -> Vec<Value> {
    vec![
        json!({"parent_id": y, "relationship_field": OWNER, "child_ids": [c], "mode": "add"}),
        json!({"parent_id": x, "relationship_field": OWNER, "child_ids": [c], "mode": "remove"}),
    ]
}
