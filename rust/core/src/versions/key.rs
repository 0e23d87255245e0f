//! Sort-key encodings, one per [`Scheme`].
//!
//! Numbers are stored without leading zeros as `len, digits` so that longer means larger
//! and equal lengths compare digit by digit: no integer width limits a part.
//!
//! * VersionCode: the value as 4 big-endian bytes.
//! * Bundle: per part `0x01 len digits`, trailing zero parts dropped, then `0x00`, then
//!   the stage (`d`=1 `a`=2 `b`=3 `fc`=4, release=5) and, before release, its number.
//! * FourPart: the first three parts as big-endian `u16`s (the fourth is checked, not kept).
//! * Generic: per token, a word as `0x01 lowercase-bytes 0x00`, a number as
//!   `0x03 len digits`; then `0x02` for the end. word < end < number gives "a letter run
//!   marks a pre-release" (`1.0rc1` < `1.0` < `1.0.1`). Trailing zero numbers of a run of
//!   numbers are dropped, keeping at least one.

use super::{Platform, Reason, Scheme, VersionError};

/// Longest accepted version string, in bytes. Real versions are far shorter; the cap keeps
/// every length byte of the key within `u8`.
pub const MAX_VERSION_LEN: usize = 255;

const BUNDLE_PART: u8 = 0x01;
const BUNDLE_END: u8 = 0x00;
const STAGE_RELEASE: u8 = 5;

const GENERIC_WORD: u8 = 0x01;
const GENERIC_END: u8 = 0x02;
const GENERIC_NUMBER: u8 = 0x03;

/// Appends the sort key of `version` to `out`. On error `out` is left as it was.
pub fn write_key(platform: Platform, version: &str, out: &mut Vec<u8>) -> Result<(), VersionError> {
    let bytes = version.as_bytes();
    if bytes.len() > MAX_VERSION_LEN {
        return Err(VersionError::new(MAX_VERSION_LEN, Reason::TooLong));
    }
    let Some(start) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(VersionError::new(0, Reason::Empty));
    };
    let end = bytes.len()
        - bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let text = Text {
        full: version,
        start,
        end,
    };
    let mark = out.len();
    let result = match platform.scheme() {
        Scheme::VersionCode => version_code(&text, out),
        Scheme::Bundle => bundle(&text, out),
        Scheme::FourPart => four_part(&text, out),
        Scheme::Generic => generic(&text, out),
    };
    if result.is_err() {
        out.truncate(mark);
    }
    result
}

/// The trimmed version inside the original string, so errors can name original offsets.
struct Text<'a> {
    full: &'a str,
    start: usize,
    end: usize,
}

impl Text<'_> {
    fn byte(&self, i: usize) -> Option<u8> {
        if i < self.end {
            Some(self.full.as_bytes()[i])
        } else {
            None
        }
    }

    /// Scans the digit run at `i`: returns (first significant digit, end of run).
    fn digits(&self, i: usize) -> (usize, usize) {
        let b = self.full.as_bytes();
        let mut end = i;
        while end < self.end && b[end].is_ascii_digit() {
            end += 1;
        }
        let mut sig = i;
        while sig < end && b[sig] == b'0' {
            sig += 1;
        }
        (sig, end)
    }

    fn unexpected(&self, i: usize) -> VersionError {
        // Scanners only step over ASCII before calling this, so `i` is a char boundary.
        let c = self.full[i..].chars().next().unwrap_or('\u{fffd}');
        VersionError::new(i, Reason::Unexpected(c))
    }

    /// Error for a missing digit run at `i`.
    fn missing_digits(&self, i: usize) -> VersionError {
        match self.byte(i) {
            None | Some(b'.') => VersionError::new(i, Reason::EmptyPart),
            Some(_) => self.unexpected(i),
        }
    }
}

fn push_number(out: &mut Vec<u8>, digits: &[u8]) {
    // MAX_VERSION_LEN bounds every run to 255 digits.
    out.push(digits.len() as u8);
    out.extend_from_slice(digits);
}

fn version_code(t: &Text<'_>, out: &mut Vec<u8>) -> Result<(), VersionError> {
    let mut value: u64 = 0;
    for i in t.start..t.end {
        let b = t.full.as_bytes()[i];
        if !b.is_ascii_digit() {
            return Err(t.unexpected(i));
        }
        value = value * 10 + u64::from(b - b'0');
        if value > i32::MAX as u64 {
            return Err(VersionError::new(t.start, Reason::VersionCodeTooLarge));
        }
    }
    out.extend_from_slice(&(value as u32).to_be_bytes());
    Ok(())
}

fn bundle(t: &Text<'_>, out: &mut Vec<u8>) -> Result<(), VersionError> {
    let b = t.full.as_bytes();
    let mut keep = out.len();
    let mut i = t.start;
    let (stage, stage_digits) = loop {
        let (sig, end) = t.digits(i);
        if end == i {
            return Err(t.missing_digits(i));
        }
        out.push(BUNDLE_PART);
        push_number(out, &b[sig..end]);
        if sig < end {
            keep = out.len();
        }
        i = end;
        match t.byte(i) {
            None => break (STAGE_RELEASE, &b[0..0]),
            Some(b'.') => i += 1,
            Some(c) => {
                let (stage, len) = match c.to_ascii_lowercase() {
                    b'd' => (1, 1),
                    b'a' => (2, 1),
                    b'b' => (3, 1),
                    b'f' if t.byte(i + 1).map(|x| x.to_ascii_lowercase()) == Some(b'c') => (4, 2),
                    _ => return Err(t.unexpected(i)),
                };
                i += len;
                let (sig, end) = t.digits(i);
                if end != t.end {
                    return Err(t.unexpected(end));
                }
                break (stage, &b[sig..end]);
            }
        }
    };
    out.truncate(keep);
    out.push(BUNDLE_END);
    out.push(stage);
    if stage != STAGE_RELEASE {
        push_number(out, stage_digits);
    }
    Ok(())
}

fn four_part(t: &Text<'_>, out: &mut Vec<u8>) -> Result<(), VersionError> {
    let b = t.full.as_bytes();
    let mut parts = [0u16; 3];
    let mut i = t.start;
    for part in 1..=4 {
        let (_, end) = t.digits(i);
        if end == i {
            return Err(t.missing_digits(i));
        }
        let mut value: u32 = 0;
        for &d in &b[i..end] {
            value = value * 10 + u32::from(d - b'0');
            if value > u32::from(u16::MAX) {
                return Err(VersionError::new(i, Reason::PartTooLarge { part }));
            }
        }
        if part <= 3 {
            parts[part - 1] = value as u16;
        }
        i = end;
        match t.byte(i) {
            None => break,
            Some(b'.') if part < 4 => i += 1,
            Some(b'.') => return Err(VersionError::new(i, Reason::TooManyParts)),
            Some(_) => return Err(t.unexpected(i)),
        }
    }
    for p in parts {
        out.extend_from_slice(&p.to_be_bytes());
    }
    Ok(())
}

fn generic(t: &Text<'_>, out: &mut Vec<u8>) -> Result<(), VersionError> {
    let b = t.full.as_bytes();
    let mut i = t.start;
    if matches!(t.byte(i), Some(b'v' | b'V')) && t.byte(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
    }
    let mut tokens = 0usize;
    // Output position up to which the current run of numbers is kept (None outside a run).
    let mut run_keep: Option<usize> = None;
    while i < t.end {
        let c = b[i];
        if c.is_ascii_digit() {
            let (sig, end) = t.digits(i);
            out.push(GENERIC_NUMBER);
            push_number(out, &b[sig..end]);
            if run_keep.is_none() || sig < end {
                run_keep = Some(out.len());
            }
            tokens += 1;
            i = end;
        } else if is_word_start(t, i) {
            if let Some(keep) = run_keep.take() {
                out.truncate(keep);
            }
            out.push(GENERIC_WORD);
            while i < t.end && is_word_start(t, i) {
                let ch = t.full[i..].chars().next().unwrap_or('\u{fffd}');
                let n = ch.len_utf8();
                if n == 1 {
                    out.push(b[i].to_ascii_lowercase());
                } else {
                    out.extend_from_slice(&b[i..i + n]);
                }
                i += n;
            }
            out.push(0x00);
            tokens += 1;
        } else {
            // Separator; non-ASCII separators are skipped whole.
            i += t.full[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    if tokens == 0 {
        return Err(VersionError::new(t.start, Reason::NoAlphanumerics));
    }
    if let Some(keep) = run_keep {
        out.truncate(keep);
    }
    out.push(GENERIC_END);
    Ok(())
}

/// Letters start words: ASCII letters and any non-ASCII alphanumeric character.
fn is_word_start(t: &Text<'_>, i: usize) -> bool {
    let c = t.full.as_bytes()[i];
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        t.full[i..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric)
    }
}
