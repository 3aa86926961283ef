//! The audit trail of dead-letter actions: one log line per replay, purge or export (target
//! `cxrel::audit`, level info) saying who, when, which filter, why and how many. The console also
//! keeps the recent entries to show on its page.

use serde::Serialize;

use super::Filter;
use crate::events::now_rfc3339;

/// One action as the audit records it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub at: String,
    /// "cli:{user}" or "console:{session or token}@{peer}"; never a secret.
    pub actor: String,
    pub action: String,
    pub filter: String,
    pub reason: String,
    pub count: u64,
    /// "ok", or the error's message.
    pub outcome: String,
}

impl Entry {
    pub fn new(actor: &str, action: &str, filter: &Filter, reason: &str) -> Self {
        Entry {
            at: now_rfc3339(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            filter: filter.describe(),
            reason: reason.to_owned(),
            count: 0,
            outcome: String::new(),
        }
    }

    /// Logs the entry with its result.
    pub fn finish(mut self, count: u64, outcome: Result<(), String>) -> Self {
        self.count = count;
        self.outcome = outcome.err().unwrap_or_else(|| "ok".to_owned());
        tracing::info!(
            target: "cxrel::audit",
            at = %self.at,
            actor = %self.actor,
            action = %self.action,
            filter = %self.filter,
            reason = %self.reason,
            count = self.count,
            outcome = %self.outcome,
            "dead-letter action"
        );
        self
    }
}

/// The CLI's actor name: `cli:$USER` (or `cli:unknown`).
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_records_count_and_outcome() {
        let f = Filter {
            code: Some("timeout".into()),
            ..Filter::default()
        };
        let e = Entry::new("cli:ann", "replay", &f, "store back").finish(3, Ok(()));
        assert_eq!((e.count, e.outcome.as_str()), (3, "ok"));
        assert_eq!(e.filter, "code=timeout");
        let failed = Entry::new("cli:ann", "purge", &f, "").finish(0, Err("refused".into()));
        assert_eq!(failed.outcome, "refused");
    }
}
