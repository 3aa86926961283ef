//! The export ledger behind purge's safety check: a complete export records how many dead letters
//! it wrote; a purge may remove at most that many (then the ledger goes down by what it removed),
//! unless the operator says to purge without an export. Kept in a small file per queue prefix under
//! `$XDG_STATE_HOME/cxrel` (else `~/.local/state/cxrel`), shared by `cxrel dlq` and the console on
//! one machine.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::DlqError;

/// The last complete export of one queue prefix, less what purges removed since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Exported messages not yet purged.
    pub count: u64,
    /// When the export ran (RFC 3339).
    pub at: String,
    /// The export's filter, as `Filter::describe` says it.
    pub filter: String,
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

/// Records `removed` messages purged: they no longer count as exported-and-waiting.
pub fn purged(prefix: &str, removed: u64) -> Result<(), DlqError> {
    let mut ledger = load(prefix);
    ledger.count = ledger.count.saturating_sub(removed);
    store(prefix, &ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_prefixes_make_plain_file_names() {
        let p = path("a/../b c");
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, "last-export.a_.._b_c.json");
    }
}
