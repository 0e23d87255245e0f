"""Fleet targeting: every outcome, licences, rollouts, updates, errors, and a property
test against a pure-Python reference of the query."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate.errors import InvalidVersion, UnknownPlatform
from mdmgate.fleet import (
    FleetError,
    FleetIndex,
    OrgTree,
    Outcome,
    UnknownApp,
    platform_code,
)
from mdmgate.versions import sort_key

IOS = platform_code("ios")
ANDROID = platform_code("android")


def _fleet(n: int, *, platform: int = IOS, prefix: str = "dev") -> FleetIndex:
    return FleetIndex(
        [f"{prefix}-{i}" for i in range(n)],
        list(range(n)),
        [platform] * n,
        [i % 3 for i in range(n)],
    )


def _outcomes(index: FleetIndex, app: int, **query: object) -> list[Outcome]:
    result = index.target(app, **query)  # type: ignore[arg-type]
    return [Outcome(c) for c in result.outcomes]


def test_version_outcomes() -> None:
    index = _fleet(4)
    index.set_installed(7, [1, 2, 3], ["1.0", "2.0", "3.0"], platform="ios")
    got = _outcomes(index, 7, version="2.0", version_platform="ios", allow_downgrade=False)
    assert got == [Outcome.INSTALL, Outcome.UPGRADE, Outcome.SKIP_SAME, Outcome.SKIP_NEWER]
    result = index.target(7, version="2.0", version_platform="ios", installed_only=True)
    # iOS installs lower versions, so the platform rule allows the downgrade by default.
    assert [result.outcome(i) for i in range(4)] == [
        Outcome.SKIP_NOT_INSTALLED,
        Outcome.UPGRADE,
        Outcome.SKIP_SAME,
        Outcome.DOWNGRADE,
    ]
    assert list(result.selected) == [1, 3]
    assert result.selected_ids == ["dev-1", "dev-3"]
    assert result.counts[Outcome.DOWNGRADE] == 1
    assert sum(result.counts.values()) == len(result) == 4


def test_scope_platform_and_silent() -> None:
    tree = OrgTree(["/acme/sales/tokyo", "/acme/hr", "/other"])
    orgs = tree.numbers(["/acme/sales/tokyo", "/acme/hr", "/other", "/acme", "/acme/sales"])
    index = FleetIndex(
        ["a", "b", "c", "d", "e"], orgs, [IOS, ANDROID, IOS, IOS, IOS], [1, 1, 1, 0, 2]
    )
    index.set_installed(1, [], [], platform="ios")
    result = index.target(
        1, version="1", version_platform="ios", org_range=tree.range("/acme"), platform=IOS
    )
    assert [result.outcome(i) for i in range(5)] == [
        Outcome.INSTALL,
        Outcome.SKIP_PLATFORM,
        Outcome.OUT_OF_SCOPE,
        Outcome.INSTALL,
        Outcome.INSTALL,
    ]
    assert result.selected_ids == ["a", "d", "e"]
    assert list(result.silent) == [1, 0, 0]


def test_org_tree_ranges() -> None:
    tree = OrgTree(["/acme/sales/tokyo", "/acme/hr/", "/other", "/acme/sales/osaka"])
    first, last = tree.range("/acme")
    inside = {"/acme", "/acme/hr", "/acme/sales", "/acme/sales/osaka", "/acme/sales/tokyo"}
    assert {tree.path(i) for i in range(first, last + 1)} == inside
    assert tree.range("/") == (0, len(tree) - 1)
    assert tree.range("/acme/sales/tokyo") == (tree.number("/acme/sales/tokyo"),) * 2
    assert "/acme/hr" in tree
    assert "/nowhere" not in tree
    with pytest.raises(KeyError):
        tree.number("/nowhere")


def test_licences_exhausted() -> None:
    index = _fleet(10)
    index.set_installed(1, [0], ["9"], platform="ios")
    result = index.target(1, version="1", version_platform="ios", allow_downgrade=False, licences=3)
    assert list(result.selected) == [1, 2, 3]
    assert result.counts[Outcome.SKIP_NO_LICENCE] == 6
    assert result.counts[Outcome.SKIP_NEWER] == 1
    none = index.target(1, version="1", version_platform="ios", licences=0)
    assert list(none.selected) == []


def test_rollout_stable_proportional_and_seeded() -> None:
    n = 10_000

    def selection(seed: str) -> list[int]:
        index = _fleet(n)
        index.set_installed(1, [], [], platform="ios")
        return list(
            index.target(1, version="1", version_platform="ios", percent=20, seed=seed).selected
        )

    first = selection("wave-1")
    assert first == selection("wave-1")
    assert 1_800 < len(first) < 2_200
    assert first != selection("wave-2")
    index = _fleet(n)
    index.set_installed(1, [], [], platform="ios")
    wider = index.target(1, version="1", version_platform="ios", percent=50, seed="wave-1")
    assert set(first) <= set(wider.selected)
    assert wider.counts[Outcome.SKIP_ROLLOUT] == n - len(wider.selected)


def test_incremental_update() -> None:
    index = _fleet(2)
    index.set_installed(5, [0], ["1.0"], platform="ios")
    assert _outcomes(index, 5, version="1.0", version_platform="ios") == [
        Outcome.SKIP_SAME,
        Outcome.INSTALL,
    ]
    index.update_installed(5, 1, "1.0.0")
    index.update_installed(5, 0, None)
    assert _outcomes(index, 5, version="1.0", version_platform="ios") == [
        Outcome.INSTALL,
        Outcome.SKIP_SAME,
    ]
    assert index.installed_key(5, 1) == sort_key("1", platform="ios")
    assert index.installed_key(5, 0) is None


@pytest.mark.parametrize(("platform", "downgrade"), [("ios", True), ("android", False)])
def test_seed_b_versions(platform: str, downgrade: bool) -> None:
    # §B: latest 31 / 3.1, previous 11 / 1.1, a new 21 / 2.1 uploaded between them.
    versions = ["3.1", "1.1", "2.1"] if platform == "ios" else ["31", "11", "21"]
    index = _fleet(3, platform=platform_code(platform))
    index.set_installed(1, [0, 1, 2], versions, platform=platform)
    got = _outcomes(index, 1, version=versions[2], version_platform=platform)
    newer = Outcome.DOWNGRADE if downgrade else Outcome.SKIP_NEWER
    assert got == [newer, Outcome.UPGRADE, Outcome.SKIP_SAME]


def test_errors() -> None:
    index = _fleet(2)
    with pytest.raises(UnknownApp, match="app 9"):
        index.target(9, version="1", version_platform="ios")
    with pytest.raises(InvalidVersion) as info:
        index.set_installed(1, [0, 1], ["1.0", "1..2"], platform="ios")
    assert info.value.index == 1
    with pytest.raises(FleetError, match="differ in length"):
        index.set_installed(1, [0, 1], ["1.0"], platform="ios")
    with pytest.raises(FleetError, match="out of range"):
        index.set_installed(1, [2], ["1.0"], platform="ios")
    with pytest.raises(FleetError, match="differ in length"):
        FleetIndex(["a"], [0, 1], [IOS, IOS], [0, 0])
    with pytest.raises(FleetError, match="platform code"):
        FleetIndex(["a"], [0], [42], [0])
    with pytest.raises(FleetError, match="supervised"):
        FleetIndex(["a"], [0], [IOS], [3])
    with pytest.raises(UnknownPlatform):
        index.set_installed(1, [], [], platform="beos")
    index.set_installed(1, [], [], platform="ios")
    with pytest.raises(InvalidVersion):
        index.target(1, version="", version_platform="ios")
    with pytest.raises(FleetError, match="keyed as ios"):
        index.target(1, version="1", version_platform="android")
    with pytest.raises(FleetError, match="percent"):
        index.target(1, version="1", version_platform="ios", percent=101)
    with pytest.raises(FleetError, match="org range"):
        index.target(1, version="1", version_platform="ios", org_range=(3, 2))
    with pytest.raises(ValueError, match="out of range"):
        index.update_installed(1, 5, "1")
    with pytest.raises(TypeError):
        FleetIndex([1], [0], [IOS], [0])  # type: ignore[list-item]


# Pure-Python reference of the query.

_MASK = (1 << 64) - 1


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _MASK
    return h


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _by_version(
    have: str | None, want: bytes, installed_only: bool, allow_downgrade: bool
) -> Outcome:
    if have is None:
        return Outcome.SKIP_NOT_INSTALLED if installed_only else Outcome.INSTALL
    key = sort_key(have, platform="ios")
    if key < want:
        return Outcome.UPGRADE
    if key == want:
        return Outcome.SKIP_SAME
    return Outcome.DOWNGRADE if allow_downgrade else Outcome.SKIP_NEWER


def _taken_over(base: Outcome, installed: bool, user: bool, can: bool) -> Outcome:
    """A take-over query: the user's own copy, unless above the version and kept there."""
    if installed and user and base in (Outcome.UPGRADE, Outcome.SKIP_SAME, Outcome.DOWNGRADE):
        return Outcome.TAKE_OVER if can else Outcome.SKIP_TAKE_OVER_UNSUPPORTED
    return base


def _reference(
    ids: list[str],
    orgs: list[int],
    platforms: list[int],
    supervised: list[int],
    installed: dict[int, str],
    *,
    users: set[int],
    can_take_over: list[int],
    version: str,
    org_range: tuple[int, int] | None,
    installed_only: bool,
    platform: int | None,
    allow_downgrade: bool,
    licences: int | None,
    percent: float | None,
    seed: str,
    take_over: bool,
) -> tuple[list[Outcome], list[int], list[int]]:
    want = sort_key(version, platform="ios")
    seed_hash = _fnv1a64(seed.encode())
    left = licences
    outcomes: list[Outcome] = []
    selected: list[int] = []
    silent: list[int] = []
    for i, device in enumerate(ids):
        if org_range is not None and not org_range[0] <= orgs[i] <= org_range[1]:
            outcomes.append(Outcome.OUT_OF_SCOPE)
            continue
        if platform is not None and platforms[i] != platform:
            outcomes.append(Outcome.SKIP_PLATFORM)
            continue
        base = _by_version(installed.get(i), want, installed_only, allow_downgrade)
        if take_over:
            base = _taken_over(base, i in installed, i in users, bool(can_take_over[i]))
        if base.sends:
            point = (_mix64(_fnv1a64(device.encode()) ^ seed_hash) >> 11) * 2.0**-53 * 100.0
            if percent is not None and point >= percent:
                base = Outcome.SKIP_ROLLOUT
            elif left is not None and left == 0:
                base = Outcome.SKIP_NO_LICENCE
            else:
                if left is not None:
                    left -= 1
                selected.append(i)
                silent.append(1 if supervised[i] == 1 else 0)
        outcomes.append(base)
    return outcomes, selected, silent


_versions = st.sampled_from(["1", "1.0", "1.1", "1.2b3", "2", "2.0.1", "3.1", "10"])


@st.composite
def _fleets(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(0, 30))
    devices = list(range(n))
    installed_on = draw(st.lists(st.sampled_from(devices), unique=True)) if n else []
    org_range = draw(st.none() | st.tuples(st.integers(0, 5), st.integers(0, 5)).map(sorted))
    return {
        "ids": draw(st.lists(st.text(max_size=6), min_size=n, max_size=n)),
        "orgs": draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)),
        "platforms": draw(st.lists(st.sampled_from([IOS, ANDROID]), min_size=n, max_size=n)),
        "supervised": draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        "installed": {d: draw(_versions) for d in installed_on},
        # Marks on devices without the app too: they must change nothing.
        "users": set(draw(st.lists(st.sampled_from(devices), unique=True))) if n else set(),
        "can_take_over": draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        "take_over": draw(st.booleans()),
        "version": draw(_versions),
        "org_range": None if org_range is None else tuple(org_range),
        "installed_only": draw(st.booleans()),
        "platform": draw(st.none() | st.sampled_from([IOS, ANDROID])),
        "allow_downgrade": draw(st.booleans()),
        "licences": draw(st.none() | st.integers(0, 10)),
        "percent": draw(st.none() | st.floats(0, 100)),
        "seed": draw(st.text(max_size=4)),
    }


@settings(max_examples=300, deadline=None)
@given(_fleets())
def test_matches_reference(case: dict[str, object]) -> None:
    ids, orgs, platforms, supervised = (
        case.pop("ids"),
        case.pop("orgs"),
        case.pop("platforms"),
        case.pop("supervised"),
    )
    installed = case.pop("installed")
    users, can = case.pop("users"), case.pop("can_take_over")
    assert isinstance(ids, list)
    assert isinstance(orgs, list)
    assert isinstance(platforms, list)
    assert isinstance(supervised, list)
    assert isinstance(installed, dict)
    assert isinstance(users, set)
    assert isinstance(can, list)
    index = FleetIndex(ids, orgs, platforms, supervised, take_over=can)
    index.set_installed(3, list(installed), list(installed.values()), platform="ios")
    index.set_user_installed(3, sorted(users))
    result = index.target(3, version_platform="ios", **case)  # type: ignore[arg-type]
    outcomes, selected, silent = _reference(
        ids,
        orgs,
        platforms,
        supervised,
        installed,
        users=users,
        can_take_over=can,
        **case,  # type: ignore[arg-type]
    )
    assert [result.outcome(i) for i in range(len(ids))] == outcomes
    assert list(result.selected) == selected
    assert list(result.silent) == silent


# Scopes, licence holders, the silent column and device updates.

MACOS = platform_code("macos")


def _org_fleet() -> tuple[OrgTree, FleetIndex]:
    tree = OrgTree(["/acme/sales/tokyo", "/acme/sales/osaka", "/acme/hr", "/other"])
    paths = [
        "/acme/sales/tokyo",
        "/acme/sales/osaka",
        "/acme/hr",
        "/other",
        "/acme",
        "/acme/sales/tokyo",
    ]
    index = FleetIndex([f"d{i}" for i in range(6)], tree.numbers(paths), [IOS] * 6, [1] * 6)
    index.set_installed(1, [], [], platform="ios")
    return tree, index


def test_scope_from_orgs_and_devices() -> None:
    tree, index = _org_fleet()
    sales = index.scope([tree.range("/acme/sales")])
    assert sales.devices() == [0, 1, 5]
    assert len(sales) == 3
    assert 0 in sales
    assert 2 not in sales
    assert 99 not in sales
    hr_or_other = index.scope([tree.range("/acme/hr"), tree.range("/other")])
    assert hr_or_other.devices() == [2, 3]
    listed = index.scope(devices=[4, 0, 4])
    assert listed.devices() == [0, 4]
    both = index.scope([tree.range("/acme/hr")], [3])
    assert both.devices() == [2, 3]
    assert index.scope().devices() == []
    assert len(index.scope()) == 0
    assert index.scope([tree.range("/")]).devices() == list(range(6))


def test_scope_union_and_difference() -> None:
    tree, index = _org_fleet()
    acme = index.scope([tree.range("/acme")])
    tokyo = index.scope([tree.range("/acme/sales/tokyo")])
    other = index.scope([tree.range("/other")])
    assert acme.devices() == [0, 1, 2, 4, 5]
    assert (acme - tokyo).devices() == [1, 2, 4]
    assert (acme | other).devices() == list(range(6))
    assert (tokyo - acme).devices() == []
    assert ((acme - tokyo) | tokyo).devices() == acme.devices()
    # Operands are left as they were.
    assert acme.devices() == [0, 1, 2, 4, 5]
    assert len(tokyo) == 2


def test_target_with_scope() -> None:
    tree, index = _org_fleet()
    scope = index.scope([tree.range("/acme/sales")], [3]) - index.scope(devices=[5])
    result = index.target(1, version="1", version_platform="ios", scope=scope)
    assert list(result.selected) == [0, 1, 3]
    assert result.counts[Outcome.OUT_OF_SCOPE] == 3
    assert result.outcome(5) == Outcome.OUT_OF_SCOPE
    # With an org range too, a device must be in both.
    narrowed = index.target(
        1, version="1", version_platform="ios", scope=scope, org_range=tree.range("/acme")
    )
    assert list(narrowed.selected) == [0, 1]
    empty = index.target(1, version="1", version_platform="ios", scope=index.scope())
    assert list(empty.selected) == []
    assert empty.counts[Outcome.OUT_OF_SCOPE] == 6


def test_scope_errors() -> None:
    tree, index = _org_fleet()
    with pytest.raises(FleetError, match="org range"):
        index.scope([(3, 2)])
    with pytest.raises(FleetError, match="out of range"):
        index.scope(devices=[6])
    smaller = FleetIndex(["x", "y"], [0, 0], [IOS, IOS], [0, 0])
    foreign = smaller.scope(devices=[0])
    with pytest.raises(FleetError, match="scope covers 2 devices but the fleet has 6"):
        index.target(1, version="1", version_platform="ios", scope=foreign)
    with pytest.raises(FleetError, match="scope covers"):
        index.scope(devices=[0]) | foreign
    with pytest.raises(FleetError, match="scope covers"):
        index.scope(devices=[0]) - foreign
    # A scope built before the fleet grew is stale.
    before = index.scope([tree.range("/acme")])
    index.push_device("d6", tree.number("/acme/hr"), IOS, 1, True)
    with pytest.raises(FleetError, match="build it again"):
        index.target(1, version="1", version_platform="ios", scope=before)
    again = index.scope([tree.range("/acme")])
    assert list(index.target(1, version="1", version_platform="ios", scope=again).selected) == [
        0,
        1,
        2,
        4,
        5,
        6,
    ]


def test_licence_holders_do_not_consume() -> None:
    index = _fleet(6)
    index.set_installed(1, [5], ["1"], platform="ios")
    index.set_licensed(1, [0, 2, 5])
    assert [index.is_licensed(1, d) for d in range(6)] == [True, False, True, False, False, True]
    result = index.target(1, version="1", version_platform="ios", licences=1)
    # Holders 0 and 2 are sent without taking one; 1 takes the only free licence.
    assert list(result.selected) == [0, 1, 2]
    assert list(result.licensed) == [1]
    assert [result.outcome(d) for d in range(6)] == [
        Outcome.INSTALL,
        Outcome.INSTALL,
        Outcome.INSTALL,
        Outcome.SKIP_NO_LICENCE,
        Outcome.SKIP_NO_LICENCE,
        Outcome.SKIP_SAME,
    ]
    none_free = index.target(1, version="1", version_platform="ios", licences=0)
    assert list(none_free.selected) == [0, 2]
    assert list(none_free.licensed) == []
    plenty = index.target(1, version="1", version_platform="ios", licences=100)
    assert list(plenty.selected) == [0, 1, 2, 3, 4]
    assert list(plenty.licensed) == [1, 3, 4]
    # No licence needed: nobody takes one.
    free = index.target(1, version="1", version_platform="ios")
    assert list(free.selected) == [0, 1, 2, 3, 4]
    assert list(free.licensed) == []


def test_licence_updates_and_other_apps() -> None:
    index = _fleet(4)
    index.set_installed(1, [], [], platform="ios")
    index.set_installed(2, [], [], platform="ios")
    assert not index.is_licensed(1, 0)
    index.update_licensed(1, 3, True)
    index.update_licensed(1, 1, True)
    index.update_licensed(1, 1, False)
    assert [index.is_licensed(1, d) for d in range(4)] == [False, False, False, True]
    # Licences are per app.
    assert not index.is_licensed(2, 3)
    assert list(index.target(2, version="1", version_platform="ios", licences=0).selected) == []
    assert list(index.target(1, version="1", version_platform="ios", licences=0).selected) == [3]
    # set_licensed replaces every holder.
    index.set_licensed(1, [0])
    assert [index.is_licensed(1, d) for d in range(4)] == [True, False, False, False]
    got = index.target(1, version="1", version_platform="ios", licences=1)
    assert list(got.selected) == [0, 1]
    assert list(got.licensed) == [1]
    with pytest.raises(FleetError, match="out of range"):
        index.set_licensed(1, [4])
    with pytest.raises(FleetError, match="out of range"):
        index.update_licensed(1, 4, True)
    with pytest.raises(FleetError, match="out of range"):
        index.is_licensed(1, 4)
    # A refused set_licensed leaves the holders as they were.
    assert index.is_licensed(1, 0)


def test_holder_still_subject_to_rollout_and_scope() -> None:
    index = _fleet(200)
    index.set_installed(1, [], [], platform="ios")
    index.set_licensed(1, list(range(200)))
    result = index.target(1, version="1", version_platform="ios", licences=0, percent=30, seed="s")
    assert list(result.licensed) == []
    assert result.counts[Outcome.SKIP_NO_LICENCE] == 0
    assert result.counts[Outcome.SKIP_ROLLOUT] == 200 - len(result.selected)
    assert 0 < len(result.selected) < 200
    scoped = index.target(
        1, version="1", version_platform="ios", licences=0, scope=index.scope(devices=[7])
    )
    assert list(scoped.selected) == [7]


def test_silent_column_and_supervised_default() -> None:
    ids = ["a", "b", "c", "d"]
    supervised = [1, 0, 2, 1]
    default = FleetIndex(ids, [0] * 4, [IOS] * 4, supervised)
    default.set_installed(1, [], [], platform="ios")
    result = default.target(1, version="1", version_platform="ios")
    assert list(result.selected) == [0, 1, 2, 3]
    assert list(result.silent) == [1, 0, 0, 1]
    # The caller's silent column wins over supervision (e.g. supervised on iOS 9: prompts;
    # macOS and Windows install silently without supervision).
    column = FleetIndex(ids, [0] * 4, [IOS, MACOS, IOS, IOS], supervised, bytes([0, 1, 1, 1]))
    column.set_installed(1, [], [], platform="ios")
    result = column.target(1, version="1", version_platform="ios")
    assert list(result.silent) == [0, 1, 1, 1]
    only_ios = column.target(1, version="1", version_platform="ios", platform=IOS)
    assert list(only_ios.selected) == [0, 2, 3]
    assert list(only_ios.silent) == [0, 1, 1]
    with pytest.raises(FleetError, match="silent has 3 items, expected 4"):
        FleetIndex(ids, [0] * 4, [IOS] * 4, supervised, [1, 1, 1])


def test_push_and_set_device() -> None:
    index = FleetIndex([], [], [], [])
    assert len(index) == 0
    index.set_installed(1, [], [], platform="ios")
    index.set_licensed(1, [])
    assert index.push_device("first", 3, IOS, 1, False) == 0
    assert index.push_device("second", 4, ANDROID, 0, True) == 1
    assert len(index) == 2
    assert index.device_id(1) == "second"
    assert index.installed_key(1, 1) is None
    assert not index.is_licensed(1, 1)
    result = index.target(1, version="1", version_platform="ios", platform=IOS, org_range=(3, 4))
    assert [result.outcome(d) for d in range(2)] == [Outcome.INSTALL, Outcome.SKIP_PLATFORM]
    assert list(result.silent) == [0]
    index.update_installed(1, 1, "0.9")
    index.set_device(1, 9, IOS, 1, True)
    index.set_device(0, 4, IOS, 2, True)
    result = index.target(1, version="1", version_platform="ios", platform=IOS, org_range=(3, 4))
    assert [result.outcome(d) for d in range(2)] == [Outcome.INSTALL, Outcome.OUT_OF_SCOPE]
    assert list(result.silent) == [1]
    # The installed version stays with the device when its columns change.
    assert index.installed_key(1, 1) == sort_key("0.9", platform="ios")
    # Across the 64-device word boundary.
    for i in range(2, 130):
        assert index.push_device(f"d{i}", 0, IOS, 1, i % 2 == 0) == i
    index.update_installed(1, 129, "1")
    index.update_licensed(1, 128, True)
    result = index.target(1, version="1", version_platform="ios", licences=0)
    assert list(result.selected) == [128]
    assert list(result.silent) == [1]
    assert result.outcome(129) == Outcome.SKIP_SAME


def test_push_and_set_device_errors() -> None:
    index = _fleet(2)
    with pytest.raises(FleetError, match="platform code"):
        index.push_device("x", 0, 42, 0, False)
    with pytest.raises(FleetError, match="supervised"):
        index.push_device("x", 0, IOS, 3, False)
    assert len(index) == 2  # a refused push adds nothing
    with pytest.raises(FleetError, match="out of range"):
        index.set_device(2, 0, IOS, 0, False)
    with pytest.raises(FleetError, match="platform code"):
        index.set_device(0, 0, 42, 0, False)
    with pytest.raises(FleetError, match="supervised"):
        index.set_device(0, 0, IOS, 7, False)
    with pytest.raises(FleetError, match="out of range"):
        index.device_id(2)


class _Model:
    """What the index should hold: the columns, installed versions and licence holders."""

    def __init__(self, devices: list[tuple[str, int, int, int, bool, bool]]) -> None:
        self.ids = [d[0] for d in devices]
        self.orgs = [d[1] for d in devices]
        self.platforms = [d[2] for d in devices]
        self.supervised = [d[3] for d in devices]
        self.silent = [d[4] for d in devices]
        self.take_over = [d[5] for d in devices]
        self.installed: dict[int, dict[int, str]] = {app: {} for app in _APPS}
        self.holders: dict[int, set[int]] = {app: set() for app in _APPS}
        self.users: dict[int, set[int]] = {app: set() for app in _APPS}

    def build(self, *, licences: bool = True) -> FleetIndex:
        """A fresh index of everything the model holds (``licences=False``: no holder
        lists at all, as before any licence was known)."""
        index = FleetIndex(
            self.ids,
            self.orgs,
            self.platforms,
            self.supervised,
            [int(s) for s in self.silent],
            take_over=[int(t) for t in self.take_over],
        )
        for app in _APPS:
            have = self.installed[app]
            index.set_installed(app, list(have), list(have.values()), platform="ios")
            if licences:
                index.set_licensed(app, sorted(self.holders[app]))
                index.set_user_installed(app, sorted(self.users[app]))
        return index

    def apply(self, index: FleetIndex, op: tuple[Any, ...]) -> None:
        """Applies one change to the model and, incrementally, to ``index``."""
        n = len(self.ids)
        kind = op[0]
        if kind == "push":
            device_id, org, platform, supervised, silent, take_over = op[1]
            pushed = index.push_device(
                device_id, org, platform, supervised, silent, take_over=take_over
            )
            assert pushed == n
            self.ids.append(device_id)
            self._columns(n, op[1][1:], new=True)
            return
        if n == 0:
            return
        if kind == "set":
            device = op[1] % n
            org, platform, supervised, silent, take_over = op[2][1:]
            index.set_device(device, org, platform, supervised, silent, take_over=take_over)
            self._columns(device, op[2][1:], new=False)
        elif kind == "install":
            app, device, version = op[1], op[2] % n, op[3]
            index.update_installed(app, device, version)
            if version is None:
                self.installed[app].pop(device, None)
            else:
                self.installed[app][device] = version
        elif kind in ("licence", "user"):
            # Licence holders and user-installed copies: a mark per app and device.
            app, device, on = op[1], op[2] % n, op[3]
            if kind == "licence":
                index.update_licensed(app, device, on)
            else:
                index.update_user_installed(app, device, on)
            marks = (self.holders if kind == "licence" else self.users)[app]
            (marks.add if on else marks.discard)(device)
        else:
            app, devices = op[1], [d % n for d in op[2]]
            index.set_licensed(app, devices)
            self.holders[app] = set(devices)

    def _columns(self, device: int, cols: tuple[int, int, int, bool, bool], *, new: bool) -> None:
        for column, value in zip(
            (self.orgs, self.platforms, self.supervised, self.silent, self.take_over),
            cols,
            strict=True,
        ):
            if new:
                column.append(value)  # type: ignore[arg-type]
            else:
                column[device] = value

    def reference(
        self,
        app: int,
        *,
        version: str,
        org_range: tuple[int, int] | None,
        scope: set[int] | None,
        installed_only: bool,
        platform: int | None,
        allow_downgrade: bool,
        licences: int | None,
        percent: float | None,
        seed: str,
        take_over: bool,
    ) -> tuple[list[Outcome], list[int], list[int], list[int]]:
        """The query with scopes, licence holders and the silent column, in Python."""
        want = sort_key(version, platform="ios")
        seed_hash = _fnv1a64(seed.encode())
        left = licences
        outcomes: list[Outcome] = []
        selected: list[int] = []
        silent: list[int] = []
        licensed: list[int] = []
        for i, device in enumerate(self.ids):
            if (org_range is not None and not org_range[0] <= self.orgs[i] <= org_range[1]) or (
                scope is not None and i not in scope
            ):
                outcomes.append(Outcome.OUT_OF_SCOPE)
                continue
            if platform is not None and self.platforms[i] != platform:
                outcomes.append(Outcome.SKIP_PLATFORM)
                continue
            have = self.installed[app]
            base = _by_version(have.get(i), want, installed_only, allow_downgrade)
            if take_over:
                user = i in self.users[app]
                base = _taken_over(base, i in have, user, self.take_over[i])
            if base.sends:
                point = (_mix64(_fnv1a64(device.encode()) ^ seed_hash) >> 11) * 2.0**-53 * 100.0
                if percent is not None and point >= percent:
                    base = Outcome.SKIP_ROLLOUT
                elif left is not None and i not in self.holders[app] and left == 0:
                    base = Outcome.SKIP_NO_LICENCE
                else:
                    if left is not None and i not in self.holders[app]:
                        left -= 1
                        licensed.append(i)
                    selected.append(i)
                    silent.append(int(self.silent[i]))
            outcomes.append(base)
        return outcomes, selected, silent, licensed


_device_columns = st.tuples(
    st.text(max_size=5),
    st.integers(0, 5),
    st.sampled_from([IOS, ANDROID]),
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
)
_APPS = (1, 2)
_operations = st.one_of(
    st.tuples(st.just("push"), _device_columns),
    st.tuples(st.just("set"), st.integers(0, 200), _device_columns),
    st.tuples(
        st.just("install"), st.sampled_from(_APPS), st.integers(0, 200), st.none() | _versions
    ),
    st.tuples(st.just("licence"), st.sampled_from(_APPS), st.integers(0, 200), st.booleans()),
    st.tuples(st.just("user"), st.sampled_from(_APPS), st.integers(0, 200), st.booleans()),
    st.tuples(
        st.just("set_licensed"), st.sampled_from(_APPS), st.lists(st.integers(0, 200), max_size=6)
    ),
)
_ranges = st.tuples(st.integers(0, 5), st.integers(0, 5)).map(lambda r: (min(r), max(r)))


@st.composite
def _queries(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "app": draw(st.sampled_from(_APPS)),
        "version": draw(_versions),
        "org_range": draw(st.none() | _ranges),
        "scope": draw(
            st.none()
            | st.tuples(st.lists(_ranges, max_size=2), st.lists(st.integers(0, 200), max_size=4))
        ),
        "installed_only": draw(st.booleans()),
        "platform": draw(st.none() | st.sampled_from([IOS, ANDROID])),
        "allow_downgrade": draw(st.booleans()),
        "licences": draw(st.none() | st.integers(0, 6)),
        "percent": draw(st.none() | st.floats(0, 100)),
        "seed": draw(st.text(max_size=3)),
        "take_over": draw(st.booleans()),
    }


def _same_answers(live: FleetIndex, fresh: FleetIndex, model: _Model, q: dict[str, Any]) -> None:
    n = len(model.ids)
    query = {k: v for k, v in q.items() if k not in ("app", "scope")}
    live_scope = fresh_scope = members = None
    if q["scope"] is not None:
        ranges, listed = q["scope"]
        devices = [d % n for d in listed] if n else []
        live_scope = live.scope(ranges, devices)
        fresh_scope = fresh.scope(ranges, devices)
        members = set(devices) | {
            i for i, org in enumerate(model.orgs) if any(a <= org <= b for a, b in ranges)
        }
        assert live_scope.devices() == fresh_scope.devices() == sorted(members)
        assert len(live_scope) == len(members)
    got = live.target(q["app"], version_platform="ios", scope=live_scope, **query)
    want = fresh.target(q["app"], version_platform="ios", scope=fresh_scope, **query)
    assert got.outcomes == want.outcomes
    assert list(got.selected) == list(want.selected)
    assert got.silent == want.silent
    assert list(got.licensed) == list(want.licensed)
    assert got.counts == want.counts
    outcomes, selected, silent, licensed = model.reference(q["app"], scope=members, **query)
    assert [got.outcome(i) for i in range(n)] == outcomes
    assert list(got.selected) == selected
    assert list(got.silent) == silent
    assert list(got.licensed) == licensed


@settings(max_examples=300, deadline=None)
@given(
    initial=st.lists(_device_columns, max_size=12),
    operations=st.lists(_operations, max_size=25),
    queries=st.lists(_queries(), min_size=1, max_size=4),
)
def test_incremental_updates_match_fresh_index(
    initial: list[tuple[str, int, int, int, bool, bool]],
    operations: list[tuple[Any, ...]],
    queries: list[dict[str, Any]],
) -> None:
    model = _Model(initial)
    live = model.build(licences=False)
    for op in operations:
        model.apply(live, op)
    fresh = model.build()
    assert len(live) == len(fresh) == len(model.ids)
    for device, device_id in enumerate(model.ids):
        assert live.device_id(device) == device_id
        for app in _APPS:
            assert live.is_licensed(app, device) == (device in model.holders[app])
            assert live.is_user_installed(app, device) == (device in model.users[app])
            assert live.installed_key(app, device) == fresh.installed_key(app, device)
        assert live.can_take_over(device) == fresh.can_take_over(device) == model.take_over[device]
    for query in queries:
        _same_answers(live, fresh, model, query)
