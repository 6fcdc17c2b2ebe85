//! The one JSON reader for request bodies datagate inspects: strict, and unambiguous for
//! every mainstream parser behind it.
//!
//! Called once per request by [`crate::decision::request`] (and by the admin API for its
//! own bodies); every later stage — datasource checks, export markers, MCP, SQL locations —
//! reads the value it returns, never the raw bytes.
//!
//! `{"uid": "allowed", "uid": "secret"}` is valid JSON with an undefined meaning: parsers
//! disagree on which value wins. Go's `encoding/json` (Grafana) also matches object keys
//! case-insensitively, with Unicode simple folding (`rawſql` reads as `rawSql`), the last
//! match winning. So an object whose keys repeat, or whose keys are equal after case
//! folding, is refused here: whatever datagate checks, the upstream cannot read another
//! value at that place. This is a serde visitor over serde_json's own parser, not a JSON
//! parser of its own; serde_json also refuses invalid UTF-8, lone surrogates, comments,
//! trailing data and nesting deeper than 128.

use std::collections::HashSet;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonGuardError {
    #[error("malformed JSON body: {0}")]
    Malformed(String),
    #[error("JSON body repeats the key `{0}` in one object; refusing an ambiguous body")]
    DuplicateKey(String),
    #[error(
        "JSON body has keys `{0}` and `{1}` in one object, which case-insensitive decoders (Go's encoding/json) read as the same key; refusing an ambiguous body"
    )]
    CaseFoldedKeys(String, String),
}

/// `body` as a JSON value, refused when any object repeats a key, exactly or after case
/// folding.
pub fn parse_strict(body: &[u8]) -> Result<Value, JsonGuardError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match StrictValue.deserialize(&mut deserializer) {
        Ok(value) => {
            deserializer
                .end()
                .map_err(|error| JsonGuardError::Malformed(error.to_string()))?;
            Ok(value)
        }
        Err(error) => Err(decode_error(&error.to_string())),
    }
}

/// Ok when `body` is JSON that [`parse_strict`] accepts.
pub fn reject_duplicate_keys(body: &[u8]) -> Result<(), JsonGuardError> {
    parse_strict(body).map(drop)
}

/// The key as Go's `bytes.EqualFold` compares it, or coarser: every character mapped to
/// upper case and back to lower case, so `ſ` → `S` → `s` and the Kelvin sign `K` → `k`.
/// Coarser folding can only refuse more bodies, never fewer.
pub fn fold_key(key: &str) -> String {
    // ASCII folds to its lower case; the Unicode tables are for the rest (bodies' keys
    // are nearly always ASCII, and this runs per key of every inspected body).
    if key.is_ascii() {
        return key.to_ascii_lowercase();
    }
    folded_characters(key).collect()
}

/// Whether `left` and `right` are equal after [`fold_key`], without building either.
pub fn keys_fold_equal(left: &str, right: &str) -> bool {
    if left.is_ascii() && right.is_ascii() {
        return left.eq_ignore_ascii_case(right);
    }
    folded_characters(left).eq(folded_characters(right))
}

fn folded_characters(key: &str) -> impl Iterator<Item = char> + '_ {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
}

/// Up to this many members, an object's keys are fold-compared pairwise (see `visit_map`).
const LINEAR_FOLD_CHECK: usize = 16;

// serde's error type carries only a message; the marker keeps the kind and the keys apart
// from serde_json's own text (which appends a position).
const MARKER: char = '\u{1}';

fn decode_error(message: &str) -> JsonGuardError {
    let mut parts = message.split(MARKER);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some("duplicate"), Some(key), _) => JsonGuardError::DuplicateKey(key.into()),
        (Some(""), Some("folded"), Some(first), Some(second)) => {
            JsonGuardError::CaseFoldedKeys(first.into(), second.into())
        }
        _ => JsonGuardError::Malformed(message.to_string()),
    }
}

/// Builds a [`Value`] while checking every object's keys.
#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }
    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(sequence.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = sequence.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        // A small object (nearly every request body) is checked by comparing the new key
        // with each earlier one, which builds nothing; past `LINEAR_FOLD_CHECK` members
        // the folded keys go into a set, so a body of many keys stays linear. The set
        // keeps std's SipHash: its keys are the client's, chosen to collide if they can.
        let mut folded: Option<HashSet<String>> = None;
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{MARKER}duplicate{MARKER}{key}{MARKER}"
                )));
            }
            let collides = match &mut folded {
                Some(folded) => !folded.insert(fold_key(&key)),
                None if members.len() < LINEAR_FOLD_CHECK => {
                    members.keys().any(|other| keys_fold_equal(other, &key))
                }
                None => {
                    let mut set: HashSet<String, _> =
                        members.keys().map(|other| fold_key(other)).collect();
                    let collides = !set.insert(fold_key(&key));
                    folded = Some(set);
                    collides
                }
            };
            if collides
                && let Some(other) = members.keys().find(|other| keys_fold_equal(other, &key))
            {
                return Err(de::Error::custom(format!(
                    "{MARKER}folded{MARKER}{other}{MARKER}{key}{MARKER}"
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let value = parse_strict(br#"{"queries":[{"a":1,"b":{"a":2}},{"a":3}],"x":null}"#).unwrap();
        assert_eq!(value["queries"][1]["a"], 3);
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
    fn refuses_keys_that_go_reads_as_one() {
        for body in [
            r#"{"queries":[{"rawSql":"SELECT 1","rawsql":"SELECT * FROM orders"}]}"#,
            r#"{"rawSql":"SELECT 1","RAWSQL":"x"}"#,
            r#"{"rawSql":"SELECT 1","rawſql":"x"}"#,
            r#"{"kind":"a","\u212aind":"b"}"#,
        ] {
            assert!(
                matches!(
                    reject_duplicate_keys(body.as_bytes()),
                    Err(JsonGuardError::CaseFoldedKeys(_, _))
                ),
                "{body}"
            );
        }
    }

    /// Small objects are checked pairwise, larger ones through a set: a folded pair is
    /// refused wherever it falls, before, at and after the switch.
    #[test]
    fn folded_keys_are_refused_in_objects_of_any_size() {
        for members in [
            1,
            LINEAR_FOLD_CHECK - 1,
            LINEAR_FOLD_CHECK,
            LINEAR_FOLD_CHECK + 1,
            200,
        ] {
            let others: Vec<String> = (0..members)
                .map(|index| format!("\"k{index}\":{index}"))
                .collect();
            let distinct = format!("{{{},\"Last\":0}}", others.join(","));
            assert!(
                reject_duplicate_keys(distinct.as_bytes()).is_ok(),
                "{members}"
            );
            for position in [0, members / 2, members] {
                let mut keys = others.clone();
                keys.insert(position, "\"K0\":\"again\"".to_string());
                let body = format!("{{{}}}", keys.join(","));
                let refused = reject_duplicate_keys(body.as_bytes());
                assert!(
                    matches!(&refused, Err(JsonGuardError::CaseFoldedKeys(first, second))
                        if [first.as_str(), second.as_str()].contains(&"K0")
                        && [first.as_str(), second.as_str()].contains(&"k0")),
                    "{members} members, `K0` at {position}: {refused:?}"
                );
            }
        }
    }

    #[test]
    fn folding_is_at_least_as_coarse_as_go_simple_folding() {
        // Go's unicode.SimpleFold orbits that are not plain ASCII case pairs.
        for (left, right) in [
            ("s", "ſ"),
            ("k", "\u{212a}"),
            ("σ", "ς"),
            ("θ", "ϑ"),
            ("å", "\u{212b}"),
        ] {
            assert_eq!(fold_key(left), fold_key(right), "{left} {right}");
        }
        assert_ne!(fold_key("rawSql"), fold_key("rawSq1"));
    }

    #[test]
    fn comparing_folded_keys_agrees_with_folding_them() {
        for (left, right) in [
            ("rawSql", "RAWSQL"),
            ("rawSql", "rawſql"),
            ("kind", "\u{212a}ind"),
            ("ſ", "\u{212a}"),
            ("rawSql", "rawSq1"),
            ("uid", "uids"),
            ("", ""),
            ("Σίσυφος", "ΣΊΣΥΦΟΣ"),
        ] {
            assert_eq!(
                keys_fold_equal(left, right),
                fold_key(left) == fold_key(right),
                "{left} {right}"
            );
            assert_eq!(keys_fold_equal(left, right), keys_fold_equal(right, left));
        }
        assert!(keys_fold_equal("rawSql", "rawſql"));
        assert!(!keys_fold_equal("rawSql", "rawSq1"));
    }

    #[test]
    fn malformed_json_is_reported_with_position() {
        let error = reject_duplicate_keys(br#"{"queries": ["#).unwrap_err();
        assert!(matches!(error, JsonGuardError::Malformed(message) if message.contains("line 1")));
        for body in [
            &br#"{} trailing"#[..],
            br#"{"a":"\ud800"}"#,
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(matches!(
                reject_duplicate_keys(body),
                Err(JsonGuardError::Malformed(_))
            ));
        }
    }
}
