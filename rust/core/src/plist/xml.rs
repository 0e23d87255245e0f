//! XML property lists: read with quick-xml (no DTD subsets, no entities), written the way
//! `plistlib` writes them (Apple's DOCTYPE, tab indentation, keys sorted on request).

use base64::Engine as _;
use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::reader::Reader;

use crate::xmltext::{
    check_attributes, check_misc, check_pi, first_invalid_char, is_blank, is_xml_char, Problem,
    Prolog,
};

use super::date::{civil_from_seconds, days_in_month, seconds_from_civil, Civil};
use super::{
    join_path, Builder, DecodeError, EncodeError, ErrorKind, Limits, Value, MAX_INTEGER,
    MIN_INTEGER,
};

struct Parser<'a, 'b, B: Builder> {
    builder: &'b mut B,
    input: &'a str,
    prolog: Prolog,
    reader: Reader<&'a [u8]>,
    limits: Limits,
    nodes: usize,
    offset: usize,
    base: usize,
}

enum Step<'a> {
    Start(&'a str, bool),
    End,
    Eof,
}

impl<'a, B: Builder> Parser<'a, '_, B> {
    fn err(&self, kind: ErrorKind, message: impl Into<String>) -> DecodeError {
        DecodeError::new(kind, self.base + self.offset, message)
    }

    fn read(&mut self) -> Result<Event<'a>, DecodeError> {
        self.offset = usize::try_from(self.reader.buffer_position()).unwrap_or(usize::MAX);
        self.reader.read_event().map_err(|e| {
            let at = usize::try_from(self.reader.error_position()).unwrap_or(self.offset);
            DecodeError::new(
                ErrorKind::Syntax,
                self.base + at,
                format!("malformed XML: {e}"),
            )
        })
    }

    fn name(&self, start: &quick_xml::events::BytesStart<'a>) -> Result<&'static str, DecodeError> {
        let name = start.name();
        KNOWN
            .iter()
            .copied()
            .find(|k| k.as_bytes() == name.as_ref())
            .ok_or_else(|| {
                let shown = String::from_utf8_lossy(name.as_ref());
                self.err(
                    ErrorKind::Structure,
                    format!("<{shown}> is not a plist element"),
                )
            })
    }

    /// The next element boundary, skipping comments, processing instructions and whitespace.
    fn problem(&self, p: Problem) -> DecodeError {
        p.at(self.base + self.offset)
    }

    fn start(
        &mut self,
        s: &quick_xml::events::BytesStart<'a>,
        empty: bool,
    ) -> Result<Step<'a>, DecodeError> {
        self.prolog.root();
        check_attributes(s).map_err(|p| self.problem(p))?;
        Ok(Step::Start(self.name(s)?, empty))
    }

    fn step(&mut self, inside: &str) -> Result<Step<'a>, DecodeError> {
        loop {
            match self.read()? {
                Event::Start(s) => return self.start(&s, false),
                Event::Empty(s) => return self.start(&s, true),
                Event::End(_) => return Ok(Step::End),
                Event::Eof => return Ok(Step::Eof),
                Event::Text(t) if is_blank(&t) => {}
                Event::Comment(t) => check_misc(&t).map_err(|p| self.problem(p))?,
                Event::PI(t) => check_pi(&t).map_err(|p| self.problem(p))?,
                Event::Decl(d) => self
                    .prolog
                    .decl(
                        self.offset,
                        self.input.as_bytes().get(self.offset..).unwrap_or_default(),
                        &d,
                    )
                    .map_err(|p| self.problem(p))?,
                Event::DocType(t) => {
                    let raw = self.input.as_bytes().get(self.offset..).unwrap_or_default();
                    let result = self.prolog.doctype(raw, &t);
                    result.map_err(|p| self.problem(p))?;
                }
                _ => {
                    return Err(self.err(
                        ErrorKind::Structure,
                        format!("unexpected text inside {inside}"),
                    ))
                }
            }
        }
    }

    /// Text content up to the element's end. A single run of text without references is
    /// borrowed from the input rather than copied.
    fn text(&mut self, element: &str) -> Result<Cow<'a, str>, DecodeError> {
        let mut first: Option<Cow<'a, str>> = None;
        let mut out = String::new();
        let push = |piece: Cow<'a, str>, first: &mut Option<Cow<'a, str>>, out: &mut String| {
            if let Some(f) = first.take() {
                out.push_str(&f);
            }
            if out.is_empty() {
                *first = Some(piece);
            } else {
                out.push_str(&piece);
            }
        };
        loop {
            match self.read()? {
                Event::Text(t) => {
                    let s = t
                        .xml10_content()
                        .map_err(|e| self.err(ErrorKind::Encoding, format!("{e}")))?;
                    push(s, &mut first, &mut out);
                }
                Event::CData(t) => {
                    let s = t
                        .xml10_content()
                        .map_err(|e| self.err(ErrorKind::Encoding, format!("{e}")))?;
                    push(s, &mut first, &mut out);
                }
                Event::GeneralRef(r) => {
                    let name = r.decode().unwrap_or_default();
                    let c = match name.as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        _ => match r.resolve_char_ref() {
                            Ok(Some(c)) if is_xml_char(c) => c,
                            Ok(Some(c)) => {
                                return Err(self.err(
                                    ErrorKind::Syntax,
                                    format!(
                                        "character U+{:04X} is not allowed in XML",
                                        u32::from(c)
                                    ),
                                ))
                            }
                            Ok(None) => {
                                return Err(self.err(
                                    ErrorKind::Entity,
                                    format!(
                                        "undefined entity &{name}; (entities are not expanded)"
                                    ),
                                ))
                            }
                            Err(e) => {
                                return Err(self.err(
                                    ErrorKind::Syntax,
                                    format!("bad character reference: {e}"),
                                ))
                            }
                        },
                    };
                    push(Cow::Owned(c.to_string()), &mut first, &mut out);
                }
                Event::End(_) => break,
                Event::Comment(t) => check_misc(&t).map_err(|p| self.problem(p))?,
                Event::PI(t) => check_pi(&t).map_err(|p| self.problem(p))?,
                Event::Start(_) | Event::Empty(_) => {
                    return Err(self.err(
                        ErrorKind::Structure,
                        format!("<{element}> must hold text, not elements"),
                    ))
                }
                _ => {
                    return Err(
                        self.err(ErrorKind::Syntax, format!("input ends inside <{element}>"))
                    )
                }
            }
        }
        let text = match first {
            Some(f) if out.is_empty() => f,
            Some(f) => {
                out.insert_str(0, &f);
                Cow::Owned(out)
            }
            None => Cow::Owned(out),
        };
        if let Some(c) = first_invalid_char(&text) {
            return Err(self.err(
                ErrorKind::Syntax,
                format!("character U+{:04X} is not allowed in XML", u32::from(c)),
            ));
        }
        Ok(text)
    }

    fn count(&mut self) -> Result<(), DecodeError> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(self.err(
                ErrorKind::Limit,
                format!(
                    "more than {} values (the node limit)",
                    self.limits.max_nodes
                ),
            ));
        }
        Ok(())
    }

    fn value(&mut self, name: &str, empty: bool, depth: usize) -> Result<B::Node, DecodeError> {
        self.count()?;
        let at = self.offset;
        let leaf = |p: &mut Self, name: &str| {
            if empty {
                Ok(Cow::Borrowed(""))
            } else {
                p.text(name)
            }
        };
        Ok(match name {
            "dict" | "array" => {
                if depth >= self.limits.max_depth {
                    return Err(self.err(
                        ErrorKind::Limit,
                        format!(
                            "nesting deeper than {} (the depth limit)",
                            self.limits.max_depth
                        ),
                    ));
                }
                if empty {
                    return Ok(if name == "dict" {
                        let d = self.builder.dict_start(0);
                        self.builder.dict_end(d)
                    } else {
                        let a = self.builder.array_start(0);
                        self.builder.array_end(a)
                    });
                }
                if name == "array" {
                    let mut items = self.builder.array_start(8);
                    loop {
                        match self.step("<array>")? {
                            Step::Start(child, e) => {
                                let item = self.value(child, e, depth + 1)?;
                                self.builder.array_push(&mut items, item);
                            }
                            Step::End => return Ok(self.builder.array_end(items)),
                            Step::Eof => {
                                return Err(self.err(ErrorKind::Syntax, "input ends inside <array>"))
                            }
                        }
                    }
                }
                let mut entries = self.builder.dict_start(8);
                loop {
                    let key = match self.step("<dict>")? {
                        Step::Start("key", true) => {
                            self.count()?;
                            Cow::Borrowed("")
                        }
                        Step::Start("key", false) => {
                            self.count()?;
                            self.text("key")?
                        }
                        Step::Start(other, _) => {
                            return Err(self.err(
                                ErrorKind::Structure,
                                format!("<{other}> in <dict> where a <key> belongs"),
                            ))
                        }
                        Step::End => return Ok(self.builder.dict_end(entries)),
                        Step::Eof => {
                            return Err(self.err(ErrorKind::Syntax, "input ends inside <dict>"))
                        }
                    };
                    match self.step("<dict>")? {
                        Step::Start("key", _) | Step::End => {
                            return Err(self.err(
                                ErrorKind::Structure,
                                format!("missing value for key {key:?}"),
                            ))
                        }
                        Step::Start(child, e) => {
                            let k = self.builder.key(&key);
                            let v = self.value(child, e, depth + 1)?;
                            self.builder.dict_insert(&mut entries, k, v);
                        }
                        Step::Eof => {
                            return Err(self.err(ErrorKind::Syntax, "input ends inside <dict>"))
                        }
                    }
                }
            }
            "key" => return Err(self.err(ErrorKind::Structure, "<key> outside a <dict>")),
            "plist" => return Err(self.err(ErrorKind::Structure, "<plist> inside a plist")),
            "string" => {
                let t = leaf(self, name)?;
                self.builder.string(&t)
            }
            "true" | "false" => {
                if !empty {
                    let t = self.text(name)?;
                    if !t.trim_ascii().is_empty() {
                        return Err(
                            self.err(ErrorKind::Structure, format!("<{name}> must be empty"))
                        );
                    }
                }
                self.builder.boolean(name == "true")
            }
            "integer" => {
                let t = leaf(self, name)?;
                let i = parse_integer(&t).ok_or_else(|| {
                    DecodeError::new(
                        ErrorKind::Structure,
                        self.base + at,
                        format!("<integer> holds {t:?}, not an integer from -2^63 to 2^64-1"),
                    )
                })?;
                self.builder.integer(i)
            }
            "real" => {
                let t = leaf(self, name)?;
                let r = parse_real(&t).ok_or_else(|| {
                    DecodeError::new(
                        ErrorKind::Structure,
                        self.base + at,
                        format!("<real> holds {t:?}, not a number"),
                    )
                })?;
                self.builder.real(r)
            }
            "date" => {
                let t = leaf(self, name)?;
                let c = parse_date(&t).ok_or_else(|| {
                    DecodeError::new(
                        ErrorKind::Structure,
                        self.base + at,
                        format!("<date> holds {t:?}, not YYYY-MM-DDTHH:MM:SSZ"),
                    )
                })?;
                #[allow(clippy::cast_precision_loss)]
                self.builder.date(seconds_from_civil(&c) as f64)
            }
            "data" => {
                let t = leaf(self, name)?;
                let compact: Vec<u8> = t.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                let d = decode_base64(&compact).ok_or_else(|| {
                    DecodeError::new(
                        ErrorKind::Structure,
                        self.base + at,
                        "<data> is not valid base64",
                    )
                })?;
                self.builder.data(&d)
            }
            other => {
                return Err(self.err(
                    ErrorKind::Structure,
                    format!("<{other}> is not a plist value"),
                ))
            }
        })
    }
}

const KNOWN: [&str; 11] = [
    "plist", "dict", "key", "array", "string", "integer", "real", "true", "false", "date", "data",
];

/// Standard base64 (whitespace already removed) as plistlib reads it with
/// `binascii.a2b_base64`: canonical input takes the fast path; otherwise `=` that does not
/// end a group is skipped, padding beyond what the last group needs is skipped, and loose
/// trailing bits are dropped. Refused where plistlib refuses (a group of one digit, or two
/// or three digits without their padding), and where it would read something else than the
/// text says: characters outside the alphabet (plistlib skips them) and base64 digits
/// after the padding that ends a group (plistlib stops there and drops them).
fn decode_base64(compact: &[u8]) -> Option<Vec<u8>> {
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(compact) {
        return Some(bytes);
    }
    let mut out = Vec::with_capacity(compact.len() / 4 * 3 + 2);
    // `quad`: digits of the current group read so far; `pads`: `=` counted towards it.
    let (mut quad, mut pads, mut left) = (0u32, 0u32, 0u32);
    for (i, &c) in compact.iter().enumerate() {
        if c == b'=' {
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    // The group is complete: what follows may only be more padding.
                    return compact[i + 1..].iter().all(|&b| b == b'=').then_some(out);
                }
            }
            continue;
        }
        let digit = base64_digit(c)?;
        pads = 0;
        #[allow(clippy::cast_possible_truncation)] // each byte is masked to 8 bits
        match quad {
            0 => left = digit,
            1 => {
                out.push(((left << 2 | digit >> 4) & 0xFF) as u8);
                left = digit & 0x0F;
            }
            2 => {
                out.push(((left << 4 | digit >> 2) & 0xFF) as u8);
                left = digit & 0x03;
            }
            _ => out.push(((left << 6 | digit) & 0xFF) as u8),
        }
        quad = (quad + 1) % 4;
    }
    (quad == 0).then_some(out)
}

fn base64_digit(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Python's `int()` as plistlib uses it: optional sign, decimal or `0x` hexadecimal.
fn parse_integer(text: &str) -> Option<i128> {
    let t = text.trim_ascii();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i128::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.starts_with(['+', '-']));
    }
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<i128>()
        .ok()
        .filter(|i| (MIN_INTEGER..=MAX_INTEGER).contains(i))
}

/// Python's `float()`: decimal or exponent notation, `nan`, `inf`, `infinity`, any case.
fn parse_real(text: &str) -> Option<f64> {
    let t = text.trim_ascii();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let special = unsigned.to_ascii_lowercase();
    if matches!(special.as_str(), "nan" | "inf" | "infinity") {
        let v = if special == "nan" {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Some(if t.starts_with('-') { -v } else { v });
    }
    if unsigned.is_empty()
        || !unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    t.parse::<f64>().ok()
}

/// `YYYY-MM-DD[THH[:MM[:SS]]]Z`: plistlib's reader without the forms it cannot turn into a
/// datetime (year or month alone) and without text after the `Z`.
fn parse_date(text: &str) -> Option<Civil> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let year = i64::from(num(0, 4)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let mut c = Civil {
        year,
        month: num(5, 2)?,
        day: num(8, 2)?,
        hour: 0,
        minute: 0,
        second: 0,
    };
    let mut at = 10;
    for (sep, field) in [(b'T', 0), (b':', 1), (b':', 2)] {
        if b.get(at) != Some(&sep) {
            break;
        }
        let v = num(at + 1, 2)?;
        match field {
            0 => c.hour = v,
            1 => c.minute = v,
            _ => c.second = v,
        }
        at += 3;
    }
    if b.get(at) != Some(&b'Z') || at + 1 != b.len() {
        return None;
    }
    let valid = (1..=9999).contains(&c.year)
        && (1..=12).contains(&c.month)
        && c.day >= 1
        && c.day <= days_in_month(c.year, c.month)
        && c.hour < 24
        && c.minute < 60
        && c.second < 60;
    valid.then_some(c)
}

pub(crate) fn decode<B: Builder>(
    data: &[u8],
    limits: &Limits,
    builder: &mut B,
) -> Result<B::Node, DecodeError> {
    let text = std::str::from_utf8(data).map_err(|e| {
        DecodeError::new(
            ErrorKind::Encoding,
            e.valid_up_to(),
            "plist is not valid UTF-8",
        )
    })?;
    let (text, base) = match text.strip_prefix('\u{feff}') {
        Some(rest) => (rest, 3),
        None => (text, 0),
    };
    // plistlib only reads XML that starts with a declaration or the plist element; a leading
    // DOCTYPE or comment is let through so that its own problems are named.
    if !(text.starts_with("<?xml") || text.starts_with("<plist") || text.starts_with("<!")) {
        return Err(DecodeError::new(
            ErrorKind::Structure,
            base,
            "not a plist: XML plists start with <?xml or <plist, binary ones with bplist00",
        ));
    }
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = true;
    config.trim_text(false);
    let mut p = Parser {
        builder,
        input: text,
        prolog: Prolog::default(),
        reader,
        limits: *limits,
        nodes: 0,
        offset: 0,
        base,
    };
    let value = match p.step("the document")? {
        Step::Start("plist", true) => return Err(p.err(ErrorKind::Structure, "empty <plist>")),
        Step::Start("plist", false) => {
            let v = match p.step("<plist>")? {
                Step::Start(name, empty) => p.value(name, empty, 0)?,
                _ => return Err(p.err(ErrorKind::Structure, "empty <plist>")),
            };
            match p.step("<plist>")? {
                Step::End => v,
                _ => return Err(p.err(ErrorKind::Structure, "<plist> holds more than one value")),
            }
        }
        Step::Start(name, empty) => p.value(name, empty, 0)?,
        Step::End | Step::Eof => return Err(p.err(ErrorKind::Syntax, "no plist in the input")),
    };
    match p.step("the document")? {
        Step::Eof => Ok(value),
        _ => Err(p.err(ErrorKind::Syntax, "content after the plist")),
    }
}

// ---------------------------------------------------------------- writing

const HEADER: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n";

fn escape(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    crate::xmltext::escape_into(out, text, false).map_err(|c| {
        if c < ' ' {
            "strings can't contain control characters; use bytes instead".to_owned()
        } else {
            format!("strings can't contain U+{:04X} in XML", u32::from(c))
        }
    })
}

struct Writer {
    out: Vec<u8>,
    sort_keys: bool,
}

impl Writer {
    fn indent(&mut self, depth: usize) {
        self.out.extend(std::iter::repeat_n(b'\t', depth));
    }

    fn leaf(&mut self, depth: usize, tag: &str, text: &str) {
        self.indent(depth);
        self.out.push(b'<');
        self.out.extend_from_slice(tag.as_bytes());
        self.out.push(b'>');
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(tag.as_bytes());
        self.out.extend_from_slice(b">\n");
    }

    fn string(&mut self, depth: usize, tag: &str, text: &str) -> Result<(), String> {
        self.indent(depth);
        self.out.push(b'<');
        self.out.extend_from_slice(tag.as_bytes());
        self.out.push(b'>');
        escape(&mut self.out, text)?;
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(tag.as_bytes());
        self.out.extend_from_slice(b">\n");
        Ok(())
    }

    fn value(
        &mut self,
        v: &Value,
        depth: usize,
        path: &dyn Fn() -> String,
    ) -> Result<(), EncodeError> {
        let fail = |message: String, overflow: bool| EncodeError {
            path: path(),
            message,
            overflow,
        };
        match v {
            Value::String(s) => self
                .string(depth, "string", s)
                .map_err(|m| fail(m, false))?,
            Value::Boolean(b) => {
                self.indent(depth);
                self.out
                    .extend_from_slice(if *b { b"<true/>\n" } else { b"<false/>\n" });
            }
            Value::Integer(i) => {
                if !(MIN_INTEGER..=MAX_INTEGER).contains(i) {
                    return Err(fail(
                        format!("{i} is outside the integers a plist holds"),
                        true,
                    ));
                }
                self.leaf(depth, "integer", &i.to_string());
            }
            Value::Real(r) => self.leaf(depth, "real", &format_real(*r)),
            Value::Date(secs) => {
                let whole = secs.floor();
                let c = civil_from_seconds(whole)
                    .ok_or_else(|| fail("date is outside years 1-9999".into(), false))?;
                let text = format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    c.year, c.month, c.day, c.hour, c.minute, c.second
                );
                self.leaf(depth, "date", &text);
            }
            Value::Data(bytes) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                self.leaf(depth, "data", &encoded);
            }
            Value::Uid(_) => {
                return Err(fail(
                    "UID values can only be written to binary plists".into(),
                    false,
                ))
            }
            Value::Null => return Err(fail("None cannot be written to a plist".into(), false)),
            Value::Array(items) => {
                self.indent(depth);
                if items.is_empty() {
                    self.out.extend_from_slice(b"<array/>\n");
                    return Ok(());
                }
                self.out.extend_from_slice(b"<array>\n");
                for (i, item) in items.iter().enumerate() {
                    self.value(item, depth + 1, &|| join_path(path, &format!("[{i}]")))?;
                }
                self.indent(depth);
                self.out.extend_from_slice(b"</array>\n");
            }
            Value::Dict(entries) => {
                self.indent(depth);
                if entries.is_empty() {
                    self.out.extend_from_slice(b"<dict/>\n");
                    return Ok(());
                }
                self.out.extend_from_slice(b"<dict>\n");
                let mut order: Vec<&(String, Value)> = entries.iter().collect();
                if self.sort_keys {
                    order.sort_by(|a, b| a.0.cmp(&b.0));
                }
                for (key, item) in order {
                    let here = || join_path(path, &format!(".{key}"));
                    self.string(depth + 1, "key", key)
                        .map_err(|m| EncodeError {
                            path: here(),
                            message: m,
                            overflow: false,
                        })?;
                    self.value(item, depth + 1, &here)?;
                }
                self.indent(depth);
                self.out.extend_from_slice(b"</dict>\n");
            }
        }
        Ok(())
    }
}

/// Python's `repr(float)` spelling, so the text reads back to the same value everywhere.
pub(crate) fn format_real(r: f64) -> String {
    if r.is_nan() {
        "nan".into()
    } else if r.is_infinite() {
        if r > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{r:?}")
    }
}

pub fn encode_xml(value: &Value, sort_keys: bool) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer {
        out: Vec::with_capacity(4096),
        sort_keys,
    };
    w.out.extend_from_slice(HEADER);
    w.value(value, 0, &String::new)?;
    w.out.extend_from_slice(b"</plist>\n");
    Ok(w.out)
}
