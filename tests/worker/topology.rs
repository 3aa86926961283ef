//! The broker topology of SPEC §5 against the real local RabbitMQ.

use std::time::Duration;

use cxrel::amqp::{Publisher, headers, topology};
use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::helpers::broker;

#[tokio::test]
async fn declaring_twice_is_harmless_and_a_held_job_returns_to_the_jobs_queue_with_its_headers() {
    let topo = broker::topology(&broker::unique_prefix("topology"), &[200, 60_000]);
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    topology::declare(&channel, &topo).await.unwrap();
    topology::declare(&channel, &topo).await.unwrap();

    let publisher = Publisher::open(&connection).await.unwrap();
    let (hold, delay) = topo.retry_after_failure(1).unwrap();
    assert_eq!(delay, Duration::from_millis(200));
    let mut table = FieldTable::default();
    headers::set_u64(&mut table, headers::ATTEMPTS, 1);
    let props = BasicProperties::default().with_headers(table);
    publisher
        .to_queue(&hold, b"{\"job\":1}", props)
        .await
        .unwrap();

    let back = broker::take(&channel, &topo.jobs(), 1, Duration::from_secs(10)).await;
    assert_eq!(
        back.len(),
        1,
        "the held message came back to the jobs queue"
    );
    assert_eq!(back[0].delivery.data, b"{\"job\":1}");
    let table = headers::table(&back[0].delivery.properties);
    assert_eq!(headers::get_u64(&table, headers::ATTEMPTS), Some(1));

    broker::teardown(&channel, &topo).await;
}

#[tokio::test]
async fn publishing_to_a_queue_that_does_not_exist_is_an_error_not_a_silent_drop() {
    let connection = broker::connect().await;
    let publisher = Publisher::open(&connection).await.unwrap();
    let missing = format!("{}.jobs", broker::unique_prefix("missing"));
    let err = publisher
        .to_queue(&missing, b"x", BasicProperties::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no queue is bound"), "{err}");
}

#[tokio::test]
async fn an_existing_object_of_another_kind_fails_the_declare_naming_it_and_what_to_do() {
    let topo = broker::topology(&broker::unique_prefix("topology-clash"), &[200]);
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    // An events exchange of another type, as a hand-made or older setup might leave.
    channel
        .exchange_declare(
            topo.events().as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let error = topology::declare(&channel, &topo).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&format!("{:?}", topo.events())), "{text}");
    assert!(text.contains("new [amqp].prefix"), "{text}");

    let channel = connection.create_channel().await.unwrap();
    broker::teardown(&channel, &topo).await;
}
