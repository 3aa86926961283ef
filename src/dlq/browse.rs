//! Reading the dead queue without removing anything: every message is held unacked, then the
//! channel closes, which hands them all back. A browse says how many it could not see (held by
//! another reader, or beyond a cap), so nothing reports "all" while it saw less.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::{DeadLetter, DlqError};

/// How long a browse waits for the next message before it counts the rest as missed.
const GAP: Duration = Duration::from_secs(5);

/// Messages ready in `queue` (a passive declare: no message is touched). Messages another
/// consumer holds unacked are not counted.
pub async fn depth(channel: &Channel, queue: &str) -> Result<u32, DlqError> {
    Ok(counts(channel, queue).await?.0)
}

/// Ready messages and attached consumers of `queue`.
pub async fn counts(channel: &Channel, queue: &str) -> Result<(u32, u32), DlqError> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map_err(|e| DlqError::NoQueue(queue.to_owned(), e))?;
    Ok((queue.message_count(), queue.consumer_count()))
}

/// What one browse saw.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub letters: Vec<DeadLetter>,
    /// Queue depth when the browse started.
    pub depth: u32,
    /// Messages present at the start that the browse did not see.
    pub missed: u64,
    /// Other consumers attached at the start: messages they hold are neither seen nor counted.
    pub other_readers: u32,
    pub taken_at: Option<SystemTime>,
}

/// How many messages one pass over the queue saw, out of how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub depth: u32,
    pub seen: u64,
    /// Other consumers attached when the browse started: what they hold unacked is invisible.
    pub other_readers: u32,
}

impl Seen {
    pub fn missed(&self) -> u64 {
        u64::from(self.depth).saturating_sub(self.seen)
    }
}

/// Reads up to `cap` of the messages present now into memory.
pub async fn snapshot(
    connection: &Connection,
    queue: &str,
    cap: Option<u64>,
) -> Result<Snapshot, DlqError> {
    let mut letters = Vec::new();
    let seen = each(connection, queue, cap, |letter| {
        letters.push(letter);
        Ok(())
    })
    .await?;
    Ok(Snapshot {
        letters,
        depth: seen.depth,
        missed: seen.missed(),
        other_readers: seen.other_readers,
        taken_at: Some(SystemTime::now()),
    })
}

/// Calls `visit` for each message present now (at most `cap`), oldest first, then hands them all
/// back. Stops early when `visit` fails or no message comes for a few seconds.
pub async fn each(
    connection: &Connection,
    queue: &str,
    cap: Option<u64>,
    mut visit: impl FnMut(DeadLetter) -> Result<(), DlqError>,
) -> Result<Seen, DlqError> {
    let channel = connection.create_channel().await?;
    let (depth, other_readers) = counts(&channel, queue).await?;
    let wanted = cap.map_or(u64::from(depth), |c| c.min(u64::from(depth)));
    let mut seen = Seen {
        depth,
        seen: 0,
        other_readers,
    };
    let result = read(&channel, queue, wanted, &mut seen, &mut visit).await;
    // Closing the channel returns every unacked message to the queue, in order.
    let _ = channel.close(200, "browsed".into()).await;
    if seen.seen > 0 {
        wait_until_back(connection, queue, seen.seen).await;
    }
    result.map(|()| seen)
}

/// A quorum queue takes returned messages back asynchronously: until they are ready again, the
/// next action would count and reach too few. Waits (briefly) until at least `held` are ready.
async fn wait_until_back(connection: &Connection, queue: &str, held: u64) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    wait_until_ready(&channel, queue, held).await;
    let _ = channel.close(200, "depth".into()).await;
}

/// Waits up to 3 s until `queue` has at least `held` ready messages (see [`wait_until_back`]).
pub(super) async fn wait_until_ready(channel: &Channel, queue: &str, held: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        match depth(channel, queue).await {
            Ok(ready) if u64::from(ready) < held => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => break,
        }
    }
}

async fn read(
    channel: &Channel,
    queue: &str,
    wanted: u64,
    seen: &mut Seen,
    visit: &mut impl FnMut(DeadLetter) -> Result<(), DlqError>,
) -> Result<(), DlqError> {
    if wanted == 0 {
        return Ok(());
    }
    // Prefetch 0 = unlimited: every message must be held at once, beyond the u16 a count allows.
    let prefetch = u16::try_from(wanted).unwrap_or(0);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "cxrel-dlq-browse".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while seen.seen < wanted {
        let Ok(Some(delivery)) = tokio::time::timeout(GAP, consumer.next()).await else {
            break;
        };
        let delivery = delivery?;
        seen.seen += 1;
        visit(DeadLetter {
            properties: delivery.properties,
            body: delivery.data,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_counts_what_was_present_but_not_seen() {
        let s = Seen {
            depth: 5,
            seen: 3,
            other_readers: 0,
        };
        assert_eq!(s.missed(), 2);
        let more = Seen {
            depth: 1,
            seen: 3,
            other_readers: 0,
        };
        assert_eq!(
            more.missed(),
            0,
            "messages that arrived meanwhile are no debt"
        );
    }
}
