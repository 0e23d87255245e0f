//! OMA-DM SyncML 1.2 messages: the model, and codecs for XML and WBXML.
//!
//! Decoding is lenient where real devices deviate (missing or "0" CmdIDs, Meta children
//! without the `syncml:metinf` namespace, unknown Meta children, XML inlined into `Data`) and
//! strict about anything that could hurt the gateway: DTD subsets and entity declarations,
//! nesting depth, element count and input size are refused with a typed error carrying the
//! byte offset. Encoding is strict: it refuses messages a device could misread (missing or
//! duplicate CmdIDs, CmdID "0", characters XML cannot carry).
//!
//! The dict shape that Python sees is documented in `docs/syncml.md`.

mod builder;
mod decode;
mod encode;
pub mod inventory;
mod tags;
mod wbxml;
mod xml;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use builder::{MessageBuilder, Overflow};
pub use encode::{check_message, encode_wbxml, encode_xml, EncodeError};
pub use tags::CommandKind;

/// Default cap on input bytes: a full `?list=StructData` app inventory of a device with a few
/// thousand packages fits with room to spare, and Windows sends anything larger in chunks.
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on element nesting: a SyncML message is about ten levels deep with nested
/// Atomic/Sequence, and XML inlined into `Data` adds a few more.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// Default cap on elements: a 300-app inventory (1.6 MB) has about 32,500, so this admits a full
/// 16 MB message of that density while bounding the memory one message can pin.
pub const DEFAULT_MAX_ELEMENTS: usize = 500_000;

/// Resource caps applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

/// The encoding a message arrived in or is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Xml,
    Wbxml,
}

impl Encoding {
    /// WBXML starts with its version byte (1.0–1.3); XML starts with text.
    pub fn detect(data: &[u8]) -> Encoding {
        match data.first() {
            Some(0x00..=0x03) => Encoding::Wbxml,
            _ => Encoding::Xml,
        }
    }
}

/// Target or Source of a header, item or Map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub uri: String,
    pub name: Option<String>,
}

/// `syncml:metinf` children in document order: (name, text). Names the codec knows are
/// spelled as the specification spells them (and cost no allocation); unknown ones are kept
/// as written.
pub type Meta = Vec<(Cow<'static, str>, String)>;

/// The key a Meta child is stored under.
pub fn meta_key(name: impl AsRef<str> + Into<String>) -> Cow<'static, str> {
    match tags::metinf_name(name.as_ref()) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.into()),
    }
}

/// Attributes on `Data`: (qualified name, value); see `docs/syncml.md` for the names.
pub type Attrs = Vec<(String, String)>;

/// The content of a `Data` element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    /// WBXML opaque data that is not UTF-8.
    Binary(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub value: Value,
    pub attrs: Attrs,
}

impl Data {
    pub fn text(s: impl Into<String>) -> Data {
        Data {
            value: Value::Text(s.into()),
            attrs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    pub target: Option<Loc>,
    pub source: Option<Loc>,
    pub meta: Option<Meta>,
    pub data: Option<Data>,
    pub more_data: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cred {
    pub meta: Option<Meta>,
    pub data: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub ver_dtd: String,
    pub ver_proto: String,
    pub session_id: String,
    pub msg_id: String,
    pub target: Option<Loc>,
    pub source: Option<Loc>,
    pub resp_uri: Option<String>,
    pub no_resp: bool,
    pub cred: Option<Cred>,
    pub meta: Option<Meta>,
}

/// One command of a SyncBody. Fields a command kind does not have stay empty; the decoder
/// refuses children that do not belong to the kind and the encoder writes only those that do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub kind: CommandKind,
    pub cmd_id: Option<String>,
    pub no_resp: bool,
    pub meta: Option<Meta>,
    /// Alert code, or Status code.
    pub data: Option<Data>,
    /// Items, or Map's MapItems (Target and Source only).
    pub items: Vec<Item>,
    pub msg_ref: Option<String>,
    pub cmd_ref: Option<String>,
    /// Status: the name of the command the status is for.
    pub cmd: Option<String>,
    pub target_refs: Vec<String>,
    pub source_refs: Vec<String>,
    /// Status: the challenge's Meta.
    pub chal: Option<Meta>,
    /// Exec: correlator for an asynchronous result.
    pub correlator: Option<String>,
    /// Map only.
    pub target: Option<Loc>,
    pub source: Option<Loc>,
    /// Atomic and Sequence.
    pub commands: Vec<Command>,
}

impl Command {
    pub fn new(kind: CommandKind) -> Command {
        Command {
            kind,
            cmd_id: None,
            no_resp: false,
            meta: None,
            data: None,
            items: Vec::new(),
            msg_ref: None,
            cmd_ref: None,
            cmd: None,
            target_refs: Vec::new(),
            source_refs: Vec::new(),
            chal: None,
            correlator: None,
            target: None,
            source: None,
            commands: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub body: Vec<Command>,
    pub is_final: bool,
}

/// Why a message was refused.
pub use crate::error::{DecodeError, ErrorKind};

/// Decodes XML or WBXML, chosen by the first byte.
pub fn decode(data: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    decode_as(data, Encoding::detect(data), limits)
}

pub fn decode_as(data: &[u8], encoding: Encoding, limits: &Limits) -> Result<Message, DecodeError> {
    if data.len() > limits.max_bytes {
        return Err(DecodeError::new(
            ErrorKind::Limit,
            limits.max_bytes,
            format!(
                "message is {} bytes, over the limit of {}",
                data.len(),
                limits.max_bytes
            ),
        ));
    }
    match encoding {
        Encoding::Xml => {
            let bom = if data.starts_with(b"\xEF\xBB\xBF") {
                3
            } else {
                0
            };
            decode::message(xml::XmlSource::new(data, limits)?).map_err(|mut e| {
                e.offset += bom;
                e
            })
        }
        Encoding::Wbxml => decode::message(wbxml::WbxmlSource::new(data, limits)?),
    }
}
