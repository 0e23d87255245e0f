"""The cost of verifying one ``Mdm-Signature``: the CMS detached signature an Apple device
sends with every check-in and command report when the gateway has no mTLS in front.

    python benches/bench_cms_verify.py [--number 2000] [--repeat 5]
    python benches/bench_cms_verify.py --target mdmgate.apple.service:verify_detached_cms
    python benches/bench_cms_verify.py --quick      # smoke run, well under a second

``--target module:function`` names the verifier: any ``f(signature, body) -> signer DER``.
The default is :func:`mdmgate.enrollment.cms.verify_detached`; the hand-written DER parser
it replaced was ``mdmgate.apple.service:verify_detached_cms``.

The signatures are built with ``cryptography`` as a device builds them: a device identity
certificate issued by a CA, the CA's certificate carried too (for the RSA signers it is
the first certificate), detached, over a command report (an Acknowledged
``DeviceInformation`` answer of about 1.1 KB), SHA-256. Three signers:

* ``rsa-2048 attrs``: RSA-2048 with signed attributes (contentType, signingTime,
  messageDigest, S/MIME capabilities): what devices send;
* ``rsa-2048 bare``: RSA-2048 without signed attributes (the signature is over the body);
* ``p-256 attrs``: ECDSA P-256 with signed attributes.

Before timing, each case is checked: the verifier must return the device certificate's DER,
and must refuse the same signature over a changed body (exit status 1 otherwise). Each time
is the best of ``--repeat`` rounds of ``--number`` verifies, divided by ``--number``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdmgate import plist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import best_time

Verifier = Callable[[bytes, bytes], bytes]
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(
    subject: str, key: SigningKey, issuer: str, issuer_key: SigningKey, *, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def report_body() -> bytes:
    """An Acknowledged DeviceInformation report, as a device PUTs it to /connect."""
    answers = {
        "DeviceName": "Ada's iPhone",
        "OSVersion": "17.4.1",
        "BuildVersion": "21E236",
        "ModelName": "iPhone",
        "Model": "MQ6L2",
        "ProductName": "iPhone15,2",
        "SerialNumber": "F2LXQ0ABCDEF",
        "DeviceCapacity": 238.0,
        "AvailableDeviceCapacity": 171.5,
        "BatteryLevel": 0.83,
        "WiFiMAC": "a4:83:e7:12:34:56",
        "BluetoothMAC": "a4:83:e7:12:34:57",
        "IsSupervised": True,
        "IsActivationLockEnabled": False,
    }
    return plist.dumps(
        {
            "UDID": "00008110-000A1B2C3D4E5F60",
            "Status": "Acknowledged",
            "CommandUUID": "6f1c0b0e-8f4e-4c1a-9d62-4b9f2f3e7a10",
            "QueryResponses": answers,
        }
    )


def cases() -> list[tuple[str, bytes, bytes, bytes]]:
    """(case name, signature DER, signed body, the signer's certificate DER)."""
    body = report_body()
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = certificate("bench CA", ca_key, "bench CA", ca_key, ca=True)
    built = []
    signers: list[tuple[str, SigningKey, bool]] = [
        ("rsa-2048 attrs", rsa.generate_private_key(public_exponent=65537, key_size=2048), True),
        ("rsa-2048 bare", rsa.generate_private_key(public_exponent=65537, key_size=2048), False),
        ("p-256 attrs", ec.generate_private_key(ec.SECP256R1()), True),
    ]
    for case, key, attributes in signers:
        device = certificate(f"device {case}", key, "bench CA", ca_key, ca=False)
        # Binary: the body is signed as it is (no S/MIME line-ending canonicalisation).
        options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
        if not attributes:
            options.append(pkcs7.PKCS7Options.NoAttributes)
        # The CA after the signer: cryptography drops certificates added before a signer.
        # DER sorts the certificates: the RSA device's comes after the CA's (a verifier
        # that tries them in order tries the CA first), the shorter P-256 device's before.
        signature = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(body)
            .add_signer(device, key, hashes.SHA256())
            .add_certificate(ca)
            .sign(serialization.Encoding.DER, options)
        )
        built.append((case, signature, body, device.public_bytes(serialization.Encoding.DER)))
    return built


def load(target: str) -> Verifier:
    module_name, _, function = target.partition(":")
    if not function:
        sys.exit(f"--target {target!r} is not module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sys.exit(f"--target {target!r}: {exc}")
    verifier = getattr(module, function, None)
    if not callable(verifier):
        sys.exit(f"--target {target!r}: no function {function!r} in {module_name}")
    return verifier  # type: ignore[no-any-return]


def check(verify: Verifier, case: str, signature: bytes, body: bytes, signer: bytes) -> None:
    carried = [
        c.public_bytes(serialization.Encoding.DER)
        for c in pkcs7.load_der_pkcs7_certificates(signature)
    ]
    if len(carried) != 2 or signer not in carried:
        sys.exit(f"verification failed: {case}: the device and CA certificates are not carried")
    if verify(signature, body) != signer:
        sys.exit(f"verification failed: {case}: the signer found is not the device certificate")
    try:
        verify(signature, body + b" ")
    except Exception:  # each verifier has its own refusal type; any refusal is right here
        return
    sys.exit(f"verification failed: {case}: a changed body was accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="mdmgate.enrollment.cms:verify_detached")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 verifies, 1 round")
    args = parser.parse_args()
    number, repeat = (50, 1) if args.quick else (args.number, args.repeat)
    verify = load(args.target)
    built = cases()
    for case, signature, body, signer in built:
        check(verify, case, signature, body, signer)
    print(f"{args.target} on {platform.python_implementation()} {platform.python_version()}")
    print("checked: each case returns the device certificate and refuses a changed body")
    print(f"body {len(built[0][2])} bytes; best of {repeat} x {number} verifies")
    for case, signature, body, _ in built:
        seconds = best_time(lambda s=signature, b=body: verify(s, b), number, repeat)
        print(f"{case:16} {len(signature):5} B signature  {seconds * 1e6:8.1f} µs/verify")


if __name__ == "__main__":
    main()
