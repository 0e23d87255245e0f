//! Character-level XML rules shared by the SyncML and plist codecs.

/// Whether XML 1.0 allows `c` in a document.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The first character of `text` that XML cannot carry. Valid UTF-8 can only be outside the
/// XML range as a C0 control or U+FFFE/U+FFFF (EF BF BE/BF); both are rare, so the bytes are
/// scanned a block at a time before any character is looked at.
pub fn first_invalid_char(text: &str) -> Option<char> {
    let bytes = text.as_bytes();
    let control = bytes
        .chunks(32)
        .any(|block| block.iter().fold(false, |seen, &b| seen | (b < 0x20)));
    if control || memchr::memchr(0xEF, bytes).is_some() {
        text.chars().find(|c| !is_xml_char(*c))
    } else {
        None
    }
}

/// Appends `text` escaped once: `&`, `<` and `>` (also `"`, tab and newline in attribute
/// values). A carriage return becomes `&#13;`, because a parser would otherwise fold it into
/// a newline. Returns the first character XML cannot carry instead of writing it.
pub fn escape_into(out: &mut Vec<u8>, text: &str, attribute: bool) -> Result<(), char> {
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#13;",
            b'"' if attribute => b"&quot;",
            b'\n' if attribute => b"&#10;",
            b'\t' if attribute => b"&#9;",
            b'\t' | b'\n' => continue,
            0..=0x1f => return Err(char::from(b)),
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                return Err(if bytes[i + 2] == 0xBE {
                    '\u{FFFE}'
                } else {
                    '\u{FFFF}'
                })
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(rep);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    Ok(())
}

/// Problems found by the checks below; the caller knows the offset.
pub enum Problem {
    Syntax(String),
    Encoding(String),
    Entity(String),
}

impl Problem {
    pub fn at(self, offset: usize) -> crate::error::DecodeError {
        use crate::error::{DecodeError, ErrorKind};
        match self {
            Problem::Syntax(m) => DecodeError::new(ErrorKind::Syntax, offset, m),
            Problem::Encoding(m) => DecodeError::new(ErrorKind::Encoding, offset, m),
            Problem::Entity(m) => DecodeError::new(ErrorKind::Entity, offset, m),
        }
    }
}

/// XML's own whitespace: space, tab, carriage return and newline (not form feed).
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Comment and processing-instruction content must be XML characters too.
pub fn check_misc(content: &[u8]) -> Result<(), Problem> {
    let text = std::str::from_utf8(content)
        .map_err(|_| Problem::Encoding("comment is not UTF-8".into()))?;
    match first_invalid_char(text) {
        Some(c) => Err(Problem::Syntax(format!(
            "character U+{:04X} is not allowed in XML",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || matches!(b, b'_' | b':') || b >= 0x80
}

fn is_name_byte(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || matches!(b, b'-' | b'.')
}

fn is_literal_byte(b: u8) -> bool {
    b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r')
}

fn is_name(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| is_name_start(*b)) && bytes.iter().all(|b| is_name_byte(*b))
}

/// A processing instruction needs a name as its target, and `xml` in any case is reserved
/// for the declaration.
pub fn check_pi(pi: &quick_xml::events::BytesPI<'_>) -> Result<(), Problem> {
    let target = pi.target();
    if !is_name(target) || target.eq_ignore_ascii_case(b"xml") {
        return Err(Problem::Syntax("malformed processing instruction".into()));
    }
    check_misc(pi.content())
}

/// Every attribute of a start tag must be well-formed: quoted, unique, with a value whose
/// references are the predefined entities or character references, and XML characters only.
pub fn check_attributes(start: &quick_xml::events::BytesStart<'_>) -> Result<(), Problem> {
    if is_blank(start.attributes_raw()) {
        return Ok(());
    }
    for attr in start.attributes() {
        let attr = attr.map_err(|e| Problem::Syntax(format!("malformed attribute: {e}")))?;
        if !is_name(attr.key.as_ref()) {
            return Err(Problem::Syntax("malformed attribute name".into()));
        }
        if attr.value.contains(&b'<') {
            return Err(Problem::Syntax("'<' in an attribute value".into()));
        }
        // Only values with references need resolving; the rest are checked as they stand.
        let value = if attr.value.contains(&b'&') {
            attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| Problem::Entity(format!("attribute value: {e}")))?
        } else {
            String::from_utf8_lossy(&attr.value)
        };
        if let Some(c) = first_invalid_char(&value) {
            return Err(Problem::Syntax(format!(
                "character U+{:04X} is not allowed in XML",
                u32::from(c)
            )));
        }
    }
    Ok(())
}

/// Where the XML declaration and the DOCTYPE may stand, which quick-xml does not check.
#[derive(Default)]
pub struct Prolog {
    root_seen: bool,
    doctype_seen: bool,
}

impl Prolog {
    pub fn root(&mut self) {
        self.root_seen = true;
    }

    /// `raw` is the input from the declaration's `<` on.
    pub fn decl(
        &self,
        offset: usize,
        raw: &[u8],
        decl: &quick_xml::events::BytesDecl<'_>,
    ) -> Result<(), Problem> {
        if offset != 0 {
            return Err(Problem::Syntax(
                "the XML declaration must come first".into(),
            ));
        }
        if !decl_is_well_formed(raw) {
            return Err(Problem::Syntax("malformed XML declaration".into()));
        }
        match decl.version() {
            Ok(v) if v.as_ref() == b"1.0" || v.as_ref() == b"1.1" => {}
            _ => {
                return Err(Problem::Syntax(
                    "XML declaration without version 1.0".into(),
                ))
            }
        }
        if let Some(enc) = decl.encoding() {
            let enc = enc.map_err(|e| Problem::Syntax(format!("{e}")))?;
            if !enc.eq_ignore_ascii_case(b"utf-8") && !enc.eq_ignore_ascii_case(b"utf8") {
                return Err(Problem::Encoding(format!(
                    "declared encoding {} is not supported; send UTF-8",
                    String::from_utf8_lossy(&enc)
                )));
            }
        }
        Ok(())
    }

    /// `raw` is the input from the DOCTYPE's `<` on.
    pub fn doctype(&mut self, raw: &[u8], content: &[u8]) -> Result<(), Problem> {
        if content.contains(&b'[') || content.windows(6).any(|w| w == b"ENTITY") {
            return Err(Problem::Entity(
                "DOCTYPE with an internal subset or entity declarations is not accepted".into(),
            ));
        }
        if !doctype_is_well_formed(raw) {
            return Err(Problem::Syntax("malformed DOCTYPE".into()));
        }
        if self.root_seen || self.doctype_seen {
            return Err(Problem::Syntax(
                "a DOCTYPE may only come once, before the root element".into(),
            ));
        }
        self.doctype_seen = true;
        Ok(())
    }
}

fn skip_space(raw: &[u8], mut at: usize) -> usize {
    while raw
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        at += 1;
    }
    at
}

/// A quoted literal starting at `at`, whose bytes all satisfy `ok`; returns the index after it.
fn literal(raw: &[u8], at: usize, ok: impl Fn(u8) -> bool) -> Option<usize> {
    let quote = *raw.get(at)?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let len = raw[at + 1..].iter().position(|b| *b == quote)?;
    raw[at + 1..at + 1 + len]
        .iter()
        .all(|b| ok(*b))
        .then_some(at + len + 2)
}

/// `<?xml version="1.x" [encoding="..."] [standalone="yes|no"] ?>`, the grammar of XML 1.0
/// section 2.8 (quick-xml reads the declaration loosely).
fn decl_is_well_formed(raw: &[u8]) -> bool {
    let Some(mut at) = raw.strip_prefix(b"<?xml").map(|_| 5) else {
        return false;
    };
    let mut seen = 0;
    for (i, name) in [&b"version"[..], b"encoding", b"standalone"]
        .into_iter()
        .enumerate()
    {
        let after_space = skip_space(raw, at);
        if after_space == at || !raw[after_space..].starts_with(name) {
            if i == 0 {
                return false;
            }
            continue;
        }
        let eq = skip_space(raw, after_space + name.len());
        if raw.get(eq) != Some(&b'=') {
            return false;
        }
        let value_at = skip_space(raw, eq + 1);
        let ok = |b: u8| match i {
            0 => b.is_ascii_digit() || b == b'.',
            1 => b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'),
            _ => matches!(b, b'y' | b'e' | b's' | b'n' | b'o'),
        };
        match literal(raw, value_at, ok) {
            Some(end) => at = end,
            None => return false,
        }
        seen += 1;
    }
    seen > 0 && raw[skip_space(raw, at)..].starts_with(b"?>")
}

/// `<!DOCTYPE name [SYSTEM "uri" | PUBLIC "pubid" "uri"] >` without an internal subset
/// (section 2.8; the subset is refused earlier).
fn doctype_is_well_formed(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"<!DOCTYPE") else {
        return false;
    };
    let mut at = raw.len() - rest.len();
    let name_start = skip_space(raw, at);
    if name_start == at {
        return false;
    }
    let name_len = raw[name_start..]
        .iter()
        .position(|b| {
            !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') || *b >= 0x80)
        })
        .unwrap_or(0);
    if name_len == 0 || !is_name_start(raw[name_start]) {
        return false;
    }
    at = name_start + name_len;
    let id_at = skip_space(raw, at);
    let pubid = |b: u8| b.is_ascii_alphanumeric() || b" \r\n-'()+,./:=?;!*#@$_%".contains(&b);
    if id_at > at && raw[id_at..].starts_with(b"PUBLIC") {
        let p = skip_space(raw, id_at + 6);
        if p == id_at + 6 {
            return false;
        }
        let Some(end) = literal(raw, p, pubid) else {
            return false;
        };
        let s = skip_space(raw, end);
        if s == end {
            return false;
        }
        match literal(raw, s, is_literal_byte) {
            Some(end) => at = end,
            None => return false,
        }
    } else if id_at > at && raw[id_at..].starts_with(b"SYSTEM") {
        let s = skip_space(raw, id_at + 6);
        if s == id_at + 6 {
            return false;
        }
        match literal(raw, s, is_literal_byte) {
            Some(end) => at = end,
            None => return false,
        }
    }
    raw.get(skip_space(raw, at)) == Some(&b'>')
}
