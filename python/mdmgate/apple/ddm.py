"""Declarative device management: declarations, their combination, and software-update
enforcement (requirements §C).

Everything here is pure: no I/O, no clock, no async.

* :func:`declaration` builds a :class:`Declaration` whose ``ServerToken`` is derived from
  its content (SHA-256 of the canonical JSON of type, identifier and payload): equal
  content gives an equal token, any change gives a new one, so a device re-fetches a
  declaration exactly when it changed.
* :func:`validate` checks a payload against Apple's schema facts
  (:func:`mdmgate.apple.schema.facts`) and raises :class:`DeclarationError` naming the
  first offending key as a dotted path (``Deferrals.CombinedPeriodInDays``,
  ``Beta.OfferPrograms[0].Token``). The one rule beyond the facts is the format of
  ``TargetLocalDateTime`` (``YYYY-MM-DDTHH:MM:SS``, no offset), which the facts only type
  as a string; see :data:`FORMATS`.
* :func:`effective_settings` combines a device's ``softwareupdate.settings`` declarations
  key by key with each key's ``combinetype`` from the facts (:data:`COMBINE_TYPES`).
  **Order matters only for** ``first``: the declarations are taken in the order given,
  which callers must make the order the declarations were assigned to the device
  (oldest assignment first). Every other combine type gives the same value in any order.
* :func:`pending_enforcements` / :func:`active_enforcement` decide which
  ``softwareupdate.enforcement.specific`` declaration a device processes now: targets at
  or below its OS version are ignored, the newer ones queue by earliest
  ``TargetLocalDateTime`` (ties: lower target version, then identifier). After an update,
  call again with the new OS version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from mdmgate import versions
from mdmgate.apple import schema
from mdmgate.errors import InvalidVersion, MdmgateError, UnknownPlatform

__all__ = [
    "COMBINE_TYPES",
    "ENFORCEMENT_TYPE",
    "FORMATS",
    "SETTINGS_TYPE",
    "CombineError",
    "Contribution",
    "Declaration",
    "DeclarationError",
    "Enforcement",
    "active_enforcement",
    "combine",
    "combine_keys",
    "declaration",
    "effective_settings",
    "parse_local_datetime",
    "pending_enforcements",
    "server_token",
    "validate",
]

SETTINGS_TYPE: Final = "com.apple.configuration.softwareupdate.settings"
ENFORCEMENT_TYPE: Final = "com.apple.configuration.softwareupdate.enforcement.specific"

#: Platforms (mdmgate names) the enforcement declaration exists on.
_ENFORCEMENT_PLATFORMS: Final = ("ios", "ipados", "macos")


class DeclarationError(MdmgateError, ValueError):
    """A declaration breaks the schema facts (or cannot be used as asked).

    ``key`` is the dotted path of the first problem inside the payload
    (``Deferrals.CombinedPeriodInDays``), ``Type`` / ``Identifier`` for the envelope, or
    ``""`` when the whole payload is concerned.
    """

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.message = message
        self.key = key

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[DeclarationError], tuple[str, str]]:
        return (type(self), (self.message, self.key))


class CombineError(DeclarationError):
    """The facts give a key of a combined declaration a ``combinetype`` this module does
    not implement (or none at all): merging it would be a guess, so it is refused."""


# --- declarations and their tokens ------------------------------------------------------


class Declaration(msgspec.Struct, frozen=True, rename="pascal"):
    """One declaration as the device receives it; ``msgspec.json.encode`` gives Apple's
    ``{"Type", "Identifier", "Payload", "ServerToken"}`` object. Build it with
    :func:`declaration` so that the token matches the content."""

    type: str
    identifier: str
    payload: dict[str, Any]
    server_token: str


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def server_token(type: str, identifier: str, payload: Mapping[str, Any]) -> str:
    """The content token: hex SHA-256 of the canonical JSON (sorted keys, no spaces,
    UTF-8) of ``{"Identifier", "Payload", "Type"}``. Raises :class:`DeclarationError`
    when the payload is not JSON (sets, bytes, NaN, non-string keys...)."""
    try:
        body = _canonical({"Type": type, "Identifier": identifier, "Payload": dict(payload)})
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"payload is not JSON: {exc}", "") from None
    return hashlib.sha256(body).hexdigest()


def declaration(type: str, identifier: str, payload: Mapping[str, Any]) -> Declaration:
    """A declaration with its ``ServerToken`` computed from the content.

    The payload is stored as a JSON copy (tuples become lists), so later changes to the
    caller's dictionary cannot desynchronise it from its token. Not validated: see
    :func:`validate`.
    """
    if not type:
        raise DeclarationError("declaration type is empty", "Type")
    if not identifier:
        raise DeclarationError("declaration identifier is empty", "Identifier")
    token = server_token(type, identifier, payload)
    copy: dict[str, Any] = json.loads(_canonical(dict(payload)))
    return Declaration(type, identifier, copy, token)


# --- validation -------------------------------------------------------------------------

_LOCAL_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\Z")


def parse_local_datetime(text: str) -> dt.datetime:
    """``YYYY-MM-DDTHH:MM:SS`` (RFC 3339 without fraction or offset) as a naive datetime;
    ``ValueError`` for anything else, including impossible dates."""
    if not _LOCAL_DATETIME.match(text):
        raise ValueError(f"{text!r} is not YYYY-MM-DDTHH:MM:SS")
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")


def _check_local_datetime(value: Any) -> str | None:
    if not isinstance(value, str):
        return None  # the type check reports it
    try:
        parse_local_datetime(value)
    except ValueError as exc:
        return f"{exc} (a local date and time without offset)"
    return None


#: Value formats the facts do not carry (they type these keys as plain strings):
#: (declaration type, dotted key) -> check returning a problem or ``None``.
FORMATS: Final[Mapping[tuple[str, str], Callable[[Any], str | None]]] = {
    (ENFORCEMENT_TYPE, "TargetLocalDateTime"): _check_local_datetime,
}


def _specs(declaration_type: str) -> schema.SchemaFile:
    item = schema.facts().declarations.get(declaration_type)
    if item is None:
        raise DeclarationError(f"unknown declaration type {declaration_type!r}", "Type")
    return item


def _lookup(payload: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(decl: Declaration) -> None:
    """Raises :class:`DeclarationError` for the first problem of ``decl`` against the
    facts: unknown key, wrong type, number out of range, value not in the allowed list,
    missing required key, or a value of the wrong format (:data:`FORMATS`). Also refuses
    a ``ServerToken`` that does not match the content."""
    item = _specs(decl.type)
    issues = [
        issue
        for issue in schema.check_keys(item.payloadkeys, decl.payload, strict=True)
        # Declarations travel as JSON: the plist-only encoding limits do not apply.
        if issue.code != schema.ENCODING
    ]
    if issues:
        first = issues[0]
        raise DeclarationError(f"{decl.type} {decl.identifier!r}: {first}", first.path)
    for (kind, key), check in FORMATS.items():
        if kind != decl.type:
            continue
        present, value = _lookup(decl.payload, key)
        problem = check(value) if present else None
        if problem is not None:
            raise DeclarationError(f"{decl.type} {decl.identifier!r}: {key}: {problem}", key)
    if decl.server_token != server_token(decl.type, decl.identifier, decl.payload):
        raise DeclarationError(
            f"{decl.type} {decl.identifier!r}: ServerToken does not match the content",
            "ServerToken",
        )


# --- combining --------------------------------------------------------------------------


class Contribution(msgspec.Struct, frozen=True):
    """The effective value of one key, and the identifiers of the declarations that
    decided it (in the order given)."""

    value: Any
    declarations: tuple[str, ...]


_Values = Sequence[tuple[str, Any]]  # (declaration identifier, value) in the given order


def _and(values: _Values, spec: schema.KeySpec) -> Contribution:
    result = all(v for _, v in values)
    return Contribution(result, tuple(i for i, v in values if result or not v))


def _or(values: _Values, spec: schema.KeySpec) -> Contribution:
    result = any(v for _, v in values)
    return Contribution(result, tuple(i for i, v in values if not result or v))


def _extreme(
    pick: Callable[[Iterable[Any]], Any],
) -> Callable[[_Values, schema.KeySpec], Contribution]:
    def run(values: _Values, spec: schema.KeySpec) -> Contribution:
        best = pick(v for _, v in values)
        return Contribution(best, tuple(i for i, v in values if v == best))

    return run


def _enum_last(values: _Values, spec: schema.KeySpec) -> Contribution:
    order = list(spec.rangelist or ())
    for ident, value in values:
        if value not in order:
            raise DeclarationError(f"{ident!r}: {value!r} is not one of {order}", spec.key)
    best = max((v for _, v in values), key=order.index)
    return Contribution(best, tuple(i for i, v in values if v == best))


def _union(values: _Values, spec: schema.KeySpec) -> Contribution:
    seen: set[bytes] = set()
    items: list[Any] = []
    for _, value in values:
        for element in value:
            mark = _canonical(element)
            if mark not in seen:
                seen.add(mark)
                items.append(element)
    return Contribution(items, tuple(i for i, v in values if v))


def _first(values: _Values, spec: schema.KeySpec) -> Contribution:
    ident, value = values[0]
    return Contribution(value, (ident,))


#: The ``combinetype`` values this module implements, and how:
#:
#: * ``boolean-and``: False if any says False (those decide), else True (all decide);
#: * ``boolean-or``: True if any says True (those decide), else False (all decide);
#: * ``number-max`` / ``number-min``: the largest / smallest (those that set it decide);
#: * ``enum-last``: the value latest in the key's ``rangelist`` (those that set it);
#: * ``set-union``: the distinct items of all arrays, by first appearance (the
#:   declarations with a non-empty array decide);
#: * ``first``: the value of the first declaration in the given (assignment) order.
COMBINE_TYPES: Final[Mapping[str, Callable[[_Values, schema.KeySpec], Contribution]]] = {
    "boolean-and": _and,
    "boolean-or": _or,
    "number-max": _extreme(max),
    "number-min": _extreme(min),
    "enum-last": _enum_last,
    "set-union": _union,
    "first": _first,
}


def _leaves(specs: Iterable[schema.KeySpec], prefix: str = "") -> dict[str, schema.KeySpec]:
    found: dict[str, schema.KeySpec] = {}
    for spec in specs:
        path = f"{prefix}{spec.key}"
        if spec.combinetype is None:
            if spec.type == "<dictionary>" and spec.subkeys:
                found.update(_leaves(spec.subkeys, f"{path}."))
                continue
            raise CombineError(f"{path} has no combinetype: it cannot be combined", path)
        if spec.combinetype not in COMBINE_TYPES:
            raise CombineError(
                f"{path}: combinetype {spec.combinetype!r} is not implemented "
                f"(known: {', '.join(sorted(COMBINE_TYPES))})",
                path,
            )
        found[path] = spec
    return found


def combine_keys(declaration_type: str) -> dict[str, schema.KeySpec]:
    """The combinable keys of a declaration type, by dotted path, each with its facts.
    Raises :class:`CombineError` for a key whose ``combinetype`` is missing or unknown,
    and :class:`DeclarationError` for a type the facts do not have."""
    return _leaves(_specs(declaration_type).payloadkeys)


def combine(declaration_type: str, decls: Sequence[Declaration]) -> dict[str, Contribution]:
    """The effective value of every key that at least one of ``decls`` (those of
    ``declaration_type``; others are skipped) sets. Keys no declaration sets are absent:
    the device's default applies. Each declaration is validated first; ``decls`` is in
    assignment order (it matters for ``first`` only)."""
    leaves = combine_keys(declaration_type)
    mine = [d for d in decls if d.type == declaration_type]
    seen: set[str] = set()
    for decl in mine:
        if decl.identifier in seen:
            raise DeclarationError(f"two declarations are named {decl.identifier!r}", "Identifier")
        seen.add(decl.identifier)
        validate(decl)
    result: dict[str, Contribution] = {}
    for path, spec in leaves.items():
        values: list[tuple[str, Any]] = []
        for decl in mine:
            present, value = _lookup(decl.payload, path)
            if present:
                values.append((decl.identifier, value))
        if values:
            assert spec.combinetype is not None
            result[path] = COMBINE_TYPES[spec.combinetype](values, spec)
    return result


def effective_settings(decls: Sequence[Declaration]) -> dict[str, Contribution]:
    """:func:`combine` for ``com.apple.configuration.softwareupdate.settings``: ``decls``
    are all the device's declarations in assignment order (other types are skipped)."""
    return combine(SETTINGS_TYPE, decls)


# --- enforcement ------------------------------------------------------------------------


class Enforcement(msgspec.Struct, frozen=True):
    """One ``softwareupdate.enforcement.specific`` declaration, read."""

    declaration: str
    target_os_version: str
    target_build_version: str | None
    target_local_datetime: dt.datetime
    details_url: str | None


def _enforcement(decl: Declaration) -> Enforcement:
    validate(decl)
    payload = decl.payload
    return Enforcement(
        declaration=decl.identifier,
        target_os_version=payload["TargetOSVersion"],
        target_build_version=payload.get("TargetBuildVersion"),
        target_local_datetime=parse_local_datetime(payload["TargetLocalDateTime"]),
        details_url=payload.get("DetailsURL"),
    )


def pending_enforcements(
    decls: Sequence[Declaration], *, os_version: str, platform: str
) -> list[Enforcement]:
    """The enforcement declarations among ``decls`` a device on ``os_version`` still has
    to process, first to be processed first.

    Targets at or below ``os_version`` (ordered as :func:`mdmgate.versions.compare` does
    for ``platform``: ``ios``, ``ipados`` or ``macos``) are ignored. The rest are ordered
    by ``TargetLocalDateTime``, then target version (lower first), then identifier.
    Target builds are not compared: the device's build is not an input here.
    """
    if platform not in _ENFORCEMENT_PLATFORMS:
        raise UnknownPlatform(
            f"software-update enforcement exists on {', '.join(_ENFORCEMENT_PLATFORMS)}, "
            f"not {platform!r}"
        )
    versions.sort_key(os_version, platform=platform)  # InvalidVersion for the device's
    pending: list[tuple[dt.datetime, bytes, str, Enforcement]] = []
    for decl in decls:
        if decl.type != ENFORCEMENT_TYPE:
            continue
        item = _enforcement(decl)
        try:
            key = versions.sort_key(item.target_os_version, platform=platform)
        except InvalidVersion as exc:
            raise DeclarationError(
                f"{decl.identifier!r}: TargetOSVersion: {exc}", "TargetOSVersion"
            ) from None
        if versions.compare(item.target_os_version, os_version, platform=platform) > 0:
            pending.append((item.target_local_datetime, key, item.declaration, item))
    pending.sort(key=lambda row: row[:3])
    return [row[3] for row in pending]


def active_enforcement(
    decls: Sequence[Declaration], *, os_version: str, platform: str
) -> Enforcement | None:
    """The enforcement the device processes now (the head of
    :func:`pending_enforcements`), or ``None`` when nothing is newer than ``os_version``."""
    pending = pending_enforcements(decls, os_version=os_version, platform=platform)
    return pending[0] if pending else None
