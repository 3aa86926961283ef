//! Wire shapes of the data-store API (SPEC §3) and the auth endpoints (SPEC §4), and `Record`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::job::CascadeAction;

/// One record: its id, its fields (relationship fields as `{"ids":[…],"cascade_action":…}`) and
/// its version (`_version` on the wire; sent back in `If-Match`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub fields: Map<String, Value>,
    #[serde(rename = "_version", deserialize_with = "version_number")]
    pub version: u64,
}

/// Reads `null` as the type's default: stores write `null` for an empty object as often as they
/// leave the key out, and one such record must not fail the whole graph load.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `_version` as a number or as a string of digits (some stores quote it, as they do in the ETag).
fn version_number<'de, D>(deserializer: D) -> Result<u64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Number(u64),
        Text(String),
    }
    match Version::deserialize(deserializer)? {
        Version::Number(n) => Ok(n),
        Version::Text(text) => text.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("_version {text:?} is not a whole number"))
        }),
    }
}

impl Record {
    /// The value of relationship field `name`, read loosely: the store is not ours, so a missing
    /// or malformed value counts as no children (whole-number ids read as their digits; other ids
    /// that are not strings are skipped).
    pub fn relationship(&self, name: &str) -> RelationshipValue {
        RelationshipValue::read(self.fields.get(name))
    }
}

/// A relationship field's value: `{"ids":[…],"cascade_action":…}` on the wire (SPEC §3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelationshipValue {
    pub ids: Vec<String>,
    #[serde(rename = "cascade_action")]
    pub cascade: CascadeAction,
}

impl RelationshipValue {
    pub fn new(ids: Vec<String>, cascade: CascadeAction) -> Self {
        Self { ids, cascade }
    }

    /// Reads a stored value loosely (see [`Record::relationship`]).
    pub fn read(value: Option<&Value>) -> Self {
        let Some(value) = value else {
            return Self::default();
        };
        let ids = value
            .get("ids")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(stored_id).collect())
            .unwrap_or_default();
        // An unknown action reads as none.
        let cascade = value
            .get("cascade_action")
            .and_then(Value::as_str)
            .and_then(CascadeAction::from_name_any_case)
            .unwrap_or_default();
        Self { ids, cascade }
    }

    /// The wire JSON of this value, for a PATCH body.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A stored child id: a string, or a whole number written as one (stores with numeric ids), so
/// an add or remove PATCH does not silently drop it.
fn stored_id(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// One page of `GET …/records`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordPage {
    pub records: Vec<Record>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// `PATCH …/records/{id}` body: `{"fields":{…}}`.
#[derive(Debug, Serialize)]
pub(crate) struct PatchBody<'a> {
    pub fields: &'a Map<String, Value>,
}

/// `{base}/.well-known/openid-configuration` (only what cxrel reads).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OidcConfiguration {
    pub token_endpoint: String,
}

/// `{issuer}/.well-known/cxone-configuration?tenantId=T`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CxoneConfiguration {
    pub api_endpoint: String,
    #[serde(default)]
    #[allow(dead_code)]
    // Read for completeness of the documented shape; cxrel needs only the endpoint.
    pub area: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub domain: Option<String>,
}

/// Token endpoint answer. The access token is wrapped in `Secret` as soon as it is read.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<Duration>,
    #[serde(default)]
    pub id_token: Option<String>,
}

/// `expires_in` as token endpoints really send it: an integer, but also a float (kept to the
/// millisecond), a numeric string or a negative number (read as zero, which `token_lifetime`
/// takes as unsaid). Anything else counts as absent (the default lifetime), so a quirky token
/// endpoint never stops the worker from logging in.
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    // Zero for NaN and below; a bound far above any lifetime keeps `from_secs_f64` from panicking.
    let seconds = |f: f64| {
        if f > 0.0 {
            Duration::from_secs_f64(f.min(1e12))
        } else {
            Duration::ZERO
        }
    };
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_f64().map(seconds),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok().map(seconds),
        _ => None,
    })
}

/// The `tenantId` claim of an id_token (a JWT; the payload is read without checking the signature,
/// since it comes straight from the token endpoint over the connection cxrel opened).
pub(crate) fn tenant_id_claim(id_token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("tenantId")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(payload: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(r#"{"alg":"none"}"#),
            enc.encode(payload)
        )
    }

    #[test]
    fn the_tenant_id_is_read_from_the_id_token_payload() {
        let token = jwt(r#"{"sub":"u","tenantId":"11111111-2222-3333-4444-555555555555"}"#);
        assert_eq!(
            tenant_id_claim(&token).as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(tenant_id_claim(&jwt(r#"{"sub":"u"}"#)), None);
        assert_eq!(tenant_id_claim("not-a-jwt"), None);
    }

    #[test]
    fn expires_in_is_read_leniently_and_saturates() {
        let read = |json: &str| {
            serde_json::from_str::<TokenResponse>(&format!(r#"{{"access_token":"t"{json}}}"#))
                .unwrap()
                .expires_in
        };
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(read(r#","expires_in":3600"#), secs(3600));
        let huge = secs(1_000_000_000_000);
        assert_eq!(read(r#","expires_in":18446744073709551615"#), huge);
        assert_eq!(read(r#","expires_in":1e30"#), huge);
        assert_eq!(read(r#","expires_in":-5"#), Some(Duration::ZERO));
        assert_eq!(
            read(r#","expires_in":0.7"#),
            Some(Duration::from_millis(700))
        );
        assert_eq!(read(r#","expires_in":" 60 ""#), secs(60));
        assert_eq!(read(r#","expires_in":"soon""#), None);
        assert_eq!(read(r#","expires_in":null"#), None);
        assert_eq!(read(r#","expires_in":[1]"#), None);
        assert_eq!(read(""), None);
    }

    #[test]
    fn records_read_version_from_underscore_version_and_ignore_links() {
        let r: Record = serde_json::from_str(
            r#"{"id":"a","fields":{"l":{"ids":["b"],"cascade_action":"update"}},"_version":3,
                "_links":{"self":{"href":"/x"}}}"#,
        )
        .unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.fields["l"]["ids"][0], "b");
        let page: RecordPage =
            serde_json::from_str(r#"{"records":[],"next_page_token":null}"#).unwrap();
        assert!(page.next_page_token.is_none());
    }

    #[test]
    fn records_with_null_fields_or_a_quoted_version_still_load() {
        let r: Record = serde_json::from_str(r#"{"id":"a","fields":null,"_version":"4"}"#).unwrap();
        assert!(r.fields.is_empty());
        assert_eq!(r.version, 4);
        let bad = serde_json::from_str::<Record>(r#"{"id":"a","_version":"four"}"#);
        assert!(bad.unwrap_err().to_string().contains("whole number"));
    }
}

#[cfg(test)]
mod relationship_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_relationship_value_reads_ids_and_cascade() {
        let v = json!({"ids": ["a", "b"], "cascade_action": "delete"});
        let value = RelationshipValue::read(Some(&v));
        assert_eq!(value.ids, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(value.cascade, CascadeAction::Delete);
    }

    #[test]
    fn stored_values_read_numeric_ids_and_any_case_of_cascade() {
        let v = json!({"ids": ["a", 17, 2.5, null], "cascade_action": "Delete"});
        let value = RelationshipValue::read(Some(&v));
        assert_eq!(value.ids, vec!["a".to_owned(), "17".to_owned()]);
        assert_eq!(value.cascade, CascadeAction::Delete);
    }

    #[test]
    fn a_malformed_relationship_value_counts_as_empty() {
        let v = json!("not a relationship");
        assert_eq!(
            RelationshipValue::read(Some(&v)),
            RelationshipValue::default()
        );
        assert_eq!(RelationshipValue::read(None), RelationshipValue::default());
    }

    #[test]
    fn a_relationship_value_writes_the_wire_shape() {
        let value = RelationshipValue::new(vec!["a".into()], CascadeAction::Update);
        assert_eq!(
            value.to_json(),
            json!({"ids": ["a"], "cascade_action": "update"})
        );
    }
}
