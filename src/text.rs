//! Text a client chose, made safe to show: in a one-line log or on a terminal.

/// Control characters (a newline would forge a log line or a table row, an escape sequence
/// would reach the terminal) shown as `\u{..}`; everything else is kept as sent.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
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
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("order-1 №7"), "order-1 №7");
        assert_eq!(printable("a\nb\r\u{1b}"), "a\\u{a}b\\u{d}\\u{1b}");
    }
}
