//! The error every decoder returns: why the input was refused and where.

use std::fmt;

/// Why an input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not well-formed: XML, WBXML tokens or binary plist structure that does not parse.
    Syntax,
    /// Bytes that are not UTF-8 (or UTF-16 where that is the format), or a declared
    /// encoding other than UTF-8.
    Encoding,
    /// A DTD internal subset, an entity declaration or an undefined entity reference.
    Entity,
    /// A configured cap (size, depth, element or value count) was exceeded.
    Limit,
    /// Well-formed, but not the expected format: unknown or misplaced elements or values.
    Structure,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Encoding => "encoding",
            ErrorKind::Entity => "entity",
            ErrorKind::Limit => "limit",
            ErrorKind::Structure => "structure",
        }
    }
}

/// A refused input: what was wrong and the byte offset where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub offset: usize,
    pub message: String,
}

impl DecodeError {
    pub fn new(kind: ErrorKind, offset: usize, message: impl Into<String>) -> DecodeError {
        DecodeError {
            kind,
            offset,
            message: message.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for DecodeError {}
