//! XML as devices actually write it: elements without prefixes, text with the predefined
//! entities, attributes rarely. The scanner makes the checks the decoder's reader makes for
//! that much of XML (names, caps on depth and element count, characters, namespace prefixes
//! of the attributes the decoder reads) and gives up on anything else: comments, CDATA,
//! character references, carriage returns in text. The prolog and the root's start tag are
//! read by the decoder's own XML reader.

use std::borrow::Cow;

use memchr::{memchr, memchr3, memmem};
use quick_xml::events::attributes::Attribute;
use quick_xml::events::BytesStart;
use quick_xml::XmlVersion;

use super::super::decode::{Ev, Source};
use super::super::xml::XmlSource;
use super::super::Limits;
use super::walk::{Content, Reader, Step, Unsupported};
use crate::xmltext::{check_attributes, is_blank, is_xml_char};

/// The one attribute of real Meta children; the decoder's reader skips its checks too.
const METINF_DECL: &[u8] = b" xmlns=\"syncml:metinf\"";

const PREDEFINED: [(&[u8], char); 5] = [
    (b"&lt;", '<'),
    (b"&gt;", '>'),
    (b"&amp;", '&'),
    (b"&apos;", '\''),
    (b"&quot;", '"'),
];

/// Control characters other than tab and line ends, and U+FFFE/U+FFFF, are refused by the
/// decoder wherever they stand; one pass over the input spares checking every text.
fn has_forbidden_chars(bytes: &[u8]) -> bool {
    let control = bytes.chunks(64).any(|block| {
        block.iter().fold(false, |seen, &b| {
            seen | (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r')
        })
    });
    control
        || memmem::find_iter(bytes, b"\xEF\xBF")
            .any(|at| matches!(bytes.get(at + 2), Some(0xBE | 0xBF)))
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The `>` closing the tag that starts at `lt`, quotes respected as the reader does.
fn tag_end(bytes: &[u8], lt: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate().skip(lt) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(i),
            None => {}
        }
    }
    None
}

/// An attribute value the decoder reads: references resolved, XML characters only.
fn attr_value(attr: &Attribute<'_>) -> Step<()> {
    let value = attr
        .normalized_value(XmlVersion::Implicit1_0)
        .map_err(|_| Unsupported)?;
    if value.chars().all(is_xml_char) {
        Ok(())
    } else {
        Err(Unsupported)
    }
}

/// Text read so far: a span of the input while it is one piece.
enum Acc {
    Empty,
    Span(usize, usize),
    Owned(String),
}

impl Acc {
    fn push(&mut self, text: &str, from: usize, to: usize) {
        match self {
            Acc::Empty => *self = Acc::Span(from, to),
            Acc::Span(a, b) => {
                let mut s = text[*a..*b].to_owned();
                s.push_str(&text[from..to]);
                *self = Acc::Owned(s);
            }
            Acc::Owned(s) => s.push_str(&text[from..to]),
        }
    }

    fn push_char(&mut self, text: &str, c: char) {
        match self {
            Acc::Empty => *self = Acc::Owned(c.to_string()),
            Acc::Span(a, b) => {
                let mut s = text[*a..*b].to_owned();
                s.push(c);
                *self = Acc::Owned(s);
            }
            Acc::Owned(s) => s.push(c),
        }
    }

    fn finish(self, text: &str) -> Cow<'_, str> {
        match self {
            Acc::Empty => Cow::Borrowed(""),
            Acc::Span(a, b) => Cow::Borrowed(&text[a..b]),
            Acc::Owned(s) => Cow::Owned(s),
        }
    }
}

pub(super) struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    elements: usize,
    limits: Limits,
    /// Namespace prefixes in scope and the depth each was declared at, as the reader keeps
    /// them: the decoder refuses an attribute of Data whose prefix is not among them.
    prefixes: Vec<(Vec<u8>, usize)>,
    /// Markup open inside the Data element being read.
    open: Vec<&'a str>,
    /// The start tag last read, when its attributes need the decoder's reading: the span of
    /// its content and the length of its name.
    tag_attrs: Option<(usize, usize, usize)>,
}

impl<'a> Scan<'a> {
    /// Past the root's start tag.
    pub(super) fn new(data: &'a [u8], limits: &Limits) -> Step<Scan<'a>> {
        let text = std::str::from_utf8(data).map_err(|_| Unsupported)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if has_forbidden_chars(text.as_bytes()) {
            return Err(Unsupported);
        }
        let mut reader = XmlSource::new(data, limits).map_err(|_| Unsupported)?;
        let root = loop {
            match reader.next() {
                Ok(Ev::Text { blank: true }) => {}
                Ok(Ev::Start {
                    name: "SyncML",
                    empty: false,
                }) => break reader.offset(),
                _ => return Err(Unsupported),
            }
        };
        let mut scan = Scan {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            depth: 0,
            elements: 0,
            limits: *limits,
            prefixes: Vec::new(),
            open: Vec::new(),
            tag_attrs: None,
        };
        scan.root(root)?;
        Ok(scan)
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.bytes.get(at).copied()
    }

    /// Takes over after the root's start tag at `lt`, which the reader has checked; only
    /// its namespace prefixes matter below.
    fn root(&mut self, lt: usize) -> Step<()> {
        let end = tag_end(self.bytes, lt).ok_or(Unsupported)?;
        let name = b"SyncML";
        if self.bytes.get(lt + 1..lt + 1 + name.len()) != Some(name)
            || !matches!(self.byte(lt + 1 + name.len()), Some(b) if b == b'>' || is_space(b))
        {
            return Err(Unsupported);
        }
        let content = &self.text[lt + 1..end];
        if !is_blank(&content.as_bytes()[name.len()..]) {
            let start = BytesStart::from_content(content, name.len());
            for attr in start.attributes() {
                let attr = attr.map_err(|_| Unsupported)?;
                if let Some(prefix) = attr.key.as_ref().strip_prefix(b"xmlns:") {
                    self.prefixes.push((prefix.to_vec(), 1));
                }
            }
        }
        self.depth = 1;
        self.elements = 1;
        self.pos = end + 1;
        Ok(())
    }

    /// The reader's bookkeeping for an element start: the caps.
    fn enter(&mut self, empty: bool) -> Step<()> {
        self.elements += 1;
        if self.elements > self.limits.max_elements || self.depth + 1 > self.limits.max_depth {
            return Err(Unsupported);
        }
        if !empty {
            self.depth += 1;
        }
        Ok(())
    }

    fn pop_prefixes(&mut self) {
        while self.prefixes.last().is_some_and(|p| p.1 > self.depth) {
            self.prefixes.pop();
        }
    }

    /// At the `<` of a start tag: the element's name, and whether it is empty.
    fn start_tag(&mut self) -> Step<(&'a str, bool)> {
        let bytes = self.bytes;
        let lt = self.pos;
        if !self.byte(lt + 1).is_some_and(is_name_start) {
            return Err(Unsupported);
        }
        let mut at = lt + 2;
        while self.byte(at).is_some_and(is_name_byte) {
            at += 1;
        }
        // ASCII only, so the slice falls on character boundaries.
        let name = &self.text[lt + 1..at];
        self.tag_attrs = None;
        if self.byte(at).is_some_and(is_space) {
            if bytes[at..].starts_with(METINF_DECL) {
                at += METINF_DECL.len();
            } else {
                while self.byte(at).is_some_and(is_space) {
                    at += 1;
                }
            }
        }
        let empty = match (self.byte(at), self.byte(at + 1)) {
            (Some(b'>'), _) => false,
            (Some(b'/'), Some(b'>')) => {
                at += 1;
                true
            }
            _ if self.byte(lt + 1 + name.len()).is_some_and(is_space) => {
                return self.tag_with_attributes(lt, name);
            }
            _ => return Err(Unsupported),
        };
        self.pos = at + 1;
        self.enter(empty)?;
        Ok((name, empty))
    }

    /// A start tag with attributes: checked and read for namespace declarations as the
    /// reader does.
    fn tag_with_attributes(&mut self, lt: usize, name: &'a str) -> Step<(&'a str, bool)> {
        let end = tag_end(self.bytes, lt).ok_or(Unsupported)?;
        let empty = self.bytes[end - 1] == b'/';
        let content = (lt + 1, if empty { end - 1 } else { end });
        self.pos = end + 1;
        self.enter(empty)?;
        let start = BytesStart::from_content(&self.text[content.0..content.1], name.len());
        check_attributes(&start).map_err(|_| Unsupported)?;
        let declared_at = if empty { self.depth + 1 } else { self.depth };
        for attr in start.attributes() {
            let attr = attr.map_err(|_| Unsupported)?;
            if let Some(prefix) = attr.key.as_ref().strip_prefix(b"xmlns:") {
                attr_value(&attr)?;
                self.prefixes.push((prefix.to_vec(), declared_at));
            }
        }
        // An empty element's declarations end with it, before its attributes are read.
        if empty {
            self.pop_prefixes();
        }
        self.tag_attrs = Some((content.0, content.1, name.len()));
        Ok((name, empty))
    }

    /// At the `<` of `</name>`.
    fn end_tag(&mut self, name: &str) -> Step<()> {
        let from = self.pos + 2;
        let to = from + name.len();
        if self.bytes.get(from..to) != Some(name.as_bytes()) || self.byte(to) != Some(b'>') {
            return Err(Unsupported);
        }
        self.pos = to + 1;
        self.depth -= 1;
        self.pop_prefixes();
        Ok(())
    }

    /// Text and references up to the next `<`.
    fn text_run(&mut self, acc: &mut Acc) -> Step<()> {
        loop {
            let rest = &self.bytes[self.pos..];
            let stop = memchr3(b'<', b'&', b'\r', rest).ok_or(Unsupported)?;
            if stop > 0 {
                acc.push(self.text, self.pos, self.pos + stop);
            }
            self.pos += stop;
            match rest[stop] {
                b'<' => return Ok(()),
                b'&' => {
                    let (reference, c) = PREDEFINED
                        .iter()
                        .find(|(r, _)| rest[stop..].starts_with(r))
                        .ok_or(Unsupported)?;
                    acc.push_char(self.text, *c);
                    self.pos += reference.len();
                }
                // The decoder folds line ends.
                _ => return Err(Unsupported),
            }
        }
    }
}

impl<'a> Reader<'a> for Scan<'a> {
    /// The next child element of `parent`, or `None` after its end tag.
    fn child(&mut self, parent: &'a str) -> Step<Option<(&'a str, bool)>> {
        while self.byte(self.pos).is_some_and(is_space) {
            self.pos += 1;
        }
        if self.byte(self.pos) != Some(b'<') {
            return Err(Unsupported);
        }
        if self.byte(self.pos + 1) == Some(b'/') {
            self.end_tag(parent)?;
            return Ok(None);
        }
        self.start_tag().map(Some)
    }

    fn text(&mut self, name: &'a str) -> Step<Cow<'a, str>> {
        let mut acc = Acc::Empty;
        self.text_run(&mut acc)?;
        // Markup, comments and CDATA in text are left to the decoder.
        if self.byte(self.pos + 1) != Some(b'/') {
            return Err(Unsupported);
        }
        self.end_tag(name)?;
        Ok(acc.finish(self.text))
    }

    fn content(&mut self, name: &'a str) -> Step<Content<'a>> {
        let from = self.pos;
        let base = self.open.len();
        let mut acc = Acc::Empty;
        let mut markup = false;
        loop {
            self.text_run(&mut acc)?;
            if self.byte(self.pos + 1) != Some(b'/') {
                let (inner, empty) = self.start_tag()?;
                self.read_attributes()?;
                markup = true;
                if !empty {
                    self.open.push(inner);
                }
                continue;
            }
            if self.open.len() > base {
                let inner = self.open.pop().unwrap_or_default();
                self.end_tag(inner)?;
                continue;
            }
            let to = self.pos;
            self.end_tag(name)?;
            return Ok(if markup {
                Content::Markup(&self.text[from..to])
            } else {
                Content::Text(acc.finish(self.text))
            });
        }
    }

    /// The decoder reads the attributes of Data and of markup inside it: each prefix
    /// declared, each value well-formed.
    fn read_attributes(&mut self) -> Step<()> {
        let Some((from, to, name_len)) = self.tag_attrs else {
            return Ok(());
        };
        let start = BytesStart::from_content(&self.text[from..to], name_len);
        for attr in start.attributes() {
            let attr = attr.map_err(|_| Unsupported)?;
            let key = attr.key.as_ref();
            if key == b"xmlns" || key.starts_with(b"xmlns:") {
                continue;
            }
            if let Some(colon) = memchr(b':', key) {
                let prefix = &key[..colon];
                if prefix != b"xml" && !self.prefixes.iter().any(|(p, _)| p == prefix) {
                    return Err(Unsupported);
                }
            }
            attr_value(&attr)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Step<()> {
        if is_blank(&self.bytes[self.pos..]) {
            Ok(())
        } else {
            Err(Unsupported)
        }
    }
}
