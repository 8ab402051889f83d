//! The fields of a human-format log line, written as `tracing-subscriber`'s default
//! (`DefaultFields`) writes them, byte for byte, without its cost where a field is a plain
//! string or a number: those are most of a callback's line (`outcome::LogContext::line`), and
//! through `core::fmt` they were a tenth of a shipped gateway's instructions per callback
//! (callgrind, `benches/instructions.sh`).
//!
//! The default's rules, kept: fields are separated by one space; the `message` field comes
//! without its name and with terminal escapes shown escaped; any other field is `name=value`,
//! a leading `r#` dropped from the name, a string in the form of `{:?}` (quoted, escaped), a
//! number in decimal; anything else goes through its `Debug` as before.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The `FormatFields` of the human format (`fmt_fields(LogFields)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogFields;

impl<'a> MakeVisitor<Writer<'a>> for LogFields {
    type Visitor = Visitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Visitor<'a> {
        Visitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's fields (see the module docs).
pub struct Visitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// The separating space and `name=`, or nothing for `message`; false when an earlier
    /// write failed.
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
        let name = field.name();
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self
                .result
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }

    fn number(&mut self, field: &Field, digits: &str) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{digits}"));
        }
        if self.start(field) {
            self.result = self.writer.write_str(digits);
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{value}"));
        }
        if !self.start(field) {
            return;
        }
        // `{:?}` of a string that needs no escape is the string in quotes.
        self.result = if value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            self.writer
                .write_char('"')
                .and_then(|()| self.writer.write_str(value))
                .and_then(|()| self.writer.write_char('"'))
        } else {
            write!(self.writer, "{value:?}")
        };
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self.record_debug(
                field,
                &format_args!(
                    "{} {}.sources={}",
                    Escaped(format_args!("{value}")),
                    field.name(),
                    Sources(source)
                ),
            ),
            None => self.record_debug(field, &format_args!("{}", Escaped(format_args!("{value}")))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            write!(Escaping(&mut self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

impl VisitOutput<fmt::Result> for Visitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for Visitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Shows the characters that make a terminal act (escape, bell, backspace, form feed, delete
/// and the C1 controls) as escapes, as the default formatter does for messages and errors.
struct Escaping<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let acts = |c: char| {
            matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            )
        };
        if !s.chars().any(acts) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A value written through [`Escaping`].
struct Escaped<T>(T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// An error and its sources as a list, each escaped: `["outer", "inner"]`.
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(e) = next {
            list.entry(&DebugOf(Escaped(format_args!("{e}"))));
            next = e.source();
        }
        list.finish()
    }
}

/// Debug as its Display (the list's entries are written as the default writes them).
struct DebugOf<T>(T);

impl<T: fmt::Display> fmt::Debug for DebugOf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer \x1b[31m")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\u{85}")]
    struct Inner;

    /// Every kind of field, as the callback line and the rest of the gateway log them.
    fn log_all() {
        let text = "order-1 \"quoted\" \\ \x1b[31m \u{85} №7";
        let number: Option<u64> = Some(7);
        let absent: Option<&str> = None;
        tracing::warn!(
            request_id = "c16780e76d869b04",
            peer = %std::net::SocketAddr::from(([127, 0, 0, 1], 4000)),
            verdict = "rejected",
            error = -1i64,
            reason = Some("key_mismatch"),
            absent,
            service_id = number,
            merchant_trans_id = text,
            r#type = "raw",
            flag = true,
            path = ?"/click/prepare/",
            total_ms = 12u64,
            err = &Outer(Inner) as &(dyn std::error::Error + 'static),
            "callback rejected \x1b[2J {}",
            text
        );
        tracing::info!("{}", 5);
        tracing::info!(message = "as a field \x07", after = 1u64);
        tracing::info!(n = 3u64);
    }

    fn lines<F>(fields: F) -> String
    where
        F: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static + Send + Sync,
    {
        let out = Capture::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(out.clone())
                .with_ansi(false)
                .without_time()
                .fmt_fields(fields),
        );
        tracing::subscriber::with_default(subscriber, log_all);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_are_byte_for_byte_the_default_formatters() {
        let ours = lines(LogFields);
        assert_eq!(ours, lines(DefaultFields::new()));
        assert!(
            ours.contains(
                "merchant_trans_id=\"order-1 \\\"quoted\\\" \\\\ \\u{1b}[31m \\u{85} №7\""
            ),
            "{ours}"
        );
        assert!(ours.contains("total_ms=12"), "{ours}");
    }
}
