"""Apple MDM check-in messages (``PUT /mdm/apple/checkin``).

:func:`decode_checkin` reads the plist body a device sends and returns the typed message
for its ``MessageType``. Reading is lenient: keys the model does not know are kept in
``extra``, values of the wrong type become warnings (and are kept in ``extra`` when they
cannot be read as the field's type), and the body's bytes are kept in ``raw``. Only a body
that is no plist dictionary, or has no ``MessageType`` string, raises
:class:`~mdmgate.apple.errors.AppleDecodeError`. An unknown ``MessageType`` gives an
:class:`UnknownCheckin` with a warning.

>>> body = b'''<?xml version="1.0" encoding="UTF-8"?>
... <plist version="1.0"><dict>
... <key>MessageType</key><string>CheckOut</string>
... <key>Topic</key><string>com.apple.mgmt.External.1</string>
... <key>UDID</key><string>0000-1111</string>
... </dict></plist>'''
>>> message = decode_checkin(body)
>>> type(message).__name__, message.device_id, message.warnings
('CheckOut', '0000-1111', [])
"""

from __future__ import annotations

from typing import Any

import msgspec

from mdmgate.apple import _convert
from mdmgate.apple.errors import AppleDecodeError
from mdmgate.apple.schema import Channel, SchemaIssue, facts_os, validate_checkin

__all__ = [
    "CHECKIN_TYPES",
    "Authenticate",
    "CheckOut",
    "CheckinMessage",
    "DeclarativeManagement",
    "GetBootstrapToken",
    "GetToken",
    "SetBootstrapToken",
    "TokenUpdate",
    "UnknownCheckin",
    "UserAuthenticate",
    "decode_checkin",
]

_field = msgspec.field


class CheckinMessage(msgspec.Struct, kw_only=True):
    """Keys every check-in message may carry, and what the reader adds.

    ``extra`` holds every key the model has no field for (and unreadable values),
    ``raw`` the body as received, ``warnings`` the problems found while reading.
    """

    message_type: str = _field(default="", name="MessageType")
    udid: str | None = _field(default=None, name="UDID")
    enrollment_id: str | None = _field(default=None, name="EnrollmentID")
    enrollment_user_id: str | None = _field(default=None, name="EnrollmentUserID")
    user_id: str | None = _field(default=None, name="UserID")
    user_short_name: str | None = _field(default=None, name="UserShortName")
    user_long_name: str | None = _field(default=None, name="UserLongName")
    extra: dict[str, Any] = _field(default_factory=dict, name=_convert.EXTRA)
    raw: bytes = _field(default=b"", name=_convert.RAW)
    warnings: list[SchemaIssue] = _field(default_factory=list, name=_convert.WARNINGS)

    @property
    def device_id(self) -> str | None:
        """The device's identity: ``UDID``, or ``EnrollmentID`` under User Enrollment."""
        return self.udid if self.udid is not None else self.enrollment_id

    @property
    def channel(self) -> Channel:
        """``user`` for messages of a user channel (they name the user), else ``device``."""
        if self.user_id is not None or self.enrollment_user_id is not None:
            return "user"
        return "device"


class Authenticate(CheckinMessage, kw_only=True):
    """The first message of an enrollment: the device introduces itself (OS version,
    model...). Sent again by an enrolled device, it starts the enrollment over (the old
    enrollment's command queue is void)."""

    topic: str | None = _field(default=None, name="Topic")
    build_version: str | None = _field(default=None, name="BuildVersion")
    device_name: str | None = _field(default=None, name="DeviceName")
    imei: str | None = _field(default=None, name="IMEI")
    meid: str | None = _field(default=None, name="MEID")
    model: str | None = _field(default=None, name="Model")
    model_name: str | None = _field(default=None, name="ModelName")
    os_version: str | None = _field(default=None, name="OSVersion")
    product_name: str | None = _field(default=None, name="ProductName")
    serial_number: str | None = _field(default=None, name="SerialNumber")


class TokenUpdate(CheckinMessage, kw_only=True):
    """The device's push token and push magic (sent after Authenticate and whenever
    they change)."""

    topic: str | None = _field(default=None, name="Topic")
    token: bytes | None = _field(default=None, name="Token")
    push_magic: str | None = _field(default=None, name="PushMagic")
    unlock_token: bytes | None = _field(default=None, name="UnlockToken")
    awaiting_configuration: bool = _field(default=False, name="AwaitingConfiguration")
    not_on_console: bool | None = _field(default=None, name="NotOnConsole")

    @property
    def token_hex(self) -> str | None:
        """The push token as the hex string APNs URLs use."""
        return self.token.hex() if self.token is not None else None


class CheckOut(CheckinMessage, kw_only=True):
    """The device left management (sent only when the profile says so)."""

    topic: str | None = _field(default=None, name="Topic")


class UserAuthenticate(CheckinMessage, kw_only=True):
    """A user channel asks to be set up (macOS, Shared iPad)."""

    digest_response: str | None = _field(default=None, name="DigestResponse")


class DeclarativeManagement(CheckinMessage, kw_only=True):
    """A declarative-management request: ``endpoint`` is ``tokens``,
    ``declaration-items``, ``status`` or ``declaration/<type>/<identifier>``; ``data``
    carries the JSON body (the status report) when there is one."""

    endpoint: str | None = _field(default=None, name="Endpoint")
    data: bytes | None = _field(default=None, name="Data")

    def data_json(self) -> Any:
        """``data`` decoded as JSON (``None`` without data); bad JSON raises
        :class:`~mdmgate.apple.errors.AppleDecodeError` with path ``Data``."""
        if self.data is None:
            return None
        try:
            return msgspec.json.decode(self.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise AppleDecodeError(
                f"DeclarativeManagement Data is not JSON: {exc}", "Data"
            ) from exc


class GetBootstrapToken(CheckinMessage, kw_only=True):
    """The device asks for its stored bootstrap token (macOS)."""

    awaiting_configuration: bool = _field(default=False, name="AwaitingConfiguration")


class SetBootstrapToken(CheckinMessage, kw_only=True):
    """The device escrows its bootstrap token (macOS); no token means "remove it"."""

    bootstrap_token: bytes | None = _field(default=None, name="BootstrapToken")
    awaiting_configuration: bool = _field(default=False, name="AwaitingConfiguration")


class GetToken(CheckinMessage, kw_only=True):
    """The device asks for a token of a service (``com.apple.maid``,
    ``com.apple.watch.pairing``)."""

    token_service_type: str | None = _field(default=None, name="TokenServiceType")
    token_parameters: dict[str, Any] | None = _field(default=None, name="TokenParameters")


class UnknownCheckin(CheckinMessage, kw_only=True):
    """A check-in ``MessageType`` this model does not know; its keys are in ``extra``."""


#: The check-in message classes by ``MessageType``.
CHECKIN_TYPES: dict[str, type[CheckinMessage]] = {
    cls.__name__: cls
    for cls in (
        Authenticate,
        TokenUpdate,
        CheckOut,
        UserAuthenticate,
        DeclarativeManagement,
        GetBootstrapToken,
        SetBootstrapToken,
        GetToken,
    )
}


def decode_checkin(
    data: bytes, *, platform: str | None = None, os_version: str | None = None
) -> CheckinMessage:
    """The typed check-in message in a plist body (XML or binary).

    ``platform`` (``ios``, ``macos``…), when known, lets the schema check say which keys
    the platform has, and ``os_version`` which keys that version has; the channel is read
    from the message (a user channel names its user).
    """
    facts_os(platform)  # refuses unknown platform names before anything else
    body = _convert.load_dict(data, "check-in message")
    kind = body.get("MessageType")
    if not isinstance(kind, str):
        raise AppleDecodeError("check-in message without a MessageType string", "MessageType")
    cls = CHECKIN_TYPES.get(kind, UnknownCheckin)
    reserved = [k for k in body if k in _convert.RESERVED]
    clean = {k: v for k, v in body.items() if k not in _convert.RESERVED} if reserved else body
    channel: Channel = "user" if "UserID" in body or "EnrollmentUserID" in body else "device"
    warnings = validate_checkin(body, platform=platform, channel=channel, os_version=os_version)
    converted: list[SchemaIssue] = []
    message = _convert.convert(cls, clean, "", converted)
    for key in reserved:
        message.extra[key] = body[key]
    message.raw = bytes(data)
    message.warnings = _convert.merge(warnings, converted)
    return message
