//! Refuses a JSON document in which an object names one key twice. `serde_json` keeps the last
//! value silently, so `{"datastore_id":"a","datastore_id":"b"}` would run against `b` while a
//! reader of the message sees `a`; the parser is strict about keys, and this is part of it.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first key found twice in one object, if any; `Err` when `body` is not JSON.
pub fn first_duplicate(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    match serde_json::from_slice::<Checked>(body) {
        Ok(_) => Ok(None),
        Err(e) => match e.to_string().strip_prefix(PREFIX) {
            Some(rest) => Ok(Some(
                rest.split('\u{1f}').next().unwrap_or_default().to_owned(),
            )),
            None => Err(e),
        },
    }
}

/// Marks the error this module raises, to tell it from a syntax error.
const PREFIX: &str = "duplicate key\u{1f}";

struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Walk)
    }
}

struct Walk;

impl<'de> Visitor<'de> for Walk {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("{PREFIX}{key}\u{1f}")));
            }
            map.next_value::<Checked>()?;
            seen.insert(key);
        }
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_in_any_object_is_found() {
        let twice = br#"{"a":1,"b":{"c":[{"d":1,"d":2}]}}"#;
        assert_eq!(first_duplicate(twice).unwrap().as_deref(), Some("d"));
        let top = br#"{"datastore_id":"a","datastore_id":"b"}"#;
        assert_eq!(
            first_duplicate(top).unwrap().as_deref(),
            Some("datastore_id")
        );
    }

    #[test]
    fn the_same_key_in_sibling_objects_and_escaped_keys_are_fine() {
        let ok = br#"{"ops":[{"k":1},{"k":2}],"\u0061":1,"b":null}"#;
        assert_eq!(first_duplicate(ok).unwrap(), None);
        assert!(first_duplicate(b"{not json").is_err());
    }
}
