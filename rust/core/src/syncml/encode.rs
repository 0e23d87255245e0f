//! Writing messages: one walk over the model, with an XML and a WBXML [`Sink`].

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;

use super::tags::{token_of, CommandKind};
use super::wbxml::{write_mb_u32, END, LITERAL, OPAQUE, STR_I, SWITCH_PAGE};
use super::xml::MSFT_NS;
use super::{Command, Data, Header, Item, Loc, Message, Meta, Value};

/// A message the encoder refuses, with where in it the problem is
/// (`SyncBody[2].Item[0].Data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError {
    pub path: String,
    pub message: String,
}

impl EncodeError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> EncodeError {
        EncodeError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for EncodeError {}

pub(crate) trait Sink {
    fn begin(&mut self);
    fn end(&mut self);
    fn open(&mut self, name: &'static str);
    fn close(&mut self, name: &'static str);
    fn empty(&mut self, name: &'static str);
    fn leaf(&mut self, name: &'static str, text: &str) -> Result<(), String>;
    fn open_meta(&mut self);
    fn meta_leaf(&mut self, name: &str, text: &str) -> Result<(), String>;
    fn close_meta(&mut self);
    fn data(&mut self, data: &Data) -> Result<(), String>;
    fn len(&self) -> usize;
}

// ---------------------------------------------------------------- XML

pub(crate) struct XmlSink {
    pub(crate) out: Vec<u8>,
}

fn xml_char_error(c: char) -> String {
    format!("character U+{:04X} cannot be written in XML", u32::from(c))
}

pub(crate) fn escape_into(out: &mut Vec<u8>, text: &str, attribute: bool) -> Result<(), String> {
    crate::xmltext::escape_into(out, text, attribute).map_err(xml_char_error)
}

fn check_attr_name(name: &str) -> Result<(), String> {
    let bad = |c: char| c.is_whitespace() || "<>&\"'=/{}".contains(c);
    if name.is_empty() || name.contains(bad) || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{name:?} is not a usable attribute name"));
    }
    Ok(())
}

impl Sink for XmlSink {
    fn begin(&mut self) {
        self.out
            .extend_from_slice(b"<SyncML xmlns=\"SYNCML:SYNCML1.2\">");
    }
    fn end(&mut self) {
        self.out.extend_from_slice(b"</SyncML>");
    }
    fn open(&mut self, name: &'static str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
    }
    fn close(&mut self, name: &'static str) {
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
    }
    fn empty(&mut self, name: &'static str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"/>");
    }
    fn leaf(&mut self, name: &'static str, text: &str) -> Result<(), String> {
        self.open(name);
        escape_into(&mut self.out, text, false)?;
        self.close(name);
        Ok(())
    }
    fn open_meta(&mut self) {
        self.open("Meta");
    }
    fn meta_leaf(&mut self, name: &str, text: &str) -> Result<(), String> {
        check_attr_name(name).map_err(|_| format!("{name:?} is not a usable Meta element name"))?;
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b" xmlns=\"syncml:metinf\">");
        escape_into(&mut self.out, text, false)?;
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
        Ok(())
    }
    fn close_meta(&mut self) {
        self.close("Meta");
    }
    fn data(&mut self, data: &Data) -> Result<(), String> {
        self.out.extend_from_slice(b"<Data");
        let mut msft_declared = false;
        for (n, (name, value)) in data.attrs.iter().enumerate() {
            let name = if let Some(local) = name.strip_prefix("msft:") {
                if !msft_declared {
                    self.out.extend_from_slice(b" xmlns:msft=\"");
                    self.out.extend_from_slice(MSFT_NS.as_bytes());
                    self.out.push(b'"');
                    msft_declared = true;
                }
                check_attr_name(local)?;
                name.clone()
            } else if let Some((uri, local)) =
                name.strip_prefix('{').and_then(|rest| rest.split_once('}'))
            {
                check_attr_name(local)?;
                self.out
                    .extend_from_slice(format!(" xmlns:ns{n}=\"").as_bytes());
                escape_into(&mut self.out, uri, true)?;
                self.out.push(b'"');
                format!("ns{n}:{local}")
            } else {
                if name.contains(':') && !name.starts_with("xml:") {
                    return Err(format!("attribute {name:?} has a prefix with no namespace"));
                }
                check_attr_name(name.trim_start_matches("xml:"))?;
                name.clone()
            };
            self.out.push(b' ');
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b"=\"");
            escape_into(&mut self.out, value, true)?;
            self.out.push(b'"');
        }
        self.out.push(b'>');
        match &data.value {
            Value::Text(text) => escape_into(&mut self.out, text, false)?,
            Value::Binary(bytes) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                self.out.extend_from_slice(encoded.as_bytes());
            }
        }
        self.out.extend_from_slice(b"</Data>");
        Ok(())
    }
    fn len(&self) -> usize {
        self.out.len()
    }
}

// ---------------------------------------------------------------- WBXML

/// WBXML 1.3, public id 0x1201 (SyncML 1.2), UTF-8. Names the code pages lack (unknown Meta
/// children, Data attributes) go into the string table as literals.
pub(crate) struct WbxmlSink {
    pub(crate) body: Vec<u8>,
    pub(crate) strtbl: Vec<u8>,
    page: u8,
}

impl WbxmlSink {
    pub(crate) fn new() -> WbxmlSink {
        WbxmlSink {
            body: Vec::new(),
            strtbl: Vec::new(),
            page: 0,
        }
    }

    fn switch(&mut self, page: u8) {
        if self.page != page {
            self.body.extend_from_slice(&[SWITCH_PAGE, page]);
            self.page = page;
        }
    }

    fn tag(&mut self, name: &'static str, content: bool) {
        self.switch(0);
        let token = token_of(0, name).unwrap_or_else(|| unreachable!("{name} is on page 0"));
        self.body.push(if content { token | 0x40 } else { token });
    }

    /// Index of `s` in the string table, adding it if needed.
    fn string_ref(&mut self, s: &str) -> u32 {
        let mut at = 0;
        for entry in self.strtbl.split(|b| *b == 0) {
            if entry == s.as_bytes() && at < self.strtbl.len() {
                return u32::try_from(at).unwrap_or(u32::MAX);
            }
            at += entry.len() + 1;
        }
        let index = self.strtbl.len();
        self.strtbl.extend_from_slice(s.as_bytes());
        self.strtbl.push(0);
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if text.contains('\0') {
            self.opaque(text.as_bytes());
        } else {
            self.body.push(STR_I);
            self.body.extend_from_slice(text.as_bytes());
            self.body.push(0);
        }
    }

    fn opaque(&mut self, bytes: &[u8]) {
        self.body.push(OPAQUE);
        write_mb_u32(
            &mut self.body,
            u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        );
        self.body.extend_from_slice(bytes);
    }

    pub(crate) fn finish_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x03, 0xA4, 0x01, 0x6A]);
        write_mb_u32(out, u32::try_from(self.strtbl.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&self.strtbl);
        out.extend_from_slice(&self.body);
    }

    pub(crate) fn snapshot(&self) -> (usize, usize, u8) {
        (self.body.len(), self.strtbl.len(), self.page)
    }

    pub(crate) fn restore(&mut self, (body, strtbl, page): (usize, usize, u8)) {
        self.body.truncate(body);
        self.strtbl.truncate(strtbl);
        self.page = page;
    }

    pub(crate) fn header_len(&self) -> usize {
        let mut v = Vec::new();
        write_mb_u32(&mut v, u32::try_from(self.strtbl.len()).unwrap_or(u32::MAX));
        4 + v.len() + self.strtbl.len()
    }
}

impl Sink for WbxmlSink {
    fn begin(&mut self) {
        self.tag("SyncML", true);
    }
    fn end(&mut self) {
        self.body.push(END);
    }
    fn open(&mut self, name: &'static str) {
        self.tag(name, true);
    }
    fn close(&mut self, _name: &'static str) {
        self.body.push(END);
    }
    fn empty(&mut self, name: &'static str) {
        self.tag(name, false);
    }
    fn leaf(&mut self, name: &'static str, text: &str) -> Result<(), String> {
        self.tag(name, !text.is_empty());
        if !text.is_empty() {
            self.text(text);
            self.body.push(END);
        }
        Ok(())
    }
    fn open_meta(&mut self) {
        self.tag("Meta", true);
    }
    fn meta_leaf(&mut self, name: &str, text: &str) -> Result<(), String> {
        let content = if text.is_empty() { 0 } else { 0x40 };
        match token_of(1, name) {
            Some(token) => {
                self.switch(1);
                self.body.push(token | content);
            }
            None => {
                if name.is_empty() {
                    return Err("empty Meta element name".into());
                }
                let index = self.string_ref(name);
                self.switch(1);
                self.body.push(LITERAL | content);
                write_mb_u32(&mut self.body, index);
            }
        }
        if !text.is_empty() {
            self.text(text);
            self.body.push(END);
        }
        Ok(())
    }
    fn close_meta(&mut self) {
        self.body.push(END);
    }
    fn data(&mut self, data: &Data) -> Result<(), String> {
        let empty = match &data.value {
            Value::Text(s) => s.is_empty(),
            Value::Binary(b) => b.is_empty(),
        };
        self.switch(0);
        let token = token_of(0, "Data").unwrap_or(0x0F);
        let attr_bit = if data.attrs.is_empty() { 0 } else { 0x80 };
        self.body
            .push(token | attr_bit | if empty { 0 } else { 0x40 });
        if !data.attrs.is_empty() {
            for (name, value) in &data.attrs {
                if name.is_empty() {
                    return Err("empty attribute name".into());
                }
                let index = self.string_ref(name);
                self.body.push(LITERAL);
                write_mb_u32(&mut self.body, index);
                if !value.is_empty() {
                    self.text(value);
                }
            }
            self.body.push(END);
        }
        if !empty {
            match &data.value {
                Value::Text(s) => self.opaque(s.as_bytes()),
                Value::Binary(b) => self.opaque(b),
            }
            self.body.push(END);
        }
        Ok(())
    }
    fn len(&self) -> usize {
        self.header_len() + self.body.len()
    }
}

// ---------------------------------------------------------------- the walk

fn at<T>(result: Result<T, String>, path: &dyn Fn() -> String) -> Result<T, EncodeError> {
    result.map_err(|message| EncodeError::new(path(), message))
}

fn write_meta<S: Sink>(
    sink: &mut S,
    meta: &Meta,
    path: &dyn Fn() -> String,
) -> Result<(), EncodeError> {
    sink.open_meta();
    for (name, value) in meta {
        let name: &str = name;
        at(sink.meta_leaf(name, value), &|| {
            format!("{}.Meta.{name}", path())
        })?;
    }
    sink.close_meta();
    Ok(())
}

fn write_loc<S: Sink>(
    sink: &mut S,
    name: &'static str,
    loc: &Loc,
    path: &dyn Fn() -> String,
) -> Result<(), EncodeError> {
    let here = || format!("{}.{name}", path());
    sink.open(name);
    at(sink.leaf("LocURI", &loc.uri), &here)?;
    if let Some(n) = &loc.name {
        at(sink.leaf("LocName", n), &here)?;
    }
    sink.close(name);
    Ok(())
}

fn write_item<S: Sink>(
    sink: &mut S,
    name: &'static str,
    item: &Item,
    path: &dyn Fn() -> String,
) -> Result<(), EncodeError> {
    sink.open(name);
    if let Some(t) = &item.target {
        write_loc(sink, "Target", t, path)?;
    }
    if let Some(s) = &item.source {
        write_loc(sink, "Source", s, path)?;
    }
    if let Some(m) = &item.meta {
        write_meta(sink, m, path)?;
    }
    if let Some(d) = &item.data {
        at(sink.data(d), &|| format!("{}.Data", path()))?;
    }
    if item.more_data {
        sink.empty("MoreData");
    }
    sink.close(name);
    Ok(())
}

pub(crate) fn write_header<S: Sink>(sink: &mut S, h: &Header) -> Result<(), EncodeError> {
    let path = || "SyncHdr".to_owned();
    sink.open("SyncHdr");
    at(sink.leaf("VerDTD", &h.ver_dtd), &path)?;
    at(sink.leaf("VerProto", &h.ver_proto), &path)?;
    at(sink.leaf("SessionID", &h.session_id), &path)?;
    at(sink.leaf("MsgID", &h.msg_id), &path)?;
    if let Some(t) = &h.target {
        write_loc(sink, "Target", t, &path)?;
    }
    if let Some(s) = &h.source {
        write_loc(sink, "Source", s, &path)?;
    }
    if let Some(r) = &h.resp_uri {
        at(sink.leaf("RespURI", r), &path)?;
    }
    if h.no_resp {
        sink.empty("NoResp");
    }
    if let Some(c) = &h.cred {
        sink.open("Cred");
        if let Some(m) = &c.meta {
            write_meta(sink, m, &|| "SyncHdr.Cred".to_owned())?;
        }
        if let Some(d) = &c.data {
            at(sink.leaf("Data", d), &|| "SyncHdr.Cred".to_owned())?;
        }
        sink.close("Cred");
    }
    if let Some(m) = &h.meta {
        write_meta(sink, m, &path)?;
    }
    sink.close("SyncHdr");
    Ok(())
}

pub(crate) fn write_command<S: Sink>(
    sink: &mut S,
    c: &Command,
    path: &dyn Fn() -> String,
) -> Result<(), EncodeError> {
    let name = c.kind.name();
    sink.open(name);
    if let Some(id) = &c.cmd_id {
        at(sink.leaf("CmdID", id), path)?;
    }
    if c.no_resp {
        sink.empty("NoResp");
    }
    // Children go out in the order of the SyncML 1.2 DTD.
    if let Some(t) = &c.target {
        write_loc(sink, "Target", t, path)?;
    }
    if let Some(s) = &c.source {
        write_loc(sink, "Source", s, path)?;
    }
    if let Some(v) = &c.msg_ref {
        at(sink.leaf("MsgRef", v), path)?;
    }
    if let Some(v) = &c.cmd_ref {
        at(sink.leaf("CmdRef", v), path)?;
    }
    if let Some(v) = &c.cmd {
        at(sink.leaf("Cmd", v), path)?;
    }
    if let Some(m) = &c.meta {
        write_meta(sink, m, path)?;
    }
    for r in &c.target_refs {
        at(sink.leaf("TargetRef", r), path)?;
    }
    for r in &c.source_refs {
        at(sink.leaf("SourceRef", r), path)?;
    }
    if let Some(chal) = &c.chal {
        sink.open("Chal");
        write_meta(sink, chal, &|| format!("{}.Chal", path()))?;
        sink.close("Chal");
    }
    if let Some(d) = &c.data {
        at(sink.data(d), &|| format!("{}.Data", path()))?;
    }
    if let Some(v) = &c.correlator {
        at(sink.leaf("Correlator", v), path)?;
    }
    let item_name = if c.kind == CommandKind::Map {
        "MapItem"
    } else {
        "Item"
    };
    for (i, item) in c.items.iter().enumerate() {
        write_item(sink, item_name, item, &|| {
            format!("{}.{item_name}[{i}]", path())
        })?;
    }
    for (i, inner) in c.commands.iter().enumerate() {
        write_command(sink, inner, &|| format!("{}.Commands[{i}]", path()))?;
    }
    sink.close(name);
    Ok(())
}

fn write_message<S: Sink>(sink: &mut S, msg: &Message) -> Result<(), EncodeError> {
    check_message(msg)?;
    sink.begin();
    write_header(sink, &msg.header)?;
    sink.open("SyncBody");
    for (i, c) in msg.body.iter().enumerate() {
        write_command(sink, c, &|| format!("SyncBody[{i}]"))?;
    }
    if msg.is_final {
        sink.empty("Final");
    }
    sink.close("SyncBody");
    sink.end();
    Ok(())
}

pub fn encode_xml(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut sink = XmlSink {
        out: Vec::with_capacity(1024),
    };
    write_message(&mut sink, msg)?;
    Ok(sink.out)
}

pub fn encode_wbxml(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut sink = WbxmlSink::new();
    write_message(&mut sink, msg)?;
    let mut out = Vec::with_capacity(sink.len());
    sink.finish_into(&mut out);
    Ok(out)
}

// ---------------------------------------------------------------- strict checks

fn required(value: &str, path: &str, name: &str) -> Result<(), EncodeError> {
    if value.trim_ascii().is_empty() {
        return Err(EncodeError::new(path, format!("{name} is required")));
    }
    Ok(())
}

/// What the encoder insists on, so a device never sees an ambiguous message.
pub fn check_message(msg: &Message) -> Result<(), EncodeError> {
    let h = &msg.header;
    required(&h.ver_dtd, "SyncHdr", "VerDTD")?;
    required(&h.ver_proto, "SyncHdr", "VerProto")?;
    required(&h.session_id, "SyncHdr", "SessionID")?;
    required(&h.msg_id, "SyncHdr", "MsgID")?;
    for (name, loc) in [("Target", &h.target), ("Source", &h.source)] {
        match loc {
            Some(l) => required(&l.uri, &format!("SyncHdr.{name}"), "LocURI")?,
            None => return Err(EncodeError::new("SyncHdr", format!("{name} is required"))),
        }
    }
    let mut ids = HashSet::new();
    for (i, c) in msg.body.iter().enumerate() {
        check_command(c, &format!("SyncBody[{i}]"), &mut ids, true, true)?;
    }
    Ok(())
}

pub(crate) fn check_command<'m>(
    c: &'m Command,
    path: &str,
    ids: &mut HashSet<&'m str>,
    top: bool,
    require_ids: bool,
) -> Result<(), EncodeError> {
    use CommandKind as K;
    let kind = c.kind;
    let fail = |message: String| Err(EncodeError::new(path, message));
    if !top && !kind.nestable() {
        return fail(format!(
            "{} cannot be nested in Atomic or Sequence",
            kind.name()
        ));
    }
    match c.cmd_id.as_deref().map(str::trim_ascii) {
        None if !require_ids => {}
        None | Some("") => return fail("CmdID is required".into()),
        Some("0") => return fail("CmdID \"0\" is reserved for the SyncHdr".into()),
        Some(id) => {
            if !ids.insert(id) {
                return fail(format!("CmdID {id:?} is used twice in the message"));
            }
        }
    }
    let not_allowed = |field: &str| fail(format!("{field} is not allowed in {}", kind.name()));
    let reference = matches!(kind, K::Results | K::Status);
    if c.data.is_some() && !matches!(kind, K::Alert | K::Status) {
        return not_allowed("Data");
    }
    if (c.msg_ref.is_some() || c.cmd_ref.is_some()) && !reference {
        return not_allowed("MsgRef/CmdRef");
    }
    if (!c.target_refs.is_empty() || !c.source_refs.is_empty()) && !reference {
        return not_allowed("TargetRef/SourceRef");
    }
    if (c.cmd.is_some() || c.chal.is_some()) && kind != K::Status {
        return not_allowed("Cmd/Chal");
    }
    if c.correlator.is_some() && kind != K::Exec {
        return not_allowed("Correlator");
    }
    if (c.target.is_some() || c.source.is_some()) && kind != K::Map {
        return not_allowed("Target/Source");
    }
    if !c.commands.is_empty() && !kind.is_container() {
        return not_allowed("Commands");
    }
    if !c.items.is_empty() && kind.is_container() {
        return not_allowed("Item");
    }
    if kind == K::Map
        && c.items
            .iter()
            .any(|i| i.meta.is_some() || i.data.is_some() || i.more_data)
    {
        return fail("MapItem holds only Target and Source".into());
    }
    match kind {
        K::Status => {
            for (field, value) in [
                ("MsgRef", &c.msg_ref),
                ("CmdRef", &c.cmd_ref),
                ("Cmd", &c.cmd),
            ] {
                if value.as_deref().is_none_or(|v| v.trim_ascii().is_empty()) {
                    return fail(format!("Status needs {field}"));
                }
            }
            if c.data.is_none() {
                return fail("Status needs Data (the status code)".into());
            }
        }
        K::Results if c.cmd_ref.is_none() => return fail("Results needs CmdRef".into()),
        K::Alert if c.data.is_none() => return fail("Alert needs Data (the alert code)".into()),
        _ => {}
    }
    for (i, inner) in c.commands.iter().enumerate() {
        check_command(
            inner,
            &format!("{path}.Commands[{i}]"),
            ids,
            false,
            require_ids,
        )?;
    }
    Ok(())
}
