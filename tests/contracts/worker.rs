//! The contracts against a real `cxrel worker` and broker: every event it publishes (tapped on the
//! events exchange with its AMQP properties), every dead letter it writes and every webhook it
//! delivers matches the committed schemas of `deploy/contracts`, for all six event types and the
//! parse, validate and apply stages; and the queues the topology declares carry the arguments the
//! AsyncAPI document states.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cxrel::amqp::Publisher;
use cxrel::contracts::Document;
use cxrel::dlq::DeadLetter;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::helpers::emulator::{EmulatorProcess, named_record};
use cxrel::harness::config::WebhookTarget;

use crate::helpers::broker;
use crate::helpers::workers::{WorkerProcess, job, op, publish_jobs, rid, test_config};
use crate::support::{assert_valid, committed, validator};

const FIELD: &str = "parent_child_link";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One message taken from the events exchange.
struct Tapped {
    routing_key: String,
    properties: BasicProperties,
    body: Value,
}

/// An exclusive queue bound to every routing key of the events exchange, keeping properties.
struct PropertyTap {
    consumer: lapin::Consumer,
    events: Vec<Tapped>,
}

impl PropertyTap {
    async fn bind(channel: &lapin::Channel, exchange: &str) -> Self {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        let bind = QueueBindOptions::default();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "#".into(),
                bind,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            consumer,
            events: Vec::new(),
        }
    }

    /// Collects until every job in `jobs` is settled (completed or dead-lettered) and at least
    /// `types` event types were seen, or the timeout passes.
    async fn until_settled(&mut self, jobs: &[&str], types: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.settled(jobs) || self.types().len() < types {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(delivery))) = tokio::time::timeout(left, self.consumer.next()).await
            else {
                return false;
            };
            self.keep(delivery).await;
        }
        true
    }

    /// Keeps collecting until no event came for `quiet` (a job's events are published together, in
    /// no fixed order, so its last one may follow the one that marked it settled).
    async fn drain_quiet(&mut self, quiet: Duration) {
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, self.consumer.next()).await {
            self.keep(delivery).await;
        }
    }

    async fn keep(&mut self, delivery: lapin::message::Delivery) {
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        self.events.push(Tapped {
            routing_key: delivery.routing_key.as_str().to_owned(),
            properties: delivery.properties.clone(),
            body: serde_json::from_slice(&delivery.data).expect("events are JSON"),
        });
    }

    fn settled(&self, jobs: &[&str]) -> bool {
        let ends = ["cxrel.job.completed", "cxrel.job.dead_lettered"];
        let done: BTreeSet<&str> = self
            .events
            .iter()
            .filter(|e| ends.iter().any(|t| e.body["type"] == *t))
            .filter_map(|e| e.body["data"]["job_id"].as_str())
            .collect();
        jobs.iter().all(|j| done.contains(j))
    }

    fn types(&self) -> BTreeSet<String> {
        self.events
            .iter()
            .filter_map(|e| e.body["type"].as_str().map(str::to_owned))
            .collect()
    }
}

/// A validator for one schema of the AsyncAPI document's `components.schemas`.
fn asyncapi_component(name: &str) -> jsonschema::Validator {
    let document = committed(Document::Asyncapi);
    let schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "components": document["components"],
        "allOf": [{"$ref": format!("#/components/schemas/{name}")}],
    });
    validator(&schema)
}

async fn publish_raw(publisher: &Publisher, queue: &str, id: &str, body: &[u8]) {
    let props = BasicProperties::default()
        .with_message_id(id.into())
        .with_content_type("application/json".into());
    publisher.to_queue(queue, body, props).await.unwrap();
}

#[tokio::test]
async fn every_event_dead_letter_and_webhook_of_a_real_worker_matches_the_committed_schemas() {
    let emu = EmulatorProcess::spawn();
    let records: Vec<Value> = (0..12)
        .map(|n| named_record(&rid("r", n), &format!("r{n}")))
        .collect();
    emu.create_test_datastore("accounts", Value::Array(records))
        .await;
    let topology = broker::topology(&broker::unique_prefix("contracts"), &[200, 400, 800]);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    cxrel::amqp::topology::declare(&channel, &topology)
        .await
        .unwrap();
    let mut tap = PropertyTap::bind(&channel, &topology.events()).await;
    let publisher = Publisher::open(&conn).await.unwrap();
    let hook = emu.webhook_receiver("contracts", SECRET).await;
    let config = test_config(&emu.base, topology.prefix())
        // PATCHes in job order, so the atomic job writes its first parent before the second fails.
        .parallel_patches(1)
        .webhook(WebhookTarget::all_events(&hook, SECRET));
    let worker = WorkerProcess::spawn(&config);
    let r = |n| rid("r", n);

    // Load the worker's graph, then delete a parent behind its back: its PATCH answers 404.
    publish_jobs(
        &publisher,
        &topology,
        &[job(
            "warm-up",
            "accounts",
            true,
            vec![op(&r(5), FIELD, &[&r(6)])],
        )],
    )
    .await;
    let warm = tap
        .until_settled(&["warm-up"], 1, Duration::from_secs(30))
        .await;
    assert!(warm, "the warm-up job settled");
    assert_eq!(emu.delete_record("accounts", &r(1)).await, 204);

    let jobs = [
        job(
            "atomic-fail",
            "accounts",
            true,
            vec![op(&r(0), FIELD, &[&r(2)]), op(&r(1), FIELD, &[&r(2)])],
        ),
        job(
            "rejected",
            "accounts",
            true,
            vec![op(&r(7), FIELD, &[&rid("ghost", 0)])],
        ),
        job(
            "partial",
            "accounts",
            false,
            vec![op(&r(8), FIELD, &[&r(9)]), op(&r(10), FIELD, &[&r(10)])],
        ),
    ];
    let job_schema = validator(&committed(Document::Job));
    for body in &jobs {
        assert_valid(&job_schema, body, "a test job");
    }
    publish_jobs(&publisher, &topology, &jobs).await;
    let tutorial = json!({"datastoreId": "accounts", "parentId": r(11), "childIds": [r(3)], "relationshipField": FIELD});
    assert_valid(&job_schema, &tutorial, "the tutorial-shape job");
    publish_raw(
        &publisher,
        &topology.jobs(),
        "tutorial",
        tutorial.to_string().as_bytes(),
    )
    .await;
    publish_raw(
        &publisher,
        &topology.jobs(),
        "not-json",
        b"{\"operations\": [",
    )
    .await;
    let bad = br#"{"datastore_id": "accounts", "operations": []}"#;
    publish_raw(&publisher, &topology.jobs(), "bad-structure", bad).await;

    let all = [
        "warm-up",
        "atomic-fail",
        "rejected",
        "partial",
        "tutorial",
        "not-json",
        "bad-structure",
    ];
    let settled = tap.until_settled(&all, 6, Duration::from_secs(60)).await;
    assert!(
        settled,
        "not all jobs settled; event types seen: {:?}",
        tap.types()
    );

    tap.drain_quiet(Duration::from_millis(500)).await;
    check_events(&tap.events);
    check_dead_letters(&channel, &topology.dead()).await;
    check_webhooks(&emu, tap.events.len()).await;
    drop(worker);
    broker::teardown(&channel, &topology).await;
}

/// Each event matches the event schema and its own AsyncAPI message payload, and its AMQP
/// properties say what the AsyncAPI document says (structured mode).
fn check_events(events: &[Tapped]) {
    let schema = validator(&committed(Document::Event));
    let mut by_type: HashMap<String, jsonschema::Validator> = HashMap::new();
    for event in events {
        let ty = event.body["type"].as_str().unwrap().to_owned();
        assert_valid(&schema, &event.body, &ty);
        let name = message_payload(&ty);
        let payload = by_type
            .entry(ty.clone())
            .or_insert_with(|| asyncapi_component(&name));
        assert_valid(
            payload,
            &event.body,
            &format!("{ty} against AsyncAPI {name}"),
        );
        let p = &event.properties;
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            p.message_id().as_ref().map(|m| m.as_str()),
            event.body["id"].as_str()
        );
        assert_eq!(p.kind().as_ref().map(|k| k.as_str()), Some(ty.as_str()));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(Some(event.routing_key.as_str()), ty.strip_prefix("cxrel."));
    }
    assert_eq!(
        by_type.len(),
        6,
        "all six event types: {:?}",
        by_type.keys()
    );
}

/// The AsyncAPI payload schema of an event type, read from the document's message.
fn message_payload(ty: &str) -> String {
    let document = committed(Document::Asyncapi);
    let channel = &document["channels"][ty.trim_start_matches("cxrel.")];
    let message = channel["messages"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    let name = message["$ref"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    let payload = &document["components"]["messages"][name]["payload"]["$ref"];
    payload
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

async fn check_dead_letters(channel: &lapin::Channel, queue: &str) {
    let taken = broker::take(channel, queue, 10, Duration::from_secs(3)).await;
    let schema = validator(&committed(Document::DeadLetter));
    let headers = asyncapi_component("DeadLetterHeaders");
    let mut stages = BTreeSet::new();
    let mut jobs = BTreeSet::new();
    for message in taken {
        let letter = DeadLetter {
            properties: message.delivery.properties.clone(),
            body: message.delivery.data.clone(),
        };
        let record = letter.to_json();
        assert_valid(&schema, &record, "a dead letter");
        assert_valid(
            &headers,
            &record["headers"],
            "dead-letter headers against AsyncAPI",
        );
        stages.insert(letter.stage());
        jobs.insert(letter.job_id().unwrap_or_default());
        if letter.message_id().as_deref() == Some("not-json") {
            assert_eq!(letter.body, b"{\"operations\": [", "the body is untouched");
        }
    }
    let expected: BTreeSet<String> = ["apply", "parse", "validate"].map(String::from).into();
    assert_eq!(stages, expected);
    let expected: BTreeSet<String> = [
        "atomic-fail",
        "bad-structure",
        "not-json",
        "partial",
        "rejected",
    ]
    .map(String::from)
    .into();
    assert_eq!(jobs, expected);
}

async fn check_webhooks(emu: &EmulatorProcess, events: usize) {
    let deliveries = emu.webhook_deliveries_at_least("contracts", events).await;
    assert_eq!(deliveries.len(), events, "one webhook per event");
    let schema = validator(&committed(Document::Event));
    let headers = asyncapi_component("WebhookHeaders");
    for delivery in &deliveries {
        assert_eq!(delivery["verified"], true, "{delivery}");
        assert_valid(&schema, &delivery["json"], "a webhook body");
        assert_valid(
            &headers,
            &delivery["headers"],
            "webhook headers against AsyncAPI",
        );
        assert_eq!(
            delivery["headers"]["content-type"],
            "application/cloudevents+json"
        );
    }
}

/// `rabbitmqctl list_queues`: queue name → arguments as JSON.
fn declared_arguments(prefix: &str) -> HashMap<String, serde_json::Map<String, Value>> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "name",
            "arguments",
            "--formatter",
            "json",
        ])
        .output()
        .expect("rabbitmqctl list_queues");
    let queues: Vec<Value> = serde_json::from_slice(&output.stdout).expect("rabbitmqctl JSON");
    queues
        .into_iter()
        .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|q| {
            let arguments = q["arguments"].as_array().cloned().unwrap_or_default();
            // Each argument is [name, type, value].
            let map = arguments
                .iter()
                .filter_map(|a| Some((a[0].as_str()?.to_owned(), a[2].clone())))
                .collect();
            (q["name"].as_str().unwrap_or_default().to_owned(), map)
        })
        .collect()
}

#[tokio::test]
async fn the_declared_queues_carry_the_arguments_the_asyncapi_document_states() {
    let prefix = broker::unique_prefix("contracts-topology");
    let env = [
        ("CXREL__AMQP__PREFIX", prefix.as_str()),
        ("CXREL__AMQP__RETRY_DELAYS", "200ms,1s"),
    ];
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let settings =
        cxrel::settings::Settings::load_with_env(&Default::default(), Some(env)).unwrap();
    let topology = cxrel::amqp::Topology::from_settings(&settings.amqp);
    let conn = broker::connect().await;
    let channel = conn.create_channel().await.unwrap();
    cxrel::amqp::topology::declare(&channel, &topology)
        .await
        .unwrap();
    let declared = declared_arguments(&format!("{prefix}."));
    let document = cxrel::contracts::generate(Document::Asyncapi, &settings).unwrap();
    let mut checked = 0;
    for channel_doc in document["channels"].as_object().unwrap().values() {
        let binding = &channel_doc["bindings"]["amqp"];
        if binding["is"] != "queue" {
            continue;
        }
        let name = binding["queue"]["name"].as_str().unwrap();
        let stated = binding["x-queue-arguments"].as_object().unwrap();
        let actual = declared
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not declared"));
        for (key, value) in actual {
            assert_eq!(
                stated.get(key),
                Some(value),
                "{name}: the broker has {key} = {value}"
            );
        }
        for (key, value) in stated {
            assert_eq!(
                actual.get(key),
                Some(value),
                "{name}: the document states {key} = {value}"
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked, 6,
        "jobs, two hold queues, dead, webhooks dead, intents"
    );
    let stated = &document["channels"]["job.completed"]["bindings"]["amqp"]["exchange"];
    let actual = declared_exchange(&topology.events());
    assert_eq!(
        (&actual["type"], &actual["durable"], &actual["auto_delete"]),
        (&stated["type"], &stated["durable"], &stated["autoDelete"]),
        "the events exchange"
    );
    broker::teardown(&channel, &topology).await;
}

/// `rabbitmqctl list_exchanges`: the exchange `name` with its type and flags.
fn declared_exchange(name: &str) -> Value {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_exchanges",
            "-q",
            "name",
            "type",
            "durable",
            "auto_delete",
            "--formatter",
            "json",
        ])
        .output()
        .expect("rabbitmqctl list_exchanges");
    let exchanges: Vec<Value> = serde_json::from_slice(&output.stdout).expect("rabbitmqctl JSON");
    exchanges
        .into_iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not declared"))
}
