//! SyncML as WBXML 1.2/1.3: every length and index is checked against the bytes actually
//! present before anything is allocated, so a header claiming a gigabyte costs nothing.

use super::decode::{Ev, Source};
use super::tags::name_of;
use super::{Attrs, DecodeError, ErrorKind, Limits, Value};

pub(crate) const SWITCH_PAGE: u8 = 0x00;
pub(crate) const END: u8 = 0x01;
const ENTITY: u8 = 0x02;
pub(crate) const STR_I: u8 = 0x03;
pub(crate) const LITERAL: u8 = 0x04;
const STR_T: u8 = 0x83;
pub(crate) const OPAQUE: u8 = 0xC3;
/// "-//SYNCML//DTD SyncML 1.2//EN"
const PUBLIC_ID_SYNCML_12: u32 = 0x1201;
const PUBLIC_ID_TEXT: &[u8] = b"-//SYNCML//DTD SyncML 1.2//EN";
const UTF_8: u32 = 106;

pub(crate) fn write_mb_u32(out: &mut Vec<u8>, value: u32) {
    let mut groups = [0u8; 5];
    let mut n = 0;
    let mut v = value;
    loop {
        groups[n] = (v & 0x7F) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(if i == 0 { groups[i] } else { groups[i] | 0x80 });
    }
}

pub(crate) struct WbxmlSource<'a> {
    data: &'a [u8],
    pos: usize,
    offset: usize,
    strtbl: &'a [u8],
    page: u8,
    /// Names of the open elements, for error messages.
    open: Vec<&'a str>,
    limits: Limits,
    elements: usize,
    attrs: Attrs,
}

impl<'a> WbxmlSource<'a> {
    pub(crate) fn new(data: &'a [u8], limits: &Limits) -> Result<WbxmlSource<'a>, DecodeError> {
        let mut src = WbxmlSource {
            data,
            pos: 0,
            offset: 0,
            strtbl: &[],
            page: 0,
            open: Vec::new(),
            limits: *limits,
            elements: 0,
            attrs: Attrs::new(),
        };
        let version = src.byte("WBXML version")?;
        if !(0x01..=0x03).contains(&version) {
            return Err(src.fail(
                ErrorKind::Syntax,
                format!("WBXML version byte 0x{version:02X} is not 1.1, 1.2 or 1.3"),
            ));
        }
        let public_id = src.mb_u32("public identifier")?;
        let public_index = if public_id == 0 {
            Some(src.mb_u32("public identifier index")?)
        } else {
            None
        };
        let charset = src.mb_u32("charset")?;
        if charset != UTF_8 && charset != 0 {
            return Err(src.fail(
                ErrorKind::Encoding,
                format!("WBXML charset MIBenum {charset} is not UTF-8 (106)"),
            ));
        }
        let len = src.mb_u32("string table length")? as usize;
        src.strtbl = src.take(len, "string table")?;
        match public_index {
            None if public_id == PUBLIC_ID_SYNCML_12 => {}
            None => {
                return Err(src.fail(
                    ErrorKind::Structure,
                    format!("WBXML public identifier 0x{public_id:X} is not SyncML 1.2 (0x1201)"),
                ))
            }
            Some(index) => {
                let text = src.table_string(index)?;
                if text.as_bytes() != PUBLIC_ID_TEXT {
                    return Err(src.fail(
                        ErrorKind::Structure,
                        format!("WBXML public identifier {text:?} is not SyncML 1.2"),
                    ));
                }
            }
        }
        Ok(src)
    }

    fn fail(&self, kind: ErrorKind, message: String) -> DecodeError {
        DecodeError::new(kind, self.offset, message)
    }

    fn truncated(&self, what: &str) -> DecodeError {
        DecodeError::new(
            ErrorKind::Syntax,
            self.data.len(),
            format!("WBXML input ends inside the {what}"),
        )
    }

    fn byte(&mut self, what: &str) -> Result<u8, DecodeError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| self.truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn mb_u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for _ in 0..5 {
            let b = self.byte(what)?;
            value = (value << 7) | u64::from(b & 0x7F);
            if b & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| {
                    DecodeError::new(
                        ErrorKind::Syntax,
                        start,
                        format!("{what} does not fit in 32 bits"),
                    )
                });
            }
        }
        Err(DecodeError::new(
            ErrorKind::Syntax,
            start,
            format!("{what} is longer than 5 bytes"),
        ))
    }

    /// `len` bytes, refused before any allocation if the input does not hold them.
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let remaining = self.data.len() - self.pos;
        if len > remaining {
            return Err(DecodeError::new(
                ErrorKind::Syntax,
                self.pos,
                format!("{what} claims {len} bytes but only {remaining} remain"),
            ));
        }
        let slice = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn utf8(&self, bytes: &'a [u8], what: &str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(bytes).map_err(|e| {
            DecodeError::new(
                ErrorKind::Encoding,
                self.offset,
                format!("{what} is not UTF-8 (byte {} of it)", e.valid_up_to()),
            )
        })
    }

    fn table_string(&self, index: u32) -> Result<&'a str, DecodeError> {
        let index = index as usize;
        let Some(tail) = self.strtbl.get(index..).filter(|t| !t.is_empty()) else {
            return Err(self.fail(
                ErrorKind::Syntax,
                format!(
                    "string table index {index} is outside the table of {} bytes",
                    self.strtbl.len()
                ),
            ));
        };
        let end = tail.iter().position(|b| *b == 0).ok_or_else(|| {
            self.fail(
                ErrorKind::Syntax,
                format!("string table entry at {index} is not terminated"),
            )
        })?;
        self.utf8(&tail[..end], "string table entry")
    }

    fn inline_string(&mut self) -> Result<&'a [u8], DecodeError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.truncated("inline string"))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn current(&self) -> &'a str {
        self.open.last().copied().unwrap_or("document")
    }

    /// Reads the attribute list after a tag with the attribute bit set.
    fn read_attrs(&mut self) -> Result<(), DecodeError> {
        self.attrs.clear();
        loop {
            self.offset = self.pos;
            match self.byte("attribute list")? {
                END => return Ok(()),
                LITERAL => {
                    let index = self.mb_u32("attribute name index")?;
                    let name = self.table_string(index)?.to_owned();
                    let mut value = String::new();
                    loop {
                        match self.data.get(self.pos).copied() {
                            Some(STR_I) => {
                                self.pos += 1;
                                let s = self.inline_string()?;
                                value.push_str(self.utf8(s, "attribute value")?);
                            }
                            Some(STR_T) => {
                                self.pos += 1;
                                let index = self.mb_u32("string table index")?;
                                value.push_str(self.table_string(index)?);
                            }
                            Some(ENTITY) => {
                                self.pos += 1;
                                value.push(self.entity()?);
                            }
                            Some(OPAQUE) => {
                                self.pos += 1;
                                let len = self.mb_u32("opaque length")? as usize;
                                let bytes = self.take(len, "opaque data")?;
                                value.push_str(self.utf8(bytes, "attribute value")?);
                            }
                            Some(_) => break,
                            None => return Err(self.truncated("attribute list")),
                        }
                    }
                    self.attrs.push((name, value));
                }
                other => {
                    return Err(self.fail(
                        ErrorKind::Structure,
                        format!("attribute token 0x{other:02X} is not defined for SyncML"),
                    ))
                }
            }
        }
    }

    fn entity(&mut self) -> Result<char, DecodeError> {
        let code = self.mb_u32("entity")?;
        char::from_u32(code).ok_or_else(|| {
            self.fail(
                ErrorKind::Syntax,
                format!("entity {code} is not a character"),
            )
        })
    }

    /// Content of the current element up to its END, as bytes (text and opaque data alike).
    fn content(&mut self, element: &str) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        loop {
            self.offset = self.pos;
            match self.byte("element content")? {
                END => {
                    self.open.pop();
                    return Ok(out);
                }
                STR_I => {
                    let s = self.inline_string()?;
                    out.extend_from_slice(s);
                }
                STR_T => {
                    let index = self.mb_u32("string table index")?;
                    out.extend_from_slice(self.table_string(index)?.as_bytes());
                }
                ENTITY => {
                    let c = self.entity()?;
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                OPAQUE => {
                    let len = self.mb_u32("opaque length")? as usize;
                    out.extend_from_slice(self.take(len, "opaque data")?);
                }
                SWITCH_PAGE => self.switch_page()?,
                _ => {
                    return Err(self.fail(
                        ErrorKind::Structure,
                        format!("<{element}> must hold text, not elements"),
                    ))
                }
            }
        }
    }

    fn switch_page(&mut self) -> Result<(), DecodeError> {
        let page = self.byte("code page switch")?;
        if page > 1 {
            return Err(self.fail(
                ErrorKind::Structure,
                format!("code page {page} is not SyncML (0) or MetInf (1)"),
            ));
        }
        self.page = page;
        Ok(())
    }
}

impl<'a> Source<'a> for WbxmlSource<'a> {
    fn next(&mut self) -> Result<Ev<'a>, DecodeError> {
        loop {
            self.offset = self.pos;
            let Some(&token) = self.data.get(self.pos) else {
                return Ok(Ev::Eof);
            };
            self.pos += 1;
            let name = match token {
                SWITCH_PAGE => {
                    self.switch_page()?;
                    continue;
                }
                END => {
                    if self.open.pop().is_none() {
                        return Err(
                            self.fail(ErrorKind::Syntax, "END token with no open element".into())
                        );
                    }
                    return Ok(Ev::End);
                }
                STR_I => {
                    let s = self.inline_string()?;
                    return Ok(Ev::Text {
                        blank: s.iter().all(u8::is_ascii_whitespace),
                    });
                }
                STR_T | ENTITY => {
                    self.mb_u32("operand")?;
                    return Ok(Ev::Text { blank: false });
                }
                OPAQUE => {
                    let len = self.mb_u32("opaque length")? as usize;
                    self.take(len, "opaque data")?;
                    return Ok(Ev::Text { blank: false });
                }
                t if t & 0x3F == LITERAL => {
                    let index = self.mb_u32("tag name index")?;
                    self.table_string(index)?
                }
                t if t & 0x3F < 0x05 => {
                    return Err(self.fail(
                        ErrorKind::Structure,
                        format!("WBXML token 0x{t:02X} is not used by SyncML"),
                    ))
                }
                t => name_of(self.page, t & 0x3F).ok_or_else(|| {
                    self.fail(
                        ErrorKind::Structure,
                        format!(
                            "unknown tag token 0x{:02X} on code page {}",
                            t & 0x3F,
                            self.page
                        ),
                    )
                })?,
            };
            self.elements += 1;
            if self.elements > self.limits.max_elements {
                return Err(self.fail(
                    ErrorKind::Limit,
                    format!(
                        "element count exceeds the limit of {}",
                        self.limits.max_elements
                    ),
                ));
            }
            if self.open.len() + 1 > self.limits.max_depth {
                return Err(self.fail(
                    ErrorKind::Limit,
                    format!(
                        "nesting depth exceeds the limit of {}",
                        self.limits.max_depth
                    ),
                ));
            }
            if token & 0x80 != 0 {
                self.read_attrs()?;
            } else {
                self.attrs.clear();
            }
            let empty = token & 0x40 == 0;
            if !empty {
                self.open.push(name);
            }
            return Ok(Ev::Start { name, empty });
        }
    }

    fn offset(&self) -> usize {
        self.offset
    }

    fn text(&mut self, element: &str) -> Result<String, DecodeError> {
        let bytes = self.content(element)?;
        String::from_utf8(bytes).map_err(|e| {
            self.fail(
                ErrorKind::Encoding,
                format!(
                    "text of <{element}> is not UTF-8 (byte {} of it)",
                    e.utf8_error().valid_up_to()
                ),
            )
        })
    }

    fn data(&mut self) -> Result<Value, DecodeError> {
        let element = self.current();
        let bytes = self.content(element)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Binary(e.into_bytes()),
        })
    }

    fn attrs(&mut self) -> Result<Attrs, DecodeError> {
        Ok(std::mem::take(&mut self.attrs))
    }
}
