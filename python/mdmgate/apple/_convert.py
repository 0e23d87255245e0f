"""Lenient conversion of device-sent dictionaries into msgspec Structs.

Known keys fill the Struct's fields (with msgspec's lax coercions: ``"12"`` reads as 12);
every other key goes to the Struct's ``extra``; a value that cannot be read as its field's
type is left out of the field, kept in ``extra`` and reported as a warning. Nothing raises.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from mdmgate import plist
from mdmgate.apple.errors import AppleDecodeError
from mdmgate.apple.schema import SchemaIssue

#: Encode names of the fields the models fill themselves, never from device keys (a
#: device key of the same name is kept in ``extra`` like any unknown key).
EXTRA = "__mdmgate_extra__"
RAW = "__mdmgate_raw__"
WARNINGS = "__mdmgate_warnings__"
REQUEST_TYPE = "__mdmgate_request_type__"
IDENTIFIER = "__mdmgate_identifier__"
RESERVED = frozenset((EXTRA, RAW, WARNINGS, REQUEST_TYPE, IDENTIFIER))

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


T = TypeVar("T", bound=msgspec.Struct)


def join(path: str, key: str) -> str:
    """``path.key``, or ``path["odd key"]`` for keys that are not plain names."""
    if _NAME.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[frozenset[str], tuple[tuple[str, str, Any], ...]]:
    """The device keys a Struct reads, and (key, attribute, type) for each of them."""
    read = tuple(
        (f.encode_name, f.name, f.type)
        for f in msgspec.structs.fields(cls)
        if f.encode_name not in RESERVED
    )
    return frozenset(key for key, _, _ in read), read


def unknown(cls: type[msgspec.Struct], data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` has no field for."""
    names = _fields(cls)[0]
    return {k: v for k, v in data.items() if k not in names}


def convert(cls: type[T], data: Mapping[str, Any], path: str, issues: list[SchemaIssue]) -> T:
    """``data`` as a ``cls``, leniently; problems are appended to ``issues``."""
    names, read = _fields(cls)
    extra = {k: v for k, v in data.items() if k not in names}
    try:
        clean = data if not extra else {k: v for k, v in data.items() if k in names}
        obj = msgspec.convert(clean, cls, strict=False)
    except msgspec.ValidationError:
        kwargs: dict[str, Any] = {}
        for key, attr, kind in read:
            if key not in data:
                continue
            try:
                kwargs[attr] = msgspec.convert(data[key], kind, strict=False)
            except msgspec.ValidationError as exc:
                where = join(path, key)
                issues.append(SchemaIssue(where, "type", f"unreadable, kept in extra: {exc}"))
                extra[key] = data[key]
        obj = cls(**kwargs)
    obj.extra = extra  # type: ignore[attr-defined]
    return obj


def convert_many(cls: type[T], items: list[Any], path: str, issues: list[SchemaIssue]) -> list[T]:
    """Each dictionary of ``items`` as a ``cls``; anything else is skipped with a warning.

    The common case, a clean list, is converted in one call."""
    try:
        objs = msgspec.convert(items, list[cls], strict=False)  # type: ignore[valid-type]
    except msgspec.ValidationError:
        out: list[T] = []
        for index, item in enumerate(items):
            where = f"{path}[{index}]"
            if isinstance(item, dict):
                out.append(convert(cls, item, where, issues))
            else:
                issues.append(SchemaIssue(where, "type", "expected a dictionary, skipped"))
        return out
    names = _fields(cls)[0]
    for obj, item in zip(objs, items, strict=True):
        # A set difference in C first: most items have no unknown keys at all.
        if not names.issuperset(item):
            obj.extra = {k: v for k, v in item.items() if k not in names}  # type: ignore[attr-defined]
    return objs


def merge(issues: list[SchemaIssue], more: list[SchemaIssue]) -> list[SchemaIssue]:
    """``issues`` plus those of ``more`` at a path ``issues`` does not mention yet."""
    seen = {issue.path for issue in issues}
    return issues + [issue for issue in more if issue.path not in seen]


def load_dict(data: bytes, what: str) -> dict[str, Any]:
    """A plist body whose top level must be a dictionary."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} body must be bytes, not {type(data).__name__}")
    try:
        value = plist.loads(bytes(data))
    except Exception as exc:  # the codec's own errors, whichever codec is in place
        raise AppleDecodeError(f"{what} is not a readable plist: {exc}") from exc
    if not isinstance(value, dict):
        raise AppleDecodeError(f"{what} is not a dictionary at the top level")
    return value
