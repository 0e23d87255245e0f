"""A second, deliberately plain SyncML XML decoder producing the dict of docs/syncml.md.

It is built on the standard library's ElementTree and shares nothing with the Rust codec, so
tests can decode the same bytes with both and compare the dicts.

Rules (docs/syncml.md, plus the points the document leaves open, decided here):

- Elements are matched on their local names; namespaces are ignored.
- Every leaf is a string, stripped of surrounding ASCII whitespace, except ``Data``, which keeps
  its text exactly. A present but empty leaf is ``""``.
- ``NoResp``, ``MoreData`` and ``Final`` are flags: present -> ``True``. ``Final`` is always in
  the result (``False`` when absent); ``NoResp`` and ``MoreData`` are left out when absent.
- ``Meta`` -> ``{child name: stripped text}``; a repeated child gives a list of strings; a child
  with element content gives that content as XML text. Containers (``Meta``, ``Target``, ``Item``
  ...) are always dicts, never ``""``.
- ``Data`` with element children -> the inner markup as a string. This module re-serialises it
  from the parsed tree, the codec keeps the bytes as written: compare such values with
  :func:`canonical_data` (or whole dicts with :func:`normalise_data`).
- ``DataAttrs`` (on ``Status`` and ``Item`` data): attributes in the Microsoft MDM namespace are
  ``msft:<local>``, unprefixed ones keep their name, others are ``{uri}local``.
- ``Item``, ``MapItem``, ``TargetRef`` and ``SourceRef`` are lists, left out when absent.
  ``Commands`` (``Atomic``/``Sequence``) and ``SyncBody`` are always lists.

The reference is stricter than a codec needs to be, so that a mistake in the test corpus shows
up: it raises ``ValueError`` for an unknown element outside ``Meta``/``Data``, a repeated
single-valued field, text in a container, nesting deeper than :data:`MAX_DEPTH`, any
``<!ENTITY``, a DOCTYPE internal subset, input that is not UTF-8 and anything expat rejects.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MSFT_NS",
    "canonical_data",
    "normalise_data",
    "reference_to_dict",
]

MSFT_NS = "http://schemas.microsoft.com/MobileDevice/MDM"
_XML_NS = "http://www.w3.org/XML/1998/namespace"

#: Element nesting the reference accepts. Real messages stay far below it: the deepest in the
#: corpus is SyncML/SyncBody/Atomic/Sequence/Exec/Item/Data/Application/Dependencies/Dependency.
MAX_DEPTH = 64

# Rust's `u8::is_ascii_whitespace`: no vertical tab.
_WS = " \t\n\r\x0c"

_FEED_CHUNK = 1 << 16

_COMMANDS = frozenset(
    {
        "Alert",
        "Add",
        "Replace",
        "Delete",
        "Copy",
        "Get",
        "Exec",
        "Atomic",
        "Sequence",
        "Results",
        "Status",
        "Map",
    }
)

# Field kinds.
_LEAF = "leaf"  # stripped text
_FLAG = "flag"  # present -> True
_REFS = "refs"  # list of stripped texts
_LOC = "loc"  # {"LocURI", "LocName"}
_META = "meta"
_DATA = "data"  # exact text or inner markup
_DATA_ATTRS = "data+attrs"  # as _DATA, plus DataAttrs next to it
_ITEMS = "items"
_MAPITEMS = "mapitems"
_CHAL = "chal"
_CRED = "cred"

_COMMON = {"CmdID": _LEAF, "NoResp": _FLAG, "Meta": _META}
_ITEM_ONLY = {"Item": _ITEMS}

_FIELDS: dict[str, dict[str, str]] = {
    "Alert": {"Data": _DATA, "Item": _ITEMS},
    "Add": _ITEM_ONLY,
    "Replace": _ITEM_ONLY,
    "Delete": _ITEM_ONLY,
    "Copy": _ITEM_ONLY,
    "Get": _ITEM_ONLY,
    "Exec": {"Item": _ITEMS, "Correlator": _LEAF},
    "Atomic": {},
    "Sequence": {},
    "Results": {
        "MsgRef": _LEAF,
        "CmdRef": _LEAF,
        "TargetRef": _REFS,
        "SourceRef": _REFS,
        "Item": _ITEMS,
    },
    "Status": {
        "MsgRef": _LEAF,
        "CmdRef": _LEAF,
        "Cmd": _LEAF,
        "TargetRef": _REFS,
        "SourceRef": _REFS,
        "Chal": _CHAL,
        "Data": _DATA_ATTRS,
        "Item": _ITEMS,
    },
    "Map": {"Target": _LOC, "Source": _LOC, "MapItem": _MAPITEMS},
}

_HDR_FIELDS = {
    "VerDTD": _LEAF,
    "VerProto": _LEAF,
    "SessionID": _LEAF,
    "MsgID": _LEAF,
    "Target": _LOC,
    "Source": _LOC,
    "RespURI": _LEAF,
    "NoResp": _FLAG,
    "Cred": _CRED,
    "Meta": _META,
}
_LOC_FIELDS = {"LocURI": _LEAF, "LocName": _LEAF}
_ITEM_FIELDS = {
    "Target": _LOC,
    "Source": _LOC,
    "Meta": _META,
    "Data": _DATA_ATTRS,
    "MoreData": _FLAG,
}
_MAPITEM_FIELDS = {"Target": _LOC, "Source": _LOC}
_CHAL_FIELDS = {"Meta": _META}
_CRED_FIELDS = {"Meta": _META, "Data": _DATA}

_XML_DECL_ENCODING = re.compile(rb"""^<\?xml[^>]*?\sencoding\s*=\s*["']([^"']*)["']""")


# --- public API --------------------------------------------------------------------------


def reference_to_dict(data: bytes) -> dict[str, Any]:
    """Decode one SyncML XML message into the dict of docs/syncml.md, or raise ValueError."""
    _refuse_dtd_tricks(data)
    root = _parse(data)
    if _local(root.tag) != "SyncML":
        raise ValueError(f"root element is <{_local(root.tag)}>, not <SyncML>")
    hdr: dict[str, Any] | None = None
    body: list[dict[str, Any]] | None = None
    final = False
    for name, child in _children(root):
        if name == "SyncHdr":
            if hdr is not None:
                raise ValueError("more than one <SyncHdr>")
            hdr = _fields(child, _HDR_FIELDS)
        elif name == "SyncBody":
            if body is not None:
                raise ValueError("more than one <SyncBody>")
            body, final = _sync_body(child)
        else:
            raise ValueError(f"unexpected <{name}> in <SyncML>")
    if hdr is None:
        raise ValueError("no <SyncHdr>")
    if body is None:
        raise ValueError("no <SyncBody>")
    return {"SyncHdr": hdr, "SyncBody": body, "Final": final}


def canonical_data(value: str) -> str:
    """Canonical XML (C14N 2.0) of a markup fragment, to compare inline-markup ``Data``.

    Namespace prefixes are rewritten, so ``<a xmlns="u"/>`` and ``<p:a xmlns:p="u"/>`` compare
    equal; comments are dropped; whitespace and attribute order are normalised by C14N.
    """
    return ET.canonicalize("<x>" + value + "</x>", rewrite_prefixes=True)


def normalise_data(msg: Any) -> Any:
    """A copy of a decoded message in which markup-looking strings are canonicalised.

    Every string under a ``Data`` key or inside a ``Meta`` object that contains ``<`` and parses
    as a fragment is replaced by :func:`canonical_data` of it; other values are unchanged.
    Apply it to both sides of a comparison (codec and reference).
    """
    return _normalise(msg, canonicalise=False)


# --- parsing -----------------------------------------------------------------------------


def _refuse_dtd_tricks(data: bytes) -> None:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise ValueError("not UTF-8 (UTF-16/32 or NUL bytes)")
    m = _XML_DECL_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf"))
    if m and m[1].lower() not in (b"utf-8", b"utf8"):
        raise ValueError(f"declared encoding {m[1]!r} is not UTF-8")
    if b"<!ENTITY" in data:
        raise ValueError("entity declarations are refused")
    for doctype in re.finditer(rb"<!DOCTYPE", data):
        quote: int | None = None
        for byte in data[doctype.end() :]:
            if quote is not None:
                if byte == quote:
                    quote = None
            elif byte in b"\"'":
                quote = byte
            elif byte == ord("["):
                raise ValueError("DOCTYPE internal subsets are refused")
            elif byte == ord(">"):
                break


def _parse(data: bytes) -> ET.Element:
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    depth = 0
    try:
        for offset in range(0, max(len(data), 1), _FEED_CHUNK):
            parser.feed(data[offset : offset + _FEED_CHUNK])
            for event in parser.read_events():
                kind, element = event[0], event[-1]
                if kind == "end":
                    depth -= 1
                    continue
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValueError(f"elements nested deeper than {MAX_DEPTH}")
                if root is None and isinstance(element, ET.Element):
                    root = element
        parser.close()
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
    if root is None:
        raise ValueError("no root element")
    return root


# --- the tree to the dict ----------------------------------------------------------------


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        uri, local = tag[1:].split("}", 1)
        return uri, local
    return "", tag


def _local(tag: str) -> str:
    return _split(tag)[1]


def _children(element: ET.Element) -> Iterator[tuple[str, ET.Element]]:
    """Child elements of a container, refusing text between them."""
    name = _local(element.tag)
    if (element.text or "").strip(_WS):
        raise ValueError(f"text inside container <{name}>")
    for child in element:
        if (child.tail or "").strip(_WS):
            raise ValueError(f"text inside container <{name}>")
        yield _local(child.tag), child


def _leaf(element: ET.Element) -> str:
    if len(element):
        raise ValueError(f"<{_local(element.tag)}> must not contain elements")
    return (element.text or "").strip(_WS)


def _data(element: ET.Element) -> str:
    if len(element):
        return _inner_markup(element)
    return element.text or ""


def _data_attrs(element: ET.Element) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for key, value in element.attrib.items():
        uri, local = _split(key)
        if not uri:
            attrs[local] = value
        elif uri == MSFT_NS:
            attrs[f"msft:{local}"] = value
        else:
            attrs[key] = value
    return attrs


def _meta(element: ET.Element) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for name, child in _children(element):
        value = _inner_markup(child) if len(child) else (child.text or "").strip(_WS)
        if name not in meta:
            meta[name] = value
        elif isinstance(meta[name], list):
            meta[name].append(value)
        else:
            meta[name] = [meta[name], value]
    return meta


def _fields(
    element: ET.Element,
    spec: dict[str, str],
    *,
    commands: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The fields of a container; nested commands go to `commands` when it is given."""
    out: dict[str, Any] = {}
    owner = _local(element.tag)
    for name, child in _children(element):
        kind = spec.get(name)
        if kind is None:
            if commands is None or name not in _COMMANDS:
                raise ValueError(f"unexpected <{name}> in <{owner}>")
            commands.append(_command(child))
        elif kind in _LIST_READERS:
            out.setdefault(name, []).append(_LIST_READERS[kind](child))
        elif name in out:
            raise ValueError(f"more than one <{name}> in <{owner}>")
        else:
            out[name] = _READERS[kind](child)
            if kind == _DATA_ATTRS and child.attrib:
                out["DataAttrs"] = _data_attrs(child)
    return out


def _reader(spec: dict[str, str]) -> Callable[[ET.Element], dict[str, Any]]:
    return lambda element: _fields(element, spec)


_READERS: dict[str, Callable[[ET.Element], Any]] = {
    _LEAF: _leaf,
    _FLAG: lambda _element: True,
    _LOC: _reader(_LOC_FIELDS),
    _META: _meta,
    _CHAL: _reader(_CHAL_FIELDS),
    _CRED: _reader(_CRED_FIELDS),
    _DATA: _data,
    _DATA_ATTRS: _data,
}
_LIST_READERS: dict[str, Callable[[ET.Element], Any]] = {
    _REFS: _leaf,
    _ITEMS: _reader(_ITEM_FIELDS),
    _MAPITEMS: _reader(_MAPITEM_FIELDS),
}


def _command(element: ET.Element) -> dict[str, Any]:
    name = _local(element.tag)
    if name not in _COMMANDS:
        raise ValueError(f"unknown command <{name}>")
    if name in ("Atomic", "Sequence"):
        commands: list[dict[str, Any]] = []
        fields = _fields(element, _COMMON, commands=commands)
        fields["Commands"] = commands
        return {name: fields}
    return {name: _fields(element, {**_COMMON, **_FIELDS[name]})}


def _sync_body(element: ET.Element) -> tuple[list[dict[str, Any]], bool]:
    commands: list[dict[str, Any]] = []
    final = False
    for name, child in _children(element):
        if name == "Final":
            if final:
                raise ValueError("more than one <Final>")
            final = True
        else:
            commands.append(_command(child))
    return commands, final


# --- inner markup of Data ----------------------------------------------------------------


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(text: str) -> str:
    return (
        _escape_text(text)
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _inner_markup(element: ET.Element) -> str:
    uri, _ = _split(element.tag)
    parts = [_escape_text(element.text or "")]
    for child in element:
        _serialise(child, uri, parts)
        parts.append(_escape_text(child.tail or ""))
    return "".join(parts)


def _serialise(element: ET.Element, parent_uri: str, parts: list[str]) -> None:
    uri, local = _split(element.tag)
    parts.append("<" + local)
    if uri != parent_uri:
        parts.append(f' xmlns="{_escape_attr(uri)}"')
    declared: dict[str, str] = {}
    for key, value in element.attrib.items():
        attr_uri, attr_local = _split(key)
        if not attr_uri:
            name = attr_local
        elif attr_uri == _XML_NS:
            name = f"xml:{attr_local}"
        else:
            if attr_uri not in declared:
                declared[attr_uri] = f"a{len(declared)}"
                parts.append(f' xmlns:{declared[attr_uri]}="{_escape_attr(attr_uri)}"')
            name = f"{declared[attr_uri]}:{attr_local}"
        parts.append(f' {name}="{_escape_attr(value)}"')
    if not len(element) and not element.text:
        parts.append("/>")
        return
    parts.append(">" + _escape_text(element.text or ""))
    for child in element:
        _serialise(child, uri, parts)
        parts.append(_escape_text(child.tail or ""))
    parts.append(f"</{local}>")


# --- comparison helper -------------------------------------------------------------------


def _normalise(value: Any, *, canonicalise: bool) -> Any:
    if isinstance(value, dict):
        return {
            key: _normalise(item, canonicalise=canonicalise or key in ("Data", "Meta"))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_normalise(item, canonicalise=canonicalise) for item in value]
    if canonicalise and isinstance(value, str) and "<" in value:
        try:
            return canonical_data(value)
        except ET.ParseError:
            return value
    return value
