//! The app inventory a Windows device answers to
//! `Get .../EnterpriseModernAppManagement/AppManagement[...]?list=StructData`, read straight
//! from the SyncML message into one record per package full name.
//!
//! The result is the one the gateway's Python reader (`mdmgate.windows.apps.parse_inventory`
//! over the message's Results items) gives, rule for rule: scope from `./Device`, `./User` or
//! `./Vendor`, percent-decoded segments, classifications matched without regard to case,
//! family and full name holding `_`, records in first-seen order, known leaves only, and the
//! same number and flag conversions (a negative 32-bit number is the unsigned HRESULT).
//!
//! The message is walked with the decoder's grammar ([`walk`]) but never built: XML through
//! a scanner for the markup devices actually write ([`xml_scan`]), WBXML through the
//! decoder's own tokenizer. Whatever the walk does not handle, and every error, goes to the
//! full decoder, so what is accepted and every error are exactly the decoder's.

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use super::{decode, CommandKind, DecodeError, Encoding, Limits, Message, Value};

#[cfg(test)]
mod tests;
mod walk;
mod xml_scan;

/// The configuration service provider whose `AppManagement` node lists the packages.
pub const CSP: &str = "EnterpriseModernAppManagement";

/// Whose apps a record lists: the device's (`./Device/...`, `./Vendor/...`) or the
/// logged-in user's (`./User/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Device,
    User,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Device => "device",
            Scope::User => "user",
        }
    }
}

/// The CSP's origin node a package is listed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    AppStore,
    NonStore,
    System,
}

impl Classification {
    pub const ALL: [Classification; 3] = [
        Classification::AppStore,
        Classification::NonStore,
        Classification::System,
    ];

    /// The spelling of Microsoft's documentation, which records carry.
    pub fn name(self) -> &'static str {
        match self {
            Classification::AppStore => "AppStore",
            Classification::NonStore => "nonStore",
            Classification::System => "System",
        }
    }

    /// Devices differ in the case they write the node in.
    pub fn from_segment(segment: &str) -> Option<Classification> {
        Classification::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(segment))
    }
}

/// How a leaf's text becomes a record field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKind {
    Text,
    Flag,
    Number,
}

/// The package leaves a record keeps: (node name, record field, kind), in field order.
pub const LEAVES: [(&str, &str, LeafKind); 14] = [
    ("Name", "name", LeafKind::Text),
    ("Version", "version", LeafKind::Text),
    ("Publisher", "publisher", LeafKind::Text),
    ("Architecture", "architecture", LeafKind::Text),
    ("InstallLocation", "install_location", LeafKind::Text),
    ("IsFramework", "is_framework", LeafKind::Flag),
    ("IsBundle", "is_bundle", LeafKind::Flag),
    ("InstallDate", "install_date", LeafKind::Text),
    ("ResourceID", "resource_id", LeafKind::Text),
    ("RequiresReinstall", "requires_reinstall", LeafKind::Flag),
    ("PackageStatus", "package_status", LeafKind::Number),
    ("Users", "users", LeafKind::Text),
    ("IsProvisioned", "is_provisioned", LeafKind::Flag),
    ("IsStub", "is_stub", LeafKind::Flag),
];

/// A leaf's value once converted. Numbers reach 20 decimal digits, beyond `u64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafValue {
    Text(String),
    Flag(bool),
    Number(i128),
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRecord {
    pub package_full_name: String,
    pub package_family: String,
    pub classification: Classification,
    pub scope: Scope,
    /// Indexed like [`LEAVES`]; `None` when the device left the leaf out, sent it without
    /// Data, or sent a flag or number that does not read as one.
    pub leaves: [Option<LeafValue>; LEAVES.len()],
}

impl AppRecord {
    /// The value of the leaf node `name` (`"Version"`).
    pub fn leaf(&self, name: &str) -> Option<&LeafValue> {
        let index = LEAVES.iter().position(|(node, _, _)| *node == name)?;
        self.leaves[index].as_ref()
    }
}

/// The app records of the Results items of `data` (XML or WBXML) whose Source LocURI (or
/// Target, when the Source is missing or empty) starts with `prefix`: the inventory
/// command's target without its `?list=StructData`. `cmd_ref` keeps only the Results that
/// answer that command. Errors are the decoder's, for the same inputs.
pub fn app_inventory(
    data: &[u8],
    prefix: &str,
    cmd_ref: Option<&str>,
    limits: &Limits,
) -> Result<Vec<AppRecord>, DecodeError> {
    if let Ok(records) = walked(data, prefix, cmd_ref, limits) {
        return Ok(records);
    }
    let message = decode(data, limits)?;
    Ok(records_of_message(&message, prefix, cmd_ref))
}

/// The records without building the message; `Unsupported` leaves the input to the decoder.
fn walked(
    data: &[u8],
    prefix: &str,
    cmd_ref: Option<&str>,
    limits: &Limits,
) -> walk::Step<Vec<AppRecord>> {
    if data.len() > limits.max_bytes {
        return Err(walk::Unsupported);
    }
    match Encoding::detect(data) {
        Encoding::Xml => walk::records(xml_scan::Scan::new(data, limits)?, prefix, cmd_ref),
        Encoding::Wbxml => walk::records(walk::Wbxml::new(data, limits)?, prefix, cmd_ref),
    }
}

/// [`app_inventory`] over a message already decoded.
pub fn records_of_message(
    message: &Message,
    prefix: &str,
    cmd_ref: Option<&str>,
) -> Vec<AppRecord> {
    let mut inventory = Inventory::new(prefix);
    for command in &message.body {
        if command.kind != CommandKind::Results || !answers(command.cmd_ref.as_deref(), cmd_ref) {
            continue;
        }
        for item in &command.items {
            let uri = item_uri(
                item.source.as_ref().map(|l| l.uri.as_str()),
                item.target.as_ref().map(|l| l.uri.as_str()),
            );
            let data = item.data.as_ref().map(|d| match &d.value {
                Value::Text(s) => Leaf::Text(s),
                Value::Binary(b) => Leaf::Binary(b),
            });
            inventory.add(uri, data);
        }
    }
    inventory.finish()
}

fn answers(cmd_ref: Option<&str>, wanted: Option<&str>) -> bool {
    wanted.is_none() || cmd_ref == wanted
}

/// The Source LocURI, or the Target's when the Source is missing or empty.
fn item_uri<'s>(source: Option<&'s str>, target: Option<&'s str>) -> Option<&'s str> {
    source.filter(|s| !s.is_empty()).or(target)
}

/// An item's Data as the decoder holds it.
#[derive(Clone, Copy)]
enum Leaf<'d> {
    Text(&'d str),
    /// WBXML opaque data that is not UTF-8.
    Binary(&'d [u8]),
}

/// Records grouped by (scope, classification, family, full name), in first-seen order.
struct Inventory<'p> {
    prefix: &'p str,
    records: Vec<AppRecord>,
    index: FxHashMap<Vec<u8>, usize>,
    /// The key of the item at hand, reused between items.
    key: Vec<u8>,
    /// The record of the last package node seen, and its LocURI up to the full name.
    package: Option<usize>,
    package_path: String,
}

impl<'p> Inventory<'p> {
    fn new(prefix: &'p str) -> Inventory<'p> {
        Inventory {
            prefix,
            records: Vec::new(),
            index: FxHashMap::default(),
            key: Vec::new(),
            package: None,
            package_path: String::new(),
        }
    }

    fn add(&mut self, uri: Option<&str>, data: Option<Leaf<'_>>) {
        let Some(uri) = uri.filter(|u| !u.is_empty() && u.starts_with(self.prefix)) else {
            return;
        };
        // Leaves mostly follow their package node: reuse its parse when the LocURI starts
        // with the package's path and goes on with a new segment, a query, or not at all.
        if let Some(at) = self.package {
            if let Some(tail) = uri.strip_prefix(self.package_path.as_str()) {
                match tail.as_bytes().first() {
                    None | Some(b'?') => return,
                    Some(b'/') => {
                        let tail = &tail[1..];
                        let node = match memchr::memchr(b'?', tail.as_bytes()) {
                            Some(query) => &tail[..query],
                            None => tail,
                        };
                        if memchr::memchr(b'/', node.as_bytes()).is_none() {
                            self.set_leaf(at, node, data);
                        }
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
        let Some((scope, rest)) = csp_path(uri) else {
            return;
        };
        if rest.len < 4 || unquote(rest.parts[0]) != "AppManagement" {
            return;
        }
        let Some(classification) = Classification::from_segment(&unquote(rest.parts[1])) else {
            return;
        };
        let (family, full) = (unquote(rest.parts[2]), unquote(rest.parts[3]));
        // Package names hold "_"; the family's settings (DoNotUpdate, AppSettingPolicy, ...)
        // and ReleaseManagement do not.
        let named = |s: &str| memchr::memchr(b'_', s.as_bytes()).is_some();
        if !named(&family) || !named(&full) {
            return;
        }
        // Length-prefixed, since percent-decoding lets a name hold any character.
        self.key.clear();
        self.key.push(scope as u8);
        self.key.push(classification as u8);
        self.key
            .extend_from_slice(&(family.len() as u64).to_le_bytes());
        self.key.extend_from_slice(family.as_bytes());
        self.key.extend_from_slice(full.as_bytes());
        let at = match self.index.get(self.key.as_slice()) {
            Some(&at) => at,
            None => {
                self.index.insert(self.key.clone(), self.records.len());
                self.records.push(AppRecord {
                    package_full_name: full.into_owned(),
                    package_family: family.into_owned(),
                    classification,
                    scope,
                    leaves: Default::default(),
                });
                self.records.len() - 1
            }
        };
        self.package = Some(at);
        self.package_path.clear();
        self.package_path.push_str(&uri[..rest.package_end]);
        if rest.len == 5 {
            self.set_leaf(at, rest.parts[4], data);
        }
    }

    fn set_leaf(&mut self, at: usize, node: &str, data: Option<Leaf<'_>>) {
        let Some(leaf) = leaf_index(&unquote(node)) else {
            return;
        };
        let text = data.map(|d| match d {
            Leaf::Text(s) => Cow::Borrowed(s),
            Leaf::Binary(b) => String::from_utf8_lossy(b),
        });
        self.records[at].leaves[leaf] = convert(text, LEAVES[leaf].2);
    }

    fn finish(self) -> Vec<AppRecord> {
        self.records
    }
}

fn leaf_index(node: &str) -> Option<usize> {
    LEAVES.iter().position(|(name, _, _)| *name == node)
}

/// The first segments below the CSP node, and how many there are in all.
struct Segments<'u> {
    parts: [&'u str; 5],
    len: usize,
    /// Where the fourth segment (the package full name) ends in the LocURI.
    package_end: usize,
}

/// The scope and the segments below `.../EnterpriseModernAppManagement` of a LocURI (query
/// removed); `None` for another node.
fn csp_path(uri: &str) -> Option<(Scope, Segments<'_>)> {
    let path = match memchr::memchr(b'?', uri.as_bytes()) {
        Some(query) => &uri[..query],
        None => uri,
    };
    let mut parts = [""; 10];
    let mut ends = [0; 10];
    let mut count = 0;
    let mut from = 0;
    for slash in memchr::memchr_iter(b'/', path.as_bytes()).chain([path.len()]) {
        if let Some(slot) = parts.get_mut(count) {
            *slot = &path[from..slash];
            ends[count] = slash;
        }
        count += 1;
        from = slash + 1;
    }
    if count < 4 || parts[0] != "." {
        return None;
    }
    let (scope, start) = match parts[1] {
        "Device" => (Scope::Device, 2),
        "User" => (Scope::User, 2),
        // ./Vendor/MSFT/... is the device.
        _ => (Scope::Device, 1),
    };
    if count < start + 3 || parts[start..start + 3] != ["Vendor", "MSFT", CSP] {
        return None;
    }
    let mut rest = Segments {
        parts: [""; 5],
        len: count - start - 3,
        package_end: ends[start + 6],
    };
    for (slot, part) in rest.parts.iter_mut().zip(&parts[start + 3..]) {
        *slot = part;
    }
    Some((scope, rest))
}

/// Percent-decoding as Python's `urllib.parse.unquote` does it: escapes are read only in
/// runs of ASCII, each run's bytes decoded as UTF-8 with U+FFFD for what is not; a `%`
/// without two hex digits stays as it is.
fn unquote(segment: &str) -> Cow<'_, str> {
    if memchr::memchr(b'%', segment.as_bytes()).is_none() {
        return Cow::Borrowed(segment);
    }
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while !rest.is_empty() {
        let ascii = rest
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len());
        let (run, after) = rest.split_at(ascii);
        out.push_str(&String::from_utf8_lossy(&unescape(run.as_bytes())));
        let other = after
            .bytes()
            .position(|b| b.is_ascii())
            .unwrap_or(after.len());
        out.push_str(&after[..other]);
        rest = &after[other..];
    }
    Cow::Owned(out)
}

fn unescape(run: &[u8]) -> Cow<'_, [u8]> {
    if !run.contains(&b'%') {
        return Cow::Borrowed(run);
    }
    let mut out = Vec::with_capacity(run.len());
    let mut i = 0;
    while i < run.len() {
        let escaped = (run[i] == b'%')
            .then(|| Some((hex_digit(*run.get(i + 1)?)?, hex_digit(*run.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            None => {
                out.push(run[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

fn convert(text: Option<Cow<'_, str>>, kind: LeafKind) -> Option<LeafValue> {
    let text = text?;
    match kind {
        LeafKind::Text => Some(LeafValue::Text(text.into_owned())),
        LeafKind::Flag => flag(&text).map(LeafValue::Flag),
        LeafKind::Number => number(&text).map(LeafValue::Number),
    }
}

/// Python's `str.strip()` whitespace: Unicode White_Space plus the C0 separators
/// U+001C to U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(text: &str) -> &str {
    text.trim_matches(is_py_space)
}

fn flag(text: &str) -> Option<bool> {
    match py_strip(text) {
        "1" | "true" | "True" | "TRUE" => Some(true),
        "0" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// A decimal (up to 20 digits, signed) or `0x` hex (up to 16 digits) number; a negative
/// 32-bit value is an HRESULT and reads as its unsigned form.
fn number(text: &str) -> Option<i128> {
    let text = py_strip(text);
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    if let Some(digits) = hex {
        if (1..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return i128::from_str_radix(digits, 16).ok();
        }
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !(1..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i128 = text.parse().ok()?;
    Some(if (-(1 << 31)..0).contains(&value) {
        value + (1 << 32)
    } else {
        value
    })
}

/// The records as a JSON array of objects with the Python `AppRecord` field names; fields
/// without a value are left out.
pub fn write_json(records: &[AppRecord], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"package_full_name\":");
        json_string(out, &record.package_full_name);
        out.extend_from_slice(b",\"package_family\":");
        json_string(out, &record.package_family);
        out.extend_from_slice(b",\"classification\":\"");
        out.extend_from_slice(record.classification.name().as_bytes());
        out.extend_from_slice(b"\",\"scope\":\"");
        out.extend_from_slice(record.scope.name().as_bytes());
        out.push(b'"');
        for ((_, field, _), value) in LEAVES.iter().zip(&record.leaves) {
            let Some(value) = value else { continue };
            out.extend_from_slice(b",\"");
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                LeafValue::Text(s) => json_string(out, s),
                LeafValue::Flag(true) => out.extend_from_slice(b"true"),
                LeafValue::Flag(false) => out.extend_from_slice(b"false"),
                LeafValue::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        out.extend_from_slice(&bytes[from..i]);
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}
