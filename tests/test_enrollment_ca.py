"""The built-in certificate authority: its root, its encrypted material, an enterprise's own
CA from files, the CSR checks, the device certificates it issues, the CMS it signs, and the
CA kept in the store (first writer wins)."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate.enrollment import ca as ca_module
from mdmgate.enrollment import cms
from mdmgate.enrollment.ca import (
    CaError,
    CaPolicy,
    CertificateAuthority,
    CsrRefused,
    fingerprint,
    load_or_create,
    serial_hex,
)
from mdmgate.storage.memory import MemoryStore
from tests.pki_helpers import certificate, common_name, csr_der, rsa_key

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
#: 2048-bit keys keep the tests quick; the default (3072) is tested once.
FAST = CaPolicy(root_key="rsa-2048")
PASSPHRASE = b"correct horse battery staple"
#: One CA for the property test (made once: hypothesis calls the test many times).
PROPERTY_CA = CertificateAuthority.create("property CA", FAST, now=NOW)


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create("mdmgate test CA", FAST, now=NOW)


def extension(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


# -- policy


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"root_key": "ec-p256"}, "root_key"),
        ({"root_key": "rsa-1024"}, "root_key"),
        ({"root_validity_days": 0}, "root_validity_days"),
        ({"device_validity_days": 0}, "device_validity_days"),
        ({"device_validity_days": 4000}, "device_validity_days"),
        ({"min_rsa_bits": 1024}, "min_rsa_bits"),
    ],
)
def test_policy_check_names_the_bad_value(changes: dict[str, object], named: str) -> None:
    policy = CaPolicy(**changes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=named):
        policy.check()
    with pytest.raises(ValueError, match=named):
        CertificateAuthority.create("x", policy, now=NOW)


def test_default_policy_is_valid_and_explained() -> None:
    policy = CaPolicy()
    policy.check()
    assert (policy.root_key, policy.root_validity_days, policy.device_validity_days) == (
        "rsa-3072",
        3650,
        365,
    )
    assert policy.min_rsa_bits == 2048
    assert CaPolicy.__doc__ is not None
    assert "SCEP" in CaPolicy.__doc__


# -- the root


def test_created_root_is_a_self_signed_ca_for_scep(authority: CertificateAuthority) -> None:
    cert = authority.certificate
    assert cert.subject == cert.issuer == common_name("mdmgate test CA")
    cert.verify_directly_issued_by(cert)
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    # SCEP: the CA signs its CertRep and devices encrypt their request to it.
    assert usage.value.digital_signature
    assert usage.value.key_encipherment
    ski = extension(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    key = authority.rsa_key()
    assert key.key_size == 2048
    assert authority.private_key is key
    assert authority.der == cert.public_bytes(serialization.Encoding.DER)
    assert authority.pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificate(authority.pem) == cert


def test_default_root_key_is_rsa_3072() -> None:
    created = CertificateAuthority.create("default CA", CaPolicy(), now=NOW)
    assert created.rsa_key().key_size == 3072


def test_create_refuses_a_bad_name_and_a_naive_time() -> None:
    with pytest.raises(ValueError, match="common name"):
        CertificateAuthority.create("", FAST, now=NOW)
    with pytest.raises(ValueError, match="common name"):
        CertificateAuthority.create("x" * 65, FAST, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        CertificateAuthority.create("x", FAST, now=dt.datetime(2026, 1, 1))


# -- material


def test_dump_and_load_round_trip(authority: CertificateAuthority) -> None:
    blob = authority.dump(PASSPHRASE)
    assert blob.count(b"-----BEGIN CERTIFICATE-----") == 1
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in blob
    assert b"-----BEGIN PRIVATE KEY-----" not in blob  # never in the clear
    loaded = CertificateAuthority.load(blob, PASSPHRASE, FAST)
    assert loaded.certificate == authority.certificate
    assert loaded.rsa_key().private_numbers() == authority.rsa_key().private_numbers()
    with pytest.raises(ValueError, match="passphrase"):
        authority.dump(b"")


def test_load_refusals_say_which(authority: CertificateAuthority) -> None:
    blob = authority.dump(PASSPHRASE)
    with pytest.raises(CaError, match="passphrase"):
        CertificateAuthority.load(blob, b"wrong", FAST)
    with pytest.raises(CaError, match="no private key"):
        CertificateAuthority.load(blob.split(b"-----BEGIN ENCRYPTED")[0], PASSPHRASE, FAST)
    key_only = blob[blob.index(b"-----BEGIN ENCRYPTED") :]
    with pytest.raises(CaError, match="no certificate"):
        CertificateAuthority.load(key_only, PASSPHRASE, FAST)
    with pytest.raises(CaError):
        CertificateAuthority.load(b"\x00garbage", PASSPHRASE, FAST)
    # The key of another CA under this certificate.
    other = CertificateAuthority.create("other CA", FAST, now=NOW).dump(PASSPHRASE)
    mixed = authority.pem + other[other.index(b"-----BEGIN ENCRYPTED") :]
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.load(mixed, PASSPHRASE, FAST)


def enterprise_ca(
    tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, ca: bool = True
) -> tuple[Path, x509.Certificate]:
    # Its root is elsewhere: the issuer's name is the root's, the signature its own key's.
    root = (common_name("Example Corp Root"), key)
    cert = certificate("Example Corp Issuing CA", key, issuer=root, now=NOW, days=1000, ca=ca)
    path = tmp_path / "issuing.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert


def key_file(
    tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, passphrase: bytes | None
) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    path = tmp_path / "issuing.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
        )
    )
    return path


def test_from_files_loads_an_enterprise_ca(tmp_path: Path) -> None:
    key = rsa_key()
    cert_path, cert = enterprise_ca(tmp_path, key)
    loaded = CertificateAuthority.from_files(
        cert_path, key_file(tmp_path, key, PASSPHRASE), PASSPHRASE, FAST
    )
    assert loaded.certificate == cert
    assert loaded.rsa_key().key_size == 2048
    plain = CertificateAuthority.from_files(cert_path, key_file(tmp_path, key, None), None, FAST)
    assert plain.certificate == cert
    # DER certificate files work too.
    der_path = tmp_path / "issuing.der"
    der_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert (
        CertificateAuthority.from_files(
            der_path, key_file(tmp_path, key, None), None, FAST
        ).certificate
        == cert
    )


def test_from_files_refusals_say_which(tmp_path: Path) -> None:
    key = rsa_key()
    cert_path, _ = enterprise_ca(tmp_path, key)
    encrypted = key_file(tmp_path, key, PASSPHRASE)
    with pytest.raises(CaError, match="passphrase"):
        CertificateAuthority.from_files(cert_path, encrypted, b"wrong", FAST)
    with pytest.raises(CaError, match="passphrase"):
        CertificateAuthority.from_files(cert_path, encrypted, None, FAST)
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(CaError, match=r"nowhere\.pem"):
        CertificateAuthority.from_files(missing, encrypted, PASSPHRASE, FAST)
    with pytest.raises(CaError, match=r"nowhere\.pem"):
        CertificateAuthority.from_files(cert_path, missing, PASSPHRASE, FAST)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    with pytest.raises(CaError, match=r"garbage\.pem"):
        CertificateAuthority.from_files(garbage, encrypted, PASSPHRASE, FAST)
    _, good = enterprise_ca(tmp_path, key)
    cert_der = good.public_bytes(serialization.Encoding.DER)
    at = cert_der.index(b"\xa0\x03\x02\x01\x02")  # X.509 v3
    odd = tmp_path / "odd-version.der"
    odd.write_bytes(cert_der[: at + 4] + b"\x07" + cert_der[at + 5 :])
    with pytest.raises(CaError, match=r"odd-version\.der"):
        CertificateAuthority.from_files(odd, encrypted, PASSPHRASE, FAST)
    leaf_path, _ = enterprise_ca(tmp_path, key, ca=False)
    with pytest.raises(CaError, match="not a CA"):
        CertificateAuthority.from_files(leaf_path, encrypted, PASSPHRASE, FAST)
    other_key = key_file(tmp_path, rsa_key(), None)
    ca_path, _ = enterprise_ca(tmp_path, key)
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.from_files(ca_path, other_key, None, FAST)


def test_an_ec_ca_signs_but_has_no_rsa_key_for_scep(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert_path, _ = enterprise_ca(tmp_path, key)
    loaded = CertificateAuthority.from_files(cert_path, key_file(tmp_path, key, None), None, FAST)
    assert isinstance(loaded.private_key, ec.EllipticCurvePrivateKey)
    with pytest.raises(CaError, match="the CA key is not RSA: SCEP needs an RSA CA"):
        loaded.rsa_key()
    issued = loaded.issue(loaded.check_csr(csr_der(rsa_key(), "device")), common_name="d", now=NOW)
    issued.verify_directly_issued_by(loaded.certificate)
    assert isinstance(issued.signature_hash_algorithm, hashes.SHA384)


# -- CSRs


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: rsa_key(2048), id="rsa-2048"),
        pytest.param(lambda: rsa_key(3072), id="rsa-3072"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="p-256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p-384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="p-521"),
    ],
)
def test_check_csr_accepts_strong_keys_in_der_and_pem(
    authority: CertificateAuthority, key: object
) -> None:
    der = csr_der(key(), "device")  # type: ignore[operator]
    checked = authority.check_csr(der)
    assert checked.public_bytes(serialization.Encoding.DER) == der
    pem = checked.public_bytes(serialization.Encoding.PEM)
    assert authority.check_csr(pem).public_bytes(serialization.Encoding.DER) == der


def test_check_csr_refusals_name_why(authority: CertificateAuthority) -> None:
    with pytest.raises(CsrRefused, match="RSA key of 1024 bits; at least 2048"):
        authority.check_csr(csr_der(rsa_key(1024), "device"))
    strict = CertificateAuthority.load(
        authority.dump(PASSPHRASE), PASSPHRASE, CaPolicy(root_key="rsa-2048", min_rsa_bits=3072)
    )
    with pytest.raises(CsrRefused, match="RSA key of 2048 bits; at least 3072"):
        strict.check_csr(csr_der(rsa_key(2048), "device"))
    with pytest.raises(CsrRefused, match="not a PKCS #10 request"):
        authority.check_csr(b"\x30\x03\x02\x01\x01")
    with pytest.raises(CsrRefused, match="not a PKCS #10 request"):
        authority.check_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    with pytest.raises(CsrRefused, match="unsupported key type"):
        authority.check_csr(csr_der(ec.generate_private_key(ec.SECP256K1()), "device"))
    request = x509.CertificateSigningRequestBuilder().subject_name(common_name("d"))
    signed = request.sign(ed25519.Ed25519PrivateKey.generate(), None)
    with pytest.raises(CsrRefused, match="unsupported key type Ed25519"):
        authority.check_csr(signed.public_bytes(serialization.Encoding.DER))
    der = csr_der(rsa_key(), "device")
    at = der.index(b"\x02\x01\x00")  # the request's version, 0
    with pytest.raises(CsrRefused, match="not a PKCS #10 request"):
        authority.check_csr(der[: at + 2] + b"\x07" + der[at + 3 :])
    # A CSR whose signature was made over other bytes (the subject changed afterwards).
    good = bytearray(csr_der(rsa_key(), "device-aaaa"))
    at = bytes(good).index(b"device-aaaa")
    good[at : at + 11] = b"device-bbbb"
    with pytest.raises(CsrRefused, match="signature does not verify"):
        authority.check_csr(bytes(good))
    assert issubclass(CsrRefused, ValueError)


# -- issuing


def test_issue_a_device_certificate(authority: CertificateAuthority) -> None:
    key = rsa_key()
    csr = authority.check_csr(csr_der(key, "what the device asked for"))
    cert = authority.issue(
        csr, common_name="UDID-1", now=NOW, organization="Acme", organizational_unit="/acme"
    )
    cert.verify_directly_issued_by(authority.certificate)
    assert cert.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "UDID-1"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "/acme"),
        ]
    )
    assert cert.issuer == authority.certificate.subject
    assert cert.public_key() == key.public_key()
    assert cert.serial_number > 0
    assert extension(cert, x509.BasicConstraints).value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    usage = extension(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    eku = extension(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert extension(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    aki = extension(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = extension(authority.certificate, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    # Two issues from one CSR: two serials.
    again = authority.issue(csr, common_name="UDID-1", now=NOW)
    assert again.serial_number != cert.serial_number
    assert again.subject == common_name("UDID-1")
    # The device's key signs with it: the private key matches what was certified.
    signature = key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    cert.public_key().verify(signature, b"x", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]


def test_issue_to_an_ec_key_follows_rfc_5480(authority: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority.issue(authority.check_csr(csr_der(key, "device")), common_name="mac", now=NOW)
    usage = extension(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    # An EC key cannot encipher a key: only digitalSignature is asserted for it.
    assert usage.digital_signature
    assert not usage.key_encipherment
    assert cert.public_key() == key.public_key()


def test_issue_with_serial_validity_and_the_ca_expiry(authority: CertificateAuthority) -> None:
    csr = authority.check_csr(csr_der(rsa_key(), "device"))
    cert = authority.issue(csr, common_name="d", now=NOW, validity_days=30, serial=0xABC0)
    assert cert.serial_number == 0xABC0
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)
    # Never past the CA's own end.
    late = authority.certificate.not_valid_after_utc - dt.timedelta(days=10)
    capped = authority.issue(csr, common_name="d", now=late)
    assert capped.not_valid_after_utc == authority.certificate.not_valid_after_utc
    with pytest.raises(CaError, match="expired"):
        authority.issue(csr, common_name="d", now=authority.certificate.not_valid_after_utc)
    with pytest.raises(ValueError, match="validity_days"):
        authority.issue(csr, common_name="d", now=NOW, validity_days=0)
    with pytest.raises(ValueError, match="serial"):
        authority.issue(csr, common_name="d", now=NOW, serial=0)
    with pytest.raises(ValueError, match="serial"):
        authority.issue(csr, common_name="d", now=NOW, serial=1 << 160)
    with pytest.raises(ValueError, match="common name"):
        authority.issue(csr, common_name="", now=NOW)
    with pytest.raises(ValueError, match="organization"):
        authority.issue(csr, common_name="d", now=NOW, organization="")


def test_issue_checks_a_csr_it_did_not_check(authority: CertificateAuthority) -> None:
    weak = x509.load_der_x509_csr(csr_der(rsa_key(1024), "device"))
    with pytest.raises(CsrRefused, match="1024"):
        authority.issue(weak, common_name="d", now=NOW)


def test_serial_hex_and_fingerprint() -> None:
    assert serial_hex(0x00ABC) == "abc"
    assert serial_hex(1) == "1"
    assert serial_hex((1 << 127) + 15) == "8000000000000000000000000000000f"
    with pytest.raises(ValueError, match="serial"):
        serial_hex(0)
    assert fingerprint(b"abc") == hashlib.sha256(b"abc").hexdigest()


# -- signing (a .mobileconfig)


def test_sign_wraps_content_openssl_verifies(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    content = b"<?xml version='1.0'?><plist><dict/></plist>"
    signed = authority.sign(content)
    (tmp_path / "signed.der").write_bytes(signed)
    (tmp_path / "ca.pem").write_bytes(authority.pem)
    # An independent implementation: the CA as the trust anchor, the content recovered.
    result = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "signed.der"),
            "-CAfile",
            str(tmp_path / "ca.pem"),
            "-purpose",
            "any",
            "-binary",
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == content
    assert b"Verification successful" in result.stderr
    certs = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(tmp_path / "signed.der"), "-print_certs"],
        capture_output=True,
        check=True,
    ).stdout
    assert b"mdmgate test CA" in certs


def test_sign_attached_carries_the_chain(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuing_path, issuing = enterprise_ca(tmp_path, key)
    root = CertificateAuthority.create("chain root", FAST, now=NOW)
    signed = cms.sign_attached(b"payload\r\n\n", issuing, key, chain=[root.certificate])
    carried = pkcs7.load_der_pkcs7_certificates(signed)
    assert carried in ([issuing, root.certificate], [root.certificate, issuing])
    (tmp_path / "signed.der").write_bytes(signed)
    result = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-noverify",
            "-inform",
            "DER",
            "-binary",
            "-in",
            str(tmp_path / "signed.der"),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"payload\r\n\n"  # byte for byte: no line-ending conversion
    assert issuing_path.exists()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_check_csr_arbitrary_bytes_only_refuse(data: bytes) -> None:
    with pytest.raises(CsrRefused):
        PROPERTY_CA.check_csr(data)


# -- kept in the store


async def test_load_or_create_keeps_one_ca_in_the_store() -> None:
    store = MemoryStore()
    first = await load_or_create(
        store, passphrase=PASSPHRASE, policy=FAST, common_name="stored CA", now=NOW
    )
    blob = await store.get_material("ca")
    assert blob is not None
    assert CertificateAuthority.load(blob, PASSPHRASE, FAST).certificate == first.certificate
    again = await load_or_create(
        store, passphrase=PASSPHRASE, policy=FAST, common_name="another name", now=NOW
    )
    assert again.certificate == first.certificate
    with pytest.raises(CaError, match="ca_passphrase"):
        await load_or_create(store, passphrase=b"wrong", policy=FAST, common_name="x", now=NOW)


async def test_load_or_create_first_writer_wins() -> None:
    store = MemoryStore()
    found: list[CertificateAuthority] = []
    entered = 0
    both_in = trio.Event()
    real_get = store.get_material

    async def get_material(name: str) -> bytes | None:
        # Both callers read "no CA" before either writes: each creates one.
        nonlocal entered
        value = await real_get(name)
        entered += 1
        if entered == 2:
            both_in.set()
        await both_in.wait()
        return value

    store.get_material = get_material  # type: ignore[method-assign]

    async def start() -> None:
        found.append(
            await load_or_create(
                store, passphrase=PASSPHRASE, policy=FAST, common_name="race", now=NOW
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        nursery.start_soon(start)
    assert len(found) == 2
    assert found[0].certificate == found[1].certificate
    stored = await real_get("ca")
    assert stored is not None
    assert CertificateAuthority.load(stored, PASSPHRASE, FAST).certificate == found[0].certificate


def test_module_exports() -> None:
    assert set(ca_module.__all__) >= {
        "CaError",
        "CaPolicy",
        "CertificateAuthority",
        "CsrRefused",
        "fingerprint",
        "load_or_create",
        "serial_hex",
    }
