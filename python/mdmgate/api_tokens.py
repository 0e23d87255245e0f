"""Named admin API tokens: issued, checked and revoked here, kept in the store.

A token reads ``mdmgate_<id>_<secret>``. The id finds its record in one store read; the
store keeps only the SHA-256 of the secret, so a copy of the database opens nothing. The
secret is shown once, when the token is made. A revoked token is refused by every node from
its next request: nothing is cached between requests.

Scopes: ``read`` opens the operations that change nothing (GET), ``full`` every operation,
managing tokens included. The bootstrap token from ``MDMGATE_API_TOKEN`` (or the config) is
not one of these: it is always ``full`` and cannot be revoked through the API.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Literal

from mdmgate.storage import ApiToken, ApiTokenStore
from mdmgate.storage.events import TOUCH_SECONDS

__all__ = ["PREFIX", "SCOPES", "ApiTokens", "IssuedToken", "Scope"]

PREFIX = "mdmgate_"
SCOPES = ("read", "full")
Scope = Literal["read", "full"]
_ID_BYTES = 8
_SECRET_BYTES = 32
_TOKEN = re.compile(r"mdmgate_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class IssuedToken:
    """A token just made: its record and the bearer value (never stored)."""

    __slots__ = ("bearer", "record")

    def __init__(self, record: ApiToken, bearer: str) -> None:
        self.record = record
        self.bearer = bearer


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class ApiTokens:
    """Issues, checks and revokes named tokens over an :class:`ApiTokenStore`."""

    def __init__(self, store: ApiTokenStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def issue(self, name: str, scope: str) -> IssuedToken:
        """A new token; :class:`~mdmgate.storage.RevisionConflict` when an unrevoked token
        has the name already."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be read or full, not {scope!r}")
        token_id = secrets.token_hex(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        record = ApiToken(
            id=token_id,
            name=name,
            scope=scope,
            secret_sha256=_digest(secret),
            created_at=self.clock(),
        )
        await self.store.put_api_token(record)
        return IssuedToken(record, f"{PREFIX}{token_id}_{secret}")

    async def scope_of(self, bearer: str) -> Scope | None:
        """The scope ``bearer`` opens, ``None`` when it is not a live token of ours."""
        found = _TOKEN.fullmatch(bearer)
        if found is None:
            return None
        token_id, secret = found.groups()
        record = await self.store.get_api_token(token_id)
        if record is None or record.revoked_at is not None:
            return None
        if not hmac.compare_digest(_digest(secret), record.secret_sha256):
            return None
        now = self.clock()
        # Checked here as well as in the store: most requests then cost no write at all.
        if record.last_used_at is None or now - record.last_used_at >= TOUCH_SECONDS:
            await self.store.touch_api_token(token_id, at=now)
        # Anything but full reads only, should a record ever hold another word.
        return "full" if record.scope == "full" else "read"

    async def list(self) -> list[ApiToken]:
        return await self.store.list_api_tokens()

    async def get(self, token_id: str) -> ApiToken | None:
        return await self.store.get_api_token(token_id)

    async def revoke(self, token_id: str) -> ApiToken | None:
        """The token, revoked (the first revocation's time kept); ``None`` if unknown."""
        return await self.store.revoke_api_token(token_id, at=self.clock())
