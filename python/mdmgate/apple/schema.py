"""Apple's device-management schema facts, and a validator over them.

The facts (``data/apple-device-management-facts.json``, shipped with the package beside its
licence) are a digest of Apple's ``apple/device-management`` repository: for every MDM
command (by ``RequestType``), check-in message (by ``MessageType``) and declaration, the
keys with their type, presence, allowed values (``rangelist``), numeric ``range``, nested
``subkeys`` and per-OS support. The file is used whole; nothing is trimmed.

How the validator reads the facts:

* Types: ``<string>`` str, ``<integer>`` int (not bool), ``<real>`` float (a device may
  also send an integer), ``<boolean>`` bool, ``<date>`` datetime, ``<data>`` bytes,
  ``<array>`` list or tuple, ``<dictionary>`` dict, ``<any>`` any plist value.
* A dictionary's ``subkeys`` are its keys; one named ``ANY…`` stands for every other key.
  A dictionary without subkeys takes any keys. Keys without a presence are optional.
* An array's single subkey describes every item. Several subkeys (``Settings``) are the
  kinds of item it may hold, told apart by their ``Item`` value. ``repetition`` on the
  item bounds the number of items.
* A ``<string>`` with subkeys (``DeviceInformation`` ``Queries``) takes the subkeys' names
  as its allowed values.
* ``supportedOS``: a key marked ``"introduced": "n/a"`` for an OS is not supported there,
  and ``devicechannel``/``userchannel: false`` rules it out on that channel. These checks
  need the platform (and channel) to be known; without it they are skipped, and a required
  key that only some platforms or channels have is not required.
* OS versions: given the device's ``os_version`` (and platform), a required key is not
  required before the version that ``introduced`` it on that OS, nor from the version that
  ``removed`` it (an iOS 11 device sends no ``IsSecurityResponse``, introduced in iOS 16.2).
  A key without version data for the OS, or an ``os_version`` that does not start with a
  dotted number, is required as the facts say. A key present on an OS older than its
  ``introduced`` is not a problem (``deprecated`` is not one either).

Strict mode (commands the gateway generates) raises
:class:`~mdmgate.apple.errors.CommandValidationError` listing every problem, and also
refuses unknown keys and values a plist cannot carry exactly. Lenient mode (what devices
send) returns the problems as :class:`SchemaIssue` warnings and never raises.

Where real devices need values the schema leaves out, :data:`ERRATA` says so, one commented
entry per deviation.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import msgspec

from mdmgate.apple.errors import CommandValidationError
from mdmgate.errors import UnknownPlatform

__all__ = [
    "CHECKIN",
    "COMMAND",
    "ERRATA",
    "FACTS_LICENSE_RESOURCE",
    "FACTS_RESOURCE",
    "PLATFORM_OS",
    "RESPONSE",
    "TYPES",
    "Channel",
    "Erratum",
    "Facts",
    "KeySpec",
    "Range",
    "SchemaFile",
    "SchemaIssue",
    "check_command",
    "check_keys",
    "facts",
    "facts_os",
    "raise_for_issues",
    "validate_checkin",
    "validate_command",
    "validate_declaration",
    "validate_response",
]

#: The facts file and its licence, inside the ``mdmgate.apple.data`` package directory.
FACTS_RESOURCE: Final = "apple-device-management-facts.json"
FACTS_LICENSE_RESOURCE: Final = "apple-device-management-LICENSE.txt"

#: The value types the facts use.
TYPES: Final = (
    "<string>",
    "<integer>",
    "<real>",
    "<boolean>",
    "<date>",
    "<data>",
    "<array>",
    "<dictionary>",
    "<any>",
)

#: mdmgate platform names (as in :mod:`mdmgate.versions`) to the OS names of the facts.
PLATFORM_OS: Final[Mapping[str, str]] = {
    "ios": "iOS",
    "ipados": "iOS",
    "macos": "macOS",
    "tvos": "tvOS",
    "visionos": "visionOS",
    "watchos": "watchOS",
}

#: macOS has a device channel and a user channel; the facts rule some keys out on one.
Channel = Literal["device", "user"]

COMMAND: Final = "command"
RESPONSE: Final = "response"
CHECKIN: Final = "checkin"
DECLARATION: Final = "declaration"

# Issue codes.
TYPE: Final = "type"  # wrong value type
MISSING: Final = "missing"  # a required key is absent
UNKNOWN_KEY: Final = "unknown-key"  # a key the schema does not have (strict mode only)
VALUE: Final = "value"  # not one of the allowed values
RANGE: Final = "range"  # outside the schema's min/max (or a plist integer's range)
COUNT: Final = "count"  # wrong number of array items
PLATFORM: Final = "platform"  # the key is not supported on the given platform/channel
ENCODING: Final = "encoding"  # a plist cannot carry the value exactly (strict mode only)
RULE: Final = "rule"  # a builder's own rule, beyond the schema


class SchemaIssue(msgspec.Struct, frozen=True):
    """One problem found by the validator: where, what kind (``code``), and a sentence."""

    path: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# --- the facts file ---------------------------------------------------------------------


class Range(msgspec.Struct, frozen=True):
    min: float | None = None
    max: float | None = None


class KeySpec(msgspec.Struct, frozen=True):
    """One key of the facts, as written there."""

    key: str
    type: str
    presence: str = "optional"
    rangelist: tuple[Any, ...] | None = None
    range: Range | None = None
    repetition: Range | None = None
    default: Any = None
    supported_os: dict[str, dict[str, Any]] = msgspec.field(
        default_factory=dict, name="supportedOS"
    )
    subkeys: tuple[KeySpec, ...] = ()
    subkeytype: str | None = None
    combinetype: str | None = None


class SchemaFile(msgspec.Struct, frozen=True):
    """One file of the facts: a command, a check-in message, a declaration or a status
    item. ``requesttype`` holds the ``RequestType`` of commands and the ``MessageType``
    of check-in messages."""

    payloadkeys: tuple[KeySpec, ...] = ()
    responsekeys: tuple[KeySpec, ...] = ()
    requesttype: str | None = None
    declarationtype: str | None = None
    statusitemtype: str | None = None
    apply: str | None = None
    supported_os: dict[str, dict[str, Any]] = msgspec.field(
        default_factory=dict, name="supportedOS"
    )


class _FactsFile(msgspec.Struct, frozen=True):
    source: str
    files: dict[str, SchemaFile]


class Facts:
    """The facts file, indexed: ``commands`` by RequestType, ``checkins`` by MessageType,
    ``declarations`` by declaration type. ``source`` names the upstream revision."""

    __slots__ = ("checkins", "commands", "declarations", "files", "source")

    def __init__(self, source: str, files: Mapping[str, SchemaFile]) -> None:
        self.source = source
        self.files = dict(files)
        self.commands: dict[str, SchemaFile] = {}
        self.checkins: dict[str, SchemaFile] = {}
        self.declarations: dict[str, SchemaFile] = {}
        for path, item in self.files.items():
            if item.requesttype is not None and path.startswith("mdm/commands/"):
                self.commands[item.requesttype] = item
            elif item.requesttype is not None and path.startswith("mdm/checkin/"):
                self.checkins[item.requesttype] = item
            elif item.declarationtype is not None:
                self.declarations[item.declarationtype] = item


@functools.cache
def facts() -> Facts:
    """The facts shipped with the package (read once, on first use)."""
    data = importlib.resources.files("mdmgate.apple").joinpath("data", FACTS_RESOURCE)
    raw = msgspec.json.decode(data.read_bytes(), type=_FactsFile)
    return Facts(raw.source, raw.files)


def facts_os(platform: str | None) -> str | None:
    """The facts' OS name for an mdmgate platform name (``ios`` -> ``iOS``); ``None``
    stays ``None``. Unknown names raise :class:`~mdmgate.errors.UnknownPlatform`."""
    if platform is None:
        return None
    try:
        return PLATFORM_OS[platform]
    except KeyError:
        known = ", ".join(sorted(PLATFORM_OS))
        raise UnknownPlatform(f"unknown Apple platform {platform!r} (one of {known})") from None


# --- errata -----------------------------------------------------------------------------


class Erratum(msgspec.Struct, frozen=True):
    """A deliberate deviation from the facts.

    ``scope`` is ``command`` (what the gateway sends), ``response`` (command results from
    devices) or ``checkin``; ``name`` the RequestType or MessageType (``*``: all of the
    scope); ``path`` the key, as names joined by ``.``, with ``[]`` for array items and
    ``*`` for ``ANY`` keys (``""``: the top level); ``kind``:

    * ``allow-values``: ``values`` are accepted besides the schema's allowed values;
    * ``optional``: the key is optional although the schema says required;
    * ``one-of``: of the keys in ``values`` (children of ``path``), at least one must be
      present, though the schema requires each (applied to the messages whose schema has
      any of them);
    * ``allow-type``: values of the facts types in ``values`` (``"<integer>"``…) are
      accepted besides the schema's type (and not checked further);
    * ``introduced``: ``values`` are ``(facts OS name, version)`` pairs dating a key the
      facts give no version for on that OS: before it, the key is not required.

    ``platforms`` (facts OS names) limits an entry to those OSes; when the platform is not
    known, the entry applies.
    """

    scope: str
    name: str
    path: str
    kind: Literal["allow-values", "optional", "one-of", "allow-type", "introduced"]
    values: tuple[Any, ...] = ()
    platforms: tuple[str, ...] = ()
    reason: str = ""


ERRATA: Final[tuple[Erratum, ...]] = (
    # ManagementFlags is a bitwise OR of 1 (remove the app with the MDM profile) and 4
    # (prevent backup of its data). The facts' rangelist is [1, 4, 5]: it leaves out 0, "no
    # flags", which macOS devices need for apps that must stay installed when management
    # ends (issue 4's field report). Other platforms keep the schema's list.
    Erratum(
        COMMAND,
        "InstallApplication",
        "ManagementFlags",
        "allow-values",
        (0,),
        platforms=("macOS",),
        reason="0 (no flags) is a valid bitmask macOS devices need; the rangelist omits it",
    ),
    # DeviceInformation: the facts list SIMMCC and SIMMNC among the QueryResponses keys
    # but leave them out of the Queries names; a query is the name of the response key.
    Erratum(
        COMMAND,
        "DeviceInformation",
        "Queries[]",
        "allow-values",
        ("SIMMCC", "SIMMNC"),
        reason="QueryResponses keys missing from the Queries list",
    ),
    # CheckOut, TokenUpdate, DeclarativeManagement and GetToken mark both UDID and
    # EnrollmentID required. A device sends UDID (device enrollment) or EnrollmentID (User
    # Enrollment), never needs both; one of them identifies it.
    Erratum(
        CHECKIN,
        "*",
        "",
        "one-of",
        ("UDID", "EnrollmentID"),
        reason="devices send UDID or EnrollmentID, not both",
    ),
    # TokenUpdate, DeclarativeManagement and GetToken mark EnrollmentUserID required on
    # macOS user channels, but only User Enrollment has it (beside EnrollmentID); the user
    # channel of a device enrollment names its user with UserID instead.
    Erratum(
        CHECKIN,
        "*",
        "EnrollmentUserID",
        "optional",
        reason="User Enrollment only; device enrollments send UserID",
    ),
    # ManagedApplicationList marks every key of an app required. UnusedRedemptionCode only
    # exists while a paid app's redemption code is unused, and ExternalVersionIdentifier
    # only for App Store apps (enterprise and custom apps have no store version).
    Erratum(
        RESPONSE,
        "ManagedApplicationList",
        "ManagedApplicationList.*.UnusedRedemptionCode",
        "optional",
        reason="present only while a redemption code is unused",
    ),
    Erratum(
        RESPONSE,
        "ManagedApplicationList",
        "ManagedApplicationList.*.ExternalVersionIdentifier",
        "optional",
        reason="App Store apps only",
    ),
    # AvailableOSUpdates marks Build (and, on iOS, DownloadSize) required without saying
    # since when; devices on iOS 11 and macOS 10.13 answer without them (issue 14's
    # captures), so they are required only from the next major release on.
    Erratum(
        RESPONSE,
        "AvailableOSUpdates",
        "AvailableOSUpdates[].Build",
        "introduced",
        (("iOS", "12.0"), ("macOS", "10.14"), ("tvOS", "12.0")),
        reason="iOS 11 and macOS 10.13 devices do not send it",
    ),
    Erratum(
        RESPONSE,
        "AvailableOSUpdates",
        "AvailableOSUpdates[].DownloadSize",
        "introduced",
        (("iOS", "12.0"),),
        reason="iOS 11 devices do not send it (macOS: the facts date it 10.12)",
    ),
    # DeviceInformation's OSUpdateSettings.PreviousScanResult is a <string> in the facts;
    # macOS sends the result code as an integer (0 for success).
    Erratum(
        RESPONSE,
        "DeviceInformation",
        "QueryResponses.OSUpdateSettings.PreviousScanResult",
        "allow-type",
        ("<integer>",),
        platforms=("macOS",),
        reason="macOS sends an integer result code",
    ),
)


_DESCRIPTIONS: Final[tuple[tuple[type | tuple[type, ...], str], ...]] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a real"),
    (str, "a string"),
    ((bytes, bytearray), "data"),
    (dt.datetime, "a date"),
    ((list, tuple), "an array"),
    (dict, "a dictionary"),
)


def _describe(value: Any) -> str:
    for kind, text in _DESCRIPTIONS:
        if isinstance(value, kind):
            return text
    return f"a {type(value).__name__}"


def _is_integer(value: Any, strict: bool) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any, strict: bool) -> bool:
    # A device may send an integer where a real is due; what the gateway sends is exact.
    return isinstance(value, float) or (not strict and _is_integer(value, strict))


#: For each type of the facts (but <any>): the check, and the name used in messages.
_TYPE_CHECKS: Final[dict[str, tuple[Callable[[Any, bool], bool], str]]] = {
    "<string>": (lambda v, _: isinstance(v, str), "a string"),
    "<integer>": (_is_integer, "an integer"),
    "<real>": (_is_real, "a real"),
    "<boolean>": (lambda v, _: isinstance(v, bool), "a boolean"),
    "<date>": (lambda v, _: isinstance(v, dt.datetime), "a date"),
    "<data>": (lambda v, _: isinstance(v, bytes | bytearray), "data (bytes)"),
    "<array>": (lambda v, _: isinstance(v, list | tuple), "an array"),
    "<dictionary>": (lambda v, _: isinstance(v, dict), "a dictionary"),
}


# --- compiled schema nodes --------------------------------------------------------------


class _Node:
    """A key of the facts, prepared for validation (with its errata applied)."""

    __slots__ = (
        "accepts",
        "any_child",
        "bare",
        "children",
        "conditional",
        "count",
        "discriminator",
        "expected",
        "extra_types",
        "extra_values",
        "items",
        "key",
        "limited",
        "maximum",
        "minimum",
        "one_of",
        "quick",
        "rangelist",
        "required",
        "required_names",
        "supported_os",
        "type",
        "versioned",
    )

    key: str
    type: str
    accepts: Callable[[Any, bool], bool] | None
    expected: str
    bare: bool
    quick: Callable[[Any, bool], bool] | None
    #: The OSes whose facts rule the key out (``n/a``, or on a channel): the only ones
    #: where its platform support needs a look.
    limited: frozenset[str]
    required: bool
    required_names: tuple[str, ...]
    conditional: bool
    rangelist: tuple[Any, ...] | None
    extra_values: tuple[tuple[tuple[Any, ...], tuple[str, ...]], ...]
    #: ``allow-type`` errata: the checks of the other types accepted, and on which OSes.
    extra_types: tuple[tuple[tuple[Callable[[Any, bool], bool], ...], tuple[str, ...]], ...]
    #: Whether some OS has version data (introduced/removed) for the key.
    versioned: bool
    minimum: float | None
    maximum: float | None
    count: Range | None
    supported_os: dict[str, dict[str, Any]]
    children: dict[str, _Node] | None
    any_child: _Node | None
    items: tuple[_Node, ...]
    discriminator: dict[Any, _Node]
    one_of: tuple[tuple[str, ...], ...]


def _conditional(supported_os: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a key exists only on some platforms or channels."""
    return any(
        entry.get("introduced") == "n/a"
        or entry.get("devicechannel") is False
        or entry.get("userchannel") is False
        for entry in supported_os.values()
    )


def _compile(
    specs: Iterable[KeySpec], errata: Mapping[str, list[Erratum]], prefix: str = ""
) -> _Node:
    """A dictionary node whose keys are ``specs``."""
    root = _Node()
    root.key = ""
    root.type = "<dictionary>"
    root.accepts, root.expected = _TYPE_CHECKS["<dictionary>"]
    root.bare = False
    root.quick = None
    root.limited = frozenset()
    root.required = False
    root.conditional = False
    root.rangelist = None
    root.extra_values = ()
    root.extra_types = ()
    root.versioned = False
    root.minimum = root.maximum = None
    root.count = None
    root.supported_os = {}
    root.items = ()
    root.discriminator = {}
    _fill_children(root, tuple(specs), errata, prefix)
    return root


def _fill_children(
    node: _Node, subkeys: tuple[KeySpec, ...], errata: Mapping[str, list[Erratum]], path: str
) -> None:
    node.children = {}
    node.any_child = None
    for sub in subkeys:
        if sub.key.startswith("ANY"):
            node.any_child = _compile_key(sub, errata, f"{path}.*" if path else "*")
        else:
            child_path = f"{path}.{sub.key}" if path else sub.key
            node.children[sub.key] = _compile_key(sub, errata, child_path)
    groups = []
    for erratum in errata.get(path, ()):
        if erratum.kind == "one-of" and any(k in node.children for k in erratum.values):
            groups.append(tuple(erratum.values))
            for name in erratum.values:
                if name in node.children:
                    node.children[name].required = False
    node.one_of = tuple(groups)
    node.required_names = tuple(name for name, child in node.children.items() if child.required)


def _compile_key(spec: KeySpec, errata: Mapping[str, list[Erratum]], path: str) -> _Node:
    node = _Node()
    node.key = spec.key
    node.type = spec.type
    mine = errata.get(path, ())
    node.required = spec.presence == "required" and not any(e.kind == "optional" for e in mine)
    node.supported_os = _dated(spec.supported_os, mine)
    node.conditional = _conditional(spec.supported_os)
    node.versioned = any(
        _os_version(entry.get("introduced")) is not None
        or _os_version(entry.get("removed")) is not None
        for entry in node.supported_os.values()
    )
    node.rangelist = spec.rangelist
    node.extra_values = tuple((e.values, e.platforms) for e in mine if e.kind == "allow-values")
    node.extra_types = tuple(
        (tuple(_TYPE_CHECKS[t][0] for t in e.values), e.platforms)
        for e in mine
        if e.kind == "allow-type"
    )
    node.minimum = spec.range.min if spec.range is not None else None
    node.maximum = spec.range.max if spec.range is not None else None
    node.count = None
    node.children = None
    node.any_child = None
    node.items = ()
    node.discriminator = {}
    node.one_of = ()
    node.required_names = ()
    node.accepts, node.expected = _TYPE_CHECKS.get(spec.type, (None, ""))
    if spec.type == "<dictionary>" and spec.subkeys:
        _fill_children(node, spec.subkeys, errata, path)
    elif spec.type == "<array>" and spec.subkeys:
        item_path = f"{path}[]"
        node.items = tuple(_compile_key(sub, errata, item_path) for sub in spec.subkeys)
        node.count = spec.subkeys[0].repetition
        if len(node.items) > 1:
            for variant in node.items:
                tag = (variant.children or {}).get("Item")
                if tag is not None and tag.rangelist:
                    for value in tag.rangelist:
                        node.discriminator[value] = variant
    elif spec.subkeys:
        # A scalar with subkeys: the subkeys name its allowed values.
        node.rangelist = tuple(sub.key for sub in spec.subkeys)
    # A scalar without constraints: in lenient mode its type is all there is to check.
    node.bare = (
        node.accepts is not None
        and spec.type not in ("<dictionary>", "<array>")
        and node.rangelist is None
        and node.minimum is None
        and node.maximum is None
    )
    node.quick = node.accepts if node.bare and not node.extra_types else None
    node.limited = frozenset(
        name
        for name, entry in spec.supported_os.items()
        if entry.get("introduced") == "n/a"
        or entry.get("devicechannel") is False
        or entry.get("userchannel") is False
    )
    return node


def _dated(
    supported_os: dict[str, dict[str, Any]], errata: Iterable[Erratum]
) -> dict[str, dict[str, Any]]:
    """``supported_os`` with the versions ``introduced`` errata give, where the facts give
    none for that OS."""
    dates = [pair for e in errata if e.kind == "introduced" for pair in e.values]
    if not dates:
        return supported_os
    dated = {name: dict(entry) for name, entry in supported_os.items()}
    for os_name, version in dates:
        entry = dated.setdefault(os_name, {})
        if _os_version(entry.get("introduced")) is None and entry.get("introduced") != "n/a":
            entry["introduced"] = version
    return dated


def _errata_for(scope: str, name: str) -> dict[str, list[Erratum]]:
    found: dict[str, list[Erratum]] = {}
    for erratum in ERRATA:
        if erratum.scope == scope and erratum.name in (name, "*"):
            found.setdefault(erratum.path, []).append(erratum)
    return found


@functools.cache
def _tree(scope: str, name: str) -> tuple[_Node, dict[str, dict[str, Any]]] | None:
    """The compiled keys of one message, and the message's own supportedOS."""
    table = facts()
    if scope in (COMMAND, RESPONSE):
        item = table.commands.get(name)
    elif scope == CHECKIN:
        item = table.checkins.get(name)
    else:
        item = table.declarations.get(name)
    if item is None:
        return None
    specs = item.responsekeys if scope == RESPONSE else item.payloadkeys
    return _compile(specs, _errata_for(scope, name)), item.supported_os


# --- the validator ----------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
# Characters XML 1.0 cannot carry (C0 controls other than tab, newline and carriage return,
# which mdmgate.plist writes as &#13;), lone surrogates, and U+FFFE/U+FFFF.
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_MAX_LISTED = 12


_VERSION = re.compile(r"\d+(?:\.\d+)*")


def _os_version(text: Any) -> tuple[int, ...] | None:
    """An OS version as a tuple that orders (``"10.13.6"`` -> ``(10, 13, 6)``, trailing
    zeros dropped so that ``13.0`` is ``13``); ``None`` for anything else (``"n/a"``)."""
    if not isinstance(text, str):
        return None
    found = _VERSION.match(text.strip())
    if found is None:
        return None
    digits = found.group().split(".")
    if any(len(p) > 9 for p in digits):  # no OS version; int() of a huge one is refused
        return None
    parts = [int(p) for p in digits]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _join(path: str, key: str) -> str:
    if _NAME.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


# While validating, a path is the root's name or a (parent, key or index) pair: cheap to
# make for every value, and spelled out only for the values that have a problem.
_Path = str | tuple[Any, str | int]


def _render(path: _Path) -> str:
    parts: list[str | int] = []
    while isinstance(path, tuple):
        path, part = path
        parts.append(part)
    text = path
    for part in reversed(parts):
        text = f"{text}[{part}]" if isinstance(part, int) else _join(text, part)
    return text


def _listing(values: Iterable[Any]) -> str:
    shown = [repr(v) for v in values]
    if len(shown) > _MAX_LISTED:
        return ", ".join(shown[:_MAX_LISTED]) + f", … ({len(shown)} in all)"
    return ", ".join(shown)


class _Run:
    """One validation: the options and the issues found so far."""

    __slots__ = ("channel", "issues", "os", "os_version", "strict")

    def __init__(
        self,
        os: str | None,
        channel: Channel | None,
        strict: bool,
        os_version: tuple[int, ...] | None = None,
    ) -> None:
        self.os = os
        self.channel = channel
        self.strict = strict
        #: The device's OS version (only meaningful with ``os``).
        self.os_version = os_version
        self.issues: list[SchemaIssue] = []

    def add(self, path: _Path, code: str, message: str) -> None:
        self.issues.append(SchemaIssue(_render(path), code, message))

    # -- platform support --

    def supported(self, supported_os: Mapping[str, Mapping[str, Any]]) -> bool:
        if self.os is None:
            return True
        entry = supported_os.get(self.os)
        if not entry:
            return True
        if entry.get("introduced") == "n/a":
            return False
        if self.channel == "device" and entry.get("devicechannel") is False:
            return False
        return not (self.channel == "user" and entry.get("userchannel") is False)

    def enforced(self, node: _Node) -> bool:
        """Whether a required key is required here."""
        if node.conditional:
            if self.os is None:
                return False
            entry = node.supported_os.get(self.os) or {}
            if (entry.get("devicechannel") is False or entry.get("userchannel") is False) and (
                self.channel is None
            ):
                return False
            if not self.supported(node.supported_os):
                return False
        return not node.versioned or self.in_version(node.supported_os)

    def in_version(self, supported_os: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether the device's OS version has the key (``True`` when unknown)."""
        if self.os is None or self.os_version is None:
            return True
        entry = supported_os.get(self.os)
        if not entry:
            return True
        introduced = _os_version(entry.get("introduced"))
        if introduced is not None and self.os_version < introduced:
            return False
        removed = _os_version(entry.get("removed"))
        return removed is None or self.os_version < removed

    def place(self) -> str:
        return f"{self.os} ({self.channel} channel)" if self.channel else f"{self.os}"

    # -- values --

    def value(self, node: _Node, value: Any, path: _Path) -> None:
        accepts = node.accepts
        if accepts is None:  # <any>, or a type this validator does not know
            if self.strict:
                self.plist(value, path)
            return
        if not accepts(value, self.strict):
            if not self.other_type(node, value):
                self.add(path, TYPE, f"expected {node.expected}, got {_describe(value)}")
            return
        if node.bare and not self.strict:
            return
        kind = node.type
        if kind == "<dictionary>":
            self.mapping(node, value, path)
        elif kind == "<array>":
            self.array(node, value, path)
        elif kind == "<string>":
            if self.strict:
                self.text(value, path)
            self.allowed(node, value, path)
        elif kind in ("<integer>", "<real>"):
            if self.strict and kind == "<integer>" and not _INT_MIN <= value <= _INT_MAX:
                self.add(path, RANGE, f"{value} does not fit a plist integer")
                return
            self.allowed(node, value, path)
            self.bounds(node, value, path)
        elif kind == "<date>" and self.strict:
            self.date(value, path)

    def other_type(self, node: _Node, value: Any) -> bool:
        """Whether an ``allow-type`` erratum accepts ``value`` here."""
        for checks, platforms in node.extra_types:
            if platforms and self.os is not None and self.os not in platforms:
                continue
            if any(check(value, self.strict) for check in checks):
                return True
        return False

    def text(self, value: str, path: _Path) -> None:
        bad = _BAD_TEXT.search(value)
        if bad is not None:
            self.add(
                path,
                ENCODING,
                f"character {bad.group()!r} at index {bad.start()} cannot be carried exactly "
                "by an XML plist",
            )

    def date(self, value: dt.datetime, path: _Path) -> None:
        if value.tzinfo is not None:
            self.add(path, ENCODING, "plist dates are naive UTC datetimes; drop the tzinfo")

    def allowed(self, node: _Node, value: Any, path: _Path) -> None:
        if node.rangelist is None or value in node.rangelist:
            return
        for values, platforms in node.extra_values:
            if value in values and (not platforms or self.os is None or self.os in platforms):
                return
        self.add(path, VALUE, f"{value!r} is not one of {_listing(node.rangelist)}")

    def bounds(self, node: _Node, value: float, path: _Path) -> None:
        if node.minimum is not None and value < node.minimum:
            self.add(path, RANGE, f"{value!r} is below the minimum {node.minimum:g}")
        elif node.maximum is not None and value > node.maximum:
            self.add(path, RANGE, f"{value!r} is above the maximum {node.maximum:g}")

    def mapping(self, node: _Node, value: dict[Any, Any], path: _Path) -> None:
        children = node.children
        if children is None:  # a dictionary the facts say nothing about
            if self.strict:
                self.plist(value, path)
            return
        fast = not self.strict
        os = self.os
        for key, item in value.items():
            child = children.get(key, node.any_child)
            if (
                fast
                and child is not None
                and (quick := child.quick) is not None
                and (os is None or os not in child.limited)
            ):
                # The common case of device data, inlined: a scalar without constraints
                # that the OS (if known) has.
                if not quick(item, False):
                    message = f"expected {child.expected}, got {_describe(item)}"
                    self.add((path, key), TYPE, message)
            else:
                self.entry(node, child, key, item, path)
        self.missing(node, value, path)

    def entry(self, node: _Node, child: _Node | None, key: Any, item: Any, path: _Path) -> None:
        """One key of a dictionary the facts describe."""
        if not isinstance(key, str):
            self.add(path, TYPE, f"dictionary key {key!r} is not a string")
            return
        where = (path, key)
        if child is None:
            if self.strict:
                known = _listing(node.children) if node.children else "none"
                self.add(where, UNKNOWN_KEY, f"unknown key {key!r} (known keys: {known})")
                self.plist(item, where)
            return
        if self.strict and child is node.any_child:
            self.text(key, where)
        if self.os is not None and not self.supported(child.supported_os):
            self.add(where, PLATFORM, f"{key} is not supported on {self.place()}")
        self.value(child, item, where)

    def missing(self, node: _Node, value: dict[Any, Any], path: _Path) -> None:
        """Required keys (and groups of keys) that ``value`` lacks."""
        children = node.children or {}
        for name in node.required_names:
            if name not in value and self.enforced(children[name]):
                self.add((path, name), MISSING, f"required key {name} is missing")
        for group in node.one_of:
            if not any(name in value for name in group):
                self.add((path, group[0]), MISSING, f"one of {', '.join(group)} is required")

    def array(self, node: _Node, value: list[Any] | tuple[Any, ...], path: _Path) -> None:
        count = node.count
        if count is not None:
            if count.min is not None and len(value) < count.min:
                self.add(path, COUNT, f"{len(value)} items, at least {count.min:g} needed")
            if count.max is not None and len(value) > count.max:
                self.add(path, COUNT, f"{len(value)} items, at most {count.max:g} allowed")
        items = node.items
        if not items:
            if self.strict:
                self.plist(value, path)
            return
        if len(items) == 1:
            only = items[0]
            for index, item in enumerate(value):
                self.value(only, item, (path, index))
            return
        for index, item in enumerate(value):
            self.variant(node, item, (path, index))

    def variant(self, node: _Node, item: Any, path: _Path) -> None:
        """An item of an array that holds several kinds of item (Settings)."""
        if node.discriminator and isinstance(item, dict):
            tag = item.get("Item")
            chosen = node.discriminator.get(tag) if isinstance(tag, str) else None
            if chosen is None:
                self.add(
                    (path, "Item"),
                    VALUE,
                    f"{tag!r} is not one of {_listing(node.discriminator)}",
                )
                return
            if not self.supported(chosen.supported_os):
                self.add(path, PLATFORM, f"{chosen.key} is not supported on {self.place()}")
            self.value(chosen, item, path)
            return
        best: list[SchemaIssue] | None = None
        for candidate in node.items:
            trial = _Run(self.os, self.channel, self.strict, self.os_version)
            trial.value(candidate, item, path)
            if not trial.issues:
                return
            if best is None or len(trial.issues) < len(best):
                best = trial.issues
        self.add(path, TYPE, "matches none of the kinds of item this array holds")
        self.issues.extend(best or ())

    def plist(self, value: Any, path: _Path) -> None:
        """Strict mode: any value a plist can carry exactly."""
        if isinstance(value, str):
            self.text(value, path)
        elif isinstance(value, bool | float | bytes | bytearray):
            pass
        elif isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                self.add(path, RANGE, f"{value} does not fit a plist integer")
        elif isinstance(value, dt.datetime):
            self.date(value, path)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                self.plist(item, (path, index))
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.add(path, TYPE, f"dictionary key {key!r} is not a string")
                    continue
                where = (path, key)
                self.text(key, where)
                self.plist(item, where)
        else:
            self.add(path, TYPE, f"{_describe(value)} is not a plist value")


def raise_for_issues(name: str, issues: list[SchemaIssue], *, what: str = "command") -> None:
    """Raises :class:`CommandValidationError` listing ``issues``, if there are any.
    ``name`` is the RequestType (or MessageType, declaration type: see ``what``)."""
    if not issues:
        return
    shown = "; ".join(str(issue) for issue in issues[:5])
    more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
    noun = "problem" if len(issues) == 1 else "problems"
    raise CommandValidationError(
        f"invalid {name} {what}, {len(issues)} {noun}: {shown}{more}",
        issues[0].path,
        name,
        tuple(issues),
    )


def check_command(
    request_type: str,
    payload: Mapping[str, Any],
    *,
    platform: str | None = None,
    channel: Channel | None = None,
    strict: bool = True,
) -> list[SchemaIssue]:
    """The problems of a command's keys (the ``Command`` dictionary, with or without its
    ``RequestType``) against the facts, without raising. Paths start at ``Command``.
    ``strict`` also reports unknown keys and values a plist cannot carry exactly."""
    os = facts_os(platform)
    run = _Run(os, channel, strict)
    tree = _tree(COMMAND, request_type)
    if tree is None:
        run.add("Command.RequestType", VALUE, f"unknown RequestType {request_type!r}")
        return run.issues
    node, supported_os = tree
    if not run.supported(supported_os):
        run.add(
            "Command.RequestType", PLATFORM, f"{request_type} is not supported on {run.place()}"
        )
    body = dict(payload)
    stated = body.pop("RequestType", request_type)
    if stated != request_type:
        run.add("Command.RequestType", VALUE, f"{stated!r} is not {request_type!r}")
    run.mapping(node, body, "Command")
    return run.issues


def validate_command(
    request_type: str,
    payload: Mapping[str, Any],
    *,
    platform: str | None = None,
    channel: Channel | None = None,
    strict: bool = True,
) -> list[SchemaIssue]:
    """:func:`check_command`, raising in strict mode (the default):
    :class:`CommandValidationError` lists every problem, and ``[]`` is returned when
    there is none. Lenient mode returns the problems."""
    issues = check_command(request_type, payload, platform=platform, channel=channel, strict=strict)
    if strict:
        raise_for_issues(request_type, issues)
    return issues


def check_keys(
    specs: Iterable[KeySpec],
    value: Mapping[str, Any],
    *,
    root: str = "",
    platform: str | None = None,
    channel: Channel | None = None,
    strict: bool = True,
) -> list[SchemaIssue]:
    """The problems of ``value`` against any keys of the facts (a shared fragment such as
    ``declarative/declarations/assets/credentials/acme.yaml``), without errata or
    raising; paths start at ``root``."""
    run = _Run(facts_os(platform), channel, strict)
    run.mapping(_compile(specs, {}), dict(value), root)
    return run.issues


def validate_checkin(
    message: Mapping[str, Any],
    *,
    platform: str | None = None,
    channel: Channel | None = None,
    strict: bool = False,
    os_version: str | None = None,
) -> list[SchemaIssue]:
    """Checks a check-in message (by its ``MessageType``) against the facts. Lenient by
    default: the problems are returned, unknown keys are not problems. ``os_version`` (the
    device's, with ``platform``) leaves out keys that version does not have."""
    run = _Run(facts_os(platform), channel, strict, _os_version(os_version))
    kind = message.get("MessageType")
    tree = _tree(CHECKIN, kind) if isinstance(kind, str) else None
    if tree is None:
        run.add("MessageType", VALUE, f"unknown check-in MessageType {kind!r}")
    else:
        run.mapping(tree[0], dict(message), "")
    if strict:
        raise_for_issues(str(kind), run.issues, what="check-in message")
    return run.issues


def validate_response(
    request_type: str,
    report: Mapping[str, Any],
    *,
    platform: str | None = None,
    channel: Channel | None = None,
    os_version: str | None = None,
) -> list[SchemaIssue]:
    """Checks the result keys of a command report against the command's response keys,
    leniently (this is what devices send). Keys outside the response keys (``Status``,
    ``UDID``, ``CommandUUID``…) are not looked at; required result keys are only required
    when the report's ``Status`` is ``Acknowledged``, and, given the device's
    ``os_version`` (with ``platform``), only from the OS version that introduced them."""
    run = _Run(facts_os(platform), channel, False, _os_version(os_version))
    tree = _tree(RESPONSE, request_type)
    if tree is None:
        return []
    node = tree[0]
    assert node.children is not None
    acknowledged = report.get("Status") == "Acknowledged"
    for key, child in node.children.items():
        if key in report:
            if not run.supported(child.supported_os):
                run.add(key, PLATFORM, f"{key} is not supported on {run.place()}")
            run.value(child, report[key], ("", key))
        elif acknowledged and child.required and run.enforced(child):
            run.add(key, MISSING, f"required key {key} is missing")
    return run.issues


def validate_declaration(
    declaration_type: str,
    payload: Mapping[str, Any],
    *,
    platform: str | None = None,
    strict: bool = True,
) -> list[SchemaIssue]:
    """Checks a declaration's ``Payload`` against the facts (paths start at
    ``Payload``); strict by default, like :func:`validate_command`."""
    run = _Run(facts_os(platform), None, strict)
    tree = _tree(DECLARATION, declaration_type)
    if tree is None:
        run.add("Type", VALUE, f"unknown declaration type {declaration_type!r}")
    else:
        run.mapping(tree[0], dict(payload), "Payload")
    if strict:
        raise_for_issues(declaration_type, run.issues, what="declaration")
    return run.issues
