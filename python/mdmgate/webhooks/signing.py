"""Webhook signatures: how a receiver knows a request came from this gateway, unaltered and
recently.

Every webhook request carries the header::

    Mdmgate-Signature: t=<unix seconds>,v1=<hex>

where ``<hex>`` is the lower-case hexadecimal HMAC-SHA256, keyed with the subscription's
secret (the string shown once when the webhook was created, as its UTF-8 bytes), of the
bytes ``<t>.<body>``: the decimal timestamp exactly as it appears in the header, one full
stop, then the request body exactly as received (before any JSON parsing).

A receiver verifies it so:

1. split the header on ``,`` into ``key=value`` items (spaces around items are allowed);
   exactly one ``t``, a decimal integer; one or more ``v1`` (64 hex digits each); items of
   other keys are ignored (room for later schemes);
2. refuse the request when ``|now - t|`` exceeds the replay window,
   :data:`REPLAY_WINDOW_SECONDS` (five minutes) unless it chooses another;
3. compute the HMAC above and compare it, in constant time, with every ``v1``: one match
   accepts the request.

The timestamp is signed with the body, so a recorded request cannot be replayed with a fresh
timestamp; the window bounds how long a recorded one stays acceptable as it is. Each delivery
attempt, retries included, is signed afresh, so a retry hours later is inside the window.
Within the window a receiver drops repeats by the events' ``seq`` (delivery is at least
once: the same events may come twice, e.g. after the gateway lost its answer).

Five minutes: far more than the clock skew between NTP-synchronised hosts plus a request's
time in flight (the gateway times requests out well before), and short enough that a
captured request is soon useless.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

__all__ = [
    "REPLAY_WINDOW_SECONDS",
    "SIGNATURE_HEADER",
    "MalformedSignature",
    "SignatureError",
    "SignatureMismatch",
    "StaleSignature",
    "new_secret",
    "parse_signature_header",
    "sign",
    "signature",
    "verify",
]

#: The request header holding the timestamp and signature(s).
SIGNATURE_HEADER = "Mdmgate-Signature"
#: How far a signature's timestamp may be from the receiver's clock, either way.
REPLAY_WINDOW_SECONDS = 300

_HEX = frozenset("0123456789abcdefABCDEF")


class SignatureError(ValueError):
    """A webhook request whose signature does not let it in."""


class MalformedSignature(SignatureError):
    """The signature header cannot be read (no ``t``, no ``v1``, or a bad value)."""


class StaleSignature(SignatureError):
    """The signed timestamp is outside the replay window."""


class SignatureMismatch(SignatureError):
    """No ``v1`` signature matches the body and timestamp under the secret."""


def new_secret() -> str:
    """A fresh subscription secret: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` keyed with ``secret`` (UTF-8)."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be a non-negative whole number, not {timestamp!r}")
    if not secret:
        raise ValueError("the secret must not be empty")
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The value of the :data:`SIGNATURE_HEADER` header for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a header value;
    :class:`MalformedSignature` naming what is wrong."""
    timestamp: int | None = None
    found: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise MalformedSignature(f"signature header item {item.strip()!r} is not key=value")
        if key == "t":
            if timestamp is not None:
                raise MalformedSignature("signature header has t twice")
            if not (value.isascii() and value.isdigit()) or len(value) > 15:
                raise MalformedSignature(f"signature timestamp {value!r} is not Unix seconds")
            timestamp = int(value)
        elif key == "v1":
            if len(value) != 64 or not set(value) <= _HEX:
                raise MalformedSignature("a v1 signature must be 64 hex digits")
            found.append(value.lower())
    if timestamp is None:
        raise MalformedSignature("signature header has no t (timestamp)")
    if not found:
        raise MalformedSignature("signature header has no v1 signature")
    return timestamp, found


def verify(
    secrets_: str | Sequence[str],
    body: bytes,
    header: str,
    *,
    now: float,
    window: float = REPLAY_WINDOW_SECONDS,
) -> int:
    """Checks a request as a receiver does (see the module's docstring); returns the signed
    timestamp. ``secrets_`` may list several (while a receiver rotates its secret). Raises
    :class:`MalformedSignature`, :class:`StaleSignature` or :class:`SignatureMismatch`."""
    timestamp, given = parse_signature_header(header)
    if abs(now - timestamp) > window:
        raise StaleSignature(
            f"signed at {timestamp}, {abs(now - timestamp):.0f} s from now: outside the"
            f" {window:g} s replay window"
        )
    keys = [secrets_] if isinstance(secrets_, str) else list(secrets_)
    expected = [signature(key, body, timestamp) for key in keys]
    # Every comparison runs (no early exit), each in constant time.
    matches = [hmac.compare_digest(e, g) for e in expected for g in given]
    if not any(matches):
        raise SignatureMismatch("no v1 signature matches the body under the secret")
    return timestamp
