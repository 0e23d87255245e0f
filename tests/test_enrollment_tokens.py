"""Enrollment tokens (what is handed out, what is stored, why one is refused) and the
stateless SCEP challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdmgate.enrollment.tokens import (
    REASONS,
    TokenRefused,
    check_scep_challenge,
    new_token,
    refusal,
    scep_challenge,
    secret_matches,
    split_value,
)
from mdmgate.storage.enrollment import EnrollmentToken

NOW = 1_770_000_000.0
KEY = b"k" * 32


def make(**changes: object) -> tuple[EnrollmentToken, str]:
    values: dict[str, object] = {"now": NOW, "expires_at": NOW + 3600, "max_uses": 5}
    values.update(changes)
    return new_token("/acme", **values)  # type: ignore[arg-type]


def test_new_token_hands_out_id_and_secret_and_keeps_a_hash() -> None:
    token, value = make(platforms=("apple",), description="lab iPads")
    assert re.fullmatch(r"et_[0-9a-f]{16}", token.id)
    token_id, secret = value.split(".")
    assert token_id == token.id
    # 32 random bytes, URL-safe base64 without padding.
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert token.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in msgspec.json.encode(token).decode()
    assert (token.org, token.created_at, token.expires_at) == ("/acme", NOW, NOW + 3600)
    assert (token.max_uses, token.uses, token.revoked_at) == (5, 0, None)
    assert (token.platforms, token.description) == (("apple",), "lab iPads")
    other, other_value = make()
    assert other.id != token.id
    assert other_value.split(".")[1] != secret
    assert make(max_uses=None)[0].max_uses is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"expires_at": NOW}, "expires_at"),
        ({"expires_at": NOW - 1}, "expires_at"),
        ({"max_uses": 0}, "max_uses"),
        ({"max_uses": -3}, "max_uses"),
        ({"platforms": ("android",)}, "platforms"),
        ({"platforms": ("windows", "ios")}, "platforms"),
    ],
)
def test_new_token_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make(**changes)


def test_new_token_org_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="org"):
        new_token("acme", now=NOW, expires_at=NOW + 1, max_uses=None)
    with pytest.raises(ValueError, match="org"):
        new_token("", now=NOW, expires_at=NOW + 1, max_uses=None)


def test_split_value_and_secret_matches() -> None:
    token, value = make()
    token_id, secret = split_value(value)
    assert token_id == token.id
    assert secret_matches(token, secret)
    assert not secret_matches(token, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not secret_matches(token, "")
    assert split_value(f"  {value}\n") == (token_id, secret)  # pasted with whitespace
    for bad in ("", "no-dot", ".secret", "et_0123456789abcdef.", "a.b.c", "et_x y.s", "é.s"):
        with pytest.raises(TokenRefused) as refused:
            split_value(bad)
        assert refused.value.reason == "malformed"


def test_refusal_explains_every_reason() -> None:
    token, _ = make(platforms=("windows",))
    assert refusal(token, now=NOW, platform="windows") is None
    cases = {
        "unknown": (None, NOW, "windows"),
        "revoked": (msgspec.structs.replace(token, revoked_at=NOW - 1), NOW, "windows"),
        "expired": (token, NOW + 3600, "windows"),
        "exhausted": (msgspec.structs.replace(token, uses=5), NOW, "windows"),
        "wrong_platform": (token, NOW, "apple"),
    }
    for reason, (which, now, platform) in cases.items():
        found = refusal(which, now=now, platform=platform)
        assert found is not None, reason
        assert found.reason == reason
        assert str(found)  # readable
    # Empty platforms: both.
    both, _ = make()
    assert refusal(both, now=NOW, platform="apple") is None
    assert refusal(both, now=NOW, platform="windows") is None
    unlimited, _ = make(max_uses=None)
    assert (
        refusal(msgspec.structs.replace(unlimited, uses=10_000), now=NOW, platform="apple") is None
    )
    # Revoked wins over expired: the stronger statement.
    gone = msgspec.structs.replace(token, revoked_at=NOW, uses=5)
    found = refusal(gone, now=NOW + 7200, platform="apple")
    assert found is not None
    assert found.reason == "revoked"


def test_token_refused_reasons_are_a_closed_set() -> None:
    assert set(REASONS) == {
        "malformed",
        "unknown",
        "wrong_secret",
        "revoked",
        "expired",
        "exhausted",
        "wrong_platform",
    }
    with pytest.raises(ValueError, match="reason"):
        TokenRefused("made up")
    refused = TokenRefused("expired", "the token expired at noon")
    assert refused.reason == "expired"
    assert str(refused) == "the token expired at noon"
    assert str(TokenRefused("unknown"))  # a default message


# -- SCEP challenge


def test_scep_challenge_round_trip() -> None:
    challenge = scep_challenge(KEY, "et_0123456789abcdef", expires_at=NOW + 600)
    token_id, nonce = check_scep_challenge(KEY, challenge, now=NOW)
    assert token_id == "et_0123456789abcdef"
    assert nonce
    parts = challenge.split(".")
    assert len(parts) == 4
    assert parts[0] == token_id
    assert parts[2] == nonce
    assert re.fullmatch(r"[A-Za-z0-9_-]+", parts[3])
    # The MAC is HMAC-SHA256 over the rest.
    mac = hmac.new(KEY, ".".join(parts[:3]).encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)) == mac
    # Each challenge is new: its nonce is what makes it one-time.
    again = scep_challenge(KEY, "et_0123456789abcdef", expires_at=NOW + 600)
    assert check_scep_challenge(KEY, again, now=NOW)[1] != nonce


def test_scep_challenge_refusals() -> None:
    challenge = scep_challenge(KEY, "et_0123456789abcdef", expires_at=NOW + 600)
    cases = {
        "wrong key": (b"other key", challenge, NOW, "wrong_secret"),
        "expired": (KEY, challenge, NOW + 600, "expired"),
        "malformed": (KEY, "a.b.c", NOW, "malformed"),
        "empty": (KEY, "", NOW, "malformed"),
        "bad expiry": (KEY, "et_1.soon.nonce.mac", NOW, "malformed"),
    }
    token_id, expiry, nonce, mac = challenge.split(".")
    cases["longer expiry"] = (
        KEY,
        f"{token_id}.{int(expiry) + 1000}.{nonce}.{mac}",
        NOW,
        "wrong_secret",
    )
    cases["other token"] = (KEY, f"et_fedcba9876543210.{expiry}.{nonce}.{mac}", NOW, "wrong_secret")
    flipped = mac[:10] + ("A" if mac[10] != "A" else "B") + mac[11:]
    cases["changed mac"] = (KEY, f"{token_id}.{expiry}.{nonce}.{flipped}", NOW, "wrong_secret")
    cases["short mac"] = (KEY, f"{token_id}.{expiry}.{nonce}.{mac[:-4]}", NOW, "wrong_secret")
    cases["not base64"] = (KEY, f"{token_id}.{expiry}.{nonce}.{mac[:-2]}", NOW, "malformed")
    for name, (key, value, now, reason) in cases.items():
        with pytest.raises(TokenRefused) as refused:
            check_scep_challenge(key, value, now=now)
        assert refused.value.reason == reason, name
    with pytest.raises(ValueError, match="key"):
        scep_challenge(b"", "et_1", expires_at=NOW)
    with pytest.raises(ValueError, match="token_id"):
        scep_challenge(KEY, "et.1", expires_at=NOW)


@given(st.text(max_size=200))
def test_parsers_only_refuse(value: str) -> None:
    for parse in (split_value, lambda v: check_scep_challenge(KEY, v, now=NOW)):
        try:
            parse(value)
        except TokenRefused as refused:
            assert refused.reason in REASONS
