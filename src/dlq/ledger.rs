//! The export ledger behind purge's safety check: a complete export records a fingerprint of every
//! dead letter it wrote; a purge removes only dead letters whose fingerprint is there (and takes
//! them off), unless the operator says to purge without an export. Kept in a small file per queue
//! prefix under `$XDG_STATE_HOME/cxrel` (else `~/.local/state/cxrel`), shared by `cxrel dlq` and
//! the console on one machine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use serde::{Deserialize, Serialize};

use super::DlqError;

/// The last complete export of one queue prefix, less what purges removed since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// When the export ran (RFC 3339).
    pub at: String,
    /// The export's filter, as `Filter::describe` says it.
    pub filter: String,
    /// The exported messages not yet purged: [`fingerprint`] → how many (two identical dead
    /// letters count twice). A ledger written before fingerprints were kept has none, so its
    /// purge needs a new export.
    #[serde(default)]
    pub letters: Exported,
}

/// Fingerprints of exported dead letters, as a multiset.
pub type Exported = BTreeMap<String, u64>;

impl Ledger {
    /// A record of an export of the dead letters with these fingerprints.
    pub fn of_export(prints: Vec<String>, filter: String) -> Self {
        let mut letters = Exported::new();
        for print in prints {
            *letters.entry(print).or_insert(0) += 1;
        }
        Self {
            at: crate::events::now_rfc3339(),
            filter,
            letters,
        }
    }

    /// Exported messages not yet purged.
    pub fn count(&self) -> u64 {
        self.letters.values().sum()
    }
}

/// What identifies one dead letter across reads: its message id, headers and exact body (a read
/// hands a message back unchanged, and a purge's rotation republishes it with the same headers),
/// less the `x-delivery-count` the quorum queue raises each time a read hands it back.
pub fn fingerprint(letter: &super::DeadLetter) -> String {
    use crate::amqp::headers;
    let table = headers::without(&headers::table(&letter.properties), headers::DELIVERY_COUNT);
    let headers = super::letter::table_to_json(&table);
    let mut hash = Sha256::new();
    for part in [letter.message_id().unwrap_or_default(), headers.to_string()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(&letter.body);
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn dir() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("cxrel");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/cxrel")
}

fn path(prefix: &str) -> PathBuf {
    let safe: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir().join(format!("last-export.{safe}.json"))
}

/// The ledger of `prefix`; an empty one when there was no export (or the file is unreadable).
pub fn load(prefix: &str) -> Ledger {
    std::fs::read(path(prefix))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub fn store(prefix: &str, ledger: &Ledger) -> Result<(), DlqError> {
    let path = path(prefix);
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_vec(ledger).unwrap_or_default())
    };
    write().map_err(|e| DlqError::Ledger(path.display().to_string(), e))
}

/// Takes the purged messages' fingerprints off the ledger: they no longer count as exported.
pub fn purged(prefix: &str, removed: &[String]) -> Result<(), DlqError> {
    let mut ledger = load(prefix);
    for gone in removed {
        take(&mut ledger.letters, gone);
    }
    store(prefix, &ledger)
}

/// Takes one `print` out of the multiset; false when there is none left.
pub fn take(set: &mut Exported, print: &str) -> bool {
    let Some(n) = set.get_mut(print) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        set.remove(print);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_dead_letters_apart_and_the_ledger_counts_twins_twice() {
        use crate::dlq::letter::tests::letter;
        let a = letter("server_error", "j1", 5);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        // A read hands the message back with the quorum queue's delivery count raised.
        let mut t = crate::amqp::headers::table(&a.properties);
        crate::amqp::headers::set_u64(&mut t, crate::amqp::headers::DELIVERY_COUNT, 3);
        let mut handed_back = a.clone();
        handed_back.properties = a.properties.clone().with_headers(t);
        assert_eq!(fingerprint(&a), fingerprint(&handed_back));
        assert_ne!(fingerprint(&a), fingerprint(&letter("timeout", "j1", 5)));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&letter("server_error", "j2", 5))
        );
        let print = fingerprint(&a);
        let ledger = Ledger::of_export(vec![print.clone(), print.clone()], String::new());
        assert_eq!(ledger.count(), 2);
        let mut left = ledger.letters;
        assert!(take(&mut left, &print) && take(&mut left, &print));
        assert!(!take(&mut left, &print), "two exported, two taken");
    }

    #[test]
    fn odd_prefixes_make_plain_file_names() {
        let p = path("a/../b c");
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, "last-export.a_.._b_c.json");
    }
}
