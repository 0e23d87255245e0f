//! Arbitrary bytes as an HTTP/1.1 request head (the first byte picks the size limit): an
//! answer, never a panic. An accepted head holds only what the rules allow, and a head that
//! arrives in two pieces gets the same answer as when it arrives whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdmgate_core::http1::{parse_head, Head};

fuzz_target!(|data: &[u8]| {
    let Some((&size, bytes)) = data.split_first() else {
        return;
    };
    let limit = 16 + usize::from(size) * 64;
    let whole = parse_head(bytes, 0, limit);
    if let Ok(Head::Complete(head)) = &whole {
        assert!(head.length <= limit && head.length <= bytes.len());
        assert!(head.target.bytes().all(|b| (0x21..0x7f).contains(&b)));
        for field in &head.fields {
            assert!(!field.name.is_empty());
            assert!(!field.value.iter().any(|&b| b < 0x20 && b != b'\t'));
            assert!(!field.value.starts_with(b" ") && !field.value.ends_with(b" "));
        }
        assert!(!(head.chunked && head.content_length.is_some()));
    }
    for cut in [
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len().saturating_sub(1),
    ] {
        if let Ok(Head::Incomplete { seen, scanned }) = parse_head(&bytes[..cut], 0, limit) {
            assert_eq!(seen, cut);
            assert_eq!(parse_head(bytes, scanned, limit), whole);
        }
    }
});
