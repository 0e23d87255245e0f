"""Apple MDM command reports (``PUT /mdm/apple/connect``) and typed views of results.

A device answers on the command channel with ``Status`` (``Idle``, ``Acknowledged``,
``Error``, ``CommandFormatError``, ``NotNow``), its identity (``UDID`` or
``EnrollmentID``), the ``CommandUUID`` it answers (not with ``Idle``), an ``ErrorChain`` on
errors, and the command's result keys. :func:`decode_report` reads all of it leniently:
result keys and unknown keys land in ``extra``, odd types become warnings, never
exceptions (only a body that is no plist dictionary, or has no ``Status`` string, raises
:class:`~mdmgate.apple.errors.AppleDecodeError`).

Typed views of the results the gateway acts on:

* :func:`installed_applications` (``InstalledApplicationList``),
* :func:`managed_applications` (``ManagedApplicationList``),
* :func:`install_application_result` (``InstallApplication``),

and :func:`installed_versions`, which turns an InstalledApplicationList into the
installed-version facts the version engine (:mod:`mdmgate.versions`) works on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from mdmgate import versions
from mdmgate.apple import _convert
from mdmgate.apple.errors import AppleDecodeError
from mdmgate.apple.schema import SchemaIssue, facts_os, validate_response
from mdmgate.errors import InvalidVersion, UnknownPlatform

__all__ = [
    "CommandReport",
    "CommandStatus",
    "ErrorChainItem",
    "InstallApplicationResult",
    "InstalledApp",
    "InstalledApplicationListResult",
    "InstalledVersion",
    "InstalledVersions",
    "ManagedApp",
    "ManagedAppStatus",
    "ManagedApplicationListResult",
    "decode_report",
    "install_application_result",
    "installed_applications",
    "installed_versions",
    "managed_applications",
]

_field = msgspec.field


class CommandStatus(enum.StrEnum):
    """The ``Status`` values of a command report."""

    IDLE = "Idle"
    ACKNOWLEDGED = "Acknowledged"
    ERROR = "Error"
    COMMAND_FORMAT_ERROR = "CommandFormatError"
    NOT_NOW = "NotNow"


class ManagedAppStatus(enum.StrEnum):
    """The states of a managed app (``ManagedApplicationList`` ``Status``, and the
    ``State`` of an ``InstallApplication`` result)."""

    QUEUED = "Queued"
    NEEDS_REDEMPTION = "NeedsRedemption"
    REDEEMING = "Redeeming"
    PROMPTING = "Prompting"
    PROMPTING_FOR_LOGIN = "PromptingForLogin"
    VALIDATING_PURCHASE = "ValidatingPurchase"
    PROMPTING_FOR_UPDATE = "PromptingForUpdate"
    PROMPTING_FOR_UPDATE_LOGIN = "PromptingForUpdateLogin"
    PROMPTING_FOR_MANAGEMENT = "PromptingForManagement"
    VALIDATING_UPDATE = "ValidatingUpdate"
    UPDATING = "Updating"
    INSTALLING = "Installing"
    MANAGED = "Managed"
    MANAGED_BUT_UNINSTALLED = "ManagedButUninstalled"
    UNKNOWN = "Unknown"
    USER_INSTALLED_APP = "UserInstalledApp"
    USER_REJECTED = "UserRejected"
    UPDATE_REJECTED = "UpdateRejected"
    MANAGEMENT_REJECTED = "ManagementRejected"
    FAILED = "Failed"


class ErrorChainItem(msgspec.Struct, kw_only=True):
    """One error of a report's ``ErrorChain``, outermost first."""

    error_code: int | None = _field(default=None, name="ErrorCode")
    error_domain: str | None = _field(default=None, name="ErrorDomain")
    localized_description: str | None = _field(default=None, name="LocalizedDescription")
    us_english_description: str | None = _field(default=None, name="USEnglishDescription")
    extra: dict[str, Any] = _field(default_factory=dict, name=_convert.EXTRA)

    def __str__(self) -> str:
        text = self.us_english_description or self.localized_description or ""
        return f"{self.error_domain} {self.error_code}: {text}".strip()


class CommandReport(msgspec.Struct, kw_only=True):
    """A device's report on the command channel.

    ``extra`` holds the command's result keys (``InstalledApplicationList``, ``State``,
    …) and any key the model does not know; ``raw`` the body as received; ``warnings``
    the problems found while reading; ``request_type`` the command it answers, when the
    caller said so.
    """

    status: str = _field(default="", name="Status")
    udid: str | None = _field(default=None, name="UDID")
    enrollment_id: str | None = _field(default=None, name="EnrollmentID")
    enrollment_user_id: str | None = _field(default=None, name="EnrollmentUserID")
    user_id: str | None = _field(default=None, name="UserID")
    user_short_name: str | None = _field(default=None, name="UserShortName")
    user_long_name: str | None = _field(default=None, name="UserLongName")
    not_on_console: bool | None = _field(default=None, name="NotOnConsole")
    command_uuid: str | None = _field(default=None, name="CommandUUID")
    error_chain: list[ErrorChainItem] = _field(default_factory=list, name="ErrorChain")
    request_type: str | None = _field(default=None, name=_convert.REQUEST_TYPE)
    extra: dict[str, Any] = _field(default_factory=dict, name=_convert.EXTRA)
    raw: bytes = _field(default=b"", name=_convert.RAW)
    warnings: list[SchemaIssue] = _field(default_factory=list, name=_convert.WARNINGS)

    @property
    def device_id(self) -> str | None:
        """``UDID``, or ``EnrollmentID`` under User Enrollment."""
        return self.udid if self.udid is not None else self.enrollment_id

    @property
    def known_status(self) -> CommandStatus | None:
        """``status`` as a :class:`CommandStatus` (``None`` for a value Apple does not
        define)."""
        try:
            return CommandStatus(self.status)
        except ValueError:
            return None


def decode_report(
    data: bytes,
    *,
    request_type: str | None = None,
    platform: str | None = None,
    os_version: str | None = None,
) -> CommandReport:
    """The report in a plist body (XML or binary), read leniently.

    ``request_type`` (the RequestType of the command ``CommandUUID`` names, which the
    gateway knows from its queue) lets the result keys be checked against the command's
    response keys too; ``platform`` lets that check know which keys the platform has, and
    ``os_version`` which keys the device's OS version has.
    """
    facts_os(platform)  # refuses unknown platform names before anything else
    body = _convert.load_dict(data, "command report")
    status = body.get("Status")
    if not isinstance(status, str):
        raise AppleDecodeError("command report without a Status string", "Status")
    warnings: list[SchemaIssue] = []
    if status not in CommandStatus.__members__.values():
        known = ", ".join(CommandStatus)
        warnings.append(SchemaIssue("Status", "value", f"{status!r} is not one of {known}"))
    for key, kind in (
        ("UDID", str),
        ("EnrollmentID", str),
        ("CommandUUID", str),
        ("ErrorChain", list),
    ):
        if key in body and not isinstance(body[key], kind):
            warnings.append(SchemaIssue(key, "type", f"expected {kind.__name__}"))
    if "UDID" not in body and "EnrollmentID" not in body:
        warnings.append(SchemaIssue("UDID", "missing", "one of UDID, EnrollmentID is required"))
    if status != CommandStatus.IDLE and "CommandUUID" not in body:
        warnings.append(SchemaIssue("CommandUUID", "missing", f"{status} without CommandUUID"))
    if request_type is not None:
        channel: Literal["device", "user"] = (
            "user" if "UserID" in body or "EnrollmentUserID" in body else "device"
        )
        warnings.extend(
            validate_response(
                request_type, body, platform=platform, channel=channel, os_version=os_version
            )
        )
    clean = {k: v for k, v in body.items() if k not in _convert.RESERVED}
    converted: list[SchemaIssue] = []
    chain = clean.pop("ErrorChain", None)
    report = _convert.convert(CommandReport, clean, "", converted)
    if isinstance(chain, list):
        report.error_chain = _convert.convert_many(ErrorChainItem, chain, "ErrorChain", converted)
    elif chain is not None:
        report.extra["ErrorChain"] = chain
    for key in body.keys() & _convert.RESERVED:
        report.extra[key] = body[key]
    report.request_type = request_type
    report.raw = bytes(data)
    report.warnings = _convert.merge(warnings, converted)
    return report


# --- InstalledApplicationList --------------------------------------------------------------


class InstalledApp(msgspec.Struct, kw_only=True):
    """One app of an ``InstalledApplicationList`` result."""

    identifier: str | None = _field(default=None, name="Identifier")
    name: str | None = _field(default=None, name="Name")
    #: CFBundleVersion (the build number).
    version: str | None = _field(default=None, name="Version")
    #: CFBundleShortVersionString (the marketing version users see).
    short_version: str | None = _field(default=None, name="ShortVersion")
    #: The App Store's identifier of the installed release (store apps only).
    external_version_identifier: int | None = _field(default=None, name="ExternalVersionIdentifier")
    bundle_size: int | None = _field(default=None, name="BundleSize")
    dynamic_size: int | None = _field(default=None, name="DynamicSize")
    installing: bool | None = _field(default=None, name="Installing")
    is_validated: bool | None = _field(default=None, name="IsValidated")
    has_update_available: bool | None = _field(default=None, name="HasUpdateAvailable")
    app_store_vendable: bool | None = _field(default=None, name="AppStoreVendable")
    device_based_vpp: bool | None = _field(default=None, name="DeviceBasedVPP")
    beta_app: bool | None = _field(default=None, name="BetaApp")
    ad_hoc_code_signed: bool | None = _field(default=None, name="AdHocCodeSigned")
    is_app_clip: bool | None = _field(default=None, name="IsAppClip")
    distributor_identifier: str | None = _field(default=None, name="DistributorIdentifier")
    source: str | None = _field(default=None, name="Source")
    download_failed: bool | None = _field(default=None, name="DownloadFailed")
    download_waiting: bool | None = _field(default=None, name="DownloadWaiting")
    download_paused: bool | None = _field(default=None, name="DownloadPaused")
    download_cancelled: bool | None = _field(default=None, name="DownloadCancelled")
    extra: dict[str, Any] = _field(default_factory=dict, name=_convert.EXTRA)

    @property
    def display_version(self) -> str | None:
        """``ShortVersion``, or ``Version`` when there is none."""
        return self.short_version if self.short_version is not None else self.version


class InstalledApplicationListResult(msgspec.Struct, kw_only=True):
    """The apps of an ``InstalledApplicationList`` report, and the problems met."""

    apps: list[InstalledApp]
    warnings: list[SchemaIssue] = _field(default_factory=list)


def _result_warnings(
    report: CommandReport, request_type: str, key: str, validate: bool
) -> list[SchemaIssue]:
    if report.request_type == request_type:
        return [
            w for w in report.warnings if w.path == key or w.path.startswith((f"{key}.", f"{key}["))
        ]
    if not validate:
        return []
    return validate_response(request_type, {"Status": report.status, key: report.extra[key]})


def installed_applications(
    report: CommandReport, *, validate: bool = True
) -> InstalledApplicationListResult:
    """The typed ``InstalledApplicationList`` of a report.

    Unknown keys of each app are kept in its ``extra``; an entry that is not a
    dictionary is skipped with a warning; a value of the wrong type is a warning. A report
    without the list (an error, ``NotNow``) gives no apps and a warning. ``validate``
    checks the list against the schema facts (unless :func:`decode_report` was told the
    RequestType and did so already).
    """
    key = "InstalledApplicationList"
    value = report.extra.get(key)
    if not isinstance(value, list):
        problem = "missing" if value is None else f"expected an array, got {type(value).__name__}"
        return InstalledApplicationListResult(
            apps=[], warnings=[SchemaIssue(key, "missing" if value is None else "type", problem)]
        )
    warnings = _result_warnings(report, key, key, validate)
    converted: list[SchemaIssue] = []
    apps = _convert.convert_many(InstalledApp, value, key, converted)
    return InstalledApplicationListResult(apps=apps, warnings=_convert.merge(warnings, converted))


# --- ManagedApplicationList ----------------------------------------------------------------


class ManagedApp(msgspec.Struct, kw_only=True):
    """One app of a ``ManagedApplicationList`` result (``identifier`` is its key)."""

    identifier: str = _field(default="", name=_convert.IDENTIFIER)
    status: str | None = _field(default=None, name="Status")
    management_flags: int | None = _field(default=None, name="ManagementFlags")
    external_version_identifier: int | None = _field(default=None, name="ExternalVersionIdentifier")
    has_configuration: bool | None = _field(default=None, name="HasConfiguration")
    has_feedback: bool | None = _field(default=None, name="HasFeedback")
    is_validated: bool | None = _field(default=None, name="IsValidated")
    unused_redemption_code: str | None = _field(default=None, name="UnusedRedemptionCode")
    extra: dict[str, Any] = _field(default_factory=dict, name=_convert.EXTRA)

    @property
    def known_status(self) -> ManagedAppStatus | None:
        """``status`` as a :class:`ManagedAppStatus` (``None`` if Apple defines no such
        state)."""
        try:
            return ManagedAppStatus(self.status) if self.status is not None else None
        except ValueError:
            return None


class ManagedApplicationListResult(msgspec.Struct, kw_only=True):
    """The managed apps of a ``ManagedApplicationList`` report, by bundle identifier."""

    apps: dict[str, ManagedApp]
    warnings: list[SchemaIssue] = _field(default_factory=list)


def managed_applications(
    report: CommandReport, *, validate: bool = True
) -> ManagedApplicationListResult:
    """The typed ``ManagedApplicationList`` of a report, leniently (as
    :func:`installed_applications`)."""
    key = "ManagedApplicationList"
    value = report.extra.get(key)
    if not isinstance(value, dict):
        problem = (
            "missing" if value is None else f"expected a dictionary, got {type(value).__name__}"
        )
        return ManagedApplicationListResult(
            apps={}, warnings=[SchemaIssue(key, "missing" if value is None else "type", problem)]
        )
    warnings = _result_warnings(report, key, key, validate)
    converted: list[SchemaIssue] = []
    apps: dict[str, ManagedApp] = {}
    for bundle_id, item in value.items():
        where = _convert.join(key, str(bundle_id))
        if not isinstance(item, dict):
            converted.append(SchemaIssue(where, "type", "expected a dictionary, skipped"))
            continue
        app = _convert.convert(ManagedApp, item, where, converted)
        app.identifier = str(bundle_id)
        apps[app.identifier] = app
    return ManagedApplicationListResult(apps=apps, warnings=_convert.merge(warnings, converted))


# --- InstallApplication -----------------------------------------------------------------------


class InstallApplicationResult(msgspec.Struct, kw_only=True):
    """What a device said to ``InstallApplication``: the app's ``state`` (one of
    :class:`ManagedAppStatus`) or, when refused, the ``rejection_reason``."""

    identifier: str | None = _field(default=None, name="Identifier")
    state: str | None = _field(default=None, name="State")
    rejection_reason: str | None = _field(default=None, name="RejectionReason")
    extra: dict[str, Any] = _field(default_factory=dict, name=_convert.EXTRA)
    warnings: list[SchemaIssue] = _field(default_factory=list, name=_convert.WARNINGS)


def install_application_result(report: CommandReport) -> InstallApplicationResult:
    """The result keys of an ``InstallApplication`` report."""
    issues: list[SchemaIssue] = []
    keys = ("Identifier", "State", "RejectionReason")
    result = _convert.convert(
        InstallApplicationResult,
        {k: report.extra[k] for k in keys if k in report.extra},
        "",
        issues,
    )
    if report.request_type != "InstallApplication":
        issues = _convert.merge(
            validate_response("InstallApplication", {"Status": report.status, **report.extra}),
            issues,
        )
    else:
        own = [w for w in report.warnings if w.path in keys]
        issues = _convert.merge(own, issues)
    result.extra = {k: v for k, v in report.extra.items() if k not in keys}
    result.warnings = issues
    return result


# --- installed-version facts ---------------------------------------------------------------


class InstalledVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One app installed on a device, as the version engine sees it.

    ``version`` is the value that orders (see :func:`installed_versions`), ``sort_key``
    its :func:`mdmgate.versions.sort_key`; ``display_version`` is what to show
    (ShortVersion, else Version). ``bundle_version`` (CFBundleVersion), ``short_version``
    (CFBundleShortVersionString) and ``external_version_identifier`` (the App Store's id
    of the release) are kept as reported.
    """

    identifier: str
    platform: str
    version: str | None
    sort_key: bytes | None
    display_version: str | None
    bundle_version: str | None
    short_version: str | None
    external_version_identifier: int | None
    name: str | None


class InstalledVersions(msgspec.Struct, kw_only=True):
    """The installed-version facts of one report: one entry per bundle identifier, in
    report order, and the problems met (skipped entries, unordered versions)."""

    versions: list[InstalledVersion]
    warnings: list[SchemaIssue] = _field(default_factory=list)

    def by_identifier(self) -> dict[str, InstalledVersion]:
        """The entries keyed by bundle identifier."""
        return {v.identifier: v for v in self.versions}


_VERSION_PLATFORMS = ("ios", "ipados", "macos")


def _order_value(
    preferred: str | None, fallback: str | None, platform: str
) -> tuple[str | None, bytes | None]:
    for candidate in (preferred, fallback):
        if candidate is None:
            continue
        try:
            return candidate, versions.sort_key(candidate, platform=platform)
        except InvalidVersion:
            continue
    return None, None


def installed_versions(
    apps: CommandReport | InstalledApplicationListResult | Iterable[InstalledApp],
    *,
    platform: str,
    order_by: Literal["short_version", "version"] = "short_version",
) -> InstalledVersions:
    """Installed-version facts for the version engine, from an InstalledApplicationList.

    Which value orders: ``ShortVersion`` (CFBundleShortVersionString) by default. The
    App Store requires it to grow with every release and store catalogues publish it,
    while ``Version`` (CFBundleVersion, the build number) need only grow within one
    ShortVersion. ``Version`` orders when ShortVersion is missing or is not a valid
    bundle version under the platform's rule (:mod:`mdmgate.versions`);
    ``order_by="version"`` turns that preference round, for internal apps whose file
    version is CFBundleVersion. ``ExternalVersionIdentifier`` never orders: it only
    names the store release. An entry where neither value is a valid version is kept with
    ``version`` and ``sort_key`` set to ``None`` (and a warning).

    Entries with ``Installing: true`` never count as installed and are left out, as are
    entries without an Identifier. A bundle identifier listed twice (a Mac can hold two
    copies of an app) keeps its highest version.

    ``platform`` is ``ios`` (or ``ipados``) or ``macos``.
    """
    if platform not in _VERSION_PLATFORMS:
        raise UnknownPlatform(
            f"installed versions are read for ios, ipados and macos, not {platform!r}"
        )
    warnings: list[SchemaIssue] = []
    if isinstance(apps, CommandReport):
        result = installed_applications(apps)
        warnings.extend(result.warnings)
        items: Iterable[InstalledApp] = result.apps
    elif isinstance(apps, InstalledApplicationListResult):
        items = apps.apps
    else:
        items = apps
    found: dict[str, InstalledVersion] = {}
    for index, app in enumerate(items):
        where = f"InstalledApplicationList[{index}]"
        if app.installing:
            continue
        if not app.identifier:
            warnings.append(SchemaIssue(where, "missing", "no Identifier; not counted"))
            continue
        if order_by == "short_version":
            version, key = _order_value(app.short_version, app.version, platform)
        else:
            version, key = _order_value(app.version, app.short_version, platform)
        if version is None:
            shown = app.short_version, app.version
            warnings.append(
                SchemaIssue(
                    where,
                    "value",
                    f"{app.identifier}: no orderable version (ShortVersion {shown[0]!r}, "
                    f"Version {shown[1]!r})",
                )
            )
        fact = InstalledVersion(
            identifier=app.identifier,
            platform=platform,
            version=version,
            sort_key=key,
            display_version=app.display_version,
            bundle_version=app.version,
            short_version=app.short_version,
            external_version_identifier=app.external_version_identifier,
            name=app.name,
        )
        have = found.get(app.identifier)
        if have is not None:
            warnings.append(SchemaIssue(where, "value", f"{app.identifier} is listed twice"))
            if (have.sort_key or b"") >= (key or b""):
                continue
        found[app.identifier] = fact
    return InstalledVersions(versions=list(found.values()), warnings=warnings)
