//! HTTP/1.1 request heads and chunked request bodies (RFC 9112), parsed from bytes.
//!
//! The rules are the ones the gateway's server applied while h11 parsed its requests, so
//! that what was refused stays refused: a request line of exactly `method SP target SP
//! HTTP/d.d` with a visible-ASCII target; header names that are tokens followed at once by a
//! colon; one Host on HTTP/1.1; one Content-Length value (repeats must agree); only
//! `Transfer-Encoding: chunked`; nothing but bytes before a request line. Where they differ
//! from h11 they are stricter, each for a reason given where it is checked: HTTP versions
//! other than 1.0 and 1.1 (505), obsolete line folding, control bytes in field values,
//! Content-Length together with Transfer-Encoding, and Transfer-Encoding on HTTP/1.0.
//!
//! Tokenising is httparse's; what it leaves to the caller (framing, Host, the target's bytes)
//! is checked here. Nothing allocates per byte, and a head that arrives in pieces is never
//! rescanned from its start: the caller hands back how far the previous call looked.

mod chunked;
#[cfg(test)]
mod tests;

use std::fmt;

use memchr::memchr;

pub use chunked::{ChunkedDecoder, Progress};

/// What a server answers when the client sends no other size: h11's default and IIS's.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;

/// Headers parsed without allocating; a head with more takes a second, sized pass.
const INLINE_FIELDS: usize = 32;

/// The request's protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// As `Request.http_version` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        }
    }
}

/// One header line: the name as the client spelled it, the value without surrounding
/// whitespace (Content-Length as its one number, Transfer-Encoding as `chunked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// A complete, accepted request head and what framing the body needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Visible ASCII only.
    pub target: &'a str,
    pub version: Version,
    pub fields: Vec<Field<'a>>,
    /// Bytes from the request line up to and including the blank line; the body (or the next
    /// request) starts there.
    pub length: usize,
    /// The body's declared length. `None` with `chunked` false: no body. Lengths beyond
    /// `u64` are kept as `u64::MAX` (over any body limit all the same).
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1: the client waits for an interim answer.
    pub expect_continue: bool,
}

/// What a buffer holds so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// No complete head yet. Call again with more bytes appended and this `scanned`: the
    /// bytes before it hold no end of head. `seen` is the head's bytes so far.
    Incomplete {
        seen: usize,
        scanned: usize,
    },
    Complete(RequestHead<'a>),
}

/// A refused request: the status to answer and what was wrong, for the answer's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub message: String,
}

impl RequestError {
    pub(crate) fn bad(message: impl Into<String>) -> RequestError {
        RequestError {
            status: 400,
            message: message.into(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for RequestError {}

/// tchar (RFC 9110 section 5.6.2).
pub(crate) fn is_token(b: u8) -> bool {
    matches!(b,
        b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~')
}

/// `"X"` for printable ASCII, `0xNN` otherwise: a byte named in an error message.
pub(crate) fn byte_name(b: u8) -> String {
    if (0x21..0x7f).contains(&b) {
        format!("{:?}", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// Up to 60 bytes of `line`, escaped, for an error message.
pub(crate) fn quote(line: &[u8]) -> String {
    let cut = &line[..line.len().min(60)];
    let mut out = String::with_capacity(cut.len() + 8);
    out.push('"');
    for &b in cut {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    if line.len() > cut.len() {
        out.push_str("...");
    }
    out
}

/// The end of the first blank line at or after `from` (`\n\n` or `\n\r\n`), if any.
pub(crate) fn blank_line_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = memchr(b'\n', &bytes[at..]) {
        let nl = at + i;
        match bytes.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if bytes.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            None => return None,
            _ => at = nl + 1,
        }
    }
    None
}

/// Parses the request head at the start of `buf`.
///
/// `scanned` is 0 for a new head, else what the previous call on the same (grown) buffer
/// answered. A head longer than `max_head` bytes is refused with 431, whether or not it is
/// complete, and without looking past `max_head` bytes.
pub fn parse_head(buf: &[u8], scanned: usize, max_head: usize) -> Result<Head<'_>, RequestError> {
    let Some(&first) = buf.first() else {
        return Ok(Head::Incomplete {
            seen: 0,
            scanned: 0,
        });
    };
    // Decided on the first byte, as h11 did: a TLS handshake sent to the cleartext port, or
    // empty lines before the request, are refused at once instead of waiting for a timeout.
    if !is_token(first) {
        return Err(RequestError::bad(format!(
            "the request line starts with {}, not a method",
            byte_name(first)
        )));
    }
    let window = &buf[..buf.len().min(max_head)];
    let Some(end) = blank_line_end(window, scanned.min(window.len())) else {
        if buf.len() >= max_head {
            return Err(too_large(max_head));
        }
        return Ok(Head::Incomplete {
            seen: buf.len(),
            scanned: buf.len().saturating_sub(2),
        });
    };
    parse_complete(&buf[..end]).map(Head::Complete)
}

fn too_large(max_head: usize) -> RequestError {
    RequestError {
        status: 431,
        message: format!("request line and headers exceed {max_head} bytes"),
    }
}

/// httparse's reading of a head.
struct Tokens<'b> {
    status: httparse::Result<usize>,
    method: Option<&'b str>,
    target: Option<&'b str>,
    minor: Option<u8>,
    fields: Vec<Field<'b>>,
}

fn tokenise<'b>(head: &'b [u8], slots: &mut [httparse::Header<'b>]) -> Tokens<'b> {
    let mut request = httparse::Request::new(slots);
    let status = request.parse(head);
    let fields = match status {
        Ok(httparse::Status::Complete(_)) => request
            .headers
            .iter()
            .map(|h| Field {
                name: h.name.as_bytes(),
                value: h.value,
            })
            .collect(),
        _ => Vec::new(),
    };
    Tokens {
        status,
        method: request.method,
        target: request.path,
        minor: request.version,
        fields,
    }
}

/// Parses a head known to end with its blank line.
fn parse_complete(head: &[u8]) -> Result<RequestHead<'_>, RequestError> {
    let mut inline = [httparse::EMPTY_HEADER; INLINE_FIELDS];
    let mut tokens = tokenise(head, &mut inline);
    if tokens.status == Err(httparse::Error::TooManyHeaders) {
        // Every header takes a line: that many slots are enough.
        let mut slots = vec![httparse::EMPTY_HEADER; memchr::memchr_iter(b'\n', head).count()];
        tokens = tokenise(head, &mut slots);
    }
    match tokens.status {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(diagnose(head)),
        Err(httparse::Error::Version) => return Err(version_error(head)),
        Err(_) => return Err(diagnose(head)),
    }
    let (Some(method), Some(target), Some(minor)) = (tokens.method, tokens.target, tokens.minor)
    else {
        return Err(diagnose(head));
    };
    // httparse lets bytes above 0x7e through; h11 did not, and a path is ASCII on the wire.
    if let Some(&b) = target.as_bytes().iter().find(|&&b| b > 0x7e) {
        return Err(RequestError::bad(format!(
            "byte {} in the request target",
            byte_name(b)
        )));
    }
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let mut fields = tokens.fields;
    let framing = Framing::read(&mut fields, version)?;
    Ok(RequestHead {
        method,
        target,
        version,
        fields,
        length: head.len(),
        content_length: framing.content_length,
        chunked: framing.chunked,
        // After a CONNECT the bytes that follow are no longer HTTP (h11 stopped there too).
        keep_alive: framing.keep_alive && method != "CONNECT",
        expect_continue: framing.expect_continue,
    })
}

/// What the fields say about framing and the connection, checked in the order h11 checked.
struct Framing {
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Framing {
    /// Also leaves the framing fields as h11 handed them on: a Content-Length list as its one
    /// value and repeats of it dropped, `chunked` in lower case.
    fn read(fields: &mut Vec<Field<'_>>, version: Version) -> Result<Framing, RequestError> {
        let mut length: Option<&[u8]> = None;
        let mut repeated_length = false;
        let mut chunked = false;
        let mut hosts = 0usize;
        let mut close = false;
        let mut keep_alive_asked = false;
        let mut continue_asked = false;
        for field in fields.iter_mut() {
            let name = field.name;
            // Names are tokens (ASCII): a length check first skips most comparisons.
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
                6 if name.eq_ignore_ascii_case(b"expect") => {
                    continue_asked |= has_token(field.value, b"100-continue");
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    close |= has_token(field.value, b"close");
                    keep_alive_asked |= has_token(field.value, b"keep-alive");
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let value = single_length(field.value)?;
                    match length {
                        Some(seen) if seen != value => {
                            return Err(RequestError::bad(format!(
                                "conflicting Content-Length values {} and {}",
                                quote(seen),
                                quote(value)
                            )))
                        }
                        Some(_) => repeated_length = true,
                        None => length = Some(value),
                    }
                    field.value = value;
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    if chunked {
                        return Err(not_implemented("more than one Transfer-Encoding header"));
                    }
                    if !field.value.eq_ignore_ascii_case(b"chunked") {
                        return Err(not_implemented(&format!(
                            "Transfer-Encoding {} (only chunked is supported)",
                            quote(field.value)
                        )));
                    }
                    chunked = true;
                    field.value = b"chunked";
                }
                _ => {}
            }
        }
        if repeated_length {
            let mut first = true;
            fields.retain(|f| {
                !f.name.eq_ignore_ascii_case(b"content-length") || std::mem::take(&mut first)
            });
        }
        if version == Version::Http11 && hosts == 0 {
            return Err(RequestError::bad("no Host header (HTTP/1.1 requires one)"));
        }
        if hosts > 1 {
            return Err(RequestError::bad("more than one Host header"));
        }
        if chunked && length.is_some() {
            // h11 let chunked win; a proxy in front that framed by Content-Length would read
            // the rest as another request (request smuggling). RFC 9112 section 6.1 allows
            // treating this as an error.
            return Err(RequestError::bad(
                "Content-Length and Transfer-Encoding together are ambiguous framing \
                 (RFC 9112 section 6.1); send one of them",
            ));
        }
        if chunked && version == Version::Http10 {
            // RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding MUST be
            // treated as having faulty framing (1.0 intermediaries do not know chunked).
            return Err(RequestError::bad(
                "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)",
            ));
        }
        Ok(Framing {
            content_length: length.map(decimal),
            chunked,
            keep_alive: !close && (version == Version::Http11 || keep_alive_asked),
            expect_continue: version == Version::Http11 && continue_asked,
        })
    }
}

fn not_implemented(message: &str) -> RequestError {
    RequestError {
        status: 501,
        message: message.to_owned(),
    }
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| trim_ows(item).eq_ignore_ascii_case(token))
}

/// Content-Length digits, limited like h11's (20 digits: a billion terabytes).
const MAX_LENGTH_DIGITS: usize = 20;

/// The one value a Content-Length field holds. A list of equal values (`5, 5`, which some
/// intermediaries produce) counts as that value; differing ones are refused.
fn single_length(value: &[u8]) -> Result<&[u8], RequestError> {
    let mut items = value.split(|&b| b == b',').map(trim_ows);
    let first = items.next().unwrap_or_default();
    if items.any(|item| item != first) {
        return Err(RequestError::bad(format!(
            "conflicting Content-Length values in {}",
            quote(value)
        )));
    }
    if first.is_empty() || first.len() > MAX_LENGTH_DIGITS || !first.iter().all(u8::is_ascii_digit)
    {
        return Err(RequestError::bad(format!(
            "invalid Content-Length {}",
            quote(value)
        )));
    }
    Ok(first)
}

/// Decimal digits as a number, `u64::MAX` when larger.
fn decimal(digits: &[u8]) -> u64 {
    digits
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(u64::MAX)
}

/// The request line of `head`, without its line ending.
fn request_line(head: &[u8]) -> &[u8] {
    let line = memchr(b'\n', head).map_or(head, |i| &head[..i]);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// 505 for a well-formed `HTTP/d.d` other than 1.0 and 1.1; 400 for anything else there.
fn version_error(head: &[u8]) -> RequestError {
    let line = request_line(head);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            RequestError {
                status: 505,
                message: format!(
                    "HTTP/{}.{} is not supported: this server speaks HTTP/1.0 and HTTP/1.1",
                    *major as char, *minor as char
                ),
            }
        }
        _ => RequestError::bad(format!("malformed request line {}", quote(line))),
    }
}

/// Why httparse refused `head`, in words: found by walking it again (only on refusal).
fn diagnose(head: &[u8]) -> RequestError {
    let mut lines = head.split(|&b| b == b'\n');
    let line = lines.next().unwrap_or_default();
    if let Some(problem) = request_line_problem(line) {
        return RequestError::bad(problem);
    }
    for raw in lines {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if let Some(problem) = field_problem(line) {
            return RequestError::bad(problem);
        }
    }
    RequestError::bad("malformed request head")
}

fn request_line_problem(raw: &[u8]) -> Option<String> {
    let line = raw.strip_suffix(b"\r").unwrap_or(raw);
    if line.contains(&b'\r') {
        return Some(format!("stray CR in the request line {}", quote(raw)));
    }
    request_line_parts(line)
}

fn request_line_parts(line: &[u8]) -> Option<String> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(format!(
            "malformed request line {} (expected: method SP target SP version)",
            quote(line)
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Some(format!(
            "invalid method in the request line {}",
            quote(line)
        ));
    }
    if let Some(&b) = target.iter().find(|&&b| !(0x21..0x7f).contains(&b)) {
        return Some(format!("byte {} in the request target", byte_name(b)));
    }
    if target.is_empty() {
        return Some(format!("empty request target in {}", quote(line)));
    }
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            None
        }
        _ => Some(format!("malformed HTTP version {}", quote(version))),
    }
}

/// What is wrong with one header (or trailer) line, if anything.
pub(crate) fn field_problem(line: &[u8]) -> Option<String> {
    if let [b' ' | b'\t', ..] = line {
        // RFC 9112 section 5.2 lets a server refuse obs-fold instead of unfolding it; a proxy
        // in front that did not unfold would see different headers than we do.
        return Some(format!(
            "obsolete line folding (a header line that starts with whitespace): {}",
            quote(line)
        ));
    }
    let Some(colon) = memchr(b':', line) else {
        return Some(format!("header line without a colon: {}", quote(line)));
    };
    let name = &line[..colon];
    if name.is_empty() {
        return Some(format!("header line with an empty name: {}", quote(line)));
    }
    if let [.., b' ' | b'\t'] = name {
        return Some(format!(
            "whitespace between a header name and its colon: {}",
            quote(line)
        ));
    }
    if let Some(&b) = name.iter().find(|&&b| !is_token(b)) {
        return Some(format!(
            "byte {} in the header name {}",
            byte_name(b),
            quote(name)
        ));
    }
    // Control bytes (other than HTAB) are refused in values, CR, LF and NUL as RFC 9110
    // section 5.5 requires and the others because no device sends them and they are what
    // header injection is made of; h11 let 0x01-0x08 and 0x0e-0x1f through.
    if let Some(&b) = line[colon + 1..]
        .iter()
        .find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Some(format!(
            "control byte {} in the value of header {}",
            byte_name(b),
            quote(name)
        ));
    }
    None
}
