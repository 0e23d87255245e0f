"""The version-set model of an internal app (requirements §B)."""

from __future__ import annotations

import pytest

from mdmgate.errors import DuplicateVersion, InvalidVersion
from mdmgate.versions import AppVersion, InstallAction, VersionSet


def ws1_example(platform: str, low: str, mid: str, high: str) -> None:
    """The seed's example: `high` deployed, `low` kept, `mid` uploaded."""
    app = VersionSet(platform, [AppVersion(high, "2.0"), AppVersion(low, "1.0")])
    assert app.latest == AppVersion(high, "2.0")
    assert app.previous == (AppVersion(low, "1.0"),)

    upload = app.upload(mid)
    assert upload.new == AppVersion(mid, "3.0")
    # Assignments move from the previous version to the new one ...
    assert upload.previous == (AppVersion(low, "1.0"),)
    # ... the latest stays the latest ...
    assert upload.latest == AppVersion(high, "2.0")
    assert upload.lower_than_latest
    assert upload.retired == ()
    assert [v.file_version for v in upload.versions.active] == [low, mid, high]
    # ... and a device assigned both active versions gets the highest one.
    plan = upload.versions.plan(None, assigned=[mid, high])
    assert plan == (InstallAction.INSTALL, high)
    assert upload.versions.plan(mid, assigned=[mid, high]) == (InstallAction.UPGRADE, high)

    # "Retire previous version" retires the previous one, never the latest.
    retiring = app.upload(mid, retire_previous=True)
    assert retiring.retired == (AppVersion(low, "1.0"),)
    assert retiring.latest == AppVersion(high, "2.0")
    assert [v.file_version for v in retiring.versions.active] == [mid, high]
    assert retiring.versions.find(low) == AppVersion(low, "1.0", active=False)


@pytest.mark.parametrize("platform", ["ios", "macos", "windows", "windows-phone", "generic"])
def test_seed_example_dotted(platform: str) -> None:
    ws1_example(platform, "1.1", "2.1", "3.1")


def test_seed_example_android_version_codes() -> None:
    ws1_example("android", "11", "21", "31")


def test_upload_above_latest_moves_and_retires_everything_below() -> None:
    app = VersionSet("android", [AppVersion("10", "1.0"), AppVersion("20", "2.0")])
    upload = app.upload("30", retire_previous=True)
    assert upload.latest == upload.new == AppVersion("30", "3.0")
    assert not upload.lower_than_latest
    assert upload.previous == (AppVersion("10", "1.0"), AppVersion("20", "2.0"))
    assert upload.versions.active == (AppVersion("30", "3.0"),)


def test_upload_below_everything_moves_nothing() -> None:
    app = VersionSet("ios", [AppVersion("2.0", "1.0")])
    upload = app.upload("1.0", retire_previous=True)
    assert upload.previous == ()
    assert upload.retired == ()
    assert upload.latest.file_version == "2.0"


def test_retired_versions_are_never_sent() -> None:
    app = VersionSet("ios", [AppVersion("1.0", "1.0"), AppVersion("2.0", "2.0")]).retire("2.0")
    assert app.latest == AppVersion("1.0", "1.0")
    assert app.plan("1.0") == (InstallAction.CURRENT, "1.0")
    # iOS takes the downgrade from a retired 2.0 back to the active 1.0.
    assert app.plan("2.0") == (InstallAction.DOWNGRADE, "1.0")
    assert app.plan("2.0", assigned=["2.0"]) == (InstallAction.NOTHING_ASSIGNED, None)


def test_android_device_above_all_assigned_versions_is_refused() -> None:
    app = VersionSet("android", [AppVersion("5", "1.0"), AppVersion("7", "2.0")])
    assert app.plan("9") == (InstallAction.DOWNGRADE_REFUSED, None)


def test_equal_file_versions_are_refused() -> None:
    app = VersionSet("windows", [AppVersion("1.2.3.0", "1.0")])
    with pytest.raises(DuplicateVersion, match=r"'1\.2\.3\.7' orders equal to '1\.2\.3\.0'"):
        app.upload("1.2.3.7")
    with pytest.raises(DuplicateVersion, match=r"label '1\.0'"):
        app.upload("2.0", label="1.0")


def test_labels_count_up_and_skip_taken_ones() -> None:
    app = VersionSet("ios", [AppVersion("1", "2.0")])
    assert app.upload("2").new.label == "3.0"
    assert VersionSet("ios").upload("1").new.label == "1.0"


def test_unparseable_file_version_is_refused() -> None:
    with pytest.raises(InvalidVersion):
        VersionSet("android").upload("1.2")


def test_versions_are_kept_in_order() -> None:
    app = VersionSet("macos", [AppVersion(v, f"l{v}") for v in ["10.1", "9", "10.0.1", "1.2b3"]])
    assert [v.file_version for v in app.versions] == ["1.2b3", "9", "10.0.1", "10.1"]
    assert app == VersionSet("macos", reversed(app.versions))
    assert app.find("10.01") == AppVersion("10.1", "l10.1")
    with pytest.raises(KeyError):
        app.retire("11")
