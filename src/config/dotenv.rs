//! A reader for dotenv files, the format the backend's `.env` already uses, so ops can keep one
//! file for the backend and the gateway.
//!
//! The syntax is python-dotenv's for the common cases: `NAME=value`, optional `export `,
//! whitespace around `=`, `#` comments (a comment in an unquoted value needs whitespace before
//! the `#`), `'single'` quotes (with python-dotenv's `\\` and `\'` escapes), `"double"` quotes with `\\ \" \' \n \r \t`
//! escapes, quoted values spanning lines. Unlike python-dotenv, nothing is interpolated (`${X}`
//! stays as written) and trailing whitespace of an unquoted value is kept, so the caller can
//! refuse a key that carries it instead of trimming it silently.

/// One `NAME=value` assignment and the line it starts on (1-based). Its `Debug` hides the
/// value: values include secret keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub value: String,
    pub line: usize,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Assignment({} on line {}, value hidden)",
            self.name, self.line
        )
    }
}

/// A line that could not be read, with the name it assigns when that much was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub name: Option<String>,
    pub message: &'static str,
}

/// Reads every assignment; lines that are not assignments are reported, not guessed at.
pub fn parse(text: &str) -> (Vec<Assignment>, Vec<SyntaxError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    let mut line = 1;
    while !rest.is_empty() {
        let start_line = line;
        let (stmt_len, result) = statement(rest);
        line += rest[..stmt_len].matches('\n').count();
        rest = &rest[stmt_len..];
        match result {
            Ok(Some((name, value))) => out.push(Assignment {
                name,
                value,
                line: start_line,
            }),
            Ok(None) => {}
            Err((name, message)) => errors.push(SyntaxError {
                line: start_line,
                name,
                message,
            }),
        }
    }
    (out, errors)
}

type Stmt = Result<Option<(String, String)>, (Option<String>, &'static str)>;

/// Reads one statement from the start of `s`; returns how many bytes it used.
fn statement(s: &str) -> (usize, Stmt) {
    let line_end = s.find('\n').map_or(s.len(), |i| i + 1);
    let line = s[..line_end].trim_end_matches(['\n', '\r']);
    let body = line.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return (line_end, Ok(None));
    }
    let body = body.strip_prefix("export ").map_or(body, str::trim_start);
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if name.is_empty() {
        return (line_end, Err((None, "not a NAME=value line")));
    }
    let after_name = body[name_len..].trim_start_matches([' ', '\t']);
    let Some(value_part) = after_name.strip_prefix('=') else {
        return (
            line_end,
            Err((Some(name.to_owned()), "no '=' after the name")),
        );
    };
    let value_part = value_part.trim_start_matches([' ', '\t']);
    // Offset of the value inside `s`, to read quoted values across lines.
    let value_at = value_part.as_ptr() as usize - s.as_ptr() as usize;
    let err = |message| Err((Some(name.to_owned()), message));
    match value_part.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let Some((value, used)) = quoted(&s[value_at + 1..], q) else {
                return (s.len(), err("unterminated quoted value"));
            };
            let end = value_at + 1 + used;
            let tail_end = s[end..].find('\n').map_or(s.len(), |i| end + i + 1);
            let tail = s[end..tail_end].trim();
            if !(tail.is_empty() || tail.starts_with('#')) {
                return (tail_end, err("text after the closing quote"));
            }
            match value {
                Some(v) => (tail_end, Ok(Some((name.to_owned(), v)))),
                None => (tail_end, err("unsupported escape in double-quoted value")),
            }
        }
        _ => {
            let value = cut_comment(value_part).unwrap_or(value_part);
            (line_end, Ok(Some((name.to_owned(), value.to_owned()))))
        }
    }
}

/// Cuts an unquoted value at the first `#` that follows whitespace.
fn cut_comment(v: &str) -> Option<&str> {
    let bytes = v.as_bytes();
    (1..bytes.len())
        .find(|&i| bytes[i] == b'#' && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t'))
        .map(|i| v[..i].trim_end_matches([' ', '\t']))
}

/// Reads a quoted value after its opening quote. Returns the value (None on a bad escape) and
/// the bytes used including the closing quote, or None when the quote never closes.
fn quoted(s: &str, q: char) -> Option<(Option<String>, usize)> {
    let mut out = String::new();
    let mut ok = true;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == q => return Some((ok.then_some(out), i + 1)),
            // python-dotenv's single-quote escapes: `\\` and `\'` only.
            '\\' if q == '\'' => match chars.clone().next() {
                Some((_, e @ ('\\' | '\''))) => {
                    chars.next();
                    out.push(e);
                }
                _ => out.push('\\'),
            },
            '\\' if q == '"' => match chars.next() {
                Some((_, e @ ('\\' | '"' | '\''))) => out.push(e),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some((_, other)) => {
                    ok = false;
                    out.push(other);
                }
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, String, usize)> {
        let (a, e) = parse(text);
        assert_eq!(e, [], "{text}");
        a.into_iter().map(|a| (a.name, a.value, a.line)).collect()
    }

    fn one(text: &str) -> String {
        let v = values(text);
        assert_eq!(v.len(), 1, "{text}");
        v[0].1.clone()
    }

    #[test]
    fn common_forms() {
        assert_eq!(one("A=b"), "b");
        assert_eq!(one("export A=b\n"), "b");
        assert_eq!(one("A = b"), "b");
        assert_eq!(one("A=b#c"), "b#c");
        assert_eq!(one("A=b #c"), "b");
        assert_eq!(one("A=b c #d"), "b c");
        assert_eq!(one("A='b c#d \\n'"), "b c#d \\n");
        assert_eq!(one("A='a\\\\b\\'c'"), "a\\b'c");
        assert_eq!(one("A=\"b\\\"c\\n\" # note"), "b\"c\n");
        assert_eq!(one("A=${X}"), "${X}");
        assert_eq!(one("A="), "");
        assert_eq!(one("A=b\r\n"), "b");
    }

    #[test]
    fn trailing_whitespace_is_kept_for_the_caller_to_refuse() {
        assert_eq!(one("A=b  "), "b  ");
        assert_eq!(one("A=' b'"), " b");
    }

    #[test]
    fn comments_blank_lines_and_line_numbers() {
        let v = values("# c\n\nA=1\n  # x\nB=\"multi\nline\"\nC=3\n");
        assert_eq!(
            v,
            [
                ("A".into(), "1".into(), 3),
                ("B".into(), "multi\nline".into(), 5),
                ("C".into(), "3".into(), 7)
            ]
        );
    }

    #[test]
    fn errors_name_the_line_and_variable() {
        let (a, e) = parse("A=1\nnot a line\nB='open\nC=2\n");
        assert_eq!(a.len(), 1);
        assert_eq!(e[0].line, 2);
        assert_eq!(e[1].line, 3);
        assert_eq!(e[1].name.as_deref(), Some("B"));
        let (_, e) = parse("A=\"x\\q\"\nB='x' y\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].message, "unsupported escape in double-quoted value");
        assert_eq!(e[1].message, "text after the closing quote");
    }
}
