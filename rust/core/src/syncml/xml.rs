//! SyncML as XML: element events from quick-xml, with the hardening the gateway needs
//! (no DTD subsets or entity declarations, UTF-8 only, caps on depth and element count).

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use quick_xml::XmlVersion;

use super::decode::{Ev, Source};
use super::{Attrs, DecodeError, ErrorKind, Limits, Value};
use crate::xmltext::{
    check_attributes, check_misc, check_pi, first_invalid_char, is_blank, is_xml_char, Problem,
    Prolog,
};

/// The namespace Windows uses for its extra attributes on `Data` (`msft:originalerror`).
pub const MSFT_NS: &str = "http://schemas.microsoft.com/MobileDevice/MDM";

pub(crate) struct XmlSource<'a> {
    input: &'a str,
    reader: Reader<&'a [u8]>,
    limits: Limits,
    depth: usize,
    elements: usize,
    offset: usize,
    prolog: Prolog,
    /// Start tag of the element last entered, for `attrs`.
    current: Option<BytesStart<'a>>,
    /// In-scope `xmlns:prefix` declarations: (prefix, uri, depth declared at).
    prefixes: Vec<(String, String, usize)>,
}

impl<'a> XmlSource<'a> {
    pub(crate) fn new(data: &'a [u8], limits: &Limits) -> Result<XmlSource<'a>, DecodeError> {
        let input = std::str::from_utf8(data).map_err(|e| {
            DecodeError::new(
                ErrorKind::Encoding,
                e.valid_up_to(),
                "input is not valid UTF-8",
            )
        })?;
        // Offsets are counted from after a byte-order mark; `decode_as` adds it back.
        let input = input.strip_prefix('\u{feff}').unwrap_or(input);
        let mut reader = Reader::from_str(input);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        Ok(XmlSource {
            input,
            reader,
            limits: *limits,
            depth: 0,
            elements: 0,
            offset: 0,
            prolog: Prolog::default(),
            current: None,
            prefixes: Vec::new(),
        })
    }

    fn position(&self) -> usize {
        usize::try_from(self.reader.buffer_position()).unwrap_or(usize::MAX)
    }

    fn read(&mut self) -> Result<Event<'a>, DecodeError> {
        self.offset = self.position();
        self.reader.read_event().map_err(|e| {
            let at = usize::try_from(self.reader.error_position()).unwrap_or(self.offset);
            DecodeError::new(ErrorKind::Syntax, at, format!("malformed XML: {e}"))
        })
    }

    fn problem(&self, p: Problem) -> DecodeError {
        p.at(self.offset)
    }

    fn limit(&self, what: &str, cap: usize) -> DecodeError {
        DecodeError::new(
            ErrorKind::Limit,
            self.offset,
            format!("{what} exceeds the limit of {cap}"),
        )
    }

    /// Bookkeeping for an element start: caps, namespace declarations, attribute syntax.
    fn enter(&mut self, start: &BytesStart<'a>, empty: bool) -> Result<&'a str, DecodeError> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(self.limit("element count", self.limits.max_elements));
        }
        if self.depth + 1 > self.limits.max_depth {
            return Err(self.limit("nesting depth", self.limits.max_depth));
        }
        if !empty {
            self.depth += 1;
        }
        self.prolog.root();
        // The name is a prefix of the tag text right after '<'.
        let qname_len = start.name().as_ref().len();
        let qname = self
            .input
            .get(self.offset + 1..self.offset + 1 + qname_len)
            .filter(|q| q.as_bytes() == start.name().as_ref())
            .ok_or_else(|| {
                DecodeError::new(
                    ErrorKind::Syntax,
                    self.offset,
                    "tag name is not where the reader reported it",
                )
            })?;
        // Every Meta child of a real message carries exactly this declaration; it is
        // well-formed and declares no prefix, so it needs no further reading.
        let raw = start.attributes_raw();
        if !is_blank(raw) && raw != b" xmlns=\"syncml:metinf\"" {
            check_attributes(start).map_err(|p| self.problem(p))?;
            let declared_at = if empty { self.depth + 1 } else { self.depth };
            for attr in start.attributes() {
                let attr = attr.map_err(|e| {
                    DecodeError::new(
                        ErrorKind::Syntax,
                        self.offset,
                        format!("malformed attribute in <{qname}>: {e}"),
                    )
                })?;
                let key = attr.key.as_ref();
                if let Some(prefix) = key.strip_prefix(b"xmlns:") {
                    let value = self.attr_value(&attr, qname)?;
                    let prefix = String::from_utf8_lossy(prefix).into_owned();
                    // A declaration's scope is the element's subtree; an empty element's ends at once.
                    self.prefixes.push((prefix, value, declared_at));
                }
            }
            if empty {
                self.pop_prefixes(self.depth);
            }
        }
        self.current = Some(start.clone());
        Ok(match memchr::memchr(b':', qname.as_bytes()) {
            Some(colon) => &qname[colon + 1..],
            None => qname,
        })
    }

    fn attr_value(
        &self,
        attr: &quick_xml::events::attributes::Attribute<'_>,
        element: &str,
    ) -> Result<String, DecodeError> {
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| {
                DecodeError::new(
                    ErrorKind::Entity,
                    self.offset,
                    format!("attribute of <{element}>: {e}"),
                )
            })?;
        if let Some(bad) = value.chars().find(|c| !is_xml_char(*c)) {
            return Err(self.char_error(bad));
        }
        Ok(value.into_owned())
    }

    fn pop_prefixes(&mut self, depth: usize) {
        while self.prefixes.last().is_some_and(|p| p.2 > depth) {
            self.prefixes.pop();
        }
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.pop_prefixes(self.depth);
    }

    fn char_error(&self, c: char) -> DecodeError {
        DecodeError::new(
            ErrorKind::Syntax,
            self.offset,
            format!("character U+{:04X} is not allowed in XML", u32::from(c)),
        )
    }

    /// Appends text, reference or CDATA content to `out`; `false` if `event` is none of them.
    fn append_text(&self, event: &Event<'a>, out: &mut String) -> Result<bool, DecodeError> {
        let start = out.len();
        match event {
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|e| {
                    DecodeError::new(ErrorKind::Encoding, self.offset, format!("{e}"))
                })?;
                out.push_str(&s);
            }
            Event::CData(t) => {
                let s = t.xml10_content().map_err(|e| {
                    DecodeError::new(ErrorKind::Encoding, self.offset, format!("{e}"))
                })?;
                out.push_str(&s);
                return self.check_chars(out, start).map(|()| true);
            }
            Event::GeneralRef(r) => {
                out.push(self.resolve(r)?);
                return Ok(true);
            }
            _ => return Ok(false),
        }
        self.check_chars(out, start)?;
        Ok(true)
    }

    fn check_chars(&self, out: &str, from: usize) -> Result<(), DecodeError> {
        match first_invalid_char(&out[from..]) {
            Some(bad) => Err(self.char_error(bad)),
            None => Ok(()),
        }
    }

    fn resolve(&self, r: &quick_xml::events::BytesRef<'a>) -> Result<char, DecodeError> {
        let name = r.decode().unwrap_or_default();
        let predefined = match name.as_ref() {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "apos" => Some('\''),
            "quot" => Some('"'),
            _ => None,
        };
        if let Some(c) = predefined {
            return Ok(c);
        }
        match r.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(c),
            Ok(Some(c)) => Err(self.char_error(c)),
            Ok(None) => Err(DecodeError::new(
                ErrorKind::Entity,
                self.offset,
                format!("undefined entity &{name}; (entities are not expanded)"),
            )),
            Err(e) => Err(DecodeError::new(
                ErrorKind::Syntax,
                self.offset,
                format!("bad character reference &{name};: {e}"),
            )),
        }
    }

    fn qualify(&self, key: &str) -> Result<Option<String>, DecodeError> {
        if key == "xmlns" || key.starts_with("xmlns:") {
            return Ok(None);
        }
        let Some((prefix, local)) = key.split_once(':') else {
            return Ok(Some(key.to_owned()));
        };
        if prefix == "xml" {
            return Ok(Some(key.to_owned()));
        }
        let uri = self
            .prefixes
            .iter()
            .rev()
            .find(|p| p.0 == prefix)
            .map(|p| p.1.as_str());
        match uri {
            Some(MSFT_NS) => Ok(Some(format!("msft:{local}"))),
            Some(uri) => Ok(Some(format!("{{{uri}}}{local}"))),
            None => Err(DecodeError::new(
                ErrorKind::Syntax,
                self.offset,
                format!("attribute {key} uses the undeclared namespace prefix {prefix}"),
            )),
        }
    }
}

impl<'a> Source<'a> for XmlSource<'a> {
    fn next(&mut self) -> Result<Ev<'a>, DecodeError> {
        loop {
            let event = self.read()?;
            return Ok(match event {
                Event::Start(s) => Ev::Start {
                    name: self.enter(&s, false)?,
                    empty: false,
                },
                Event::Empty(s) => Ev::Start {
                    name: self.enter(&s, true)?,
                    empty: true,
                },
                Event::End(_) => {
                    self.leave();
                    Ev::End
                }
                Event::Text(t) => Ev::Text {
                    blank: is_blank(&t),
                },
                Event::CData(_) | Event::GeneralRef(_) => Ev::Text { blank: false },
                Event::Eof => Ev::Eof,
                Event::Comment(t) => {
                    check_misc(&t).map_err(|p| self.problem(p))?;
                    continue;
                }
                Event::PI(t) => {
                    check_pi(&t).map_err(|p| self.problem(p))?;
                    continue;
                }
                Event::Decl(d) => {
                    self.prolog
                        .decl(
                            self.offset,
                            self.input.as_bytes().get(self.offset..).unwrap_or_default(),
                            &d,
                        )
                        .map_err(|p| self.problem(p))?;
                    continue;
                }
                Event::DocType(t) => {
                    let raw = self.input.as_bytes().get(self.offset..).unwrap_or_default();
                    let result = self.prolog.doctype(raw, &t);
                    result.map_err(|p| self.problem(p))?;
                    continue;
                }
            });
        }
    }

    fn offset(&self) -> usize {
        self.offset
    }

    fn text(&mut self, element: &str) -> Result<String, DecodeError> {
        let mut out = String::new();
        loop {
            let event = self.read()?;
            if self.append_text(&event, &mut out)? {
                continue;
            }
            match event {
                Event::End(_) => {
                    self.leave();
                    return Ok(out);
                }
                Event::Comment(t) => check_misc(&t).map_err(|p| self.problem(p))?,
                Event::PI(t) => check_pi(&t).map_err(|p| self.problem(p))?,
                Event::Start(_) | Event::Empty(_) => {
                    return Err(DecodeError::new(
                        ErrorKind::Structure,
                        self.offset,
                        format!("<{element}> must hold text, not elements"),
                    ))
                }
                _ => {
                    return Err(DecodeError::new(
                        ErrorKind::Syntax,
                        self.offset,
                        format!("input ends inside <{element}>"),
                    ))
                }
            }
        }
    }

    fn data(&mut self) -> Result<Value, DecodeError> {
        let content_start = self.position();
        let mut out = String::new();
        // Depth of inline markup below the element; `None` while the content is only text.
        let mut markup: Option<usize> = None;
        loop {
            let event = self.read()?;
            if self.append_text(&event, &mut out)? {
                continue;
            }
            match event {
                Event::Start(s) => {
                    self.enter(&s, false)?;
                    self.check_attrs(&s)?;
                    markup = Some(markup.unwrap_or(0) + 1);
                }
                Event::Empty(s) => {
                    self.enter(&s, true)?;
                    self.check_attrs(&s)?;
                    markup.get_or_insert(0);
                }
                Event::End(_) => {
                    self.leave();
                    match markup {
                        Some(0) | None => {
                            return Ok(Value::Text(match markup {
                                // Markup inlined into Data is kept exactly as the device wrote it.
                                Some(_) => self.input[content_start..self.offset].to_owned(),
                                None => out,
                            }));
                        }
                        Some(n) => markup = Some(n - 1),
                    }
                }
                Event::Comment(t) => check_misc(&t).map_err(|p| self.problem(p))?,
                Event::PI(t) => check_pi(&t).map_err(|p| self.problem(p))?,
                _ => {
                    return Err(DecodeError::new(
                        ErrorKind::Syntax,
                        self.offset,
                        "input ends inside <Data>",
                    ))
                }
            }
        }
    }

    fn attrs(&mut self) -> Result<Attrs, DecodeError> {
        let Some(start) = self.current.take() else {
            return Ok(Attrs::new());
        };
        let mut attrs = Attrs::new();
        if is_blank(start.attributes_raw()) {
            return Ok(attrs);
        }
        let element = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        for attr in start.attributes() {
            let attr =
                attr.map_err(|e| DecodeError::new(ErrorKind::Syntax, self.offset, format!("{e}")))?;
            let key = std::str::from_utf8(attr.key.as_ref()).unwrap_or_default();
            if let Some(name) = self.qualify(key)? {
                attrs.push((name, self.attr_value(&attr, &element)?));
            }
        }
        Ok(attrs)
    }
}

impl<'a> XmlSource<'a> {
    /// Inline markup inside Data is kept verbatim, but it must still be well-formed.
    fn check_attrs(&self, start: &BytesStart<'a>) -> Result<(), DecodeError> {
        let element = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| {
                DecodeError::new(
                    ErrorKind::Syntax,
                    self.offset,
                    format!("malformed attribute in <{element}>: {e}"),
                )
            })?;
            let key = std::str::from_utf8(attr.key.as_ref()).unwrap_or_default();
            self.qualify(key)?;
            self.attr_value(&attr, &element)?;
        }
        Ok(())
    }
}
