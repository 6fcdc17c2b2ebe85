//! Rison (the URL-friendly JSON that Superset's REST API reads from its `q` query
//! parameter, through Python's `prison`), read into a JSON value so extraction can find a
//! results key or other ids in `?q=(key:'…',rows:100)`. Used by extraction
//! (`extract.rs`) on routes whose uid sources say `rison`.
//!
//! Strict where `prison` is lenient, so that whatever datagate accepts, Superset reads the
//! same way: a repeated object key (prison keeps the last) is refused, as is nesting
//! deeper than [`MAX_DEPTH`]; everything else follows the Rison grammar prison
//! implements. The differential test in `tests/one_reading.rs` compares both readings.

use serde_json::{Map, Number, Value};

/// Deeper nesting is refused: no Superset parameter nests this deep.
pub const MAX_DEPTH: usize = 32;

/// ASCII punctuation allowed in an unquoted id (`prison`'s `IDCHAR_PUNCTUATION`); other
/// ASCII characters that are not letters or digits end an id, non-ASCII ones do not.
const ID_PUNCTUATION: &str = "_-./~%+";

fn is_id_character(character: char) -> bool {
    !character.is_ascii()
        || character == '\u{7f}'
        || character.is_ascii_alphanumeric()
        || ID_PUNCTUATION.contains(character)
}

/// An id may not start like a number (`prison`'s `NOT_IDSTART`).
fn is_id_start(character: char) -> bool {
    is_id_character(character) && !matches!(character, '-' | '0'..='9')
}

/// What is wrong with a Rison text; lowercase, the offending part in backticks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RisonError {
    #[error("unexpected end of rison text")]
    UnexpectedEnd,
    #[error("unexpected `{found}` at character {at} of the rison text")]
    Unexpected { found: char, at: usize },
    #[error("invalid `!` escape at character {at} of the rison text")]
    BadEscape { at: usize },
    #[error("rison object key `{key}` appears twice")]
    DuplicateKey { key: String },
    #[error("rison text nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("invalid rison number `{text}`")]
    BadNumber { text: String },
}

/// Reads a whole Rison text as one value.
pub fn parse(text: &str) -> Result<Value, RisonError> {
    let characters: Vec<char> = text.chars().collect();
    let mut reader = Reader {
        characters: &characters,
        position: 0,
    };
    let value = reader.value(0)?;
    match reader.peek() {
        None => Ok(value),
        Some(found) => Err(RisonError::Unexpected {
            found,
            at: reader.position,
        }),
    }
}

struct Reader<'a> {
    characters: &'a [char],
    position: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.characters.get(self.position).copied()
    }

    fn next(&mut self) -> Result<char, RisonError> {
        let character = self.peek().ok_or(RisonError::UnexpectedEnd)?;
        self.position += 1;
        Ok(character)
    }

    fn unexpected(&self, found: char) -> RisonError {
        RisonError::Unexpected {
            found,
            at: self.position.saturating_sub(1),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, RisonError> {
        if depth > MAX_DEPTH {
            return Err(RisonError::TooDeep);
        }
        match self.peek().ok_or(RisonError::UnexpectedEnd)? {
            '(' => {
                self.position += 1;
                self.object(depth)
            }
            '!' => {
                self.position += 1;
                match self.next()? {
                    '(' => self.array(depth),
                    't' => Ok(Value::Bool(true)),
                    'f' => Ok(Value::Bool(false)),
                    'n' => Ok(Value::Null),
                    other => Err(self.unexpected(other)),
                }
            }
            '\'' => {
                self.position += 1;
                self.quoted().map(Value::String)
            }
            '-' | '0'..='9' => self.number(),
            _ => self.id().map(Value::String),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, RisonError> {
        let mut members = Map::new();
        if self.peek() == Some(')') {
            self.position += 1;
            return Ok(Value::Object(members));
        }
        loop {
            let key = match self.peek().ok_or(RisonError::UnexpectedEnd)? {
                '\'' => {
                    self.position += 1;
                    self.quoted()?
                }
                _ => self.id()?,
            };
            match self.next()? {
                ':' => {}
                other => return Err(self.unexpected(other)),
            }
            let value = self.value(depth + 1)?;
            if members.insert(key.clone(), value).is_some() {
                return Err(RisonError::DuplicateKey { key });
            }
            match self.next()? {
                ',' => {}
                ')' => return Ok(Value::Object(members)),
                other => return Err(self.unexpected(other)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, RisonError> {
        let mut elements = Vec::new();
        if self.peek() == Some(')') {
            self.position += 1;
            return Ok(Value::Array(elements));
        }
        loop {
            elements.push(self.value(depth + 1)?);
            match self.next()? {
                ',' => {}
                ')' => return Ok(Value::Array(elements)),
                other => return Err(self.unexpected(other)),
            }
        }
    }

    /// After the opening `'`: `!!` is `!`, `!'` is `'`, any other `!` is an error.
    fn quoted(&mut self) -> Result<String, RisonError> {
        let mut text = String::new();
        loop {
            match self.next()? {
                '\'' => return Ok(text),
                '!' => match self.next()? {
                    '!' => text.push('!'),
                    '\'' => text.push('\''),
                    _ => {
                        return Err(RisonError::BadEscape {
                            at: self.position - 2,
                        });
                    }
                },
                other => text.push(other),
            }
        }
    }

    fn id(&mut self) -> Result<String, RisonError> {
        let start = self.position;
        match self.peek() {
            None => return Err(RisonError::UnexpectedEnd),
            Some(first) if !is_id_start(first) => {
                self.position += 1;
                return Err(self.unexpected(first));
            }
            Some(_) => {}
        }
        while let Some(character) = self.peek() {
            if !is_id_character(character) {
                break;
            }
            self.position += 1;
        }
        Ok(self.characters[start..self.position].iter().collect())
    }

    /// `-?digits[.digits][e[-]digits]`, as prison reads numbers.
    fn number(&mut self) -> Result<Value, RisonError> {
        let start = self.position;
        while let Some(character) = self.peek() {
            if character.is_ascii_digit() || matches!(character, '-' | '.' | 'e' | 'E' | '+') {
                self.position += 1;
            } else {
                break;
            }
        }
        let text: String = self.characters[start..self.position].iter().collect();
        let bad = || RisonError::BadNumber { text: text.clone() };
        if !is_rison_number(&text) {
            return Err(bad());
        }
        if let Ok(integer) = text.parse::<i64>() {
            return Ok(Value::Number(integer.into()));
        }
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(bad)
    }
}

/// The number syntax of the Rison grammar: an optional `-`, digits, an optional fraction
/// and an optional exponent with an optional `-`.
fn is_rison_number(text: &str) -> bool {
    let mut rest = text.strip_prefix('-').unwrap_or(text);
    let digits = |text: &str| text.bytes().take_while(u8::is_ascii_digit).count();
    let integer = digits(rest);
    if integer == 0 {
        return false;
    }
    rest = &rest[integer..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let count = digits(fraction);
        if count == 0 {
            return false;
        }
        rest = &fraction[count..];
    }
    if let Some(exponent) = rest.strip_prefix(['e', 'E']) {
        let exponent = exponent.strip_prefix('-').unwrap_or(exponent);
        let count = digits(exponent);
        if count == 0 {
            return false;
        }
        rest = &exponent[count..];
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn superset_results_parameters_are_read() {
        assert_eq!(
            parse("(key:'a1-b2',rows:100)").unwrap(),
            json!({"key": "a1-b2", "rows": 100})
        );
        assert_eq!(parse("(key:abc)").unwrap(), json!({"key": "abc"}));
        assert_eq!(
            parse("(filters:!((col:id,opr:eq,value:'it!'s')),page:0)").unwrap(),
            json!({"filters": [{"col": "id", "opr": "eq", "value": "it's"}], "page": 0})
        );
        assert_eq!(parse("!(1,2,-3)").unwrap(), json!([1, 2, -3]));
        assert_eq!(
            parse("(a:!t,b:!f,c:!n)").unwrap(),
            json!({"a": true, "b": false, "c": null})
        );
        assert_eq!(parse("'!!'").unwrap(), json!("!"));
    }

    #[test]
    fn readings_that_could_differ_are_refused() {
        assert!(matches!(
            parse("(key:mine,key:theirs)"),
            Err(RisonError::DuplicateKey { .. })
        ));
        assert!(parse("(key:'x'").is_err());
        assert!(parse("(key:'x')trailing").is_err());
        assert!(parse("(key:'a!b')").is_err());
        assert!(parse("(key:1.)").is_err());
        assert!(parse("(key:-)").is_err());
        assert!(parse("(:x)").is_err());
        assert!(parse(&"(a:".repeat(40)).is_err());
    }
}
