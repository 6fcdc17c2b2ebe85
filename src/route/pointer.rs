//! JSON pointers (RFC 6901) with a `*` wildcard segment, used by extraction to find
//! datasource uids in JSON request bodies. Compiled at config load; evaluated per request
//! on the already-parsed body.
//!
//! Evaluation is strict where leniency would let a request name a datasource datagate
//! does not see: walking through a value of the wrong shape (a key into a string, `*`
//! into an object) is an error, and under a `*` every element must name a uid. Otherwise
//! `[{"datasource": {"uid": "allowed"}}, {"datasource": "secret"}]` (Grafana's pre-8.3
//! string form) would be checked as `allowed` only.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::RouteError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// An object member, or an array index when the value is an array.
    Key(String),
    /// Every element of an array.
    EveryElement,
}

/// What [`JsonPointer::reach_values`] appends to, inline up to four values: a pointer
/// without `*` (nearly every one) reaches one, so a check allocates nothing.
pub type ReachedValues<'v> = smallvec::SmallVec<[Option<&'v Value>; 4]>;

/// A compiled pointer; displays as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl JsonPointer {
    /// Parses `/queries/*/datasource/uid`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<JsonPointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(if text.is_empty() {
                "the empty pointer names the whole body, not a uid inside it".to_string()
            } else {
                format!("JSON pointer `{text}` must start with `/`")
            });
        };
        let steps = rest
            .split('/')
            .map(|segment| {
                if segment == "*" {
                    return Ok(Step::EveryElement);
                }
                unescape_segment(segment).map(Step::Key).ok_or_else(|| {
                    format!("JSON pointer `{text}` has a `~` not followed by `0` or `1`")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JsonPointer {
            text: text.to_string(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The same pointer with its `*`s replaced, in order, by `indices` (a datasource
    /// pointer that follows the SQL pointer's array positions).
    pub fn with_indices(&self, indices: &[usize]) -> JsonPointer {
        let mut indices = indices.iter();
        let steps: Vec<Step> = self
            .steps
            .iter()
            .map(|step| match step {
                Step::EveryElement => indices
                    .next()
                    .map_or(Step::EveryElement, |index| Step::Key(index.to_string())),
                key => key.clone(),
            })
            .collect();
        let text = steps
            .iter()
            .map(|step| match step {
                Step::Key(key) => format!("/{}", escape_segment(key)),
                Step::EveryElement => "/*".to_string(),
            })
            .collect();
        JsonPointer { text, steps }
    }

    /// Every place the pointer reaches in `document`, absent members included (so a
    /// caller can require them). Walking through a value of the wrong shape is an error;
    /// so is a member that is absent while a key equal to it after case folding is
    /// present (Go's `encoding/json` would read that key here).
    pub fn reach<'v>(&self, document: &'v Value) -> Result<Vec<Reached<'v>>, RouteError> {
        let mut found = Vec::new();
        // Room for the concrete location up front (indices make it a little longer than
        // the pointer's text): it is pushed to segment by segment.
        let mut walked = Walked {
            location: String::with_capacity(self.text.len() + 16),
            indices: Vec::new(),
        };
        walk(document, &self.steps, &mut walked, false, &mut found)?;
        Ok(found)
    }

    /// The values [`Self::reach`] reaches (`None` where it reaches nothing), appended to
    /// `values`, without their locations: a check that only looks at values builds no
    /// location text. Errors are `reach`'s own: on any failure it redoes the walk.
    pub fn reach_values<'v>(
        &self,
        document: &'v Value,
        values: &mut ReachedValues<'v>,
    ) -> Result<(), RouteError> {
        let start = values.len();
        if walk_values(document, &self.steps, values).is_ok() {
            return Ok(());
        }
        values.truncate(start);
        let found = self.reach(document)?;
        values.extend(found.into_iter().map(|reached| reached.value));
        Ok(())
    }

    /// Every uid the pointer names in `document`, with the concrete location of each.
    pub(super) fn uids(&self, document: &Value) -> Result<Vec<(String, String)>, RouteError> {
        // A pointer without `*` reaches one place, whose location is the pointer's own
        // text (segments are written back as parsed; an index only as canonical digits):
        // the common answers (absent, or a string) are found without building locations.
        if !self.steps.contains(&Step::EveryElement) {
            let mut values = ReachedValues::new();
            if walk_values(document, &self.steps, &mut values).is_ok() {
                match values.as_slice() {
                    [] | [None] => return Ok(Vec::new()),
                    [Some(Value::String(uid))] => {
                        return Ok(vec![(self.text.clone(), uid.clone())]);
                    }
                    _ => {}
                }
            }
        }
        self.uids_by_walk(document)
    }

    /// [`Self::uids`] with every location built as the walk goes.
    fn uids_by_walk(&self, document: &Value) -> Result<Vec<(String, String)>, RouteError> {
        let mut uids = Vec::new();
        for reached in self.reach(document)? {
            let location = location_text(&reached.location);
            match reached.value {
                None if reached.under_wildcard => return Err(RouteError::MissingUid(location)),
                None => {}
                Some(Value::String(uid)) => uids.push((location, uid.clone())),
                Some(Value::Number(number)) if number.is_i64() || number.is_u64() => {
                    uids.push((location, number.to_string()));
                }
                Some(other) => {
                    return Err(RouteError::UidNotScalar {
                        location,
                        found: if other.is_number() {
                            "a non-integer number"
                        } else {
                            kind_of(other)
                        },
                    });
                }
            }
        }
        Ok(uids)
    }
}

/// `body` parsed as JSON keeping only what `pointers` can reach, for large bodies of
/// which a few values matter (a SQL Lab response whose rows are not read). Members off
/// every pointer's path are skipped without being built; array elements off the path
/// become `null`, so indices stay; a container or scalar on a path keeps its kind, so
/// [`JsonPointer::reach`] on the result reports the same values and the same shape errors
/// as on the whole document (not the case-folding error, which needs the siblings: that
/// guards what an upstream reads from a request, not what datagate reads from a response).
pub fn parse_along(pointers: &[JsonPointer], body: &[u8]) -> Result<Value, serde_json::Error> {
    let paths: Vec<&[Step]> = pointers
        .iter()
        .map(|pointer| pointer.steps.as_slice())
        .collect();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = Along { paths: &paths }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Builds the parts of a value the remaining `paths` reach.
struct Along<'p> {
    paths: &'p [&'p [Step]],
}

impl<'de> DeserializeSeed<'de> for Along<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.paths.iter().any(|path| path.is_empty()) {
            return serde::Deserialize::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Along<'_> {
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
    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let index = items.len();
            let rests: Vec<&[Step]> = self
                .paths
                .iter()
                .filter_map(|path| match path.split_first() {
                    Some((Step::EveryElement, rest)) => Some(rest),
                    Some((Step::Key(key), rest)) if array_index(key) == Some(index) => Some(rest),
                    _ => None,
                })
                .collect();
            let item = if rests.is_empty() {
                sequence.next_element::<IgnoredAny>()?.map(|_| Value::Null)
            } else {
                sequence.next_element_seed(Along { paths: &rests })?
            };
            match item {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        // Keys are borrowed from the body (copied only when it escapes them) and become
        // `String`s only for the members kept: most of a response is off every path.
        while let Some(MemberName(key)) = map.next_key::<MemberName<'de>>()? {
            let rests: Vec<&[Step]> = self
                .paths
                .iter()
                .filter_map(|path| match path.split_first() {
                    Some((Step::Key(name), rest)) if **name == *key => Some(rest),
                    _ => None,
                })
                .collect();
            if rests.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                let value = map.next_value_seed(Along { paths: &rests })?;
                members.insert(key.into_owned(), value);
            }
        }
        Ok(Value::Object(members))
    }
}

/// An object member's name as [`Along`] reads it: borrowed from the body when the body
/// spells it without escapes.
struct MemberName<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = MemberName<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object member name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(name.to_string())))
            }
            fn visit_string<E>(self, name: String) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(name)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// One place a pointer reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Reached<'v> {
    /// The concrete pointer (`*` replaced by indices), escaped; `""` is the root.
    pub location: String,
    /// The array index each `*` took.
    pub indices: Vec<usize>,
    /// `None` when the member (or an object on the way to it) is absent or `null`.
    pub value: Option<&'v Value>,
    /// Whether a `*` was crossed: an element that lacks the member is then a hole in a
    /// list rather than an optional field.
    pub under_wildcard: bool,
}

struct Walked {
    location: String,
    indices: Vec<usize>,
}

fn unescape_segment(segment: &str) -> Option<String> {
    let mut output = String::with_capacity(segment.len());
    let mut characters = segment.chars();
    while let Some(character) = characters.next() {
        if character == '~' {
            match characters.next() {
                Some('0') => output.push('~'),
                Some('1') => output.push('/'),
                _ => return None,
            }
        } else {
            output.push(character);
        }
    }
    Some(output)
}

fn escape_segment(key: &str) -> Cow<'_, str> {
    if key.contains(['~', '/']) {
        Cow::Owned(key.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(key)
    }
}

/// RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(key: &str) -> Option<usize> {
    let canonical = key == "0" || (!key.starts_with('0') && !key.is_empty());
    if canonical && key.bytes().all(|byte| byte.is_ascii_digit()) {
        key.parse().ok()
    } else {
        None
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn location_text(location: &str) -> String {
    if location.is_empty() {
        "/".to_string()
    } else {
        location.to_string()
    }
}

fn walk<'v>(
    value: &'v Value,
    steps: &[Step],
    walked: &mut Walked,
    under_wildcard: bool,
    found: &mut Vec<Reached<'v>>,
) -> Result<(), RouteError> {
    let mut reached = |walked: &Walked, value: Option<&'v Value>| {
        found.push(Reached {
            location: walked.location.clone(),
            indices: walked.indices.clone(),
            value,
            under_wildcard,
        });
        Ok(())
    };
    let Some((step, rest)) = steps.split_first() else {
        return reached(walked, Some(value).filter(|value| !value.is_null()));
    };
    let restore = walked.location.len();
    let result = match (step, value) {
        (_, Value::Null) => reached(walked, None),
        (Step::EveryElement, Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let _ = write!(walked.location, "/{index}");
                walked.indices.push(index);
                let result = walk(item, rest, walked, true, found);
                walked.indices.pop();
                walked.location.truncate(restore);
                result?;
            }
            Ok(())
        }
        (Step::Key(key), Value::Object(members)) => {
            walked.location.push('/');
            walked.location.push_str(&escape_segment(key));
            match members.get(key) {
                Some(child) => walk(child, rest, walked, under_wildcard, found),
                None => {
                    match members
                        .keys()
                        .find(|other| crate::json_guard::keys_fold_equal(other, key))
                    {
                        Some(other) => Err(RouteError::CaseFoldedKey {
                            location: location_text(&walked.location),
                            found: other.clone(),
                        }),
                        None => reached(walked, None),
                    }
                }
            }
        }
        (Step::Key(key), Value::Array(items)) => match array_index(key) {
            Some(index) => {
                let _ = write!(walked.location, "/{index}");
                match items.get(index) {
                    Some(child) => walk(child, rest, walked, under_wildcard, found),
                    None => reached(walked, None),
                }
            }
            None => Err(RouteError::JsonShape {
                location: location_text(&walked.location),
                expected: "an object",
                found: "an array",
            }),
        },
        (Step::EveryElement, other) => Err(RouteError::JsonShape {
            location: location_text(&walked.location),
            expected: "an array",
            found: kind_of(other),
        }),
        (Step::Key(_), other) => Err(RouteError::JsonShape {
            location: location_text(&walked.location),
            expected: "an object",
            found: kind_of(other),
        }),
    };
    walked.location.truncate(restore);
    result
}

/// [`walk`] for values alone. `Err` means "`walk` fails here": it says no more, because
/// [`JsonPointer::reach_values`] then asks `walk` for the error.
fn walk_values<'v>(
    value: &'v Value,
    steps: &[Step],
    values: &mut ReachedValues<'v>,
) -> Result<(), ()> {
    let Some((step, rest)) = steps.split_first() else {
        values.push(Some(value).filter(|value| !value.is_null()));
        return Ok(());
    };
    match (step, value) {
        (_, Value::Null) => values.push(None),
        (Step::EveryElement, Value::Array(items)) => {
            for item in items {
                walk_values(item, rest, values)?;
            }
        }
        (Step::Key(key), Value::Object(members)) => match members.get(key) {
            Some(child) => return walk_values(child, rest, values),
            None if members
                .keys()
                .any(|other| crate::json_guard::keys_fold_equal(other, key)) =>
            {
                return Err(());
            }
            None => values.push(None),
        },
        (Step::Key(key), Value::Array(items)) => {
            let index = array_index(key).ok_or(())?;
            match items.get(index) {
                Some(child) => return walk_values(child, rest, values),
                None => values.push(None),
            }
        }
        (Step::EveryElement, _) | (Step::Key(_), _) => return Err(()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointer(text: &str) -> JsonPointer {
        match JsonPointer::parse(text) {
            Ok(pointer) => pointer,
            Err(message) => panic!("{message}"),
        }
    }

    fn uids(text: &str, document: &Value) -> Result<Vec<String>, RouteError> {
        pointer(text)
            .uids(document)
            .map(|found| found.into_iter().map(|(_, uid)| uid).collect())
    }

    #[test]
    fn parsing_along_pointers_reaches_what_the_whole_document_reaches() {
        let body = json!({
            "query": {"resultsKey": "abc", "rows": 3, "state": "success"},
            "data": [{"id": 1}, {"id": 2}],
            "columns": [{"name": "a", "type": "INT"}, {"name": "b"}, 7],
            "a/b": {"c~d": [null, {"e": true}]},
            "scalar": "text",
            "float": 1.5
        });
        let text = serde_json::to_vec(&body).unwrap();
        let pointers = [
            "/query/resultsKey",
            "/columns/*/name",
            "/columns/1",
            "/a~1b/c~0d/1/e",
            "/query/absent",
            "/data/0",
            "/scalar/deeper",
            "/data/key",
            "/float",
        ]
        .map(pointer);
        let pruned = parse_along(&pointers, &text).unwrap();
        for pointer in &pointers {
            assert_eq!(pointer.reach(&pruned), pointer.reach(&body), "{pointer}");
        }
        // Off-path members are not built.
        assert_eq!(pruned["query"].as_object().unwrap().len(), 1);
        assert!(pruned["data"][1].is_null());
        // A member name the body spells with escapes is the same member.
        let escaped = parse_along(
            &pointers,
            br#"{"q\u0075ery": {"results\u004bey": "abc"}, "query2": 1}"#,
        )
        .unwrap();
        assert_eq!(escaped, json!({"query": {"resultsKey": "abc"}}));
        assert!(parse_along(&pointers, b"{\"query\": ").is_err());
        assert!(parse_along(&pointers, b"{} trailing").is_err());
    }

    /// The shortcut for pointers without `*` gives what the full walk gives, locations
    /// included.
    #[test]
    fn uids_without_a_wildcard_are_the_full_walks_uids() {
        let documents = [
            json!({"a/b": "x", "c~d": {"e": "y"}, "list": ["zero", "one"], "n": 7, "": "root"}),
            json!({"a/b": null, "list": [], "n": 1.5, "c~d": "flat"}),
            json!({"A/B": "folded", "LIST": 1}),
            json!(["first", {"uid": "second"}]),
        ];
        let pointers = [
            "/a~1b", "/c~0d/e", "/list/1", "/list/01", "/n", "/", "/0", "/1/uid", "/absent",
            "/list",
        ]
        .map(pointer);
        for document in &documents {
            for pointer in &pointers {
                assert_eq!(
                    pointer.uids(document),
                    pointer.uids_by_walk(document),
                    "{pointer} in {document}"
                );
            }
        }
    }

    /// `reach_values` is `reach` without locations: the same values in the same order,
    /// and the same error wherever `reach` fails.
    #[test]
    fn reaching_values_alone_is_reaching_without_locations() {
        let documents = [
            json!({"query": {"resultsKey": "abc", "Select_As_Cta": true}, "list": [1, null, {"a": 2}]}),
            json!({"query": null, "list": [{"a": 1}, {"b": 2}, {"A": 3}]}),
            json!({"query": "text", "list": {"0": 1}}),
            json!([{"query": 1}, 2]),
            json!(null),
        ];
        let pointers = [
            "/",
            "/query",
            "/query/resultsKey",
            "/query/select_as_cta",
            "/list/*",
            "/list/*/a",
            "/list/1",
            "/list/01",
            "/list/0/a",
            "/0/query",
            "/*/query",
            "/absent/deeper",
        ]
        .map(pointer);
        for document in &documents {
            for pointer in &pointers {
                let mut values = ReachedValues::from_elem(None, 1);
                let fast = pointer
                    .reach_values(document, &mut values)
                    .map(|()| values.into_vec());
                let slow = pointer.reach(document).map(|found| {
                    std::iter::once(None)
                        .chain(found.into_iter().map(|reached| reached.value))
                        .collect::<Vec<_>>()
                });
                assert_eq!(fast, slow, "{pointer} in {document}");
            }
        }
    }

    #[test]
    fn parses_escapes_and_wildcards() {
        let parsed = pointer("/a~1b/*/c~0d/");
        assert_eq!(
            parsed.steps,
            vec![
                Step::Key("a/b".into()),
                Step::EveryElement,
                Step::Key("c~d".into()),
                Step::Key(String::new()),
            ]
        );
        assert_eq!(parsed.to_string(), "/a~1b/*/c~0d/");
        for bad in ["", "a/b", "/a~2", "/a~", "/~x"] {
            assert!(
                JsonPointer::parse(bad).is_err(),
                "`{bad}` should be refused"
            );
        }
    }

    #[test]
    fn every_element_must_name_a_uid() {
        let body = json!({"queries": [
            {"datasource": {"uid": "a"}},
            {"datasource": {"uid": "b"}},
        ]});
        assert_eq!(
            uids("/queries/*/datasource/uid", &body),
            Ok(vec!["a".into(), "b".into()])
        );
        let legacy = json!({"queries": [
            {"datasource": {"uid": "a"}},
            {"datasource": "secret"},
        ]});
        assert_eq!(
            uids("/queries/*/datasource/uid", &legacy),
            Err(RouteError::JsonShape {
                location: "/queries/1/datasource".into(),
                expected: "an object",
                found: "a string",
            })
        );
        let by_id = json!({"queries": [{"datasource": {"uid": "a"}}, {"datasourceId": 7}]});
        assert_eq!(
            uids("/queries/*/datasource/uid", &by_id),
            Err(RouteError::MissingUid("/queries/1/datasource".into()))
        );
        let null_uid = json!({"queries": [{"datasource": {"uid": null}}]});
        assert_eq!(
            uids("/queries/*/datasource/uid", &null_uid),
            Err(RouteError::MissingUid("/queries/0/datasource/uid".into()))
        );
    }

    #[test]
    fn absent_outside_a_wildcard_names_nothing() {
        assert_eq!(uids("/datasource/uid", &json!({})), Ok(vec![]));
        assert_eq!(
            uids("/datasource/uid", &json!({"datasource": null})),
            Ok(vec![])
        );
        assert_eq!(uids("/queries/*/uid", &json!({"queries": []})), Ok(vec![]));
        assert!(matches!(
            uids("/datasource/uid", &json!({"datasource": "x"})),
            Err(RouteError::JsonShape { .. })
        ));
        assert!(matches!(
            uids("/queries/*/uid", &json!({"queries": {"uid": "x"}})),
            Err(RouteError::JsonShape {
                expected: "an array",
                ..
            })
        ));
    }

    #[test]
    fn array_indexes_follow_rfc_6901() {
        let body = json!({"list": ["zero", "one"]});
        assert_eq!(uids("/list/1", &body), Ok(vec!["one".into()]));
        assert_eq!(uids("/list/5", &body), Ok(vec![]));
        for not_an_index in ["/list/01", "/list/-", "/list/+1", "/list/x"] {
            assert!(
                matches!(uids(not_an_index, &body), Err(RouteError::JsonShape { .. })),
                "{not_an_index}"
            );
        }
        assert_eq!(
            uids("/0", &json!({"0": "member"})),
            Ok(vec!["member".into()])
        );
    }

    #[test]
    fn scalars_become_uids_and_containers_do_not() {
        assert_eq!(uids("/id", &json!({"id": 42})), Ok(vec!["42".into()]));
        assert_eq!(uids("/id", &json!({"id": -3})), Ok(vec!["-3".into()]));
        let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_default();
        assert_eq!(
            uids("/id", &parse(r#"{"id": 18446744073709551615}"#)),
            Ok(vec!["18446744073709551615".into()])
        );
        for not_integer in [
            r#"{"id": 1e2}"#,
            r#"{"id": 1.0}"#,
            r#"{"id": 18446744073709551616}"#,
        ] {
            assert!(
                matches!(
                    uids("/id", &parse(not_integer)),
                    Err(RouteError::UidNotScalar { .. })
                ),
                "{not_integer}"
            );
        }
        for (value, found) in [
            (json!(1.5), "a non-integer number"),
            (json!(true), "a boolean"),
            (json!([1]), "an array"),
            (json!({"uid": "x"}), "an object"),
        ] {
            assert_eq!(
                uids("/id", &json!({ "id": value })),
                Err(RouteError::UidNotScalar {
                    location: "/id".into(),
                    found
                })
            );
        }
    }

    #[test]
    fn a_key_that_only_case_folds_onto_the_member_is_refused() {
        for body in [
            json!({"queries": [{"datasource": {"UID": "secret"}}]}),
            json!({"queries": [{"datasource": {"uid": "a"}}, {"Datasource": {"uid": "b"}}]}),
        ] {
            assert!(
                matches!(
                    uids("/queries/*/datasource/uid", &body),
                    Err(RouteError::CaseFoldedKey { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn indices_substitute_wildcards() {
        let datasource = pointer("/queries/*/datasource/uid").with_indices(&[2]);
        assert_eq!(datasource.as_str(), "/queries/2/datasource/uid");
        let body = json!({"queries": [{}, {}, {"datasource": {"uid": "c"}}]});
        assert_eq!(
            datasource.uids(&body),
            Ok(vec![("/queries/2/datasource/uid".into(), "c".into())])
        );
    }

    #[test]
    fn locations_escape_keys() {
        let found = pointer("/a~1b").uids(&json!({"a/b": "x"}));
        assert_eq!(found, Ok(vec![("/a~1b".to_string(), "x".to_string())]));
    }
}
