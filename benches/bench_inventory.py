"""A Windows app inventory message into app records: mdmgate against xml.etree, same run.

    python benches/bench_inventory.py [--number 20] [--repeat 7] [--apps 250]
    python benches/bench_inventory.py --quick       # smoke run for CI, no verdict

The message is what Windows answers to a Get of
``./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement?list=StructData``
(``tests/syncml_corpus.py``, ``inventory_results``): one Results whose Items are the CSP's
nodes, for each app a family node, a full-name node and its 14 leaves (Name, Version,
Publisher, Architecture, InstallLocation, IsFramework, IsBundle, InstallDate, ResourceID,
PackageStatus, RequiresReinstall, Users, IsProvisioned, IsStub) with real-looking package
names and publisher ids over AppStore, nonStore and System. 250 apps come to about 1.35 MB
of XML; the same message is also measured as WBXML (re-encoded by mdmgate).

Three ways from the message's bytes to ``list[AppRecord]``, all with the rules of
``apps.parse_inventory`` (Results items whose Source LocURI, else Target, starts with the
inventory's target; scope, classification, family and full name from the path; known
leaves; flags, numbers and the HRESULT rule):

* (a) etree: ``xml.etree.ElementTree.fromstring`` and a walk of
  Results/Item/Source/LocURI/Data written here with those rules (XML only);
* (b) today's path: ``syncml.decode`` (a Python object per command and item) and
  ``apps.parse_inventory`` over the Results items under the prefix;
* (c) ``apps.inventory_from_message``: the message read in Rust, one JSON array back,
  one ``msgspec`` decode into the records.

The three must return equal records (and (b) and (c) the same for WBXML) before anything is
timed. Each time is the best of ``--repeat`` rounds of ``--number`` calls, divided by
``--number``. MB is 1,000,000 bytes. A ratio is the slower time divided by (c)'s. The target
is (c) 10x faster than (a); without ``--quick`` the last line says whether it was met. The
exit status is non-zero only when the outputs differ.
"""

from __future__ import annotations

import argparse
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mdmgate import syncml
from mdmgate.windows import apps
from mdmgate.windows.apps import AppRecord

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.syncml_corpus import inventory_results

from _timing import best_time, fmt_rate, fmt_time

TARGET = 10.0
PREFIX = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement"

# --- (a) the xml.etree baseline -------------------------------------------------------------

_S = "{SYNCML:SYNCML1.2}"
Q_SYNCBODY = _S + "SyncBody"
Q_RESULTS = _S + "Results"
Q_CMDREF = _S + "CmdRef"
Q_ITEM = _S + "Item"
Q_SOURCE_URI = f"{_S}Source/{_S}LocURI"
Q_TARGET_URI = f"{_S}Target/{_S}LocURI"
Q_DATA = _S + "Data"
_XML_SPACE = " \t\n\r"

_CSP = ["Vendor", "MSFT", "EnterpriseModernAppManagement"]
_CLASSES = {"appstore": "AppStore", "nonstore": "nonStore", "system": "System"}
_TEXT, _FLAG, _NUMBER = 0, 1, 2
_LEAVES = {
    "Name": ("name", _TEXT),
    "Version": ("version", _TEXT),
    "Publisher": ("publisher", _TEXT),
    "Architecture": ("architecture", _TEXT),
    "InstallLocation": ("install_location", _TEXT),
    "IsFramework": ("is_framework", _FLAG),
    "IsBundle": ("is_bundle", _FLAG),
    "InstallDate": ("install_date", _TEXT),
    "ResourceID": ("resource_id", _TEXT),
    "RequiresReinstall": ("requires_reinstall", _FLAG),
    "PackageStatus": ("package_status", _NUMBER),
    "Users": ("users", _TEXT),
    "IsProvisioned": ("is_provisioned", _FLAG),
    "IsStub": ("is_stub", _FLAG),
}
_FLAGS = {"1": True, "true": True, "True": True, "TRUE": True}
_FLAGS |= {"0": False, "false": False, "False": False, "FALSE": False}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _number(text: str) -> int | None:
    text = text.strip()
    if text[:2] in ("0x", "0X") and 0 < len(text) - 2 <= 16 and _HEX_DIGITS.issuperset(text[2:]):
        return int(text, 16)
    digits = text[1:] if text[:1] in ("+", "-") else text
    if 0 < len(digits) <= 20 and digits.isascii() and digits.isdigit():
        value = int(text)
        return value + (1 << 32) if -(1 << 31) <= value < 0 else value
    return None


def _convert(text: str | None, kind: int) -> Any:
    if text is None or kind == _TEXT:
        return text
    if kind == _FLAG:
        return _FLAGS.get(text.strip())
    return _number(text)


def _package_path(uri: str) -> tuple[str, str, str, str, str | None] | None:
    """(scope, classification, family, full name, leaf or None) of an app node's LocURI."""
    parts = uri.partition("?")[0].split("/")
    if len(parts) < 4 or parts[0] != ".":
        return None
    scope, start = ("user", 2) if parts[1] == "User" else ("device", 1)
    if parts[1] == "Device":
        start = 2
    if parts[start : start + 3] != _CSP:
        return None
    rest = parts[start + 3 :]
    if "%" in uri:
        rest = [unquote(p) for p in rest]
    if len(rest) < 4 or rest[0] != "AppManagement":
        return None
    classification = _CLASSES.get(rest[1].lower())
    if classification is None or "_" not in rest[2] or "_" not in rest[3]:
        return None
    return scope, classification, rest[2], rest[3], rest[4] if len(rest) == 5 else None


def etree_inventory(data: bytes, prefix: str, cmd_ref: str | None = None) -> list[AppRecord]:
    root = ET.fromstring(data)
    body = root.find(Q_SYNCBODY)
    if body is None:
        raise ValueError("no SyncBody")
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for command in body.iterfind(Q_RESULTS):
        if cmd_ref is not None and (command.findtext(Q_CMDREF) or "").strip(_XML_SPACE) != cmd_ref:
            continue
        for item in command.iterfind(Q_ITEM):
            uri = (item.findtext(Q_SOURCE_URI) or "").strip(_XML_SPACE)
            if not uri:
                uri = (item.findtext(Q_TARGET_URI) or "").strip(_XML_SPACE)
            found = _package_path(uri) if uri.startswith(prefix) else None
            if found is None:
                continue
            key = found[:4]
            fields = groups.get(key)
            if fields is None:
                fields = groups[key] = {}
            leaf = _LEAVES.get(found[4]) if found[4] is not None else None
            if leaf is not None:
                fields[leaf[0]] = _convert(item.findtext(Q_DATA), leaf[1])
    return [
        AppRecord(
            package_full_name=full,
            package_family=family,
            classification=classification,  # type: ignore[arg-type]
            scope=scope,  # type: ignore[arg-type]
            **fields,
        )
        for (scope, classification, family, full), fields in groups.items()
    ]


# --- (b) today's path, (c) the Rust reader ---------------------------------------------------


def decode_then_parse(data: bytes, prefix: str) -> list[AppRecord]:
    message = syncml.decode(data)
    return apps.parse_inventory(
        item
        for command in message.commands
        if command.name == "Results"
        for item in command.items
        if (item.source or item.target or "").startswith(prefix)
    )


def from_message(data: bytes, prefix: str) -> list[AppRecord]:
    return apps.inventory_from_message(data, prefix)


# --- timing and reporting ---------------------------------------------------------------------


def fmt_size(size: int) -> str:
    return f"{size / 1e3:.1f} KB" if size < 1_000_000 else f"{size / 1e6:.2f} MB"


def check(name: str, ok: bool) -> None:
    if not ok:
        sys.exit(f"verification failed: {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--number", type=int, help="calls per round (20)")
    parser.add_argument("--repeat", type=int, help="rounds per method, best is kept (7)")
    parser.add_argument("--apps", type=int, default=250, help="apps in the inventory (250)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --number 2 --repeat 1 unless given"
    )
    args = parser.parse_args()
    number = args.number if args.number is not None else (2 if args.quick else 20)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 7)
    if number < 1 or repeat < 1 or args.apps < 1:
        parser.error("--number, --repeat and --apps must be at least 1")

    xml = inventory_results(args.apps)
    wbxml = syncml.from_dict(syncml.to_dict(xml), wbxml=True)
    records = etree_inventory(xml, PREFIX)
    check("(b) decode + parse_inventory == (a) etree", decode_then_parse(xml, PREFIX) == records)
    check("(c) inventory_from_message == (a) etree", from_message(xml, PREFIX) == records)
    check("(b) on WBXML == (a)", decode_then_parse(wbxml, PREFIX) == records)
    check("(c) on WBXML == (a)", from_message(wbxml, PREFIX) == records)
    check("the inventory has one record per app", len(records) == args.apps)
    items = sum(1 for c in syncml.decode(xml).commands for _ in c.items)
    print(
        f"checked: {len(records)} records from {items} items, equal across (a), (b) and (c) "
        f"on XML ({fmt_size(len(xml))}) and (b), (c) on WBXML ({fmt_size(len(wbxml))})"
    )
    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, "
        f"best of {repeat} rounds of {number} calls"
    )

    def time(fn: Any, data: bytes) -> float:
        return best_time(lambda: fn(data, PREFIX), number, repeat)

    t_etree = time(etree_inventory, xml)
    t_today = time(decode_then_parse, xml)
    t_rust = time(from_message, xml)
    t_today_wbxml = time(decode_then_parse, wbxml)
    t_rust_wbxml = time(from_message, wbxml)
    size, wsize = len(xml), len(wbxml)

    def line(label: str, seconds: float, nbytes: int) -> None:
        print(f"  {label:<40}{fmt_time(seconds):>10}  {fmt_rate(nbytes, seconds)}")

    print(f"XML {fmt_size(size)}:")
    line("(a) etree fromstring + walk", t_etree, size)
    line("(b) syncml.decode + parse_inventory", t_today, size)
    line("(c) inventory_from_message", t_rust, size)
    print(f"  (c) vs (a): {t_etree / t_rust:.1f}x   (c) vs (b): {t_today / t_rust:.1f}x")
    print(f"WBXML {fmt_size(wsize)} (etree cannot read it):")
    line("(b) syncml.decode + parse_inventory", t_today_wbxml, wsize)
    line("(c) inventory_from_message", t_rust_wbxml, wsize)
    print(f"  (c) vs (b): {t_today_wbxml / t_rust_wbxml:.1f}x")
    if not args.quick:
        ratio = t_etree / t_rust
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"target {TARGET:.0f}x of (c) over (a) on XML: {verdict} ({ratio:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
