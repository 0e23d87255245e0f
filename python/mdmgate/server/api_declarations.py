"""The admin API's declarations (Apple declarative device management): create or replace
one with its targets, show one, and show what a device ends up with.

Declarations are built with :func:`mdmgate.apple.ddm.declaration` (``ServerToken`` derived
from the content), validated with :func:`mdmgate.apple.ddm.validate` and stored with their
device and org targets; posting the same identifier again replaces the declaration and its
targets (keeping its place in the assignment order). A declaration is given in the
gateway's lower-case form (:class:`DeclarationIn`) or in Apple's own JSON
(:class:`AppleDeclarationIn`: ``Type``, ``Identifier``, ``Payload``, ``ServerToken``), with
``targets`` in both. ``GET /api/v1/devices/{id}/declarations/effective`` shows the combined
``softwareupdate.settings`` (each key with the declarations that decided it) and the
``softwareupdate.enforcement.specific`` declaration the device processes now, for its stored
``os_version``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from mdmgate import versions
from mdmgate.apple import ddm
from mdmgate.errors import InvalidVersion
from mdmgate.server.api_base import (
    DeviceId,
    OrgPath,
    UnknownDevicesError,
    _check_content_type,
    _check_syntax,
    _decode,
    _json,
    _ref,
    _refuse,
    _unknown,
)
from mdmgate.server.routes import Operation
from mdmgate.server.types import Request, Response
from mdmgate.storage import Device, Store, StoredDeclaration

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "AppleDeclarationIn",
    "DeclarationIn",
    "DeclarationOut",
    "DeclarationTargetsIn",
    "DeclarationWritten",
    "DeclarationsApi",
    "EffectiveDeclarationsOut",
    "EffectiveSettingOut",
    "EnforcementOut",
    "EnforcementStateOut",
    "SkippedDeclarationOut",
    "operations",
]

#: Apple's key for each field of the gateway's form.
_APPLE_KEYS = {
    "type": "Type",
    "identifier": "Identifier",
    "payload": "Payload",
    "server_token": "ServerToken",
}

_APPLE_NAMING = ("Type", "Identifier", "Payload")

DeclarationType = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        description="The declaration type, one Apple's schema knows.",
        examples=[ddm.SETTINGS_TYPE, ddm.ENFORCEMENT_TYPE],
    ),
]
DeclarationIdentifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=512,
        description="The declaration's `Identifier`, unique on the gateway: posting the same"
        " identifier again replaces the declaration.",
        examples=["com.acme.swupdate.defer-30"],
    ),
]


class DeclarationTargetsIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Whom a declaration is assigned to: devices by id, and organisations (an org covers
    its sub-organisations: `/acme` reaches a device in `/acme/sales`). At least one device
    or org. Duplicates are ignored."""

    devices: Annotated[
        list[DeviceId],
        Meta(description="Registered device ids; an unknown one refuses the whole request."),
    ] = msgspec.field(default_factory=list)
    orgs: Annotated[
        list[OrgPath],
        Meta(description="Org paths; `/` is every device."),
    ] = msgspec.field(default_factory=list)


class DeclarationIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A declaration (Apple declarative device management) and its targets.

    The gateway computes the `ServerToken` from the content (type, identifier, payload):
    the same content keeps its token, any change gives a new one, so devices fetch the
    declaration again exactly when it changed. The payload is checked against Apple's
    schema for the type (unknown keys, types, ranges, allowed values, required keys;
    `TargetLocalDateTime` as local `YYYY-MM-DDTHH:MM:SS` without offset); a refusal names
    the key as `$.payload.<dotted key>`. Posting an identifier that exists replaces the
    declaration and its targets; it keeps its place in the assignment order."""

    type: DeclarationType
    identifier: DeclarationIdentifier
    payload: Annotated[
        dict[str, Any],
        Meta(
            description="The declaration's `Payload`, as Apple documents it for the type.",
            examples=[{"Deferrals": {"CombinedPeriodInDays": 30}, "Notifications": True}],
        ),
    ]
    targets: DeclarationTargetsIn


class DeclarationWritten(Struct):
    """A declaration as stored, with its targets."""

    identifier: str
    type: str
    server_token: Annotated[
        str, Meta(description="The `ServerToken` devices see (derived from the content).")
    ]
    devices: Annotated[list[str], Meta(description="The device ids it is assigned to.")]
    orgs: Annotated[list[str], Meta(description="The org paths it is assigned to.")]


class DeclarationOut(DeclarationWritten):
    """A declaration as stored, with its payload and targets."""

    payload: dict[str, Any]


class EffectiveSettingOut(Struct):
    """The value a device ends up with for one key, and the declarations that decided it
    (per the key's combine rule: e.g. the largest deferral, the enum value latest in
    Apple's list, AND of booleans, the union of arrays, the first assigned)."""

    value: Any
    declarations: list[str]


class EnforcementOut(Struct):
    """One `softwareupdate.enforcement.specific` declaration, read."""

    declaration: Annotated[str, Meta(description="The declaration's identifier.")]
    target_os_version: str
    target_build_version: str | None
    target_local_datetime: Annotated[
        str, Meta(description="The device-local deadline, `YYYY-MM-DDTHH:MM:SS`.")
    ]
    details_url: str | None


class EnforcementStateOut(Struct):
    """Which enforcement declaration the device processes now, evaluated against its stored
    `os_version`: targets at or below it are ignored, the newer ones queue by earliest
    `TargetLocalDateTime` (ties: lower target version, then identifier). Updating the
    device's `os_version` (`POST /api/v1/devices`) re-evaluates it."""

    active: Annotated[
        EnforcementOut | None,
        Meta(description="The one processed now (the first of `pending`), or `null`."),
    ]
    pending: Annotated[
        list[EnforcementOut],
        Meta(
            description="Every enforcement still to be processed, in processing order; the"
            " first is `active`, the rest wait."
        ),
    ]
    os_version: Annotated[
        str | None, Meta(description="The device's OS version the evaluation used.")
    ]
    note: Annotated[
        str | None,
        Meta(
            description="Why nothing could be evaluated (no `os_version`, a platform without"
            " software-update enforcement, an unreadable version), else `null`."
        ),
    ] = None


class SkippedDeclarationOut(Struct):
    """A stored declaration left out of the evaluation, and why."""

    identifier: str
    error: str


class EffectiveDeclarationsOut(Struct):
    """What a device ends up with from the declarations assigned to it (by id or through
    its org and the orgs above it)."""

    device_id: str
    declarations: Annotated[
        list[str],
        Meta(description="Every declaration assigned to the device, oldest assignment first."),
    ]
    softwareupdate_settings: Annotated[
        dict[str, EffectiveSettingOut],
        Meta(
            description="The combined `com.apple.configuration.softwareupdate.settings`, by"
            " dotted key (`Deferrals.CombinedPeriodInDays`); keys no declaration sets are"
            " absent (the device's default applies)."
        ),
    ]
    enforcement: EnforcementStateOut
    skipped: Annotated[
        list[SkippedDeclarationOut],
        Meta(
            description="Assigned declarations that no longer pass validation (or whose"
            " target version does not parse for the device's platform), left out."
        ),
    ] = msgspec.field(default_factory=list)


class AppleDeclarationIn(Struct, kw_only=True, forbid_unknown_fields=True, rename=_APPLE_KEYS):
    """A declaration in Apple's own JSON, as Apple documents it and KMFDDM writes it
    (`Type`, `Identifier`, `Payload`, optional `ServerToken`), with `targets` as in
    `DeclarationIn`. The same rules apply; a refusal names the key as it was given
    (`$.Payload.<dotted key>`). A `ServerToken` given is accepted and replaced by the one the
    gateway derives from the content, so devices fetch the declaration again exactly when
    it changed; the answer shows the token stored."""

    type: DeclarationType
    identifier: DeclarationIdentifier
    payload: Annotated[
        dict[str, Any],
        Meta(description="The declaration's `Payload`, as Apple documents it for the type."),
    ]
    server_token: Annotated[
        Annotated[str, Meta(max_length=1024)] | None,
        Meta(description="Accepted; the gateway derives its own."),
    ] = None
    targets: DeclarationTargetsIn


REQUEST_TYPES: tuple[type[Any], ...] = (DeclarationIn, AppleDeclarationIn)
RESPONSE_TYPES: tuple[type[Any], ...] = (
    DeclarationWritten,
    DeclarationOut,
    EffectiveDeclarationsOut,
    UnknownDevicesError,
)

#: A declaration is taken in either form.
EXTRA_SCHEMAS: dict[str, Any] = {
    "DeclarationRequest": {
        "description": "A declaration and its targets, in the gateway's lower-case form or in"
        " Apple's own (`Type`, `Identifier`, `Payload`, `ServerToken`).",
        "oneOf": [_ref("DeclarationIn"), _ref("AppleDeclarationIn")],
    }
}


# --- declarations ----------------------------------------------------------------------------

#: Platforms software-update enforcement exists on; the names ``versions`` orders by.
_ENFORCEMENT_PLATFORMS = ("ios", "ipados", "macos")
_EVALUATED_TYPES = (ddm.SETTINGS_TYPE, ddm.ENFORCEMENT_TYPE)


def _declaration_field(key: str, apple: bool) -> str | None:
    """The JSONPath into the request body for a :class:`~mdmgate.apple.ddm.DeclarationError`
    key, in the form the declaration was given (``apple``: Apple's keys)."""
    if key in ("Type", "Identifier"):
        return "$." + (key if apple else key.lower())
    if key == "ServerToken":
        return None  # computed here: cannot be the client's
    payload = "$.Payload" if apple else "$.payload"
    if not key:
        return payload
    return payload + ("" if key.startswith("[") else ".") + key


def _target_version_problem(decl: ddm.Declaration, platforms: Sequence[str]) -> str | None:
    """Why an enforcement declaration's TargetOSVersion cannot be ordered on one of
    ``platforms``, or ``None``."""
    target = decl.payload.get("TargetOSVersion")
    if decl.type != ddm.ENFORCEMENT_TYPE or not isinstance(target, str):
        return None
    for platform in platforms:
        try:
            versions.sort_key(target, platform=platform)
        except InvalidVersion as exc:
            return f"{decl.type} {decl.identifier!r}: TargetOSVersion: {exc}"
    return None


def _build_declaration(
    type: str, identifier: str, payload: dict[str, Any], *, apple: bool
) -> ddm.Declaration:
    """The declaration with its content-derived token, checked against Apple's schema (and,
    for enforcement, a TargetOSVersion that orders on every platform it exists on)."""
    try:
        decl = ddm.declaration(type, identifier, payload)
        ddm.validate(decl)
    except ddm.DeclarationError as exc:
        raise _refuse(422, exc.message, _declaration_field(exc.key, apple)) from None
    except RecursionError:
        raise _refuse(400, "JSON is nested too deeply") from None
    problem = _target_version_problem(decl, _ENFORCEMENT_PLATFORMS)
    if problem is not None:
        raise _refuse(422, problem, _declaration_field("TargetOSVersion", apple))
    return decl


def _given(body: bytes) -> tuple[DeclarationIn | AppleDeclarationIn, bool]:
    """The declaration in the form it was given, and whether that is Apple's."""
    _check_syntax(body)
    # A body is in Apple's form when it names the declaration with Apple's keys; a mix of
    # both forms is refused by that form's schema, naming the stray field.
    loose = msgspec.json.decode(body)
    if isinstance(loose, dict) and any(key in loose for key in _APPLE_NAMING):
        return _decode(body, AppleDeclarationIn), True
    return _decode(body, DeclarationIn), False


def _stored_problem(decl: ddm.Declaration, platform: str) -> str | None:
    """Why a stored declaration cannot be evaluated for a device (it was valid when written;
    the schema facts may have changed since), or ``None``. Types not evaluated here pass."""
    if decl.type not in _EVALUATED_TYPES:
        return None
    try:
        ddm.validate(decl)
    except ddm.DeclarationError as exc:
        return exc.message
    except RecursionError:
        return "the payload is nested too deeply"
    if platform in _ENFORCEMENT_PLATFORMS:
        return _target_version_problem(decl, (platform,))
    return None


def _enforcement_out(item: ddm.Enforcement) -> EnforcementOut:
    return EnforcementOut(
        declaration=item.declaration,
        target_os_version=item.target_os_version,
        target_build_version=item.target_build_version,
        target_local_datetime=item.target_local_datetime.isoformat(timespec="seconds"),
        details_url=item.details_url,
    )


def _enforcement_state(decls: Sequence[ddm.Declaration], device: Device) -> EnforcementStateOut:
    """The enforcement the device processes now, and the queue, for its stored OS version;
    empty with a note when it cannot be evaluated."""
    os_version = device.os_version

    def nothing(note: str | None) -> EnforcementStateOut:
        return EnforcementStateOut(None, [], os_version, note)

    if device.platform not in _ENFORCEMENT_PLATFORMS:
        return nothing(
            "software-update enforcement exists on iOS, iPadOS and macOS, not on"
            f" {device.platform!r} devices"
        )
    if not os_version:
        return nothing(
            "the device has no os_version: it has not reported one, and none was registered"
        )
    try:
        pending = ddm.pending_enforcements(decls, os_version=os_version, platform=device.platform)
    except InvalidVersion as exc:
        return nothing(f"the device's os_version cannot be ordered: {exc}")
    except ddm.DeclarationError as exc:  # screened out before; kept for safety
        return nothing(f"cannot evaluate: {exc.message}")
    out = [_enforcement_out(item) for item in pending]
    return EnforcementStateOut(out[0] if out else None, out, os_version)


class DeclarationsApi:
    """The handlers of ``/api/v1/declarations[/{identifier}]`` and
    ``/api/v1/devices/{id}/declarations/effective``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given, apple = _given(request.body)
        targets = "$.targets"
        for index, org in enumerate(given.targets.orgs):
            if org.endswith("\n"):
                # The pattern's "$" also matches before a final newline.
                raise _refuse(422, "an org path has no line breaks", f"{targets}.orgs[{index}]")
        devices = list(dict.fromkeys(given.targets.devices))
        orgs = list(dict.fromkeys(given.targets.orgs))
        if not devices and not orgs:
            raise _refuse(
                422, "a declaration needs at least one target (a device or an org)", targets
            )
        decl = _build_declaration(given.type, given.identifier, given.payload, apple=apple)
        known = await self.store.get_devices(devices)
        unknown = [i for i in devices if i not in known]
        if unknown:
            raise _unknown(unknown, f"{targets}.devices")
        # Two concurrent first writes of one identifier may both answer 201; the store
        # keeps one of them whole.
        old = await self.store.get_declaration(decl.identifier)
        await self.store.put_declaration(
            StoredDeclaration(
                identifier=decl.identifier,
                type=decl.type,
                payload=decl.payload,
                server_token=decl.server_token,
                devices=tuple(devices),
                orgs=tuple(orgs),
            )
        )
        out = DeclarationWritten(decl.identifier, decl.type, decl.server_token, devices, orgs)
        return _json(201 if old is None else 200, out)

    async def show(self, request: Request, params: Mapping[str, str]) -> Response:
        identifier = params["identifier"]
        stored = await self.store.get_declaration(identifier)
        if stored is None:
            raise _refuse(404, f"no declaration {identifier!r}")
        out = DeclarationOut(
            identifier=stored.identifier,
            type=stored.type,
            server_token=stored.server_token,
            devices=list(stored.devices),
            orgs=list(stored.orgs),
            payload=stored.payload,
        )
        return _json(200, out)

    async def effective(self, request: Request, params: Mapping[str, str]) -> Response:
        device = await self.store.get_device(params["id"])
        if device is None:
            raise _refuse(404, f"no device {params['id']!r}")
        stored = await self.store.declarations_for(device.id, device.org)
        usable: list[ddm.Declaration] = []
        skipped: list[SkippedDeclarationOut] = []
        for item in stored:
            decl = ddm.Declaration(item.type, item.identifier, item.payload, item.server_token)
            problem = _stored_problem(decl, device.platform)
            if problem is None:
                usable.append(decl)
            else:
                skipped.append(SkippedDeclarationOut(item.identifier, problem))
        settings = {
            key: EffectiveSettingOut(c.value, list(c.declarations))
            for key, c in ddm.effective_settings(usable).items()
        }
        out = EffectiveDeclarationsOut(
            device_id=device.id,
            declarations=[item.identifier for item in stored],
            softwareupdate_settings=settings,
            enforcement=_enforcement_state(usable, device),
            skipped=skipped,
        )
        return _json(200, out)


def operations(api: DeclarationsApi) -> list[Operation]:
    """The declaration operations, with their handlers."""
    return [
        Operation(
            "POST",
            "/api/v1/declarations",
            api.put,
            "Create or replace a declaration (Apple DDM) and its targets, in the gateway's"
            " form or Apple's. The ServerToken is derived from the content; the payload is"
            " checked against Apple's schema.",
            ("201", "A new declaration was stored.", "DeclarationWritten"),
            ("400", "415", "422"),
            request="DeclarationRequest",
            not_found="UnknownDevicesError",
            replaced=("200", "A declaration with this identifier was replaced."),
        ),
        Operation(
            "GET",
            "/api/v1/declarations/{identifier}",
            api.show,
            "A declaration, its payload and its targets.",
            ("200", "The declaration.", "DeclarationOut"),
            ("404",),
            params={"identifier": "The declaration identifier (percent-encoded)."},
        ),
        Operation(
            "GET",
            "/api/v1/devices/{id}/declarations/effective",
            api.effective,
            "What a device ends up with from its declarations: the combined software-update"
            " settings (each key with the declarations that decided it) and the"
            " enforcement it processes now for its stored os_version.",
            ("200", "The device's effective declarations.", "EffectiveDeclarationsOut"),
            ("404",),
            params={"id": "The device id (percent-encoded)."},
        ),
    ]
