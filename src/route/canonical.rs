//! Path canonicalisation: the one spelling of a request path that routing matches on and
//! that the upstream receives, so the two can never disagree about which route a request
//! is.
//!
//! Rules: percent-escapes of unreserved characters are decoded, every other escape is
//! written in upper case; `/`, `\`, `%2F` and `%5C` all separate segments (many servers
//! decode them, so treating them as data here would let `/a%2F..%2Fadmin` mean one thing
//! to datagate and another upstream); empty segments merge; `.` and `..` (also escaped)
//! resolve, and `..` above the root is refused; invalid escapes, control characters and
//! paths over 8 KiB are refused. Escapes are decoded once, never twice: `%252F` stays
//! `%252F`. The result is a fixed point: canonicalising it again changes nothing.

use super::RouteError;

/// Longest raw path accepted.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// One decoded byte and whether it arrived percent-encoded.
#[derive(Clone, Copy)]
struct PathByte {
    value: u8,
    was_escaped: bool,
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters RFC 3986 allows literally in a path segment besides unreserved ones.
fn is_literal_path_character(byte: u8) -> bool {
    matches!(
        byte,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn invalid(reason: impl Into<String>) -> RouteError {
    RouteError::InvalidPath(reason.into())
}

/// Canonicalises the path part of a request target (no query string).
pub fn canonicalize_path(raw_path: &str) -> Result<String, RouteError> {
    if raw_path.len() > MAX_PATH_BYTES {
        return Err(invalid(format!(
            "path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if !raw_path.starts_with('/') {
        return Err(invalid("path must start with `/`"));
    }
    let raw = raw_path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut index = 0;
    while let Some(&byte) = raw.get(index) {
        if byte == b'%' {
            let high = raw.get(index + 1).copied().and_then(hex_value);
            let low = raw.get(index + 2).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(invalid("invalid percent-escape"));
            };
            let value = high * 16 + low;
            if value < 0x20 || value == 0x7f {
                return Err(invalid("encoded control character"));
            }
            decoded.push(PathByte {
                value,
                was_escaped: true,
            });
            index += 3;
        } else {
            if byte < 0x20 || byte == 0x7f || byte == b'#' || byte == b'?' || byte >= 0x80 {
                return Err(invalid("character not allowed in a path"));
            }
            decoded.push(PathByte {
                value: byte,
                was_escaped: false,
            });
            index += 1;
        }
    }

    let is_separator = |byte: &PathByte| byte.value == b'/' || byte.value == b'\\';
    let text_of = |segment: &[PathByte]| segment.iter().map(|byte| byte.value).collect::<Vec<u8>>();
    let raw_segments: Vec<&[PathByte]> = decoded.split(is_separator).collect();
    // A trailing separator, or a final `.`/`..`, names a directory: keep the slash
    // (Superset's routes end in `/`).
    let trailing_slash = raw_segments
        .last()
        .is_some_and(|last| matches!(text_of(last).as_slice(), b"" | b"." | b".."));
    let mut segments: Vec<&[PathByte]> = Vec::with_capacity(raw_segments.len());
    for segment in raw_segments {
        match text_of(segment).as_slice() {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err(invalid("`..` goes above the root"));
                }
            }
            _ => segments.push(segment),
        }
    }

    let mut canonical = String::with_capacity(raw_path.len());
    for segment in &segments {
        canonical.push('/');
        for byte in segment.iter() {
            let keep_literal = is_unreserved(byte.value)
                || (!byte.was_escaped && is_literal_path_character(byte.value));
            if keep_literal {
                canonical.push(char::from(byte.value));
            } else {
                canonical.push_str(&format!("%{:02X}", byte.value));
            }
        }
    }
    if segments.is_empty() || trailing_slash {
        canonical.push('/');
    }
    Ok(canonical)
}

/// Decodes one canonical segment for a path parameter; `None` when it is not UTF-8.
pub fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(raw: &str) -> String {
        canonicalize_path(raw).unwrap_or_else(|error| panic!("{raw}: {error}"))
    }

    #[test]
    fn table_of_tricky_paths() {
        for (raw, expected) in [
            ("/", "/"),
            ("//a", "/a"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a%2Fb", "/a/b"),
            ("/a%2fb", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/a\\b", "/a/b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/%7e%41", "/~A"),
            ("/a%3bb", "/a%3Bb"),
            ("/a;b", "/a;b"),
            ("/a%252F", "/a%252F"),
            ("/a%20b", "/a%20b"),
            ("/api/v1/sqllab/execute/", "/api/v1/sqllab/execute/"),
            ("/api//v1///chart/", "/api/v1/chart/"),
            ("/a/b/../../c", "/c"),
            ("/a/..", "/"),
        ] {
            assert_eq!(canonical(raw), expected, "{raw}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_canonicalised() {
        for raw in [
            "/../a",
            "/%2e%2e/x",
            "/a/../../b",
            "/a%2F..%2F..%2Fb",
            "/%zz",
            "/%2",
            "/a%00b",
            "/a%0Ab",
            "relative",
            "",
            "/a#b",
        ] {
            assert!(canonicalize_path(raw).is_err(), "{raw} should be refused");
        }
        assert!(canonicalize_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
    }

    proptest! {
        #[test]
        fn canonical_paths_are_fixed_points(raw in "/[a-zA-Z0-9%./\\\\;~_-]{0,40}") {
            if let Ok(first) = canonicalize_path(&raw) {
                let second = canonicalize_path(&first).unwrap();
                prop_assert_eq!(&first, &second);
                prop_assert!(first.starts_with('/'));
                prop_assert!(!first.contains("//"));
                prop_assert!(!first.split('/').any(|segment| segment == "." || segment == ".."));
            }
        }

        /// However dot-dots are spelled, nothing resolves above the root: either refused,
        /// or the result stays inside the path's own segments.
        #[test]
        fn dot_dots_never_escape_the_root(
            parts in proptest::collection::vec(prop_oneof![
                Just("..".to_string()), Just("%2e%2e".to_string()), Just("%2E.".to_string()),
                Just(".".to_string()), Just("a".to_string()), Just("b".to_string()),
            ], 0..8),
            separators in proptest::collection::vec(prop_oneof![
                Just("/"), Just("%2F"), Just("\\"), Just("%5c"), Just("//"),
            ], 8),
        ) {
            let mut raw = String::new();
            let mut depth: i64 = 0;
            let mut escapes = false;
            for (part, separator) in parts.iter().zip(separators.iter()) {
                raw.push_str(if raw.is_empty() { "/" } else { separator });
                raw.push_str(part);
                match part.as_str() {
                    "a" | "b" => depth += 1,
                    "." => {}
                    _ => { depth -= 1; if depth < 0 { escapes = true; } }
                }
            }
            if raw.is_empty() { raw.push('/'); }
            match canonicalize_path(&raw) {
                Ok(path) => {
                    prop_assert!(!escapes, "{} resolved to {} but climbs above the root", raw, path);
                    prop_assert!(path.split('/').all(|segment| segment.is_empty() || segment == "a" || segment == "b"));
                }
                Err(_) => prop_assert!(escapes, "{} refused but stays inside the root", raw),
            }
        }
    }
}
