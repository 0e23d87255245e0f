"""SyncML decode and encode: mdmgate against xml.etree, same run, same messages.

    python benches/bench_syncml.py [--number 200] [--repeat 7]
    python benches/bench_syncml.py --quick          # smoke run for CI, a few seconds

Messages come from ``tests/syncml_corpus.py``:

* ``session_message()``: a ~23 KB mid-session device message (Status, Results, Alert);
* ``inventory_results(300)``: the ``?list=StructData`` app inventory Results of 300 apps;
* ``response_commands(50)``: a 50-command server response, as a dict (docs/syncml.md).

Decode cases: the baseline is ``xml.etree.ElementTree.fromstring`` plus a walk that pulls out
the values a server uses (per command: name, CmdID, MsgRef, CmdRef, Cmd, Data; per item:
Target and Source LocURI, Meta Format and Type, Data). mdmgate does the same walk over
``syncml.decode`` (typed objects) and over ``syncml.to_dict`` (dicts). The three walks must
return equal lists before anything is timed.

Encode case: the baseline builds an ElementTree from the response dict and serializes it with
``ET.tostring``; both steps are timed together. mdmgate: ``syncml.from_dict(d)``,
``Message.encode()`` of a message built once beforehand, and ``from_dict(d, wbxml=True)``.
Every output must decode (with ``syncml.to_dict``) to the same dict as the etree output.

Each time is the best of ``--repeat`` rounds of ``--number`` calls, divided by ``--number``.
The inventory round makes as many calls as carry the same bytes as ``--number`` session
calls (at least one). KB and MB are 1,000 and 1,000,000 bytes. The ratio is the baseline
time divided by mdmgate's. The target is 10x on every ratio; the exit status is non-zero only
when a check of the outputs fails.
"""

from __future__ import annotations

import argparse
import platform
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdmgate import syncml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.syncml_corpus import (
    inventory_results,
    response_commands,
    session_message,
)

from _timing import best_time, fmt_rate, fmt_time

TARGET = 10.0

Field = str | bytes | None
Row = tuple[Field, ...]

# --- the xml.etree baseline ---------------------------------------------------------------

SYNCML_NS = "SYNCML:SYNCML1.2"
METINF_NS = "syncml:metinf"
_S = "{" + SYNCML_NS + "}"
_M = "{" + METINF_NS + "}"
Q_SYNCHDR = _S + "SyncHdr"
Q_SYNCBODY = _S + "SyncBody"
Q_SESSIONID = _S + "SessionID"
Q_MSGID = _S + "MsgID"
Q_FINAL = _S + "Final"
Q_CMDID = _S + "CmdID"
Q_MSGREF = _S + "MsgRef"
Q_CMDREF = _S + "CmdRef"
Q_CMD = _S + "Cmd"
Q_DATA = _S + "Data"
Q_ITEM = _S + "Item"
Q_TARGET = _S + "Target"
Q_SOURCE = _S + "Source"
Q_LOCURI = _S + "LocURI"
Q_META = _S + "Meta"
Q_FORMAT = _M + "Format"
Q_TYPE = _M + "Type"


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    if found is None:
        raise ValueError(f"no {tag} in {parent.tag}")
    return found


def _etree_loc(item: ET.Element, tag: str) -> str | None:
    found = item.find(tag)
    return None if found is None else found.findtext(Q_LOCURI)


def _etree_item(item: ET.Element) -> Row:
    meta = item.find(Q_META)
    return (
        _etree_loc(item, Q_TARGET),
        _etree_loc(item, Q_SOURCE),
        None if meta is None else meta.findtext(Q_FORMAT),
        None if meta is None else meta.findtext(Q_TYPE),
        item.findtext(Q_DATA),
    )


def etree_session(data: bytes) -> list[Row]:
    root = ET.fromstring(data)
    header = _child(root, Q_SYNCHDR)
    rows: list[Row] = [("SyncHdr", header.findtext(Q_SESSIONID), header.findtext(Q_MSGID))]
    for command in _child(root, Q_SYNCBODY):
        if command.tag == Q_FINAL:
            continue
        rows.append(
            (
                command.tag.removeprefix(_S),
                command.findtext(Q_CMDID),
                command.findtext(Q_MSGREF),
                command.findtext(Q_CMDREF),
                command.findtext(Q_CMD),
                command.findtext(Q_DATA),
            )
        )
        rows.extend(_etree_item(item) for item in command.iterfind(Q_ITEM))
    return rows


def etree_inventory(data: bytes) -> list[Row]:
    root = ET.fromstring(data)
    rows: list[Row] = []
    for command in _child(root, Q_SYNCBODY):
        for item in command.iterfind(Q_ITEM):
            target, source, fmt, type_, value = _etree_item(item)
            rows.append((source if source is not None else target, fmt, type_, value))
    return rows


def _etree_value(parent: ET.Element, key: str, value: Any) -> None:
    if value is True:
        ET.SubElement(parent, key)
    elif isinstance(value, str):
        ET.SubElement(parent, key).text = value
    elif isinstance(value, dict):
        _etree_fields(ET.SubElement(parent, key), value)
    else:
        raise ValueError(f"the etree baseline does not write {key}={value!r}")


def _etree_commands(parent: ET.Element, commands: list[dict[str, Any]]) -> None:
    for command in commands:
        for name, fields in command.items():
            _etree_fields(ET.SubElement(parent, name), fields)


def _etree_fields(parent: ET.Element, fields: dict[str, Any]) -> None:
    """The dict form's fields as child elements, in the dict's order (the SyncML order)."""
    for key, value in fields.items():
        if key == "Meta":
            meta = ET.SubElement(parent, "Meta")
            for name, text in value.items():
                for one in text if isinstance(text, list) else (text,):
                    ET.SubElement(meta, name, xmlns=METINF_NS).text = one
        elif key == "Commands":
            _etree_commands(parent, value)
        elif isinstance(value, list):
            for entry in value:
                _etree_value(parent, key, entry)
        else:
            _etree_value(parent, key, value)


def etree_tree(message: dict[str, Any]) -> ET.Element:
    root = ET.Element("SyncML", xmlns=SYNCML_NS)
    _etree_fields(ET.SubElement(root, "SyncHdr"), message["SyncHdr"])
    body = ET.SubElement(root, "SyncBody")
    _etree_commands(body, message["SyncBody"])
    if message.get("Final"):
        ET.SubElement(body, "Final")
    return root


def etree_encode(message: dict[str, Any]) -> bytes:
    return ET.tostring(etree_tree(message))


# --- the same walks over mdmgate's typed objects and dicts -------------------------------


def typed_session(data: bytes) -> list[Row]:
    message = syncml.decode(data)
    header = message.header
    rows: list[Row] = [("SyncHdr", header.session_id, header.msg_id)]
    for command in message.commands:
        rows.append(
            (
                command.name,
                command.cmd_id,
                command.msg_ref,
                command.cmd_ref,
                command.cmd,
                command.data,
            )
        )
        rows.extend(
            (item.target, item.source, item.format, item.type, item.data) for item in command.items
        )
    return rows


def typed_inventory(data: bytes) -> list[Row]:
    rows: list[Row] = []
    for command in syncml.decode(data).commands:
        rows.extend(
            (
                item.source if item.source is not None else item.target,
                item.format,
                item.type,
                item.data,
            )
            for item in command.items
        )
    return rows


def _dict_loc(item: dict[str, Any], key: str) -> str | None:
    loc = item.get(key)
    return None if loc is None else loc.get("LocURI")


def _dict_item(item: dict[str, Any]) -> Row:
    meta = item.get("Meta")
    return (
        _dict_loc(item, "Target"),
        _dict_loc(item, "Source"),
        None if meta is None else meta.get("Format"),
        None if meta is None else meta.get("Type"),
        item.get("Data"),
    )


def dict_session(data: bytes) -> list[Row]:
    message = syncml.to_dict(data)
    header = message["SyncHdr"]
    rows: list[Row] = [("SyncHdr", header.get("SessionID"), header.get("MsgID"))]
    for command in message["SyncBody"]:
        for name, fields in command.items():
            rows.append(
                (
                    name,
                    fields.get("CmdID"),
                    fields.get("MsgRef"),
                    fields.get("CmdRef"),
                    fields.get("Cmd"),
                    fields.get("Data"),
                )
            )
            rows.extend(_dict_item(item) for item in fields.get("Item", ()))
    return rows


def dict_inventory(data: bytes) -> list[Row]:
    rows: list[Row] = []
    for command in syncml.to_dict(data)["SyncBody"]:
        for fields in command.values():
            for item in fields.get("Item", ()):
                target, source, fmt, type_, value = _dict_item(item)
                rows.append((source if source is not None else target, fmt, type_, value))
    return rows


# --- timing and reporting ----------------------------------------------------------------


def fmt_size(size: int) -> str:
    return f"{size / 1e3:.1f} KB" if size < 1_000_000 else f"{size / 1e6:.2f} MB"


Timing = tuple[str, int, float]  # name, bytes in (decode) or out (encode), seconds per call


class Report:
    def __init__(self, number: int, repeat: int) -> None:
        self.number = number
        self.repeat = repeat
        self.ratios: list[tuple[str, float]] = []

    def time(self, fn: Callable[[], object], calls: int | None = None) -> float:
        return best_time(fn, self.number if calls is None else calls, self.repeat)

    def case(
        self,
        case: str,
        size: str,
        baseline: Timing,
        variants: list[Timing],
        *,
        counted: bool = True,
    ) -> None:
        """One line: the baseline, then each mdmgate variant with its speed-up."""
        name, base_size, t_base = baseline
        parts = [
            f"{case + '  ' + size:<28}{name} {fmt_time(t_base)} ({fmt_rate(base_size, t_base)})"
        ]
        for variant, v_size, t in variants:
            ratio = t_base / t
            parts.append(f"{variant} {fmt_time(t)} ({fmt_rate(v_size, t)}) {ratio:.1f}x")
            if counted:
                self.ratios.append((f"{case} {variant}", ratio))
        print("   ".join(parts))

    def verdict(self) -> None:
        missed = [(name, ratio) for name, ratio in self.ratios if ratio < TARGET]
        if missed:
            listed = ", ".join(f"{name} {ratio:.1f}x" for name, ratio in missed)
            print(f"target {TARGET:.0f}x: MISSED by {len(missed)} of {len(self.ratios)}: {listed}")
        else:
            print(f"target {TARGET:.0f}x: met by all {len(self.ratios)} ratios")


def check(name: str, ok: bool) -> None:
    if not ok:
        sys.exit(f"verification failed: {name}")


def verify(
    session: bytes, inventory: bytes, response: dict[str, Any], built: syncml.Message
) -> dict[str, bytes]:
    """Checks that every method extracts or writes the same thing; returns the encodings."""
    session_rows = etree_session(session)
    check("typed session walk == etree walk", typed_session(session) == session_rows)
    check("dict session walk == etree walk", dict_session(session) == session_rows)
    inventory_rows = etree_inventory(inventory)
    check("typed inventory walk == etree walk", typed_inventory(inventory) == inventory_rows)
    check("dict inventory walk == etree walk", dict_inventory(inventory) == inventory_rows)
    outputs = {
        "etree": etree_encode(response),
        "from_dict": syncml.from_dict(response),
        "typed encode": built.encode(),
        "wbxml": syncml.from_dict(response, wbxml=True),
    }
    reference = syncml.to_dict(outputs["etree"])
    check("the etree output decodes to the response dict", reference == response)
    for name, output in outputs.items():
        check(f"to_dict({name}) == to_dict(etree)", syncml.to_dict(output) == reference)
    print(
        f"checked: the {len(session_rows)} session rows and {len(inventory_rows)} inventory rows "
        "are equal across the etree, typed and dict walks; every encoder's output decodes to "
        "the same dict"
    )
    return outputs


def bench_decode(report: Report, case: str, data: bytes, calls: int) -> None:
    walks = {
        "session": (etree_session, typed_session, dict_session),
        "inventory": (etree_inventory, typed_inventory, dict_inventory),
    }
    etree_walk, typed_walk, dict_walk = walks[case]
    size = len(data)
    t_etree = report.time(lambda: etree_walk(data), calls)
    t_typed = report.time(lambda: typed_walk(data), calls)
    t_dict = report.time(lambda: dict_walk(data), calls)
    report.case(
        f"decode {case}",
        fmt_size(size),
        ("etree", size, t_etree),
        [("typed", size, t_typed), ("dict", size, t_dict)],
    )


def bench_encode(
    report: Report, response: dict[str, Any], built: syncml.Message, outputs: dict[str, bytes]
) -> None:
    t_etree = report.time(lambda: etree_encode(response))
    t_from_dict = report.time(lambda: syncml.from_dict(response))
    t_typed = report.time(built.encode)
    t_wbxml = report.time(lambda: syncml.from_dict(response, wbxml=True))
    size, wbxml_size = len(outputs["from_dict"]), len(outputs["wbxml"])
    etree_size, typed_size = len(outputs["etree"]), len(outputs["typed encode"])
    report.case(
        "encode response",
        fmt_size(size),
        ("etree build+tostring", etree_size, t_etree),
        [
            ("from_dict", size, t_from_dict),
            ("typed encode", typed_size, t_typed),
            (f"wbxml ({fmt_size(wbxml_size)})", wbxml_size, t_wbxml),
        ],
    )
    # Like for like with a message built beforehand: serializing a tree built beforehand.
    tree = etree_tree(response)
    t_tostring = report.time(lambda: ET.tostring(tree))
    report.case(
        "  (info, not a target)",
        "",
        ("etree tostring of a prebuilt tree", etree_size, t_tostring),
        [("typed encode", typed_size, t_typed)],
        counted=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--number", type=int, help="calls per round for the session and the encode (500)"
    )
    parser.add_argument("--repeat", type=int, help="rounds per method, best is kept (7)")
    parser.add_argument("--apps", type=int, default=300, help="apps in the inventory")
    parser.add_argument("--commands", type=int, default=50, help="commands in the response")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --number 10 --repeat 1 unless given"
    )
    args = parser.parse_args()
    number = args.number if args.number is not None else (10 if args.quick else 500)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 7)
    if number < 1 or repeat < 1:
        parser.error("--number and --repeat must be at least 1")

    session = session_message()
    inventory = inventory_results(args.apps)
    response = response_commands(args.commands)
    built = syncml.message_from_dict(response)
    outputs = verify(session, inventory, response, built)

    print(
        f"python {sys.version.split()[0]}, {platform.machine()}, "
        f"best of {repeat} rounds of {number} calls (inventory: same bytes per round)"
    )
    report = Report(number, repeat)
    bench_decode(report, "session", session, number)
    bench_decode(report, "inventory", inventory, max(1, number * len(session) // len(inventory)))
    bench_encode(report, response, built, outputs)
    report.verdict()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
