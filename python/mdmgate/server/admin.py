"""The admin HTTP API under ``/api/v1/``: one route table over every resource, the token
check, and the OpenAPI document generated from the same table.

:class:`AdminApi` is a plain :data:`~mdmgate.server.types.Handler`: it takes a
:class:`~mdmgate.server.types.Request` and answers a
:class:`~mdmgate.server.types.Response`, with no sockets, so the HTTP layer mounts it and
tests call it directly. Every answer, errors included, is JSON
(``Content-Type: application/json``); errors are ``{"error": "...", "field": ...}`` where
``field`` is a JSONPath into the request body (``$[2].platform``, ``$.raw``), the name of a
query parameter, or ``null``.

The resources and their modules: devices (:mod:`~mdmgate.server.api_devices`), commands
(:mod:`~mdmgate.server.api_commands`, bodies in :mod:`~mdmgate.server.api_command_input`),
declarations (:mod:`~mdmgate.server.api_declarations`), Windows device credentials
(:mod:`~mdmgate.server.device_auth_api`), orgs and apps (:mod:`~mdmgate.server.api_apps`),
roll-outs (:mod:`~mdmgate.server.api_rollouts`) and enrollment
(:mod:`~mdmgate.server.enrollment_api`). Each exports ``operations(...)``: the
:class:`~mdmgate.server.routes.Operation` list this module routes and documents.

Status codes:

* 400: the body is not JSON (or nested too deeply), or the query string is not UTF-8;
* 401: no, or the wrong, bearer token, or no token configured (and not ``--dev``);
* 403: a token whose scope does not open the operation (a ``read`` token on a change);
* 404: unknown path, device, command or declaration; a request naming unknown devices
  (listed in ``devices``);
* 405: a known path with the wrong method (``Allow`` lists the right ones);
* 409: a command whose ``CommandUUID`` (which becomes its command id) is already taken;
* 415: a body that is not ``application/json``;
* 422: JSON of the wrong shape, an unknown field or query parameter (named), a string
  holding U+0000 (no store keeps it), a raw command its decoder refuses, a command for
  devices of more than one command channel, or a declaration that breaks Apple's schema
  (``field`` is ``$.payload.<dotted key>``);
* 503: a part of the gateway that is not set up (enrollment).
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from mdmgate import __version__
from mdmgate.catalogue.service import Catalogue
from mdmgate.devices.service import CommandService, DeviceService
from mdmgate.server import (
    api_apps,
    api_command_input,
    api_commands,
    api_declarations,
    api_devices,
    api_rollouts,
    catalogue_api,
    device_auth_api,
    enrollment_api,
)
from mdmgate.server.api_base import (
    _ERROR_RESPONSES,
    _JSON_HEADERS,
    Error,
    UnknownDevicesError,
    _json,
    _json_content,
    _ref,
    _Refusal,
    ecma_pattern,
)
from mdmgate.server.api_command_input import (
    AppleCommandIn,
    CommandIn,
    DeviceCommandIn,
)
from mdmgate.server.api_commands import CommandAccepted, CommandStatusOut, DeliveryOut
from mdmgate.server.api_declarations import (
    AppleDeclarationIn,
    DeclarationIn,
    DeclarationOut,
    DeclarationTargetsIn,
    DeclarationWritten,
    EffectiveDeclarationsOut,
    EffectiveSettingOut,
    EnforcementOut,
    EnforcementStateOut,
    SkippedDeclarationOut,
)
from mdmgate.server.api_devices import AppIn, AppOut, DeviceIn, DeviceOut, DevicesWritten
from mdmgate.server.enrollment_api import EnrollmentApi
from mdmgate.server.routes import Operation, Router, Scope, openapi_paths
from mdmgate.server.types import Request, Response
from mdmgate.storage import Store

__all__ = [
    "API_PREFIX",
    "AdminApi",
    "AppIn",
    "AppOut",
    "AppleCommandIn",
    "AppleDeclarationIn",
    "CommandAccepted",
    "CommandIn",
    "CommandStatusOut",
    "DeclarationIn",
    "DeclarationOut",
    "DeclarationTargetsIn",
    "DeclarationWritten",
    "DeliveryOut",
    "DeviceCommandIn",
    "DeviceIn",
    "DeviceOut",
    "DevicesWritten",
    "EffectiveDeclarationsOut",
    "EffectiveSettingOut",
    "EnforcementOut",
    "EnforcementStateOut",
    "Error",
    "SkippedDeclarationOut",
    "TokenScope",
    "UnknownDevicesError",
    "openapi_document",
]

_log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"

#: Names the scope of a bearer token that is not the bootstrap one (``None``: no such
#: token); may answer directly or through an awaitable (a store lookup).
TokenScope = Callable[[str], "Scope | Awaitable[Scope | None] | None"]

_REQUEST_TYPES: tuple[type[Any], ...] = (
    *api_devices.REQUEST_TYPES,
    *api_command_input.REQUEST_TYPES,
    *api_commands.REQUEST_TYPES,
    *api_declarations.REQUEST_TYPES,
    *device_auth_api.REQUEST_TYPES,
    *enrollment_api.REQUEST_TYPES,
    *catalogue_api.REQUEST_TYPES,
)
_RESPONSE_TYPES: tuple[type[Any], ...] = (
    *api_devices.RESPONSE_TYPES,
    *api_commands.RESPONSE_TYPES,
    *api_declarations.RESPONSE_TYPES,
    *device_auth_api.RESPONSE_TYPES,
    *enrollment_api.RESPONSE_TYPES,
    *catalogue_api.RESPONSE_TYPES,
    Error,
)


def _document(
    operations: Sequence[Operation], extra_types: Sequence[type[Any]] = ()
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``, schemas generated from the Structs (those
    of the built-in resources and ``extra_types``)."""
    _, schemas = msgspec.json.schema_components(
        _REQUEST_TYPES + _RESPONSE_TYPES + tuple(extra_types),
        ref_template="#/components/schemas/{name}",
    )
    for schema in schemas.values():
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"])
    _ecma_patterns(schemas)
    schemas.update(api_devices.EXTRA_SCHEMAS)
    schemas.update(api_declarations.EXTRA_SCHEMAS)
    schemas["OpenApiDocument"] = {"type": "object", "description": "An OpenAPI 3.1 document."}
    responses = {
        name: {"description": description, "content": _json_content(_ref("Error"))}
        for name, description in _ERROR_RESPONSES.values()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mdmgate admin API",
            "version": __version__,
            "description": (
                "Devices, their command queues and their declarations (Apple declarative"
                " device management), the app catalogue and its roll-outs, enrollment."
                " Every request needs `Authorization: Bearer <token>`: the bootstrap token"
                " (`MDMGATE_API_TOKEN`) opens everything; a named token of scope `read`"
                " opens the operations whose security lists `read`. Errors are"
                ' `{"error": "...", "field": "<JSONPath into the body, a query parameter,'
                ' or null>"}`. No string in a body may hold U+0000 (422).'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": openapi_paths(operations),
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Roles: `read` (safe operations) and `full` (all).",
                }
            },
        },
    }


def _ecma_patterns(node: Any) -> None:
    """Shows the patterns checked with Python's ``\\Z`` in their JSON Schema form."""
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            node["pattern"] = ecma_pattern(node["pattern"])
        for value in node.values():
            _ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _ecma_patterns(value)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API's built-in resources, as any gateway
    routes them (configuration changes answers, not the table). A gateway serves this
    document with its extra operations added."""
    from mdmgate.storage.memory import MemoryStore  # noqa: PLC0415 - a table to read only

    return _document(AdminApi(MemoryStore(), None).operations)


_CHALLENGE = (("www-authenticate", 'Bearer realm="mdmgate"'),)


class AdminApi:
    """The admin API as a handler for paths under ``/api/v1/``.

    ``token`` is the bootstrap bearer token (``MDMGATE_API_TOKEN``), scope ``full``.
    ``token_scope`` names the scope of any other bearer token (named tokens, e.g. from the
    store) or ``None`` for an unknown one. With neither, every call answers 401. Without
    ``token`` and with ``dev`` true, calls need no token at all (a warning is logged
    once); a configured ``token`` is required in ``dev`` mode too. ``dev`` is kept as
    :attr:`dev` for the device-facing side (auto-registration).

    ``extra_operations`` are routed and documented with the built-in ones: the resources
    of other modules (the event log, webhooks, API tokens), each module's
    ``operations(...)``; ``extra_types`` are the Structs their schemas name (a module's
    ``REQUEST_TYPES`` and ``RESPONSE_TYPES``). An operation declared twice raises
    ``ValueError``.

    A request is checked in this order: its token (401), its path and method (404, 405),
    then whether the token's scope opens the operation (403 naming the scope needed).
    """

    def __init__(
        self,
        store: Store,
        token: str | None,
        *,
        dev: bool = False,
        on_enqueued: Callable[[Sequence[str]], None] | None = None,
        catalogue: Catalogue | None = None,
        enrollment: EnrollmentApi | None = None,
        token_scope: TokenScope | None = None,
        extra_operations: Sequence[Operation] = (),
        extra_types: Sequence[type[Any]] = (),
    ) -> None:
        self.store = store
        #: Operations of resources the process wires itself (the event log, webhooks),
        #: routed and guarded as the built-in ones.
        self.extra_operations = list(extra_operations)
        #: Tokens, certificates, the CA and the push certificate (``None``: 503s).
        self.enrollment = enrollment
        self.dev = dev
        #: The app catalogue and its roll-outs (also told when devices change).
        self.catalogue = catalogue if catalogue is not None else Catalogue(store)
        self.devices = DeviceService(store, on_devices_changed=self.catalogue.note_devices)
        self.commands = CommandService(store, on_enqueued=on_enqueued)
        self.token_scope = token_scope
        self._token = token.encode("utf-8") if token else None
        # Development mode without a bootstrap token stays open even with named tokens:
        # otherwise nobody could create the first one.
        self.unauthenticated = self._token is None and dev
        if self.unauthenticated:
            _log.warning("development mode without MDMGATE_API_TOKEN: the admin API needs no token")
        self.operations = self._operations()
        self.router = Router(self.operations)
        self._extra_types = tuple(extra_types)
        self._openapi_json: bytes | None = None

    @property
    def on_enqueued(self) -> Callable[[Sequence[str]], None] | None:
        """Told which devices got new Apple commands (e.g. to push them); must not block."""
        return self.commands.on_enqueued

    @on_enqueued.setter
    def on_enqueued(self, value: Callable[[Sequence[str]], None] | None) -> None:
        self.commands.on_enqueued = value

    def _operations(self) -> list[Operation]:
        return [
            Operation(
                "GET",
                "/api/v1/openapi.json",
                self._openapi,
                "This document.",
                ("200", "The OpenAPI document.", "OpenApiDocument"),
            ),
            *api_devices.operations(api_devices.DevicesApi(self.devices)),
            *device_auth_api.operations(device_auth_api.DeviceAuthApi(self.store)),
            *api_commands.operations(api_commands.CommandsApi(self.commands)),
            *api_declarations.operations(api_declarations.DeclarationsApi(self.store)),
            *api_apps.operations(api_apps.AppsApi(self.catalogue)),
            *api_rollouts.operations(api_rollouts.RolloutsApi(self.catalogue)),
            *enrollment_api.operations(self.enrollment),
            *self.extra_operations,
        ]

    async def _openapi(self, request: Request, params: Mapping[str, str]) -> Response:
        if self._openapi_json is None:  # built once, on first use
            document = _document(self.operations, self._extra_types)
            self._openapi_json = msgspec.json.encode(document)
        return Response(200, _JSON_HEADERS, self._openapi_json)

    async def __call__(self, request: Request) -> Response:
        try:
            if not request.path.startswith(API_PREFIX):
                # Not ours: the HTTP layer should not have sent it here.
                raise _Refusal(404, Error(f"no such resource: {request.path}"))
            scope = await self._scope(request)
            found = self.router.match(request)
            self._permit(scope, found.operation)
            return await found.operation.handler(request, found.params)
        except _Refusal as refusal:
            return _json(refusal.status, refusal.body, refusal.headers)

    async def authorize(self, request: Request, needs: Scope = "read") -> Response | None:
        """The 401 or 403 answer for a request whose token does not open something that
        needs ``needs``; ``None`` when it does. For other resources guarded by the admin
        API's tokens, such as ``/metrics``."""
        try:
            scope = await self._scope(request)
            if needs == "full" and scope != "full":
                raise _Refusal(403, Error(f"this needs a token of scope full, not {scope}"))
        except _Refusal as refusal:
            return _json(refusal.status, refusal.body, refusal.headers)
        return None

    def token_refusal(self, request: Request) -> Response | None:
        """The 401 answer for a request without the bootstrap token, ``None`` when it
        carries it (or needs none: ``--dev`` without a token). Synchronous, so it does not
        consult ``token_scope``: :meth:`authorize` does."""
        try:
            if not self.unauthenticated:
                given = self._bearer(request)
                if self._token is None or not hmac.compare_digest(given, self._token):
                    raise _Refusal(401, Error("wrong bearer token"), _invalid_token())
        except _Refusal as refusal:
            return _json(refusal.status, refusal.body, refusal.headers)
        return None

    def _bearer(self, request: Request) -> bytes:
        """The bearer token of the request; 401 without one (or without any token to
        compare it with)."""
        # Everything under /api/v1/ needs a token, the OpenAPI document included: the
        # admin API shares its port with the device-facing endpoints, which face the
        # internet, and the document maps out what the token opens; admin clients hold
        # the token anyway.
        if self._token is None and self.token_scope is None:
            raise _Refusal(
                401,
                Error("the admin API is disabled: MDMGATE_API_TOKEN is not configured"),
                _CHALLENGE,
            )
        value = request.header("authorization")
        scheme, _, credentials = (value or "").strip().partition(" ")
        if value is None or scheme.lower() != "bearer" or not credentials.strip():
            raise _Refusal(
                401, Error("missing bearer token (Authorization: Bearer <token>)"), _CHALLENGE
            )
        return credentials.strip().encode("utf-8", "replace")

    async def _scope(self, request: Request) -> Scope:
        """The scope the request's token has; 401 when it has none."""
        if self.unauthenticated:
            return "full"
        given = self._bearer(request)
        if self._token is not None and hmac.compare_digest(given, self._token):
            return "full"
        if self.token_scope is not None:
            named = self.token_scope(given.decode("utf-8", "replace"))
            if inspect.isawaitable(named):
                named = await named
            if named in ("read", "full"):
                return "full" if named == "full" else "read"
        raise _Refusal(401, Error("wrong bearer token"), _invalid_token())

    @staticmethod
    def _permit(scope: Scope, operation: Operation) -> None:
        if operation.needs == "full" and scope != "full":
            raise _Refusal(
                403,
                Error(
                    f"{operation.method} {operation.path} needs a token of scope full;"
                    f" this token's scope is {scope}"
                ),
            )


def _invalid_token() -> tuple[tuple[str, str], ...]:
    return (("www-authenticate", 'Bearer realm="mdmgate", error="invalid_token"'),)
