"""Fleet targeting: every outcome, licences, rollouts, updates, errors, and a property
test against a pure-Python reference of the query."""

from __future__ import annotations

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
    assert result.selected == [1, 3]
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
    assert result.selected == [1, 2, 3]
    assert result.counts[Outcome.SKIP_NO_LICENCE] == 6
    assert result.counts[Outcome.SKIP_NEWER] == 1
    none = index.target(1, version="1", version_platform="ios", licences=0)
    assert none.selected == []


def test_rollout_stable_proportional_and_seeded() -> None:
    n = 10_000

    def selection(seed: str) -> list[int]:
        index = _fleet(n)
        index.set_installed(1, [], [], platform="ios")
        return index.target(1, version="1", version_platform="ios", percent=20, seed=seed).selected

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


def _reference(
    ids: list[str],
    orgs: list[int],
    platforms: list[int],
    supervised: list[int],
    installed: dict[int, str],
    *,
    version: str,
    org_range: tuple[int, int] | None,
    installed_only: bool,
    platform: int | None,
    allow_downgrade: bool,
    licences: int | None,
    percent: float | None,
    seed: str,
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
    assert isinstance(ids, list)
    assert isinstance(orgs, list)
    assert isinstance(platforms, list)
    assert isinstance(supervised, list)
    assert isinstance(installed, dict)
    index = FleetIndex(ids, orgs, platforms, supervised)
    index.set_installed(3, list(installed), list(installed.values()), platform="ios")
    result = index.target(3, version_platform="ios", **case)  # type: ignore[arg-type]
    outcomes, selected, silent = _reference(
        ids,
        orgs,
        platforms,
        supervised,
        installed,
        **case,  # type: ignore[arg-type]
    )
    assert [result.outcome(i) for i in range(len(ids))] == outcomes
    assert result.selected == selected
    assert list(result.silent) == silent
