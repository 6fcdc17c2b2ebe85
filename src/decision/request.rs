//! The one reading of a request's query string and body, made once per request right
//! after the body is read and before authorization; every later stage — datasource
//! checks, export markers, the MCP tool, SQL locations — reads [`ParsedRequest`], never
//! the raw bytes.
//!
//! - JSON (the content type says JSON, or there is none) is read by
//!   [`crate::json_guard::parse_strict`]: repeated keys and keys equal after case folding
//!   are refused.
//! - `application/x-www-form-urlencoded` bodies and query strings are read by one form
//!   reader, [`FormPairs`]: `+` is a space, `%XX` decodes once (invalid escapes stay as
//!   written, as Python's `unquote` and WHATWG decoding leave them). Pairs split on `&`;
//!   a text holding a raw `;` is also read split on `;` (Python before 3.9.2 and Go before
//!   1.17 did), and a stage that needs one value (SQL) refuses such a text.
//! - Any other content type is kept as its media type: a stage that must read the body
//!   refuses it.

use std::ops::Range;

use serde_json::Value;

/// What the body is, as datagate read it.
#[derive(Debug, Clone)]
pub enum ParsedBody {
    /// No body, an empty one, or one the route does not read.
    Absent,
    Json(Value),
    Form(FormPairs),
    /// A content type datagate has no reader for (the media type, bounded for messages).
    Unreadable {
        media_type: String,
    },
}

/// The query string and body, each read once.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    pub query: FormPairs,
    pub body: ParsedBody,
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Json(#[from] crate::json_guard::JsonGuardError),
    #[error("the form body is not valid UTF-8")]
    FormNotUtf8,
}

/// The body's kind by its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    Form,
    Other(String),
}

/// JSON unless declared otherwise: a body without a content type is read as JSON, which
/// is what most JSON APIs assume of their clients.
pub fn content_kind(content_type: Option<&str>) -> ContentKind {
    let Some(content_type) = content_type else {
        return ContentKind::Json;
    };
    // Compared without a lower-cased copy: every body-inspecting request passes here.
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let json_suffix = media_type
        .len()
        .checked_sub("+json".len())
        .and_then(|start| media_type.get(start..))
        .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"));
    if media_type.eq_ignore_ascii_case("application/json") || json_suffix {
        ContentKind::Json
    } else if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        ContentKind::Form
    } else {
        // Echoed back to the client; bounded so a huge header cannot bloat the refusal.
        ContentKind::Other(
            media_type
                .chars()
                .take(64)
                .map(|character| character.to_ascii_lowercase())
                .collect(),
        )
    }
}

impl ParsedRequest {
    /// Reads the query string and, when given, the body.
    pub fn parse(
        query: Option<&str>,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<ParsedRequest, RequestError> {
        let query = FormPairs::parse(query.unwrap_or_default().as_bytes());
        let body = match body.filter(|body| !body.is_empty()) {
            None => ParsedBody::Absent,
            Some(body) => match content_kind(content_type) {
                ContentKind::Json => ParsedBody::Json(crate::json_guard::parse_strict(body)?),
                ContentKind::Form => {
                    std::str::from_utf8(body).map_err(|_| RequestError::FormNotUtf8)?;
                    ParsedBody::Form(FormPairs::parse(body))
                }
                ContentKind::Other(media_type) => ParsedBody::Unreadable { media_type },
            },
        };
        Ok(ParsedRequest { query, body })
    }

    /// The JSON body, if the body is JSON.
    pub fn json(&self) -> Option<&Value> {
        match &self.body {
            ParsedBody::Json(value) => Some(value),
            _ => None,
        }
    }
}

/// One `name=value` pair of form-encoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormPair {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// Where the encoded value is in the text (for putting a rewritten value back).
    pub value_span: Range<usize>,
}

/// Form-encoded text (a query string or a form body), read both ways when it holds `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormPairs {
    text: Vec<u8>,
    pairs: Vec<FormPair>,
    /// The pairs when `;` also separates; `None` when the text has no raw `;`.
    semicolon_reading: Option<Vec<FormPair>>,
}

/// Why a form value could not be read as one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormValueError {
    #[error("the request names `{0}` more than once; refusing an ambiguous request")]
    Repeated(String),
    #[error(
        "the request holds a raw `;`, which some servers read as a separator; encode it as `%3B`"
    )]
    Semicolon,
    #[error("`{0}` is not valid UTF-8 after decoding")]
    NotUtf8(String),
}

impl FormPairs {
    pub fn parse(text: &[u8]) -> FormPairs {
        let pairs = split_pairs(text, |byte| byte == b'&');
        let semicolon_reading = text
            .contains(&b';')
            .then(|| split_pairs(text, |byte| matches!(byte, b'&' | b';')));
        FormPairs {
            text: text.to_vec(),
            pairs,
            semicolon_reading,
        }
    }

    /// The text as received.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Every value of `name` under both readings (`None`: not UTF-8). Checking every
    /// value a server could see can only refuse more.
    pub fn all_values(&self, name: &str) -> Vec<Option<String>> {
        self.pairs
            .iter()
            .chain(self.semicolon_reading.iter().flatten())
            .filter(|pair| pair.name == name.as_bytes())
            .map(|pair| String::from_utf8(pair.value.clone()).ok())
            .collect()
    }

    /// Every pair under both readings (`&` alone, and `&` or `;`), for a stage that must
    /// judge every parameter a server could see.
    pub fn every_pair(&self) -> impl Iterator<Item = &FormPair> {
        self.pairs
            .iter()
            .chain(self.semicolon_reading.iter().flatten())
    }

    /// The one value of `name`, for a stage that replaces it: refused when the text could
    /// be read two ways or names it twice. `Ok(None)` when absent.
    pub fn single_value(&self, name: &str) -> Result<Option<(&FormPair, String)>, FormValueError> {
        let mut found = None;
        for pair in self
            .pairs
            .iter()
            .filter(|pair| pair.name == name.as_bytes())
        {
            if found.is_some() {
                return Err(FormValueError::Repeated(name.to_string()));
            }
            let value = String::from_utf8(pair.value.clone())
                .map_err(|_| FormValueError::NotUtf8(name.to_string()))?;
            found = Some((pair, value));
        }
        if self.semicolon_reading.is_some() {
            return Err(FormValueError::Semicolon);
        }
        Ok(found)
    }
}

fn split_pairs(text: &[u8], separator: impl Fn(u8) -> bool) -> Vec<FormPair> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for piece in text.split(|byte| separator(*byte)) {
        let piece_start = start;
        start += piece.len() + 1;
        if piece.is_empty() {
            continue;
        }
        let (name, value, value_span) = match piece.iter().position(|byte| *byte == b'=') {
            Some(equals) => (
                &piece[..equals],
                &piece[equals + 1..],
                piece_start + equals + 1..piece_start + piece.len(),
            ),
            None => (
                piece,
                &[][..],
                piece_start + piece.len()..piece_start + piece.len(),
            ),
        };
        pairs.push(FormPair {
            name: form_decode(name),
            value: form_decode(value),
            value_span,
        });
    }
    pairs
}

fn form_decode(text: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = text
        .iter()
        .map(|&byte| if byte == b'+' { b' ' } else { byte })
        .collect();
    crate::route::percent_decode_lenient(&spaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_decode_and_repeat() {
        let pairs = FormPairs::parse(b"ds=a&x=1&ds=b+c&d%73=%41&ds");
        assert_eq!(
            pairs.all_values("ds"),
            vec![
                Some("a".into()),
                Some("b c".into()),
                Some("A".into()),
                Some(String::new())
            ]
        );
        assert_eq!(
            pairs.single_value("ds"),
            Err(FormValueError::Repeated("ds".into()))
        );
        let (pair, value) = pairs.single_value("x").unwrap().unwrap();
        assert_eq!(value, "1");
        assert_eq!(&pairs.text()[pair.value_span.clone()], b"1");
    }

    #[test]
    fn semicolons_are_read_both_ways_and_refused_for_single_values() {
        let pairs = FormPairs::parse(b"x=1;sql=SELECT+*+FROM+orders");
        assert_eq!(
            pairs.all_values("sql"),
            vec![Some("SELECT * FROM orders".into())]
        );
        assert_eq!(pairs.single_value("sql"), Err(FormValueError::Semicolon));
        assert_eq!(pairs.single_value("x"), Err(FormValueError::Semicolon));
        let encoded = FormPairs::parse(b"sql=SELECT+1%3B");
        assert_eq!(encoded.single_value("sql").unwrap().unwrap().1, "SELECT 1;");
    }

    #[test]
    fn content_types() {
        assert_eq!(content_kind(None), ContentKind::Json);
        let other = |text: &str| ContentKind::Other(text.into());
        for (content_type, kind) in [
            ("application/json; charset=utf-8", ContentKind::Json),
            ("application/vnd.api+json", ContentKind::Json),
            ("Application/X-WWW-Form-Urlencoded", ContentKind::Form),
            ("text/plain", other("text/plain")),
            // Case never matters, in the suffix either; what is echoed is lower-cased.
            (" Application/Problem+JSON ;q=1", ContentKind::Json),
            ("Text/JSON-ish", other("text/json-ish")),
            ("+json", ContentKind::Json),
            ("é+jso", other("é+jso")),
        ] {
            assert_eq!(content_kind(Some(content_type)), kind, "`{content_type}`");
        }
    }

    #[test]
    fn bodies_are_read_by_their_content_type() {
        let parsed = ParsedRequest::parse(None, None, Some(br#"{"a":1}"#)).unwrap();
        assert_eq!(parsed.json().unwrap()["a"], 1);
        assert!(matches!(
            ParsedRequest::parse(None, None, Some(br#"{"a":1,"A":2}"#)),
            Err(RequestError::Json(_))
        ));
        let parsed = ParsedRequest::parse(
            None,
            Some("application/x-www-form-urlencoded"),
            Some(b"a=1"),
        )
        .unwrap();
        assert!(matches!(parsed.body, ParsedBody::Form(_)));
        let parsed = ParsedRequest::parse(None, Some("text/csv"), Some(b"a,b")).unwrap();
        assert!(matches!(parsed.body, ParsedBody::Unreadable { .. }));
        assert!(matches!(
            ParsedRequest::parse(None, None, Some(b"")).unwrap().body,
            ParsedBody::Absent
        ));
    }
}
