//! The broker ceiling: publish with confirms, consume and ack messages of the job size with no work
//! in between. What the worker achieves is reported as a ratio of this.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};

use crate::amqp::{AmqpError, Publisher};

/// Messages per second through one quorum queue, end to end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceiling {
    pub messages: u64,
    pub elapsed: Duration,
}

impl Ceiling {
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Publishes `count` bodies (the `sample` repeated) to a fresh quorum queue with `window` confirms
/// outstanding, while a consumer with `prefetch` acks them; returns when all are consumed.
pub async fn measure(
    connection: &Connection,
    queue: &str,
    sample: &[u8],
    count: u64,
    window: usize,
    prefetch: u16,
) -> Result<Ceiling, AmqpError> {
    let channel = connection.create_channel().await?;
    crate::amqp::topology::declare_quorum(&channel, queue).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "cxrel-bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = Publisher::open(connection).await?;
    let started = Instant::now();
    let consume = async {
        let mut seen = 0;
        while seen < count {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    seen += 1;
                }
                Some(Err(e)) => return Err(AmqpError::from(e)),
                None => return Err(AmqpError::ConsumerEnded),
            }
        }
        Ok(())
    };
    let publish = async {
        futures::stream::iter(0..count)
            .map(|_| {
                let props = BasicProperties::default().with_content_type("application/json".into());
                publisher.to_queue(queue, sample, props)
            })
            .buffer_unordered(window.max(1))
            .fold(Ok(()), |acc, r| async move { acc.and(r) })
            .await
    };
    let (published, consumed) = tokio::join!(publish, consume);
    let elapsed = started.elapsed();
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    // Closed here rather than with the connection, which lapin reports as an error.
    let _ = channel.close(200, "ceiling measured".into()).await;
    let _ = publisher
        .channel()
        .close(200, "ceiling measured".into())
        .await;
    published?;
    consumed?;
    Ok(Ceiling {
        messages: count,
        elapsed,
    })
}
