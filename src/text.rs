//! Text a client chose, made safe to show. One rule for the request path's log lines and the
//! ledger commands' tables, so that what is escaped in one is escaped in the other.

use std::borrow::Cow;

/// Client-chosen text made safe for one line of a log or a terminal: control characters (a
/// newline could forge a log line or a table row, an escape sequence would reach the
/// terminal) are shown as `\u{..}`; everything else is kept as sent. Borrows when there is
/// nothing to escape, which is almost always.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("order-1 №7"), "order-1 №7");
        assert!(matches!(printable("order-1 №7"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\r\u{1b}"), "a\\u{a}b\\u{d}\\u{1b}");
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\u{a}b\\u{1b}[31m");
    }
}
