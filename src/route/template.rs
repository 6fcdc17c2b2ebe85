//! Path templates (`/api/datasources/uid/{uid}`, `/{db}.json`, `/static/{*rest}`): parsed
//! at config load, matched per request against the segments of a canonical path.
//!
//! Matching compares *decoded* segments, the way upstream routers do (Werkzeug and
//! Grafana's router both unescape before comparing), so `/api/v1/ch%61rt` and
//! `/api/v1/chart` cannot reach different routes. Literal template text is restricted to
//! printable ASCII without `%`, `\`, `?`, `#`, braces or spaces, so it needs no decoding.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use smallvec::SmallVec;

use super::canonical::decode_segment;

/// How specifically one template segment matched one path segment. Larger wins.
pub(super) const MATCHED_LITERAL: u8 = 3;
pub(super) const MATCHED_AFFIXED_PARAM: u8 = 2;
pub(super) const MATCHED_PARAM: u8 = 1;
pub(super) const MATCHED_REST: u8 = 0;

/// How the end of the path matched: the same trailing slash as the template beats a
/// differing one (Grafana's router ignores one trailing slash, so `/x/` must get `/x`'s
/// checks), which beats a `{*rest}` swallowing the remainder.
pub(super) const END_EXACT: u8 = 2;
pub(super) const END_SLASH_DIFFERS: u8 = 1;
pub(super) const END_REST: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    /// `{name}` with optional literal text around it in the same segment (`{db}.json`).
    Param {
        /// Shared with every match's [`PathParams`], so a match copies no name.
        name: Arc<str>,
        prefix: String,
        suffix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    segments: Vec<Segment>,
    /// `{*name}` at the end: any remainder, including none.
    rest: Option<Arc<str>>,
    trailing_slash: bool,
}

/// One decoded path parameter: the decoded text, or — when the decoded bytes are not
/// UTF-8 — the canonical (escaped) spelling, for the refusal to show; the route still
/// matches (falling through to `unmatched` would let a malformed uid dodge the route's
/// checks) and extraction refuses the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathParam {
    name: Arc<str>,
    value: Result<String, String>,
}

/// The parameters of a matched template, percent-decoded once. Routes have one or two;
/// they are kept inline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams(SmallVec<[PathParam; 2]>);

/// What a parameter lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamValue<'p> {
    Text(&'p str),
    /// Present, but its decoded bytes are not UTF-8.
    NotUtf8 {
        canonical: &'p str,
    },
}

impl PathParams {
    /// The decoded value; `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.lookup(name)? {
            ParamValue::Text(text) => Some(text),
            ParamValue::NotUtf8 { .. } => None,
        }
    }

    pub fn lookup(&self, name: &str) -> Option<ParamValue<'_>> {
        self.0
            .iter()
            .find(|param| &*param.name == name)
            .map(|param| match &param.value {
                Ok(text) => ParamValue::Text(text),
                Err(canonical) => ParamValue::NotUtf8 { canonical },
            })
    }

    /// Name and decoded value of each parameter (values that are not UTF-8 are skipped).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|param| Some((&*param.name, param.value.as_deref().ok()?)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, name: &Arc<str>, canonical: &str, decoded: Vec<u8>) {
        self.0.push(PathParam {
            name: Arc::clone(name),
            value: String::from_utf8(decoded).map_err(|_| canonical.to_owned()),
        });
    }
}

/// A canonical path split for matching: segments in canonical and decoded form.
pub(super) struct SplitPath<'p> {
    canonical: SmallVec<[&'p str; 8]>,
    decoded: SmallVec<[Cow<'p, [u8]>; 8]>,
    trailing_slash: bool,
}

impl<'p> SplitPath<'p> {
    /// The path's segments, percent-decoded (what literals are compared with).
    pub(super) fn decoded_segments(&self) -> &[Cow<'p, [u8]>] {
        &self.decoded
    }

    pub(super) fn new(canonical_path: &'p str) -> SplitPath<'p> {
        let inner = canonical_path.strip_prefix('/').unwrap_or(canonical_path);
        let trailing_slash = canonical_path.ends_with('/');
        let canonical: SmallVec<[&str; 8]> =
            inner.split('/').filter(|part| !part.is_empty()).collect();
        let decoded = canonical.iter().map(|part| decode_segment(part)).collect();
        SplitPath {
            canonical,
            decoded,
            trailing_slash,
        }
    }
}

/// How specific a match was, compared lexicographically: one entry per path segment
/// (`MATCHED_*`), then the end (`END_*`), then the route's method rank.
pub(super) type Specificity = SmallVec<[u8; 16]>;

/// A successful match and how specific it was.
pub(super) struct TemplateMatch {
    pub params: PathParams,
    pub specificity: Specificity,
}

fn is_literal_character(character: char) -> bool {
    character.is_ascii_graphic() && !matches!(character, '%' | '\\' | '?' | '#' | '{' | '}' | '/')
}

fn is_param_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_')
}

fn check_literal(text: &str, whole_segment: bool) -> Result<(), String> {
    if let Some(bad) = text
        .chars()
        .find(|character| !is_literal_character(*character))
    {
        return Err(format!(
            "character `{}` is not allowed in a template literal (write printable ASCII without `%`, `\\`, `?`, `#`)",
            bad.escape_debug()
        ));
    }
    if whole_segment && (text == "." || text == "..") {
        return Err(format!("segment `{text}` can never match a canonical path"));
    }
    Ok(())
}

impl Template {
    /// Parses a template; the message (for the config key `…path`) says what is wrong.
    pub(super) fn parse(path: &str) -> Result<Template, String> {
        let Some(inner) = path.strip_prefix('/') else {
            return Err(format!("`{path}` must start with `/`"));
        };
        if inner.is_empty() {
            return Ok(Template {
                segments: Vec::new(),
                rest: None,
                trailing_slash: true,
            });
        }
        let trailing_slash = inner.ends_with('/');
        let pieces: Vec<&str> = inner
            .strip_suffix('/')
            .unwrap_or(inner)
            .split('/')
            .collect();
        let mut segments = Vec::with_capacity(pieces.len());
        let mut rest = None;
        let mut names = HashSet::new();
        let last_index = pieces.len().saturating_sub(1);
        for (index, piece) in pieces.iter().enumerate() {
            if piece.is_empty() {
                return Err(format!("`{path}` has an empty segment (`//`)"));
            }
            if rest.is_some() {
                return Err(format!("`{path}`: `{{*…}}` must be the last segment"));
            }
            let (name, prefix, suffix) = match (piece.find('{'), piece.find('}')) {
                (None, None) => {
                    check_literal(piece, true)?;
                    segments.push(Segment::Literal((*piece).to_string()));
                    continue;
                }
                (Some(open), Some(close)) if open < close => {
                    let (prefix, after_open) = piece.split_at(open);
                    let name = after_open.get(1..close - open).unwrap_or_default();
                    let suffix = piece.get(close + 1..).unwrap_or_default();
                    if suffix.contains(['{', '}']) || name.contains('{') {
                        return Err(format!("segment `{piece}` has more than one parameter"));
                    }
                    (name, prefix, suffix)
                }
                _ => return Err(format!("segment `{piece}` has unbalanced braces")),
            };
            check_literal(prefix, false)?;
            check_literal(suffix, false)?;
            let (name, is_rest) = match name.strip_prefix('*') {
                Some(rest_name) => (rest_name, true),
                None => (name, false),
            };
            if name.is_empty() {
                return Err(format!("segment `{piece}` has an empty parameter name"));
            }
            if !is_param_name(name) {
                return Err(format!(
                    "parameter name `{name}` must be letters, digits or `_`, not starting with a digit"
                ));
            }
            if !names.insert(name.to_string()) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            if is_rest {
                if index != last_index || trailing_slash {
                    return Err(format!("`{path}`: `{{*{name}}}` must be the last segment"));
                }
                if !prefix.is_empty() || !suffix.is_empty() {
                    return Err(format!("`{{*{name}}}` must be a whole segment"));
                }
                rest = Some(Arc::from(name));
            } else {
                segments.push(Segment::Param {
                    name: Arc::from(name),
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                });
            }
        }
        Ok(Template {
            segments,
            rest,
            trailing_slash,
        })
    }

    /// The literal segments before the first parameter (all of them when there is none):
    /// any path this template matches starts with exactly these decoded segments.
    pub(super) fn leading_literals(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().map_while(|segment| match segment {
            Segment::Literal(literal) => Some(literal.as_bytes()),
            Segment::Param { .. } => None,
        })
    }

    pub(super) fn has_param(&self, wanted: &str) -> bool {
        self.rest.as_deref() == Some(wanted)
            || self
                .segments
                .iter()
                .any(|segment| matches!(segment, Segment::Param { name, .. } if &**name == wanted))
    }

    /// Same paths match both (parameter names aside).
    pub(super) fn same_shape(&self, other: &Template) -> bool {
        let shape = |template: &Template| {
            template
                .segments
                .iter()
                .map(|segment| match segment {
                    Segment::Literal(text) => (0, text.clone(), String::new()),
                    Segment::Param { prefix, suffix, .. } => (1, prefix.clone(), suffix.clone()),
                })
                .collect::<Vec<_>>()
        };
        shape(self) == shape(other)
            && self.rest.is_some() == other.rest.is_some()
            && self.trailing_slash == other.trailing_slash
    }

    pub(super) fn matches(&self, path: &SplitPath<'_>) -> Option<TemplateMatch> {
        let segment_count = path.decoded.len();
        if segment_count < self.segments.len()
            || (self.rest.is_none() && segment_count != self.segments.len())
        {
            return None;
        }
        let mut params = PathParams::default();
        let mut specificity = Specificity::new();
        for ((template, decoded), canonical) in
            self.segments.iter().zip(&path.decoded).zip(&path.canonical)
        {
            match template {
                Segment::Literal(literal) => {
                    if literal.as_bytes() != decoded.as_ref() {
                        return None;
                    }
                    specificity.push(MATCHED_LITERAL);
                }
                Segment::Param {
                    name,
                    prefix,
                    suffix,
                } => {
                    let value = decoded
                        .strip_prefix(prefix.as_bytes())?
                        .strip_suffix(suffix.as_bytes())?;
                    if value.is_empty() {
                        return None;
                    }
                    params.push(name, canonical, value.to_vec());
                    specificity.push(if prefix.is_empty() && suffix.is_empty() {
                        MATCHED_PARAM
                    } else {
                        MATCHED_AFFIXED_PARAM
                    });
                }
            }
        }
        match &self.rest {
            Some(name) => {
                let remainder = path
                    .canonical
                    .get(self.segments.len()..)
                    .unwrap_or_default();
                let mut canonical = remainder.join("/");
                if path.trailing_slash && !remainder.is_empty() {
                    canonical.push('/');
                }
                let decoded = super::canonical::percent_decode_lenient(canonical.as_bytes());
                params.push(name, &canonical, decoded);
                specificity.extend(std::iter::repeat_n(MATCHED_REST, remainder.len()));
                specificity.push(END_REST);
            }
            None => specificity.push(if self.trailing_slash == path.trailing_slash {
                END_EXACT
            } else {
                END_SLASH_DIFFERS
            }),
        }
        Some(TemplateMatch {
            params,
            specificity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Template {
        match Template::parse(text) {
            Ok(template) => template,
            Err(message) => panic!("{message}"),
        }
    }

    fn params_of(template_text: &str, path: &str) -> Option<Vec<(String, String)>> {
        template(template_text)
            .matches(&SplitPath::new(path))
            .map(|found| {
                found
                    .params
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect()
            })
    }

    #[test]
    fn parses_and_refuses_templates() {
        for good in [
            "/",
            "/a",
            "/a/",
            "/a/{id}",
            "/{db}.json",
            "/x-{id}-y/z",
            "/a/{*rest}",
            "/{*all}",
        ] {
            assert!(Template::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("a/b", "must start with `/`"),
            ("/a/{}", "empty parameter"),
            ("/{*}", "empty parameter"),
            ("/{a}/{a}", "appears twice"),
            ("/{a}/{*a}", "appears twice"),
            ("/{*rest}/x", "last segment"),
            ("/{*rest}/", "last segment"),
            ("/x{*rest}", "whole segment"),
            ("/a//b", "empty segment"),
            ("/a/{b", "unbalanced"),
            ("/a/b}", "unbalanced"),
            ("/{a}{b}", "more than one parameter"),
            ("/{a-b}", "letters, digits"),
            ("/{1a}", "letters, digits"),
            ("/a%2Fb", "not allowed"),
            ("/a b", "not allowed"),
            ("/a/../b", "never match"),
            ("/./b", "never match"),
        ] {
            match Template::parse(bad) {
                Ok(_) => panic!("`{bad}` should be refused"),
                Err(message) => assert!(message.contains(why), "`{bad}`: {message}"),
            }
        }
    }

    #[test]
    fn literals_compare_decoded_and_params_decode_once() {
        assert!(params_of("/api/chart", "/api/ch%61rt").is_some());
        assert!(params_of("/api/a;b", "/api/a%3Bb").is_some());
        assert_eq!(
            params_of("/ds/{uid}", "/ds/a%252Fb"),
            Some(vec![("uid".into(), "a%2Fb".into())])
        );
        assert_eq!(
            params_of("/ds/{uid}", "/ds/caf%C3%A9"),
            Some(vec![("uid".into(), "café".into())])
        );
        assert_eq!(
            params_of("/{db}.json", "/fixtures.json"),
            Some(vec![("db".into(), "fixtures".into())])
        );
        assert_eq!(params_of("/{db}.json", "/.json"), None);
        assert_eq!(params_of("/{db}.json", "/fixtures.csv"), None);
        assert_eq!(
            params_of("/api/chart", "/api/Chart"),
            None,
            "case-sensitive"
        );
    }

    #[test]
    fn non_utf8_params_still_match() {
        let found = template("/ds/{uid}").matches(&SplitPath::new("/ds/%FF"));
        let Some(found) = found else {
            panic!("route should match");
        };
        assert_eq!(found.params.get("uid"), None);
        assert_eq!(
            found.params.lookup("uid"),
            Some(ParamValue::NotUtf8 { canonical: "%FF" })
        );
    }

    #[test]
    fn rest_takes_any_remainder() {
        assert_eq!(
            params_of("/static/{*rest}", "/static/a/b%20c/"),
            Some(vec![("rest".into(), "a/b c/".into())])
        );
        assert_eq!(
            params_of("/static/{*rest}", "/static/"),
            Some(vec![("rest".into(), String::new())])
        );
        assert_eq!(
            params_of("/static/{*rest}", "/static"),
            Some(vec![("rest".into(), String::new())])
        );
        assert_eq!(params_of("/static/{*rest}", "/"), None);
    }

    #[test]
    fn trailing_slash_difference_still_matches() {
        let exact = template("/a/b").matches(&SplitPath::new("/a/b"));
        let differs = template("/a/b").matches(&SplitPath::new("/a/b/"));
        assert_eq!(
            exact.map(|found| found.specificity.to_vec()),
            Some(vec![3, 3, END_EXACT])
        );
        assert_eq!(
            differs.map(|found| found.specificity.to_vec()),
            Some(vec![3, 3, END_SLASH_DIFFERS])
        );
        assert!(template("/").matches(&SplitPath::new("/")).is_some());
        assert!(template("/").matches(&SplitPath::new("/a")).is_none());
    }
}
