"""Apple report models: what msgspec Structs cost over plain dict access (informative).

    python benches/bench_apple_models.py [--apps 200] [--number 50] [--repeat 5]

Input: ``tests/apple_samples.installed_application_list_report(apps)``, an
InstalledApplicationList report (about 150 KB as XML for 200 apps), XML and binary.

Every case ends with the same rows, ``(Identifier, ShortVersion, Version,
ExternalVersionIdentifier, Name, BundleSize)`` for the apps not ``Installing``, and the
rows are compared before anything is timed:

* ``dict``: ``mdmgate.plist.loads`` and a walk over the plain dicts (the baseline);
* ``typed``: ``decode_report`` then ``installed_applications(validate=False)`` (msgspec
  Structs, unknown keys kept per app, raw bytes kept);
* ``typed+schema``: the same, with the result checked against the schema facts;
* ``versions``: ``installed_versions`` on top (adds a version sort key per app).

The ``model only`` lines time the same steps on an already decoded dict, so the plist
decode (the same in every case) is left out. Each time is the best of ``--repeat`` rounds
of ``--number`` calls, divided by ``--number``. There is no target: this measures whether
the model layer matters next to the plist codec, to choose between msgspec Structs and
Rust types.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from mdmgate import plist
from mdmgate.apple import _convert, reports
from mdmgate.apple.schema import SchemaIssue, validate_response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.apple_samples import installed_application_list_report

Row = tuple[Any, ...]


def rows_from_dicts(report: dict[str, Any]) -> list[Row]:
    return [
        (
            app.get("Identifier"),
            app.get("ShortVersion"),
            app.get("Version"),
            app.get("ExternalVersionIdentifier"),
            app.get("Name"),
            app.get("BundleSize"),
        )
        for app in report["InstalledApplicationList"]
        if not app.get("Installing")
    ]


def rows_from_apps(apps: list[reports.InstalledApp]) -> list[Row]:
    return [
        (
            a.identifier,
            a.short_version,
            a.version,
            a.external_version_identifier,
            a.name,
            a.bundle_size,
        )
        for a in apps
        if not a.installing
    ]


def case_dict(data: bytes) -> list[Row]:
    return rows_from_dicts(plist.loads(data))


def case_typed(data: bytes) -> list[Row]:
    report = reports.decode_report(data)
    return rows_from_apps(reports.installed_applications(report, validate=False).apps)


def case_typed_schema(data: bytes) -> list[Row]:
    report = reports.decode_report(data)
    return rows_from_apps(reports.installed_applications(report).apps)


def case_versions(data: bytes) -> list[Row]:
    facts = reports.installed_versions(reports.decode_report(data), platform="ios")
    return [
        (
            v.identifier,
            v.short_version,
            v.bundle_version,
            v.external_version_identifier,
            v.name,
            None,
        )
        for v in facts.versions
    ]


def model_dict(body: dict[str, Any]) -> list[Row]:
    return rows_from_dicts(body)


def model_typed(body: dict[str, Any]) -> list[Row]:
    issues: list[SchemaIssue] = []
    apps = _convert.convert_many(
        reports.InstalledApp, body["InstalledApplicationList"], "InstalledApplicationList", issues
    )
    return rows_from_apps(apps)


def model_typed_schema(body: dict[str, Any]) -> list[Row]:
    validate_response("InstalledApplicationList", body)
    return model_typed(body)


def model_msgspec_only(body: dict[str, Any]) -> list[Row]:
    """msgspec.convert alone, without keeping unknown keys: the floor for Structs."""
    apps = msgspec.convert(
        body["InstalledApplicationList"], list[reports.InstalledApp], strict=False
    )
    return rows_from_apps(apps)


def best(fn: Callable[[Any], object], arg: Any, number: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(number):
            fn(arg)
        times.append((time.perf_counter() - start) / number)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    codec = (plist.__doc__ or "").strip().splitlines()[0]
    print(
        f"python {platform.python_version()}, msgspec {msgspec.__version__}, "
        f"{platform.machine()}; mdmgate.plist: {codec}"
    )
    for fmt in ("xml", "binary"):
        data = installed_application_list_report(args.apps, binary=fmt == "binary")
        body = plist.loads(data)
        expected = case_dict(data)
        full: list[tuple[str, Callable[[Any], list[Row]]]] = [
            ("dict", case_dict),
            ("typed", case_typed),
            ("typed+schema", case_typed_schema),
        ]
        model: list[tuple[str, Callable[[Any], list[Row]]]] = [
            ("dict", model_dict),
            ("msgspec.convert only", model_msgspec_only),
            ("typed", model_typed),
            ("typed+schema", model_typed_schema),
        ]
        for name, fn in [*full, *model]:
            got = fn(data if (name, fn) in full else body)
            if got != expected:
                print(f"MISMATCH: {fmt} {name}", file=sys.stderr)
                return 1
        got_versions = case_versions(data)
        if [r[:5] for r in got_versions] != [r[:5] for r in expected]:
            print(f"MISMATCH: {fmt} versions", file=sys.stderr)
            return 1

        print(f"\n{fmt}: {len(data) / 1000:.1f} KB, {args.apps} apps, {len(expected)} installed")
        base = best(plist.loads, data, args.number, args.repeat)
        print(f"  {'plist.loads alone':<34} {base * 1e3:8.3f} ms")
        for name, fn in [*full, ("versions", case_versions)]:
            seconds = best(fn, data, args.number, args.repeat)
            print(f"  {'bytes -> rows, ' + name:<34} {seconds * 1e3:8.3f} ms")
        floor = best(model_dict, body, args.number, args.repeat)
        for name, fn in model:
            seconds = best(fn, body, args.number, args.repeat)
            ratio = f"  ({seconds / floor:4.1f}x dict)" if name != "dict" else ""
            print(f"  {'model only, ' + name:<34} {seconds * 1e3:8.3f} ms{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
