use std::cmp::Ordering::{self, Equal, Greater, Less};

use super::*;

fn cmp(p: &str, a: &str, b: &str) -> Ordering {
    let platform = Platform::from_name(p).unwrap();
    compare(platform, a, b).unwrap_or_else(|(i, e)| {
        let bad = if i == 0 { a } else { b };
        panic!("{}", e.describe(platform, bad))
    })
}

fn err(p: &str, v: &str) -> VersionError {
    sort_key(Platform::from_name(p).unwrap(), v).expect_err(v)
}

#[test]
fn android_version_codes_are_integers() {
    let table = [
        ("1", "2", Less),
        ("10", "9", Greater),
        ("007", "7", Equal),
        (" 42 ", "42", Equal),
        ("2147483647", "2147483646", Greater),
        ("0", "1", Less),
    ];
    for (a, b, want) in table {
        assert_eq!(cmp("android", a, b), want, "{a} vs {b}");
    }
}

#[test]
fn android_rejects_non_integers() {
    assert_eq!(
        err("android", "1.2"),
        VersionError::new(1, Reason::Unexpected('.'))
    );
    assert_eq!(
        err("android", "-3"),
        VersionError::new(0, Reason::Unexpected('-'))
    );
    assert_eq!(
        err("android", "2147483648").reason,
        Reason::VersionCodeTooLarge
    );
    assert_eq!(err("android", "   ").reason, Reason::Empty);
    assert_eq!(err("android", "").reason, Reason::Empty);
    assert_eq!(
        err("android", "12é"),
        VersionError::new(2, Reason::Unexpected('é'))
    );
}

#[test]
fn apple_bundle_versions() {
    let table = [
        ("1.0", "1", Equal),
        ("1.0.0", "1", Equal),
        ("01.002", "1.2", Equal),
        ("1.2", "1.10", Less),
        ("1.2.3", "1.2.10", Less),
        ("3.57", "3.6", Greater),
        ("1.0.33.20181102", "1.0.33", Greater),
        ("1.0.33.20181102", "1.0.34", Less),
        ("70202006", "3.57", Greater),
        ("70202006", "70202006.0.1", Less),
        // Development stages before the release they lead to: d < a < b < fc < release.
        ("1.2b3", "1.2", Less),
        ("1.2b3", "1.1.9", Greater),
        ("1.2b3", "1.2b10", Less),
        ("1.2d9", "1.2a1", Less),
        ("1.2a9", "1.2b1", Less),
        ("1.2b9", "1.2fc1", Less),
        ("1.2FC1", "1.2fc1", Equal),
        ("1.2fc9", "1.2", Less),
        ("1.2b", "1.2b0", Equal),
        ("1.2.0b1", "1.2b1", Equal),
        ("1.2b3", "1.2.0.1", Less),
        (
            "99999999999999999999999",
            "99999999999999999999998",
            Greater,
        ),
        ("1.99999999999999999999999", "2", Less),
    ];
    for platform in ["ios", "ipados", "macos"] {
        for (a, b, want) in table {
            assert_eq!(cmp(platform, a, b), want, "{platform}: {a} vs {b}");
            assert_eq!(
                cmp(platform, b, a),
                want.reverse(),
                "{platform}: {b} vs {a}"
            );
        }
    }
}

#[test]
fn apple_rejects_what_is_not_a_bundle_version() {
    assert_eq!(err("ios", "1..2"), VersionError::new(2, Reason::EmptyPart));
    assert_eq!(err("ios", "1.2."), VersionError::new(4, Reason::EmptyPart));
    assert_eq!(err("ios", ".1"), VersionError::new(0, Reason::EmptyPart));
    assert_eq!(
        err("ios", "v1.2"),
        VersionError::new(0, Reason::Unexpected('v'))
    );
    assert_eq!(
        err("ios", "1.2b3.4"),
        VersionError::new(5, Reason::Unexpected('.'))
    );
    assert_eq!(
        err("ios", "1.2-beta"),
        VersionError::new(3, Reason::Unexpected('-'))
    );
    assert_eq!(
        err("ios", "1.2x"),
        VersionError::new(3, Reason::Unexpected('x'))
    );
    assert_eq!(
        err("macos", "1.2f1"),
        VersionError::new(3, Reason::Unexpected('f'))
    );
    assert_eq!(err("macos", &"1".repeat(256)).reason, Reason::TooLong);
}

#[test]
fn windows_orders_by_the_first_three_parts() {
    let table = [
        ("1.2.3.4", "1.2.3.9", Equal),
        ("1.2.3", "1.2.3.0", Equal),
        ("1.2", "1.2.0.0", Equal),
        ("1.2.4.0", "1.2.3.65535", Greater),
        ("10.0.0.0", "9.65535.65535.0", Greater),
        ("2", "1.9", Greater),
    ];
    for platform in ["windows", "windows-phone"] {
        for (a, b, want) in table {
            assert_eq!(cmp(platform, a, b), want, "{platform}: {a} vs {b}");
        }
    }
    assert_eq!(
        err("windows", "1.2.3.4.5"),
        VersionError::new(7, Reason::TooManyParts)
    );
    assert_eq!(
        err("windows", "1.65536"),
        VersionError::new(2, Reason::PartTooLarge { part: 2 })
    );
    assert_eq!(
        err("windows", "1.2.3.65536").reason,
        Reason::PartTooLarge { part: 4 }
    );
    assert_eq!(
        err("windows-phone", "1.2a"),
        VersionError::new(3, Reason::Unexpected('a'))
    );
    assert_eq!(
        err("windows", "1.2."),
        VersionError::new(4, Reason::EmptyPart)
    );
}

#[test]
fn generic_runs_and_pre_releases() {
    let ascending = [
        "0.9",
        "1.0-alpha",
        "1.0-alpha.1",
        "1.0-alpha.2",
        "1.0-beta",
        "1.0-beta.2",
        "1.0-beta.11",
        "1.0-rc.1",
        "1.0",
        "1.0.1",
        "1.1a",
        "1.1",
        "2",
        "10",
    ];
    for w in ascending.windows(2) {
        assert_eq!(cmp("generic", w[0], w[1]), Less, "{} < {}", w[0], w[1]);
    }
    let equal = [
        ("1.0", "1"),
        ("1.0.0", "1"),
        ("v1.2", "1.2"),
        ("V1.2", "1.2"),
        ("1.0-RC1", "1.0-rc.1"),
        ("1_0_2", "1.0.2"),
        ("0.0", "0"),
        ("1.0.0-beta", "1-beta"),
    ];
    for (a, b) in equal {
        assert_eq!(cmp("generic", a, b), Equal, "{a} == {b}");
    }
    // A zero after a word is significant; a leading zero run is kept as one zero.
    assert_eq!(cmp("generic", "beta.0", "beta"), Greater);
    assert_eq!(cmp("generic", "0-beta", "beta"), Greater);
    assert_eq!(cmp("generic", "1.0.0.5", "1.5"), Less);
    assert_eq!(cmp("generic", "alpha", "alphabet"), Less);
    assert_eq!(cmp("generic", "2024.10.01 (1234)", "2024.10.1.1234"), Equal);
    assert_eq!(cmp("generic", "versão1", "versão2"), Less);
    assert_eq!(err("generic", "...").reason, Reason::NoAlphanumerics);
    assert_eq!(err("generic", "").reason, Reason::Empty);
}

#[test]
fn unknown_platforms_are_refused() {
    assert_eq!(Platform::from_name("Android"), None);
    assert_eq!(Platform::from_name("win"), None);
    for p in Platform::ALL {
        assert_eq!(Platform::from_name(p.name()), Some(p));
    }
}

#[test]
fn downgrade_rule_per_platform() {
    let rule: Vec<(&str, bool)> = Platform::ALL
        .iter()
        .map(|p| (p.name(), p.allows_downgrade()))
        .collect();
    assert_eq!(
        rule,
        [
            ("android", false),
            ("ios", true),
            ("macos", false),
            ("windows", false),
            ("windows-phone", false),
            ("generic", false),
        ]
    );
}

#[test]
fn error_messages_name_platform_string_and_offset() {
    let e = err("android", "1.2");
    assert_eq!(
        e.describe(Platform::Android, "1.2"),
        "invalid android version \"1.2\": unexpected character '.' (at byte 1)"
    );
}

#[test]
fn argsort_is_stable_and_descending_keeps_input_order_of_equals() {
    let versions = ["1.2.3.9", "1.0", "1.2.3.1", "0.5", "1.2.3"];
    let keys = Keys::build(Platform::Windows, versions).unwrap();
    assert_eq!(argsort(&keys, false), [3, 1, 0, 2, 4]);
    assert_eq!(argsort(&keys, true), [0, 2, 4, 1, 3]);
}

#[test]
fn long_keys_beyond_the_prefix_still_order() {
    let versions = [
        "1.1.1.1.1.1.1.1.1.3",
        "1.1.1.1.1.1.1.1.1.2",
        "1.1.1.1.1.1.1.1.1.2.1",
    ];
    let keys = Keys::build(Platform::Ios, versions).unwrap();
    assert_eq!(argsort(&keys, false), [1, 2, 0]);
}

#[test]
fn column_errors_carry_the_row() {
    let e = Keys::build(Platform::Android, ["1", "2", "x"]).unwrap_err();
    assert_eq!(e.index, 2);
    assert_eq!(e.error.reason, Reason::Unexpected('x'));
}

#[test]
fn max_per_group_picks_first_highest() {
    let mut versions = Interned::default();
    let mut groups = Interned::default();
    for (g, v) in [
        ("a", "1.0"),
        ("a", "2.0"),
        ("b", "1.5"),
        ("a", "2"),
        ("b", "3.0b1"),
        ("c", "0.1"),
    ] {
        groups.push(g);
        versions.push(v);
    }
    let ranks = versions.keys(Platform::Ios).unwrap().ranks();
    let best = max_per_group(
        groups.values().len(),
        groups.rows(),
        &ranks,
        versions.rows(),
    );
    assert_eq!(groups.values(), ["a", "b", "c"]);
    assert_eq!(best, [Some(1), Some(4), Some(5)]);
}

#[test]
fn interned_columns_sort_like_their_rows() {
    let rows = ["2.0", "1.0", "2.0", "1.0.0", "0.9", "2.0.0"];
    let mut col = Interned::default();
    for v in rows {
        col.push(v);
    }
    assert_eq!(col.values(), ["2.0", "1.0", "1.0.0", "0.9", "2.0.0"]);
    let ranks = col.keys(Platform::Macos).unwrap().ranks();
    assert_eq!(ranks, [2, 1, 1, 0, 2]);
    assert_eq!(argsort_rows(&ranks, col.rows(), false), [4, 1, 3, 0, 2, 5]);
    assert_eq!(argsort_rows(&ranks, col.rows(), true), [0, 2, 5, 1, 3, 4]);
}

#[test]
fn interned_errors_name_the_first_row_with_the_bad_value() {
    let mut col = Interned::default();
    for v in ["1", "1", "x", "2", "x"] {
        col.push(v);
    }
    let e = col.keys(Platform::Android).unwrap_err();
    assert_eq!(e.index, 2);
}

#[test]
fn compare_rows_row_by_row() {
    let a = Keys::build(Platform::Android, ["1", "5", "3"]).unwrap();
    let b = Keys::build(Platform::Android, ["2", "5", "1"]).unwrap();
    assert_eq!(
        compare_rows(&a, &[0, 1, 2, 2], &b, &[0, 1, 2, 0]),
        [Less, Equal, Greater, Greater]
    );
}

fn plan(p: Platform, assigned: &[&str], installed: Option<&str>) -> (InstallAction, Option<usize>) {
    let keys = Keys::build(p, assigned.iter().copied()).unwrap();
    let refs: Vec<&[u8]> = (0..keys.len()).map(|i| keys.get(i)).collect();
    let have = installed.map(|v| sort_key(p, v).unwrap());
    let r = plan_install(&refs, have.as_deref(), p.allows_downgrade());
    (r.action, r.target)
}

#[test]
fn seed_example_device_assigned_two_active_versions_gets_the_highest() {
    // WS1: 3.1 deployed, 2.1 uploaded; a device assigned both is sent 3.1.
    for p in [
        Platform::Ios,
        Platform::Macos,
        Platform::Windows,
        Platform::Generic,
    ] {
        assert_eq!(
            plan(p, &["2.1", "3.1"], None),
            (InstallAction::Install, Some(1))
        );
        assert_eq!(
            plan(p, &["2.1", "3.1"], Some("2.1")),
            (InstallAction::Upgrade, Some(1))
        );
        assert_eq!(
            plan(p, &["2.1", "3.1"], Some("3.1")),
            (InstallAction::Current, Some(1))
        );
    }
    assert_eq!(
        plan(Platform::Android, &["21", "31"], Some("21")),
        (InstallAction::Upgrade, Some(1))
    );
}

#[test]
fn downgrades_follow_the_platform_rule() {
    assert_eq!(
        plan(Platform::Ios, &["1.0"], Some("2.0")),
        (InstallAction::Downgrade, Some(0))
    );
    assert_eq!(
        plan(Platform::Macos, &["1.0"], Some("2.0")),
        (InstallAction::DowngradeRefused, None)
    );
    assert_eq!(
        plan(Platform::Android, &["10", "11"], Some("12")),
        (InstallAction::DowngradeRefused, None)
    );
    assert_eq!(
        plan(Platform::Windows, &["1.0.0.0"], Some("1.0.1.0")),
        (InstallAction::DowngradeRefused, None)
    );
    assert_eq!(
        plan(Platform::Windows, &[], Some("1.0")),
        (InstallAction::NothingAssigned, None)
    );
}

#[test]
fn never_panics_on_arbitrary_input() {
    // A deterministic sweep over short strings of the characters that matter to the
    // scanners, plus some multi-byte ones.
    let alphabet = [
        '0', '1', '9', '.', 'a', 'b', 'd', 'f', 'c', 'v', '-', ' ', 'é', '٣', '\u{0}',
    ];
    let mut stack = vec![String::new()];
    let mut seen = 0;
    while let Some(s) = stack.pop() {
        for p in Platform::ALL {
            if let Ok(k) = sort_key(p, &s) {
                assert!(!k.is_empty());
            }
        }
        seen += 1;
        if s.chars().count() < 4 {
            for c in alphabet {
                let mut t = s.clone();
                t.push(c);
                stack.push(t);
            }
        }
    }
    assert!(seen > 50_000);
}

#[test]
fn large_columns_key_in_two_halves_and_still_name_the_first_bad_row() {
    let mut values: Vec<String> = (0..100_000).map(|i| format!("1.{i}")).collect();
    values[80_000] = "1.x".to_owned();
    values[90_000] = "2..0".to_owned();
    let mut col = Interned::default();
    for v in &values {
        col.push(v);
    }
    let e = col.keys(Platform::Ios).unwrap_err();
    assert_eq!(e.index, 80_000);
    values[80_000] = "1.80000".to_owned();
    values[90_000] = "0.5".to_owned();
    let mut col = Interned::default();
    for v in &values {
        col.push(v);
    }
    let keys = col.keys(Platform::Ios).unwrap();
    let order = argsort_rows(&keys.ranks(), col.rows(), false);
    assert_eq!(order[0], 90_000);
    assert_eq!(order[1], 0);
    assert_eq!(order[99_999], 99_999);
}

#[test]
fn install_action_codes_are_positions_in_all() {
    for (i, action) in InstallAction::ALL.iter().enumerate() {
        assert_eq!(*action as u8 as usize, i, "{}", action.name());
    }
}
