"""The admin API's device credentials: ``/api/v1/devices/{id}/auth`` (Windows / OMA-DM).

* ``GET`` shows how the device proves itself and how the gateway proves itself to it, with
  the nonces both ways, never a secret (``secret_configured`` says whether one is stored);
* ``PUT`` replaces the credentials (:class:`WindowsAuthIn`), and sets the nonces it names;
* ``POST .../auth/rotate`` changes only what it names (:class:`WindowsAuthRotateIn`): a new
  device or server secret, a nonce given (as provisioned on the device) or a fresh one.

The credentials are the device's ``auth`` object; the nonces are its facts
(:data:`~mdmgate.windows.auth.FACT_CLIENT_NONCE`, the nonce the device must use next, issued
by the gateway; :data:`~mdmgate.windows.auth.FACT_SERVER_NONCE`, the one the gateway must use
in its own credentials, issued by the device), which every gateway process shares.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from mdmgate.server.api_base import (
    _BASE64_PATTERN,
    _SHA256_PATTERN,
    _check_content_type,
    _checked,
    _decode,
    _json,
    _refuse,
)
from mdmgate.server.routes import Operation
from mdmgate.server.types import Request, Response
from mdmgate.storage import Device, Store
from mdmgate.windows import auth

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "DeviceAuthApi",
    "WindowsAuthIn",
    "WindowsAuthOut",
    "WindowsAuthRotateIn",
    "operations",
]

_log = logging.getLogger("mdmgate.server.admin")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

Secret = Annotated[str, Meta(min_length=1, max_length=1024)]
Name = Annotated[str, Meta(min_length=1, max_length=512)]
Nonce = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=1024,
        pattern=_checked(_BASE64_PATTERN),
        description="A nonce as base64 (standard alphabet, padded), at least one byte.",
        examples=["ZW5yb2xtZW50LW5vbmNlIQ=="],
    ),
]
ServerAuth = Annotated[
    Literal["on_challenge", "required"],
    Meta(
        description="When the gateway sends its own credentials: `on_challenge` once the"
        " device asks (401/407 on the gateway's SyncHdr; remembered), `required` from the"
        " first message of every session. Left out: the gateway's `[windows] server_auth`."
    ),
]


class WindowsAuthIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """The credentials of a Windows (OMA-DM) device, replacing the stored ones.

    `method` is the only way the device is accepted: `md5` (SyncML `syncml:auth-md5` digest,
    `username` and `secret`), `basic` (`syncml:auth-basic`, `username` and `secret`) or
    `certificate` (a TLS client certificate whose DER SHA-256 is `sha256`). A credential
    of another type is refused even with the right secret.

    `server_username`/`server_secret` are the credentials the gateway proves itself with to
    this device (OMA-DM server authentication); left out, the gateway's own from the config
    (`[windows]`) apply. `client_nonce` and `server_nonce` set the nonces when given; the
    stored ones are kept otherwise."""

    method: Literal["md5", "basic", "certificate"]
    username: Name | None = None
    secret: Secret | None = None
    sha256: (
        Annotated[
            str,
            Meta(
                pattern=_checked(_SHA256_PATTERN),
                description="`certificate`: the SHA-256 of the certificate's DER, 64 hex digits.",
            ),
        ]
        | None
    ) = None
    server_username: Name | None = None
    server_secret: Secret | None = None
    server_auth: ServerAuth | None = None
    client_nonce: Annotated[
        Nonce | None,
        Meta(description="The nonce the device must use in its next MD5 credentials."),
    ] = None
    server_nonce: Annotated[
        Nonce | None,
        Meta(
            description="The nonce the device issued to the server (as provisioned on it):"
            " the gateway's next credentials use it."
        ),
    ] = None


class WindowsAuthRotateIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """Rotates what it names, and nothing else: a new device or server secret, a nonce
    given as provisioned on the device, or a fresh random one (`new_client_nonce`,
    `new_server_nonce`; the answer shows it). A fresh client nonce makes the device's next
    digest stale: it is challenged once (401 with the new nonce) and goes on."""

    secret: Secret | None = None
    server_secret: Secret | None = None
    client_nonce: Nonce | None = None
    server_nonce: Nonce | None = None
    new_client_nonce: bool = False
    new_server_nonce: bool = False


class WindowsAuthOut(Struct):
    """A Windows device's credentials and nonces; secrets are never shown."""

    device_id: str
    method: str | None
    username: str | None
    sha256: str | None
    secret_configured: bool
    server_username: Annotated[
        str | None,
        Meta(description="The device's own server username; `null`: the gateway's applies."),
    ]
    server_secret_configured: bool
    server_auth: Annotated[
        str | None, Meta(description="The device's own setting; `null`: the gateway's.")
    ]
    server_auth_requested: Annotated[
        bool, Meta(description="The device has asked the gateway to authenticate itself.")
    ]
    client_nonce: Annotated[
        str | None, Meta(description="The nonce the device must use next (base64).")
    ]
    server_nonce: Annotated[
        str | None, Meta(description="The nonce the gateway must use next (base64).")
    ]


REQUEST_TYPES: tuple[type[Any], ...] = (WindowsAuthIn, WindowsAuthRotateIn)
RESPONSE_TYPES: tuple[type[Any], ...] = (WindowsAuthOut,)


def _nonce(value: str, field: str) -> str:
    """The nonce, checked: base64 of at least one byte."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise _refuse(
            422,
            f"{field[2:]} must be base64 (standard alphabet, padded) of at least one byte",
            field,
        )
    return base64.b64encode(raw).decode("ascii")


def _stored_auth(given: WindowsAuthIn) -> dict[str, Any]:
    """The ``auth`` object to store, or a refusal naming the field."""
    if given.method == "certificate":
        for name in ("username", "secret"):
            if getattr(given, name) is not None:
                raise _refuse(422, f"{name} is for methods md5 and basic", f"$.{name}")
        if given.sha256 is None or not _HEX64.fullmatch(given.sha256):
            raise _refuse(
                422,
                "sha256 must be 64 hex digits (the SHA-256 of the certificate's DER)",
                "$.sha256",
            )
        stored: dict[str, Any] = {"method": "certificate", "sha256": given.sha256.lower()}
    else:
        if given.sha256 is not None:
            raise _refuse(422, "sha256 is for method certificate", "$.sha256")
        for name in ("username", "secret"):
            if getattr(given, name) is None:
                raise _refuse(422, f"method {given.method} needs a {name}", f"$.{name}")
        stored = {"method": given.method, "username": given.username, "secret": given.secret}
    if (given.server_username is None) != (given.server_secret is None):
        missing = "server_secret" if given.server_secret is None else "server_username"
        raise _refuse(422, "server_username and server_secret go together", f"$.{missing}")
    if given.server_username is not None:
        stored["server_username"] = given.server_username
        stored["server_secret"] = given.server_secret
    if given.server_auth is not None:
        stored["server_auth"] = given.server_auth
    return stored


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _out(device_id: str, stored: Mapping[str, Any], facts: Mapping[str, Any]) -> WindowsAuthOut:
    return WindowsAuthOut(
        device_id=device_id,
        method=_text(stored.get("method")),
        username=_text(stored.get("username")),
        sha256=_text(stored.get("sha256")),
        secret_configured=bool(stored.get("secret")),
        server_username=_text(stored.get("server_username")),
        server_secret_configured=bool(stored.get("server_secret")),
        server_auth=_text(stored.get("server_auth")),
        server_auth_requested=facts.get(auth.FACT_SERVER_AUTH) == "required",
        client_nonce=_text(facts.get(auth.FACT_CLIENT_NONCE)),
        server_nonce=_text(facts.get(auth.FACT_SERVER_NONCE)),
    )


class DeviceAuthApi:
    """The handlers of ``/api/v1/devices/{id}/auth[/rotate]``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _windows_device(self, device_id: str) -> Device:
        device = await self.store.get_device(device_id)
        if device is None:
            raise _refuse(404, f"no device {device_id!r}")
        if device.platform != "windows":
            raise _refuse(
                422,
                f"device {device_id!r} is a {device.platform} device: this API sets the"
                " OMA-DM credentials of Windows devices",
            )
        return device

    async def show(self, request: Request, params: Mapping[str, str]) -> Response:
        device = await self._windows_device(params["id"])
        return _json(200, _out(device.id, device.auth, device.facts))

    async def replace(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, WindowsAuthIn)
        stored = _stored_auth(given)
        nonces: dict[str, Any] = {}
        if given.client_nonce is not None:
            nonces[auth.FACT_CLIENT_NONCE] = _nonce(given.client_nonce, "$.client_nonce")
        if given.server_nonce is not None:
            nonces[auth.FACT_SERVER_NONCE] = _nonce(given.server_nonce, "$.server_nonce")
        device = await self._windows_device(params["id"])
        return await self._write(device, stored, nonces)

    async def rotate(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, WindowsAuthRotateIn)
        nonces: dict[str, Any] = {}
        for name, fact, value, new in (
            ("client_nonce", auth.FACT_CLIENT_NONCE, given.client_nonce, given.new_client_nonce),
            ("server_nonce", auth.FACT_SERVER_NONCE, given.server_nonce, given.new_server_nonce),
        ):
            if value is not None and new:
                raise _refuse(422, f"{name} or new_{name}, not both", f"$.{name}")
            if value is not None:
                nonces[fact] = _nonce(value, f"$.{name}")
            elif new:
                nonces[fact] = base64.b64encode(auth.new_nonce()).decode("ascii")
        if not nonces and given.secret is None and given.server_secret is None:
            raise _refuse(
                422,
                "nothing to rotate: give secret, server_secret, client_nonce, server_nonce,"
                " new_client_nonce or new_server_nonce",
                "$",
            )
        device = await self._windows_device(params["id"])
        stored = dict(device.auth)
        if given.secret is not None:
            if stored.get("method") not in ("md5", "basic"):
                raise _refuse(
                    422,
                    f"the device's method is {stored.get('method')!r}: only md5 and basic"
                    " have a secret (PUT .../auth to change the method)",
                    "$.secret",
                )
            stored["secret"] = given.secret
        if given.server_secret is not None:
            if not isinstance(stored.get("server_username"), str):
                raise _refuse(
                    422,
                    "the device has no server_username of its own (the gateway's, from"
                    " [windows] in the config, applies): set both with PUT .../auth",
                    "$.server_secret",
                )
            stored["server_secret"] = given.server_secret
        return await self._write(device, stored, nonces)

    async def _write(
        self, device: Device, stored: dict[str, Any], nonces: dict[str, Any]
    ) -> Response:
        if stored != device.auth and not await self.store.set_auth(device.id, stored):
            raise _refuse(404, f"no device {device.id!r}")
        if nonces and not await self.store.merge_facts(device.id, nonces):
            raise _refuse(404, f"no device {device.id!r}")
        # Names only, never values: secrets stay out of the log.
        changed = {k for k in {*stored, *device.auth} if stored.get(k) != device.auth.get(k)}
        _log.info(
            "credentials of Windows device %r changed: %s",
            device.id,
            ", ".join(sorted(changed | set(nonces))) or "nothing",
        )
        facts = {**device.facts, **nonces}
        return _json(200, _out(device.id, stored, facts))


def operations(api: DeviceAuthApi) -> list[Operation]:
    """The device-credential operations, with their handlers."""
    device = {"id": "The device id (percent-encoded)."}
    return [
        Operation(
            "GET",
            "/api/v1/devices/{id}/auth",
            api.show,
            "A Windows device's credentials and nonces (secrets are never shown).",
            ("200", "The credentials.", "WindowsAuthOut"),
            ("404", "422"),
            params=device,
        ),
        Operation(
            "PUT",
            "/api/v1/devices/{id}/auth",
            api.replace,
            "Replace a Windows device's credentials (device and server side); set the"
            " nonces given.",
            ("200", "The credentials as stored.", "WindowsAuthOut"),
            ("400", "404", "415", "422"),
            request="WindowsAuthIn",
            params=device,
        ),
        Operation(
            "POST",
            "/api/v1/devices/{id}/auth/rotate",
            api.rotate,
            "Rotate a Windows device's secrets or nonces: only what the body names.",
            ("200", "The credentials as stored.", "WindowsAuthOut"),
            ("400", "404", "415", "422"),
            request="WindowsAuthRotateIn",
            params=device,
        ),
    ]
