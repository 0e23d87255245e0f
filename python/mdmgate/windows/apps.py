"""The Windows app lifecycle over the EnterpriseModernAppManagement CSP, as typed commands,
and the device's answers read back into state. Pure functions, no I/O.

An admin sends one of the :data:`AppCommand` structs (JSON with ``"action"``, e.g.
``{"action": "hosted_install", ...}``); :func:`expand` turns it into the XML of the SyncML
command(s) to queue, following Microsoft's *Enterprise app management* page: its LocURIs,
Meta formats and command order. Refusals raise :class:`AppCommandRefused` naming the field
as a JSONPath under ``$.windows_app``.

The device's answers are read by:

* :func:`parse_inventory`: the Items of a ``?list=StructData`` Results of ``AppManagement``
  into :class:`AppRecord` (one per package full name); :func:`inventory_from_message` gives
  the same records straight from the message's bytes, without an object per Item;
* :func:`parse_install_status`: the Items of ``AppInstallation`` into :class:`InstallState`;
* :func:`parse_licenses`: the Items of ``AppLicenses/StoreLicenses`` into
  :class:`LicenseRecord`;
* :func:`parse_app_alert`: an asynchronous install/uninstall result (Alert 1226, or 1224
  ``win32csp_install``) into :class:`AppResult`;
* :func:`command_targets`: the LocURIs a stored body targets, to tie a later result to it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Final, Literal, TypeAlias
from urllib.parse import quote, unquote, urlsplit

import msgspec
from msgspec import Meta

from mdmgate import _core, syncml
from mdmgate.errors import MdmgateError, SyncMLDecodeError
from mdmgate.syncml import Command, Header, Item, Message

__all__ = [
    "FIELD_ROOT",
    "AddLicense",
    "AppCommand",
    "AppCommandRefused",
    "AppPolicy",
    "AppRecord",
    "AppResult",
    "DoNotUpdate",
    "HostedInstall",
    "InstallState",
    "InstallStatus",
    "Inventory",
    "LastScanError",
    "LicenseRecord",
    "OptionalPackage",
    "RemoveProvisioned",
    "RemoveStoreLicense",
    "StoreInstall",
    "StoreLicenseInventory",
    "Uninstall",
    "UpdateScan",
    "command_targets",
    "describe",
    "expand",
    "inventory_from_message",
    "package_family_of",
    "parse_app_alert",
    "parse_install_status",
    "parse_inventory",
    "parse_licenses",
    "result_matches",
]

#: Where a typed app command sits in an admin request body; refusals name fields below it.
FIELD_ROOT: Final = "$.windows_app"

CSP: Final = "EnterpriseModernAppManagement"
POLICY_CONFIG: Final = "./Vendor/MSFT/Policy/Config/ApplicationManagement"
POLICY_RESULT: Final = "./Vendor/MSFT/Policy/Result/ApplicationManagement"
STRUCT_DATA: Final = "?list=StructData"

Scope = Literal["device", "user"]
Classification = Literal["AppStore", "nonStore", "System"]
PolicyName = Literal["AllowAllTrustedApps", "AllowDeveloperUnlock", "AllowSharedUserAppData"]


class AppCommandRefused(MdmgateError, ValueError):
    """A typed app command that cannot be sent: ``field`` is the JSONPath of the culprit
    (``$.windows_app.scope``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} ({self.field})"

    def __reduce__(self) -> tuple[type[AppCommandRefused], tuple[str, str]]:
        return (type(self), (self.message, self.field))


# --- identifiers -----------------------------------------------------------------------

# Package name: 3-50 of [A-Za-z0-9.-]; publisher id: 13 base32 characters.
_NAME = r"[A-Za-z0-9.-]{3,50}"
_PUBLISHER_ID = r"[A-Za-z0-9]{13}"
_PFN_PATTERN = rf"^{_NAME}_{_PUBLISHER_ID}$"
# Name_Version_Architecture_ResourceId_PublisherId; bundles use "~" as resource id.
_FULL_NAME_PATTERN = (
    rf"^({_NAME})_[0-9]+(?:\.[0-9]+){{0,3}}_[A-Za-z0-9]+_[A-Za-z0-9.~-]{{0,30}}_({_PUBLISHER_ID})$"
)
_LICENSE_ID_PATTERN = r"^[A-Za-z0-9{}._~-]{1,128}$"
_PRODUCT_ID_PATTERN = r"^[A-Za-z0-9{}._-]{1,64}$"
_SKU_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

_PFN = re.compile(_PFN_PATTERN)
_FULL_NAME = re.compile(_FULL_NAME_PATTERN)
_LICENSE_ID = re.compile(_LICENSE_ID_PATTERN)
_PRODUCT_ID = re.compile(_PRODUCT_ID_PATTERN)
_SKU_ID = re.compile(_SKU_ID_PATTERN)
_DRIVE_PATH = re.compile(r"^[A-Za-z]:\\[^\\]")
_UNC_PATH = re.compile(r"^\\\\[^\\/]+\\[^\\/]+\\[^\\]")
_MAX_URI = 2048

PackageFamilyName = Annotated[
    str,
    Meta(
        pattern=_PFN_PATTERN,
        description="Package family name: `{Name}_{PublisherId}`, as in the inventory.",
        examples=["Contoso.Expenses_8wekyb3d8bbwe"],
    ),
]
PackageFullName = Annotated[
    str,
    Meta(
        pattern=_FULL_NAME_PATTERN,
        description="Package full name `{Name}_{Version}_{Architecture}_{ResourceId}_"
        "{PublisherId}` of one installed version; it must belong to `package_family`.",
        examples=["Contoso.Expenses_1.4.0.0_x64__8wekyb3d8bbwe"],
    ),
]
LicenseId = Annotated[
    str,
    Meta(
        pattern=_LICENSE_ID_PATTERN,
        description="The licence's content ID (from the Store for Business licence file).",
    ),
]
PackageUri = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=_MAX_URI,
        description="Where the device fetches the package: a local path (`C:\\\\Apps\\\\a.msix`), "
        "a UNC path (`\\\\\\\\server\\\\share\\\\a.msix`) or an `https://` URL. Plain http is "
        "refused (no authentication).",
        examples=["https://cdn.contoso.com/apps/Contoso.Expenses.msix"],
    ),
]
ScopeField = Annotated[
    Scope,
    Meta(
        description="`user`: the user logged in (`./User/...`); `device`: the whole device "
        "(`./Device/...`, all users)."
    ),
]
ClassificationField = Annotated[
    Classification,
    Meta(
        description="The CSP's origin node: `AppStore` (Microsoft Store), `nonStore` "
        "(line-of-business, sideloaded) or `System` (part of Windows, read-only)."
    ),
]


def package_family_of(package_full_name: str) -> str | None:
    """The family of a package full name (``Name_PublisherId``), or None if it is not one."""
    match = _FULL_NAME.fullmatch(package_full_name)
    return f"{match[1]}_{match[2]}" if match else None


# --- typed commands --------------------------------------------------------------------


class _AppCommand(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, tag_field="action"
):
    pass


class Inventory(_AppCommand, tag="inventory", frozen=True):
    """Inventory of packaged apps (Store, line-of-business and system; not MSI/Win32):
    `Get .../AppManagement[/{classification}[/{package_family}]]?list=StructData`. A full
    device inventory can be large; Windows then answers in chunks."""

    scope: ScopeField
    classification: (
        Annotated[
            Classification,
            Meta(description="Only this origin node; leave out for every classification."),
        ]
        | None
    ) = None
    package_family: (
        Annotated[
            str,
            Meta(
                pattern=_PFN_PATTERN,
                description="Only this package family (needs `classification`).",
            ),
        ]
        | None
    ) = None


class StoreLicenseInventory(_AppCommand, tag="store_license_inventory", frozen=True):
    """Store app licences (LicenseCategory, LicenseUsage, RequesterID per licence):
    `Get .../AppLicenses/StoreLicenses[/{license_id}]?list=StructData`."""

    scope: ScopeField
    license_id: (
        Annotated[
            str,
            Meta(pattern=_LICENSE_ID_PATTERN, description="Only this licence (content ID)."),
        ]
        | None
    ) = None


class RemoveStoreLicense(_AppCommand, tag="remove_store_license", frozen=True):
    """Removes a Store app licence: `Delete .../AppLicenses/StoreLicenses/{license_id}`
    (`device` scope: the licence of a provisioned package)."""

    scope: ScopeField
    license_id: LicenseId


class StoreInstall(_AppCommand, tag="store_install", frozen=True):
    """Installs an app from the Microsoft Store for the logged-in user (user context only):
    `Add .../AppInstallation/{package_family}` then `Exec .../StoreInstall` with
    `<Application id flags skuid/>`. Needs Store connectivity and an Entra ID user."""

    package_family: PackageFamilyName
    product_id: Annotated[
        str,
        Meta(
            pattern=_PRODUCT_ID_PATTERN,
            description="The Store product ID (from the Store for Business).",
            examples=["9WZDNCRFJ3TJ"],
        ),
    ]
    skuid: Annotated[
        str,
        Meta(
            pattern=_SKU_ID_PATTERN,
            description="The SKU id (from the Store for Business sync).",
            examples=["0010"],
        ),
    ]
    flags: Annotated[
        Literal[0, 1],
        Meta(
            description="0: the management tool calls the Store for Business to assign a seat; "
            "1: it does not, and the device claims a seat if one is free."
        ),
    ] = 0
    scope: Annotated[Scope, Meta(description="Must be `user`: Store installs are per user.")] = (
        "user"
    )


class AddLicense(_AppCommand, tag="add_license", frozen=True):
    """Installs an offline Store licence: `Exec .../AppLicenses/StoreLicenses/{license_id}/
    AddLicense` with `<License Content="..."/>`. Send it with the app's first install only,
    not with updates."""

    scope: ScopeField
    license_id: LicenseId
    license_blob: Annotated[
        str,
        Meta(
            min_length=4,
            description="The licence, base64 encoded, as downloaded from the Store for Business.",
        ),
    ]


class OptionalPackage(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An optional package installed with the main one."""

    package_uri: PackageUri
    package_family: Annotated[
        str, Meta(pattern=_PFN_PATTERN, description="The optional package's family name.")
    ]


class HostedInstall(_AppCommand, tag="hosted_install", frozen=True):
    """Installs (or updates) a line-of-business or offline Store app from a hosted location:
    `Add .../AppInstallation/{package_family}` then `Exec .../HostedInstall` with the
    `<Application PackageUri=...>` description. `device` scope provisions the app for every
    user of the device (desktop editions only). Non-Store apps need AllowAllTrustedApps;
    offline Store apps need their licence first (`add_license`). Completion arrives later as
    an alert."""

    scope: ScopeField
    package_family: PackageFamilyName
    package_uri: PackageUri
    dependencies: Annotated[
        list[PackageUri],
        Meta(max_length=256, description="Framework packages installed with it (PackageUri)."),
    ] = msgspec.field(default_factory=list)
    optional_packages: Annotated[
        list[OptionalPackage], Meta(max_length=256, description="Optional packages.")
    ] = msgspec.field(default_factory=list)
    deployment_options: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=0xFFFFFFFF,
                description="Windows DeploymentOptions bit mask (0: none, 1: force the app to "
                "shut down). User scope only.",
            ),
        ]
        | None
    ) = None


class InstallStatus(_AppCommand, tag="install_status", frozen=True):
    """Progress of installs: `Get .../AppInstallation[/{package_family}]?list=StructData`
    (Status 0 not installed, 1 installing, 2 failed with LastError/LastErrorDesc,
    3 installed). The node disappears once an install has succeeded."""

    scope: ScopeField
    package_family: (
        Annotated[
            str, Meta(pattern=_PFN_PATTERN, description="Only this family; else every install.")
        ]
        | None
    ) = None


class _Removal(_AppCommand, frozen=True):
    package_family: PackageFamilyName
    package_full_name: PackageFullName | None = None
    classification: (
        Annotated[
            Classification,
            Meta(description="The origin node; taken from the device's inventory when left out."),
        ]
        | None
    ) = None


class Uninstall(_Removal, tag="uninstall", frozen=True):
    """Uninstalls an app for the logged-in user: `Delete .../AppManagement/{classification}/
    {package_family}` (every version) or `.../{package_full_name}` (one). System apps cannot
    be removed; for the device's provisioned copy use `remove_provisioned`."""

    scope: Annotated[Scope, Meta(description="Must be `user`.")] = "user"


class RemoveProvisioned(_Removal, tag="remove_provisioned", frozen=True):
    """Removes a provisioned app from the device (device context): later users no longer get
    it; users who already have it keep it. Allowed only when the device's inventory shows the
    package with IsProvisioned = 1."""

    scope: Annotated[Scope, Meta(description="Must be `device`.")] = "device"


class UpdateScan(_AppCommand, tag="update_scan", frozen=True):
    """Asks the device to look for Store app updates: `Exec .../AppManagement/UpdateScan`."""

    scope: ScopeField


class LastScanError(_AppCommand, tag="last_scan_error", frozen=True):
    """The result of the last update scan: `Get .../AppManagement/LastScanError`."""

    scope: ScopeField


class DoNotUpdate(_AppCommand, tag="do_not_update", frozen=True):
    """Blocks (1) or allows (0) automatic Store updates of one app, device-wide:
    `Replace ./Device/.../AppManagement/AppStore/{package_family}/DoNotUpdate`. Hosted
    installs still update it."""

    package_family: PackageFamilyName
    value: Annotated[
        Literal[0, 1], Meta(description="1: no automatic Store updates; 0: updates again.")
    ] = 1
    scope: Annotated[Scope, Meta(description="Must be `device`.")] = "device"


class AppPolicy(_AppCommand, tag="app_policy", frozen=True):
    """One of the ApplicationManagement policies that unlock app installs:
    AllowAllTrustedApps (non-Store apps signed by a trusted certificate),
    AllowDeveloperUnlock (developer mode) or AllowSharedUserAppData (apps share data between
    users). Without `value`: reads the effective value (`Get .../Policy/Result/...`); with
    one: sets it (`Replace .../Policy/Config/...`)."""

    policy: Annotated[
        PolicyName,
        Meta(
            description="The policy (`./Vendor/MSFT/Policy/Config|Result/ApplicationManagement/"
            "{policy}`)."
        ),
    ]
    value: (
        Annotated[
            Literal[0, 1, 65535],
            Meta(
                description="0: off (explicit deny), 1: on; 65535: not configured (only "
                "AllowAllTrustedApps and AllowDeveloperUnlock)."
            ),
        ]
        | None
    ) = None


AppCommand: TypeAlias = (
    Inventory
    | StoreLicenseInventory
    | RemoveStoreLicense
    | StoreInstall
    | AddLicense
    | HostedInstall
    | InstallStatus
    | Uninstall
    | RemoveProvisioned
    | UpdateScan
    | LastScanError
    | DoNotUpdate
    | AppPolicy
)


def describe(command: AppCommand) -> str:
    """A short label of the command's kind for the delivery log: ``windows_app.<action>``."""
    return f"windows_app.{type(command).__struct_config__.tag}"


# --- state read back from the device ---------------------------------------------------


class AppRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One installed package (one package full name) of a device's inventory. Fields the
    device left out are None."""

    package_full_name: str
    #: The family node the device lists the package under (``Name_PublisherId``).
    package_family: str
    classification: Classification
    scope: Scope
    name: str | None = None
    version: str | None = None
    publisher: str | None = None
    architecture: str | None = None
    install_location: str | None = None
    is_framework: bool | None = None
    is_bundle: bool | None = None
    install_date: str | None = None
    resource_id: str | None = None
    requires_reinstall: bool | None = None
    package_status: int | None = None
    #: Registered users and their install state, as the device writes it.
    users: str | None = None
    is_provisioned: bool | None = None
    is_stub: bool | None = None


InstallStatusName = Literal["not_installed", "installing", "failed", "installed"]
_STATUS_NAMES: Final[dict[int, InstallStatusName]] = {
    0: "not_installed",
    1: "installing",
    2: "failed",
    3: "installed",
}


class InstallState(msgspec.Struct, frozen=True, kw_only=True):
    """Where an install under ``AppInstallation/{package_family}`` stands."""

    package_family: str
    #: From Status 0-3; None when the device gave no Status or an unknown one.
    status: InstallStatusName | None
    last_error: int | None = None
    last_error_desc: str | None = None
    #: Estimated download progress (user installs from https); 0 for provisioning.
    progress_status: int | None = None
    scope: Scope = "user"


class LicenseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One Store licence under ``AppLicenses/StoreLicenses``."""

    license_id: str
    scope: Scope
    license_category: str | None = None
    license_usage: str | None = None
    requester_id: str | None = None


AppResultKind = Literal["install", "uninstall", "win32"]


class AppResult(msgspec.Struct, frozen=True, kw_only=True):
    """An asynchronous install or uninstall outcome the device reported in an alert."""

    kind: AppResultKind
    #: The Source LocURI of the alert's item (the node the command targeted).
    source: str
    package_family: str | None
    #: The result code (HRESULTs as unsigned 32-bit); 0 is success, -1 when not a number.
    code: int
    success: bool
    scope: Scope | None = None


# --- LocURIs ---------------------------------------------------------------------------


def _segment(value: str) -> str:
    # RFC 3986 unreserved characters stay; everything else is percent-encoded.
    return quote(value, safe="")


def _root(scope: Scope) -> str:
    return f"./{'Device' if scope == 'device' else 'User'}/Vendor/MSFT/{CSP}"


def _field(name: str) -> str:
    return f"{FIELD_ROOT}.{name}"


def _refuse(message: str, field: str) -> AppCommandRefused:
    return AppCommandRefused(message, _field(field))


# --- checks ----------------------------------------------------------------------------


def _check_pfn(value: str, field: str) -> str:
    # fullmatch: "$" alone would let a final newline through.
    if not _PFN.fullmatch(value):
        raise _refuse(
            f"{value!r} is not a package family name (Name_PublisherId: 3-50 letters, digits, "
            "'.' or '-', then '_' and the 13-character publisher id)",
            field,
        )
    return value


def _check_full_name(value: str, family: str, field: str) -> str:
    if package_family_of(value) is None:
        raise _refuse(
            f"{value!r} is not a package full name "
            "(Name_Version_Architecture_ResourceId_PublisherId)",
            field,
        )
    if package_family_of(value) != family:
        raise _refuse(f"{value!r} is not a package of the family {family!r}", field)
    return value


def _check_pattern(value: str, pattern: re.Pattern[str], what: str, field: str) -> str:
    if not pattern.fullmatch(value):
        raise _refuse(f"{value!r} is not a valid {what}", field)
    return value


def _check_package_uri(value: str, field: str) -> str:
    if not value or len(value) > _MAX_URI:
        raise _refuse(f"a package location is 1 to {_MAX_URI} characters", field)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _refuse("a package location cannot contain control characters", field)
    if _UNC_PATH.match(value) or _DRIVE_PATH.match(value):
        return value
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "https" and parts.hostname:
        return value
    if scheme == "http":
        raise _refuse("plain http is not authenticated: give an https URL", field)
    raise _refuse(
        f"{value!r} is not a local path (C:\\...), a UNC path (\\\\server\\share\\...) or an "
        "https URL",
        field,
    )


def _check_scope(scope: str, allowed: Scope, why: str) -> None:
    if scope != allowed:
        raise _refuse(why, "scope")


# --- SyncML building -------------------------------------------------------------------

_HEADER = Header(session_id="1", msg_id="1", target="device", source="mdmgate")
_INT_PLAIN: Final = {"Format": "int", "Type": "text/plain"}
_XML: Final = {"Format": "xml"}


def _attr(value: str) -> str:
    """An XML attribute value in double quotes (control characters were refused)."""
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _cmd(
    name: str, target: str, *, meta: dict[str, str] | None = None, data: str | None = None
) -> tuple[str, Item]:
    # CmdIDs are placeholders: the session numbers commands when it builds a message.
    return (name, Item(target=target, meta=dict(meta) if meta else None, data=data))


def _body(commands: Sequence[tuple[str, Item]]) -> bytes:
    built = [
        Command(name, cmd_id=str(n), items=[item]) for n, (name, item) in enumerate(commands, 1)
    ]
    encoded = Message(_HEADER, built, final=False).encode()
    start = encoded.index(b"<SyncBody>") + len(b"<SyncBody>")
    return encoded[start : encoded.rindex(b"</SyncBody>")]


def _application_xml(command: HostedInstall) -> str:
    """The HostedInstall ``<Application>`` description, as text: the SyncML encoder escapes
    it once when it writes ``Data``."""
    head = f'<Application PackageUri="{_attr(command.package_uri)}"'
    if command.deployment_options is not None:
        head += f' DeploymentOptions="{command.deployment_options}"'
    children = ""
    if command.dependencies:
        children += (
            "<Dependencies>"
            + "".join(f'<Dependency PackageUri="{_attr(uri)}"/>' for uri in command.dependencies)
            + "</Dependencies>"
        )
    if command.optional_packages:
        children += (
            "<OptionalPackages>"
            + "".join(
                f'<Package PackageUri="{_attr(p.package_uri)}"'
                f' PackageFamilyName="{_attr(p.package_family)}"/>'
                for p in command.optional_packages
            )
            + "</OptionalPackages>"
        )
    return f"{head}>{children}</Application>" if children else f"{head}/>"


# --- expansion -------------------------------------------------------------------------


def expand(command: AppCommand, *, inventory: Sequence[AppRecord] = ()) -> bytes:
    """The XML of the SyncML command(s) for ``command``, in the order they must run, with
    placeholder CmdIDs ``1``, ``2``, ... ``inventory`` is the device's known app inventory,
    consulted by removals. Raises :class:`AppCommandRefused` naming the field."""
    expander = _EXPANDERS.get(type(command))
    if expander is None:
        raise TypeError(f"not a Windows app command: {type(command).__name__}")
    return _body(expander(command, inventory))


_Commands: TypeAlias = list[tuple[str, Item]]


def _store_license_inventory(command: StoreLicenseInventory, _: object) -> _Commands:
    uri = f"{_root(command.scope)}/AppLicenses/StoreLicenses"
    if command.license_id is not None:
        lid = _check_pattern(command.license_id, _LICENSE_ID, "licence id", "license_id")
        uri += f"/{_segment(lid)}"
    return [_cmd("Get", uri + STRUCT_DATA)]


def _remove_store_license(command: RemoveStoreLicense, _: object) -> _Commands:
    lid = _check_pattern(command.license_id, _LICENSE_ID, "licence id", "license_id")
    return [_cmd("Delete", f"{_root(command.scope)}/AppLicenses/StoreLicenses/{_segment(lid)}")]


def _install_status(command: InstallStatus, _: object) -> _Commands:
    uri = f"{_root(command.scope)}/AppInstallation"
    if command.package_family is not None:
        uri += f"/{_segment(_check_pfn(command.package_family, 'package_family'))}"
    return [_cmd("Get", uri + STRUCT_DATA)]


def _update_scan(command: UpdateScan, _: object) -> _Commands:
    return [_cmd("Exec", f"{_root(command.scope)}/AppManagement/UpdateScan")]


def _last_scan_error(command: LastScanError, _: object) -> _Commands:
    return [_cmd("Get", f"{_root(command.scope)}/AppManagement/LastScanError")]


def _do_not_update(command: DoNotUpdate, _: object) -> _Commands:
    _check_scope(command.scope, "device", "DoNotUpdate is a device-level setting (scope device)")
    if command.value not in (0, 1):
        raise _refuse("DoNotUpdate is 0 or 1", "value")
    family = _segment(_check_pfn(command.package_family, "package_family"))
    uri = f"{_root('device')}/AppManagement/AppStore/{family}/DoNotUpdate"
    return [_cmd("Replace", uri, meta=_INT_PLAIN, data=str(command.value))]


def _inventory(command: Inventory, _: object) -> _Commands:
    uri = f"{_root(command.scope)}/AppManagement"
    if command.classification is not None:
        uri += f"/{command.classification}"
    if command.package_family is not None:
        if command.classification is None:
            raise _refuse(
                "an inventory of one package family needs its classification", "classification"
            )
        uri += f"/{_segment(_check_pfn(command.package_family, 'package_family'))}"
    return [_cmd("Get", uri + STRUCT_DATA)]


def _store_install(command: StoreInstall, _: object) -> _Commands:
    _check_scope(command.scope, "user", "Store installs run in the user context only (scope user)")
    family = _segment(_check_pfn(command.package_family, "package_family"))
    product = _check_pattern(command.product_id, _PRODUCT_ID, "Store product id", "product_id")
    sku = _check_pattern(command.skuid, _SKU_ID, "SKU id", "skuid")
    if command.flags not in (0, 1):
        raise _refuse("flags is 0 or 1", "flags")
    node = f"{_root('user')}/AppInstallation/{family}"
    xml = f'<Application id="{_attr(product)}" flags="{command.flags}" skuid="{_attr(sku)}"/>'
    # The Add of the family node lets unenrollment remove the app (the manual's "Add and Exec").
    return [_cmd("Add", node), _cmd("Exec", f"{node}/StoreInstall", meta=_XML, data=xml)]


def _add_license(command: AddLicense, _: object) -> _Commands:
    lid = _check_pattern(command.license_id, _LICENSE_ID, "licence id", "license_id")
    blob = command.license_blob.strip()
    try:
        if not blob or len(base64.b64decode(blob, validate=True)) == 0:
            raise ValueError
    except (binascii.Error, ValueError):
        raise _refuse("the licence is not base64 text", "license_blob") from None
    uri = f"{_root(command.scope)}/AppLicenses/StoreLicenses/{_segment(lid)}/AddLicense"
    return [_cmd("Exec", uri, meta=_XML, data=f'<License Content="{blob}"/>')]


def _hosted_install(command: HostedInstall, _: object) -> _Commands:
    family = _segment(_check_pfn(command.package_family, "package_family"))
    _check_package_uri(command.package_uri, "package_uri")
    for index, uri in enumerate(command.dependencies):
        _check_package_uri(uri, f"dependencies[{index}]")
    for index, package in enumerate(command.optional_packages):
        _check_package_uri(package.package_uri, f"optional_packages[{index}].package_uri")
        _check_pfn(package.package_family, f"optional_packages[{index}].package_family")
    if command.deployment_options is not None:
        if command.scope == "device":
            raise _refuse("DeploymentOptions is for the user context only", "deployment_options")
        if not 0 <= command.deployment_options <= 0xFFFFFFFF:
            raise _refuse("DeploymentOptions is a 32-bit mask", "deployment_options")
    node = f"{_root(command.scope)}/AppInstallation/{family}"
    exec_item = _cmd("Exec", f"{node}/HostedInstall", meta=_XML, data=_application_xml(command))
    # Add first: without the family node the app is not removed at unenrollment.
    return [_cmd("Add", node), exec_item]


def _family_records(
    family: str, full_name: str | None, inventory: Sequence[AppRecord]
) -> list[AppRecord]:
    return [
        r
        for r in inventory
        if r.package_family == family and (full_name is None or r.package_full_name == full_name)
    ]


def _delete_target(
    scope: Scope, classification: Classification, family: str, full_name: str | None
) -> tuple[str, Item]:
    uri = f"{_root(scope)}/AppManagement/{classification}/{_segment(family)}"
    if full_name is not None:
        uri += f"/{_segment(full_name)}"
    return _cmd("Delete", uri)


def _removable(
    command: _Removal, inventory: Sequence[AppRecord], verb: str
) -> tuple[str, str | None, list[AppRecord]]:
    """The family, full name and inventory records of a removal; System apps refused."""
    family = _check_pfn(command.package_family, "package_family")
    full = command.package_full_name
    if full is not None:
        _check_full_name(full, family, "package_full_name")
    if command.classification == "System":
        raise _refuse(f"System apps are part of Windows and cannot be {verb}", "classification")
    known = list(_family_records(family, full, inventory))
    if any(r.classification == "System" for r in known):
        raise _refuse(f"{family} is a System app and cannot be {verb}", "package_family")
    return family, full, known


def _uninstall(command: Uninstall, inventory: Sequence[AppRecord]) -> _Commands:
    _check_scope(
        command.scope,
        "user",
        "uninstall is per user (scope user); remove a provisioned app with remove_provisioned",
    )
    family, full, known = _removable(command, inventory, "uninstalled")
    classification: Classification | None = command.classification
    if classification is None:
        if not known:
            raise _refuse(
                f"the device's inventory does not list {family}: give its classification",
                "classification",
            )
        classification = known[0].classification
    return [_delete_target("user", classification, family, full)]


def _remove_provisioned(command: RemoveProvisioned, inventory: Sequence[AppRecord]) -> _Commands:
    _check_scope(command.scope, "device", "provisioned apps are removed in the device context")
    family, full, known = _removable(command, inventory, "removed")
    provisioned = [
        r
        for r in known
        if r.is_provisioned
        and (command.classification is None or r.classification == command.classification)
    ]
    if not provisioned:
        what, field = (
            (full, "package_full_name") if full is not None else (family, "package_family")
        )
        raise _refuse(
            f"the device's inventory does not show {what} with IsProvisioned = 1; only "
            "provisioned apps can be removed from the device",
            field,
        )
    classification = command.classification or provisioned[0].classification
    return [_delete_target("device", classification, family, full)]


def _policy(command: AppPolicy, _: object) -> _Commands:
    if command.value is None:
        return [_cmd("Get", f"{POLICY_RESULT}/{command.policy}{STRUCT_DATA}")]
    allowed = (0, 1) if command.policy == "AllowSharedUserAppData" else (0, 1, 65535)
    if command.value not in allowed:
        raise _refuse(f"{command.policy} takes {', '.join(map(str, allowed))}", "value")
    uri = f"{POLICY_CONFIG}/{command.policy}"
    return [_cmd("Replace", uri, meta=_INT_PLAIN, data=str(command.value))]


_EXPANDERS: Final[dict[type[Any], Callable[[Any, Sequence[AppRecord]], _Commands]]] = {
    Inventory: _inventory,
    StoreLicenseInventory: _store_license_inventory,
    RemoveStoreLicense: _remove_store_license,
    StoreInstall: _store_install,
    AddLicense: _add_license,
    HostedInstall: _hosted_install,
    InstallStatus: _install_status,
    Uninstall: _uninstall,
    RemoveProvisioned: _remove_provisioned,
    UpdateScan: _update_scan,
    LastScanError: _last_scan_error,
    DoNotUpdate: _do_not_update,
    AppPolicy: _policy,
}


# --- stored bodies ---------------------------------------------------------------------

_WRAP_HEAD = (
    b'<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto>'
    b"<SessionID>1</SessionID><MsgID>1</MsgID><Target><LocURI>device</LocURI></Target>"
    b"<Source><LocURI>mdmgate</LocURI></Source></SyncHdr><SyncBody>"
)
_WRAP_TAIL = b"</SyncBody></SyncML>"


def command_targets(body: bytes) -> list[str]:
    """The Target LocURIs of every item of a stored body (command XML), nested commands
    included, in document order; ``[]`` when the body is not SyncML."""
    try:
        message = syncml.decode(_WRAP_HEAD + body + _WRAP_TAIL)
    except SyncMLDecodeError:
        return []
    out: list[str] = []
    stack = list(reversed(message.commands))
    while stack:
        command = stack.pop()
        out.extend(item.target for item in command.items if item.target is not None)
        stack.extend(reversed(command.commands))
    return out


# --- reading the device's answers ------------------------------------------------------

_CLASSIFICATIONS: Final[dict[str, Classification]] = {
    "appstore": "AppStore",
    "nonstore": "nonStore",
    "system": "System",
}
_TEXT, _BOOL, _INT = 0, 1, 2
_APP_LEAVES: Final[dict[str, tuple[str, int]]] = {
    "Name": ("name", _TEXT),
    "Version": ("version", _TEXT),
    "Publisher": ("publisher", _TEXT),
    "Architecture": ("architecture", _TEXT),
    "InstallLocation": ("install_location", _TEXT),
    "IsFramework": ("is_framework", _BOOL),
    "IsBundle": ("is_bundle", _BOOL),
    "InstallDate": ("install_date", _TEXT),
    "ResourceID": ("resource_id", _TEXT),
    "RequiresReinstall": ("requires_reinstall", _BOOL),
    "PackageStatus": ("package_status", _INT),
    "Users": ("users", _TEXT),
    "IsProvisioned": ("is_provisioned", _BOOL),
    "IsStub": ("is_stub", _BOOL),
}
_TRUE: Final = frozenset({"1", "true", "True", "TRUE"})
_FALSE: Final = frozenset({"0", "false", "False", "FALSE"})
_DECIMAL = re.compile(r"^[+-]?[0-9]{1,20}$")
_HEX = re.compile(r"^0[xX][0-9A-Fa-f]{1,16}$")


def _csp_path(uri: str | None) -> tuple[Scope, list[str]] | None:
    """The scope and the segments below ``.../EnterpriseModernAppManagement`` of a LocURI,
    percent-decoded; None for another CSP."""
    if not uri:
        return None
    if "?" in uri:
        uri = uri.split("?", 1)[0]
    parts = uri.split("/")
    if len(parts) < 4 or parts[0] != ".":
        return None
    scope: Scope
    if parts[1] == "Device":
        scope, start = "device", 2
    elif parts[1] == "User":
        scope, start = "user", 2
    else:  # ./Vendor/MSFT/... is the device
        scope, start = "device", 1
    if parts[start : start + 3] != ["Vendor", "MSFT", CSP]:
        return None
    rest = parts[start + 3 :]
    if any("%" in p for p in rest):
        rest = [unquote(p) for p in rest]
    return scope, rest


def _text(item: Item) -> str | None:
    data = item.data
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data


def _number(text: str | None) -> int | None:
    """A decimal or ``0x`` hex number; negative 32-bit values as their unsigned HRESULT."""
    if text is None:
        return None
    text = text.strip()
    if _HEX.fullmatch(text):
        return int(text, 16)
    if _DECIMAL.fullmatch(text):
        value = int(text)
        return value + (1 << 32) if -(1 << 31) <= value < 0 else value
    return None


def _flag(text: str | None) -> bool | None:
    if text is None:
        return None
    text = text.strip()
    return True if text in _TRUE else False if text in _FALSE else None


def _convert(text: str | None, kind: int) -> Any:
    if kind == _TEXT:
        return text
    if kind == _BOOL:
        return _flag(text)
    return _number(text)


def parse_inventory(items: Iterable[Item]) -> list[AppRecord]:
    """The packages of a ``?list=StructData`` Results under ``AppManagement`` (device or
    user scope): one record per package full name, in the order the device listed them.
    Items of other nodes are skipped."""
    # One pass: leaf values grouped by (scope, classification, family, full name).
    groups: dict[tuple[Scope, Classification, str, str], dict[str, Any]] = {}
    for item in items:
        found = _csp_path(item.source or item.target)
        if found is None:
            continue
        scope, rest = found
        if len(rest) < 4 or rest[0] != "AppManagement":
            continue
        classification = _CLASSIFICATIONS.get(rest[1].lower())
        family, full = rest[2], rest[3]
        # Names have "_"; the family's settings (DoNotUpdate, AppSettingPolicy, ...) and
        # ReleaseManagement do not.
        if classification is None or "_" not in family or "_" not in full:
            continue
        key = (scope, classification, family, full)
        fields = groups.get(key)
        if fields is None:
            fields = groups[key] = {}
        if len(rest) == 5:
            leaf = _APP_LEAVES.get(rest[4])
            if leaf is not None:
                fields[leaf[0]] = _convert(_text(item), leaf[1])
    return [
        AppRecord(
            package_full_name=full,
            package_family=family,
            classification=classification,
            scope=scope,
            **fields,
        )
        for (scope, classification, family, full), fields in groups.items()
    ]


_RECORDS: Final = msgspec.json.Decoder(list[AppRecord])


def inventory_from_message(data: bytes, prefix: str, cmd_ref: str | None = None) -> list[AppRecord]:
    """:func:`parse_inventory` of the Results items of a whole SyncML message (XML or
    WBXML) whose Source LocURI (else Target) starts with ``prefix``: the inventory command's
    target without its ``?list=StructData``. ``cmd_ref`` keeps only the Results answering
    that CmdID. The message is read in Rust and never becomes Python objects; input that
    :func:`mdmgate.syncml.decode` refuses raises the same :class:`SyncMLDecodeError`.

    Items are taken as they stand in this message: a leaf split over messages (MoreData) is
    not reassembled here."""
    return _RECORDS.decode(_core.syncml_app_inventory(data, prefix, cmd_ref))


def parse_install_status(items: Iterable[Item]) -> list[InstallState]:
    """The installs of a Results under ``AppInstallation`` (one family or all), one per
    package family, in the order listed. Items of other nodes are skipped."""
    groups: dict[tuple[Scope, str], dict[str, str | None]] = {}
    for item in items:
        found = _csp_path(item.source or item.target)
        if found is None:
            continue
        scope, rest = found
        if len(rest) < 2 or rest[0] != "AppInstallation" or not rest[1]:
            continue
        leaves = groups.setdefault((scope, rest[1]), {})
        if len(rest) == 3:
            leaves[rest[2]] = _text(item)
    out: list[InstallState] = []
    for (scope, family), leaves in groups.items():
        code = _number(leaves.get("Status"))
        description = leaves.get("LastErrorDesc", leaves.get("LastErrorDescription"))
        out.append(
            InstallState(
                package_family=family,
                status=_STATUS_NAMES.get(code) if code is not None else None,
                last_error=_number(leaves.get("LastError")),
                last_error_desc=description or None,
                progress_status=_number(leaves.get("ProgressStatus")),
                scope=scope,
            )
        )
    return out


def parse_licenses(items: Iterable[Item]) -> list[LicenseRecord]:
    """The licences of a Results under ``AppLicenses/StoreLicenses``, in the order listed."""
    groups: dict[tuple[Scope, str], dict[str, str | None]] = {}
    for item in items:
        found = _csp_path(item.source or item.target)
        if found is None:
            continue
        scope, rest = found
        if len(rest) < 3 or rest[:2] != ["AppLicenses", "StoreLicenses"] or not rest[2]:
            continue
        leaves = groups.setdefault((scope, rest[2]), {})
        if len(rest) == 4:
            leaves[rest[3]] = _text(item)
    return [
        LicenseRecord(
            license_id=license_id,
            scope=scope,
            license_category=leaves.get("LicenseCategory"),
            license_usage=leaves.get("LicenseUsage"),
            requester_id=leaves.get("RequesterID"),
        )
        for (scope, license_id), leaves in groups.items()
    ]


_RESULT_TYPES: Final[dict[str, AppResultKind]] = {
    "com.microsoft.mdm.EnterpriseHostedAppInstall.result": "install",
    # Not in the manual ("no alert for Store installs yet"), but seen from devices.
    "com.microsoft.mdm.EnterpriseStoreAppInstall.result": "install",
    "com.microsoft.mdm.EnterpriseAppUninstall.result": "uninstall",
    "com.microsoft.mdm.win32csp_install": "win32",
}
_RESULT_ALERTS: Final = frozenset({1224, 1226})
_TYPE_PREFIX: Final = "Reversed-Domain-Name:"


def _alert_type(item: Item) -> str | None:
    meta = item.meta
    if not meta:
        return None
    value = meta.get("Type")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    value = value.strip()
    return value.removeprefix(_TYPE_PREFIX)


def _family_in(path: list[str]) -> str | None:
    # .../AppInstallation/{PFN}/HostedInstall or .../AppManagement[/{classification}]/{PFN}
    if len(path) >= 2 and path[0] == "AppInstallation":
        return path[1] or None
    if len(path) >= 2 and path[0] == "AppManagement":
        index = 2 if path[1].lower() in _CLASSIFICATIONS else 1
        if len(path) > index and "_" in path[index]:
            return path[index]
    return None


def parse_app_alert(code: int, items: Sequence[Item]) -> AppResult | None:
    """The app result an alert carries (Alert 1226 hosted install / uninstall result, Alert
    1224 or 1226 ``win32csp_install``), from its first item of such a type; None for any
    other alert."""
    if code not in _RESULT_ALERTS:
        return None
    for item in items:
        kind = _RESULT_TYPES.get(_alert_type(item) or "")
        if kind is None:
            continue
        source = item.source or item.target or ""
        found = _csp_path(source)
        number = _number(_text(item))
        value = -1 if number is None else number
        return AppResult(
            kind=kind,
            source=source,
            package_family=_family_in(found[1]) if found and kind != "win32" else None,
            code=value,
            success=value == 0,
            scope=found[0] if found else _scope_of(source),
        )
    return None


def _scope_of(uri: str) -> Scope | None:
    if uri.startswith("./User/"):
        return "user"
    if uri.startswith(("./Device/", "./Vendor/")):
        return "device"
    return None


def result_matches(result: AppResult, targets: Iterable[str]) -> bool:
    """Whether ``result`` answers a command that targeted ``targets`` (see
    :func:`command_targets`): the same node, or for an uninstall (whose alert names
    ``AppManagement/{family}`` without the classification) a Delete under that family."""
    for target in targets:
        if target == result.source:
            return True
        if result.kind != "uninstall" or result.package_family is None:
            continue
        found = _csp_path(target)
        if (
            found is not None
            and found[0] == result.scope
            and found[1][:1] == ["AppManagement"]
            and _family_in(found[1]) == result.package_family
        ):
            return True
    return False
