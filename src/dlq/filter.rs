//! Which dead letters an action takes: one filter type shared by the CLI flags, the console's query
//! parameters and its JSON request bodies, so every entry point selects the same way.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::DeadLetter;

/// The values a stage filter can match: the worker's stages, `broker` (RabbitMQ dead-lettered the
/// message itself) and `unknown` (no stage header).
pub const STAGES: [&str; 7] = [
    "parse",
    "validate",
    "apply",
    "compensate",
    "settle",
    "broker",
    "unknown",
];

/// Empty fields match everything; set fields must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Filter {
    /// `x-cxrel-error-code`.
    pub code: Option<String>,
    /// `x-cxrel-stage` (parse, validate, apply, compensate, settle; `broker` when RabbitMQ
    /// dead-lettered the message itself).
    pub stage: Option<String>,
    /// Job id or message id.
    pub job_id: Option<String>,
    /// The data store the worker resolved (`x-cxrel-datastore-id`), else the body's
    /// `datastore_id` / `datastoreId`.
    pub datastore: Option<String>,
    /// Last failure at least this old ("10m", "2h").
    #[serde(with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub older_than: Option<Duration>,
    /// Last failure at most this old.
    #[serde(with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub newer_than: Option<Duration>,
    /// Only these messages (job ids or message ids): the console's "replay selected".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

impl Filter {
    /// The same filter with blank text fields (an empty form input) treated as absent.
    pub fn normalized(mut self) -> Self {
        for field in [
            &mut self.code,
            &mut self.stage,
            &mut self.job_id,
            &mut self.datastore,
        ] {
            if field.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *field = None;
            }
        }
        self.ids.retain(|id| !id.trim().is_empty());
        self
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub fn matches(&self, letter: &DeadLetter, now: SystemTime) -> bool {
        let text = |want: &Option<String>, got: Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        let age = letter.age(now);
        text(&self.code, Some(letter.code()))
            && text(&self.stage, Some(letter.stage()))
            && text(&self.datastore, letter.datastore())
            && self.job_id.as_ref().is_none_or(|j| letter.has_id(j))
            && (self.ids.is_empty() || self.ids.iter().any(|id| letter.has_id(id)))
            && self
                .older_than
                .is_none_or(|min| age.is_some_and(|a| a >= min))
            && self
                .newer_than
                .is_none_or(|max| age.is_some_and(|a| a <= max))
    }

    /// A short human description for logs and confirmations: `code=x stage=y`, or `all`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                parts.push(format!("{name}={v}"));
            }
        };
        push("code", &self.code);
        push("stage", &self.stage);
        push("job_id", &self.job_id);
        push("datastore", &self.datastore);
        let fmt = |d: &Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
        push("older_than", &fmt(&self.older_than));
        push("newer_than", &fmt(&self.newer_than));
        if !self.ids.is_empty() {
            parts.push(format!("ids={}", self.ids.join(",")));
        }
        if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Optional human durations where an empty string (a blank form field) means none.
mod human_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) if !text.trim().is_empty() => humantime::parse_duration(text.trim())
                .map(Some)
                .map_err(|e| {
                    serde::de::Error::custom(format!("{text:?}: {e} (try \"10m\" or \"2h\")"))
                }),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::tests::letter;

    #[test]
    fn filters_combine_code_job_and_age() {
        let now = SystemTime::now();
        let l = letter("cycle_detected", "j1", 3600);
        assert!(Filter::default().matches(&l, now));
        let by_code = Filter {
            code: Some("cycle_detected".into()),
            ..Filter::default()
        };
        assert!(by_code.matches(&l, now));
        let other_job = Filter {
            job_id: Some("j2".into()),
            ..Filter::default()
        };
        assert!(!other_job.matches(&l, now));
        let too_young = Filter {
            older_than: Some(Duration::from_secs(7200)),
            ..Filter::default()
        };
        assert!(!too_young.matches(&l, now));
        let recent_only = Filter {
            newer_than: Some(Duration::from_secs(60)),
            ..Filter::default()
        };
        assert!(!recent_only.matches(&l, now));
    }

    #[test]
    fn stage_data_store_and_selected_ids_narrow_the_match() {
        let now = SystemTime::now();
        let l = letter("x", "j1", 1);
        let f = |stage: &str, datastore: &str, ids: &[&str]| Filter {
            stage: Some(stage.into()),
            datastore: Some(datastore.into()),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Filter::default()
        };
        assert!(f("validate", "ds1", &["j0", "j1"]).matches(&l, now));
        assert!(!f("apply", "ds1", &[]).matches(&l, now));
        assert!(!f("validate", "ds2", &[]).matches(&l, now));
        assert!(!f("validate", "ds1", &["j9"]).matches(&l, now));
    }

    #[test]
    fn blank_form_fields_match_everything() {
        let f = Filter {
            code: Some(" ".into()),
            ids: vec![String::new()],
            ..Filter::default()
        }
        .normalized();
        assert!(f.is_empty());
        assert_eq!(f.describe(), "all");
    }

    #[test]
    fn a_filter_reads_from_query_text_with_human_durations() {
        let f: Filter = serde_json::from_str(r#"{"code":"timeout","older_than":"10m"}"#).unwrap();
        assert_eq!(f.older_than, Some(Duration::from_secs(600)));
        assert_eq!(f.describe(), "code=timeout older_than=10m");
        let blank: Filter = serde_json::from_str(r#"{"older_than":""}"#).unwrap();
        assert!(blank.is_empty());
        let bad = serde_json::from_str::<Filter>(r#"{"older_than":"soon"}"#).unwrap_err();
        assert!(bad.to_string().contains("10m"), "{bad}");
    }
}
