use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn dict(entries: &[(&str, Value)]) -> Value {
    Value::Dict(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

#[test]
fn reads_apple_xml() {
    let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>MessageType</key>
	<string>TokenUpdate</string>
	<key>Token</key>
	<data>
	AAEC
	/w==
	</data>
	<key>When</key>
	<date>2024-02-29T12:34:56Z</date>
	<key>Count</key>
	<integer>0x10</integer>
	<key>Ratio</key>
	<real>-1.5e3</real>
	<key>Awaiting</key>
	<false/>
	<key>Empty</key>
	<string/>
	<key>Note</key>
	<string>a &amp; b &lt;c&gt; &#x1D11E;</string>
</dict>
</plist>"#;
    let v = decode(xml, &limits()).unwrap();
    assert_eq!(
        v,
        dict(&[
            ("MessageType", Value::String("TokenUpdate".into())),
            ("Token", Value::Data(vec![0, 1, 2, 0xFF])),
            ("When", Value::Date(730_902_896.0)),
            ("Count", Value::Integer(16)),
            ("Ratio", Value::Real(-1500.0)),
            ("Awaiting", Value::Boolean(false)),
            ("Empty", Value::String(String::new())),
            ("Note", Value::String("a & b <c> \u{1D11E}".into())),
        ])
    );
    for sort in [true, false] {
        assert_eq!(
            decode(&encode_xml(&v, sort).unwrap(), &limits()).unwrap(),
            sort_if(&v, sort)
        );
        assert_eq!(
            decode(&encode_binary(&v, sort).unwrap(), &limits()).unwrap(),
            sort_if(&v, sort)
        );
    }
}

fn sort_if(v: &Value, sort: bool) -> Value {
    match v {
        Value::Dict(entries) => {
            let mut e: Vec<_> = entries
                .iter()
                .map(|(k, x)| (k.clone(), sort_if(x, sort)))
                .collect();
            if sort {
                e.sort_by(|a, b| a.0.cmp(&b.0));
            }
            Value::Dict(e)
        }
        Value::Array(items) => Value::Array(items.iter().map(|x| sort_if(x, sort)).collect()),
        other => other.clone(),
    }
}

fn refused(data: &[u8], kind: ErrorKind) -> DecodeError {
    let started = Instant::now();
    let err = decode(data, &limits()).expect_err("must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind, kind, "{err}");
    assert!(err.offset <= data.len(), "{err}");
    err
}

/// A binary plist from raw object bytes: offsets are computed, sizes are one byte.
fn bplist(objects: &[Vec<u8>], top: u8) -> Vec<u8> {
    let mut out = b"bplist00".to_vec();
    let mut offsets = Vec::new();
    for o in objects {
        offsets.push(out.len());
        out.extend_from_slice(o);
    }
    let table = out.len();
    let offset_size = if table > 255 { 2 } else { 1 };
    for o in offsets {
        if offset_size == 2 {
            out.extend_from_slice(&u16::try_from(o).unwrap().to_be_bytes());
        } else {
            out.push(u8::try_from(o).unwrap());
        }
    }
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[offset_size, 1]);
    out.extend_from_slice(&(objects.len() as u64).to_be_bytes());
    out.extend_from_slice(&u64::from(top).to_be_bytes());
    out.extend_from_slice(&(table as u64).to_be_bytes());
    out
}

#[test]
fn hostile_inputs_are_refused() {
    let laughs = br#"<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><plist><string>&b;</string></plist>"#;
    refused(laughs, ErrorKind::Entity);
    refused(br#"<!DOCTYPE plist [<!ENTITY x SYSTEM "file:///etc/passwd">]><plist><string>&x;</string></plist>"#, ErrorKind::Entity);
    refused(b"<plist><string>&x;</string></plist>", ErrorKind::Entity);
    let deep = format!(
        "<plist>{}{}</plist>",
        "<array>".repeat(100_000),
        "</array>".repeat(100_000)
    );
    refused(deep.as_bytes(), ErrorKind::Limit);
    refused(b"<plist><foo/></plist>", ErrorKind::Structure);
    refused(
        b"<plist><integer>12a</integer></plist>",
        ErrorKind::Structure,
    );
    refused(b"<plist><data>!!!!</data></plist>", ErrorKind::Structure);
    refused(
        b"<plist><date>2024-02-30T00:00:00Z</date></plist>",
        ErrorKind::Structure,
    );
    refused(
        b"<plist><dict><key>a</key></dict></plist>",
        ErrorKind::Structure,
    );
    refused(b"<plist><string>\xff</string></plist>", ErrorKind::Encoding);

    // 41 arrays, each holding two references to the next: 2^41 values if expanded.
    let mut objects: Vec<Vec<u8>> = (0..41u8).map(|i| vec![0xA2, i + 1, i + 1]).collect();
    objects.push(vec![0x09]);
    let err = refused(&bplist(&objects, 0), ErrorKind::Limit);
    assert!(err.message.contains("node limit"), "{err}");
    // The same shape, small enough, decodes with the sharing expanded.
    let mut small: Vec<Vec<u8>> = (0..5u8).map(|i| vec![0xA2, i + 1, i + 1]).collect();
    small.push(vec![0x09]);
    let mut expected = Value::Boolean(true);
    for _ in 0..5 {
        expected = Value::Array(vec![expected.clone(), expected]);
    }
    assert_eq!(decode(&bplist(&small, 0), &limits()).unwrap(), expected);

    refused(&bplist(&[vec![0xA1, 0]], 0), ErrorKind::Structure); // contains itself
    refused(
        &bplist(&[vec![0xA1, 1], vec![0xA1, 0]], 0),
        ErrorKind::Structure,
    ); // a two-cycle
    refused(&bplist(&[vec![0xD1, 5, 0]], 0), ErrorKind::Structure); // key ref out of range
    refused(
        &bplist(&[vec![0x5F, 0x13, 0, 0, 1, 0, 0, 0, 0, 0]], 0),
        ErrorKind::Syntax,
    ); // 2^40-byte string
    refused(&bplist(&[vec![0x17]], 0), ErrorKind::Structure); // int with size nibble 7
    let mut past_end = bplist(&[vec![0x09]], 0);
    let table = past_end.len() - 33;
    past_end[table] = 200;
    refused(&past_end, ErrorKind::Structure);
    let mut huge_count = bplist(&[vec![0x09]], 0);
    let n = huge_count.len() - 24;
    huge_count[n..n + 8].copy_from_slice(&(1u64 << 60).to_be_bytes());
    refused(&huge_count, ErrorKind::Syntax);
    let mut bad_size = bplist(&[vec![0x09]], 0);
    let n = bad_size.len() - 26;
    bad_size[n] = 9;
    refused(&bad_size, ErrorKind::Syntax);
    let whole = bplist(&[vec![0x09]], 0);
    for cut in [8, 12, whole.len() - 1, whole.len() - 20] {
        assert!(decode(&whole[..cut], &limits()).is_err());
    }
    // A chain of 100,000 nested arrays in binary.
    let chain: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| {
            if i == 99_999 {
                vec![0x09]
            } else {
                vec![0xA1, 0, 0, 0, 0]
            }
        })
        .collect();
    let mut data = b"bplist00".to_vec();
    let mut offsets = Vec::new();
    for (i, mut o) in chain.into_iter().enumerate() {
        if o.len() == 5 {
            o = vec![0xA1];
            o.extend_from_slice(&u32::try_from(i + 1).unwrap().to_be_bytes());
        }
        offsets.push(u32::try_from(data.len()).unwrap());
        data.extend_from_slice(&o);
    }
    let table = data.len();
    for o in offsets {
        data.extend_from_slice(&o.to_be_bytes());
    }
    data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 4, 4]);
    data.extend_from_slice(&100_000u64.to_be_bytes());
    data.extend_from_slice(&0u64.to_be_bytes());
    data.extend_from_slice(&(table as u64).to_be_bytes());
    refused(&data, ErrorKind::Limit);
}

/// `<data>` as plistlib (`binascii.a2b_base64`) reads it: padding beyond what a group needs
/// is skipped, loose trailing bits are dropped; base64 digits after the padding that ends a
/// group (which plistlib drops) and characters outside the alphabet are refused.
#[test]
fn data_padding_as_plistlib_reads_it() {
    let read = |text: &str| {
        let doc = format!("<plist><data>{text}</data></plist>");
        decode(doc.as_bytes(), &limits()).map_err(|e| e.kind)
    };
    for (text, bytes) in [
        ("QUJD", &b"ABC"[..]),
        ("QUJD====", b"ABC"),
        ("QQ===", b"A"),
        ("QUI==", b"AB"),
        ("QUI= \n\t=", b"AB"),
        ("=QUJD", b"ABC"),
        ("Q=U=JD", b"ABC"),
        ("QU=JD", b"ABC"),
        ("====", b""),
        ("", b""),
        ("QR==", b"A"),
        ("QUJ=", b"AB"),
    ] {
        assert_eq!(read(text), Ok(Value::Data(bytes.to_vec())), "{text:?}");
    }
    for text in [
        "QQ", "QQ=", "Q", "QUJDR===", "QU==JD", "QQ==QUJD", "QU*JD", "!!!!",
    ] {
        assert_eq!(read(text), Err(ErrorKind::Structure), "{text:?}");
    }
}

#[test]
fn encoder_refuses_what_plists_cannot_hold() {
    let too_big = Value::Array(vec![Value::Integer(MAX_INTEGER + 1)]);
    let e = encode_xml(&too_big, true).unwrap_err();
    assert!(e.overflow);
    assert_eq!(e.path, "[0]");
    assert!(encode_binary(&too_big, true).unwrap_err().overflow);
    let control = dict(&[("Name", Value::String("a\u{1}".into()))]);
    assert_eq!(encode_xml(&control, true).unwrap_err().path, "Name");
    assert!(encode_binary(&control, true).is_ok());
    assert!(encode_xml(&Value::Uid(1), true).is_err());
    assert!(encode_binary(&Value::Null, true).is_err());
}

#[test]
fn binary_integers_use_plistlib_sizes() {
    for (i, marker) in [
        (0, 0x10),
        (255, 0x10),
        (256, 0x11),
        (65_536, 0x12),
        (1 << 32, 0x13),
        (-1, 0x13),
        (1 << 63, 0x14),
    ] {
        let bytes = encode_binary(&Value::Integer(i), true).unwrap();
        assert_eq!(bytes[8], marker, "{i}");
        assert_eq!(decode(&bytes, &limits()).unwrap(), Value::Integer(i));
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "\\PC{0,12}"
            .prop_filter("XML characters", |s: &String| !s
                .chars()
                .any(|c| (c < ' ' && !"\t\n\r".contains(c))
                    || c == '\u{FFFE}'
                    || c == '\u{FFFF}'))
            .prop_map(Value::String),
        (MIN_INTEGER as i64..=i64::MAX).prop_map(|i| Value::Integer(i128::from(i))),
        ((1i128 << 63)..=MAX_INTEGER).prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("NaN compares unequal", |f| !f.is_nan())
            .prop_map(Value::Real),
        any::<bool>().prop_map(Value::Boolean),
        (-3_000_000_000i64..3_000_000_000).prop_map(|s| Value::Date(s as f64)),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Value::Data),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z0-9 _&<>-]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Dict(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn values_round_trip(v in value()) {
        prop_assert_eq!(decode(&encode_xml(&v, true).unwrap(), &limits()).unwrap(), v.clone());
        prop_assert_eq!(decode(&encode_binary(&v, true).unwrap(), &limits()).unwrap(), v);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes, &limits());
        let mut b = b"bplist00".to_vec();
        b.extend_from_slice(&bytes);
        let _ = decode(&b, &limits());
    }

    #[test]
    fn corrupted_plists_never_panic(v in value(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        for mut bytes in [encode_xml(&v, true).unwrap(), encode_binary(&v, true).unwrap()] {
            for (at, b) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
            let _ = decode(&bytes, &limits());
            let _ = decode(&bytes[..bytes.len() / 2], &limits());
        }
    }
}
