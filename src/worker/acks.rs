//! Coalesced acknowledgements for one consume channel: a settled delivery is acked together with
//! every settled one before it, in one `basic.ack` with `multiple`, instead of one frame each.
//!
//! Why: on a quorum queue each ack frame is a Raft command; under load most jobs finish in
//! delivery order, so one frame can settle a whole run of them. Safety rests on two facts: the
//! broker numbers a channel's deliveries 1, 2, 3… and the consumer registers each as it reads it,
//! in that order. A multiple ack at tag N therefore only covers deliveries this worker registered,
//! and it is sent only when every registered delivery up to N is settled (acked or given back), so
//! an unfinished job is never acked. A job that finishes behind an unfinished one is acked on its
//! own once it has waited [`HOLD`], so a slow job never holds the prefetch window.
//!
//! Each settle still waits for its frame to be written, so a finished job task means its delivery
//! is settled, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::{mpsc, oneshot};

/// Longest a settled delivery waits for the unfinished ones before it to be acked alone.
pub const HOLD: Duration = Duration::from_millis(10);

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    /// Given back to the broker (`basic.nack` with requeue).
    Requeue,
}

/// What the channel's ack task receives, in delivery order for `Read`.
enum Message {
    /// The consumer read this delivery; it stays unsettled until its `Settle`.
    Read(u64),
    Settle {
        tag: u64,
        verdict: Verdict,
        sent: oneshot::Sender<Result<(), lapin::Error>>,
    },
    /// A hold ended: look again.
    Wake,
}

/// The consume channel's acknowledgements. Cheap to clone; the task ends with the last clone.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Message>,
}

impl Acks {
    /// Starts the ack task for `channel`, the channel the deliveries came on.
    pub fn start(channel: Channel) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, rx));
        Self { tx }
    }

    /// Registers a delivery as read; call in the order deliveries arrive, before any settle of it.
    pub fn read(&self, tag: u64) {
        let _ = self.tx.send(Message::Read(tag));
    }

    /// Settles a delivery; returns once its frame was written (or the channel failed).
    pub async fn settle(&self, tag: u64, verdict: Verdict) -> Result<(), lapin::Error> {
        let (sent, written) = oneshot::channel();
        let message = Message::Settle { tag, verdict, sent };
        if self.tx.send(message).is_err() {
            return Err(closed());
        }
        written.await.unwrap_or_else(|_| Err(closed()))
    }
}

/// The error a settle gets when the ack task is gone (its channel's session ended).
fn closed() -> lapin::Error {
    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "basic.ack").into()
}

/// The ack task: collects what arrived, sends what may go, waits for more (or for a hold to end).
/// The queue is unbounded but holds at most two messages per delivery the prefetch let in.
async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut book = Book::default();
    let mut waiting = Waiting::new();
    loop {
        let hold_ends = book
            .oldest_held()
            .map(|since| tokio::time::Instant::from_std(since + HOLD));
        let message = match hold_ends {
            None => rx.recv().await,
            Some(deadline) => tokio::select! {
                message = rx.recv() => message,
                () = tokio::time::sleep_until(deadline) => Some(Message::Wake),
            },
        };
        let Some(first) = message else { return };
        take(&mut book, &mut waiting, first);
        while let Ok(message) = rx.try_recv() {
            take(&mut book, &mut waiting, message);
        }
        for frame in book.frames(Instant::now()) {
            let result = send(&channel, &frame).await;
            metrics::counter!("cxrel_ack_frames_total", "kind" => frame.kind()).increment(1);
            for tag in frame.settles() {
                if let Some(sent) = waiting.remove(&tag) {
                    let _ = sent.send(result.clone());
                }
            }
        }
    }
}

type Waiting = BTreeMap<u64, oneshot::Sender<Result<(), lapin::Error>>>;

fn take(book: &mut Book, waiting: &mut Waiting, message: Message) {
    match message {
        Message::Wake => {}
        Message::Read(tag) => book.read(tag),
        Message::Settle { tag, verdict, sent } => {
            book.settle(tag, verdict, Instant::now());
            waiting.insert(tag, sent);
        }
    }
}

async fn send(channel: &Channel, frame: &Frame) -> Result<(), lapin::Error> {
    match frame {
        Frame::AckUpTo { last, .. } => {
            let multiple = true;
            channel.basic_ack(*last, BasicAckOptions { multiple }).await
        }
        Frame::Ack(tag) => channel.basic_ack(*tag, BasicAckOptions::default()).await,
        Frame::Requeue(tag) => {
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            channel.basic_nack(*tag, options).await
        }
    }
}

/// One frame to send, and which deliveries it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// `basic.ack` with `multiple`: every delivery still unsettled up to `last`, i.e. `tags`.
    AckUpTo {
        last: u64,
        tags: Vec<u64>,
    },
    Ack(u64),
    Requeue(u64),
}

impl Frame {
    fn kind(&self) -> &'static str {
        match self {
            Self::AckUpTo { .. } => "multiple",
            Self::Ack(_) => "single",
            Self::Requeue(_) => "requeue",
        }
    }

    fn settles(&self) -> Vec<u64> {
        match self {
            Self::AckUpTo { tags, .. } => tags.clone(),
            Self::Ack(tag) | Self::Requeue(tag) => vec![*tag],
        }
    }
}

/// Which deliveries are read but unsettled, and which are settled but not yet sent.
#[derive(Debug, Default)]
struct Book {
    unfinished: BTreeSet<u64>,
    finished: BTreeMap<u64, (Verdict, Instant)>,
}

impl Book {
    fn read(&mut self, tag: u64) {
        self.unfinished.insert(tag);
    }

    fn settle(&mut self, tag: u64, verdict: Verdict, now: Instant) {
        self.unfinished.remove(&tag);
        self.finished.insert(tag, (verdict, now));
    }

    /// When the longest-waiting finished delivery behind an unfinished one started waiting.
    fn oldest_held(&self) -> Option<Instant> {
        let head = *self.unfinished.first()?;
        self.finished.range(head..).map(|(_, (_, at))| *at).min()
    }

    /// The frames to send now, in order: requeues of the finished prefix, one multiple ack for the
    /// rest of it, then each delivery that finished behind an unfinished one and waited long enough.
    fn frames(&mut self, now: Instant) -> Vec<Frame> {
        let head = self.unfinished.first().copied().unwrap_or(u64::MAX);
        let mut frames = Vec::new();
        let mut acked = Vec::new();
        let prefix: Vec<(u64, Verdict)> = self
            .finished
            .range(..head)
            .map(|(tag, (verdict, _))| (*tag, *verdict))
            .collect();
        for (tag, verdict) in prefix {
            self.finished.remove(&tag);
            match verdict {
                Verdict::Requeue => frames.push(Frame::Requeue(tag)),
                Verdict::Ack => acked.push(tag),
            }
        }
        match acked.as_slice() {
            [] => {}
            [one] => frames.push(Frame::Ack(*one)),
            [.., last] => frames.push(Frame::AckUpTo {
                last: *last,
                tags: acked,
            }),
        }
        let due: Vec<u64> = self
            .finished
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= HOLD)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in due {
            if let Some((verdict, _)) = self.finished.remove(&tag) {
                frames.push(match verdict {
                    Verdict::Ack => Frame::Ack(tag),
                    Verdict::Requeue => Frame::Requeue(tag),
                });
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(read: &[u64]) -> Book {
        let mut book = Book::default();
        for tag in read {
            book.read(*tag);
        }
        book
    }

    #[test]
    fn a_finished_run_in_delivery_order_goes_as_one_multiple_ack() {
        let now = Instant::now();
        let mut book = book(&[1, 2, 3, 4]);
        for tag in [2, 1, 3] {
            book.settle(tag, Verdict::Ack, now);
        }
        assert_eq!(
            book.frames(now),
            vec![Frame::AckUpTo {
                last: 3,
                tags: vec![1, 2, 3]
            }]
        );
        assert!(book.frames(now).is_empty());
    }

    #[test]
    fn a_delivery_finished_behind_an_unfinished_one_waits_then_goes_alone() {
        let now = Instant::now();
        let mut book = book(&[1, 2, 3]);
        book.settle(2, Verdict::Ack, now);
        assert!(book.frames(now).is_empty());
        assert_eq!(book.oldest_held(), Some(now));
        assert_eq!(book.frames(now + HOLD), vec![Frame::Ack(2)]);
        book.settle(1, Verdict::Ack, now + HOLD);
        assert_eq!(book.frames(now + HOLD), vec![Frame::Ack(1)]);
        assert_eq!(book.oldest_held(), None);
    }

    #[test]
    fn a_requeue_inside_the_prefix_is_sent_before_the_multiple_ack_that_passes_it() {
        let now = Instant::now();
        let mut book = book(&[5, 6, 7]);
        book.settle(5, Verdict::Ack, now);
        book.settle(6, Verdict::Requeue, now);
        book.settle(7, Verdict::Ack, now);
        assert_eq!(
            book.frames(now),
            vec![
                Frame::Requeue(6),
                Frame::AckUpTo {
                    last: 7,
                    tags: vec![5, 7]
                }
            ]
        );
    }

    #[test]
    fn a_read_delivery_never_settled_blocks_every_multiple_ack_past_it() {
        let now = Instant::now();
        let mut book = book(&[1, 2, 3]);
        book.settle(1, Verdict::Ack, now);
        book.settle(3, Verdict::Ack, now);
        assert_eq!(book.frames(now), vec![Frame::Ack(1)]);
        // 2 is never settled (a job still running, or one left at shutdown): 3 goes alone.
        assert_eq!(book.frames(now + HOLD), vec![Frame::Ack(3)]);
    }
}
