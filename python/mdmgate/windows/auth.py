"""SyncML ``Cred``/``Chal`` authentication for OMA-DM (pure functions, no I/O).

OMA-DM 1.2 (DM Security, "Computation of the MD-5 Digest") defines the ``syncml:auth-md5``
credential as ``B64(H(B64(H(username ":" password)) ":" nonce))`` with H = MD5. Byte
handling chosen here:

* ``username`` and ``secret`` are encoded as UTF-8 (the spec names no charset; for ASCII
  every choice agrees);
* the inner digest's base64 text is ASCII, so it is used as its ASCII bytes;
* the nonce is the *raw* nonce bytes. ``Chal``'s ``NextNonce`` carries it base64-encoded
  (``Format`` b64), and both sides hash the decoded bytes.

The OMA-DM RepPro ``Cred`` example (user ``Bruce2``, password ``OhBehave``, nonce ``Nonce``,
digest ``Zz6EivR3yeaaENcRN6lpAQ==``) is a test vector for exactly this construction.

``syncml:auth-basic`` is ``B64(username ":" password)``.

Authentication is mutual in OMA-DM: a client may require the server to prove itself with
its own ``Cred`` (:func:`server_credentials`), an MD5 digest over the server's name and
secret and the nonce the *client* issued to the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Literal

__all__ = [
    "AUTH_BASIC",
    "AUTH_MD5",
    "FACT_CLIENT_NONCE",
    "FACT_SERVER_AUTH",
    "FACT_SERVER_NONCE",
    "basic_credentials",
    "challenge",
    "check_credentials",
    "md5_digest",
    "new_nonce",
    "server_credentials",
]

AUTH_MD5 = "syncml:auth-md5"
AUTH_BASIC = "syncml:auth-basic"

#: OMA-DM recommends nonces of at least 128 bits.
_NONCE_BYTES = 16

# Device facts (base64 nonces), shared by every gateway process through the store.
#: The nonce the device must use in its next MD5 credentials (issued by the gateway).
FACT_CLIENT_NONCE = "syncml_nonce"
#: The nonce the gateway must use in its next MD5 server credentials (issued by the device).
FACT_SERVER_NONCE = "syncml_server_nonce"
#: ``"required"`` once the device asked the server to authenticate (401/407 on our SyncHdr).
FACT_SERVER_AUTH = "syncml_server_auth"


def md5_digest(username: str, secret: str, nonce: bytes) -> str:
    """The ``syncml:auth-md5`` credential for ``username``/``secret`` and the raw ``nonce``."""
    inner = base64.b64encode(hashlib.md5(f"{username}:{secret}".encode()).digest())
    return base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode("ascii")


def basic_credentials(username: str, secret: str) -> str:
    """The ``syncml:auth-basic`` credential: base64 of ``username:secret`` (UTF-8)."""
    return base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")


def check_credentials(
    cred_meta: Mapping[str, str | list[str]] | None,
    cred_data: str | None,
    *,
    username: str,
    secret: str,
    nonce: bytes | None,
    method: Literal["md5", "basic"] | None = None,
) -> Literal["ok", "missing", "wrong"]:
    """Checks a SyncHdr ``Cred`` (its ``Meta`` and ``Data``) against the expected account.

    ``method`` is the credential type registered for the device: a ``Cred`` of the other
    type is ``"wrong"`` even with the right secret (no downgrade from MD5 to basic, which
    would send the secret itself). ``None`` accepts either type.

    ``"missing"`` when there is no credential (answer 407 with a challenge), ``"wrong"`` when
    there is one that does not match (answer 401 with a fresh challenge): an unknown or
    repeated ``Type``, a ``Format`` other than b64, undecodable data, or an md5 credential
    while no ``nonce`` was issued (it cannot be checked; challenge with one). A ``Meta``
    without ``Type`` means ``syncml:auth-basic``, the SyncML default. Comparisons are
    constant-time.
    """
    if cred_data is None or not cred_data.strip():
        return "missing"
    meta = cred_meta or {}
    kind = meta.get("Type", AUTH_BASIC)
    form = meta.get("Format", "b64")
    if not isinstance(kind, str) or not isinstance(form, str) or form.strip() != "b64":
        return "wrong"
    if method is not None and kind.strip() != (AUTH_MD5 if method == "md5" else AUTH_BASIC):
        return "wrong"
    given = cred_data.strip().encode()
    expected: bytes | None = None
    if kind.strip() == AUTH_MD5 and nonce is not None:
        expected = md5_digest(username, secret, nonce).encode("ascii")
    elif kind.strip() == AUTH_BASIC:
        # Compare the decoded pair: base64 has more than one spelling of the same bytes.
        try:
            given = base64.b64decode(given, validate=True)
        except (binascii.Error, ValueError):
            return "wrong"
        expected = f"{username}:{secret}".encode()
    if expected is None or not hmac.compare_digest(given, expected):
        return "wrong"
    return "ok"


def new_nonce() -> bytes:
    """A fresh random nonce (16 bytes): one per challenge, never reused across sessions."""
    return secrets.token_bytes(_NONCE_BYTES)


def challenge(nonce: bytes, *, method: Literal["md5", "basic"] = "md5") -> dict[str, str]:
    """The ``Chal`` Meta for a 401/407 SyncHdr status (``Session.reply(chal=...)``)."""
    if method == "basic":
        return {"Type": AUTH_BASIC, "Format": "b64"}
    return {
        "Type": AUTH_MD5,
        "Format": "b64",
        "NextNonce": base64.b64encode(nonce).decode("ascii"),
    }


def server_credentials(username: str, secret: str, nonce: bytes) -> tuple[dict[str, str], str]:
    """The server's own ``Cred`` for its SyncHdr (its ``Meta`` and ``Data``): MD5 over the
    server's name and secret and the nonce the client issued to the server (empty when the
    client has issued none yet: it then challenges with one)."""
    return {"Type": AUTH_MD5, "Format": "b64"}, md5_digest(username, secret, nonce)
