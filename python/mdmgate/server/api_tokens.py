"""The admin API's named tokens: ``/api/v1/tokens``. Issuing, checking and revoking are
:mod:`mdmgate.api_tokens`'s; this module translates HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from mdmgate.api_tokens import ApiTokens
from mdmgate.server.api_base import _check_content_type, _decode, _json, _query, _refuse
from mdmgate.server.routes import Operation
from mdmgate.server.types import Request, Response
from mdmgate.storage import ApiToken, RevisionConflict

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "ApiTokenCreated",
    "ApiTokenIn",
    "ApiTokenOut",
    "ApiTokensOut",
    "TokensApi",
    "operations",
]

_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class ApiTokenIn(Struct, kw_only=True, forbid_unknown_fields=True):
    """A new token."""

    name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=100,
            pattern=_NAME_PATTERN,
            description="Who or what holds it (unique among unrevoked tokens), e.g. `console`.",
        ),
    ]
    scope: Annotated[
        Literal["read", "full"],
        Meta(description="`read`: the operations that change nothing (GET); `full`: all."),
    ]


class ApiTokenOut(Struct, kw_only=True):
    """A token (never its secret)."""

    id: str
    name: str
    scope: str
    created_at: dt.datetime
    revoked_at: Annotated[
        dt.datetime | None, Meta(description="When it was revoked; `null`: it is live.")
    ]
    last_used_at: Annotated[
        dt.datetime | None,
        Meta(description="When it last opened a request, to the minute; `null`: never."),
    ]


class ApiTokenCreated(ApiTokenOut, kw_only=True):
    """A new token with its bearer value: shown this once."""

    token: Annotated[
        str,
        Meta(
            description=(
                "Send as `Authorization: Bearer <token>`. Keep it: the gateway stores only"
                " its hash and never shows it again."
            )
        ),
    ]


class ApiTokensOut(Struct):
    tokens: list[ApiTokenOut]


REQUEST_TYPES: tuple[type[Any], ...] = (ApiTokenIn,)
RESPONSE_TYPES: tuple[type[Any], ...] = (ApiTokenOut, ApiTokenCreated, ApiTokensOut)


def _time(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def _fields(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "scope": t.scope,
        "created_at": dt.datetime.fromtimestamp(t.created_at, dt.UTC),
        "revoked_at": _time(t.revoked_at),
        "last_used_at": _time(t.last_used_at),
    }


class TokensApi:
    """The handlers of ``/api/v1/tokens``."""

    def __init__(self, tokens: ApiTokens) -> None:
        self.tokens = tokens

    async def create(self, request: Request, params: Mapping[str, str]) -> Response:
        _check_content_type(request)
        given = _decode(request.body, ApiTokenIn)
        try:
            issued = await self.tokens.issue(given.name, given.scope)
        except RevisionConflict:
            raise _refuse(
                409, f"an unrevoked token is named {given.name!r} already", "$.name"
            ) from None
        return _json(201, ApiTokenCreated(**_fields(issued.record), token=issued.bearer))

    async def list_all(self, request: Request, params: Mapping[str, str]) -> Response:
        _query(request, ())
        found = await self.tokens.list()
        return _json(200, ApiTokensOut([ApiTokenOut(**_fields(t)) for t in found]))

    async def show(self, request: Request, params: Mapping[str, str]) -> Response:
        found = await self.tokens.get(params["id"])
        if found is None:
            raise _refuse(404, f"no token {params['id']!r}")
        return _json(200, ApiTokenOut(**_fields(found)))

    async def revoke(self, request: Request, params: Mapping[str, str]) -> Response:
        revoked = await self.tokens.revoke(params["id"])
        if revoked is None:
            raise _refuse(404, f"no token {params['id']!r}")
        return _json(200, ApiTokenOut(**_fields(revoked)))


_ID = {"id": "The token id (the part of the token after `mdmgate_`, up to the next `_`)."}


def operations(api: TokensApi) -> list[Operation]:
    """The token operations; every one needs a ``full`` token, listing included (a ``read``
    token must not learn which tokens exist)."""
    return [
        Operation(
            "POST",
            "/api/v1/tokens",
            api.create,
            "Make a named token of scope read or full; the answer holds it, shown once.",
            ("201", "The token and its bearer value.", "ApiTokenCreated"),
            ("400", "409", "415", "422"),
            request="ApiTokenIn",
        ),
        Operation(
            "GET",
            "/api/v1/tokens",
            api.list_all,
            "Every named token, revoked ones too, oldest first (without secrets).",
            ("200", "The tokens.", "ApiTokensOut"),
            ("400", "422"),
            scope="full",
        ),
        Operation(
            "GET",
            "/api/v1/tokens/{id}",
            api.show,
            "A named token (without its secret).",
            ("200", "The token.", "ApiTokenOut"),
            ("404",),
            params=_ID,
            scope="full",
        ),
        Operation(
            "DELETE",
            "/api/v1/tokens/{id}",
            api.revoke,
            "Revoke a token: every node refuses it from its next request. The record stays.",
            ("200", "The token, revoked.", "ApiTokenOut"),
            ("404",),
            params=_ID,
        ),
    ]
