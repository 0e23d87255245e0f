//! The chunked transfer coding (RFC 9112 section 7.1), decoded as the bytes arrive.
//!
//! Accepted as h11 accepted it: 1 to 20 hex digits, then either `;` and an extension or
//! optional spaces, then CRLF; CRLF after each chunk's data; trailer lines up to a blank
//! line. Stricter in three places, like the head: control bytes in an extension, obsolete
//! line folding in the trailer, and framing fields (Content-Length, Transfer-Encoding) in the
//! trailer, which RFC 9110 section 6.5.1 forbids senders to put there.

use memchr::memchr;

use super::{blank_line_end, byte_name, field_problem, quote, RequestError};

/// h11's cap on the chunk-size digits (a 20-digit size is far beyond any body limit).
const MAX_SIZE_DIGITS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: its data bytes still to come.
    Data(u64),
    /// After a chunk's data: its CRLF, `true` once the CR is in.
    DataEnd(bool),
    /// After the last chunk: trailer lines up to the blank line.
    Trailer,
    Done,
    Failed,
}

/// How far a call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input used; the rest must start the next call's input.
    pub consumed: usize,
    /// The body is complete (the trailer's blank line is in).
    pub done: bool,
}

/// An incremental decoder of one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_line: usize,
    max_trailer: usize,
    /// Bytes at the start of the input known to hold no end of the pending line or trailer,
    /// so that a line trickling in is not searched from its start every time.
    scanned: usize,
    decoded: u64,
}

impl ChunkedDecoder {
    /// A decoder that refuses chunk-size lines over `max_line` bytes and trailers over
    /// `max_trailer` bytes (each counted with their line endings).
    pub fn new(max_line: usize, max_trailer: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            max_line: max_line.max(3),
            max_trailer: max_trailer.max(2),
            scanned: 0,
            decoded: 0,
        }
    }

    /// Data bytes decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what `input` holds, handing chunk data to `data` in order (as slices of
    /// `input`). Bytes not consumed (a chunk-size line or trailer still arriving) must start
    /// the next call's input, followed by what came since; once done, the bytes after the
    /// body are left alone. After an error every call fails.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut data: impl FnMut(&'a [u8]),
    ) -> Result<Progress, RequestError> {
        if self.state == State::Failed {
            return Err(RequestError::bad("the chunked body was already refused"));
        }
        let result = self.run(input, &mut data);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn run<'a>(
        &mut self,
        input: &'a [u8],
        data: &mut impl FnMut(&'a [u8]),
    ) -> Result<Progress, RequestError> {
        let mut at = 0;
        let pending = |at| {
            Ok(Progress {
                consumed: at,
                done: false,
            })
        };
        loop {
            match self.state {
                State::Size => {
                    let rest = &input[at..];
                    let window = &rest[..rest.len().min(self.max_line)];
                    let from = self.scanned.min(window.len());
                    let Some(lf) = memchr(b'\n', &window[from..]).map(|i| from + i) else {
                        if rest.len() >= self.max_line {
                            return Err(RequestError::bad(format!(
                                "chunk-size line longer than {} bytes",
                                self.max_line
                            )));
                        }
                        self.scanned = rest.len();
                        return pending(at);
                    };
                    self.scanned = 0;
                    let size = chunk_size(&rest[..lf])?;
                    at += lf + 1;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    let available = input.len() - at;
                    if available == 0 {
                        return pending(at);
                    }
                    let take = usize::try_from(left).map_or(available, |l| l.min(available));
                    data(&input[at..at + take]);
                    at += take;
                    self.decoded = self.decoded.saturating_add(take as u64);
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd(false)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(cr_seen) => {
                    let Some(&b) = input.get(at) else {
                        return pending(at);
                    };
                    let expected = if cr_seen { b'\n' } else { b'\r' };
                    if b != expected {
                        return Err(RequestError::bad(format!(
                            "chunk data not followed by CRLF (found {})",
                            byte_name(b)
                        )));
                    }
                    at += 1;
                    self.state = if cr_seen {
                        State::Size
                    } else {
                        State::DataEnd(true)
                    };
                }
                State::Trailer => match &input[at..] {
                    [] | [b'\r'] => return pending(at),
                    [b'\n', ..] => {
                        at += 1;
                        self.state = State::Done;
                    }
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        self.state = State::Done;
                    }
                    rest => {
                        let window = &rest[..rest.len().min(self.max_trailer)];
                        let from = self.scanned.min(window.len());
                        let Some(end) = blank_line_end(window, from) else {
                            if rest.len() >= self.max_trailer {
                                return Err(RequestError::bad(format!(
                                    "chunked trailer longer than {} bytes",
                                    self.max_trailer
                                )));
                            }
                            self.scanned = rest.len().saturating_sub(2);
                            return pending(at);
                        };
                        check_trailer(&rest[..end])?;
                        self.scanned = 0;
                        at += end;
                        self.state = State::Done;
                    }
                },
                State::Done => {
                    return Ok(Progress {
                        consumed: at,
                        done: true,
                    })
                }
                State::Failed => {
                    return Err(RequestError::bad("the chunked body was already refused"))
                }
            }
        }
    }
}

/// The size a chunk-size line (without its LF) announces.
fn chunk_size(raw: &[u8]) -> Result<u64, RequestError> {
    let Some(line) = raw.strip_suffix(b"\r") else {
        return Err(RequestError::bad(format!(
            "chunk-size line {} ends in a bare LF",
            quote(raw)
        )));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return Err(RequestError::bad(format!(
            "invalid chunk size in {}",
            quote(raw)
        )));
    }
    let rest = &line[digits..];
    let acceptable = match rest {
        // An extension: nothing reads it, but it must not carry control bytes.
        [b';', ext @ ..] => ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
        _ => rest.iter().all(|&b| b == b' ' || b == b'\t'),
    };
    if !acceptable {
        return Err(RequestError::bad(format!(
            "invalid chunk-size line {}",
            quote(raw)
        )));
    }
    Ok(line[..digits]
        .iter()
        .try_fold(0u64, |n, &d| {
            let digit = u64::from(char::from(d).to_digit(16).unwrap_or(0));
            n.checked_mul(16)?.checked_add(digit)
        })
        .unwrap_or(u64::MAX))
}

/// Checks trailer lines, which end with the blank line that closes them.
fn check_trailer(block: &[u8]) -> Result<(), RequestError> {
    for raw in block.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if let Some(problem) = field_problem(line) {
            return Err(RequestError::bad(format!(
                "in the chunked trailer: {problem}"
            )));
        }
        let name = &line[..memchr(b':', line).unwrap_or(0)];
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return Err(RequestError::bad(format!(
                "framing field {} in the chunked trailer",
                quote(name)
            )));
        }
    }
    Ok(())
}
