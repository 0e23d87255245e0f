"""One route table for the admin API: each operation is declared once, with its metadata, and
both the routing and the OpenAPI document are generated from the table.

An :class:`Operation` names its method, its path template (``/api/v1/devices/{id}``), the
handler and what the OpenAPI document says about it (summary, request and response schemas,
error statuses, query parameters), and the token scope it needs (``read`` for safe methods,
``full`` otherwise, unless it says). :class:`Router` matches a request to an operation:
a path no operation has is 404, a method the path does not take is 405 with ``Allow``.
Path parameters are percent-decoded, and a parameter is one whole, non-empty path segment:
it never matches an empty segment or spans a ``/`` (``%2F`` decodes to a ``/`` inside it);
one holding U+0000 (``%00``) names nothing: 404.

Resource modules export a function returning their operations; :mod:`mdmgate.server.admin`
concatenates them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from mdmgate.server.api_base import (
    Error,
    _json,
    _json_content,
    _operation,
    _ref,
    _Refusal,
    _refuse,
)
from mdmgate.server.types import Request, Response

__all__ = [
    "METHODS",
    "Handler",
    "Match",
    "Operation",
    "QueryParam",
    "Router",
    "Scope",
    "json_response_schema",
    "openapi_paths",
]

#: A handler gets the request and its path parameters (decoded).
Handler = Callable[[Request, Mapping[str, str]], Awaitable[Response]]

#: ``read`` opens the safe methods, ``full`` everything.
Scope = Literal["read", "full"]

#: The methods an operation may have.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SAFE_METHODS = frozenset({"GET"})
_SCOPES = ("read", "full")


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    #: JSON Schema of the value, e.g. ``{"type": "integer", "minimum": 1}``.
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    #: Whether it may be given more than once (``?state=a&state=b``).
    repeated: bool = False


@dataclass(frozen=True)
class Operation:
    """One method on one path template. Raises ``ValueError`` naming the problem when the
    declaration is malformed (unknown method or scope, a parameter that is not a whole
    segment or appears twice, a description of a parameter the path does not have)."""

    method: str
    path: str
    handler: Handler
    summary: str
    #: ``(status, description, schema name)`` of the success answer.
    ok: tuple[str, str, str]
    errors: tuple[str, ...] = ()
    #: The schema name of the JSON request body, if it takes one.
    request: str | None = None
    #: Whether the body may be left out (then the operation has defaults).
    request_required: bool = True
    query: tuple[QueryParam, ...] = ()
    #: Path parameter descriptions by name (a parameter without one is described generically).
    params: Mapping[str, str] = field(default_factory=dict)
    #: A 404 body listing unknown devices (its schema name).
    not_found: str | None = None
    #: Another success status with the same body: ``(status, description)``.
    replaced: tuple[str, str] | None = None
    #: ``None``: ``read`` for GET, ``full`` otherwise.
    scope: Scope | None = None
    #: Longer text for the OpenAPI document (the summary is one line).
    description: str | None = None
    #: Extra OpenAPI fields merged into the operation (e.g. another response media type).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"{self.method} {self.path}"
        if self.method not in METHODS:
            raise ValueError(f"{where}: the method must be one of {', '.join(METHODS)}")
        if not self.path.startswith("/"):
            raise ValueError(f"{where}: a path template must start with /")
        if self.scope is not None and self.scope not in _SCOPES:
            raise ValueError(f"{where}: scope must be read or full, not {self.scope!r}")
        names = self.path_params
        for segment in self.path.split("/"):
            if "{" in segment and _PARAM.fullmatch(segment) is None:
                raise ValueError(f"{where}: a parameter must be a whole segment ({segment!r})")
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"{where}: parameter {name!r} appears twice")
        for name in self.params:
            if name not in names:
                raise ValueError(f"{where}: describes parameter {name!r}, which it does not have")
        queried = [q.name for q in self.query]
        for name in queried:
            if queried.count(name) > 1:
                raise ValueError(f"{where}: query parameter {name!r} is declared twice")

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def needs(self) -> Scope:
        """The token scope that may call it."""
        if self.scope is not None:
            return self.scope
        return "read" if self.method in _SAFE_METHODS else "full"

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI operation object."""
        errors = self.errors if self.needs == "read" else ("403", *self.errors)
        operation = _operation(
            self.summary,
            self.ok,
            errors,
            request=self.request,
            not_found=self.not_found,
            replaced=self.replaced,
        )
        if self.description is not None:
            operation["description"] = self.description
        if self.request is not None and not self.request_required:
            operation["requestBody"]["required"] = False
        # OpenAPI 3.1 lets a bearer scheme list the roles it needs.
        operation["security"] = [{"bearerAuth": [self.needs]}]
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": self.params.get(name, f"The {name} (percent-encoded)."),
                "schema": {"type": "string"},
            }
            for name in self.path_params
        ]
        for q in self.query:
            parameter: dict[str, Any] = {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": dict(q.schema),
            }
            if q.repeated:
                parameter["schema"] = {"type": "array", "items": dict(q.schema)}
                parameter["explode"] = True
            parameters.append(parameter)
        if parameters:
            operation["parameters"] = parameters
        operation.update(self.extra)
        return operation


@dataclass(frozen=True)
class Match:
    operation: Operation
    params: dict[str, str]


@dataclass
class _Resource:
    """The operations of one path template, by method (in declaration order)."""

    template: str
    pattern: re.Pattern[str]
    #: Per segment: 0 for a literal, 1 for a parameter; a lower rank matches first.
    rank: tuple[int, ...]
    methods: dict[str, Operation]


class Router:
    """Finds the operation of a request among ``operations``. Where two templates match the
    same path, the one with a literal segment where the other has a parameter wins (from
    the left), whatever the declaration order: ``/things/export`` is its own resource,
    never ``/things/{id}`` with ``id = "export"``. Raises ``ValueError`` for an operation
    declared twice, or two templates that differ only in parameter names."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        self.operations = list(operations)
        resources: dict[str, _Resource] = {}
        for op in self.operations:
            shape = _PARAM.sub("{}", op.path)
            found = resources.get(shape)
            if found is None:
                rank = tuple(int("{" in s) for s in op.path.split("/"))
                found = resources[shape] = _Resource(op.path, _compile(op.path), rank, {})
            elif found.template != op.path:
                raise ValueError(
                    f"{op.path} and {found.template} are one path with different parameter names"
                )
            if op.method in found.methods:
                raise ValueError(f"{op.method} {op.path} is declared twice")
            found.methods[op.method] = op
        self._resources = sorted(resources.values(), key=lambda r: r.rank)

    def match(self, request: Request) -> Match:
        """The operation and its parameters; :class:`~mdmgate.server.api_base._Refusal`
        404 or 405 otherwise."""
        method = request.method.upper()
        for resource in self._resources:
            found = resource.pattern.fullmatch(request.path)
            if found is None:
                continue
            op = resource.methods.get(method)
            if op is None:
                allowed = ", ".join(resource.methods)
                raise _Refusal(
                    405,
                    Error(f"{method} is not allowed here (allowed: {allowed})"),
                    (("allow", allowed),),
                )
            params = {k: unquote(v) for k, v in found.groupdict().items()}
            for name, value in params.items():
                if "\x00" in value:
                    # No store keeps U+0000 (PostgreSQL cannot): nothing is named by it.
                    raise _refuse(404, f"no such resource: the {name} holds U+0000")
            return Match(op, params)
        raise _refuse(404, f"no such resource: {request.path}")

    async def __call__(self, request: Request) -> Response:
        """Routes and calls the handler, answering a refusal as its JSON error."""
        try:
            found = self.match(request)
            return await found.operation.handler(request, found.params)
        except _Refusal as refusal:
            return _json(refusal.status, refusal.body, refusal.headers)


def _compile(template: str) -> re.Pattern[str]:
    pattern = ""
    last = 0
    for found in _PARAM.finditer(template):
        pattern += re.escape(template[last : found.start()])
        pattern += f"(?P<{found.group(1)}>[^/]+)"
        last = found.end()
    return re.compile(pattern + re.escape(template[last:]))


def openapi_paths(operations: Sequence[Operation]) -> dict[str, Any]:
    """The ``paths`` object of the OpenAPI document: one entry per operation, under its
    template, in declaration order."""
    paths: dict[str, Any] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = op.openapi()
    return paths


def json_response_schema(name: str) -> dict[str, Any]:
    """An OpenAPI content map of one JSON schema, for :attr:`Operation.extra`."""
    return _json_content(_ref(name))
