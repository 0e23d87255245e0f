use super::*;

const IOS: u8 = 1;
const ANDROID: u8 = 0;

fn fleet(n: usize) -> (Vec<String>, FleetIndex) {
    let ids: Vec<String> = (0..n).map(|i| format!("dev-{i}")).collect();
    let orgs = (0..n as u32).collect();
    let platforms = vec![IOS; n];
    let supervised: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let index = FleetIndex::new(
        ids.iter().map(String::as_str),
        orgs,
        &platforms,
        &supervised,
        None,
    )
    .expect("valid columns");
    (ids, index)
}

fn query(version: &str) -> Query<'_> {
    Query {
        org_range: None,
        scope: None,
        installed_only: false,
        platform: None,
        version,
        version_platform: Platform::Ios,
        allow_downgrade: false,
        licences: None,
        percent: None,
        seed: "seed",
        take_over: false,
    }
}

fn outcomes(t: &Targeting) -> Vec<Outcome> {
    t.outcomes
        .iter()
        .map(|&c| Outcome::ALL[c as usize])
        .collect()
}

#[test]
fn every_version_outcome() {
    let (_, mut index) = fleet(4);
    index
        .set_installed(7, Platform::Ios, &[1, 2, 3], &["1.0", "2.0", "3.0"])
        .unwrap();
    let t = index.target(7, &query("2.0")).unwrap();
    assert_eq!(
        outcomes(&t),
        [
            Outcome::Install,
            Outcome::Upgrade,
            Outcome::SkipSame,
            Outcome::SkipNewer
        ]
    );
    assert_eq!(t.selected, [0, 1]);
    let mut q = query("2.0");
    q.allow_downgrade = true;
    q.installed_only = true;
    let t = index.target(7, &q).unwrap();
    assert_eq!(
        outcomes(&t),
        [
            Outcome::SkipNotInstalled,
            Outcome::Upgrade,
            Outcome::SkipSame,
            Outcome::Downgrade
        ]
    );
    assert_eq!(t.selected, [1, 3]);
    assert_eq!(t.counts[Outcome::Downgrade as usize], 1);
}

#[test]
fn org_range_and_platform() {
    let ids = ["a", "b", "c", "d"];
    let index = {
        let mut i = FleetIndex::new(
            ids,
            vec![0, 1, 2, 3],
            &[IOS, ANDROID, IOS, IOS],
            &[1, 0, 2, 1],
            None,
        )
        .unwrap();
        i.set_installed(1, Platform::Ios, &[], &[]).unwrap();
        i
    };
    let mut q = query("1");
    q.org_range = Some((1, 2));
    q.platform = Some(IOS);
    let t = index.target(1, &q).unwrap();
    assert_eq!(
        outcomes(&t),
        [
            Outcome::OutOfScope,
            Outcome::SkipPlatform,
            Outcome::Install,
            Outcome::OutOfScope
        ]
    );
    assert_eq!(t.selected, [2]);
    assert_eq!(t.silent, [false]);
    q.org_range = None;
    q.platform = None;
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.silent, [true, false, false, true]);
}

#[test]
fn licences_go_to_the_first_devices() {
    let (_, mut index) = fleet(10);
    index.set_installed(1, Platform::Ios, &[0], &["9"]).unwrap();
    let mut q = query("1");
    q.licences = Some(3);
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.selected, [1, 2, 3]);
    assert_eq!(t.counts[Outcome::SkipNoLicence as usize], 6);
    assert_eq!(t.counts[Outcome::SkipNewer as usize], 1);
}

#[test]
fn rollout_is_stable_and_seeded() {
    let (_, mut a) = fleet(10_000);
    a.set_installed(1, Platform::Ios, &[], &[]).unwrap();
    let (_, mut b) = fleet(10_000);
    b.set_installed(1, Platform::Ios, &[], &[]).unwrap();
    let mut q = query("1");
    q.percent = Some(25.0);
    let ta = a.target(1, &q).unwrap();
    assert_eq!(ta, b.target(1, &q).unwrap());
    assert!(
        (2_300..2_700).contains(&ta.selected.len()),
        "{}",
        ta.selected.len()
    );
    q.seed = "other";
    assert_ne!(ta.selected, a.target(1, &q).unwrap().selected);
    q.percent = Some(0.0);
    assert!(a.target(1, &q).unwrap().selected.is_empty());
    q.percent = Some(100.0);
    assert_eq!(a.target(1, &q).unwrap().selected.len(), 10_000);
}

#[test]
fn fixed_hashes() {
    // FNV-1a test vectors: the rollout must not change between builds.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn incremental_update() {
    let (_, mut index) = fleet(2);
    index
        .set_installed(5, Platform::Ios, &[0], &["1.0"])
        .unwrap();
    assert_eq!(index.target(5, &query("1.0")).unwrap().outcomes, [2, 0]);
    index.update_installed(5, 1, Some("1.0.0")).unwrap();
    index.update_installed(5, 0, None).unwrap();
    assert_eq!(index.target(5, &query("1.0")).unwrap().outcomes, [0, 2]);
    assert_eq!(
        index.installed_key(5, 1).unwrap(),
        Some(sort_key(Platform::Ios, "1").unwrap().as_slice())
    );
}

#[test]
fn seed_b_versions_order_through_the_engine() {
    // §B: latest 3.1, previous 1.1, a new 2.1 between them.
    let (_, mut index) = fleet(3);
    index
        .set_installed(1, Platform::Ios, &[0, 1, 2], &["3.1", "1.1", "2.1"])
        .unwrap();
    let t = index.target(1, &query("2.1")).unwrap();
    assert_eq!(
        outcomes(&t),
        [Outcome::SkipNewer, Outcome::Upgrade, Outcome::SkipSame]
    );
}

#[test]
fn errors() {
    let (_, mut index) = fleet(2);
    assert_eq!(
        index.target(9, &query("1")).unwrap_err(),
        FleetError::UnknownApp(9)
    );
    assert!(matches!(
        index.set_installed(1, Platform::Ios, &[0], &["1..2"]),
        Err(FleetError::Version { index: Some(0), .. })
    ));
    assert!(matches!(
        index.set_installed(1, Platform::Ios, &[2], &["1"]),
        Err(FleetError::Device { device: 2, .. })
    ));
    assert!(matches!(
        index.set_installed(1, Platform::Ios, &[0, 1], &["1"]),
        Err(FleetError::Lengths { .. })
    ));
    index.set_installed(1, Platform::Ios, &[], &[]).unwrap();
    let mut q = query("1");
    q.version_platform = Platform::Android;
    assert!(matches!(
        index.target(1, &q),
        Err(FleetError::PlatformMismatch { .. })
    ));
    let mut q = query("1");
    q.percent = Some(f64::NAN);
    assert!(matches!(index.target(1, &q), Err(FleetError::Percent(_))));
    assert!(matches!(
        FleetIndex::new(["a"], vec![0], &[9], &[0], None),
        Err(FleetError::PlatformCode { code: 9, .. })
    ));
    assert!(matches!(
        FleetIndex::new(["a"], vec![0, 1], &[0], &[0], None),
        Err(FleetError::Lengths { what: "ids", .. })
    ));
    assert!(index.update_installed(1, 0, Some("x")).is_err());
    assert_eq!(index.id(1), "dev-1");
}

#[test]
fn licence_holders_do_not_take_another() {
    let (_, mut index) = fleet(6);
    index
        .set_installed(1, Platform::Ios, &[0, 1, 2], &["1", "1", "1"])
        .unwrap();
    index.set_licensed(1, &[1, 4]).unwrap();
    let mut q = query("2");
    q.licences = Some(2);
    let t = index.target(1, &q).unwrap();
    // 0 takes a free licence, 1 holds one, 2 takes the last, 3 finds none, 4 holds one.
    assert_eq!(t.selected, [0, 1, 2, 4]);
    assert_eq!(t.licensed, [0, 2]);
    assert_eq!(outcomes(&t)[3], Outcome::SkipNoLicence);
    assert_eq!(outcomes(&t)[5], Outcome::SkipNoLicence);
    index.update_licensed(1, 1, false).unwrap();
    assert!(!index.is_licensed(1, 1).unwrap());
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.selected, [0, 1, 4]);
    // Without a licence limit nobody takes one.
    q.licences = None;
    assert!(index.target(1, &q).unwrap().licensed.is_empty());
}

#[test]
fn scopes_combine_and_limit_the_query() {
    let ids = ["a", "b", "c", "d", "e"];
    let mut index = FleetIndex::new(ids, vec![0, 1, 2, 3, 4], &[IOS; 5], &[0; 5], None).unwrap();
    index.set_installed(1, Platform::Ios, &[], &[]).unwrap();
    let orgs = index.scope(&[(1, 2), (4, 4)], &[]).unwrap();
    assert_eq!(orgs.devices(), [1, 2, 4]);
    let picked = index.scope(&[], &[0, 2]).unwrap();
    assert_eq!(orgs.union(&picked).unwrap().devices(), [0, 1, 2, 4]);
    let rest = orgs.difference(&picked).unwrap();
    assert_eq!((rest.devices(), rest.count()), (vec![1, 4], 2));
    let mut q = query("1");
    q.scope = Some(&rest);
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.selected, [1, 4]);
    assert_eq!(t.counts[Outcome::OutOfScope as usize], 3);
    assert!(matches!(
        index.scope(&[(3, 2)], &[]),
        Err(FleetError::OrgRange { .. })
    ));
    assert!(matches!(
        index.scope(&[], &[5]),
        Err(FleetError::Device { .. })
    ));
    let small = Scope::empty(2);
    q.scope = Some(&small);
    assert!(matches!(
        index.target(1, &q),
        Err(FleetError::ScopeSize { .. })
    ));
}

#[test]
fn silent_column_and_device_changes() {
    let mut index =
        FleetIndex::new(["a", "b"], vec![0, 0], &[IOS, IOS], &[1, 1], Some(&[0, 1])).unwrap();
    index.set_installed(1, Platform::Ios, &[0], &["1"]).unwrap();
    index.set_licensed(1, &[0]).unwrap();
    let t = index.target(1, &query("2")).unwrap();
    assert_eq!(t.silent, [false, true]);
    let c = index.push_device("c", 3, ANDROID, 2, false).unwrap();
    assert_eq!((c, index.len(), index.id(c)), (2, 3, "c"));
    assert_eq!(index.installed_key(1, c).unwrap(), None);
    assert!(!index.is_licensed(1, c).unwrap());
    let mut q = query("2");
    q.platform = Some(IOS);
    let t = index.target(1, &q).unwrap();
    assert_eq!(outcomes(&t)[2], Outcome::SkipPlatform);
    index.set_device(c, 1, IOS, 1, true).unwrap();
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.selected, [0, 1, 2]);
    assert_eq!(t.silent, [false, true, true]);
    q.org_range = Some((1, 1));
    assert_eq!(index.target(1, &q).unwrap().selected, [2]);
    assert!(index.set_device(3, 0, IOS, 0, false).is_err());
    assert!(index.push_device("d", 0, 99, 0, false).is_err());
    assert_eq!(index.len(), 3);
    // Many devices pushed one by one cross bitset words.
    for k in 0..130 {
        index
            .push_device(&format!("x{k}"), 0, IOS, 1, true)
            .unwrap();
    }
    let t = index.target(1, &query("2")).unwrap();
    assert_eq!(t.selected.len(), 133);
}

#[test]
fn an_org_range_over_scattered_devices_visits_exactly_its_devices() {
    // Sorted by org, the range's devices are [0, 4, 1, 3]: as many as 0..=3, but not them.
    let orgs = vec![1, 2, 0, 2, 1];
    let mut index =
        FleetIndex::new(["a", "b", "c", "d", "e"], orgs, &[IOS; 5], &[0; 5], None).unwrap();
    index.set_installed(1, Platform::Ios, &[], &[]).unwrap();
    let mut q = query("1");
    q.org_range = Some((1, 2));
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.selected, [0, 1, 3, 4]);
    assert_eq!(outcomes(&t)[2], Outcome::OutOfScope);
    // Moved into org order, the same question takes the run path and agrees.
    index.set_device(2, 3, IOS, 0, false).unwrap();
    index.set_device(4, 1, IOS, 0, false).unwrap();
    index.set_device(0, 1, IOS, 0, false).unwrap();
    index.set_device(1, 2, IOS, 0, false).unwrap();
    index.set_device(3, 2, IOS, 0, false).unwrap();
    assert_eq!(index.target(1, &q).unwrap().selected, [0, 1, 3, 4]);
}

#[test]
fn take_over_user_installed_copies() {
    // 0: user's copy below, 1: user's at, 2: user's above, 3: managed at, 4: missing,
    // 5: user's copy at, on a device that cannot take over, 6: another platform.
    let mut index = FleetIndex::new(
        ["a", "b", "c", "d", "e", "f", "g"],
        vec![0; 7],
        &[IOS, IOS, IOS, IOS, IOS, IOS, ANDROID],
        &[1; 7],
        None,
    )
    .unwrap();
    index
        .set_installed(
            1,
            Platform::Ios,
            &[0, 1, 2, 3, 5, 6],
            &["1", "2", "3", "2", "2", "2"],
        )
        .unwrap();
    index.set_user_installed(1, &[0, 1, 2, 5, 6]).unwrap();
    index.set_take_over(&[1, 1, 1, 1, 1, 0, 1]).unwrap();
    let mut q = query("2");
    q.platform = Some(IOS);
    // Without take_over nothing changes.
    let plain = index.target(1, &q).unwrap();
    assert_eq!(
        outcomes(&plain)[..6],
        [
            Outcome::Upgrade,
            Outcome::SkipSame,
            Outcome::SkipNewer,
            Outcome::SkipSame,
            Outcome::Install,
            Outcome::SkipSame
        ]
    );
    q.take_over = true;
    let t = index.target(1, &q).unwrap();
    assert_eq!(
        outcomes(&t),
        [
            Outcome::TakeOver,
            Outcome::TakeOver,
            Outcome::SkipNewer,
            Outcome::SkipSame,
            Outcome::Install,
            Outcome::SkipTakeOverUnsupported,
            Outcome::SkipPlatform
        ]
    );
    assert_eq!(t.selected, [0, 1, 4]);
    assert_eq!(t.counts[Outcome::TakeOver as usize], 2);
    // Where downgrades are allowed, the copy above is taken over too.
    q.allow_downgrade = true;
    assert_eq!(
        outcomes(&index.target(1, &q).unwrap())[2],
        Outcome::TakeOver
    );
    // Licences and rollouts hold take-overs back like any other command.
    q.licences = Some(1);
    let t = index.target(1, &q).unwrap();
    assert_eq!(t.selected, [0]);
    assert_eq!(t.counts[Outcome::SkipNoLicence as usize], 3);
    q.licences = None;
    q.percent = Some(0.0);
    assert_eq!(
        index.target(1, &q).unwrap().counts[Outcome::SkipRollout as usize],
        4
    );
    // Updates: the copy became managed, the device learned to take over; pushed devices.
    index.update_user_installed(1, 1, false).unwrap();
    index.set_device_take_over(5, true).unwrap();
    assert!(!index.is_user_installed(1, 1).unwrap());
    assert!(index.can_take_over(5).unwrap());
    let n = index.push_device("h", 0, IOS, 1, true).unwrap();
    index.update_installed(1, n, Some("2")).unwrap();
    index.update_user_installed(1, n, true).unwrap();
    q.percent = None;
    q.allow_downgrade = false;
    let t = index.target(1, &q).unwrap();
    assert_eq!(outcomes(&t)[1], Outcome::SkipSame);
    assert_eq!(outcomes(&t)[5], Outcome::TakeOver);
    assert_eq!(outcomes(&t)[n], Outcome::SkipTakeOverUnsupported);
    // A mark on a device without the app (or an app never marked) changes nothing.
    index.update_user_installed(1, 4, true).unwrap();
    assert_eq!(outcomes(&index.target(1, &q).unwrap())[4], Outcome::Install);
    index.set_installed(2, Platform::Ios, &[0], &["2"]).unwrap();
    assert_eq!(
        outcomes(&index.target(2, &q).unwrap())[0],
        Outcome::SkipSame
    );
    assert!(matches!(
        index.set_take_over(&[1]),
        Err(FleetError::Lengths { .. })
    ));
    assert!(index.set_user_installed(1, &[99]).is_err());
    assert!(index.update_user_installed(1, 99, true).is_err());
}

#[test]
fn take_over_run_path_agrees_with_the_general_path() {
    // Numbered in org order the plain question takes the run path; a take-over query
    // walks the general one, and both agree on every device that is not the user's.
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let mut index = FleetIndex::new(
        ids.iter().map(String::as_str),
        vec![0; n],
        &vec![IOS; n],
        &vec![1; n],
        None,
    )
    .unwrap();
    let rows: Vec<u32> = (0..n as u32).filter(|d| d % 3 != 0).collect();
    let versions: Vec<&str> = rows
        .iter()
        .map(|d| ["1", "2", "3"][*d as usize % 3])
        .collect();
    index
        .set_installed(1, Platform::Ios, &rows, &versions)
        .unwrap();
    let users: Vec<u32> = rows.iter().copied().filter(|d| d % 5 == 0).collect();
    index.set_user_installed(1, &users).unwrap();
    index.set_take_over(&vec![1; n]).unwrap();
    let mut q = query("2");
    q.org_range = Some((0, 0));
    let plain = index.target(1, &q).unwrap();
    q.take_over = true;
    let taken = index.target(1, &q).unwrap();
    for d in 0..n {
        let user = users.contains(&(d as u32));
        let before = Outcome::ALL[plain.outcomes[d] as usize];
        let after = Outcome::ALL[taken.outcomes[d] as usize];
        if user && before != Outcome::SkipNewer {
            assert_eq!(after, Outcome::TakeOver, "device {d}");
        } else {
            assert_eq!(after, before, "device {d}");
        }
    }
}
