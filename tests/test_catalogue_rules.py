"""The catalogue's pure rules (requirements §A and §B): file versions per platform, what an
upload does to versions and assignments, the daily automatic-update check across time
zones, silent installs, and the install command each platform is sent."""

from __future__ import annotations

import base64
import datetime as dt
import re
import zoneinfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate import plist, syncml
from mdmgate.catalogue import rules
from mdmgate.catalogue.model import App, AppVersion, AutoUpdate, WindowsDeployment
from mdmgate.catalogue.rules import CatalogueRefused

UTC = dt.UTC
HOUR = 3600.0
DAY = 24 * HOUR

PFN = "Contoso.Expenses_8wekyb3d8bbwe"
APP_ROOT = "./{}/Vendor/MSFT/EnterpriseModernAppManagement"
SYNCML_PREFIX = (
    b"<SyncML><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID>"
    b"<MsgID>1</MsgID><Target><LocURI>device</LocURI></Target><Source><LocURI>mdmgate</LocURI>"
    b"</Source></SyncHdr><SyncBody>"
)
SYNCML_SUFFIX = b"</SyncBody></SyncML>"


def _at(text: str) -> float:
    """Unix time of an ISO timestamp with an offset."""
    return dt.datetime.fromisoformat(text).timestamp()


def _utc(instant: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(instant, UTC)


def _local(instant: float, zone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(instant, zoneinfo.ZoneInfo(zone))


def _exists(day: dt.date, clock: dt.time, zone: str) -> bool:
    """Whether a wall time happens on that day (DST gaps skip some)."""
    wall = dt.datetime.combine(day, clock, tzinfo=zoneinfo.ZoneInfo(zone))
    return wall.astimezone(UTC).astimezone(wall.tzinfo).replace(tzinfo=None) == wall.replace(
        tzinfo=None
    )


def _refused(exc: pytest.ExceptionInfo[CatalogueRefused], reason: str) -> CatalogueRefused:
    assert exc.value.reason == reason, exc.value
    return exc.value


# --- file versions -------------------------------------------------------------------------


def test_android_version_code_decides_and_name_is_shown() -> None:
    assert rules.file_version_from_source(
        "android", {"version_code": 42, "version_name": "4.2"}
    ) == ("42", "4.2")
    assert rules.file_version_from_source("android", {"version_code": 0}) == ("0", None)
    assert rules.file_version_from_source("android", {"version_code": 2**31 - 1})[0] == str(
        2**31 - 1
    )
    # A name that is not text is not shown.
    assert rules.file_version_from_source("android", {"version_code": 7, "version_name": 7}) == (
        "7",
        None,
    )


@pytest.mark.parametrize("code", [True, False, -1, 2**31, "42", 4.0, None])
def test_android_bad_version_code_refused(code: object) -> None:
    source = {"version_name": "4.2"} if code is None else {"version_code": code}
    with pytest.raises(CatalogueRefused) as exc:
        rules.file_version_from_source("android", source, field="$.src")
    refused = _refused(exc, "invalid_version")
    assert refused.field == "$.src.version_code"


def _info_plist(binary: bool, **keys: str) -> dict[str, str]:
    return {"info_plist": base64.b64encode(plist.dumps(dict(keys), binary=binary)).decode()}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("platform", ["ios", "macos"])
def test_info_plist_bundle_version_preferred(binary: bool, platform: str) -> None:
    source = _info_plist(
        binary, CFBundleVersion="3.1.7", CFBundleShortVersionString="3.1", CFBundleName="App"
    )
    assert rules.file_version_from_source(platform, source) == ("3.1.7", "3.1")


@pytest.mark.parametrize("binary", [False, True])
def test_info_plist_short_version_when_no_bundle_version(binary: bool) -> None:
    source = _info_plist(binary, CFBundleShortVersionString="2.0.1")
    assert rules.file_version_from_source("ios", source) == ("2.0.1", "2.0.1")
    # An empty CFBundleVersion does not count.
    source = _info_plist(binary, CFBundleVersion="", CFBundleShortVersionString="2.0.1")
    assert rules.file_version_from_source("ios", source) == ("2.0.1", "2.0.1")
    # Only CFBundleVersion: it is also what is shown.
    source = _info_plist(binary, CFBundleVersion="5")
    assert rules.file_version_from_source("ios", source) == ("5", "5")


def test_plain_bundle_keys() -> None:
    assert rules.file_version_from_source(
        "macos", {"CFBundleVersion": "100", "CFBundleShortVersionString": "1.0"}
    ) == ("100", "1.0")
    assert rules.file_version_from_source("ios", {"CFBundleShortVersionString": "1.2b3"}) == (
        "1.2b3",
        "1.2b3",
    )


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"CFBundleName": "App"},
        {"CFBundleVersion": "", "CFBundleShortVersionString": ""},
        {"CFBundleVersion": 3},
        _info_plist(False, CFBundleName="App"),
        _info_plist(True, CFBundleName="App"),
    ],
)
def test_bundle_without_version_refused(source: dict[str, object]) -> None:
    with pytest.raises(CatalogueRefused) as exc:
        rules.file_version_from_source("ios", source)
    _refused(exc, "invalid_source")


@pytest.mark.parametrize(
    "raw",
    [
        "not base64 !!",
        "QUJD=",  # bad padding
        base64.b64encode(b"hello, not a plist").decode(),
        base64.b64encode(plist.dumps(["CFBundleVersion", "1.0"])).decode(),  # not a dict
    ],
)
def test_bad_info_plist_refused(raw: str) -> None:
    with pytest.raises(CatalogueRefused) as exc:
        rules.file_version_from_source("ios", {"info_plist": raw}, field="$.s")
    refused = _refused(exc, "invalid_source")
    assert refused.field == "$.s.info_plist"


def test_bundle_version_not_following_apple_rules_refused() -> None:
    with pytest.raises(CatalogueRefused) as exc:
        rules.file_version_from_source("ios", _info_plist(True, CFBundleVersion="1..2"))
    _refused(exc, "invalid_version")


APPX = """<?xml version="1.0" encoding="utf-8"?>
<Package xmlns="http://schemas.microsoft.com/appx/manifest/foundation/windows10"
         xmlns:uap="http://schemas.microsoft.com/appx/manifest/uap/windows10">
  <Identity Name="Contoso.Expenses" Publisher="CN=Contoso, O=Contoso"
            Version="1.4.2.0" ProcessorArchitecture="x64" />
  <Dependencies>
    <TargetDeviceFamily Name="Windows.Desktop" MinVersion="10.0.17763.0"
                        MaxVersionTested="10.0.22621.0" />
  </Dependencies>
</Package>
"""


def test_windows_manifest_identity_version() -> None:
    assert rules.file_version_from_source("windows", {"manifest": APPX}) == ("1.4.2.0", "1.4.2")


def test_windows_manifest_prefixed_and_single_quotes() -> None:
    manifest = (
        "<?xml version='1.0'?><m:Package xmlns:m='urn:x'>"
        "<m:Dependencies><m:TargetDeviceFamily MinVersion='10.0.1.0'/></m:Dependencies>"
        "<m:Identity Name='Contoso.Expenses'\n  Version = '2.10.3.77' /></m:Package>"
    )
    assert rules.file_version_from_source("windows", {"manifest": manifest}) == (
        "2.10.3.77",
        "2.10.3",
    )


def test_windows_phone_manifest_app_version() -> None:
    manifest = (
        '<Deployment AppPlatformVersion="8.0"><App ProductID="{x}" Title="T" '
        'Version="3.2.1.0" Author="A"/></Deployment>'
    )
    assert rules.file_version_from_source("windows", {"manifest": manifest}) == (
        "3.2.1.0",
        "3.2.1",
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ({}, "invalid_source"),
        ({"manifest": b"<Identity Version='1.0.0.0'/>"}, "invalid_source"),
        ({"manifest": "<Package><Identity Name='x'/></Package>"}, "invalid_source"),
        ({"manifest": "<Identity Name='x' Version='1.2.3.4.5'/>"}, "invalid_version"),
        ({"manifest": "<Identity Name='x' Version='1.65536.0.0'/>"}, "invalid_version"),
    ],
)
def test_windows_manifest_refused(source: dict[str, object], reason: str) -> None:
    with pytest.raises(CatalogueRefused) as exc:
        rules.file_version_from_source("windows", source)
    _refused(exc, reason)


def test_unknown_platform_has_no_source() -> None:
    with pytest.raises(CatalogueRefused):
        rules.file_version_from_source("beos", {"version": "1"})


def test_platform_mapping() -> None:
    assert rules.version_platform("ipados") == "ios"
    assert rules.version_platform("windows") == "windows"
    assert rules.device_platform("ipados") == "ios"
    assert rules.device_platform("macos") == "macos"


# --- upload, versions and assignments (the seed's 3.1 / 1.1 / 2.1 example) ---------------


def _seed_app(platform: str = "ios", low: str = "1.1", high: str = "3.1") -> App:
    return App(
        id="app-1",
        name="Expenses",
        platform=platform,  # type: ignore[arg-type]
        kind="internal",
        identifier="com.example.expenses",
        versions=(
            AppVersion(file_version=high, label="2.0", assigned_orgs=("/A",)),
            AppVersion(
                file_version=low,
                label="1.0",
                assigned_orgs=("/B",),
                assigned_devices=("dev-b",),
            ),
        ),
    )


def _by_version(app: App) -> dict[str, AppVersion]:
    return {v.file_version: v for v in app.versions}


@pytest.mark.parametrize(
    ("platform", "low", "mid", "high"),
    [
        ("ios", "1.1", "2.1", "3.1"),
        ("macos", "1.1", "2.1", "3.1"),
        ("windows", "1.1.0.0", "2.1.0.0", "3.1.0.0"),
        ("android", "11", "21", "31"),
    ],
)
def test_seed_upload_between_previous_and_latest(
    platform: str, low: str, mid: str, high: str
) -> None:
    app = _seed_app(platform, low, high)
    done = rules.upload(app, AppVersion(file_version=mid, label="3.0"), retire_previous=False)
    assert done.latest == high
    assert done.previous == (low,)
    assert done.retired == ()
    after = _by_version(done.app)
    # B's assignment moves from 1.1 to 2.1; 3.1 keeps A's.
    assert after[mid].assigned_orgs == ("/B",)
    assert after[mid].assigned_devices == ("dev-b",)
    assert after[mid].label == "3.0"
    assert after[low].assigned_orgs == ()
    assert after[low].assigned_devices == ()
    assert after[low].state == "active"
    assert after[high] == app.versions[0]
    assert rules.latest_active(done.app) == after[high]
    assert [v.file_version for v in rules.ordered(done.app)] == [low, mid, high]
    # The input app is not changed.
    assert _by_version(app)[low].assigned_orgs == ("/B",)


def test_seed_upload_retire_previous_never_latest() -> None:
    done = rules.upload(_seed_app(), AppVersion(file_version="2.1"), retire_previous=True)
    after = _by_version(done.app)
    assert done.retired == ("1.1",)
    assert done.latest == "3.1"
    assert after["1.1"].state == "retired"
    assert after["3.1"].state == "active"
    assert after["2.1"].state == "active"
    assert after["3.1"].assigned_orgs == ("/A",)
    assert after["2.1"].assigned_orgs == ("/B",)
    assert rules.latest_active(done.app) is not None
    assert rules.latest_active(done.app).file_version == "3.1"  # type: ignore[union-attr]
    assert [v.file_version for v in rules.ordered(done.app, descending=True)] == [
        "3.1",
        "2.1",
        "1.1",
    ]


def test_seed_duplicate_refused() -> None:
    done = rules.upload(_seed_app(), AppVersion(file_version="2.1"), retire_previous=True)
    for duplicate in ("2.1.0", "3.1", "1.1.0.0", "01.1"):  # 1.1 is retired: still taken
        with pytest.raises(CatalogueRefused) as exc:
            rules.upload(done.app, AppVersion(file_version=duplicate), retire_previous=False)
        refused = _refused(exc, "duplicate_version")
        assert refused.field == "$.file_version"


def test_windows_duplicate_counts_three_parts() -> None:
    app = _seed_app("windows", "1.1.0.0", "3.1.0.0")
    with pytest.raises(CatalogueRefused) as exc:
        rules.upload(app, AppVersion(file_version="3.1.0.9"), retire_previous=False)
    _refused(exc, "duplicate_version")


def test_upload_above_latest_takes_every_assignment() -> None:
    new = AppVersion(file_version="4.0", assigned_orgs=("/C", "/B"), assigned_devices=("dev-x",))
    done = rules.upload(_seed_app(), new, retire_previous=True)
    after = _by_version(done.app)
    assert done.latest == "4.0"
    assert set(done.previous) == {"1.1", "3.1"}
    assert set(done.retired) == {"1.1", "3.1"}
    assert set(after["4.0"].assigned_orgs) == {"/A", "/B", "/C"}
    assert len(after["4.0"].assigned_orgs) == 3  # no duplicates
    assert set(after["4.0"].assigned_devices) == {"dev-x", "dev-b"}
    assert after["3.1"].state == after["1.1"].state == "retired"
    assert rules.latest_active(done.app) == after["4.0"]


def test_upload_below_everything_moves_nothing() -> None:
    done = rules.upload(_seed_app(), AppVersion(file_version="0.9"), retire_previous=True)
    assert done.previous == ()
    assert done.retired == ()
    assert done.latest == "3.1"
    assert _by_version(done.app)["0.9"].assigned_orgs == ()
    assert _by_version(done.app)["1.1"].assigned_orgs == ("/B",)


def test_upload_leaves_retired_versions_alone() -> None:
    app = App(
        id="a",
        name="A",
        platform="android",
        kind="internal",
        identifier="com.a",
        versions=(
            AppVersion(file_version="10", state="retired", assigned_orgs=("/old",)),
            AppVersion(file_version="20", assigned_orgs=("/B",)),
            AppVersion(file_version="40", assigned_orgs=("/A",)),
        ),
    )
    done = rules.upload(app, AppVersion(file_version="30"), retire_previous=True)
    after = _by_version(done.app)
    assert done.previous == ("20",)
    assert after["10"].assigned_orgs == ("/old",)
    assert after["30"].assigned_orgs == ("/B",)
    assert after["20"].state == "retired"
    assert done.latest == "40"


def test_upload_into_empty_app() -> None:
    app = App(id="a", name="A", platform="ios", kind="internal", identifier="com.a")
    done = rules.upload(app, AppVersion(file_version="1.0"), retire_previous=True)
    assert done.latest == "1.0"
    assert done.previous == done.retired == ()
    assert rules.latest_active(app) is None


def test_find_version_and_ordering() -> None:
    app = _seed_app()
    assert rules.find_version(app, "3.1.0") == app.versions[0]
    assert rules.find_version(app, "1.1") == app.versions[1]
    assert rules.find_version(app, "2.1") is None
    assert rules.find_version(app, "not a version") is None
    android = _seed_app("android", "9", "10")
    # Numeric, not text, order.
    assert [v.file_version for v in rules.ordered(android)] == ["9", "10"]
    assert rules.find_version(android, "010") is not None


def test_latest_active_skips_retired_and_unpublished() -> None:
    app = App(
        id="s",
        name="S",
        platform="ios",
        kind="store",
        identifier="com.s",
        versions=(
            AppVersion(file_version="1.0", published_at=100.0),
            AppVersion(file_version="3.0", published_at=300.0, state="retired"),
            AppVersion(file_version="2.0", published_at=200.0),
            AppVersion(file_version="2.5", published_at=400.0),
        ),
    )
    assert rules.latest_active(app).file_version == "2.5"  # type: ignore[union-attr]
    assert rules.latest_active(app, published_by=400.0).file_version == "2.5"  # type: ignore[union-attr]
    assert rules.latest_active(app, published_by=399.0).file_version == "2.0"  # type: ignore[union-attr]
    assert rules.latest_active(app, published_by=199.0).file_version == "1.0"  # type: ignore[union-attr]
    assert rules.latest_active(app, published_by=99.0) is None


# --- automatic updates: refusals -----------------------------------------------------------


def _store_app(**changes: object) -> App:
    base = App(
        id="store-1",
        name="Store",
        platform="ios",
        kind="store",
        identifier="com.example.store",
        itunes_store_id=361309726,
        vpp=True,
        licence_total=10,
        managed=True,
    )
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"licence_total": 0}, None),
        ({"system": True}, "system_app"),
        ({"system": True, "vpp": False}, "system_app"),
        ({"vpp": False}, "vpp_not_set_up"),
        ({"licence_total": None}, "vpp_not_set_up"),
        ({"kind": "internal"}, "vpp_not_set_up"),
        ({"managed": False}, "not_managed"),
    ],
)
def test_auto_update_refusal(changes: dict[str, object], reason: str | None) -> None:
    refusal = rules.auto_update_refusal(_store_app(**changes))
    if reason is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal[0] == reason
        assert "store-1" in refusal[1]


# --- automatic updates: the daily check ----------------------------------------------------


def test_check_clock() -> None:
    assert rules.check_clock("04:00") == dt.time(4, 0)
    assert rules.check_clock("00:00") == dt.time(0, 0)
    assert rules.check_clock("23:59") == dt.time(23, 59)
    for bad in ("4:00", "24:00", "12:60", "0400", "04:00:00", "aa:bb", "", "04:5"):
        with pytest.raises(CatalogueRefused) as exc:
            rules.check_clock(bad)
        assert _refused(exc, "invalid_check_time").field == "$.check_time"


@pytest.mark.parametrize("bad", [" 4:00", "+4:00", "04:+5", "-0:00", "\u0660\u0664:\u0660\u0660"])
def test_check_clock_only_ascii_digits(bad: str) -> None:
    # int() accepts a sign, surrounding spaces and non-ASCII digits; HH:MM does not.
    with pytest.raises(CatalogueRefused) as exc:
        rules.check_clock(bad)
    _refused(exc, "invalid_check_time")


def test_unknown_timezone_refused() -> None:
    for zone in ("Mars/Olympus", "", "Asia", "../etc/passwd"):
        with pytest.raises(CatalogueRefused) as exc:
            rules.next_check(AutoUpdate(timezone=zone), 0.0)
        assert _refused(exc, "invalid_timezone").field == "$.timezone"
        with pytest.raises(CatalogueRefused):
            rules.check_before(AutoUpdate(timezone=zone), 0.0)


TOKYO = AutoUpdate(check_time="04:00", timezone="Asia/Tokyo")


def test_tokyo_four_am_is_nineteen_utc_the_day_before() -> None:
    check = rules.next_check(TOKYO, _at("2024-06-01T12:00:00+00:00"))
    assert _utc(check) == dt.datetime(2024, 6, 1, 19, 0, tzinfo=UTC)
    assert _local(check, "Asia/Tokyo").replace(tzinfo=None) == dt.datetime(2024, 6, 2, 4, 0)
    assert rules.check_before(TOKYO, check) == check
    assert rules.check_before(TOKYO, check - 1) == check - DAY
    assert rules.next_check(TOKYO, check - 1) == check
    assert rules.next_check(TOKYO, check) == check + DAY
    assert rules.next_check(TOKYO, check - 0.001) == check
    assert rules.check_before(TOKYO, check + 0.001) == check


def test_utc_default_check() -> None:
    auto = AutoUpdate()  # 04:00 UTC
    assert rules.next_check(auto, 0.0) == 4 * HOUR
    assert rules.check_before(auto, 0.0) == 4 * HOUR - DAY
    assert rules.next_check(auto, 4 * HOUR) == 4 * HOUR + DAY


def test_next_day_rule() -> None:
    # A version published one minute after the 04:00 Tokyo check is picked up the next day.
    check = _at("2024-06-02T04:00:00+09:00")
    app = _store_app(
        versions=(
            AppVersion(file_version="1.0", published_at=check - 10 * DAY),
            AppVersion(file_version="1.1", published_at=check + 60),
        )
    )
    ran = rules.check_before(TOKYO, check + 30)
    assert ran == check
    assert rules.latest_active(app, published_by=ran).file_version == "1.0"  # type: ignore[union-attr]
    following = rules.next_check(TOKYO, ran)
    assert following == check + DAY
    assert rules.latest_active(app, published_by=following).file_version == "1.1"  # type: ignore[union-attr]
    # Published exactly at the check: that check sees it.
    same = _store_app(versions=(AppVersion(file_version="2.0", published_at=check),))
    assert rules.latest_active(same, published_by=check) is not None


NEW_YORK = "America/New_York"


def test_new_york_spring_forward_gap() -> None:
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist that day.
    auto = AutoUpdate(check_time="02:30", timezone=NEW_YORK)
    before = rules.next_check(auto, _at("2024-03-09T00:00:00-05:00"))
    gap_day = rules.next_check(auto, before)
    after = rules.next_check(auto, gap_day)
    assert _utc(before) == dt.datetime(2024, 3, 9, 7, 30, tzinfo=UTC)
    assert _local(gap_day, NEW_YORK).date() == dt.date(2024, 3, 10)
    # The skipped wall time resolves past the gap (02:30 EST = 03:30 EDT).
    assert _local(gap_day, NEW_YORK).hour == 3
    assert _utc(gap_day) == dt.datetime(2024, 3, 10, 7, 30, tzinfo=UTC)
    assert _utc(after) == dt.datetime(2024, 3, 11, 6, 30, tzinfo=UTC)
    assert before < gap_day < after
    assert rules.check_before(auto, gap_day - 1) == before
    assert rules.check_before(auto, after - 1) == gap_day


def test_new_york_fall_back_repeated_hour_checks_once() -> None:
    # 2024-11-03: 01:00-02:00 happens twice (EDT, then EST); one check, the first.
    auto = AutoUpdate(check_time="01:30", timezone=NEW_YORK)
    first = rules.next_check(auto, _at("2024-11-03T00:00:00-04:00"))
    assert _utc(first) == dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC)
    second_0130 = first + HOUR  # 01:30 EST, the same wall time again
    assert _local(second_0130, NEW_YORK).replace(tzinfo=None) == dt.datetime(2024, 11, 3, 1, 30)
    assert rules.check_before(auto, second_0130) == first
    following = rules.next_check(auto, first)
    assert following == rules.next_check(auto, second_0130)
    assert _utc(following) == dt.datetime(2024, 11, 4, 6, 30, tzinfo=UTC)
    assert following - first == DAY + HOUR


@pytest.mark.parametrize(
    ("zone", "clock"),
    [
        (NEW_YORK, "02:30"),
        (NEW_YORK, "01:30"),
        (NEW_YORK, "00:00"),
        ("Asia/Tokyo", "04:00"),
        ("Europe/London", "01:15"),
        ("Australia/Lord_Howe", "02:15"),
        ("UTC", "23:59"),
    ],
)
def test_one_check_per_local_day_over_a_year(zone: str, clock: str) -> None:
    auto = AutoUpdate(check_time=clock, timezone=zone)
    start = dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo(zone)).timestamp()
    check = rules.next_check(auto, start - 1)
    days: list[dt.date] = []
    hh, mm = map(int, clock.split(":"))
    for _ in range(366 + 365):
        local = _local(check, zone)
        days.append(local.date())
        # The wall clock reads the check time, except where DST skipped it.
        if (local.hour, local.minute) != (hh, mm):
            assert not _exists(local.date(), dt.time(hh, mm), zone)
            assert local.replace(tzinfo=None) - dt.datetime.combine(
                local.date(), dt.time(hh, mm)
            ) <= dt.timedelta(hours=1)
        following = rules.next_check(auto, check)
        assert following > check
        assert rules.check_before(auto, following - 0.5) == check
        check = following
    assert days == [days[0] + dt.timedelta(days=k) for k in range(len(days))]
    assert days[0] == dt.date(2024, 1, 1)


ZONES = [
    "UTC",
    "Asia/Tokyo",
    NEW_YORK,
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
]


@settings(max_examples=500, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hours=st.integers(0, 23),
    minutes=st.sampled_from([0, 1, 15, 30, 45, 59]),
    now=st.integers(_at("2000-01-01T00:00:00+00:00"), _at("2040-01-01T00:00:00+00:00")).map(float)
    | st.floats(_at("2000-01-01T00:00:00+00:00"), _at("2040-01-01T00:00:00+00:00")),
)
def test_check_invariants(zone: str, hours: int, minutes: int, now: float) -> None:
    auto = AutoUpdate(check_time=f"{hours:02d}:{minutes:02d}", timezone=zone)
    last = rules.check_before(auto, now)
    upcoming = rules.next_check(auto, now)
    # The last check at or before now, and the first one strictly after: nothing between.
    assert last <= now < upcoming
    assert rules.next_check(auto, last) == upcoming
    assert rules.check_before(auto, upcoming) == upcoming
    assert rules.check_before(auto, upcoming - 0.25) == last
    # Consecutive checks are about a day apart (DST moves them by at most an hour).
    assert 23 * HOUR <= upcoming - last <= 25 * HOUR
    # A check falls on the check time of its local day, or just after a DST gap.
    local = _local(upcoming, zone)
    wall = local.hour * 60 + local.minute
    assert 0 <= wall - (hours * 60 + minutes) <= 60
    if now == last:
        assert rules.check_before(auto, now) == now
    # Checks are whole seconds.
    assert upcoming == int(upcoming)
    assert last == int(last)


# --- silent installs and command channels --------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "os_version", "supervised", "silent"),
    [
        ("ios", "9.3", True, False),
        ("ios", "9.3.5", True, False),
        ("ios", "10.0", True, True),
        ("ios", "10", True, True),
        ("ios", "17.4.1", True, True),
        ("ios", "17.4.1", False, False),
        ("ios", "17.4.1", None, False),
        ("ios", None, True, False),
        ("ios", "", True, False),
        ("ios", "not-a-version", True, False),
        ("ipados", "16.0", True, True),
        ("ipados", "9.0", True, False),
        ("ipados", "16.0", False, False),
        ("macos", "14.2", False, True),
        ("macos", None, None, True),
        ("windows", "10.0.19045", False, True),
        ("windows", None, None, True),
        ("android", "14", True, False),
        ("android", None, None, False),
    ],
)
def test_installs_silently(
    platform: str, os_version: str | None, supervised: bool | None, silent: bool
) -> None:
    assert rules.installs_silently(platform, os_version, supervised) is silent


def test_command_kind() -> None:
    assert rules.command_kind("ios") == "apple"
    assert rules.command_kind("ipados") == "apple"
    assert rules.command_kind("macos") == "apple"
    assert rules.command_kind("windows") == "syncml"
    assert rules.command_kind("android") is None


# --- deployment bodies: Apple --------------------------------------------------------------


def _apple(app: App, version: AppVersion | None = None, **kw: object) -> dict[str, object]:
    built = rules.deployment(
        app,
        version or AppVersion(file_version="1.0"),
        command_id="cmd-1",
        first_install=bool(kw.pop("first_install", True)),
        **kw,  # type: ignore[arg-type]
    )
    assert built.kind == "apple"
    decoded = plist.loads(built.body)
    assert isinstance(decoded, dict)
    assert decoded["CommandUUID"] == "cmd-1"
    return decoded["Command"]  # type: ignore[no-any-return]


def test_apple_vpp_store_install() -> None:
    command = _apple(_store_app())
    assert command == {
        "RequestType": "InstallApplication",
        "iTunesStoreID": 361309726,
        "Options": {"PurchaseMethod": 1},
    }
    # An update is the same command again.
    assert _apple(_store_app(), first_install=False) == command


def test_apple_store_without_vpp() -> None:
    command = _apple(_store_app(vpp=False, licence_total=None))
    assert command == {"RequestType": "InstallApplication", "iTunesStoreID": 361309726}


def test_apple_take_over_user_installed_app() -> None:
    command = _apple(_store_app(), take_over=True)
    assert command["ChangeManagementState"] == "Managed"
    assert command["Options"] == {"PurchaseMethod": 1}
    assert "ChangeManagementState" not in _apple(_store_app(), take_over=False)


def test_apple_macos_store_app() -> None:
    command = _apple(_store_app(platform="macos"))
    assert command["iTunesStoreID"] == 361309726
    assert command["RequestType"] == "InstallApplication"


def test_apple_internal_manifest() -> None:
    app = _store_app(kind="internal", vpp=False, licence_total=None, itunes_store_id=None)
    version = AppVersion(file_version="2.1", manifest_url="https://apps.example.com/m.plist")
    command = _apple(app, version)
    assert command == {
        "RequestType": "InstallApplication",
        "ManifestURL": "https://apps.example.com/m.plist",
    }


def test_apple_incomplete_apps_refused() -> None:
    with pytest.raises(CatalogueRefused) as exc:
        _apple(_store_app(itunes_store_id=None))
    assert _refused(exc, "incomplete_app").field == "$.itunes_store_id"
    internal = _store_app(kind="internal", itunes_store_id=None)
    with pytest.raises(CatalogueRefused) as exc:
        _apple(internal, AppVersion(file_version="1.0"))
    assert _refused(exc, "incomplete_app").field == "$.manifest_url"


def test_apple_unusable_manifest_url_refused() -> None:
    # The model takes any text; the command needs an https URL. Like the Windows branch,
    # the refusal must be a CatalogueRefused, which the roll-out runner records.
    internal = _store_app(kind="internal", itunes_store_id=None)
    with pytest.raises(CatalogueRefused):
        _apple(internal, AppVersion(file_version="1.0", manifest_url="http://insecure/m.plist"))


# --- deployment bodies: Windows ------------------------------------------------------------


def _windows_app(**deploy: object) -> App:
    return App(
        id="win-1",
        name="Expenses",
        platform="windows",
        kind="store" if deploy.get("method") == "store" else "internal",
        identifier=PFN,
        windows=WindowsDeployment(**deploy),  # type: ignore[arg-type]
    )


STORE = {"method": "store", "product_id": "9WZDNCRFJ3TJ", "skuid": "0010"}
LICENCE = {"license_id": "lic-42", "license_blob": "QUJDRA=="}
PACKAGE = "https://cdn.example.com/apps/Contoso.Expenses.msix"


def _commands(body: bytes) -> list[tuple[str, str, str | None]]:
    """(verb, LocURI, Data) of each command of a SyncML body fragment."""
    message = syncml.to_dict(SYNCML_PREFIX + body + SYNCML_SUFFIX)
    out = []
    ids = []
    for entry in message["SyncBody"]:
        ((verb, command),) = entry.items()
        ids.append(command["CmdID"])
        for item in command["Item"]:
            out.append((verb, item["Target"]["LocURI"], item.get("Data")))
    assert len(set(ids)) == len(ids), ids
    return out


def _windows(app: App, *, first_install: bool, package_url: str | None = PACKAGE) -> bytes:
    built = rules.deployment(
        app,
        AppVersion(file_version="1.4.2.0", package_url=package_url),
        command_id="c-1",
        first_install=first_install,
    )
    assert built.kind == "syncml"
    return built.body


def test_windows_store_first_install_with_licence() -> None:
    body = _windows(_windows_app(**STORE, **LICENCE), first_install=True)
    user = APP_ROOT.format("User")
    commands = _commands(body)
    assert [(verb, uri) for verb, uri, _ in commands] == [
        ("Exec", f"{user}/AppLicenses/StoreLicenses/lic-42/AddLicense"),
        ("Add", f"{user}/AppInstallation/{PFN}"),
        ("Exec", f"{user}/AppInstallation/{PFN}/StoreInstall"),
    ]
    assert commands[0][2] == '<License Content="QUJDRA=="/>'
    assert commands[2][2] == '<Application id="9WZDNCRFJ3TJ" flags="0" skuid="0010"/>'
    assert body.index(b"AddLicense") < body.index(b"StoreInstall")
    assert b"./Device/" not in body
    assert re.findall(rb"<CmdID>(\d+)</CmdID>", body) == [b"1", b"2", b"3"]


def test_windows_store_update_sends_no_licence() -> None:
    body = _windows(_windows_app(**STORE, **LICENCE), first_install=False)
    assert b"AddLicense" not in body
    assert [verb for verb, _, _ in _commands(body)] == ["Add", "Exec"]
    assert b"StoreInstall" in body


def test_windows_first_install_without_licence_configured() -> None:
    body = _windows(_windows_app(**STORE), first_install=True)
    assert b"AddLicense" not in body
    # A licence id without its blob is not a licence.
    body = _windows(_windows_app(**STORE, license_id="lic-42"), first_install=True)
    assert b"AddLicense" not in body


def test_windows_hosted_user_context() -> None:
    body = _windows(_windows_app(method="hosted"), first_install=True)
    user = APP_ROOT.format("User")
    commands = _commands(body)
    assert [(verb, uri) for verb, uri, _ in commands] == [
        ("Add", f"{user}/AppInstallation/{PFN}"),
        ("Exec", f"{user}/AppInstallation/{PFN}/HostedInstall"),
    ]
    assert commands[1][2] == f'<Application PackageUri="{PACKAGE}"/>'
    assert b"StoreInstall" not in body


def test_windows_hosted_device_context() -> None:
    body = _windows(_windows_app(method="hosted", context="device", **LICENCE), first_install=True)
    device = APP_ROOT.format("Device")
    commands = _commands(body)
    assert [(verb, uri) for verb, uri, _ in commands] == [
        ("Exec", f"{device}/AppLicenses/StoreLicenses/lic-42/AddLicense"),
        ("Add", f"{device}/AppInstallation/{PFN}"),
        ("Exec", f"{device}/AppInstallation/{PFN}/HostedInstall"),
    ]
    assert b"./User/" not in body


@pytest.mark.parametrize(
    ("deploy", "package_url", "field"),
    [
        ({"method": "hosted"}, None, "$.package_url"),
        ({"method": "store", "skuid": "0010"}, PACKAGE, "$.windows"),
        ({"method": "store", "product_id": "9WZDNCRFJ3TJ"}, PACKAGE, "$.windows"),
        (None, PACKAGE, "$.windows"),
    ],
)
def test_windows_incomplete_app_refused(
    deploy: dict[str, object] | None, package_url: str | None, field: str
) -> None:
    if deploy is None:
        app = App(id="w", name="W", platform="windows", kind="internal", identifier=PFN)
    else:
        app = _windows_app(**deploy)
    with pytest.raises(CatalogueRefused) as exc:
        _windows(app, first_install=True, package_url=package_url)
    assert _refused(exc, "incomplete_app").field == field


def test_windows_bad_command_values_refused() -> None:
    with pytest.raises(CatalogueRefused) as exc:
        _windows(_windows_app(method="hosted"), first_install=True, package_url="http://x/a.msix")
    assert _refused(exc, "invalid_windows_command").field == "$.windows_app.package_uri"
    bad_family = App(
        id="w",
        name="W",
        platform="windows",
        kind="internal",
        identifier="not a family",
        windows=WindowsDeployment(),
    )
    with pytest.raises(CatalogueRefused) as exc:
        _windows(bad_family, first_install=True)
    _refused(exc, "invalid_windows_command")


def test_android_has_no_command_channel() -> None:
    app = App(id="and", name="A", platform="android", kind="internal", identifier="com.a")
    with pytest.raises(CatalogueRefused) as exc:
        rules.deployment(
            app,
            AppVersion(file_version="42", package_url="https://x/a.apk"),
            command_id="c",
            first_install=True,
        )
    assert _refused(exc, "no_command_channel").field == "$.platform"
