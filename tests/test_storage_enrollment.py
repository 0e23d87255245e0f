"""The enrollment role of the store (:class:`mdmgate.storage.EnrollmentStore`) on every
backend: the CA's material, enrollment tokens, issued certificates and one-time claims,
alone, under concurrent writers (tasks, two stores on one database, two OS processes), and
across a restart or a schema upgrade."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from mdmgate.storage import (
    Device,
    EnrollmentToken,
    IssuedCertificate,
    RevisionConflict,
    Store,
    pgwire,
)
from mdmgate.storage.enrollment import revoked_auth
from mdmgate.storage.sqlite import SQLiteStore
from tests.postgres_server import PostgresServer
from tests.stores import (
    BACKENDS,
    SHARED_BACKENDS,
    database_url,
    open_backend,
    open_peer,
    race_in_processes,
    use_token_times,
)

T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path)
    await s.upsert_devices([Device(f"dev-{i}", "apple", "/acme") for i in range(5)])
    yield s
    await s.aclose()


@pytest.fixture(params=SHARED_BACKENDS)
def shared(request: pytest.FixtureRequest) -> str:
    """A backend whose database several stores and processes share."""
    kind: str = request.param
    return kind


async def _two_stores(kind: str, tmp_path: Path) -> tuple[Store, Store]:
    first = await open_backend(kind, tmp_path)
    await first.upsert_devices([Device(f"dev-{i}", "apple", "/acme") for i in range(5)])
    return first, await open_peer(kind, tmp_path)


def token(token_id: str = "et_1", **fields: Any) -> EnrollmentToken:
    values: dict[str, Any] = {
        "org": "/acme",
        "secret_sha256": hashlib.sha256(token_id.encode()).hexdigest(),
        "created_at": T0,
        "expires_at": T0 + 3600,
        **fields,
    }
    return EnrollmentToken(token_id, **values)


def certificate(serial: str, **fields: Any) -> IssuedCertificate:
    der = fields.pop("der", b"\x30\x82" + serial.encode() + bytes(range(256)))
    values: dict[str, Any] = {
        "sha256": fields.pop("sha256", None) or hashlib.sha256(bytes(der)).hexdigest(),
        "subject": f"CN={serial}",
        "org": "/acme",
        "platform": "apple",
        "issued_at": T0,
        "not_after": T0 + 86400 * 365,
        "der": der,
        **fields,
    }
    return IssuedCertificate(serial, **values)


# -- material -----------------------------------------------------------------------------


async def test_material_is_created_once_unless_replaced(store: Store) -> None:
    assert await store.get_material("ca") is None
    assert await store.put_material("ca", b"first\x00\xff") == b"first\x00\xff"
    # A second creator gets what the first stored.
    assert await store.put_material("ca", b"second") == b"first\x00\xff"
    assert await store.get_material("ca") == b"first\x00\xff"
    assert await store.put_material("ca", bytearray(b"rotated"), replace=True) == b"rotated"
    found = await store.get_material("ca")
    assert found == b"rotated"
    assert type(found) is bytes
    # Names are apart.
    assert await store.put_material("apns", b"push") == b"push"
    assert await store.get_material("ca") == b"rotated"
    with pytest.raises(ValueError, match="material 'ca'"):
        await store.put_material("ca", "not bytes", replace=True)  # type: ignore[arg-type]


async def test_material_created_by_two_stores_at_once_is_one(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    got: list[bytes] = []

    async def create(s: Store, value: bytes) -> None:
        got.append(await s.put_material("ca", value))

    try:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(create, first, b"first-%d" % i)
                nursery.start_soon(create, second, b"second-%d" % i)
        assert len(got) == 20
        assert len(set(got)) == 1
        assert await first.get_material("ca") == await second.get_material("ca") == got[0]
    finally:
        await first.aclose()
        await second.aclose()


# -- tokens -------------------------------------------------------------------------------


async def test_tokens_are_stored_listed_and_revoked(store: Store) -> None:
    full = token(
        "et_full",
        max_uses=3,
        platforms=("windows", "apple"),
        description="Tokyo office",
        created_at=T0 + 2,
    )
    await store.put_token(full)
    await store.put_token(token("et_old", created_at=T0))
    await store.put_token(token("et_sales", org="/acme/sales", created_at=T0 + 1))
    found = await store.get_token("et_full")
    assert found == full
    assert found is not None
    assert isinstance(found.platforms, tuple)
    assert await store.get_token("et_none") is None
    assert [t.id for t in await store.list_tokens()] == ["et_full", "et_sales", "et_old"]
    # The org exactly: not the orgs below it.
    assert [t.id for t in await store.list_tokens("/acme")] == ["et_full", "et_old"]
    assert [t.id for t in await store.list_tokens("/acme/sales")] == ["et_sales"]
    assert await store.list_tokens("/other") == []
    # A taken id is refused, and the stored token is kept.
    with pytest.raises(RevisionConflict, match="et_full"):
        await store.put_token(token("et_full", org="/evil"))
    assert await store.get_token("et_full") == full
    # Revoked once: the first time stays.
    revoked = await store.revoke_token("et_full", at=T0 + 10)
    assert revoked == EnrollmentToken(**{**_fields(full), "revoked_at": T0 + 10})
    again = await store.revoke_token("et_full", at=T0 + 20)
    assert again is not None
    assert again.revoked_at == T0 + 10
    assert await store.get_token("et_full") == again
    assert await store.revoke_token("et_none", at=T0) is None


def _fields(value: Any) -> dict[str, Any]:
    return {f: getattr(value, f) for f in value.__struct_fields__}


async def test_only_a_usable_token_counts_a_use(store: Store) -> None:
    await store.put_token(token("et_capped", max_uses=2))
    await store.put_token(token("et_open"))
    await store.put_token(token("et_revoked"))
    await store.revoke_token("et_revoked", at=T0 + 1)
    first = await store.use_token("et_capped", now=T0 + 5)
    assert first is not None
    assert first.uses == 1
    assert first == EnrollmentToken(**{**_fields(token("et_capped", max_uses=2)), "uses": 1})
    second = await store.use_token("et_capped", now=T0 + 5)
    assert second is not None
    assert second.uses == 2
    # Exhausted, expired (expires_at is not after now), revoked, unknown: nothing counted.
    assert await store.use_token("et_capped", now=T0 + 5) is None
    assert await store.use_token("et_open", now=T0 + 3600) is None
    assert await store.use_token("et_open", now=T0 + 7200) is None
    assert await store.use_token("et_revoked", now=T0 + 5) is None
    assert await store.use_token("et_none", now=T0 + 5) is None
    uses = {t.id: t.uses for t in await store.list_tokens()}
    assert uses == {"et_capped": 2, "et_open": 0, "et_revoked": 0}
    # Without a limit: any number of uses until it expires.
    for n in range(1, 8):
        used = await store.use_token("et_open", now=T0 + 3599.5)
        assert used is not None
        assert used.uses == n


async def test_concurrent_uses_stop_at_the_limit(store: Store) -> None:
    await store.put_token(token("et_5", max_uses=5))
    counts: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(_use_once, store, counts)
    assert sorted(counts) == [1, 2, 3, 4, 5]
    found = await store.get_token("et_5")
    assert found is not None
    assert found.uses == 5


async def _use_once(store: Store, counts: list[int]) -> None:
    used = await store.use_token("et_5", now=T0)
    if used is not None:
        counts.append(used.uses)


async def test_uses_from_two_stores_stop_at_the_limit(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        await first.put_token(token("et_5", max_uses=5))
        counts: list[int] = []
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(_use_once, (first, second)[i % 2], counts)
        assert sorted(counts) == [1, 2, 3, 4, 5]
        for s in (first, second):
            found = await s.get_token("et_5")
            assert found is not None
            assert found.uses == 5
    finally:
        await first.aclose()
        await second.aclose()


async def test_uses_from_two_processes_stop_at_the_limit(shared: str, tmp_path: Path) -> None:
    store = await open_backend(shared, tmp_path)
    try:
        await store.put_token(token("et_5", max_uses=5))
        url = database_url(shared, tmp_path)
        assert url is not None
        call = ("use_token_times", {"token_id": "et_5", "times": 10, "now": T0})
        counts = await race_in_processes(url, [call, call])
        assert sorted(counts[0] + counts[1]) == [1, 2, 3, 4, 5]
        found = await store.get_token("et_5")
        assert found is not None
        assert found.uses == 5
        # The racers' helper counts what a single caller gets, too.
        assert await use_token_times(store, "et_5", 3, T0) == []
    finally:
        await store.aclose()


# -- one-time claims ----------------------------------------------------------------------


async def test_a_claim_wins_once_until_it_expires(store: Store) -> None:
    assert await store.claim_once("scep", "nonce-1", until=T0 + 60, now=T0)
    assert not await store.claim_once("scep", "nonce-1", until=T0 + 120, now=T0 + 1)
    assert not await store.claim_once("scep", "nonce-1", until=T0 + 120, now=T0 + 59.9)
    # Other keys, and the same key of another kind, are claims of their own.
    assert await store.claim_once("scep", "nonce-2", until=T0 + 60, now=T0)
    assert await store.claim_once("replay", "nonce-1", until=T0 + 60, now=T0)
    # Expired (now >= until): claimed again, until the new claim expires.
    assert await store.claim_once("scep", "nonce-1", until=T0 + 200, now=T0 + 60)
    assert not await store.claim_once("scep", "nonce-1", until=T0 + 300, now=T0 + 199)
    assert await store.claim_once("scep", "nonce-1", until=T0 + 300, now=T0 + 200)
    with pytest.raises(ValueError, match="until"):
        await store.claim_once("scep", "nonce-3", until=T0, now=T0)


async def test_forgetting_expired_claims_keeps_the_live_ones(store: Store) -> None:
    for i in range(50):
        assert await store.claim_once("old", f"k{i}", until=T0 + 1, now=T0)
    # Each later claim forgets a few expired ones; none still live is lost.
    assert await store.claim_once("live", "kept", until=T0 + 10_000, now=T0 + 2)
    for i in range(20):
        assert await store.claim_once("new", f"k{i}", until=T0 + 10_000, now=T0 + 2)
    assert not await store.claim_once("live", "kept", until=T0 + 10_000, now=T0 + 3)
    for i in range(50):
        assert await store.claim_once("old", f"k{i}", until=T0 + 10_000, now=T0 + 3)


async def test_one_of_concurrent_claims_wins(store: Store) -> None:
    won: list[int] = []

    async def claim(i: int) -> None:
        if await store.claim_once("scep", "challenge", until=T0 + 60, now=T0):
            won.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(claim, i)
    assert len(won) == 1


async def test_claims_from_two_stores_win_once_each(shared: str, tmp_path: Path) -> None:
    first, second = await _two_stores(shared, tmp_path)
    keys = [f"challenge-{i}" for i in range(30)]
    won: dict[str, list[str]] = {"first": [], "second": []}

    async def claim(s: Store, name: str) -> None:
        for key in keys:
            if await s.claim_once("scep", key, until=T0 + 60, now=T0):
                won[name].append(key)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, first, "first")
            nursery.start_soon(claim, second, "second")
        assert sorted(won["first"] + won["second"]) == sorted(keys)
    finally:
        await first.aclose()
        await second.aclose()


# -- certificates -------------------------------------------------------------------------


async def test_certificates_are_recorded_once(store: Store) -> None:
    issued = certificate("1f3a", token_id="et_1", renews="9", device_id="dev-0")
    await store.record_certificate(issued)
    assert await store.get_certificate("1f3a") == issued
    assert await store.certificate_by_sha256(issued.sha256) == issued
    found = await store.get_certificate("1f3a")
    assert found is not None
    assert type(found.der) is bytes
    assert await store.get_certificate("1f3b") is None
    assert await store.certificate_by_sha256("0" * 64) is None
    # The same serial, or the same DER under another serial: the caller issues again.
    with pytest.raises(RevisionConflict, match="1f3a"):
        await store.record_certificate(certificate("1f3a", der=b"other"))
    with pytest.raises(RevisionConflict, match=issued.sha256):
        await store.record_certificate(certificate("2b", der=issued.der))
    assert await store.get_certificate("2b") is None
    assert await store.certificate_by_sha256(hashlib.sha256(b"other").hexdigest()) is None
    assert await store.get_certificate("1f3a") == issued


async def test_malformed_certificates_and_tokens_are_refused(store: Store) -> None:
    for serial in ("", "01", "1F", "0x1f", "12g"):
        with pytest.raises(ValueError, match="serial"):
            await store.record_certificate(certificate(serial))
    with pytest.raises(ValueError, match="sha256"):
        await store.record_certificate(certificate("1", sha256="AB" * 32))
    with pytest.raises(ValueError, match="platform"):
        await store.record_certificate(certificate("2", platform="android"))
    with pytest.raises(ValueError, match="der"):
        await store.record_certificate(certificate("3", der="text", sha256="ab" * 32))
    with pytest.raises(ValueError, match="not_after"):
        await store.record_certificate(certificate("4", not_after=float("nan")))
    with pytest.raises(ValueError, match="max_uses"):
        await store.put_token(token("et_zero", max_uses=0))
    with pytest.raises(ValueError, match="platforms"):
        await store.put_token(token("et_odd", platforms=("windows", "android")))
    with pytest.raises(ValueError, match="expires_at"):
        await store.put_token(token("et_when", expires_at="tomorrow"))
    assert await store.list_certificates() == []
    assert await store.list_tokens() == []


async def test_certificates_are_listed_in_serial_order(store: Store) -> None:
    # Serials of different lengths: in the order of the numbers they are.
    serials = ["ff", "100", "a", "1", "fff0", "10", "0", "abc"]
    for i, serial in enumerate(serials):
        device = "dev-1" if i % 2 else None
        await store.record_certificate(certificate(serial, device_id=device))
    ordered = sorted(serials, key=lambda s: int(s, 16))
    listed = await store.list_certificates()
    assert [c.serial for c in listed] == ordered
    assert listed[0] == certificate("0")
    # Paging: after the last serial of a page, whatever its length.
    page = await store.list_certificates(limit=3)
    assert [c.serial for c in page] == ordered[:3]
    page = await store.list_certificates(after=page[-1].serial, limit=3)
    assert [c.serial for c in page] == ordered[3:6]
    assert [c.serial for c in await store.list_certificates(after="ff")] == ["100", "abc", "fff0"]
    assert await store.list_certificates(after="fff0") == []
    assert await store.list_certificates(limit=0) == []
    # One device's.
    mine = [s for i, s in enumerate(serials) if i % 2]
    by_device = await store.list_certificates(device_id="dev-1")
    assert [c.serial for c in by_device] == sorted(mine, key=lambda s: int(s, 16))
    after_a = await store.list_certificates(device_id="dev-1", after="a")
    assert [c.serial for c in after_a] == ["10", "100", "abc"]
    assert await store.list_certificates(device_id="dev-2") == []


async def test_a_certificate_is_bound_to_one_device(store: Store) -> None:
    await store.record_certificate(certificate("a1"))
    await store.record_certificate(certificate("a2"))
    assert await store.bind_certificate("a1", "dev-0")
    found = await store.get_certificate("a1")
    assert found is not None
    assert found.device_id == "dev-0"
    assert await store.bind_certificate("a1", "dev-0")
    assert not await store.bind_certificate("a1", "dev-1")
    found = await store.get_certificate("a1")
    assert found is not None
    assert found.device_id == "dev-0"
    assert not await store.bind_certificate("ff", "dev-0")
    await store.revoke_certificates(reason="lost", at=T0, serial="a2")
    assert not await store.bind_certificate("a2", "dev-0")
    found = await store.get_certificate("a2")
    assert found is not None
    assert found.device_id is None


async def _bound_device(store: Store, device: str, *serials: str) -> list[IssuedCertificate]:
    """Records certificates bound to ``device``; its auth names the last two (the current
    one and the one it renewed)."""
    issued = [certificate(s, device_id=device) for s in serials]
    for c in issued:
        await store.record_certificate(c)
    auth: dict[str, Any] = {"method": "certificate", "sha256": issued[-1].sha256}
    if len(issued) > 1:
        auth["previous_sha256"] = issued[-2].sha256
    await store.set_auth(device, auth)
    return issued


async def test_revoking_a_device_revokes_its_certificates_and_auth(store: Store) -> None:
    older, current = await _bound_device(store, "dev-0", "c1", "c2")
    [other] = await _bound_device(store, "dev-1", "d1")
    other_auth = {"method": "certificate", "sha256": other.sha256}
    last = await store.last_change()
    revoked = await store.revoke_certificates(reason="stolen", at=T0 + 5, device_id="dev-0")
    assert [c.serial for c in revoked] == ["c1", "c2"]
    assert revoked == [
        IssuedCertificate(**{**_fields(c), "revoked_at": T0 + 5, "revocation_reason": "stolen"})
        for c in (older, current)
    ]
    assert await store.get_certificate("c2") == revoked[1]
    assert await store.certificate_by_sha256(current.sha256) == revoked[1]
    dev0 = await store.get_device("dev-0")
    assert dev0 is not None
    assert dev0.auth == revoked_auth(["c1", "c2"])
    dev1 = await store.get_device("dev-1")
    assert dev1 is not None
    assert dev1.auth == other_auth
    # Credentials are not in the change feed (as set_auth's are not).
    assert await store.last_change() == last
    # Already revoked: left as it was, not returned again.
    assert await store.revoke_certificates(reason="again", at=T0 + 9, device_id="dev-0") == []
    assert await store.get_certificate("c1") == revoked[0]
    assert await store.revoke_certificates(reason="none", at=T0, device_id="dev-4") == []


async def test_revoked_certificates_come_in_serial_order(store: Store) -> None:
    # Recorded out of order, serials of different lengths: the answer is in the order of
    # the numbers, as listing is, whatever order the backend found them in.
    serials = ["100", "ff", "a", "fff0", "1"]
    await _bound_device(store, "dev-0", *serials)
    revoked = await store.revoke_certificates(reason="lost", at=T0, device_id="dev-0")
    assert [c.serial for c in revoked] == sorted(serials, key=lambda s: int(s, 16))
    dev0 = await store.get_device("dev-0")
    assert dev0 is not None
    assert dev0.auth == revoked_auth(serials)


async def test_revoking_one_serial_touches_only_devices_naming_it(store: Store) -> None:
    _older, current = await _bound_device(store, "dev-0", "e1", "e2")
    [named_upper] = await _bound_device(store, "dev-1", "f1")
    # dev-2 holds a bound certificate, but its auth names another one.
    await _bound_device(store, "dev-2", "b1")
    elsewhere = {"method": "certificate", "sha256": "ab" * 32}
    await store.set_auth("dev-2", elsewhere)
    await store.set_auth("dev-1", {"method": "certificate", "sha256": named_upper.sha256.upper()})
    # The certificate a device renewed is named as previous_sha256: revoking it revokes
    # the device's binding.
    [revoked] = await store.revoke_certificates(reason="superseded", at=T0 + 1, serial="e1")
    assert (revoked.serial, revoked.revocation_reason) == ("e1", "superseded")
    dev0 = await store.get_device("dev-0")
    assert dev0 is not None
    assert dev0.auth == revoked_auth(["e1"])
    current_now = await store.get_certificate("e2")
    assert current_now == current
    # The hex of an auth compares whatever its case.
    [revoked] = await store.revoke_certificates(reason="lost", at=T0 + 2, serial="f1")
    dev1 = await store.get_device("dev-1")
    assert dev1 is not None
    assert dev1.auth == revoked_auth(["f1"])
    await store.revoke_certificates(reason="lost", at=T0 + 3, serial="b1")
    dev2 = await store.get_device("dev-2")
    assert dev2 is not None
    assert dev2.auth == elsewhere
    # An unbound certificate changes no device; a serial and a device: that device's only.
    await store.record_certificate(certificate("d1"))
    [loose] = await store.revoke_certificates(reason="lost", at=T0 + 4, serial="d1")
    assert loose.device_id is None
    await store.record_certificate(certificate("d2", device_id="dev-3"))
    assert await store.revoke_certificates(reason="x", at=T0, device_id="dev-4", serial="d2") == []
    [d2] = await store.revoke_certificates(reason="x", at=T0, device_id="dev-3", serial="d2")
    assert d2.serial == "d2"
    with pytest.raises(ValueError, match="device_id or a serial"):
        await store.revoke_certificates(reason="everything", at=T0)


async def test_revocations_from_two_stores_revoke_each_certificate_once(
    shared: str, tmp_path: Path
) -> None:
    first, second = await _two_stores(shared, tmp_path)
    try:
        serials = [f"{i + 1:x}0" for i in range(12)]
        await _bound_device(first, "dev-0", *serials)
        got: list[str] = []

        async def revoke(s: Store, serial: str | None) -> None:
            done = await s.revoke_certificates(
                reason="race", at=T0, device_id=None if serial else "dev-0", serial=serial
            )
            got.extend(c.serial for c in done)

        async with trio.open_nursery() as nursery:
            for i, serial in enumerate(serials):
                nursery.start_soon(revoke, (first, second)[i % 2], serial)
                nursery.start_soon(revoke, (second, first)[i % 2], None)
        assert sorted(got) == sorted(serials)
        device = await second.get_device("dev-0")
        assert device is not None
        assert device.auth["method"] == "certificate"
        assert "sha256" not in device.auth
        assert set(device.auth["revoked"]) <= set(serials)
    finally:
        await first.aclose()
        await second.aclose()


_WAITING_ON_LOCK = (
    "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
)


@pytest.mark.parametrize("kind", ["postgresql"])
async def test_postgres_revocation_and_auth_commit_together(kind: str, tmp_path: Path) -> None:
    first, second = await _two_stores(kind, tmp_path)
    url = database_url(kind, tmp_path)
    assert url is not None
    try:
        await _bound_device(first, "dev-0", "c1")
        # Another node holds the device's row: the revocation has revoked the certificate
        # (uncommitted) and waits for the row. Once the row is free (the transaction ends
        # first, then the nursery waits), the certificate and the auth commit at once.
        async with (
            await pgwire.connect(url) as raw,
            trio.open_nursery() as nursery,
            raw.transaction(),
        ):
            await raw.execute("SELECT FROM devices WHERE id = 'dev-0' FOR UPDATE")
            nursery.start_soon(
                lambda: first.revoke_certificates(reason="x", at=T0, device_id="dev-0")
            )
            with trio.fail_after(10):
                while not await raw.fetchval(_WAITING_ON_LOCK):
                    await trio.sleep(0.005)
            waiting = await second.get_certificate("c1")
            assert waiting is not None
            assert waiting.revoked_at is None
        revoked = await second.get_certificate("c1")
        assert revoked is not None
        assert revoked.revoked_at == T0
        device = await second.get_device("dev-0")
        assert device is not None
        assert device.auth == revoked_auth(["c1"])
    finally:
        await first.aclose()
        await second.aclose()


# -- durability and upgrades --------------------------------------------------------------


async def test_everything_survives_a_restart(shared: str, tmp_path: Path) -> None:
    store = await open_backend(shared, tmp_path)
    await store.upsert_devices([Device("dev-0", "apple", "/acme")])
    await store.put_material("ca", b"\x00ca blob\xff")
    full = token("et_full", max_uses=4, platforms=("apple",), description="d")
    await store.put_token(full)
    await store.use_token("et_full", now=T0)
    await store.revoke_token("et_full", at=T0 + 1)
    issued = certificate("abc", token_id="et_full", renews="ab")
    await store.record_certificate(issued)
    await store.bind_certificate("abc", "dev-0")
    await store.record_certificate(certificate("abd"))
    await store.revoke_certificates(reason="lost", at=T0 + 2, serial="abd")
    await store.claim_once("scep", "n1", until=T0 + 60, now=T0)
    await store.aclose()
    store = await open_backend(shared, tmp_path)
    try:
        assert await store.get_material("ca") == b"\x00ca blob\xff"
        assert await store.get_token("et_full") == EnrollmentToken(
            **{**_fields(full), "uses": 1, "revoked_at": T0 + 1}
        )
        assert await store.get_certificate("abc") == IssuedCertificate(
            **{**_fields(issued), "device_id": "dev-0"}
        )
        lost = await store.get_certificate("abd")
        assert lost is not None
        assert (lost.revoked_at, lost.revocation_reason) == (T0 + 2, "lost")
        assert not await store.claim_once("scep", "n1", until=T0 + 60, now=T0 + 1)
    finally:
        await store.aclose()


async def test_sqlite_upgrade_from_version_5_adds_enrollment(tmp_path: Path) -> None:
    from mdmgate.storage.sqlite import MIGRATIONS  # noqa: PLC0415 - one backend's detail

    path = tmp_path / "v5.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:5]:  # the schema before enrollment
        db.executescript(script)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (5)")
    db.execute("INSERT INTO devices VALUES ('w1', 'windows', '/', NULL, NULL, '{}', '{}')")
    db.commit()
    db.close()
    store = await SQLiteStore.open(path)
    try:
        assert await store.get_device("w1") == Device("w1", "windows", "/")
        await store.record_certificate(certificate("5", platform="windows", device_id="w1"))
        assert [c.serial for c in await store.list_certificates(device_id="w1")] == ["5"]
        await store.put_token(token("et_after"))
        assert await store.use_token("et_after", now=T0) is not None
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    db.close()


async def test_postgres_upgrade_from_version_1_adds_enrollment(
    postgres_server: PostgresServer,
) -> None:
    from mdmgate.storage.postgres import PostgresStore  # noqa: PLC0415 - one backend's detail
    from mdmgate.storage.postgres_schema import MIGRATIONS  # noqa: PLC0415

    schema = f"v1_{secrets.token_hex(4)}"
    admin_url = postgres_server.dsn("mdmgate_test")
    url = postgres_server.dsn("mdmgate_test", options=f"-csearch_path={schema}")
    async with await pgwire.connect(admin_url) as admin:
        await admin.execute_script(f"CREATE SCHEMA {schema}")
        try:
            async with await pgwire.connect(url) as old:
                await old.execute_script(MIGRATIONS[0])
                await old.execute_script(
                    "CREATE TABLE schema_version (version integer NOT NULL);"
                    " INSERT INTO schema_version VALUES (1);"
                    " INSERT INTO devices (id, platform, org) VALUES ('m1', 'apple', '/');"
                )
            store = await PostgresStore.open(url, pool_size=1)
            try:
                assert await store.get_device("m1") == Device("m1", "apple", "/")
                await store.record_certificate(certificate("5", device_id="m1"))
                await _bound_device(store, "m1", "6")
                [revoked] = await store.revoke_certificates(reason="x", at=T0, serial="6")
                assert revoked.serial == "6"
                device = await store.get_device("m1")
                assert device is not None
                assert device.auth == revoked_auth(["6"])
            finally:
                await store.aclose()
            version = await admin.fetchval(f"SELECT version FROM {schema}.schema_version")
            assert version == len(MIGRATIONS)
        finally:
            await admin.execute_script(f"DROP SCHEMA {schema} CASCADE")
