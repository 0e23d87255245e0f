"""Sort a million app version strings: mdmgate against two Python baselines, same run.

    python benches/bench_versions.py [--n 1000000] [--repeat 3]

Per-phase timings of the Rust side alone: ``--dump DIR``, then
``cargo run --release -p mdmgate-core --example sort_phases -- DIR/catalogue.txt``.

Baselines, each sorting the same ``list[str]`` into a new ``list[str]``:

* ``packaging``: ``sorted(vs, key=packaging.version.Version)``
* ``tuple-split``: ``sorted(vs, key=lambda s: tuple(map(int, s.split("."))))``

Two data sets: ``fleet`` draws versions the way a device inventory looks (a few
thousand distinct strings, many repeats); ``catalogue`` makes nearly every string
distinct. Both hold only dotted integers, so every baseline can parse all of them.
The script checks that all three orders agree before it reports a time.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable

from packaging.version import Version

from mdmgate import versions


def _part(rng: random.Random, high: int) -> int:
    # Small numbers dominate real version parts.
    return min(int(rng.expovariate(1 / (high / 4))), high)


def realistic_version(rng: random.Random) -> str:
    shape = rng.random()
    major = _part(rng, 40)
    if shape < 0.45:
        return f"{major}.{_part(rng, 30)}.{_part(rng, 60)}"
    if shape < 0.65:
        return f"{major}.{_part(rng, 99):0{rng.choice((1, 2))}d}"
    if shape < 0.75:
        # Build stamps such as 1.0.33.20181102.
        date = f"{rng.randint(2015, 2026)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        return f"{major}.{_part(rng, 9)}.{_part(rng, 80)}.{date}"
    if shape < 0.85:
        # Bare build numbers such as 70202006.
        return str(rng.choice((rng.randint(1, 9999), rng.randint(10_000_000, 99_999_999))))
    if shape < 0.95:
        return f"{major}.{_part(rng, 20)}.{_part(rng, 20)}.{_part(rng, 5000)}"
    return f"{major}.{_part(rng, 9)}.0.0"


def fleet(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = [realistic_version(rng) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(pool))]
    return rng.choices(pool, weights=weights, k=n)


def catalogue(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [realistic_version(rng) for _ in range(n)]


def best_time(fn: Callable[[], list[str]], repeat: int) -> tuple[float, list[str]]:
    best = float("inf")
    result: list[str] = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def check_order(name: str, ordered: list[str], reference: list[Version]) -> None:
    if [Version(v) for v in ordered] != reference:
        sys.exit(f"{name}: order differs from packaging.version")


def tuple_key(s: str) -> tuple[int, ...]:
    return tuple(map(int, s.split(".")))


def run(label: str, data: list[str], repeat: int) -> dict[str, float]:
    t_pkg, by_pkg = best_time(lambda: sorted(data, key=Version), max(1, repeat - 1))
    t_tuple, by_tuple = best_time(lambda: sorted(data, key=tuple_key), repeat)
    t_ours, ours = best_time(lambda: versions.sort(data, platform="ios"), repeat)
    reference = [Version(v) for v in by_pkg]
    check_order("mdmgate", ours, reference)
    # tuple-split treats 1.2 and 1.2.0 as different, so only the Version values agree.
    check_order("tuple-split", by_tuple, reference)
    distinct = len(set(data))
    print(f"\n{label}: {len(data):,} versions, {distinct:,} distinct")
    print(f"  {'method':<34}{'seconds':>9}{'mdmgate is':>14}")
    for name, t in (
        ("packaging.version.Version key", t_pkg),
        ("tuple(map(int, s.split('.'))) key", t_tuple),
        ("mdmgate.versions.sort", t_ours),
    ):
        ratio = t / t_ours
        print(f"  {name:<34}{t:>9.3f}{ratio:>13.1f}x")
    return {"packaging": t_pkg / t_ours, "tuple": t_tuple / t_ours}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="versions per data set")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (best is kept)")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument(
        "--dump", metavar="DIR", help="write fleet.txt and catalogue.txt to DIR and stop"
    )
    args = parser.parse_args()
    if args.dump:
        for name, make in (("fleet", fleet), ("catalogue", catalogue)):
            with open(f"{args.dump}/{name}.txt", "w", encoding="utf-8") as f:
                f.write("\n".join(make(args.n, args.seed)) + "\n")
        return 0
    python = sys.version.split()[0]
    print(f"python {python}, best of {args.repeat} (packaging: {max(1, args.repeat - 1)})")
    results = {
        "fleet": run("fleet", fleet(args.n, args.seed), args.repeat),
        "catalogue": run("catalogue", catalogue(args.n, args.seed), args.repeat),
    }
    print("\nratios (baseline seconds / mdmgate seconds; targets: packaging >= 30x, tuple >= 10x)")
    for label, r in results.items():
        print(f"  {label:<10} packaging {r['packaging']:.1f}x  tuple-split {r['tuple']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
