//! The one loop that changes the dead queue (replay and purge): take each message present at the
//! start, one at a time; move it (publish, await the broker's confirm, then ack), remove it (ack)
//! or keep it (republish to the back of the dead queue, confirmed, then ack). A failure before the
//! ack puts the message back where it was and waits until it is ready again (a crash leaves that
//! to the broker), so a failure mid-way can duplicate but never lose.

use std::time::Duration;

use tokio::time::Instant;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;

use super::browse::wait_until_ready;
use super::{DeadLetter, DlqError, counts};
use crate::amqp::{Publisher, headers};

/// What to do with one message.
pub enum Decision {
    /// Publish to `queue` with these properties, then remove from the dead queue.
    Move {
        queue: String,
        properties: Box<BasicProperties>,
    },
    /// Remove from the dead queue.
    Remove,
    /// Leave it (rotated to the back of the dead queue).
    Keep,
}

/// Bounds of one pass.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// Most messages moved or removed.
    pub limit: u64,
    /// Most messages moved per second (`None` = as fast as confirms come back).
    pub rate: Option<f64>,
    /// Cancelled (an operator's Ctrl-C): the pass ends after the message in hand, and its report
    /// says what was done.
    pub stop: CancellationToken,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Messages taken off the dead queue and looked at.
    pub scanned: u64,
    /// Moved or removed.
    pub acted: u64,
    /// Present at the start but never reached (held by another reader, or the limit was hit).
    pub unreached: u64,
    /// Ids (job id, else message id) of the messages acted on.
    pub ids: Vec<String>,
    /// Other consumers attached to the dead queue at the start: what they hold unacked is neither
    /// seen nor counted in `unreached`.
    pub other_readers: u32,
    /// The pass was stopped (`Pace::stop`) before it had looked at everything.
    pub interrupted: bool,
}

/// Runs `decide` over the messages in `dead` at the start (later arrivals are not visited).
pub async fn scan(
    connection: &Connection,
    dead: &str,
    pace: Pace,
    mut decide: impl FnMut(&DeadLetter) -> Decision,
) -> Result<ScanReport, DlqError> {
    scan_async(connection, dead, pace, move |letter| {
        std::future::ready(decide(&letter))
    })
    .await
}

/// As [`scan`], with a decision that has to wait for something (a webhook redelivery's POST).
pub async fn scan_async<F, Fut>(
    connection: &Connection,
    dead: &str,
    pace: Pace,
    mut decide: F,
) -> Result<ScanReport, DlqError>
where
    F: FnMut(DeadLetter) -> Fut,
    Fut: Future<Output = Decision>,
{
    let lock = ScanLock::take(connection, dead).await?;
    let channel = connection.create_channel().await?;
    let publisher = Publisher::open(connection).await?;
    let mut report = ScanReport::default();
    let result = take_each(&channel, &publisher, dead, pace, &mut decide, &mut report).await;
    // Closed on every path: a message taken but not acked goes back to the dead queue now, not
    // when the (maybe long-lived) connection closes.
    let _ = channel.close(200, "scanned".into()).await;
    let _ = publisher.channel().close(200, "scanned".into()).await;
    lock.release().await;
    match result {
        Ok(()) => Ok(report),
        Err(error) if report.acted > 0 => Err(DlqError::Stopped {
            done: report.acted,
            source: Box::new(error),
        }),
        Err(error) => Err(error),
    }
}

/// One scan of a dead queue at a time, across processes (CLI and consoles): an exclusive queue
/// `{dead}.scan-lock` held while the scan runs. Two scans at once each rotate what they keep to
/// the back of the queue while the other holds messages, so each can see its own rotated copies
/// again instead of the other's and report success with matches left behind (`basic.get` readers
/// are not consumers, so neither could tell the other was there). The broker drops the lock
/// with the connection of a crashed holder.
struct ScanLock {
    channel: Channel,
    name: String,
}

impl ScanLock {
    async fn take(connection: &Connection, dead: &str) -> Result<Self, DlqError> {
        let channel = connection.create_channel().await?;
        let name = format!("{dead}.scan-lock");
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await
        {
            Ok(_) => Ok(Self { channel, name }),
            // RESOURCE_LOCKED: another connection holds it (the channel is closed by the broker).
            Err(error) if is_locked(&error) => Err(DlqError::Busy(dead.to_owned())),
            Err(error) => Err(DlqError::Amqp(error.into())),
        }
    }

    async fn release(self) {
        let _ = self
            .channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.channel.close(200, "scan done".into()).await;
    }
}

/// The broker's 405 RESOURCE-LOCKED: an exclusive queue another connection declared.
fn is_locked(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
    )
}

async fn take_each<F, Fut>(
    channel: &Channel,
    publisher: &Publisher,
    dead: &str,
    pace: Pace,
    decide: &mut F,
    report: &mut ScanReport,
) -> Result<(), DlqError>
where
    F: FnMut(DeadLetter) -> Fut,
    Fut: Future<Output = Decision>,
{
    let (ready, readers) = counts(channel, dead).await?;
    let initial = u64::from(ready);
    report.other_readers = readers;
    let started = Instant::now();
    let mut moved = 0u64;
    while report.scanned < initial && report.acted < pace.limit {
        if pace.stop.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let Some(message) = next(channel, dead).await? else {
            break;
        };
        report.scanned += 1;
        let delivery = message.delivery;
        let letter = DeadLetter {
            properties: delivery.properties.clone(),
            body: delivery.data.clone(),
        };
        let decision = decide(letter.clone()).await;
        let acted = async {
            match decision {
                Decision::Move { queue, properties } => {
                    wait_for_rate(pace.rate, started, moved).await;
                    confirmed(publisher.to_queue(&queue, &letter.body, *properties)).await?;
                    moved += 1;
                    report.acted += 1;
                    report.ids.push(letter.display_id());
                }
                Decision::Remove => {
                    report.acted += 1;
                    report.ids.push(letter.display_id());
                }
                Decision::Keep => {
                    let kept = letter.properties.headers().clone().unwrap_or_default();
                    let kept = headers::without(&kept, headers::DELIVERY_COUNT);
                    let properties = headers::copy_properties(&letter.properties, kept);
                    confirmed(publisher.to_queue(dead, &letter.body, properties)).await?;
                }
            }
            Ok::<(), DlqError>(())
        }
        .await;
        if let Err(error) = acted {
            // Back before the caller answers: nacked now, not when RabbitMQ notices the channel
            // closing (which it may do after the close-ok), and ready again before returning, as
            // a browse waits for what it held.
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            let _ = delivery.acker.nack(requeue).await;
            wait_until_ready(channel, dead, initial.saturating_sub(report.acted)).await;
            return Err(error);
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    report.unreached = initial.saturating_sub(report.scanned);
    Ok(())
}

/// How long a publish may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A publish whose confirm must come within `CONFIRM_TIMEOUT`: a broker under a memory or disk
/// alarm blocks publishers, and an action must end with an error rather than hang.
async fn confirmed(
    publish: impl Future<Output = Result<(), crate::amqp::AmqpError>>,
) -> Result<(), DlqError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DlqError::NoConfirm(CONFIRM_TIMEOUT)),
    }
}

/// The next message, waiting up to 3 s when the queue looks empty: a browse elsewhere (the
/// console, `cxrel dlq list`) may hold the messages for a moment before handing them back.
async fn next(channel: &Channel, dead: &str) -> Result<Option<BasicGetMessage>, DlqError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = channel
            .basic_get(dead.into(), BasicGetOptions::default())
            .await?;
        if got.is_some() || Instant::now() >= deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sleeps until the `done`-th move is due at `rate` per second since `started`.
async fn wait_for_rate(rate: Option<f64>, started: Instant, done: u64) {
    let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) else {
        return;
    };
    let due = started + Duration::from_secs_f64(done as f64 / rate);
    tokio::time::sleep_until(due).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_cap_spaces_moves_evenly() {
        let started = Instant::now();
        for done in 0..5 {
            wait_for_rate(Some(20.0), started, done).await;
        }
        // Five moves at 20/s: the fifth is due 200 ms after the start.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    }

    #[tokio::test]
    async fn no_rate_or_a_nonsense_rate_does_not_wait() {
        let started = Instant::now();
        wait_for_rate(None, started, 100).await;
        wait_for_rate(Some(0.0), started, 100).await;
        wait_for_rate(Some(f64::NAN), started, 100).await;
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
