//! The JSON API's request parameters, read strictly: an unknown key or a value of the wrong kind
//! is a 400 with a JSON error naming it. A misspelt filter key (`jobid`) must never widen a purge
//! or replay to every dead letter.

use std::collections::HashMap;

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ConsoleError;

/// The keys of a dead-letter filter (`dlq::Filter`).
pub const FILTER: &[&str] = &[
    "code",
    "stage",
    "job_id",
    "datastore",
    "older_than",
    "newer_than",
    "ids",
];

/// A typed query, its rejection turned into a JSON 400.
pub fn query<T>(extracted: Result<Query<T>, QueryRejection>) -> Result<T, ConsoleError> {
    extracted
        .map(|Query(value)| value)
        .map_err(|e| bad_request(format!("query string: {}", e.body_text())))
}

/// Checks that every query key is a filter key or one of `extra`.
pub fn known_query(
    extracted: Result<Query<HashMap<String, String>>, QueryRejection>,
    extra: &[&str],
) -> Result<(), ConsoleError> {
    let keys = query(extracted)?;
    known(keys.keys().map(String::as_str), extra)?;
    known_stage(keys.get("stage").map(String::as_str))
}

/// A JSON object body whose keys are all filter keys or in `extra`, read as `T`.
pub fn body<T: DeserializeOwned>(
    extracted: Result<Json<Value>, JsonRejection>,
    extra: &[&str],
) -> Result<T, ConsoleError> {
    let Json(value) = extracted.map_err(|e| bad_request(format!("body: {}", e.body_text())))?;
    let Some(object) = value.as_object() else {
        return Err(bad_request("body: expected a JSON object".into()));
    };
    known(object.keys().map(String::as_str), extra)?;
    no_empty_selection(object)?;
    known_stage(object.get("stage").and_then(Value::as_str))?;
    serde_json::from_value(value).map_err(|e| bad_request(format!("body: {e}")))
}

/// Refuses a filter key given with an empty value: read as "no filter", `"ids": []` or
/// `"code": ""` would widen a replay or purge to every dead letter (a script whose selection came
/// out empty must act on nothing). The page never sends such keys.
fn no_empty_selection(object: &serde_json::Map<String, Value>) -> Result<(), ConsoleError> {
    let empty = FILTER.iter().find(|key| match object.get(**key) {
        Some(Value::String(text)) => text.trim().is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        _ => false,
    });
    match empty {
        Some(key) => Err(bad_request(format!(
            "{key} is empty, which would select every dead letter: nothing was done (leave the key out to not filter on it)"
        ))),
        None => Ok(()),
    }
}

/// Refuses a stage no dead letter can have (a misspelling would match nothing, silently).
fn known_stage(stage: Option<&str>) -> Result<(), ConsoleError> {
    match stage.map(str::trim) {
        Some(stage) if !stage.is_empty() && !crate::dlq::filter::STAGES.contains(&stage) => {
            Err(bad_request(format!(
                "stage {stage:?} is not a stage: nothing was done (stages: {})",
                crate::dlq::filter::STAGES.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

fn known<'a>(keys: impl Iterator<Item = &'a str>, extra: &[&str]) -> Result<(), ConsoleError> {
    let mut unknown: Vec<&str> = keys
        .filter(|k| !FILTER.contains(k) && !extra.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    let allowed: Vec<&str> = FILTER.iter().chain(extra).copied().collect();
    Err(bad_request(format!(
        "unknown parameter(s) {}: nothing was done (known: {})",
        unknown.join(", "),
        allowed.join(", ")
    )))
}

fn bad_request(message: String) -> ConsoleError {
    ConsoleError::new(StatusCode::BAD_REQUEST, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_filter_key_is_named_in_the_error() {
        let error = known(["jobid", "code"].into_iter(), &["dry_run"]).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(error.message.contains("jobid"), "{}", error.message);
        assert!(error.message.contains("job_id"), "{}", error.message);
    }

    #[test]
    fn an_empty_selection_is_refused_instead_of_matching_everything() {
        for body in [
            serde_json::json!({"ids": [], "without_export": true}),
            serde_json::json!({"code": ""}),
            serde_json::json!({"job_id": "  "}),
        ] {
            let object = body.as_object().unwrap();
            let error = no_empty_selection(object).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(error.message.contains("is empty"), "{}", error.message);
        }
        let page = serde_json::json!({"code": "x", "stage": null, "ids": ["a"]});
        assert!(no_empty_selection(page.as_object().unwrap()).is_ok());
    }

    #[test]
    fn a_stage_no_dead_letter_can_have_is_refused() {
        let error = known_stage(Some("valdate")).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(error.message.contains("validate"), "{}", error.message);
        assert!(known_stage(Some("broker")).is_ok());
        assert!(
            known_stage(Some("")).is_ok(),
            "an empty query value does not filter"
        );
        assert!(known_stage(None).is_ok());
    }

    #[test]
    fn filter_keys_and_the_extra_ones_pass() {
        assert!(known(["job_id", "code", "dry_run"].into_iter(), &["dry_run"]).is_ok());
    }
}
