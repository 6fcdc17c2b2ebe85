//! Path canonicalisation: the first thing routing does with a request, before
//! [`RouteTable::resolve`](super::RouteTable::resolve). The proxy matches routes on the
//! canonical path *and forwards that same path upstream*, so datagate and the upstream
//! never see two different spellings of one request.
//!
//! The rules, and why:
//! - Escapes of unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded and every other
//!   escape is written with upper-case hex: RFC 3986 says these spellings are equivalent,
//!   so one of them must be chosen.
//! - `/`, `\`, `%2F` and `%5C` all separate segments. Many servers (Werkzeug, Go routers
//!   that unescape per segment, anything on Windows) decode `%2F` or treat `\` as `/`
//!   before routing; if datagate kept `/a%2F..%2Fadmin` as one opaque segment, the
//!   upstream could route it to `/admin` while datagate checked something else.
//! - `.` and `..` segments, however they are escaped, are resolved; `..` above the root is
//!   refused rather than clamped, because a client that sends it is probing. `.;x` and
//!   `..;x` segments are refused too: servlet containers strip `;` parameters and read
//!   them as dot segments.
//! - Empty segments merge (`//` → `/`); a trailing slash is kept, because Superset's routes
//!   end in `/` and Werkzeug treats `/x` and `/x/` differently.
//! - Escapes are decoded exactly once: `%252F` is the three characters `%2F` to every
//!   server that decodes once, so it stays `%252F` and is never treated as a separator.
//! - Bytes outside ASCII (literal or escaped, valid UTF-8 or not) are written as
//!   upper-case escapes, so the canonical path is always ASCII.
//! - Invalid escapes, control characters (literal or escaped, including `%00`), `#`, `?`,
//!   spaces and paths over [`MAX_PATH_BYTES`] are refused.
//!
//! The result is a fixed point: canonicalising it again returns it unchanged (tested by
//! proptest), which is what makes forwarding it safe.

use std::borrow::Cow;
use std::sync::Arc;

use super::RouteError;

/// Longest path accepted, before and after canonicalisation. Checking the output too
/// keeps the function idempotent: escaping non-ASCII bytes can triple a path's length.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// One byte of the path after decoding, remembering whether it arrived as an escape: a
/// literal `;` and an escaped `%3B` are different to RFC 3986 and stay different.
#[derive(Clone, Copy)]
struct PathByte {
    value: u8,
    escaped: bool,
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `sub-delims`, `:` and `@`: allowed literally in a segment, with a meaning
/// distinct from their escaped form, so a literal one stays literal.
fn is_literal_segment_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

fn is_control(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f
}

pub(super) fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escape(output: &mut String, byte: u8) {
    output.push('%');
    for nibble in [byte >> 4, byte & 0x0f] {
        if let Some(&digit) = UPPER_HEX.get(usize::from(nibble)) {
            output.push(char::from(digit));
        }
    }
}

fn invalid(reason: &'static str) -> RouteError {
    RouteError::InvalidPath(reason)
}

/// Canonicalises the path of a request target (`raw_path` excludes the query string).
pub fn canonicalize_path(raw_path: &str) -> Result<String, RouteError> {
    if is_plainly_canonical(raw_path) {
        return Ok(raw_path.to_owned());
    }
    canonicalize_in_full(raw_path)
}

/// [`canonicalize_path`], as the one shared copy the decision, the permit and the
/// upstream request all read (a path that is already canonical is copied once).
pub fn canonicalize_path_shared(raw_path: &str) -> Result<Arc<str>, RouteError> {
    if is_plainly_canonical(raw_path) {
        return Ok(Arc::from(raw_path));
    }
    canonicalize_in_full(raw_path).map(Arc::from)
}

/// Whether `raw_path` is already its own canonical form by a check that needs no
/// decoding: only unreserved characters and `/`, no empty segment but a trailing one, no
/// `.` or `..` segment. Most API paths are (`/api/v1/chart/1`), and they skip the
/// byte-by-byte rewrite; a proptest holds this to [`canonicalize_in_full`].
fn is_plainly_canonical(raw_path: &str) -> bool {
    let Some(inner) = raw_path.strip_prefix('/') else {
        return false;
    };
    if raw_path.len() > MAX_PATH_BYTES {
        return false;
    }
    // One pass over the bytes (this runs on every request): each segment, when its `/`
    // arrives, must be non-empty and not `.` or `..`; the last may be empty (a trailing
    // slash) when there is one before it, or when the path is `/` alone.
    let mut segment_length = 0usize;
    let mut dots = 0usize;
    for &byte in inner.as_bytes() {
        if byte == b'/' {
            if segment_length == 0 || is_dot_segment(segment_length, dots) {
                return false;
            }
            segment_length = 0;
            dots = 0;
        } else if is_unreserved(byte) {
            segment_length += 1;
            dots += usize::from(byte == b'.');
        } else {
            return false;
        }
    }
    !is_dot_segment(segment_length, dots)
}

/// A segment of `length` bytes, `dots` of them `.`, is `.` or `..`.
fn is_dot_segment(length: usize, dots: usize) -> bool {
    dots == length && (1..=2).contains(&length)
}

/// The full canonicalisation: decode once, resolve dot segments, re-escape.
fn canonicalize_in_full(raw_path: &str) -> Result<String, RouteError> {
    if raw_path.len() > MAX_PATH_BYTES {
        return Err(invalid("path is longer than 8 KiB"));
    }
    if !raw_path.starts_with('/') {
        return Err(invalid("path does not start with `/`"));
    }
    let decoded = decode_path_bytes(raw_path.as_bytes())?;

    let is_separator = |byte: &PathByte| matches!(byte.value, b'/' | b'\\');
    // The leading `/` yields an empty first piece, which merges away like `//`.
    let pieces: Vec<&[PathByte]> = decoded.split(is_separator).collect();
    let names_directory = pieces.last().is_some_and(|last| {
        matches!(
            dot_kind(last),
            DotKind::Empty | DotKind::Dot | DotKind::DotDot
        )
    });

    let mut segments: Vec<&[PathByte]> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match dot_kind(piece) {
            DotKind::Empty | DotKind::Dot => {}
            DotKind::DotDot => {
                if segments.pop().is_none() {
                    return Err(invalid("`..` climbs above the root"));
                }
            }
            DotKind::DotWithParameters => {
                return Err(invalid("`.;` and `..;` segments are refused"));
            }
            DotKind::Name => segments.push(piece),
        }
    }

    let mut canonical = String::with_capacity(raw_path.len() + 8);
    for segment in &segments {
        canonical.push('/');
        for byte in segment.iter() {
            let literal = is_unreserved(byte.value)
                || (!byte.escaped && is_literal_segment_delimiter(byte.value));
            if literal {
                canonical.push(char::from(byte.value));
            } else {
                push_escape(&mut canonical, byte.value);
            }
        }
    }
    if segments.is_empty() || names_directory {
        canonical.push('/');
    }
    if canonical.len() > MAX_PATH_BYTES {
        return Err(invalid("path is longer than 8 KiB once escaped"));
    }
    Ok(canonical)
}

/// Decodes every escape once, refusing anything that cannot be part of a path.
fn decode_path_bytes(raw: &[u8]) -> Result<Vec<PathByte>, RouteError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut index = 0;
    while let Some(&byte) = raw.get(index) {
        if byte == b'%' {
            let high = raw.get(index + 1).copied().and_then(hex_value);
            let low = raw.get(index + 2).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(invalid("invalid percent-escape"));
            };
            let value = (high << 4) | low;
            if is_control(value) {
                return Err(invalid("escaped control character"));
            }
            decoded.push(PathByte {
                value,
                escaped: true,
            });
            index += 3;
        } else {
            if is_control(byte) {
                return Err(invalid("control character"));
            }
            if matches!(byte, b'#' | b'?' | b' ') {
                return Err(invalid("`#`, `?` or space in the path"));
            }
            decoded.push(PathByte {
                value: byte,
                escaped: false,
            });
            index += 1;
        }
    }
    Ok(decoded)
}

enum DotKind {
    Empty,
    Dot,
    DotDot,
    /// `.;x` or `..;x`: servlet containers drop `;` parameters and see a dot segment.
    DotWithParameters,
    Name,
}

fn dot_kind(segment: &[PathByte]) -> DotKind {
    let before_parameters = segment
        .iter()
        .position(|byte| byte.value == b';')
        .and_then(|semicolon| segment.get(..semicolon));
    let is_dots = |bytes: &[PathByte]| {
        matches!(bytes.len(), 1 | 2) && bytes.iter().all(|byte| byte.value == b'.')
    };
    match segment.len() {
        0 => DotKind::Empty,
        _ if is_dots(segment) && segment.len() == 1 => DotKind::Dot,
        _ if is_dots(segment) => DotKind::DotDot,
        _ if before_parameters.is_some_and(is_dots) => DotKind::DotWithParameters,
        _ => DotKind::Name,
    }
}

/// Percent-decodes one segment of a canonical path (a route literal or parameter is
/// compared with what the upstream decodes, not with the escaped spelling).
pub(super) fn decode_segment(segment: &str) -> Cow<'_, [u8]> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment.as_bytes());
    }
    Cow::Owned(percent_decode_lenient(segment.as_bytes()))
}

/// Decodes `%XX`; anything that is not a valid escape is kept as it is (the behaviour of
/// Python's `unquote` and WHATWG form decoding, which upstreams share).
pub(crate) fn percent_decode_lenient(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut index = 0;
    while let Some(&byte) = input.get(index) {
        if byte == b'%' {
            let high = input.get(index + 1).copied().and_then(hex_value);
            let low = input.get(index + 2).copied().and_then(hex_value);
            if let (Some(high), Some(low)) = (high, low) {
                output.push((high << 4) | low);
                index += 3;
                continue;
            }
        }
        output.push(byte);
        index += 1;
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(raw: &str) -> String {
        match canonicalize_path(raw) {
            Ok(path) => path,
            Err(error) => panic!("`{raw}` was refused: {error}"),
        }
    }

    #[test]
    fn tricky_paths_have_one_spelling() {
        for (raw, expected) in [
            ("/", "/"),
            ("//a", "/a"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/a/b/../../c", "/c"),
            ("/a%2Fb", "/a/b"),
            ("/a%2fb", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/a%5cb", "/a/b"),
            ("/a\\b", "/a/b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a%2F..%2Fb", "/b"),
            ("/%7e", "/~"),
            ("/%41", "/A"),
            ("/%7e%41%2d%5f%2e%30", "/~A-_.0"),
            ("/a%3bb", "/a%3Bb"),
            ("/a;b", "/a;b"),
            ("/a%252F", "/a%252F"),
            ("/a%252f", "/a%252f"),
            ("/a%25", "/a%25"),
            ("/a%20b", "/a%20b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/%ff%FE", "/%FF%FE"),
            ("/a\"b", "/a%22b"),
            ("/a..b/...", "/a..b/..."),
            ("/a/...;x/;", "/a/...;x/;"),
            ("/api/v1/sqllab/execute/", "/api/v1/sqllab/execute/"),
            ("/api//v1///chart/", "/api/v1/chart/"),
            ("/a/b/", "/a/b/"),
            ("/a/b//", "/a/b/"),
        ] {
            assert_eq!(canonical(raw), expected, "canonical form of `{raw}`");
        }
    }

    #[test]
    fn refuses_what_has_no_safe_spelling() {
        for raw in [
            "",
            "a/b",
            "\\a",
            "/..",
            "/../a",
            "/%2e%2e/x",
            "/%2E%2E",
            "/a/../../b",
            "/a%2F..%2F..%2Fb",
            "/a\\..\\..\\b",
            "/..;/admin",
            "/a/..;x/b",
            "/a/.;/b",
            "/a/%2E%3Bx/b",
            "/%zz",
            "/%G1",
            "/%2",
            "/a%",
            "/a%00b",
            "/a%0Ab",
            "/a%7F",
            "/a\u{1}b",
            "/a\nb",
            "/a#b",
            "/a?b",
            "/a b",
        ] {
            assert!(
                canonicalize_path(raw).is_err(),
                "`{}` should be refused",
                raw.escape_debug()
            );
        }
    }

    #[test]
    fn length_is_bounded_before_and_after_escaping() {
        let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(canonical(&longest), longest);
        assert!(canonicalize_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
        // 3 000 two-byte characters fit raw (6 001 bytes) but not escaped (18 001).
        let non_ascii = format!("/{}", "é".repeat(3000));
        assert!(non_ascii.len() <= MAX_PATH_BYTES);
        assert!(canonicalize_path(&non_ascii).is_err());
    }

    #[test]
    fn decoding_a_segment_is_lenient_and_single() {
        assert_eq!(decode_segment("a%252F").as_ref(), b"a%2F");
        assert_eq!(decode_segment("plain").as_ref(), b"plain");
        assert_eq!(percent_decode_lenient(b"%zz%4"), b"%zz%4".to_vec());
        assert_eq!(percent_decode_lenient(b"%C3%A9"), "é".as_bytes().to_vec());
    }

    /// Pieces a hostile client would combine.
    fn path_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/".to_string()),
            Just("//".to_string()),
            Just("\\".to_string()),
            Just("%2F".to_string()),
            Just("%2f".to_string()),
            Just("%5C".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%25".to_string()),
            Just("%252F".to_string()),
            Just("%41".to_string()),
            Just("%7e".to_string()),
            Just("%3b".to_string()),
            Just(";".to_string()),
            Just("+".to_string()),
            Just("é".to_string()),
            Just("%c3%a9".to_string()),
            Just("%ff".to_string()),
            Just("\"".to_string()),
            "[a-zA-Z0-9_~-]{1,4}",
        ]
    }

    /// The shortcut's definition, spelled with `split`: the one-pass check must accept
    /// exactly these paths.
    fn plainly_canonical_by_segments(raw_path: &str) -> bool {
        let Some(inner) = raw_path.strip_prefix('/') else {
            return false;
        };
        if raw_path.len() > MAX_PATH_BYTES
            || !inner
                .bytes()
                .all(|byte| byte == b'/' || is_unreserved(byte))
        {
            return false;
        }
        let segments = inner.strip_suffix('/').unwrap_or(inner);
        if segments.is_empty() {
            return inner.is_empty();
        }
        segments
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
    }

    #[test]
    fn plain_paths_are_recognised_in_one_pass() {
        for (path, plain) in [
            ("/", true),
            ("//", false),
            ("/api/v1/chart/1", true),
            ("/api/v1/chart/", true),
            ("/api//chart", false),
            ("/api/v1/chart//", false),
            ("/./x", false),
            ("/x/..", false),
            ("/x/../", false),
            ("/x/.../y", true),
            ("/x/.a/a./", true),
            ("/x y", false),
            ("x", false),
            ("", false),
        ] {
            assert_eq!(is_plainly_canonical(path), plain, "`{path}`");
            assert_eq!(plainly_canonical_by_segments(path), plain, "`{path}`");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn canonical_paths_are_fixed_points(
            pieces in proptest::collection::vec(path_piece(), 0..16),
        ) {
            let raw = format!("/{}", pieces.concat());
            if let Ok(first) = canonicalize_path(&raw) {
                // The full rewrite, not the shortcut a canonical path would take.
                let second = canonicalize_in_full(&first);
                prop_assert_eq!(second.as_ref(), Ok(&first), "raw `{}`", raw);
                prop_assert!(first.is_ascii());
                prop_assert!(!first.contains("//"));
                prop_assert!(!first.contains('\\'));
                let upper = first.to_ascii_uppercase();
                prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"));
                for segment in first.split('/') {
                    let decoded = decode_segment(segment);
                    prop_assert!(decoded.as_ref() != b"." && decoded.as_ref() != b"..");
                }
            }
        }

        /// The shortcut never accepts a path the full rewrite would change or refuse.
        #[test]
        fn the_plain_path_shortcut_agrees_with_the_full_rewrite(
            pieces in proptest::collection::vec(path_piece(), 0..12),
            plain in "[a-z0-9._~/-]{0,24}",
        ) {
            for raw in [format!("/{}", pieces.concat()), format!("/{plain}"), plain.clone()] {
                let full = canonicalize_in_full(&raw);
                prop_assert_eq!(canonicalize_path(&raw), full.clone(), "raw `{}`", raw);
                prop_assert_eq!(
                    canonicalize_path_shared(&raw).map(|shared| shared.to_string()),
                    full.clone(),
                    "raw `{}`",
                    raw
                );
                if is_plainly_canonical(&raw) {
                    prop_assert_eq!(full, Ok(raw.clone()));
                }
                prop_assert_eq!(
                    is_plainly_canonical(&raw),
                    plainly_canonical_by_segments(&raw),
                    "raw `{}`",
                    raw
                );
            }
        }

        #[test]
        fn arbitrary_strings_are_fixed_points_when_accepted(raw in "/\\PC{0,40}") {
            if let Ok(first) = canonicalize_path(&raw) {
                prop_assert_eq!(canonicalize_path(&first), Ok(first.clone()));
            }
        }

        /// However dot-dots and separators are spelled, the result is exactly what a
        /// segment stack computes, and a climb above the root is always refused.
        #[test]
        fn dot_dots_never_climb_above_the_root(
            parts in proptest::collection::vec((
                prop_oneof![
                    Just("/"), Just("//"), Just("\\"), Just("%2F"), Just("%2f"), Just("%5c"), Just("%5C"),
                ],
                prop_oneof![
                    Just(".."), Just("%2e%2e"), Just("%2E."), Just(".%2E"), Just("%2e%2E"),
                    Just("."), Just("%2e"), Just("a"), Just("b"),
                ],
            ), 1..10),
        ) {
            let mut raw = String::new();
            let mut stack: Vec<&str> = Vec::new();
            let mut climbs = false;
            for (index, (separator, part)) in parts.iter().enumerate() {
                raw.push_str(if index == 0 { "/" } else { separator });
                raw.push_str(part);
                match *part {
                    "a" | "b" => stack.push(part),
                    "." | "%2e" => {}
                    _ => climbs |= stack.pop().is_none(),
                }
            }
            match canonicalize_path(&raw) {
                Ok(path) => {
                    prop_assert!(!climbs, "`{}` climbs above the root but became `{}`", raw, path);
                    let inside: Vec<&str> = path.split('/').filter(|segment| !segment.is_empty()).collect();
                    prop_assert_eq!(inside, stack, "`{}`", raw);
                }
                Err(_) => prop_assert!(climbs, "`{}` stays inside the root but was refused", raw),
            }
        }
    }
}
