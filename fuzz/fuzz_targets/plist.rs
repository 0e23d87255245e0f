//! Arbitrary bytes into the plist decoder (XML, or binary when they start with bplist): a
//! value or an error, never a panic; a value it accepts and can write back must read back
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdmgate_core::plist::{decode, encode_binary, encode_xml, Limits, Value};

fn has_nan(v: &Value) -> bool {
    match v {
        Value::Real(r) => r.is_nan(),
        Value::Array(items) => items.iter().any(has_nan),
        Value::Dict(entries) => entries.iter().any(|(_, v)| has_nan(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut binary = b"bplist00".to_vec();
    binary.extend_from_slice(data);
    for candidate in [data, binary.as_slice()] {
        let Ok(value) = decode(candidate, &limits) else { continue };
        if has_nan(&value) {
            continue;
        }
        if let Ok(bytes) = encode_binary(&value, false) {
            assert_eq!(decode(&bytes, &limits).expect("own output must decode"), value);
        }
        if let Ok(bytes) = encode_xml(&value, false) {
            let again = decode(&bytes, &limits).expect("own output must decode");
            // XML dates carry whole seconds only.
            if !format!("{value:?}").contains("Date") {
                assert_eq!(again, value);
            }
        }
    }
});
