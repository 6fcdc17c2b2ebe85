//! Refuses JSON bodies whose objects repeat a key.
//!
//! `{"uid": "allowed", "uid": "secret"}` is valid JSON with an undefined meaning: parsers
//! disagree on which value wins. If datagate checked one and the upstream used the other,
//! the check would be worthless, so a body that datagate inspects must be unambiguous.
//! This is a serde visitor over serde_json's own parser, not a JSON parser of its own.

use std::collections::HashSet;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonGuardError {
    #[error("malformed JSON body: {0}")]
    Malformed(String),
    #[error("JSON body repeats the key `{0}` in one object; refusing an ambiguous body")]
    DuplicateKey(String),
}

/// Ok when `body` is JSON whose objects never repeat a key (at any depth).
pub fn reject_duplicate_keys(body: &[u8]) -> Result<(), JsonGuardError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let result = UniqueKeys.deserialize(&mut deserializer);
    match result {
        Ok(()) => deserializer
            .end()
            .map_err(|error| JsonGuardError::Malformed(error.to_string())),
        Err(error) => {
            let message = error.to_string();
            match message.strip_prefix(DUPLICATE_MARKER) {
                Some(rest) => Err(JsonGuardError::DuplicateKey(
                    rest.split(DUPLICATE_END)
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                )),
                None => Err(JsonGuardError::Malformed(message)),
            }
        }
    }
}

const DUPLICATE_MARKER: &str = "\u{1}duplicate:";
const DUPLICATE_END: char = '\u{1}';

/// Walks any JSON value, checking every object's keys.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<(), A::Error> {
        while sequence.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "{DUPLICATE_MARKER}{key}{DUPLICATE_END}"
                )));
            }
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        assert_eq!(
            reject_duplicate_keys(br#"{"queries":[{"a":1,"b":{"a":2}},{"a":3}],"x":null}"#),
            Ok(())
        );
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth() {
        assert_eq!(
            reject_duplicate_keys(br#"{"uid":"a","uid":"b"}"#),
            Err(JsonGuardError::DuplicateKey("uid".into()))
        );
        assert_eq!(
            reject_duplicate_keys(br#"{"queries":[{"datasource":{"uid":"a","uid":"b"}}]}"#),
            Err(JsonGuardError::DuplicateKey("uid".into()))
        );
        // Escapes do not hide a duplicate: serde_json decodes keys before comparing.
        assert_eq!(
            reject_duplicate_keys(br#"{"uid":"a","\u0075id":"b"}"#),
            Err(JsonGuardError::DuplicateKey("uid".into()))
        );
    }

    #[test]
    fn malformed_json_is_reported_with_position() {
        let error = reject_duplicate_keys(br#"{"queries": ["#).unwrap_err();
        assert!(matches!(error, JsonGuardError::Malformed(message) if message.contains("line 1")));
        assert!(matches!(
            reject_duplicate_keys(br#"{} trailing"#),
            Err(JsonGuardError::Malformed(_))
        ));
    }
}
