//! Property lists, XML and binary (`bplist00`), with the value model of Python's `plistlib`.
//!
//! Devices send these, so decoding trusts nothing: no DTD subsets or entity declarations in
//! XML; in binary every offset, length and reference is checked against the bytes present,
//! reference cycles are refused, and the number of decoded values is capped, so a small file
//! whose shared references would expand exponentially is refused instead of expanded.

mod binary;
mod date;
mod xml;

#[cfg(test)]
mod tests;

use std::fmt;

pub use binary::encode_binary;
pub use date::{civil_from_seconds, seconds_from_civil, Civil};
pub use xml::encode_xml;

/// Default cap on input bytes: a 1,000-app inventory report is about 1 MB in XML.
pub const DEFAULT_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Default cap on nesting: MDM payloads are a handful of levels deep; profiles a few more.
pub const DEFAULT_MAX_DEPTH: usize = 128;
/// Default cap on decoded values, shared binary references counted each time they are used:
/// a 1,000-app report has about 25,000.
pub const DEFAULT_MAX_NODES: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

/// A plist value. Dictionaries keep their order; dates are seconds since
/// 2001-01-01T00:00:00Z, as binary plists store them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Dict(Vec<(String, Value)>),
    Array(Vec<Value>),
    String(String),
    Integer(i128),
    Real(f64),
    Boolean(bool),
    Date(f64),
    Data(Vec<u8>),
    Uid(u64),
    /// Binary plists can hold a null object; `plistlib` reads it as `None`.
    Null,
}

pub use crate::error::{DecodeError, ErrorKind};

/// A value the encoders cannot write, with where it is (`Items[3].Name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError {
    pub path: String,
    pub message: String,
    /// The integer is outside what plists hold (plistlib raises OverflowError for it).
    pub overflow: bool,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for EncodeError {}

/// Integers plists can be written with: plistlib's range, signed 64-bit up to unsigned 64-bit.
pub const MIN_INTEGER: i128 = -(1 << 63);
pub const MAX_INTEGER: i128 = (1 << 64) - 1;

pub const BINARY_MAGIC: &[u8] = b"bplist00";

/// Receives decoded values and builds the caller's representation of them, so a binding can
/// build its own objects straight from the bytes without an intermediate tree. For binary
/// plists, each object is built once and the node is cloned where it is referenced again.
pub trait Builder {
    type Node: Clone;
    type Array;
    type Dict;
    /// Whether cloning a node is cheap and shares it (reference-counted objects). Then an
    /// object a binary plist references many times is built once and shared, as `plistlib`
    /// does; otherwise only scalars are reused and containers are built at each use.
    const SHARES_NODES: bool;
    fn string(&mut self, s: &str) -> Self::Node;
    /// A dictionary key; builders may reuse one node for keys that repeat.
    fn key(&mut self, s: &str) -> Self::Node {
        self.string(s)
    }
    fn integer(&mut self, i: i128) -> Self::Node;
    fn real(&mut self, r: f64) -> Self::Node;
    fn boolean(&mut self, b: bool) -> Self::Node;
    /// Seconds since 2001-01-01T00:00:00Z.
    fn date(&mut self, secs: f64) -> Self::Node;
    fn data(&mut self, d: &[u8]) -> Self::Node;
    fn uid(&mut self, u: u64) -> Self::Node;
    fn null(&mut self) -> Self::Node;
    /// `len` is a hint: XML does not say how many items follow.
    fn array_start(&mut self, len: usize) -> Self::Array;
    fn array_push(&mut self, array: &mut Self::Array, item: Self::Node);
    fn array_end(&mut self, array: Self::Array) -> Self::Node;
    fn dict_start(&mut self, len: usize) -> Self::Dict;
    /// `key` is a node made by `key`.
    fn dict_insert(&mut self, dict: &mut Self::Dict, key: Self::Node, value: Self::Node);
    fn dict_end(&mut self, dict: Self::Dict) -> Self::Node;
}

/// Builds [`Value`] trees.
pub struct ValueBuilder;

impl Builder for ValueBuilder {
    type Node = Value;
    type Array = Vec<Value>;
    type Dict = Vec<(String, Value)>;
    const SHARES_NODES: bool = false;
    fn string(&mut self, s: &str) -> Value {
        Value::String(s.to_owned())
    }
    fn integer(&mut self, i: i128) -> Value {
        Value::Integer(i)
    }
    fn real(&mut self, r: f64) -> Value {
        Value::Real(r)
    }
    fn boolean(&mut self, b: bool) -> Value {
        Value::Boolean(b)
    }
    fn date(&mut self, secs: f64) -> Value {
        Value::Date(secs)
    }
    fn data(&mut self, d: &[u8]) -> Value {
        Value::Data(d.to_vec())
    }
    fn uid(&mut self, u: u64) -> Value {
        Value::Uid(u)
    }
    fn null(&mut self) -> Value {
        Value::Null
    }
    fn array_start(&mut self, len: usize) -> Vec<Value> {
        Vec::with_capacity(len.min(1024))
    }
    fn array_push(&mut self, array: &mut Vec<Value>, item: Value) {
        array.push(item);
    }
    fn array_end(&mut self, array: Vec<Value>) -> Value {
        Value::Array(array)
    }
    fn dict_start(&mut self, len: usize) -> Vec<(String, Value)> {
        Vec::with_capacity(len.min(1024))
    }
    fn dict_insert(&mut self, dict: &mut Vec<(String, Value)>, key: Value, value: Value) {
        let key = match key {
            Value::String(k) => k,
            other => format!("{other:?}"),
        };
        dict.push((key, value));
    }
    fn dict_end(&mut self, dict: Vec<(String, Value)>) -> Value {
        Value::Dict(dict)
    }
}

/// Decodes a binary plist (starts with `bplist00`) or an XML one into a [`Value`].
pub fn decode(data: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    decode_with(data, limits, &mut ValueBuilder)
}

/// Decodes a binary or XML plist, building nodes with `builder`.
pub fn decode_with<B: Builder>(
    data: &[u8],
    limits: &Limits,
    builder: &mut B,
) -> Result<B::Node, DecodeError> {
    if data.len() > limits.max_bytes {
        return Err(DecodeError::new(
            ErrorKind::Limit,
            limits.max_bytes,
            format!(
                "plist is {} bytes, over the limit of {}",
                data.len(),
                limits.max_bytes
            ),
        ));
    }
    if data.starts_with(b"bplist") {
        binary::decode(data, limits, builder)
    } else {
        xml::decode(data, limits, builder)
    }
}

/// Path segments for encode errors, built only when an error is reported.
pub(crate) fn join_path(parent: &dyn Fn() -> String, segment: &str) -> String {
    let p = parent();
    if p.is_empty() {
        segment.trim_start_matches('.').to_owned()
    } else {
        format!("{p}{segment}")
    }
}
