use proptest::prelude::*;

use super::*;
use crate::syncml::{encode_wbxml, ErrorKind};

const ROOT: &str = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement";
const FAMILY: &str = "Contoso.Expenses_8wekyb3d8bbwe";
const FULL: &str = "Contoso.Expenses_1.4.0.0_x64__8wekyb3d8bbwe";

fn item(source: &str, data: Option<&str>) -> String {
    let data = data.map_or(String::new(), |d| format!("<Data>{d}</Data>"));
    format!(
        "<Item><Source><LocURI>{source}</LocURI></Source>\
         <Meta><Format xmlns=\"syncml:metinf\">chr</Format></Meta>{data}</Item>"
    )
}

fn results(cmd_ref: &str, items: &[String]) -> String {
    format!(
        "<Results><CmdID>3</CmdID><MsgRef>1</MsgRef><CmdRef>{cmd_ref}</CmdRef>{}</Results>",
        items.concat()
    )
}

/// A device message as Windows writes it: compact, one Status before the answers.
fn message(commands: &[String]) -> Vec<u8> {
    format!(
        "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD>\
         <VerProto>DM/1.2</VerProto><SessionID>9</SessionID><MsgID>2</MsgID>\
         <Target><LocURI>https://mdm.example.com/</LocURI></Target>\
         <Source><LocURI>DEV-1</LocURI><LocName>dummy</LocName></Source></SyncHdr>\
         <SyncBody><Status><CmdID>1</CmdID><MsgRef>1</MsgRef><CmdRef>0</CmdRef>\
         <Cmd>SyncHdr</Cmd><Data>200</Data></Status>{}<Final/></SyncBody></SyncML>",
        commands.concat()
    )
    .into_bytes()
}

fn leaf_items(base: &str, leaves: &[(&str, &str)]) -> Vec<String> {
    let mut items = vec![item(base, None)];
    items.extend(
        leaves
            .iter()
            .map(|(leaf, value)| item(&format!("{base}/{leaf}"), Some(value))),
    );
    items
}

fn read(data: &[u8], prefix: &str, cmd_ref: Option<&str>) -> Vec<AppRecord> {
    app_inventory(data, prefix, cmd_ref, &Limits::default()).unwrap()
}

/// What the decoder and a walk over its message give.
fn through_decoder(
    data: &[u8],
    prefix: &str,
    cmd_ref: Option<&str>,
    limits: &Limits,
) -> Result<Vec<AppRecord>, DecodeError> {
    decode(data, limits).map(|m| records_of_message(&m, prefix, cmd_ref))
}

fn fast_path_reads(data: &[u8], prefix: &str, cmd_ref: Option<&str>) -> bool {
    walked(data, prefix, cmd_ref, &Limits::default()).is_ok()
}

fn text(value: &str) -> Option<LeafValue> {
    Some(LeafValue::Text(value.to_owned()))
}

#[test]
fn reads_every_leaf_kind() {
    let base = format!("{ROOT}/nonStore/{FAMILY}/{FULL}");
    let leaves = [
        ("Name", "Contoso.Expenses"),
        ("Version", "1.4.0.0"),
        ("Publisher", "CN=Contoso, O=Contoso &amp; Sons, C=US"),
        ("Architecture", "9"),
        ("InstallLocation", "C:\\Program Files\\WindowsApps\\x"),
        ("IsFramework", "0"),
        ("IsBundle", " TRUE "),
        ("InstallDate", "2024-03-01 10:00:00"),
        ("ResourceID", ""),
        ("RequiresReinstall", "maybe"),
        ("PackageStatus", "-2147024891"),
        ("Users", "S-1-5-21-1(Installed)"),
        ("IsProvisioned", "1"),
        ("IsStub", "false"),
    ];
    let data = message(&[results("4", &leaf_items(&base, &leaves))]);
    assert!(fast_path_reads(&data, ROOT, None));
    let records = read(&data, ROOT, None);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.package_full_name, FULL);
    assert_eq!(r.package_family, FAMILY);
    assert_eq!(r.classification, Classification::NonStore);
    assert_eq!(r.scope, Scope::Device);
    assert_eq!(
        r.leaf("Publisher"),
        text("CN=Contoso, O=Contoso & Sons, C=US").as_ref()
    );
    assert_eq!(r.leaf("Architecture"), text("9").as_ref());
    assert_eq!(r.leaf("ResourceID"), text("").as_ref());
    assert_eq!(r.leaf("IsFramework"), Some(&LeafValue::Flag(false)));
    assert_eq!(r.leaf("IsBundle"), Some(&LeafValue::Flag(true)));
    assert_eq!(r.leaf("RequiresReinstall"), None);
    assert_eq!(r.leaf("IsStub"), Some(&LeafValue::Flag(false)));
    // E_ACCESSDENIED-like negative 32-bit values read as the unsigned HRESULT.
    assert_eq!(
        r.leaf("PackageStatus"),
        Some(&LeafValue::Number(0x8007_0005))
    );
    assert_eq!(
        r,
        &through_decoder(&data, ROOT, None, &Limits::default()).unwrap()[0]
    );
}

#[test]
fn numbers_follow_the_python_rules() {
    let cases: [(&str, Option<i128>); 17] = [
        ("0", Some(0)),
        ("-0", Some(0)),
        ("+12", Some(12)),
        (" 42\n", Some(42)),
        ("\u{3000}5\u{85}", Some(5)),
        ("\u{1c}3\u{1f}", Some(3)),
        ("-1", Some(0xFFFF_FFFF)),
        ("-2147483648", Some(0x8000_0000)),
        ("-2147483649", Some(-2_147_483_649)),
        ("0x80070005", Some(0x8007_0005)),
        ("0XfF", Some(255)),
        ("0xFFFFFFFFFFFFFFFF", Some(u64::MAX.into())),
        ("99999999999999999999", Some(99_999_999_999_999_999_999)),
        ("0x", None),
        ("0x1FFFFFFFFFFFFFFFF", None),
        ("123456789012345678901", None),
        ("1e3", None),
    ];
    for (input, expected) in cases {
        assert_eq!(number(input), expected, "{input:?}");
    }
    assert_eq!(number("٣"), None);
    assert_eq!(number("- 1"), None);
}

#[test]
fn flags_follow_the_python_rules() {
    for (input, expected) in [
        ("1", Some(true)),
        (" true\t", Some(true)),
        ("True", Some(true)),
        ("TRUE", Some(true)),
        ("tRue", None),
        ("0", Some(false)),
        ("FALSE\u{a0}", Some(false)),
        ("01", None),
        ("", None),
    ] {
        assert_eq!(flag(input), expected, "{input:?}");
    }
}

#[test]
fn segments_are_percent_decoded_like_python() {
    for (input, expected) in [
        ("plain", "plain"),
        ("%41", "A"),
        ("%4", "%4"),
        ("%zz", "%zz"),
        ("%C3%A9", "é"),
        ("%C3", "\u{FFFD}"),
        ("%C3é%A9", "\u{FFFD}é\u{FFFD}"),
        ("%%41", "%A"),
        ("a%2Fb", "a/b"),
        ("%ED%A0%80", "\u{FFFD}\u{FFFD}\u{FFFD}"),
        ("%F0%9F%98", "\u{FFFD}"),
        ("%f0%9f%98%80x", "😀x"),
    ] {
        assert_eq!(unquote(input), expected, "{input:?}");
    }
}

#[test]
fn scope_classification_and_names() {
    let user = "./User/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement";
    let vendor = "./Vendor/MSFT/EnterpriseModernAppManagement/AppManagement";
    let data = message(&[results(
        "4",
        &[
            item(
                &format!("{user}/appstore/{FAMILY}/{FULL}/Version"),
                Some("1"),
            ),
            item(
                &format!("{vendor}/SYSTEM/{FAMILY}/{FULL}/Version"),
                Some("2"),
            ),
            // Percent-encoded names, and a classification spelled with an escape.
            item(
                &format!("{ROOT}/non%53tore/Contoso%2EApp_abc/Contoso%2EApp_1_x__abc/Name"),
                Some("n"),
            ),
            // The family's own settings, other classifications and other CSPs.
            item(&format!("{ROOT}/AppStore/{FAMILY}/DoNotUpdate"), Some("1")),
            item(
                &format!("{ROOT}/AppStore/NoUnderscore/{FULL}/Name"),
                Some("x"),
            ),
            item(&format!("{ROOT}/Other/{FAMILY}/{FULL}/Name"), Some("x")),
            item(&format!("{ROOT}/ReleaseManagement/{FAMILY}/x_y"), Some("x")),
            item("./Vendor/MSFT/Policy/Config/X_Y/A_B/C_D/Name", Some("x")),
            item(
                &format!("{ROOT}/AppStore/{FAMILY}/{FULL}/Name/Extra"),
                Some("x"),
            ),
            item(
                &format!("{ROOT}/AppStore/{FAMILY}/{FULL}/Unknown"),
                Some("x"),
            ),
        ],
    )]);
    assert!(fast_path_reads(&data, "", None));
    let records = read(&data, "", None);
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.scope,
                r.classification,
                r.package_family.as_str(),
                r.package_full_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Scope::User, Classification::AppStore, FAMILY, FULL),
            (Scope::Device, Classification::System, FAMILY, FULL),
            (
                Scope::Device,
                Classification::NonStore,
                "Contoso.App_abc",
                "Contoso.App_1_x__abc"
            ),
            (Scope::Device, Classification::AppStore, FAMILY, FULL),
        ]
    );
    assert_eq!(records[3].leaves, <[Option<LeafValue>; 14]>::default());
    assert_eq!(
        records,
        through_decoder(&data, "", None, &Limits::default()).unwrap()
    );
}

#[test]
fn records_keep_first_seen_order_and_last_value() {
    let a = format!("{ROOT}/AppStore/A_1/A_1_x__1");
    let b = format!("{ROOT}/AppStore/B_1/B_1_x__1");
    let data = message(&[results(
        "4",
        &[
            item(&format!("{b}/Name"), Some("first")),
            item(&format!("{a}/Name"), Some("a")),
            item(&format!("{b}/Name"), Some("second")),
            item(&format!("{a}/Version"), Some("1")),
            // A leaf without Data clears what an earlier item said.
            item(&format!("{a}/Version"), None),
            item(&format!("{b}?list=StructData"), None),
        ],
    )]);
    let records = read(&data, ROOT, None);
    let names: Vec<_> = records.iter().map(|r| r.package_family.as_str()).collect();
    assert_eq!(names, ["B_1", "A_1"]);
    assert_eq!(records[0].leaf("Name"), text("second").as_ref());
    assert_eq!(records[1].leaf("Version"), None);
}

#[test]
fn prefix_source_target_and_cmd_ref_choose_the_items() {
    let pkg = format!("{ROOT}/AppStore/{FAMILY}/{FULL}");
    let target_only =
        format!("<Item><Target><LocURI>{pkg}/Name</LocURI></Target><Data>by target</Data></Item>");
    let empty_source = format!(
        "<Item><Source/><Target><LocURI>{pkg}/Version</LocURI></Target><Data>2</Data></Item>"
    );
    let user = "./User/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/System/U_1/U_1__1";
    let data = message(&[
        results("4", &[target_only, empty_source]),
        results("5", &[item(&format!("{user}/Name"), Some("u"))]),
        // CmdRef after the items still decides.
        format!(
            "<Results><CmdID>7</CmdID>{}<CmdRef> 6 </CmdRef></Results>",
            item(&format!("{pkg}/Users"), Some("s"))
        ),
    ]);
    assert!(fast_path_reads(&data, "", None));
    let all = read(&data, "", None);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].leaf("Name"), text("by target").as_ref());
    assert_eq!(all[0].leaf("Version"), text("2").as_ref());
    assert_eq!(all[0].leaf("Users"), text("s").as_ref());
    assert_eq!(read(&data, ROOT, None).len(), 1);
    assert_eq!(read(&data, "./User", None)[0].scope, Scope::User);
    let only_4 = read(&data, "", Some("4"));
    assert_eq!(only_4.len(), 1);
    assert_eq!(only_4[0].leaf("Users"), None);
    assert_eq!(
        read(&data, "", Some("6"))[0].leaf("Users"),
        text("s").as_ref()
    );
    assert!(read(&data, "", Some("9")).is_empty());
    for cmd_ref in [None, Some("4"), Some("5"), Some("6")] {
        for prefix in ["", ROOT, "./User", "./Vendor"] {
            assert_eq!(
                read(&data, prefix, cmd_ref),
                through_decoder(&data, prefix, cmd_ref, &Limits::default()).unwrap()
            );
        }
    }
}

#[test]
fn wbxml_gives_the_same_records() {
    let base = format!("{ROOT}/AppStore/{FAMILY}/{FULL}");
    let xml = message(&[results(
        "4",
        &leaf_items(&base, &[("Name", "n"), ("PackageStatus", "0x10")]),
    )]);
    let wbxml = encode_wbxml(&decode(&xml, &Limits::default()).unwrap()).unwrap();
    assert_eq!(Encoding::detect(&wbxml), Encoding::Wbxml);
    assert!(fast_path_reads(&wbxml, ROOT, None));
    assert_eq!(read(&wbxml, ROOT, Some("4")), read(&xml, ROOT, Some("4")));
    assert_eq!(
        read(&xml, ROOT, None)[0].leaf("PackageStatus"),
        Some(&LeafValue::Number(16))
    );
    // Opaque data that is not UTF-8 reads with U+FFFD, as Python's "replace" has it.
    let mut message = decode(&xml, &Limits::default()).unwrap();
    message.body[1].items[1].data = Some(crate::syncml::Data {
        value: Value::Binary(b"ok\xff\xfe".to_vec()),
        attrs: Vec::new(),
    });
    let wbxml = encode_wbxml(&message).unwrap();
    assert!(fast_path_reads(&wbxml, ROOT, None));
    assert_eq!(
        read(&wbxml, ROOT, None)[0].leaf("Name"),
        text("ok\u{FFFD}\u{FFFD}").as_ref()
    );
}

#[test]
fn what_the_scanner_leaves_goes_to_the_decoder() {
    let base = format!("{ROOT}/AppStore/{FAMILY}/{FULL}");
    let variants = [
        ("Name", "<![CDATA[a<b]]>"),
        ("Name", "&#65;&#x42;"),
        ("Name", "two\r\nlines"),
        ("Name", "x<!-- note -->y"),
        ("Name", "<b>bold</b> text"),
        ("Users", "<u a=\"1\">s</u>"),
    ];
    for (leaf, value) in variants {
        let data = message(&[results("4", &leaf_items(&base, &[(leaf, value)]))]);
        let expected = through_decoder(&data, ROOT, None, &Limits::default()).unwrap();
        assert_eq!(read(&data, ROOT, None), expected, "{value}");
    }
    let prolog = [
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "\u{feff}",
        "<!-- device -->",
    ];
    for head in prolog {
        let mut data = head.as_bytes().to_vec();
        data.extend(message(&[results(
            "4",
            &leaf_items(&base, &[("Name", "n")]),
        )]));
        assert!(fast_path_reads(&data, ROOT, None), "{head}");
        assert_eq!(read(&data, ROOT, None)[0].leaf("Name"), text("n").as_ref());
    }
    // Markup kept as written, and attributes the decoder reads.
    let data = message(&[
        "<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>3</CmdRef><Cmd>Get</Cmd>\
         <Data xmlns:msft=\"http://schemas.microsoft.com/MobileDevice/MDM\" \
         msft:originalerror=\"0x80070057\">500</Data></Status>"
            .to_owned(),
        results("4", &leaf_items(&base, &[("Users", "<u>s</u> &amp; more")])),
    ]);
    assert!(fast_path_reads(&data, ROOT, None));
    assert_eq!(
        read(&data, ROOT, None)[0].leaf("Users"),
        text("<u>s</u> &amp; more").as_ref()
    );
}

#[test]
fn hostile_inputs_fail_as_the_decoder_fails() {
    let base = format!("{ROOT}/AppStore/{FAMILY}/{FULL}");
    let good = message(&[results("4", &leaf_items(&base, &[("Name", "n")]))]);
    let good_text = String::from_utf8(good.clone()).unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"<?xml version=\"1.0\"?><!DOCTYPE SyncML [<!ENTITY x \"y\">]><SyncML/>".to_vec(),
        good_text
            .replace("<Data>n</Data>", "<Data>&x;</Data>")
            .into_bytes(),
        good_text
            .replace("<Final/>", "<Final/><Bogus/>")
            .into_bytes(),
        good_text
            .replace("</SyncHdr>", "</SyncHdr><SyncHdr/>")
            .into_bytes(),
        good_text
            .replace("<Data>n</Data>", "<Data>\u{1}</Data>")
            .into_bytes(),
        good_text
            .replace("<Data>n</Data>", "<Data>\u{FFFE}</Data>")
            .into_bytes(),
        good_text.replace("</Item>", "</Itme>").into_bytes(),
        good_text
            .replace("<Data>n</Data>", "<Data><a></b></Data>")
            .into_bytes(),
        good_text
            .replace("<Data>n", "<Data x:y=\"1\">n")
            .into_bytes(),
        good_text
            .replace("<Data>n</Data>", "<Data x:y=\"1\"/>")
            .into_bytes(),
        format!("{good_text}trailing").into_bytes(),
        [&good[..10], b"\xFF\xFE", &good[10..]].concat(),
    ];
    inputs.extend((1..good.len()).step_by(37).map(|cut| good[..cut].to_vec()));
    let wbxml = encode_wbxml(&decode(&good, &Limits::default()).unwrap()).unwrap();
    inputs.extend(
        (1..wbxml.len())
            .step_by(29)
            .map(|cut| wbxml[..cut].to_vec()),
    );
    for data in &inputs {
        let expected = through_decoder(data, ROOT, None, &Limits::default());
        assert!(expected.is_err(), "{:?}", String::from_utf8_lossy(data));
        assert_eq!(
            app_inventory(data, ROOT, None, &Limits::default()),
            expected,
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    let tight = [
        Limits {
            max_bytes: good.len() - 1,
            ..Limits::default()
        },
        Limits {
            max_depth: 5,
            ..Limits::default()
        },
        Limits {
            max_elements: 20,
            ..Limits::default()
        },
    ];
    for limits in tight {
        let error = app_inventory(&good, ROOT, None, &limits).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Limit);
        assert_eq!(Err(error), through_decoder(&good, ROOT, None, &limits));
    }
}

#[test]
fn json_names_the_python_fields_and_leaves_out_missing_values() {
    let mut record = AppRecord {
        package_full_name: "A_1_x__\"q\"\\".to_owned(),
        package_family: "A_\u{1}é".to_owned(),
        classification: Classification::NonStore,
        scope: Scope::User,
        leaves: Default::default(),
    };
    record.leaves[0] = text("n\n");
    record.leaves[5] = Some(LeafValue::Flag(true));
    record.leaves[6] = Some(LeafValue::Flag(false));
    record.leaves[10] = Some(LeafValue::Number(-99_999_999_999_999_999_999));
    let mut out = Vec::new();
    write_json(&[record.clone(), record], &mut out);
    let one = "{\"package_full_name\":\"A_1_x__\\\"q\\\"\\\\\",\"package_family\":\"A_\\u0001é\",\
               \"classification\":\"nonStore\",\"scope\":\"user\",\"name\":\"n\\u000a\",\
               \"is_framework\":true,\"is_bundle\":false,\
               \"package_status\":-99999999999999999999}";
    assert_eq!(String::from_utf8(out).unwrap(), format!("[{one},{one}]"));
    let mut empty = Vec::new();
    write_json(&[], &mut empty);
    assert_eq!(empty, b"[]");
}

// --- generated inventories, checked against the decoder -----------------------------------

/// Space-separated choices, one per word.
fn any_of(words: &'static str) -> impl Strategy<Value = &'static str> + Clone {
    prop::sample::select(words.split(' ').collect::<Vec<_>>())
}

fn segment() -> impl Strategy<Value = &'static str> {
    any_of(
        "AppManagement appmanagement App%4Danagement AppStore APPSTORE nonStore System Other \
         Contoso.App_8wekyb3d8bbwe Contoso.App_1.0.0.0_x64__8wekyb3d8bbwe Contoso%2EApp_8wek \
         %E2%82%AC_x %C3%28_y %zz_q é_%41 Name Version IsFramework PackageStatus Users \
         DoNotUpdate ",
    )
}

fn heads() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "./Device/Vendor/MSFT/EnterpriseModernAppManagement",
        "./Device/Vendor/MSFT/EnterpriseModernAppManagement",
        "./Device/Vendor/MSFT/EnterpriseModernAppManagement",
        "./User/Vendor/MSFT/EnterpriseModernAppManagement",
        "./User/Vendor/MSFT/EnterpriseModernAppManagement",
        "./Vendor/MSFT/EnterpriseModernAppManagement",
        "./Vendor/MSFT/EnterpriseModernAppManagement",
        "./Vendor/MSFT/Policy",
        "./Device/Vendor/MSFT",
        ".",
        "",
    ])
}

/// Mostly package nodes and leaves, spelled in the ways devices and escapes allow.
fn app_path() -> impl Strategy<Value = Vec<&'static str>> {
    (
        any_of("AppManagement AppManagement appmanagement App%4Danagement"),
        any_of("AppStore appstore nonStore System SYSTEM non%53tore Other"),
        any_of("A_1 A_1 B.App_x %E2%82%AC_x %C3%28_y NoUnderscore A%5F1"),
        any_of("A_1_x__1 A_1_x__1 B.App_1_x__x %zz_q Full"),
        prop::option::of(any_of(
            "Name Version IsFramework IsBundle PackageStatus Users IsStub Unknown DoNotUpdate \
             Na%6De ",
        )),
        prop::option::of(any_of("Extra ")),
    )
        .prop_map(|(am, class, family, full, leaf, extra)| {
            let mut path = vec![am, class, family, full];
            path.extend(leaf);
            if leaf.is_some() {
                path.extend(extra);
            }
            path
        })
}

fn uri() -> impl Strategy<Value = String> {
    let query = prop::sample::select(vec!["", "", "", "?list=StructData", "?x/y"]);
    let segments = prop_oneof![
        4 => app_path(),
        1 => prop::collection::vec(segment(), 0..7),
    ];
    (heads(), segments, query).prop_map(|(head, segments, query)| {
        let mut uri = head.to_owned();
        for s in segments {
            uri.push('/');
            uri.push_str(s);
        }
        uri + query
    })
}

fn data_text() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "1",
        "0",
        "true",
        " TRUE ",
        "-2147024891",
        "-2147483649",
        "0x80070005",
        "0X",
        "+12",
        "99999999999999999999",
        "1e3",
        "",
        "\u{a0}7\u{3000}",
        "x &amp; y",
        "a&lt;b&gt;&quot;&apos;",
        "é",
        "&#65;",
        "<![CDATA[z]]>",
        "<b>i</b>",
        "<b x=\"1\"/>",
        "l1\r\nl2",
        " spaced ",
    ])
}

fn gen_item() -> impl Strategy<Value = String> {
    let loc = || prop::option::of((uri(), any::<bool>()));
    (
        loc(),
        loc(),
        any::<bool>(),
        prop::option::of(data_text()),
        any::<bool>(),
    )
        .prop_map(|(source, target, meta, data, more)| {
            let mut s = String::from("<Item>");
            for (name, loc) in [("Target", target), ("Source", source)] {
                match loc {
                    Some((uri, true)) => s += &format!("<{name}><LocURI>{uri}</LocURI></{name}>"),
                    Some((_, false)) => s += &format!("<{name}/>"),
                    None => {}
                }
            }
            if meta {
                s += "<Meta><Format xmlns=\"syncml:metinf\">chr</Format><Type>text/plain</Type></Meta>";
            }
            if let Some(d) = data {
                s += &format!("<Data>{d}</Data>");
            }
            if more {
                s += "<MoreData/>";
            }
            s + "</Item>"
        })
}

fn command() -> impl Strategy<Value = String> {
    let cmd_ref = prop::sample::select(vec!["3", " 4 ", "5"]);
    prop_oneof![
        4 => (cmd_ref, prop::collection::vec(gen_item(), 1..8), any::<bool>()).prop_map(
            |(r, items, late)| {
                let r = format!("<CmdRef>{r}</CmdRef>");
                let (early, late) = if late { ("", r.as_str()) } else { (r.as_str(), "") };
                format!("<Results><CmdID>9</CmdID><MsgRef>1</MsgRef>{early}{}{late}</Results>", items.concat())
            }
        ),
        1 => Just("<Status><CmdID>2</CmdID><MsgRef>1</MsgRef><CmdRef>3</CmdRef><Cmd>Get</Cmd>\
                   <Data msft:originalerror=\"0x80070057\">500</Data></Status>".to_owned()),
        1 => gen_item().prop_map(|i| format!("<Atomic><CmdID>4</CmdID><Get><CmdID>5</CmdID>{i}</Get></Atomic>")),
        1 => Just("<Alert><CmdID>6</CmdID><Data>1226</Data></Alert>".to_owned()),
    ]
}

fn generated_message() -> impl Strategy<Value = Vec<u8>> {
    let prolog = prop::sample::select(vec![
        "",
        "",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "\u{feff}",
    ]);
    let separator = prop::sample::select(vec!["", "", "\n  ", "\r\n"]);
    let msft = prop::sample::select(vec![
        "",
        " xmlns:msft=\"http://schemas.microsoft.com/MobileDevice/MDM\"",
    ]);
    (prolog, separator, msft, prop::collection::vec(command(), 0..6)).prop_map(
        |(prolog, sep, msft, commands)| {
            let xml = format!(
                "{prolog}<SyncML xmlns=\"SYNCML:SYNCML1.2\"{msft}>{sep}<SyncHdr><VerDTD>1.2</VerDTD>\
                 <VerProto>DM/1.2</VerProto><SessionID>1</SessionID><MsgID>2</MsgID>\
                 <Target><LocURI>https://mdm/</LocURI></Target><Source><LocURI>d</LocURI></Source>\
                 </SyncHdr>{sep}<SyncBody>{sep}{}<Final/>{sep}</SyncBody></SyncML>{sep}",
                commands.join(sep)
            );
            renumber(&xml).into_bytes()
        },
    )
}

/// Every CmdID made unique, as the encoder wants them.
fn renumber(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    let mut id = 2;
    while let Some(at) = rest.find("<CmdID>") {
        let end = rest[at..].find("</CmdID>").map_or(rest.len(), |e| at + e);
        out.push_str(&rest[..at]);
        out.push_str(&format!("<CmdID>{id}"));
        id += 1;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Insert(prop::sample::Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop::sample::select(b"<>/&;\"'= ax%_\r\x01\xC3".to_vec());
    prop_oneof![
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn mutate(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if data.is_empty() {
            break;
        }
        match m {
            Mutation::Set(i, b) => {
                let at = i.index(data.len());
                data[at] = *b;
            }
            Mutation::Remove(i) => {
                data.remove(i.index(data.len()));
            }
            Mutation::Insert(i, b) => data.insert(i.index(data.len()), *b),
        }
    }
    data
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (4usize..12, 10usize..200).prop_map(|(max_depth, max_elements)| Limits {
            max_depth,
            max_elements,
            ..Limits::default()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn generated_inventories_read_as_through_the_decoder(
        data in generated_message(),
        mutations in prop::collection::vec(mutation(), 0..3),
        prefix in prop::sample::select(vec!["", ROOT, "./User", "./Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/AppStore"]),
        cmd_ref in prop::sample::select(vec![None, Some("3"), Some("4")]),
        limits in limits(),
    ) {
        let data = mutate(data, &mutations);
        prop_assert_eq!(
            app_inventory(&data, prefix, cmd_ref, &limits),
            through_decoder(&data, prefix, cmd_ref, &limits)
        );
        let decoded = decode(&data, &limits).ok();
        // The encoder refuses some messages the decoder accepts (a mutated CmdID).
        let wbxml = decoded.as_ref().and_then(|m| encode_wbxml(m).ok());
        if let (Some(message), Some(wbxml)) = (decoded, wbxml) {
            prop_assert_eq!(
                app_inventory(&wbxml, prefix, cmd_ref, &Limits::default()).unwrap(),
                records_of_message(&message, prefix, cmd_ref)
            );
            let wbxml = mutate(wbxml, &mutations);
            prop_assert_eq!(
                app_inventory(&wbxml, prefix, cmd_ref, &limits),
                through_decoder(&wbxml, prefix, cmd_ref, &limits)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        prop_assert_eq!(
            app_inventory(&bytes, "", None, &limits),
            through_decoder(&bytes, "", None, &limits)
        );
    }
}
