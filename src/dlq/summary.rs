//! The overview operators start from: dead letters grouped by error code and by stage, each group
//! with its count and the ages of its oldest and newest message.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::{DeadLetter, Snapshot};

/// One group (one code, or one stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    pub key: String,
    pub count: u64,
    /// Age of the oldest message in seconds (`None` when none has a failure time).
    pub oldest_age_seconds: Option<u64>,
    pub newest_age_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Queue depth when it was read.
    pub depth: u32,
    /// Messages read.
    pub total: u64,
    /// Messages present but not read (held by another reader): counts may be low by this much.
    pub missed: u64,
    /// Other consumers attached to the dead queue: what they hold is not counted at all.
    pub other_readers: u32,
    pub by_code: Vec<Group>,
    pub by_stage: Vec<Group>,
    pub oldest_age_seconds: Option<u64>,
}

impl Summary {
    pub fn of(snapshot: &Snapshot, now: SystemTime) -> Self {
        let letters = &snapshot.letters;
        Summary {
            depth: snapshot.depth,
            total: letters.len() as u64,
            missed: snapshot.missed,
            other_readers: snapshot.other_readers,
            by_code: group(letters, now, DeadLetter::code),
            by_stage: group(letters, now, DeadLetter::stage),
            oldest_age_seconds: letters
                .iter()
                .filter_map(|l| l.age(now))
                .max()
                .map(|a| a.as_secs()),
        }
    }
}

/// Groups by `key`, largest group first (then by name, so the order is stable).
fn group(letters: &[DeadLetter], now: SystemTime, key: fn(&DeadLetter) -> String) -> Vec<Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for letter in letters {
        let name = key(letter);
        let g = groups.entry(name.clone()).or_insert_with(|| Group {
            key: name,
            ..Group::default()
        });
        g.count += 1;
        if let Some(age) = letter.age(now).map(|a| a.as_secs()) {
            g.oldest_age_seconds = g.oldest_age_seconds.max(Some(age));
            g.newest_age_seconds = Some(g.newest_age_seconds.map_or(age, |n| n.min(age)));
        }
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    out
}

/// "3h 12m" style age for tables; "-" when unknown.
pub fn human_age(seconds: Option<u64>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::tests::letter;

    #[test]
    fn groups_count_and_track_oldest_and_newest_age() {
        let snapshot = Snapshot {
            letters: vec![
                letter("cycle_detected", "a", 100),
                letter("cycle_detected", "b", 10),
                letter("timeout", "c", 50),
            ],
            depth: 3,
            ..Snapshot::default()
        };
        let s = Summary::of(&snapshot, SystemTime::now());
        assert_eq!(s.total, 3);
        let cycle = &s.by_code[0];
        assert_eq!((cycle.key.as_str(), cycle.count), ("cycle_detected", 2));
        assert!(cycle.oldest_age_seconds.unwrap() >= 100);
        assert!(cycle.newest_age_seconds.unwrap() < 50);
        assert_eq!(s.by_stage[0].count, 3);
        assert!(s.oldest_age_seconds.unwrap() >= 100);
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(human_age(None), "-");
        assert_eq!(human_age(Some(42)), "42s");
        assert_eq!(human_age(Some(125)), "2m 5s");
        assert_eq!(human_age(Some(7260)), "2h 1m");
        assert_eq!(human_age(Some(90_000)), "1d 1h");
    }
}
