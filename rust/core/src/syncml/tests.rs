use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const PACKAGE_1: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SyncML xmlns="SYNCML:SYNCML1.2" xmlns:msft="http://schemas.microsoft.com/MobileDevice/MDM">
  <SyncHdr>
    <VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1A</SessionID><MsgID>1</MsgID>
    <Target><LocURI>https://mdm.example.com/ManagementServer/MDM.svc</LocURI></Target>
    <Source><LocURI>{4A2F1E3D-0000}</LocURI><LocName>dev</LocName></Source>
    <Meta><MaxMsgSize xmlns="syncml:metinf">65536</MaxMsgSize></Meta>
  </SyncHdr>
  <SyncBody>
    <Alert><CmdID>1</CmdID><Data>1201</Data></Alert>
    <Alert>
      <CmdID>2</CmdID><Data>1224</Data>
      <Item><Meta><Type xmlns="syncml:metinf">com.microsoft/MDM/LoginStatus</Type></Meta><Data>user</Data></Item>
    </Alert>
    <Replace><CmdID>3</CmdID>
      <Item><Source><LocURI>./DevInfo/DevId</LocURI></Source><Data>{4A2F1E3D-0000}</Data></Item>
    </Replace>
    <Status><CmdID>4</CmdID><MsgRef>1</MsgRef><CmdRef>2</CmdRef><Cmd>Exec</Cmd>
      <Data msft:originalerror="0x80070057">500</Data></Status>
    <Exec><CmdID>5</CmdID><Item><Target><LocURI>./Vendor/MSFT/X</LocURI></Target>
      <Meta><Format>xml</Format></Meta>
      <Data><Application PackageUri="\\server\share\a.appx" /></Data></Item></Exec>
    <Final/>
  </SyncBody>
</SyncML>"#;

fn decode_default(data: &[u8]) -> Result<Message, DecodeError> {
    decode(data, &Limits::default())
}

#[test]
fn decodes_a_device_package() {
    let m = decode_default(PACKAGE_1.as_bytes()).unwrap();
    assert_eq!(m.header.session_id, "1A");
    assert_eq!(
        m.header.source.as_ref().unwrap().name.as_deref(),
        Some("dev")
    );
    assert_eq!(
        m.header.meta,
        Some(vec![("MaxMsgSize".into(), "65536".into())])
    );
    assert!(m.is_final);
    let kinds: Vec<_> = m.body.iter().map(|c| c.kind).collect();
    use CommandKind as K;
    assert_eq!(kinds, [K::Alert, K::Alert, K::Replace, K::Status, K::Exec]);
    assert_eq!(m.body[1].items[0].data, Some(Data::text("user")));
    let status = &m.body[3].data.as_ref().unwrap();
    assert_eq!(
        status.attrs,
        vec![("msft:originalerror".to_owned(), "0x80070057".to_owned())]
    );
    // Inline markup in Data is kept as written, to be escaped once on output.
    let exec = m.body[4].items[0].data.as_ref().unwrap();
    assert_eq!(
        exec.value,
        Value::Text(r#"<Application PackageUri="\\server\share\a.appx" />"#.into())
    );
    let xml = encode_xml(&m).unwrap();
    let text = String::from_utf8(xml.clone()).unwrap();
    assert!(
        text.contains(r#"<Data>&lt;Application PackageUri="\\server\share\a.appx" /&gt;</Data>"#)
    );
    assert!(text.contains(r#"<Data xmlns:msft="http://schemas.microsoft.com/MobileDevice/MDM" msft:originalerror="0x80070057">500</Data>"#));
    assert_eq!(decode_default(&xml).unwrap(), m);
    assert_eq!(decode_default(&encode_wbxml(&m).unwrap()).unwrap(), m);
}

#[test]
fn escaped_data_is_unescaped_once_and_escaped_once() {
    let msg = PACKAGE_1.replace(
        "<Data>user</Data>",
        "<Data>&lt;a href=\"x?y=1&amp;amp;z\"/&gt;</Data>",
    );
    let m = decode_default(msg.as_bytes()).unwrap();
    assert_eq!(
        m.body[1].items[0].data,
        Some(Data::text("<a href=\"x?y=1&amp;z\"/>"))
    );
    let out = String::from_utf8(encode_xml(&m).unwrap()).unwrap();
    assert!(out.contains("<Data>&lt;a href=\"x?y=1&amp;amp;z\"/&gt;</Data>"));
}

#[test]
fn lenient_inputs_are_read() {
    let lenient = r#"<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" "http://www.openmobilealliance.org/tech/DTD/OMA-TS-SyncML_RepPro_DTD-V1_2.dtd">
<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>
<SessionID>0</SessionID><MsgID>1</MsgID><Target><LocURI>t</LocURI></Target><Source><LocURI>s</LocURI></Source></SyncHdr>
<SyncBody><Alert><Data>1226</Data><Item><Meta><Type>x</Type><Vendorish>1</Vendorish></Meta><Data><![CDATA[a<b]]></Data></Item></Alert>
<Add><CmdID>0</CmdID></Add></SyncBody></SyncML>"#;
    let m = decode_default(lenient.as_bytes()).unwrap();
    assert_eq!(m.body[0].cmd_id, None);
    assert_eq!(m.body[1].cmd_id.as_deref(), Some("0"));
    let item = &m.body[0].items[0];
    assert_eq!(
        item.meta.as_ref().unwrap()[1],
        ("Vendorish".into(), "1".into())
    );
    assert_eq!(item.data, Some(Data::text("a<b")));
    assert!(!m.is_final);
    // Strict on output: CmdIDs are required and never "0".
    let err = encode_xml(&m).unwrap_err();
    assert_eq!(err.path, "SyncBody[0]");
    let mut fixed = m.clone();
    fixed.body[0].cmd_id = Some("1".into());
    assert!(encode_xml(&fixed).unwrap_err().message.contains("\"0\""));
}

fn expect_err(data: &[u8], kind: ErrorKind) -> DecodeError {
    let started = Instant::now();
    let err = decode_default(data).expect_err("input must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.kind, kind, "{err}");
    err
}

#[test]
fn hostile_xml_is_refused() {
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE SyncML [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><SyncML>&b;</SyncML>"#;
    expect_err(laughs.as_bytes(), ErrorKind::Entity);
    let xxe = r#"<!DOCTYPE SyncML [<!ENTITY x SYSTEM "file:///etc/passwd">]><SyncML>&x;</SyncML>"#;
    expect_err(xxe.as_bytes(), ErrorKind::Entity);
    let undefined = PACKAGE_1.replace("<Data>user</Data>", "<Data>&x;</Data>");
    expect_err(undefined.as_bytes(), ErrorKind::Entity);
    let deep = format!(
        "<SyncML><SyncBody>{}{}</SyncBody></SyncML>",
        "<Atomic>".repeat(100_000),
        "</Atomic>".repeat(100_000)
    );
    let err = expect_err(deep.as_bytes(), ErrorKind::Limit);
    assert!(err.message.contains("nesting depth"));
    let mut bad_utf8 = PACKAGE_1.as_bytes().to_vec();
    let at = PACKAGE_1.find("user").unwrap();
    bad_utf8[at] = 0xFF;
    assert_eq!(expect_err(&bad_utf8, ErrorKind::Encoding).offset, at);
    let control = PACKAGE_1.replace("<Data>user</Data>", "<Data>a\u{1}b</Data>");
    expect_err(control.as_bytes(), ErrorKind::Syntax);
    let utf16 = PACKAGE_1.replace("UTF-8", "UTF-16");
    expect_err(utf16.as_bytes(), ErrorKind::Encoding);
    for cut in [10, 200, 700, PACKAGE_1.len() - 3] {
        let err = decode_default(&PACKAGE_1.as_bytes()[..cut]).unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Syntax | ErrorKind::Structure),
            "{err}"
        );
    }
    let unknown = PACKAGE_1.replace("<Final/>", "<Sync/>");
    expect_err(unknown.as_bytes(), ErrorKind::Structure);
}

#[test]
fn limits_are_configurable() {
    let tight = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    assert_eq!(
        decode(PACKAGE_1.as_bytes(), &tight).unwrap_err().kind,
        ErrorKind::Limit
    );
    let few = Limits {
        max_elements: 10,
        ..Limits::default()
    };
    let err = decode(PACKAGE_1.as_bytes(), &few).unwrap_err();
    assert!(err.message.contains("element count"), "{err}");
}

#[test]
fn hostile_wbxml_is_refused() {
    // 1 GB string table claimed by a few bytes.
    let claim = [
        0x02, 0xA4, 0x01, 0x6A, 0x84, 0x80, 0x80, 0x80, 0x00, 0x6D, 0x01,
    ];
    let err = expect_err(&claim, ErrorKind::Syntax);
    assert!(err.message.contains("claims 1073741824 bytes"), "{err}");
    let m = decode_default(PACKAGE_1.as_bytes()).unwrap();
    let wbxml = encode_wbxml(&m).unwrap();
    for cut in [1, 2, 3, 5, 20, wbxml.len() / 2, wbxml.len() - 1] {
        let err = decode_default(&wbxml[..cut]).unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Syntax | ErrorKind::Structure),
            "{cut}: {err}"
        );
    }
    let unknown_tag = [0x02, 0xA4, 0x01, 0x6A, 0x00, 0x6D, 0x7F, 0x01];
    assert!(expect_err(&unknown_tag, ErrorKind::Structure)
        .message
        .contains("unknown tag token"));
    let overlong_int = [0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    expect_err(&overlong_int, ErrorKind::Syntax);
    let wrong_id = [0x02, 0x9F, 0x53, 0x6A, 0x00, 0x6D, 0x01];
    expect_err(&wrong_id, ErrorKind::Structure);
    let mut deep = vec![0x02, 0xA4, 0x01, 0x6A, 0x00, 0x6D, 0x6B];
    deep.extend(std::iter::repeat_n(0x48, 100_000));
    expect_err(&deep, ErrorKind::Limit);
}

#[test]
fn wbxml_header_and_literals() {
    let mut m = decode_default(PACKAGE_1.as_bytes()).unwrap();
    m.body[1].items[0]
        .meta
        .as_mut()
        .unwrap()
        .push(("Vendorish".into(), "v".into()));
    let bytes = encode_wbxml(&m).unwrap();
    assert_eq!(&bytes[..4], &[0x03, 0xA4, 0x01, 0x6A]);
    assert_eq!(decode_default(&bytes).unwrap(), m);
    let binary = Data {
        value: Value::Binary(vec![0xFF, 0x00, 0x80]),
        attrs: vec![],
    };
    m.body[1].items[0].data = Some(binary.clone());
    let back = decode_default(&encode_wbxml(&m).unwrap()).unwrap();
    assert_eq!(back.body[1].items[0].data, Some(binary));
    let xml = String::from_utf8(encode_xml(&m).unwrap()).unwrap();
    assert!(xml.contains("<Data>/wCA</Data>"));
}

fn header() -> Header {
    Header {
        ver_dtd: "1.2".into(),
        ver_proto: "DM/1.2".into(),
        session_id: "7".into(),
        msg_id: "2".into(),
        target: Some(Loc {
            uri: "{device}".into(),
            name: None,
        }),
        source: Some(Loc {
            uri: "https://mdm.example.com/x".into(),
            name: None,
        }),
        ..Header::default()
    }
}

fn get(uri: &str) -> Command {
    let mut c = Command::new(CommandKind::Get);
    c.items.push(Item {
        target: Some(Loc {
            uri: uri.into(),
            name: None,
        }),
        ..Item::default()
    });
    c
}

#[test]
fn builder_respects_the_budget_and_order() {
    for encoding in [Encoding::Xml, Encoding::Wbxml] {
        let mut b = MessageBuilder::new(&header(), encoding, 900).unwrap();
        let mut accepted = 0;
        let mut first_overflow = None;
        for i in 0..50 {
            match b.push(&get(&format!("./Vendor/MSFT/Node{i}"))).unwrap() {
                Ok(c) => {
                    assert_eq!(c.cmd_id, Some((accepted + 1).to_string()));
                    accepted += 1;
                    assert!(
                        first_overflow.is_none(),
                        "a later command overtook a deferred one"
                    );
                }
                Err(o) => {
                    first_overflow.get_or_insert(o);
                }
            }
        }
        let o = first_overflow.expect("50 Gets cannot fit in 900 bytes");
        assert!(o.needed > o.available);
        // Even a tiny command is refused once one was deferred.
        assert!(b.push(&get("x")).unwrap().is_err());
        let bytes = b.finish(false);
        assert!(bytes.len() <= 900, "{} bytes", bytes.len());
        let m = decode_default(&bytes).unwrap();
        assert_eq!(m.body.len(), accepted);
        assert!(!m.is_final);
        assert!(accepted > 3);
    }
}

#[test]
fn builder_fills_to_the_exact_limit() {
    let mut b = MessageBuilder::new(&header(), Encoding::Xml, 100_000).unwrap();
    b.push(&get("a")).unwrap().unwrap();
    let one = b.finish(true).len();
    let probe = MessageBuilder::new(&header(), Encoding::Xml, 100_000).unwrap();
    let command_len = one - probe.finish(true).len();
    // A budget of exactly header + one command + tail admits it; one byte less does not.
    let exact = one;
    let mut b = MessageBuilder::new(&header(), Encoding::Xml, exact).unwrap();
    assert!(b.push(&get("a")).unwrap().is_ok());
    let mut b = MessageBuilder::new(&header(), Encoding::Xml, exact - 1).unwrap();
    let o = b.push(&get("a")).unwrap().unwrap_err();
    assert_eq!(o.needed, command_len);
}

#[test]
fn builder_refuses_bad_ids() {
    let mut b = MessageBuilder::new(&header(), Encoding::Xml, 10_000).unwrap();
    let mut c = get("a");
    c.cmd_id = Some("2".into());
    b.push(&c).unwrap().unwrap();
    // The next generated id skips the one already taken.
    assert_eq!(
        b.push(&get("b")).unwrap().unwrap().cmd_id.as_deref(),
        Some("1")
    );
    assert_eq!(
        b.push(&get("c")).unwrap().unwrap().cmd_id.as_deref(),
        Some("3")
    );
    assert!(b.push(&c).unwrap_err().message.contains("used twice"));
    c.cmd_id = Some("0".into());
    assert!(b.push(&c).is_err());
    let mut atomic = Command::new(CommandKind::Atomic);
    atomic.commands.push(get("d"));
    atomic.commands.push(get("e"));
    let placed = b.push(&atomic).unwrap().unwrap();
    let ids: Vec<_> = placed
        .commands
        .iter()
        .map(|c| c.cmd_id.clone().unwrap())
        .collect();
    assert_eq!(placed.cmd_id.as_deref(), Some("4"));
    assert_eq!(ids, ["5", "6"]);
    assert!(MessageBuilder::new(&header(), Encoding::Xml, 50).is_err());
}

// ---------------------------------------------------------------- generated messages

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ./{}?=&<>\"'_-]{0,20}",
        "\\PC{0,12}".prop_filter("XML characters only", |s| {
            s.chars().all(|c| !matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}'))
        }),
    ]
}

/// Leaves are trimmed on input, so generated leaves carry no surrounding whitespace.
fn leaf_text() -> impl Strategy<Value = String> {
    text().prop_map(|s| s.trim_matches(|c: char| c.is_ascii_whitespace()).to_owned())
}

fn meta() -> impl Strategy<Value = Meta> {
    let name = prop_oneof![
        Just("Format".to_owned()),
        Just("Type".to_owned()),
        Just("Size".to_owned()),
        Just("NextNonce".to_owned()),
        Just("MaxObjSize".to_owned()),
        "[A-Z][a-zA-Z]{0,8}",
    ];
    prop::collection::vec((name.prop_map(meta_key), leaf_text()), 0..4)
}

fn loc() -> impl Strategy<Value = Loc> {
    (leaf_text(), prop::option::of(leaf_text())).prop_map(|(uri, name)| Loc { uri, name })
}

fn data() -> impl Strategy<Value = Data> {
    let attrs = prop::collection::vec(
        (
            prop_oneof![
                Just("msft:originalerror".to_owned()),
                "[a-z]{1,6}",
                "\\{urn:[a-z]{1,4}\\}[a-z]{1,5}"
            ],
            text(),
        ),
        0..2,
    )
    .prop_map(|mut v| {
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        // Attribute values are whitespace-normalized by XML, so only spaces survive.
        v.into_iter()
            .map(|(k, val)| (k, val.replace(['\t', '\n', '\r'], " ")))
            .collect::<Vec<_>>()
    });
    (text(), attrs).prop_map(|(t, attrs)| Data {
        value: Value::Text(t),
        attrs,
    })
}

fn item() -> impl Strategy<Value = Item> {
    (
        prop::option::of(loc()),
        prop::option::of(loc()),
        prop::option::of(meta()),
        prop::option::of(data()),
        any::<bool>(),
    )
        .prop_map(|(target, source, meta, data, more_data)| Item {
            target,
            source,
            meta,
            data,
            more_data,
        })
}

fn command() -> impl Strategy<Value = Command> {
    let leafy = (
        prop::sample::select(vec![
            CommandKind::Add,
            CommandKind::Alert,
            CommandKind::Copy,
            CommandKind::Delete,
            CommandKind::Exec,
            CommandKind::Get,
            CommandKind::Replace,
            CommandKind::Results,
            CommandKind::Status,
        ]),
        any::<bool>(),
        prop::option::of(meta()),
        prop::collection::vec(item(), 0..3),
        data(),
        leaf_text().prop_filter("non-empty", |s| !s.is_empty()),
        prop::collection::vec(leaf_text(), 0..2),
    )
        .prop_map(|(kind, no_resp, meta, items, data, word, refs)| {
            let mut c = Command::new(kind);
            c.no_resp = no_resp;
            c.meta = meta;
            c.items = items;
            match kind {
                CommandKind::Alert => c.data = Some(data),
                CommandKind::Status => {
                    c.data = Some(data);
                    c.msg_ref = Some("1".into());
                    c.cmd_ref = Some(word.clone());
                    c.cmd = Some("Get".into());
                    c.target_refs = refs;
                    c.chal = c.meta.take();
                }
                CommandKind::Results => {
                    c.cmd_ref = Some(word);
                    c.source_refs = refs;
                }
                CommandKind::Exec => c.correlator = Some(word),
                _ => {}
            }
            c
        });
    leafy.prop_recursive(3, 16, 4, |inner| {
        (prop::bool::ANY, prop::collection::vec(inner, 0..4)).prop_map(|(atomic, commands)| {
            let mut c = Command::new(if atomic {
                CommandKind::Atomic
            } else {
                CommandKind::Sequence
            });
            c.commands = commands.into_iter().filter(|c| c.kind.nestable()).collect();
            c
        })
    })
}

fn number_ids(commands: &mut [Command], next: &mut u32) {
    for c in commands {
        c.cmd_id = Some(next.to_string());
        *next += 1;
        number_ids(&mut c.commands, next);
    }
}

fn message() -> impl Strategy<Value = Message> {
    (
        leaf_text().prop_filter("non-empty", |s| !s.is_empty()),
        loc().prop_filter("LocURI", |l| !l.uri.is_empty()),
        prop::option::of(meta()),
        prop::collection::vec(command(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(session, target, meta, mut body, is_final)| {
            number_ids(&mut body, &mut 1);
            let mut h = header();
            h.session_id = session;
            h.target = Some(target);
            h.meta = meta;
            Message {
                header: h,
                body,
                is_final,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_round_trip(m in message()) {
        let xml = encode_xml(&m).unwrap();
        prop_assert_eq!(&decode_default(&xml).unwrap(), &m);
        let wbxml = encode_wbxml(&m).unwrap();
        prop_assert_eq!(&decode_default(&wbxml).unwrap(), &m);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_default(&bytes);
        let mut wbxml = vec![0x03, 0xA4, 0x01, 0x6A, 0x00];
        wbxml.extend_from_slice(&bytes);
        let _ = decode_default(&wbxml);
    }

    #[test]
    fn mutated_messages_never_panic(m in message(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        for encoded in [encode_xml(&m).unwrap(), encode_wbxml(&m).unwrap()] {
            let mut bytes = encoded;
            for (at, value) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *value;
            }
            let _ = decode_default(&bytes);
            let _ = decode_default(&bytes[..bytes.len() / 2]);
        }
    }
}

/// WBXML written out token by token from the SyncML and MetInf code pages, independent of
/// the codec's tables, so a wrong table entry cannot hide behind a matching decoder.
#[test]
fn wbxml_matches_the_code_pages() {
    fn s(text: &str) -> Vec<u8> {
        let mut v = vec![0x03];
        v.extend_from_slice(text.as_bytes());
        v.push(0x00);
        v
    }
    let mut bytes = vec![0x03, 0xA4, 0x01, 0x6A, 0x00]; // WBXML 1.3, 0x1201, UTF-8, no table
    bytes.extend([0x6D, 0x6C]); // <SyncML><SyncHdr>
    for (tag, text) in [(0x71, "1.2"), (0x72, "DM/1.2"), (0x65, "7"), (0x5B, "2")] {
        bytes.push(tag); // VerDTD, VerProto, SessionID, MsgID
        bytes.extend(s(text));
        bytes.push(0x01);
    }
    bytes.extend([0x6E, 0x57]); // <Target><LocURI>
    bytes.extend(s("dev"));
    bytes.extend([0x01, 0x01, 0x67, 0x57]); // </LocURI></Target><Source><LocURI>
    bytes.extend(s("srv"));
    bytes.extend([0x01, 0x01, 0x5A, 0x00, 0x01]); // </LocURI></Source><Meta> page 1
    for (tag, text) in [(0x4C, "8192"), (0x55, "65536")] {
        bytes.push(tag); // MaxMsgSize, MaxObjSize
        bytes.extend(s(text));
        bytes.push(0x01);
    }
    bytes.extend([0x01, 0x00, 0x00, 0x01, 0x6B]); // </Meta> page 0 </SyncHdr><SyncBody>
    bytes.extend([0x69, 0x4B]); // <Status><CmdID>
    bytes.extend(s("1"));
    bytes.extend([0x01, 0x5C]); // <MsgRef>
    bytes.extend(s("1"));
    bytes.extend([0x01, 0x4C]); // <CmdRef>
    bytes.extend(s("0"));
    bytes.extend([0x01, 0x4A]); // <Cmd>
    bytes.extend(s("SyncHdr"));
    bytes.extend([0x01, 0x49, 0x5A, 0x00, 0x01]); // <Chal><Meta> page 1
    for (tag, text) in [(0x53, "syncml:auth-md5"), (0x47, "b64"), (0x50, "bm9uY2U=")] {
        bytes.push(tag); // Type, Format, NextNonce
        bytes.extend(s(text));
        bytes.push(0x01);
    }
    bytes.extend([0x01, 0x00, 0x00, 0x01, 0x4F]); // </Meta> page 0 </Chal><Data>
    bytes.extend(s("401"));
    bytes.extend([0x01, 0x01]); // </Data></Status>
    bytes.extend([0x51, 0x4B]); // <Exec><CmdID>
    bytes.extend(s("2"));
    bytes.extend([0x01, 0x7C]); // <Correlator>
    bytes.extend(s("c1"));
    bytes.extend([0x01, 0x54, 0x6E, 0x57]); // <Item><Target><LocURI>
    bytes.extend(s("./Vendor/MSFT/X"));
    bytes.extend([0x01, 0x01, 0x5A, 0x00, 0x01, 0x4B]); // </LocURI></Target><Meta> page 1 <Mark>
    bytes.extend(s("high"));
    bytes.extend([0x01, 0x52]); // <Size>
    bytes.extend(s("10"));
    bytes.extend([
        0x01, 0x01, 0x00, 0x00, 0x4F, 0xC3, 0x02, b'h', b'i', 0x01, 0x34,
    ]); // Data opaque, <MoreData/>
    bytes.extend([0x01, 0x01, 0x12, 0x01, 0x01]); // </Item></Exec><Final/></SyncBody></SyncML>

    let m = decode_default(&bytes).unwrap();
    assert_eq!(m.header.session_id, "7");
    assert_eq!(
        m.header.source.as_ref().map(|l| l.uri.as_str()),
        Some("srv")
    );
    let hdr_meta: Vec<(&str, &str)> = m
        .header
        .meta
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_str()))
        .collect();
    assert_eq!(hdr_meta, [("MaxMsgSize", "8192"), ("MaxObjSize", "65536")]);
    let status = &m.body[0];
    assert_eq!(
        (
            status.kind,
            status.cmd.as_deref(),
            status.cmd_ref.as_deref()
        ),
        (CommandKind::Status, Some("SyncHdr"), Some("0"))
    );
    let chal: Vec<&str> = status
        .chal
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_ref())
        .collect();
    assert_eq!(chal, ["Type", "Format", "NextNonce"]);
    let exec = &m.body[1];
    assert_eq!(exec.correlator.as_deref(), Some("c1"));
    let item = &exec.items[0];
    let meta: Vec<&str> = item
        .meta
        .as_ref()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_ref())
        .collect();
    assert_eq!(meta, ["Mark", "Size"]);
    assert_eq!(item.data, Some(Data::text("hi")));
    assert!(item.more_data && m.is_final);
    // The encoder writes the same tokens; it differs only where WBXML leaves a choice (it
    // switches back to page 0 lazily and writes Data as opaque), so compare the header part
    // byte for byte and the rest by decoding.
    let encoded = encode_wbxml(&m).unwrap();
    let header_end = bytes.windows(2).position(|w| w == [0x6B, 0x69]).unwrap() - 4;
    assert_eq!(encoded[..header_end], bytes[..header_end]);
    assert_eq!(decode_default(&encoded).unwrap(), m);
}
