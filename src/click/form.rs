//! Strict form parsing over the raw body bytes, for the two encodings Django's `request.POST`
//! accepts: `application/x-www-form-urlencoded` (what Click sends) and `multipart/form-data`
//! (which some integrations document).
//!
//! The goal is parity with what the backend will read: wherever Django would read something
//! different from what this parser sees (an invalid `%` escape that Python keeps literally,
//! bytes that are not UTF-8 and that Python replaces with U+FFFD, a field whose name is itself
//! percent-encoded), this parser either decodes exactly as Django does or refuses the body.
//! Duplicate names are kept here and refused by the caller, since Django reads the *last* value
//! of a repeated key (`QueryDict.__getitem__`) and a verifier reading the first would be bypassed.

use std::borrow::Cow;

use super::hex;

/// Largest callback body accepted. Click's callbacks are under 1 KiB; 16 KiB leaves room for
/// long `merchant_trans_id`/`error_note` values without letting a body grow unbounded.
pub const MAX_CALLBACK_BODY: usize = 16 * 1024;

/// Django's default `DATA_UPLOAD_MAX_NUMBER_FIELDS` is 1000; a Click callback has 11 fields.
/// Capping far lower keeps duplicate detection cheap on hostile bodies.
pub const MAX_FIELDS: usize = 64;

/// Why a body is not a form this gateway will verify. Every variant is answered `-8`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("invalid percent-encoding at byte {0}")]
    BadPercent(usize),
    #[error("field {0:?} is not valid UTF-8 once decoded")]
    NotUtf8(String),
    #[error("more than {MAX_FIELDS} fields")]
    TooManyFields,
    #[error("malformed multipart body: {0}")]
    Multipart(&'static str),
}

/// The form encodings accepted on callback paths, from the request's `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormKind {
    UrlEncoded,
    Multipart { boundary: String },
}

impl FormKind {
    /// How a stored body is read again: as its recorded `Content-Type` says, urlencoded when
    /// none was recorded or it cannot be read (Click's own encoding).
    pub fn of_stored(content_type: Option<&str>) -> FormKind {
        content_type
            .and_then(|ct| FormKind::from_content_type(ct).ok())
            .unwrap_or(FormKind::UrlEncoded)
    }

    /// Reads a `Content-Type` value (RFC 9110 §8.3), as narrowly as Django reads it: the type
    /// and subtype compared case-insensitively (RFC 9110 §8.3.1; Django lowercases them
    /// before comparing), at most a `charset` that is UTF-8 in any case (the signature is
    /// defined over UTF-8 bytes) and, for multipart, one `boundary`. Any other parameter is
    /// refused, RFC 2231 forms like `boundary*=` above all: Django's header parser would
    /// honour them where this one would not.
    pub fn from_content_type(value: &str) -> Result<FormKind, &'static str> {
        let mut parts = value.split(';');
        let essence = parts.next().unwrap_or("").trim();
        let mut boundary = None;
        let mut charset = false;
        for param in parts {
            if param.trim().is_empty() {
                continue;
            }
            let Some((name, val)) = param.split_once('=') else {
                return Err("malformed content-type parameter");
            };
            let name = name.trim();
            let val = unquote(val.trim()).ok_or("malformed content-type parameter")?;
            if name.eq_ignore_ascii_case("charset") && !charset {
                if !val.eq_ignore_ascii_case("utf-8") {
                    return Err("charset is not utf-8");
                }
                charset = true;
            } else if name.eq_ignore_ascii_case("boundary") && boundary.is_none() {
                boundary = Some(val);
            } else {
                return Err("unexpected or repeated content-type parameter");
            }
        }
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        if is("application/x-www-form-urlencoded") {
            return match boundary {
                None => Ok(FormKind::UrlEncoded),
                Some(_) => Err("unexpected or repeated content-type parameter"),
            };
        }
        if !is("multipart/form-data") {
            return Err("content-type is not a form");
        }
        match boundary {
            // RFC 2046 §5.1.1: 1 to 70 characters from a restricted set.
            Some(b) if is_boundary(&b) => Ok(FormKind::Multipart { boundary: b }),
            _ => Err("multipart/form-data without a valid boundary"),
        }
    }
}

/// RFC 2046 §5.1.1 `bchars`, 1 to 70 of them, not ending in a space.
fn is_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

fn unquote(v: &str) -> Option<String> {
    match v.strip_prefix('"') {
        None => Some(v.to_owned()),
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            // Quoted-pairs are legal but nobody sends them in a boundary; refuse rather than guess.
            (!inner.contains(['"', '\\'])).then(|| inner.to_owned())
        }
    }
}

/// One decoded field, with the raw bytes of its value as they stood in the body (used by the
/// diagnosis to tell "the signer hashed the still-encoded value").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Cow<'a, str>,
    pub value: Cow<'a, str>,
    pub raw_value: &'a str,
}

/// The fields of a body in the order they were sent, duplicates included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form<'a> {
    pub fields: Vec<Field<'a>>,
}

impl<'a> Form<'a> {
    pub fn parse(kind: &FormKind, body: &'a [u8]) -> Result<Form<'a>, FormError> {
        match kind {
            FormKind::UrlEncoded => parse_urlencoded(body),
            FormKind::Multipart { boundary } => parse_multipart(body, boundary.as_bytes()),
        }
    }

    /// All values sent under `name`.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Field<'a>> + 's {
        self.fields.iter().filter(move |f| f.name == name)
    }
}

/// Parses `application/x-www-form-urlencoded` the way Python's `urllib.parse.parse_qsl` does
/// for Django (`keep_blank_values=True`, separator `&` only): empty segments are skipped, a
/// segment without `=` is a name with an empty value, `+` is a space and `%XX` a byte, in
/// names and values alike. Unlike Python, an invalid `%` escape or a value that is not UTF-8
/// after decoding is an error rather than something silently kept or replaced.
pub fn parse_urlencoded(body: &[u8]) -> Result<Form<'_>, FormError> {
    // A body that is not UTF-8 as a whole is refused, whatever its escapes decode to: Django
    // would then read every raw non-ASCII byte differently (as Latin-1).
    match std::str::from_utf8(body) {
        Ok(text) => parse_urlencoded_text(text),
        Err(e) => Err(FormError::NotUtf8(field_at(body, e.valid_up_to()))),
    }
}

/// The (lossy, clipped) name of the field whose segment contains byte `at`, for errors.
fn field_at(body: &[u8], at: usize) -> String {
    let start = body[..at]
        .iter()
        .rposition(|&b| b == b'&')
        .map_or(0, |i| i + 1);
    let segment = &body[start..];
    let end = segment
        .iter()
        .position(|&b| b == b'=' || b == b'&')
        .unwrap_or(segment.len());
    name_for_error(&String::from_utf8_lossy(&segment[..end]))
}

/// Marks the bytes the urlencoded scanner stops at (`&`, `=`, `%`, `+`) in an 8-byte word:
/// bit 7 of byte `k` of the result is set exactly when byte `k` of `word` is one of them.
///
/// A word at a time rather than a byte at a time: a callback body is mostly digits and
/// letters, and this keeps the scan at a few instructions per 8 bytes. For each target, `x` is
/// zero where the byte matches; `(x & 0x7f) + 0x7f` sets bit 7 of every byte whose low seven
/// bits are not all zero, without carrying into the next byte, and `| x` adds the bytes whose
/// bit 7 is set, so the complement's bit 7 marks exactly the zero bytes.
fn special_bytes(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let zero_bytes = |x: u64| !(((x & LOW7) + LOW7) | x | LOW7);
    [b'&', b'=', b'%', b'+']
        .iter()
        .fold(0, |m, &t| m | zero_bytes(word ^ (u64::from(t) * ONES)))
}

fn parse_urlencoded_text(text: &str) -> Result<Form<'_>, FormError> {
    let mut fields = Vec::with_capacity(16);
    scan_segments(text, |seg| {
        if fields.len() == MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        fields.push(seg.decode(text)?);
        Ok(())
    })?;
    Ok(Form { fields })
}

/// A urlencoded body read straight into `N` slots: the callback fast path, with no field
/// vector and no second pass to sort the fields.
///
/// It only takes the common case, a body whose every name is known, sent once and not
/// escaped, and whose values decode to UTF-8; for anything else [`SlotForm::parse`] returns
/// `None` and the caller parses the body with [`Form::parse`], which then gives the precise
/// error or the same fields. Both read a body the same way: the same scanner, the same
/// decoding.
pub struct SlotForm<'a, const N: usize> {
    text: &'a str,
    spans: [SlotSpan; N],
    /// The decoded values of the slots whose value had escapes, one after the other.
    decoded: String,
}

/// Where a slot's value lies: its raw text in the body and, when it had anything to decode,
/// its decoded text in `decoded`. Offsets are `u16` so that a whole [`SlotForm`] is a few
/// cache lines that move cheaply; a longer body (callback bodies are capped at 16 KiB) takes
/// the general path.
#[derive(Clone, Copy)]
struct SlotSpan {
    raw: [u16; 2],
    decoded: [u16; 2],
}

impl SlotSpan {
    /// No offset reaches `u16::MAX`, since longer bodies are refused.
    const NONE: [u16; 2] = [u16::MAX; 2];
    const EMPTY: SlotSpan = SlotSpan {
        raw: Self::NONE,
        decoded: Self::NONE,
    };
}

impl<'a, const N: usize> SlotForm<'a, N> {
    /// `slot_of` names each field's slot; `None` for a name it does not know.
    pub fn parse(body: &'a [u8], slot_of: impl Fn(&str) -> Option<usize>) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let offset = |at: usize| u16::try_from(at).ok().filter(|&at| at < u16::MAX);
        offset(text.len())?;
        let mut spans = [SlotSpan::EMPTY; N];
        let mut escaped = [false; N];
        scan_segments(text, |seg| {
            let slot = (!seg.name_escaped)
                .then(|| slot_of(&text[seg.start..seg.name_end()]))
                .flatten()
                .ok_or(())?;
            let span = spans.get_mut(slot).ok_or(())?;
            if span.raw != SlotSpan::NONE {
                return Err(());
            }
            let value_at = seg.eq.map_or(seg.end, |e| e + 1);
            span.raw = [offset(value_at).ok_or(())?, offset(seg.end).ok_or(())?];
            escaped[slot] = seg.value_escaped;
            Ok(())
        })
        .ok()?;
        // Decoding never lengthens a value, so the decoded text fits in the body's length and
        // its offsets fit in u16 as the body's do.
        let mut decoded = Vec::with_capacity(if escaped.contains(&true) {
            text.len()
        } else {
            0
        });
        for (span, _) in spans.iter_mut().zip(escaped).filter(|(_, e)| *e) {
            let [start, end] = span.raw.map(usize::from);
            let from = decoded.len();
            decode_into(&text.as_bytes()[start..end], start, &mut decoded).ok()?;
            span.decoded = [offset(from)?, offset(decoded.len())?];
        }
        // One UTF-8 check for all the pieces: valid as a whole, each piece is valid on its own
        // exactly when it starts and ends on a char boundary (two halves of one character in
        // two fields would not be).
        let decoded = String::from_utf8(decoded).ok()?;
        let whole_chars = |s: &SlotSpan| {
            s.decoded == SlotSpan::NONE
                || s.decoded
                    .iter()
                    .all(|&at| decoded.is_char_boundary(usize::from(at)))
        };
        if !spans.iter().all(whole_chars) {
            return None;
        }
        Some(SlotForm {
            text,
            spans,
            decoded,
        })
    }

    /// Slot `k`'s value, decoded, and its raw text in the body.
    pub fn get(&self, k: usize) -> Option<(&str, &'a str)> {
        let span = self.spans.get(k).filter(|s| s.raw != SlotSpan::NONE)?;
        let [start, end] = span.raw.map(usize::from);
        let raw = self.text.get(start..end)?;
        let value = match span.decoded {
            SlotSpan::NONE => raw,
            [from, to] => self.decoded.get(usize::from(from)..usize::from(to))?,
        };
        Some((value, raw))
    }
}

/// One non-empty `&`-separated segment: `text[start..end]`, its first `=` at `eq`, and
/// whether its name or its value holds anything to decode.
#[derive(Clone, Copy)]
struct Segment {
    start: usize,
    eq: Option<usize>,
    end: usize,
    name_escaped: bool,
    value_escaped: bool,
}

impl Segment {
    fn name_end(&self) -> usize {
        self.eq.unwrap_or(self.end)
    }

    /// The segment as a field, decoded.
    fn decode<'a>(&self, text: &'a str) -> Result<Field<'a>, FormError> {
        let raw_name = &text[self.start..self.name_end()];
        let value_at = self.eq.map_or(self.end, |e| e + 1);
        let raw_value = &text[value_at..self.end];
        let name = decode_text(raw_name, self.start, self.name_escaped, || {
            raw_name.to_owned()
        })?;
        let value = decode_text(raw_value, value_at, self.value_escaped, || {
            name_for_error(&name)
        })?;
        Ok(Field {
            name,
            value,
            raw_value,
        })
    }
}

/// The 8 bytes at `at`, zero-padded past the end (a zero byte is never special).
fn word_at(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().unwrap_or_default()),
        None => {
            let mut w = [0u8; 8];
            let tail = bytes.get(at..).unwrap_or_default();
            w[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(w)
        }
    }
}

/// Finds the segments of a urlencoded body in one pass over its bytes, calling `each` on
/// every non-empty one in order (empty segments are skipped, as `parse_qsl` skips them). `&`,
/// `=`, `%` and `+` are ASCII, so every cut is on a char boundary.
fn scan_segments<E>(text: &str, mut each: impl FnMut(Segment) -> Result<(), E>) -> Result<(), E> {
    let bytes = text.as_bytes();
    let mut seg = Segment {
        start: 0,
        eq: None,
        end: 0,
        name_escaped: false,
        value_escaped: false,
    };
    let mut at = 0;
    while at < bytes.len() {
        let mut marks = special_bytes(word_at(bytes, at));
        while marks != 0 {
            // Little-endian: the lowest mark is the first special byte of the word.
            let i = at + (marks.trailing_zeros() / 8) as usize;
            marks &= marks - 1;
            match bytes[i] {
                b'&' => {
                    if i > seg.start {
                        each(Segment { end: i, ..seg })?;
                    }
                    seg = Segment {
                        start: i + 1,
                        eq: None,
                        end: 0,
                        name_escaped: false,
                        value_escaped: false,
                    };
                }
                b'=' if seg.eq.is_none() => seg.eq = Some(i),
                b'%' | b'+' if seg.eq.is_none() => seg.name_escaped = true,
                b'%' | b'+' => seg.value_escaped = true,
                _ => {}
            }
        }
        at += 8;
    }
    if bytes.len() > seg.start {
        each(Segment {
            end: bytes.len(),
            ..seg
        })?;
    }
    Ok(())
}

/// Decodes a component of a valid UTF-8 body: borrowed when the scanner saw nothing to decode
/// (the common case: ids, amounts, the signature), otherwise decoded and checked to be UTF-8.
#[inline]
fn decode_text<'a>(
    raw: &'a str,
    at: usize,
    escaped: bool,
    name: impl FnOnce() -> String,
) -> Result<Cow<'a, str>, FormError> {
    if !escaped {
        return Ok(Cow::Borrowed(raw));
    }
    String::from_utf8(decode_component(raw.as_bytes(), at)?)
        .map(Cow::Owned)
        .map_err(|_| FormError::NotUtf8(name()))
}

/// Decodes `+` and `%XX` as Python's `unquote_plus` does: an invalid escape is kept as
/// written. For reading text the gateway only inspects (query string names), never for a
/// value it verifies.
pub fn decode_lossy(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(byte) = raw.get(i + 1..i + 3).and_then(|p| hex::byte(p[0], p[1])) {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn name_for_error(name: &str) -> String {
    name.chars().take(40).collect()
}

/// Decodes `+` to a space and `%XX` to a byte, copying the plain runs between them whole.
/// `at` is the offset of `raw` in the body, for the error.
fn decode_component(raw: &[u8], at: usize) -> Result<Vec<u8>, FormError> {
    let mut out = Vec::with_capacity(raw.len());
    decode_into(raw, at, &mut out)?;
    Ok(out)
}

/// As [`decode_component`], appending to `out`.
fn decode_into(raw: &[u8], at: usize, out: &mut Vec<u8>) -> Result<(), FormError> {
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == b'%' || b == b'+') {
        out.extend_from_slice(&rest[..i]);
        if rest[i] == b'+' {
            out.push(b' ');
            rest = &rest[i + 1..];
            continue;
        }
        let byte = match rest.get(i + 1..i + 3) {
            Some(&[hi, lo]) => hex::byte(hi, lo),
            _ => None,
        };
        let Some(byte) = byte else {
            return Err(FormError::BadPercent(at + (raw.len() - rest.len()) + i));
        };
        out.push(byte);
        rest = &rest[i + 3..];
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// Parses `multipart/form-data` (RFC 7578) holding plain text fields only.
///
/// Deliberately narrower than RFC 2046 so that there is one reading of the body: it must start
/// with the first delimiter (no preamble) and end with the close delimiter (optionally followed
/// by CRLF, nothing else); `--boundary` appears nowhere but at the delimiters (Django splits
/// on it wherever it stands, even after a bare LF inside a value); each part has a
/// `Content-Disposition: form-data; name=...` without `filename`, a name of
/// `[A-Za-z0-9_]` only (Django strips whitespace and more from names), an optional
/// `Content-Type: text/plain` in UTF-8, and no `Content-Transfer-Encoding` other than an
/// identity one (Django would base64-decode such a field; the signer would not).
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Result<Form<'a>, FormError> {
    use FormError::Multipart as Bad;
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(boundary);
    // The first delimiter has no leading CRLF.
    let first = &delimiter[2..];
    let mut rest = body
        .strip_prefix(first)
        .ok_or(Bad("body does not start with the boundary"))?;
    let mut fields = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix(b"--") {
            return match after {
                b"" | b"\r\n" if count(body, first) == fields.len() + 1 => Ok(Form { fields }),
                b"" | b"\r\n" => Err(Bad("the boundary also appears inside a part")),
                _ => Err(Bad("data after the closing boundary")),
            };
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or(Bad("boundary not followed by CRLF"))?;
        let end = find(rest, &delimiter).ok_or(Bad("part without a closing boundary"))?;
        let part = &rest[..end];
        rest = &rest[end + delimiter.len()..];
        if fields.len() == MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        fields.push(parse_part(part)?);
    }
}

fn parse_part(part: &[u8]) -> Result<Field<'_>, FormError> {
    use FormError::Multipart as Bad;
    let split = find(part, b"\r\n\r\n").ok_or(Bad("part headers not terminated"))?;
    let (head, value) = (&part[..split], &part[split + 4..]);
    let head = std::str::from_utf8(head).map_err(|_| Bad("part headers are not UTF-8"))?;
    let mut name = None;
    for line in head.split("\r\n") {
        let (hname, hvalue) = line.split_once(':').ok_or(Bad("malformed part header"))?;
        let hvalue = hvalue.trim();
        if hname.eq_ignore_ascii_case("content-disposition") {
            if name.is_some() {
                return Err(Bad("repeated Content-Disposition"));
            }
            name = Some(disposition_name(hvalue)?);
        } else if hname.eq_ignore_ascii_case("content-type") {
            let mut params = hvalue.split(';');
            let essence = params.next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("text/plain") {
                return Err(Bad("part is not text/plain"));
            }
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .ok_or(Bad("malformed part Content-Type"))?;
                let v = v.trim().trim_matches('"');
                if k.trim().eq_ignore_ascii_case("charset")
                    && !v.eq_ignore_ascii_case("utf-8")
                    && !v.eq_ignore_ascii_case("utf8")
                {
                    return Err(Bad("part charset is not UTF-8"));
                }
            }
        } else if hname.eq_ignore_ascii_case("content-transfer-encoding") {
            if !["7bit", "8bit", "binary"]
                .iter()
                .any(|e| hvalue.eq_ignore_ascii_case(e))
            {
                return Err(Bad("part has a Content-Transfer-Encoding"));
            }
        } else {
            return Err(Bad("unexpected part header"));
        }
    }
    let name = name.ok_or(Bad("part without Content-Disposition"))?;
    let text = std::str::from_utf8(value).map_err(|_| FormError::NotUtf8(name_for_error(&name)))?;
    Ok(Field {
        name: Cow::Owned(name),
        value: Cow::Borrowed(text),
        raw_value: text,
    })
}

/// `form-data; name="field"` (RFC 7578 §4.2). File parts (`filename`) and RFC 2231 `name*`
/// are refused: a callback carries none, and each is a place where parsers disagree.
fn disposition_name(value: &str) -> Result<String, FormError> {
    use FormError::Multipart as Bad;
    let mut params = value.split(';');
    if !params
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("form-data"))
    {
        return Err(Bad("Content-Disposition is not form-data"));
    }
    let mut name = None;
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or(Bad("malformed Content-Disposition"))?;
        if !k.trim().eq_ignore_ascii_case("name") || name.is_some() {
            return Err(Bad(
                "Content-Disposition has parameters other than one name",
            ));
        }
        name = Some(unquote(v.trim()).ok_or(Bad("malformed field name"))?);
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or(Bad("part without a field name"))?;
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Bad("field name outside [A-Za-z0-9_]"));
    }
    Ok(name)
}

/// Occurrences of `needle` in `haystack`, overlapping ones included.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || haystack.len() < needle.len() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(form: &Form<'_>) -> Vec<(String, String)> {
        form.fields
            .iter()
            .map(|f| (f.name.to_string(), f.value.to_string()))
            .collect()
    }

    fn slots(body: &str) -> Option<SlotForm<'_, 3>> {
        SlotForm::parse(body.as_bytes(), |name| {
            ["a", "b", "c"].iter().position(|&n| n == name)
        })
    }

    #[test]
    fn slot_form_reads_known_fields_and_leaves_the_rest_to_the_general_path() {
        let form = slots("b=x+y%3Az&&a=1&c").unwrap();
        assert_eq!(form.get(0), Some(("1", "1")));
        assert_eq!(form.get(1), Some(("x y:z", "x+y%3Az")));
        assert_eq!(form.get(2), Some(("", "")));
        assert_eq!(form.get(3), None);
        assert_eq!(slots("a=1").unwrap().get(1), None);
        for unusual in [
            "a=1&a=2",     // repeated
            "a=1&d=2",     // unknown
            "%61=1",       // escaped name
            "a+=1",        // escaped name
            "a=%zz",       // bad escape
            "a=%C3",       // not UTF-8 once decoded
            "a=%C3&b=%A9", // half a character in each of two fields
        ] {
            assert!(slots(unusual).is_none(), "{unusual}");
        }
        assert!(SlotForm::<1>::parse(&[0xff], |_| Some(0)).is_none());
        let long = format!("a={}", "1".repeat(usize::from(u16::MAX)));
        assert!(slots(&long).is_none());
    }

    #[test]
    fn decodes_plus_and_percent_in_names_and_values() {
        let form = parse_urlencoded(b"a=1+2&sign%5Ftime=2024-05-01+12%3A30%3A45&x=%D0%B7").unwrap();
        assert_eq!(
            pairs(&form),
            [
                ("a", "1 2"),
                ("sign_time", "2024-05-01 12:30:45"),
                ("x", "з")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(form.fields[1].raw_value, "2024-05-01+12%3A30%3A45");
        assert!(matches!(form.fields[0].name, Cow::Borrowed(_)));
    }

    #[test]
    fn blank_segments_and_bare_names_follow_parse_qsl() {
        let form = parse_urlencoded(b"&a&&b=&c=3&").unwrap();
        assert_eq!(
            pairs(&form),
            [("a", ""), ("b", ""), ("c", "3")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(parse_urlencoded(b"").unwrap().fields.len(), 0);
    }

    #[test]
    fn rejects_bad_escapes_and_non_utf8() {
        assert_eq!(parse_urlencoded(b"a=%zz"), Err(FormError::BadPercent(2)));
        assert_eq!(parse_urlencoded(b"a=1&b=%4"), Err(FormError::BadPercent(6)));
        assert_eq!(parse_urlencoded(b"a=%"), Err(FormError::BadPercent(2)));
        assert_eq!(
            parse_urlencoded(b"amount=%FF"),
            Err(FormError::NotUtf8("amount".into()))
        );
        assert!(matches!(
            parse_urlencoded(b"a=\xff"),
            Err(FormError::NotUtf8(_))
        ));
        assert!(matches!(
            parse_urlencoded(b"%C3=1"),
            Err(FormError::NotUtf8(_))
        ));
    }

    #[test]
    fn encoded_name_is_a_duplicate_of_the_plain_one() {
        // Names are compared decoded (`Slots::of` refuses the repeat).
        let form = parse_urlencoded(b"action=0&%61ction=1").unwrap();
        assert_eq!(form.fields[0].name, "action");
        assert_eq!(form.fields[1].name, "action");
    }

    #[test]
    fn caps_field_count() {
        let body = "a=1&".repeat(MAX_FIELDS + 1);
        assert_eq!(
            parse_urlencoded(body.as_bytes()),
            Err(FormError::TooManyFields)
        );
        let body = (0..MAX_FIELDS)
            .map(|i| format!("f{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            parse_urlencoded(body.as_bytes()).unwrap().fields.len(),
            MAX_FIELDS
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            FormKind::from_content_type("application/x-www-form-urlencoded; charset=UTF-8"),
            Ok(FormKind::UrlEncoded)
        );
        assert_eq!(
            FormKind::from_content_type("multipart/form-data; boundary=\"xYz\""),
            Ok(FormKind::Multipart {
                boundary: "xYz".into()
            })
        );
        assert!(
            FormKind::from_content_type("application/x-www-form-urlencoded; charset=latin1")
                .is_err()
        );
        // RFC 9110 §8.3.1: type, subtype and the charset value are case-insensitive (Django
        // lowercases the type too); the boundary is not (RFC 2046 §5.1.1).
        assert_eq!(
            FormKind::from_content_type("Application/X-WWW-Form-Urlencoded; Charset=utf-8"),
            Ok(FormKind::UrlEncoded)
        );
        assert_eq!(
            FormKind::from_content_type("MULTIPART/FORM-DATA; BOUNDARY=xYz"),
            Ok(FormKind::Multipart {
                boundary: "xYz".into()
            })
        );
        assert!(FormKind::from_content_type("multipart/form-data").is_err());
        assert!(FormKind::from_content_type("application/json").is_err());
        assert!(FormKind::from_content_type("").is_err());
        for refused in [
            "multipart/form-data; boundary=XX; boundary*=utf-8''YY",
            "multipart/form-data; boundary*=utf-8''YY",
            "multipart/form-data; boundary=XX; boundary=YY",
            "application/x-www-form-urlencoded; charset*=utf-8''latin1",
            "application/x-www-form-urlencoded; charset=utf8",
            "application/x-www-form-urlencoded; boundary=XX",
            "application/x-www-form-urlencodedx",
            "multipart/form-data; boundary=\"a\\b\"",
        ] {
            assert!(FormKind::from_content_type(refused).is_err(), "{refused}");
        }
    }

    const MP: &[u8] = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1 2\r\n--XX\r\ncontent-disposition: form-data; name=b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xd0\xb7\r\n--XX--\r\n";

    #[test]
    fn multipart_text_fields() {
        let form = parse_multipart(MP, b"XX").unwrap();
        assert_eq!(
            pairs(&form),
            [("a", "1 2"), ("b", "з")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn multipart_refuses_ambiguous_shapes() {
        let cases: &[&[u8]] = &[
            b"preamble\r\n--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"; filename=\"f\"\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name*=utf-8''a\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\nMQ==\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Type: application/octet-stream\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XX--\r\ntrailing",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n",
            b"--XX\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\r\n--XX--",
            // Django splits on the boundary wherever it stands, even after a bare LF.
            b"--XX\r\nContent-Disposition: form-data; name=\"error_note\"\r\n\r\nx--XX\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\n--XX\r\n--XX--",
            // Django strips names.
            b"--XX\r\nContent-Disposition: form-data; name=\" amount\"\r\n\r\n1\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=amount\x1f\r\n\r\n1\r\n--XX--",
        ];
        for body in cases {
            assert!(
                parse_multipart(body, b"XX").is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
