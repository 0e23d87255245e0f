"""Fleet targeting over 1,000,000 devices against a columnar pure-Python baseline, and
enqueueing one command for 100,000 devices in SQLite, same run.

    python benches/bench_fleet.py               # --devices 1000000 --repeat 21, about 40 s
    python benches/bench_fleet.py --quick       # smoke run for CI (100,000 devices), 3-5 s

The fleet is synthetic and the same on every run (``random.Random(--seed)``): ``--devices``
devices under a 5-level org tree ``/acme/<region>/<country>/<site>/<team>`` (6 regions of
unequal size, 3,158 organisations; about 92% of the devices sit in a team, the others in a
site), on 3 platforms (ios 55%, windows 30%, macos 15%), numbered in random org order (the
order they enrolled in). 50 apps are each built for one platform (22 ios, 16 windows, 12
macos); each is installed on 15-90% of its platform's devices, with one of its 6 (Apple) or
7 (Windows) versions: most on the two before the newest, 8% on the newest, 3% on a newer
pre-release build; a Windows app has two builds that differ only in the revision, which
order the same. 40% of each app's installed devices hold one of its licences.

The query is one install notification: the most installed iOS app, its newest version, to
one region (a level-2 org, ``org_range`` of its subtree, 13% of the fleet),
``installed_only`` (an update), ``platform`` = iOS, and free licences for half of the
devices that would take one, so they run out halfway through. It is timed for:

* mdmgate: ``FleetIndex.target(...)`` and reading its ``selected``, ``licensed``,
  ``counts`` and ``outcomes`` (a byte per device of the fleet) into Python objects;
* pure Python (the baseline): :class:`PyFleet` below, standard library only, over columns
  built beforehand (as the index is). Devices are sorted by (org, number) once, so an org
  subtree is one slice of every column (two ``bisect`` calls), and the device numbers are
  int objects allocated in that order. Per app, one byte per device: the installed
  version's id in the app's small table of distinct versions, times 2, plus 1 for a licence
  holder. Per query: one version comparison per distinct version (as the engine does) gives
  a 256-entry table from byte to outcome; the platform filter is OR-ed into the slice as one
  big integer; the counts are popcounts of a one-bit-per-outcome ``bytes.translate`` of the
  slice read as one big integer; ``itertools.compress`` over translated masks picks the
  licence holders and the devices that would take a licence; ``sorted`` puts those in
  device order (merging the per-org runs) for the licences and the answer. It answers the
  selected devices, the licensed ones and the counts; "+ outcome column" also scatters the
  per-device outcome column (``map(bytearray.__setitem__, ...)``), for information;
* a plain loop over device-order columns, for information.

Before timing, the script checks that the baseline gives the same selected devices, licensed
devices, counts and outcome column as the engine on the timed query and four others
(without licences, the whole fleet, a Windows app to one country, a macOS app on every
platform), and that the plain loop agrees on the timed one; it raises if not. Each time is
the best (and the median) of ``--repeat`` calls. The targets: the query under 20 ms, and at
least 10x faster than the baseline. Memory: the index's own ``memory_bytes()`` and the
growth of the process's VmRSS while building it, per device.

Enqueue: a ``SQLiteStore`` (durability full, a file in a temporary directory) with
``--enqueue-devices`` devices; one ``InstallApplication`` command queued for all of them by
one ``enqueue`` call (set-based), and by one ``fan_out`` of a ``CommandBatch`` with a
``LicenceGrant`` for half of them (when the store has ``fan_out``); the baseline is one
``enqueue`` call per device, awaited in turn, timed on ``--sample`` devices and
extrapolated. The target: 100,000 deliveries in under 2 s. The exit status is non-zero only
when a check fails.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import itertools
import os
import platform
import plistlib
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from mdmgate.catalogue.model import CommandBatch, LicenceGrant
from mdmgate.fleet import FleetIndex, OrgTree, Outcome, platform_code
from mdmgate.storage import Device
from mdmgate.storage.sqlite import SQLiteStore
from mdmgate.versions import allows_downgrade

TARGET_MS = 20.0
TARGET_RATIO = 10.0
TARGET_ENQUEUE_S = 2.0

# --- the synthetic fleet -----------------------------------------------------------------------

PLATFORM_SHARES = {"ios": 0.55, "windows": 0.30, "macos": 0.15}
APP_PLATFORMS = ["ios"] * 22 + ["windows"] * 16 + ["macos"] * 12
REGIONS = {"amer": 0.30, "emea": 0.24, "apac": 0.17, "latam": 0.13, "anz": 0.09, "mea": 0.07}
#: The region the notification goes to (about 1/8 of the fleet).
QUERY_REGION = "latam"
COUNTRIES, SITES, TEAMS = 5, 8, 12


@dataclass
class App:
    number: int
    platform: str
    #: Distinct version strings, oldest first; the newest release is ``latest``.
    versions: list[str]
    latest: str
    #: Device numbers that have the app, and per device the index of its version.
    devices: list[int]
    version_ids: list[int]
    holders: list[int]


@dataclass
class Fleet:
    ids: list[str]
    orgs: list[int]
    platforms: bytes
    supervised: bytes
    tree: OrgTree
    apps: list[App]


def org_paths(rng: random.Random) -> tuple[list[str], list[float]]:
    """Leaf-ish orgs devices sit in (teams, and a few sites directly), and their weights."""
    paths, weights = [], []
    for region, share in REGIONS.items():
        countries = [rng.uniform(0.3, 1.0) for _ in range(COUNTRIES)]
        for c, cw in enumerate(countries):
            for s in range(SITES):
                site = f"/acme/{region}/c{c:02d}/site-{s:02d}"
                sw = share * cw / sum(countries) * rng.uniform(0.2, 1.0)
                paths.append(site)
                weights.append(sw * 0.1)
                for t in range(TEAMS):
                    paths.append(f"{site}/team-{t:02d}")
                    weights.append(sw * rng.uniform(0.05, 0.15))
    return paths, weights


def app_versions(rng: random.Random, name: str) -> tuple[list[str], list[float], str]:
    """An app's versions oldest first, their popularity, and its newest release."""
    major = rng.randint(1, 30)
    minor = rng.randint(0, 20)
    if name == "windows":
        build = rng.randint(1000, 20000)
        builds = [build + 37 * k for k in range(5)]
        versions = [f"{major}.{minor}.{b}.0" for b in builds]
        # Same build, another revision: orders the same as the build before it.
        versions.insert(3, f"{major}.{minor}.{builds[2]}.{rng.randint(1, 900)}")
        latest = versions[-1]
        versions.append(f"{major}.{minor + 1}.{rng.randint(0, 999)}.0")  # a preview build
        weights = [0.06, 0.14, 0.30, 0.08, 0.32, 0.07, 0.03]
    else:
        patch = rng.randint(0, 3)
        versions = [
            f"{major}.{minor}",
            f"{major}.{minor}.{patch + 1}",
            f"{major}.{minor + 1}",
            f"{major}.{minor + 1}.1",
            f"{major}.{minor + 2}.0",
        ]
        latest = versions[-1]
        versions.append(f"{major}.{minor + 2}.1.{rng.randint(1, 9)}")  # a TestFlight build
        weights = [0.05, 0.12, 0.30, 0.42, 0.08, 0.03]
    return versions, weights, latest


def make_fleet(devices: int, seed: int) -> Fleet:
    rng = random.Random(seed)
    paths, weights = org_paths(rng)
    tree = OrgTree(paths)
    numbers = tree.numbers(paths)
    # Devices are numbered in org order, as the gateway's catalogue numbers them when it
    # builds its index, so an org subtree is a run of consecutive device numbers.
    orgs = sorted(rng.choices(numbers, weights=weights, k=devices))
    names = list(PLATFORM_SHARES)
    plats = rng.choices(names, weights=list(PLATFORM_SHARES.values()), k=devices)
    codes = {name: platform_code(name) for name in names}
    platforms = bytes(codes[p] for p in plats)
    supervised = bytes(
        (2 if p == "windows" else int(rng.random() < (0.85 if p == "ios" else 0.6))) for p in plats
    )
    ids = []
    for i, p in enumerate(plats):
        bits = rng.getrandbits(64)
        if p == "windows":
            ids.append(f"{bits:016x}-{i:08x}-4a1e-b000-{rng.getrandbits(48):012x}")
        else:
            ids.append(f"0000{8020 + i % 80}-{bits:016X}")
    by_platform: dict[str, list[int]] = {name: [] for name in names}
    for i, p in enumerate(plats):
        by_platform[p].append(i)
    apps = []
    for number, name in enumerate(APP_PLATFORMS):
        versions, vweights, latest = app_versions(rng, name)
        pool = by_platform[name]
        have = sorted(rng.sample(pool, int(len(pool) * rng.uniform(0.15, 0.90))))
        version_ids = rng.choices(range(len(versions)), weights=vweights, k=len(have))
        holders = sorted(rng.sample(have, int(len(have) * 0.4)))
        apps.append(App(number, name, versions, latest, have, version_ids, holders))
    return Fleet(ids, orgs, platforms, supervised, tree, apps)


def rss_bytes() -> int:
    """This process's resident set (VmRSS), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_index(fleet: Fleet) -> tuple[FleetIndex, float, float]:
    """The index, and the seconds the constructor and the app columns took."""
    start = time.perf_counter()
    index = FleetIndex(fleet.ids, fleet.orgs, fleet.platforms, fleet.supervised)
    built = time.perf_counter()
    for app in fleet.apps:
        texts = [app.versions[v] for v in app.version_ids]
        index.set_installed(app.number, app.devices, texts, platform=app.platform)
        index.set_licensed(app.number, app.holders)
    return index, built - start, time.perf_counter() - built


# --- the pure-Python baseline --------------------------------------------------------------------

#: Version ids go up to MISSING - 1; a byte is ``vid * 2 + holder``; ``0xFE``/``0xFF``: the
#: device is not of the asked-for platform (OR-ed in per query).
MISSING = 126
OTHER_PLATFORM = 0xFE
SENDS = (Outcome.INSTALL, Outcome.UPGRADE, Outcome.DOWNGRADE)


def py_version_key(version: str, platform_name: str) -> tuple[int, ...]:
    """The order of the dotted-integer versions this fleet holds (docs/versions.md):
    missing parts are 0, and on Windows only the first three parts count."""
    parts = [int(p) for p in version.split(".")]
    if platform_name.startswith("windows"):
        parts = parts[:3]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_outcomes(
    versions: list[str],
    version: str,
    platform_name: str,
    installed_only: bool,
    allow_downgrade: bool,
) -> list[Outcome]:
    """Per version id (``MISSING``: not installed), the outcome before licences."""
    want = py_version_key(version, platform_name)
    by_version = []
    for v in versions:
        have = py_version_key(v, platform_name)
        if want > have:
            by_version.append(Outcome.UPGRADE)
        elif want == have:
            by_version.append(Outcome.SKIP_SAME)
        else:
            by_version.append(Outcome.DOWNGRADE if allow_downgrade else Outcome.SKIP_NEWER)
    absent = Outcome.SKIP_NOT_INSTALLED if installed_only else Outcome.INSTALL
    return by_version + [Outcome.OUT_OF_SCOPE] * (MISSING - len(versions)) + [absent]


def count_outcomes(cells: bytes, outcome_of: list[Outcome]) -> list[int]:
    """Devices per outcome code: one bit per code in each device's byte, read as one big
    integer and counted per code by popcount (``bytes.count`` is several times slower)."""
    counts = [0] * len(Outcome)
    present = sorted(set(outcome_of) - {Outcome.OUT_OF_SCOPE})  # codes below 8
    bits = int.from_bytes(cells.translate(bytes(1 << o & 0xFF for o in outcome_of)), "little")
    ones = int.from_bytes(b"\x01" * len(cells), "little")
    for code in present[:-1]:
        counts[code] = (bits & ones << code).bit_count()
    counts[present[-1]] = len(cells) - sum(counts)
    return counts


def count_left_out(
    counts: list[int],
    left_out: list[int],
    devices: list[int],
    cells: bytes,
    outcome_of: list[Outcome],
) -> None:
    """Moves the devices the licences did not reach to SKIP_NO_LICENCE in ``counts``, from
    what they would have been sent: the most common kind takes the rest once the others
    are counted."""
    counts[Outcome.SKIP_NO_LICENCE] = len(left_out)
    kinds = sorted((o for o in SENDS if counts[o]), key=counts.__getitem__)
    rest = len(left_out)
    for kind in kinds[:-1]:
        mask = bytes(o == kind and not b & 1 for b, o in enumerate(outcome_of))
        found = cells.translate(mask)
        if counts[kind] * 32 < len(cells):  # few: find them instead of walking all
            of_kind = [devices[m.start()] for m in re.finditer(b"\x01", found)]
        else:
            of_kind = list(itertools.compress(devices, found))
        short = sum(map(left_out[0].__le__, of_kind))
        counts[kind] -= short
        rest -= short
    counts[kinds[-1]] -= rest


class PyFleet:
    """The baseline's columns: every device column in (org, device number) order."""

    def __init__(self, fleet: Fleet) -> None:
        n = len(fleet.orgs)
        orgs = fleet.orgs
        self.n = n
        #: Device numbers sorted by org (a stable sort keeps each org's devices ascending).
        order = sorted(range(n), key=orgs.__getitem__)
        # New int objects, allocated in this order: a subtree's are next to each other.
        self.order: list[int] = [d + 0 for d in order]
        self.sorted_orgs = [orgs[d] for d in order]
        where = [0] * n
        collections.deque(map(where.__setitem__, order, range(n)), maxlen=0)
        self.platforms = bytes(fleet.platforms[d] for d in order)
        self.versions: dict[int, tuple[str, list[str]]] = {}
        self.cells: dict[int, bytes] = {}
        for app in fleet.apps:
            if len(app.versions) >= MISSING:
                raise ValueError("the baseline holds up to 125 distinct versions per app")
            cells = bytearray([MISSING * 2]) * n
            for d, v in zip(app.devices, app.version_ids, strict=True):
                cells[where[d]] = v * 2
            for d in app.holders:
                cells[where[d]] |= 1
            self.cells[app.number] = bytes(cells)
            self.versions[app.number] = (app.platform, app.versions)
        self._other = {
            code: bytes(0 if c == code else OTHER_PLATFORM for c in range(256))
            for code in set(fleet.platforms)
        }

    def target(
        self,
        app: int,
        *,
        version: str,
        version_platform: str,
        org_range: tuple[int, int],
        installed_only: bool,
        platform: int | None,
        allow_downgrade: bool,
        licences: int | None,
    ) -> PyAnswer:
        """What ``FleetIndex.target`` decides, for the devices in ``org_range``."""
        app_platform, versions = self.versions[app]
        if app_platform != version_platform:
            raise ValueError(f"app {app} has {app_platform} versions, not {version_platform}")
        # One comparison per distinct installed version, then an outcome per byte value.
        by_version = version_outcomes(
            versions, version, version_platform, installed_only, allow_downgrade
        )
        outcome_of = [by_version[b >> 1] for b in range(OTHER_PLATFORM)]
        outcome_of += [Outcome.SKIP_PLATFORM] * (256 - OTHER_PLATFORM)

        # The org subtree is one slice of every column; the platform filter is OR-ed in.
        first, last = org_range
        lo = bisect.bisect_left(self.sorted_orgs, first)
        hi = bisect.bisect_right(self.sorted_orgs, last)
        cells = self.cells[app][lo:hi]
        if platform is not None:
            other = self.platforms[lo:hi].translate(self._other[platform])
            joined = int.from_bytes(cells, "little") | int.from_bytes(other, "little")
            cells = joined.to_bytes(hi - lo, "little")
        counts = count_outcomes(cells, outcome_of)
        counts[Outcome.OUT_OF_SCOPE] = self.n - (hi - lo)

        devices = self.order[lo:hi]
        sends = [o in SENDS for o in outcome_of]
        if licences is None:
            selected = sorted(itertools.compress(devices, cells.translate(bytes(sends))))
            return PyAnswer(selected, [], counts, devices, cells, outcome_of, [])
        # A holder does not take a licence; the others take them in device order.
        holding = bytes(s and b & 1 for b, s in enumerate(sends))
        taking = bytes(s and not b & 1 for b, s in enumerate(sends))
        holders = list(itertools.compress(devices, cells.translate(holding)))
        takers = sorted(itertools.compress(devices, cells.translate(taking)))
        licensed, left_out = takers[:licences], takers[licences:]
        if left_out:
            count_left_out(counts, left_out, devices, cells, outcome_of)
        holders.sort()
        selected = sorted(holders + licensed)  # two sorted runs: one merge
        return PyAnswer(selected, licensed, counts, devices, cells, outcome_of, left_out)

    def outcomes(self, answer: PyAnswer) -> bytearray:
        """The per-device outcome column of an answer (what ``TargetResult.outcomes`` is)."""
        column = bytearray([Outcome.OUT_OF_SCOPE]) * self.n
        out = answer.cells.translate(bytes(answer.outcome_of))
        collections.deque(map(column.__setitem__, answer.devices, out), maxlen=0)
        no_licence = itertools.repeat(Outcome.SKIP_NO_LICENCE)
        collections.deque(map(column.__setitem__, answer.left_out, no_licence), maxlen=0)
        return column


@dataclass
class PyAnswer:
    selected: list[int]
    licensed: list[int]
    counts: list[int]
    #: The devices in the org range (org order), their bytes, the outcome of each byte
    #: value, and the devices the licences did not reach (device order).
    devices: list[int]
    cells: bytes
    outcome_of: list[Outcome]
    left_out: list[int]


# --- timing ------------------------------------------------------------------------------------


def timings(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` calls (after one untimed call)."""
    fn()
    seen = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        seen.append(time.perf_counter() - start)
    return seen


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:,.0f} ms"


def verdict(ok: bool, shown: str, target: str) -> str:
    return f"{shown} met" if ok else f"{shown} MISSED (target {target})"


@dataclass(frozen=True)
class Query:
    """One install notification, as both implementations take it."""

    app: App
    org: str
    org_range: tuple[int, int]
    installed_only: bool = True
    platform: int | None = None
    licences: int | None = None

    def rust(
        self, index: FleetIndex, *, column: bool = True
    ) -> tuple[Sequence[int], Sequence[int], list[int], bytes]:
        """``FleetIndex.target``'s answer, read into Python objects (the per-device outcome
        column only with ``column``)."""
        result = index.target(
            self.app.number,
            version=self.app.latest,
            version_platform=self.app.platform,
            org_range=self.org_range,
            installed_only=self.installed_only,
            platform=self.platform,
            licences=self.licences,
        )
        counts = result.counts
        outcomes = result.outcomes if column else b""
        return result.selected, result.licensed, [counts[o] for o in Outcome], outcomes

    def python(self, baseline: PyFleet) -> PyAnswer:
        return baseline.target(
            self.app.number,
            version=self.app.latest,
            version_platform=self.app.platform,
            org_range=self.org_range,
            installed_only=self.installed_only,
            platform=self.platform,
            allow_downgrade=allows_downgrade(self.app.platform),
            licences=self.licences,
        )


def check(query: Query, index: FleetIndex, baseline: PyFleet) -> None:
    """Both implementations decide the same; raises AssertionError if not."""
    selected, licensed, counts, outcomes = query.rust(index)
    answer = query.python(baseline)
    what = f"app {query.app.number} to {query.org}"
    if answer.selected != list(selected):
        raise AssertionError(f"{what}: the baseline selected other devices")
    if answer.licensed != list(licensed):
        raise AssertionError(f"{what}: the baseline licensed other devices")
    if answer.counts != counts:
        raise AssertionError(f"{what}: counts: baseline {answer.counts}, mdmgate {counts}")
    if baseline.outcomes(answer) != outcomes:
        raise AssertionError(f"{what}: the baseline's outcome column differs")


def build(fleet: Fleet) -> FleetIndex:
    """Builds the index and says how long it took and how much memory it holds."""
    n = len(fleet.ids)
    gc.collect()
    before = rss_bytes()
    index, t_new, t_apps = build_index(fleet)
    grown = rss_bytes() - before
    memory = index.memory_bytes()
    print(
        f"index: built in {t_new + t_apps:.2f} s (FleetIndex() {t_new:.2f} s, "
        f"set_installed + set_licensed of {len(fleet.apps)} apps {t_apps:.2f} s)"
    )
    print(
        f"memory per device: memory_bytes() {memory / n:.1f} B ({memory / 1e6:.1f} MB); "
        f"process VmRSS growth while building {grown / n:.1f} B ({grown / 1e6:.1f} MB)"
    )
    return index


def queries(fleet: Fleet, index: FleetIndex) -> tuple[Query, list[Query]]:
    """The timed notification, and other queries the baseline is checked on."""
    by_platform = {
        name: max((a for a in fleet.apps if a.platform == name), key=lambda a: len(a.devices))
        for name in PLATFORM_SHARES
    }
    app = by_platform["ios"]
    org = f"/acme/{QUERY_REGION}"
    ios = platform_code("ios")
    # Free licences for half of the devices that would take one.
    probe = Query(app, org, fleet.tree.range(org), platform=ios, licences=0).rust(index)
    query = Query(app, org, fleet.tree.range(org), platform=ios, licences=probe[2][7] // 2)
    country = fleet.tree.path(fleet.tree.number(org) + 1)
    others = [
        Query(app, org, query.org_range, platform=ios),
        Query(app, "/", fleet.tree.range("/"), licences=1000),
        Query(
            by_platform["windows"],
            country,
            fleet.tree.range(country),
            installed_only=False,
            platform=platform_code("windows"),
            licences=500,
        ),
        Query(by_platform["macos"], "/acme", fleet.tree.range("/acme"), installed_only=False),
    ]
    return query, others


def loop_target(fleet: Fleet, query: Query) -> Callable[[], object]:
    """A plain loop over device-order columns (informative: not the baseline)."""
    app = query.app
    n = len(fleet.ids)
    vids = bytearray([MISSING]) * n
    for d, v in zip(app.devices, app.version_ids, strict=True):
        vids[d] = v
    holds = bytearray(n)
    for d in app.holders:
        holds[d] = 1
    orgs, platforms = fleet.orgs, fleet.platforms
    first, last = query.org_range
    sends = frozenset(SENDS)

    def run() -> tuple[list[int], list[int], list[int]]:
        by_version = version_outcomes(
            app.versions,
            app.latest,
            app.platform,
            query.installed_only,
            allows_downgrade(app.platform),
        )
        counts = [0] * len(Outcome)
        selected: list[int] = []
        licensed: list[int] = []
        left = query.licences
        for i, (org, code, vid, held) in enumerate(zip(orgs, platforms, vids, holds, strict=True)):
            if org < first or org > last:
                outcome = Outcome.OUT_OF_SCOPE
            elif query.platform is not None and code != query.platform:
                outcome = Outcome.SKIP_PLATFORM
            else:
                outcome = by_version[vid]
                if outcome in sends:
                    if left is None or held:
                        selected.append(i)
                    elif left:
                        left -= 1
                        selected.append(i)
                        licensed.append(i)
                    else:
                        outcome = Outcome.SKIP_NO_LICENCE
            counts[outcome] += 1
        return selected, licensed, counts

    return run


def fleet_bench(args: argparse.Namespace, repeat: int) -> None:
    start = time.perf_counter()
    fleet = make_fleet(args.devices, args.seed)
    n = len(fleet.ids)
    print(
        f"fleet: {n:,} devices, {len(fleet.tree):,} orgs (5 levels), 3 platforms, "
        f"{len(fleet.apps)} apps installed {sum(len(a.devices) for a in fleet.apps):,} times, "
        f"{sum(len(a.holders) for a in fleet.apps):,} licences held "
        f"(generated in {time.perf_counter() - start:.1f} s)"
    )
    index = build(fleet)
    start = time.perf_counter()
    baseline = PyFleet(fleet)
    print(f"baseline columns: built in {time.perf_counter() - start:.2f} s")

    query, others = queries(fleet, index)
    for q in [query, *others]:
        check(q, index, baseline)
    selected, licensed, counts, _ = query.rust(index)
    in_range = n - counts[Outcome.OUT_OF_SCOPE]
    shown = ", ".join(f"{o.name.lower()} {counts[o]:,}" for o in Outcome if counts[o])
    print(
        f"query: app {query.app.number} ({query.app.platform}, installed on "
        f"{len(query.app.devices):,}) to {query.app.latest}, org {query.org} ({in_range:,} "
        f"devices, {in_range / n:.0%}), installed_only, platform ios, {query.licences:,} free "
        "licences"
    )
    print(f"answer: {len(selected):,} selected, {len(licensed):,} take a licence; {shown}")
    print(
        f"checked: the baseline gives the same selected and licensed devices, counts and "
        f"outcome column as FleetIndex.target, on this query and {len(others)} others"
    )
    loop = loop_target(fleet, query)
    if loop() != (list(selected), list(licensed), counts):
        raise AssertionError("the plain loop decides otherwise than FleetIndex.target")

    gc.collect()
    gc.freeze()  # later collections do not walk the fleet's millions of objects
    # Each implementation answers with the selected and licensed devices and the counts;
    # the per-device outcome column is timed as a second pair, for both.
    rows = [
        ("mdmgate FleetIndex.target", timings(lambda: query.rust(index, column=False), repeat)),
        ("pure Python (the baseline)", timings(lambda: query.python(baseline), repeat)),
        ("mdmgate + outcome column", timings(lambda: query.rust(index), repeat)),
        (
            "pure Python + outcome column",
            timings(lambda: baseline.outcomes(query.python(baseline)), repeat),
        ),
        ("plain loop (information)", timings(loop, min(repeat, 3))),
    ]
    gc.unfreeze()
    t_rust = min(rows[0][1])
    t_rust_column = min(rows[2][1])
    print(f"{'one notification':<32}{'best':>10}{'median':>10}{'calls':>7}{'ratio':>11}")
    for k, (name, seen) in enumerate(rows):
        own = t_rust_column if k in (2, 3) else t_rust
        ratio = f"{min(seen) / own:.1f}x" if k not in (0, 2) else ""
        print(
            f"{name:<32}{fmt_ms(min(seen)):>10}{fmt_ms(statistics.median(seen)):>10}"
            f"{len(seen):>7}{ratio:>11}"
        )
    ratio = min(rows[1][1]) / t_rust
    print(
        f"targets: query under {TARGET_MS:g} ms: "
        f"{verdict(t_rust * 1e3 < TARGET_MS, fmt_ms(t_rust), f'{TARGET_MS:g} ms')}; "
        f"at least {TARGET_RATIO:g}x the baseline: "
        f"{verdict(ratio >= TARGET_RATIO, f'{ratio:.1f}x', f'{TARGET_RATIO:g}x')}"
    )


# --- enqueueing in SQLite ------------------------------------------------------------------------


def install_command(uuid: str) -> bytes:
    return plistlib.dumps(
        {
            "CommandUUID": uuid,
            "Command": {
                "RequestType": "InstallApplication",
                "iTunesStoreID": 361309726,
                "ManagementFlags": 1,
                "InstallAsManaged": True,
                "ChangeManagementState": "Managed",
                "Options": {"PurchaseMethod": 1},
            },
        }
    )


ENQUEUE_TARGET_DEVICES = 100_000


async def enqueue_bench(devices: int, sample: int, rounds: int) -> None:
    ids = [f"00008030-{i:016X}" for i in range(devices)]
    granted = ids[::2]
    bulk: list[float] = []
    fanned: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mdmgate-bench-") as tmp:
        store = await SQLiteStore.open(Path(tmp) / "fleet.db")  # durability full
        try:
            await store.upsert_devices(
                [Device(i, "ios", org="/acme/latam", supervised=True) for i in ids]
            )
            fan_out = getattr(store, "fan_out", None)
            for r in range(rounds):
                body = install_command(f"bulk-{r}")
                start = time.perf_counter()
                queued = await store.enqueue(f"bulk-{r}", "apple", body, ids)
                bulk.append(time.perf_counter() - start)
                if queued != devices:
                    raise AssertionError(f"enqueue queued {queued}, not {devices}")
                if fan_out is None:
                    continue
                batch = CommandBatch(f"fan-{r}", "apple", install_command(f"fan-{r}"), ids)
                grant = LicenceGrant(f"app-{r}", devices, granted)
                start = time.perf_counter()
                queued = await fan_out([batch], licences=grant)
                fanned.append(time.perf_counter() - start)
                if queued != devices:
                    raise AssertionError(f"fan_out queued {queued}, not {devices}")
                if len(await store.licence_holders(f"app-{r}")) != len(granted):
                    raise AssertionError("fan_out did not grant the licences")
            body = install_command("single")
            start = time.perf_counter()
            for device in ids[:sample]:
                await store.enqueue("single", "apple", body, [device])
            per_device = (time.perf_counter() - start) / sample
        finally:
            await store.aclose()

    t_bulk = min(bulk)
    rows = [(f"enqueue, one call (best of {rounds})", t_bulk, "")]
    if fanned:
        note = f"{min(fanned) / t_bulk:.2f}x enqueue"
        rows.append((f"fan_out + {len(granted):,} licences", min(fanned), note))
    else:
        print("fan_out: not available")
    note = f"{per_device * devices / t_bulk:,.0f}x enqueue"
    rows.append((f"a call per device ({sample:,} timed)", per_device * devices, note))
    print(f"{f'{devices:,} deliveries of one command':<40}{'time':>10}{'per delivery':>14}")
    for name, seconds, note in rows:
        print(f"{name:<40}{fmt_ms(seconds):>10}{seconds / devices * 1e6:>11.1f} us   {note}")
    scaled = t_bulk * ENQUEUE_TARGET_DEVICES / devices
    shown = f"{scaled:.2f} s" + ("" if devices == ENQUEUE_TARGET_DEVICES else " (scaled)")
    print(
        f"target: {ENQUEUE_TARGET_DEVICES:,} deliveries under {TARGET_ENQUEUE_S:g} s: "
        + verdict(scaled < TARGET_ENQUEUE_S, shown, f"{TARGET_ENQUEUE_S:g} s")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, help="devices in the fleet (1000000)")
    parser.add_argument("--repeat", type=int, help="timed queries per method (21)")
    parser.add_argument(
        "--enqueue-devices", type=int, help="devices a command is queued for (100000)"
    )
    parser.add_argument("--sample", type=int, help="devices of the per-device baseline (2000)")
    parser.add_argument("--rounds", type=int, help="rounds of each enqueue; best is kept (3)")
    parser.add_argument("--seed", type=int, default=8, help="seed of the synthetic fleet (8)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --devices 100000 --repeat 5 --enqueue-devices 20000 --sample 200 "
        "--rounds 1 unless given",
    )
    args = parser.parse_args()
    quick = args.quick

    def pick(value: int | None, normal: int, smoke: int) -> int:
        return value if value is not None else (smoke if quick else normal)

    args.devices = pick(args.devices, 1_000_000, 100_000)
    repeat = pick(args.repeat, 21, 5)
    enqueue_devices = pick(args.enqueue_devices, 100_000, 20_000)
    sample = pick(args.sample, 2000, 200)
    rounds = pick(args.rounds, 3, 1)
    if min(args.devices, repeat, enqueue_devices, sample, rounds) < 1:
        parser.error("the counts must be at least 1")
    print(f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs")
    fleet_bench(args, repeat)
    print()
    trio.run(enqueue_bench, enqueue_devices, min(sample, enqueue_devices), rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
