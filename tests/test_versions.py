from __future__ import annotations

import itertools
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate import versions
from mdmgate.errors import InvalidVersion, UnknownPlatform

from . import reference_versions as ref

# --- the rules, one table per platform ---------------------------------------------

ANDROID = [("1", "2", -1), ("10", "9", 1), ("007", "7", 0), (" 42\n", "42", 0), ("0", "1", -1)]

APPLE = [
    ("1.0", "1", 0),
    ("1.0.0", "1.0", 0),
    ("01.002", "1.2", 0),
    ("1.2", "1.10", -1),
    ("3.57", "3.6", 1),
    ("1.0.33.20181102", "1.0.33", 1),
    ("1.0.33.20181102", "1.0.34", -1),
    ("70202006", "3.57", 1),
    ("1.2b3", "1.2", -1),
    ("1.2b3", "1.1.99", 1),
    ("1.2b3", "1.2b10", -1),
    ("1.2d1", "1.2a1", -1),
    ("1.2a1", "1.2b1", -1),
    ("1.2b1", "1.2fc1", -1),
    ("1.2fc1", "1.2", -1),
]

WINDOWS = [
    ("1.2.3.4", "1.2.3.9", 0),
    ("1.2.3", "1.2.3.0", 0),
    ("1.2.4.0", "1.2.3.65535", 1),
    ("10.0", "9.9.9.9", 1),
]

GENERIC_ASCENDING = [
    "0.9",
    "1.0-alpha",
    "1.0-alpha.1",
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
]


@pytest.mark.parametrize(("a", "b", "want"), ANDROID)
def test_android_version_codes(a: str, b: str, want: int) -> None:
    assert versions.compare(a, b, platform="android") == want


@pytest.mark.parametrize("platform", ["ios", "ipados", "macos"])
@pytest.mark.parametrize(("a", "b", "want"), APPLE)
def test_apple_bundle_versions(platform: str, a: str, b: str, want: int) -> None:
    assert versions.compare(a, b, platform=platform) == want
    assert versions.compare(b, a, platform=platform) == -want


@pytest.mark.parametrize("platform", ["windows", "windows-phone"])
@pytest.mark.parametrize(("a", "b", "want"), WINDOWS)
def test_windows_first_three_parts(platform: str, a: str, b: str, want: int) -> None:
    assert versions.compare(a, b, platform=platform) == want


def test_generic_pre_releases_before_releases() -> None:
    shuffled = GENERIC_ASCENDING[:]
    random.Random(7).shuffle(shuffled)
    assert versions.sort(shuffled, platform="generic") == GENERIC_ASCENDING
    assert versions.compare("v1.2", "1.2", platform="generic") == 0
    assert versions.compare("1.0.0", "1", platform="generic") == 0


def test_downgrade_rule_is_data() -> None:
    rule = {p: versions.allows_downgrade(p) for p in versions.PLATFORMS}
    assert rule == {
        "android": False,
        "ios": True,
        "macos": False,
        "windows": False,
        "windows-phone": False,
        "generic": False,
    }
    assert versions.allows_downgrade("ipados") is True


# --- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "version", "offset", "fragment"),
    [
        ("android", "1.2", 1, "unexpected character '.'"),
        ("android", "2147483648", 0, "at most 2147483647"),
        ("ios", "1..2", 2, "part is empty"),
        ("ios", "v1.2", 0, "unexpected character 'v'"),
        ("macos", "1.2-beta", 3, "unexpected character '-'"),
        ("windows", "1.2.3.4.5", 7, "more than four"),
        ("windows", "1.70000", 2, "part 2 is larger than 65535"),
        ("generic", "...", 0, "no digits or letters"),
        ("generic", "", 0, "empty"),
        ("ios", "9" * 300, 255, "longer than 255 bytes"),
    ],
)
def test_invalid_versions_name_string_platform_and_offset(
    platform: str, version: str, offset: int, fragment: str
) -> None:
    with pytest.raises(InvalidVersion) as info:
        versions.compare(version, "1", platform=platform)
    e = info.value
    assert (e.version, e.platform, e.offset, e.index) == (version, platform, offset, None)
    assert fragment in str(e)
    assert f"invalid {platform} version" in str(e)
    assert isinstance(e, ValueError)


def test_second_argument_is_reported_too() -> None:
    with pytest.raises(InvalidVersion, match=r'"x"') as info:
        versions.compare("1", "x", platform="android")
    assert info.value.version == "x"


def test_batch_errors_carry_the_row() -> None:
    column = ["1", "2", "3"] * 5000 + ["3.1"]
    with pytest.raises(InvalidVersion) as info:
        versions.sort(column, platform="android")
    assert info.value.index == 15000
    assert str(info.value).startswith("item 15000: ")


def test_invalid_version_survives_pickling() -> None:
    with pytest.raises(InvalidVersion) as info:
        versions.sort_key("a", platform="android")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.version, copy.platform, copy.offset, str(copy)) == (
        "a",
        "android",
        0,
        str(info.value),
    )


def test_unknown_platform() -> None:
    with pytest.raises(
        UnknownPlatform, match=r'unknown platform "win"; expected one of android, ios'
    ):
        versions.compare("1", "2", platform="win")


def test_non_strings_are_type_errors() -> None:
    with pytest.raises(TypeError, match="versions item 1 is int, not str"):
        versions.sort(["1", 2], platform="android")  # type: ignore[list-item]


def test_columns_must_match_in_length() -> None:
    with pytest.raises(ValueError, match="a has 2 items, b has 1"):
        versions.compare_many(["1", "2"], ["1"], platform="android")


# --- batch calls ---------------------------------------------------------------------


def _column(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = [
        ".".join(str(rng.randint(0, 12)) for _ in range(rng.randint(1, 4)))
        + rng.choice(["", "", "b2", "a1", "fc3"])
        for _ in range(300)
    ]
    return [rng.choice(pool) for _ in range(n)]


@pytest.mark.parametrize("n", [0, 1, 50, 20_000])
def test_sort_matches_reference_and_is_stable(n: int) -> None:
    column = _column(n, n)
    by_reference = sorted(column, key=lambda v: ref.key(v, "ios"))  # sorted() is stable
    assert versions.sort(column, platform="ios") == by_reference
    assert versions.sort(iter(column), platform="ios") == by_reference
    descending = sorted(column, key=lambda v: ref.key(v, "ios"), reverse=True)
    assert versions.sort(column, platform="ios", reverse=True) == descending
    order = versions.argsort(column, platform="ios")
    assert [column[i] for i in order] == by_reference


def test_sort_returns_the_same_objects() -> None:
    column = [f"{i % 7}.{i}" for i in range(10_000)]
    ordered = versions.sort(column, platform="macos")
    assert {id(v) for v in ordered} == {id(v) for v in column}


def test_sort_keys_order_like_compare() -> None:
    column = _column(10_000, 3)
    keys = versions.sort_keys(column, platform="ios")
    assert keys == [versions.sort_key(v, platform="ios") for v in column]
    rng = random.Random(5)
    for _ in range(2000):
        i, j = rng.randrange(len(column)), rng.randrange(len(column))
        want = versions.compare(column[i], column[j], platform="ios")
        assert (keys[i] > keys[j]) - (keys[i] < keys[j]) == want


def test_compare_many_row_by_row() -> None:
    a, b = _column(9000, 1), _column(9000, 2)
    assert versions.compare_many(a, b, platform="ios") == [
        ref.compare(x, y, "ios") for x, y in zip(a, b, strict=True)
    ]


def test_max_per_group() -> None:
    rng = random.Random(11)
    column = _column(30_000, 4)
    groups = [f"app{rng.randrange(40)}" for _ in column]
    best = versions.max_per_group(groups, column, platform="ios")
    expected: dict[str, int] = {}
    for row, (g, v) in enumerate(zip(groups, column, strict=True)):
        if g not in expected or ref.key(v, "ios") > ref.key(column[expected[g]], "ios"):
            expected[g] = row
    assert best == expected
    assert list(best) == list(dict.fromkeys(groups))


# --- install decisions ---------------------------------------------------------------


def test_plan_installs_per_device() -> None:
    plans = versions.plan_installs(["2.1", "3.1"], [None, "2.1", "3.1", "4.0"], platform="macos")
    assert plans == [
        (versions.InstallAction.INSTALL, "3.1"),
        (versions.InstallAction.UPGRADE, "3.1"),
        (versions.InstallAction.CURRENT, "3.1"),
        (versions.InstallAction.DOWNGRADE_REFUSED, None),
    ]
    assert [p.action.sends_command for p in plans] == [True, True, False, False]


@pytest.mark.parametrize(
    ("platform", "assigned", "installed", "action"),
    [
        ("ios", "1.0", "2.0", versions.InstallAction.DOWNGRADE),
        ("macos", "1.0", "2.0", versions.InstallAction.DOWNGRADE_REFUSED),
        ("android", "10", "12", versions.InstallAction.DOWNGRADE_REFUSED),
        ("windows", "1.0.0.0", "1.0.1.0", versions.InstallAction.DOWNGRADE_REFUSED),
        ("windows-phone", "1.0.0.0", "1.0.1.0", versions.InstallAction.DOWNGRADE_REFUSED),
        ("windows", "1.0.1.0", "1.0.1.7", versions.InstallAction.CURRENT),
    ],
)
def test_downgrades_follow_the_platform(
    platform: str, assigned: str, installed: str, action: versions.InstallAction
) -> None:
    assert versions.plan_install([assigned], installed, platform=platform).action == action


def test_plan_installs_over_a_large_fleet() -> None:
    installed = [None if i % 5 == 0 else str(i % 40) for i in range(50_000)]
    plans = versions.plan_installs(["20", "30", "25"], installed, platform="android")
    for have, plan in zip(installed, plans, strict=True):
        if have is None:
            assert plan == (versions.InstallAction.INSTALL, "30")
        elif int(have) < 30:
            assert plan == (versions.InstallAction.UPGRADE, "30")
        elif int(have) == 30:
            assert plan == (versions.InstallAction.CURRENT, "30")
        else:
            assert plan == (versions.InstallAction.DOWNGRADE_REFUSED, None)


def test_nothing_assigned() -> None:
    plan = versions.plan_install([], "1.0", platform="ios")
    assert plan == (versions.InstallAction.NOTHING_ASSIGNED, None)


# --- property tests: the order is total and matches the written rule ------------------

_number = st.integers(0, 10**12).map(str) | st.from_regex(r"0{0,3}[0-9]{1,4}", fullmatch=True)

STRATEGIES = {
    "android": st.integers(0, 2**31 - 1).map(str)
    | st.from_regex(r"0{0,3}[0-9]{1,5}", fullmatch=True),
    "ios": st.builds(
        lambda parts, stage: ".".join(parts) + stage,
        st.lists(_number, min_size=1, max_size=5),
        st.sampled_from(["", "", "d", "d2", "a1", "b", "b3", "B10", "fc1", "FC20"]),
    ),
    "windows": st.lists(st.integers(0, 65535), min_size=1, max_size=4).map(
        lambda parts: ".".join(map(str, parts))
    ),
    "generic": st.from_regex(r"[vV]?[0-9a-zA-Z._+\- ~]{1,24}", fullmatch=True).filter(
        lambda s: any(c.isascii() and c.isalnum() for c in s)
    ),
}
STRATEGIES["macos"] = STRATEGIES["ios"]
STRATEGIES["windows-phone"] = STRATEGIES["windows"]


@pytest.mark.parametrize("platform", sorted(STRATEGIES))
def test_order_is_total(platform: str) -> None:
    values = STRATEGIES[platform]

    @settings(max_examples=300, deadline=None)
    @given(values, values, values)
    def check(a: str, b: str, c: str) -> None:
        ab = versions.compare(a, b, platform=platform)
        assert versions.compare(a, a, platform=platform) == 0
        assert versions.compare(b, a, platform=platform) == -ab
        bc = versions.compare(b, c, platform=platform)
        ac = versions.compare(a, c, platform=platform)
        if ab <= 0 and bc <= 0:
            assert ac <= 0
        if ab == 0 and bc == 0:
            assert ac == 0
        assert ab == ref.compare(a, b, platform)

    check()


@pytest.mark.parametrize("platform", sorted(STRATEGIES))
def test_sort_is_consistent_with_compare(platform: str) -> None:
    @settings(max_examples=150, deadline=None)
    @given(st.lists(STRATEGIES[platform], max_size=40))
    def check(column: list[str]) -> None:
        ordered = versions.sort(column, platform=platform)
        assert sorted(ordered) == sorted(column)
        for x, y in itertools.pairwise(ordered):
            assert versions.compare(x, y, platform=platform) <= 0
        keys = versions.sort_keys(ordered, platform=platform)
        assert keys == sorted(keys)

    check()


@pytest.mark.parametrize("platform", [*sorted(STRATEGIES), "ipados"])
def test_any_text_is_ordered_or_refused_never_crashes(platform: str) -> None:
    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=40) | st.from_regex(r"[0-9.a-z ]{0,12}", fullmatch=True))
    def check(text: str) -> None:
        try:
            versions.sort_key(text, platform=platform)
        except InvalidVersion as e:
            assert e.version == text
            assert 0 <= e.offset <= len(text.encode())
            if platform != "generic":
                assert ref.key(text, platform) is None
        else:
            if platform != "generic" or text.isascii():
                assert ref.key(text, platform) is not None

    check()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=30))
def test_generic_orders_any_unicode_totally(column: list[str]) -> None:
    valid = []
    for v in column:
        try:
            versions.sort_key(v, platform="generic")
        except InvalidVersion:
            continue
        valid.append(v)
    ordered = versions.sort(valid, platform="generic")
    for x, y in itertools.pairwise(ordered):
        assert versions.compare(x, y, platform="generic") <= 0
        assert versions.compare(y, x, platform="generic") >= 0
