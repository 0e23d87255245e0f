"""SyncML Cred/Chal authentication: the md5 digest against the OMA-DM example, basic
credentials, and the ok/missing/wrong verdicts."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate.windows import auth

MD5 = {"Type": "syncml:auth-md5", "Format": "b64"}
BASIC = {"Type": "syncml:auth-basic", "Format": "b64"}


def test_md5_digest_matches_the_oma_dm_example() -> None:
    # OMA-DM RepPro's Cred example: user Bruce2, password OhBehave, nonce "Nonce".
    assert auth.md5_digest("Bruce2", "OhBehave", b"Nonce") == "Zz6EivR3yeaaENcRN6lpAQ=="


@settings(max_examples=50, deadline=None)
@given(user=st.text(max_size=20), secret=st.text(max_size=20), nonce=st.binary(max_size=32))
def test_md5_digest_construction(user: str, secret: str, nonce: bytes) -> None:
    inner = base64.b64encode(hashlib.md5(f"{user}:{secret}".encode()).digest())
    expected = base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()
    assert auth.md5_digest(user, secret, nonce) == expected


def test_nonce_is_used_as_raw_bytes() -> None:
    nonce = bytes(range(256))[:16]
    assert auth.md5_digest("u", "p", nonce) != auth.md5_digest("u", "p", base64.b64encode(nonce))


def test_basic_credentials() -> None:
    assert auth.basic_credentials("Aladdin", "open sesame") == "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert base64.b64decode(auth.basic_credentials("us\u00e9r", "p:w")) == "us\u00e9r:p:w".encode()


def test_md5_credentials_ok_missing_wrong() -> None:
    nonce = auth.new_nonce()
    good = auth.md5_digest("dev", "s3cret", nonce)

    def check(meta: dict[str, str] | None, data: str | None, n: bytes | None = nonce) -> str:
        return auth.check_credentials(meta, data, username="dev", secret="s3cret", nonce=n)

    assert check(MD5, good) == "ok"
    assert check(MD5, f"  {good}\n") == "ok"  # whitespace around the text is not data
    assert check(None, None) == "missing"
    assert check(MD5, None) == "missing"
    assert check(MD5, "  ") == "missing"
    assert check(MD5, auth.md5_digest("dev", "wrong", nonce)) == "wrong"
    assert check(MD5, auth.md5_digest("other", "s3cret", nonce)) == "wrong"
    assert check(MD5, auth.md5_digest("dev", "s3cret", b"stale nonce")) == "wrong"
    assert check(MD5, good, None) == "wrong"  # no nonce issued: cannot be checked
    assert check({**MD5, "Format": "chr"}, good) == "wrong"
    assert check({"Type": "syncml:auth-MAC", "Format": "b64"}, good) == "wrong"


def test_basic_credentials_ok_missing_wrong() -> None:
    def check(meta: dict[str, str | list[str]] | None, data: str | None) -> str:
        return auth.check_credentials(meta, data, username="dev", secret="s3cret", nonce=None)

    good = auth.basic_credentials("dev", "s3cret")
    assert check(BASIC, good) == "ok"
    assert check({}, good) == "ok"  # Type defaults to auth-basic, Format to b64
    assert check(BASIC, None) == "missing"
    assert check(BASIC, auth.basic_credentials("dev", "s3cre")) == "wrong"
    assert check(BASIC, auth.basic_credentials("dev", "s3cret ")) == "wrong"
    assert check(BASIC, "not base64!") == "wrong"
    assert check(BASIC, "ZGV2OnMzY3JldA") == "wrong"  # unpadded
    assert check({"Type": ["syncml:auth-basic", "syncml:auth-md5"]}, good) == "wrong"


def test_new_nonce_is_random_and_16_bytes() -> None:
    nonces = {auth.new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 16 for n in nonces)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("md5", {"Type": "syncml:auth-md5", "Format": "b64", "NextNonce": "AAEC/w=="}),
        ("basic", {"Type": "syncml:auth-basic", "Format": "b64"}),
    ],
)
def test_challenge(method: str, expected: dict[str, str]) -> None:
    assert auth.challenge(b"\x00\x01\x02\xff", method=method) == expected  # type: ignore[arg-type]


def test_challenge_round_trip() -> None:
    # The device reads NextNonce, decodes it, and digests with the raw bytes.
    nonce = auth.new_nonce()
    chal = auth.challenge(nonce)
    device_nonce = base64.b64decode(chal["NextNonce"])
    cred = auth.md5_digest("dev", "pw", device_nonce)
    assert auth.check_credentials(MD5, cred, username="dev", secret="pw", nonce=nonce) == "ok"
