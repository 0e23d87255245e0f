//! Character-level XML rules shared by the SyncML and plist codecs.

/// Whether XML 1.0 allows `c` in a document.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The first character of `text` that XML cannot carry. Valid UTF-8 can only be outside the
/// XML range as a C0 control or U+FFFE/U+FFFF (EF BF BE/BF); both are rare, so the bytes are
/// scanned a block at a time before any character is looked at.
pub fn first_invalid_char(text: &str) -> Option<char> {
    let bytes = text.as_bytes();
    let control = bytes
        .chunks(32)
        .any(|block| block.iter().fold(false, |seen, &b| seen | (b < 0x20)));
    if control || memchr::memchr(0xEF, bytes).is_some() {
        text.chars().find(|c| !is_xml_char(*c))
    } else {
        None
    }
}

/// Appends `text` escaped once: `&`, `<` and `>` (also `"`, tab and newline in attribute
/// values). A carriage return becomes `&#13;`, because a parser would otherwise fold it into
/// a newline. Returns the first character XML cannot carry instead of writing it.
pub fn escape_into(out: &mut Vec<u8>, text: &str, attribute: bool) -> Result<(), char> {
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#13;",
            b'"' if attribute => b"&quot;",
            b'\n' if attribute => b"&#10;",
            b'\t' if attribute => b"&#9;",
            b'\t' | b'\n' => continue,
            0..=0x1f => return Err(char::from(b)),
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                return Err(if bytes[i + 2] == 0xBE {
                    '\u{FFFE}'
                } else {
                    '\u{FFFF}'
                })
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(rep);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    Ok(())
}
