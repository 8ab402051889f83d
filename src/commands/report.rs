//! What `payments` and `recheck` share: their error type, opening the ledger the config
//! names (read-only), the window they read, and plain-text tables.

use std::io::{self, Write};
use std::path::Path;

use crate::config::{self, Environment, Loaded, Span};
use crate::ledger::{self, LedgerError, Location, Store};
use crate::text::printable;

/// Why a ledger command could not answer. Exit status 1, with this as the message.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The configuration has problems (each listed), as `check` reports them.
    #[error("{path}: configuration has problems (run check):\n{problems}")]
    Config { path: String, problems: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot write the output: {0}")]
    Io(#[from] io::Error),
}

/// `text`: a table for a person; `json`: one object per line for a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Loads the configuration as `serve` does, and opens its ledger read-only.
pub fn open(path: &Path, env: &Environment) -> Result<(Loaded, Store), CommandError> {
    let loaded = config::load(path, env).map_err(|e| CommandError::Config {
        path: path.display().to_string(),
        problems: e.to_string(),
    })?;
    let location = match Location::from_settings(&loaded.settings.ledger) {
        Ok(l) => l,
        Err(LedgerError::NotConfigured) => {
            return Err(CommandError::Usage(format!(
                "{}: no [ledger] database is set, so nothing was recorded",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let store = Store::open_reader(&location)?;
    Ok((loaded, store))
}

/// The start of a `--since` window ending now, in Unix microseconds.
pub fn window_start(now_us: i64, since: Span) -> i64 {
    now_us.saturating_sub(i64::try_from(since.0.as_micros()).unwrap_or(i64::MAX))
}

/// A span as a person writes it (`24h`, `7d`, `90m`), which `Span`'s own `Display` (seconds)
/// is not.
pub fn span_text(span: Span) -> String {
    let d = span.0;
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return span.to_string();
    }
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Now, in Unix microseconds.
pub fn now_us() -> i64 {
    ledger::unix_micros(std::time::SystemTime::now())
}

/// `-` for what is unknown.
pub fn or_dash(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| printable(v).into_owned())
}

/// A table with a header, its columns as wide as their widest cell (in characters), two
/// spaces apart; each row may carry indented lines below it (a `why:`).
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, cells: Vec<String>, below: Vec<String>) {
        self.rows.push((cells, below));
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut dyn Write| {
            let mut text = String::new();
            for (i, (c, w)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(c);
                if i + 1 < widths.len() {
                    text.extend(std::iter::repeat_n(' ', w - c.chars().count()));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(&mut self.header.iter().copied(), out)?;
        for (cells, below) in &self.rows {
            line(&mut cells.iter().map(String::as_str), out)?;
            for b in below {
                writeln!(out, "    {b}")?;
            }
        }
        Ok(())
    }
}

/// `prepare`, `complete`, or `None` for anything else, from `action` as sent.
pub fn action_name(action: Option<&str>) -> Option<&'static str> {
    match action {
        Some("0") => Some("prepare"),
        Some("1") => Some("complete"),
        _ => None,
    }
}

/// A service id or click_trans_id given on the command line: decimal digits.
pub fn decimal(flag: &str, value: &str) -> Result<String, CommandError> {
    if crate::click::callback::parse_id(value).is_some() {
        Ok(value.to_owned())
    } else {
        Err(CommandError::Usage(format!(
            "{flag} must be a decimal integer, not {:?}",
            printable(value)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_by_characters_and_trim_the_last_column() {
        let mut t = Table::new(&["A", "BB", "C"]);
        t.push(vec!["заказ".into(), "x".into(), "end".into()], vec![]);
        t.push(
            vec!["1".into(), "long".into(), "-".into()],
            vec!["why: because".into()],
        );
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A      BB    C\nзаказ  x     end\n1      long  -\n    why: because\n"
        );
    }

    #[test]
    fn client_text_cannot_break_a_line() {
        assert_eq!(or_dash(Some("order-1 №7")), "order-1 №7");
        assert_eq!(or_dash(Some("a\nb\u{1b}[31m")), "a\\u{a}b\\u{1b}[31m");
        assert_eq!(or_dash(None), "-");
    }

    #[test]
    fn windows_and_ids() {
        assert_eq!(window_start(10_000_000, Span::secs(3)), 7_000_000);
        assert_eq!(window_start(0, Span::secs(u64::MAX)), -i64::MAX);
        assert!(decimal("--service-id", "12345").is_ok());
        assert!(decimal("--service-id", "12a").is_err());
        assert_eq!(action_name(Some("1")), Some("complete"));
        assert_eq!(action_name(Some("2")), None);
        for (span, text) in [
            (Span::secs(86_400), "1d"),
            (Span::secs(90 * 86_400), "90d"),
            (Span::secs(24 * 3600 + 3600), "25h"),
            (Span::secs(5400), "90m"),
            (Span::secs(61), "61s"),
            (Span::millis(1500), "1500ms"),
            (Span::secs(0), "0s"),
        ] {
            assert_eq!(span_text(span), text);
        }
    }
}
