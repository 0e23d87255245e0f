//! Arbitrary bytes into the WBXML decoder, behind a valid SyncML 1.2 header so the fuzzer
//! spends its time in the token stream: a message or an error, never a panic; a message it
//! accepts and can write back must read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdmgate_core::syncml::{decode_as, encode_wbxml, Encoding, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut input = vec![0x03, 0xA4, 0x01, 0x6A];
    input.extend_from_slice(data);
    for candidate in [data, input.as_slice()] {
        if let Ok(message) = decode_as(candidate, Encoding::Wbxml, &limits) {
            if let Ok(bytes) = encode_wbxml(&message) {
                let again =
                    decode_as(&bytes, Encoding::Wbxml, &limits).expect("own output must decode");
                assert_eq!(again, message);
            }
        }
    }
});
