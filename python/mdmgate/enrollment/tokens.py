"""Enrollment tokens and SCEP challenges (pure functions, no I/O).

A token is what an administrator hands out so that devices enrol into an org. Its value is
``<id>.<secret>``: the id names the stored :class:`~mdmgate.storage.enrollment.EnrollmentToken`,
the secret proves the holder was given it. The store keeps only the SHA-256 of the secret,
so a copy of the database enrols nothing.

A SCEP challenge is what an Apple enrollment profile carries for the device to put in its
certificate request. It is stateless: ``<token id>.<expiry>.<nonce>.<mac>``, the MAC an
HMAC-SHA256 under a key only the gateway knows. Any node can check it without a lookup; the
caller makes it one-time by claiming its nonce (the store's ``claim_once``) until it
expires.

Every comparison of a secret or MAC is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Sequence

from mdmgate.storage.enrollment import EnrollmentToken

__all__ = [
    "PLATFORMS",
    "REASONS",
    "TokenRefused",
    "check_scep_challenge",
    "new_token",
    "refusal",
    "scep_challenge",
    "secret_matches",
    "split_value",
]

#: The platforms a token may be limited to (none named: both).
PLATFORMS = ("windows", "apple")

#: Why a token (or challenge) is refused, with the default message for each.
REASONS = {
    "malformed": "the enrollment token is malformed",
    "unknown": "the enrollment token is not known",
    "wrong_secret": "the enrollment token is not valid",
    "revoked": "the enrollment token was revoked",
    "expired": "the enrollment token has expired",
    "exhausted": "the enrollment token has been used as often as it may",
    "wrong_platform": "the enrollment token is not for this platform",
}

#: 32 random bytes: beyond guessing, whatever the rate limit.
_SECRET_BYTES = 32
_ID = re.compile(r"et_[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXPIRY = re.compile(r"[0-9]{1,12}")
_B64 = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NONCE_BYTES = 16


class TokenRefused(Exception):
    """A token or challenge that is not usable. ``reason`` is one of :data:`REASONS` (what
    an API or log counts); the message is for people."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown token refusal reason {reason!r}")
        super().__init__(message or REASONS[reason])
        self.reason = reason


def new_token(
    org: str,
    *,
    now: float,
    expires_at: float,
    max_uses: int | None,
    platforms: Sequence[str] = (),
    description: str = "",
) -> tuple[EnrollmentToken, str]:
    """A new token for ``org`` and its value ``<id>.<secret>`` (shown once: the token keeps
    only the secret's SHA-256). ``ValueError`` naming the field: ``org`` not a path (``/``
    first), ``expires_at`` not after ``now``, ``max_uses`` under 1 (``None``: unlimited),
    ``platforms`` not among :data:`PLATFORMS` (empty: both)."""
    if not isinstance(org, str) or not org.startswith("/"):
        raise ValueError(f"org must be a path starting with '/', not {org!r}")
    if not math.isfinite(expires_at) or expires_at <= now:
        raise ValueError("expires_at must be later than now")
    if max_uses is not None and (
        isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1
    ):
        raise ValueError(f"max_uses must be at least 1 (or None: unlimited), not {max_uses!r}")
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if isinstance(platforms, str) or unknown:
        raise ValueError(f"platforms must be among {', '.join(PLATFORMS)}: not {unknown}")
    token_id = "et_" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    token = EnrollmentToken(
        id=token_id,
        org=org,
        secret_sha256=_secret_hash(secret),
        created_at=now,
        expires_at=expires_at,
        max_uses=max_uses,
        platforms=tuple(dict.fromkeys(platforms)),
        description=description,
    )
    return token, f"{token_id}.{secret}"


def split_value(value: str) -> tuple[str, str]:
    """The id and secret of a token value (whitespace around it ignored: values get pasted).
    :class:`TokenRefused` ``malformed`` unless it is ``et_<16 hex>.<url-safe secret>``."""
    parts = value.strip().split(".") if isinstance(value, str) else []
    if len(parts) != 2 or not _ID.fullmatch(parts[0]) or not _SECRET.fullmatch(parts[1]):
        raise TokenRefused("malformed")
    return parts[0], parts[1]


def secret_matches(token: EnrollmentToken, secret: str) -> bool:
    """Whether ``secret`` is the token's (constant-time)."""
    return hmac.compare_digest(_secret_hash(secret), token.secret_sha256)


def refusal(token: EnrollmentToken | None, *, now: float, platform: str) -> TokenRefused | None:
    """Why ``token`` cannot enrol a ``platform`` device at ``now`` (``None``: it can). The
    strongest reason wins: unknown, revoked, expired, used up, then the platform."""
    if token is None:
        return TokenRefused("unknown")
    if token.revoked_at is not None:
        return TokenRefused("revoked")
    if token.expires_at <= now:
        return TokenRefused("expired")
    if token.max_uses is not None and token.uses >= token.max_uses:
        return TokenRefused("exhausted")
    if token.platforms and platform not in token.platforms:
        names = " or ".join(token.platforms)
        return TokenRefused("wrong_platform", f"the enrollment token is for {names} devices")
    return None


def scep_challenge(key: bytes, token_id: str, *, expires_at: float) -> str:
    """A challenge for a device enrolling with token ``token_id``, good until
    ``expires_at`` (Unix seconds, rounded down to a whole second): ``token_id.expiry.nonce.mac``.
    ``ValueError`` for an empty key or a token id that is not url-safe."""
    if not key:
        raise ValueError("the challenge key is empty")
    if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
        raise ValueError(f"token_id {token_id!r} is not 1 to 64 url-safe characters")
    if not math.isfinite(expires_at):
        raise ValueError("expires_at must be a finite time")
    nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
    message = f"{token_id}.{math.floor(expires_at)}.{nonce}"
    return f"{message}.{_b64(_mac(key, message))}"


def check_scep_challenge(key: bytes, challenge: str, *, now: float) -> tuple[str, str]:
    """The token id and nonce of a challenge :func:`scep_challenge` made with ``key``.
    :class:`TokenRefused`: ``malformed``, ``wrong_secret`` (the MAC does not match: made
    with another key, or changed), ``expired`` (``now`` at or past its expiry). The MAC is
    checked before anything the challenge says is believed."""
    parts = challenge.strip().split(".") if isinstance(challenge, str) else []
    if len(parts) != 4 or not all(parts):
        raise TokenRefused("malformed", "the SCEP challenge is malformed")
    token_id, expiry, nonce, mac = parts
    if not (
        _TOKEN_ID.fullmatch(token_id)
        and _EXPIRY.fullmatch(expiry)
        and _B64.fullmatch(nonce)
        and _B64.fullmatch(mac)
    ):
        raise TokenRefused("malformed", "the SCEP challenge is malformed")
    try:
        given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused("malformed", "the SCEP challenge is malformed") from None
    if not hmac.compare_digest(given, _mac(key, f"{token_id}.{expiry}.{nonce}")):
        raise TokenRefused("wrong_secret", "the SCEP challenge is not valid")
    if int(expiry) <= now:
        raise TokenRefused("expired", "the SCEP challenge has expired")
    return token_id, nonce


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _mac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
