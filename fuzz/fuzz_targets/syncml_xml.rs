//! Arbitrary bytes into the XML decoder: it must answer with a message or an error, never
//! panic or hang; a message it accepts and can write back must read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdmgate_core::syncml::{decode_as, encode_xml, Encoding, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(message) = decode_as(data, Encoding::Xml, &limits) {
        if let Ok(bytes) = encode_xml(&message) {
            let again = decode_as(&bytes, Encoding::Xml, &limits).expect("own output must decode");
            assert_eq!(again, message);
        }
    }
});
