"""Plist loads and dumps: mdmgate against plistlib, same run, same report.

    python benches/bench_plist.py [--number 200] [--repeat 7] [--apps 200]
    python benches/bench_plist.py --quick          # smoke run for CI, about a second

The data is ``installed_application_list_report(apps)`` from ``tests/apple_samples.py``: an
Acknowledged InstalledApplicationList command report of 200 apps, about 157 KB as XML and
30 KB as binary, both written by plistlib. The value is what plistlib reads from it.

Four cases, each timed for ``plistlib`` and ``mdmgate.plist`` with their defaults:

* ``loads xml`` and ``loads binary``: bytes to the Python value;
* ``dumps xml`` and ``dumps binary``: the value to bytes (both sort keys by default).

Before anything is timed, the script checks that mdmgate reads both inputs to exactly what
plistlib reads (types and dict order included), that plistlib and mdmgate read mdmgate's
output back as the value, and exits with status 1 if any check fails.

Each time is the best of ``--repeat`` rounds of ``--number`` calls, divided by ``--number``.
KB and MB are 1,000 and 1,000,000 bytes; MB/s counts input bytes for loads and each codec's
own output bytes for dumps. The ratio is plistlib's time divided by mdmgate's. The target is
10x on every case; the last line says whether each ratio met it.
"""

from __future__ import annotations

import argparse
import math
import platform
import plistlib
import sys
from pathlib import Path
from typing import Any

from mdmgate import plist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.apple_samples import installed_application_list_report

from _timing import best_time, fmt_rate, fmt_time

TARGET = 10.0


def exact(value: Any) -> Any:
    """A form of a plist value whose ``==`` also compares types and dict order."""
    kind = type(value)
    if kind is dict:
        return ("dict", tuple((k, exact(v)) for k, v in value.items()))
    if kind is list:
        return ("list", tuple(exact(v) for v in value))
    if kind is float and math.isnan(value):
        return ("float", "nan")
    return (kind.__name__, value)


def check(name: str, ok: bool) -> None:
    if not ok:
        sys.exit(f"verification failed: {name}")


def verify(inputs: dict[str, bytes], value: Any) -> dict[str, dict[str, bytes]]:
    """Checks both codecs agree; returns each codec's output per format."""
    for fmt, data in inputs.items():
        check(f"mdmgate loads {fmt} == plistlib loads", exact(plist.loads(data)) == exact(value))
    outputs: dict[str, dict[str, bytes]] = {"plistlib": {}, "mdmgate": {}}
    for fmt, binary in (("xml", False), ("binary", True)):
        ours = plist.dumps(value, binary=binary)
        check(
            f"plistlib reads mdmgate's {fmt} as the value",
            exact(plistlib.loads(ours)) == exact(value),
        )
        check(f"mdmgate reads its own {fmt} as the value", exact(plist.loads(ours)) == exact(value))
        outputs["mdmgate"][fmt] = ours
        outputs["plistlib"][fmt] = plistlib.dumps(
            value, fmt=plistlib.FMT_BINARY if binary else plistlib.FMT_XML
        )
    print(
        "checked: mdmgate reads the XML and binary report exactly as plistlib does; plistlib "
        "and mdmgate read mdmgate's XML and binary output back as the same value"
    )
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, help="calls per round (200)")
    parser.add_argument("--repeat", type=int, help="rounds per method, best is kept (7)")
    parser.add_argument("--apps", type=int, default=200, help="apps in the report")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --number 3 --repeat 1 unless given"
    )
    args = parser.parse_args()
    number = args.number if args.number is not None else (3 if args.quick else 200)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 7)
    if number < 1 or repeat < 1:
        parser.error("--number and --repeat must be at least 1")

    inputs = {
        "xml": installed_application_list_report(args.apps),
        "binary": installed_application_list_report(args.apps, binary=True),
    }
    value = plistlib.loads(inputs["xml"])
    check(
        "the XML and binary report hold the same value", plistlib.loads(inputs["binary"]) == value
    )
    outputs = verify(inputs, value)

    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, {args.apps}-app report, "
        f"best of {repeat} rounds of {number} calls"
    )
    ratios: list[tuple[str, float]] = []

    def case(name: str, base: tuple[int, float], ours: tuple[int, float]) -> None:
        (base_size, t_base), (our_size, t_ours) = base, ours
        ratio = t_base / t_ours
        ratios.append((name, ratio))
        print(
            f"{name:<14}{our_size / 1e3:>7.1f} KB   "
            f"plistlib {fmt_time(t_base)} ({fmt_rate(base_size, t_base)})   "
            f"mdmgate {fmt_time(t_ours)} ({fmt_rate(our_size, t_ours)})   {ratio:.1f}x"
        )

    for fmt, data in inputs.items():
        t_base = best_time(lambda data=data: plistlib.loads(data), number, repeat)
        t_ours = best_time(lambda data=data: plist.loads(data), number, repeat)
        case(f"loads {fmt}", (len(data), t_base), (len(data), t_ours))
    for fmt, binary in (("xml", False), ("binary", True)):
        pl_fmt = plistlib.FMT_BINARY if binary else plistlib.FMT_XML
        t_base = best_time(lambda pl_fmt=pl_fmt: plistlib.dumps(value, fmt=pl_fmt), number, repeat)
        t_ours = best_time(lambda binary=binary: plist.dumps(value, binary=binary), number, repeat)
        sizes = (len(outputs["plistlib"][fmt]), len(outputs["mdmgate"][fmt]))
        case(f"dumps {fmt}", (sizes[0], t_base), (sizes[1], t_ours))
        if sizes[0] != sizes[1]:
            print(f"{'':14}(output: plistlib {sizes[0]:,} bytes, mdmgate {sizes[1]:,} bytes)")

    missed = [(name, ratio) for name, ratio in ratios if ratio < TARGET]
    if missed:
        listed = ", ".join(f"{name} {ratio:.1f}x" for name, ratio in missed)
        print(f"target {TARGET:.0f}x: MISSED by {len(missed)} of {len(ratios)}: {listed}")
    else:
        print(f"target {TARGET:.0f}x: met by all {len(ratios)} ratios")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
