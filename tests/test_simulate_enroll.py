"""`mdmgate simulate --enroll` end to end: a real `mdmgate serve` under TLS with its built-in
CA on (SQLite), and a mixed fleet that enrolls instead of being registered: Windows devices
through MS-MDE2 (discovery, policy, RequestSecurityToken, then OMA-DM over mutual TLS with
the certificate issued), Apple devices through the enrollment profile and SCEP (then
Authenticate and the command channel with that identity). The run makes one enrollment
token per org; afterwards the admin API shows every device enrolled where its token says,
with the certificate issued to it, and the ledger check of the commands queued for the fleet
is clean. A wrong token and an expired one are refused at enrollment: `enroll_*` errors and
exit status 1, and nothing issued. An enrolling run against a plain-HTTP target is refused
before it starts. And the simulated device's SCEP requester on its own, against the gateway's
SCEP module: what it sends is read, what is answered is checked as a careful device checks
it (a reply signed by another key, or answering another transaction, is not accepted)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AttributeOID

from mdmgate.enrollment import scep
from mdmgate.simulate import enroll_scep
from mdmgate.simulate.scenario import APPLE_PLATFORMS, build_profiles, parse_scenario
from tests.cluster import Pki
from tests.pki_helpers import certificate, common_name, rsa_key

TOKEN = "simulate-enroll-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# Not the simulator's default topic: the devices must take it from the profile.
TOPIC = "com.apple.mgmt.External.mdmgate-simulate-enroll"

GATEWAY_CONFIG = f"""\
[limits]
max_connections = 2000
max_connections_per_client = 2000
[apns]
topic = "{TOPIC}"
rate = 1000.0
[enrollment]
root_key = "rsa-2048"
"""

ORGS = ["/sim/east", "/sim/west"]

SCENARIO = f"""\
seed = 11
[fleet]
devices = 12
orgs = {json.dumps(ORGS)}
windows = 0.5
ios = 0.25
macos = 0.25
[run]
duration = 8.0
time_factor = 5760.0
ramp_up = 2.0
concurrency = 50
grace = 40.0
[workload]
install_per = 1
inventory_every = 2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def tls_gateway(root: Path, port: int, apns_port: int, *, enrollment: bool = True) -> Iterator[Pki]:
    """`mdmgate serve` under TLS with enrollment on (unless ``enrollment`` is false: no CA
    passphrase), as docs/simulate.md shows it: no `--client-ca` (the gateway trusts its own
    CA's client certificates by itself)."""
    pki = Pki.create(root / "pki")
    config = root / "gateway.toml"
    config.write_text(GATEWAY_CONFIG)
    env = {
        **os.environ,
        "MDMGATE_API_TOKEN": TOKEN,
        "MDMGATE_CA_PASSPHRASE": "simulated fleet enrollment passphrase" if enrollment else "",
    }
    argv = [sys.executable, "-m", "mdmgate", "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--db", f"sqlite:///{root / 'gateway.db'}", "--config", str(config)]
    argv += ["--apns-url", f"http://127.0.0.1:{apns_port}"]
    argv += ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    # The log goes to a file: a pipe nobody reads would stall a busy server once full.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if not line.startswith("mdmgate listening on "):
                proc.wait(timeout=30)
                log.seek(0)
                raise AssertionError(line + log.read())
            yield pki
        except BaseException:
            log.seek(0)
            print(log.read()[-20000:])
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def admin(pki: Pki, port: int) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(pki.ca_file))
    return httpx.Client(
        base_url=f"https://127.0.0.1:{port}", headers=AUTH, verify=verify, timeout=30
    )


def simulate(
    port: int, apns_port: int, pki: Pki, scenario: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mdmgate", "simulate"]
    argv += ["--target", f"https://127.0.0.1:{port}", "--cacert", str(pki.ca_file)]
    argv += ["--scenario", str(scenario), "--apns-listen", f"127.0.0.1:{apns_port}"]
    argv += ["--token", TOKEN, "--json", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def check_enrolled(api: httpx.Client, profiles: list[Any], made: dict[str, str]) -> None:
    """What the admin API shows of an enrolled fleet: one token per org, used once per
    device of the org; each device where its token says, with the certificate issued to
    it, and the install queued for it answered."""
    tokens: dict[str, dict[str, Any]] = {}
    for org in ORGS:
        listed = api.get("/api/v1/enrollment/tokens", params={"org": org}).json()["tokens"]
        assert len(listed) == 1, listed
        in_org = sum(1 for p in profiles if p.org == org)
        assert listed[0]["max_uses"] == in_org
        assert listed[0]["uses"] == in_org
        assert made[org] == listed[0]["id"]
        tokens[org] = listed[0]
    for profile in profiles:
        device = api.get(f"/api/v1/devices/{profile.id}")
        assert device.status_code == 200, (profile.id, device.text)
        shown = device.json()
        assert shown["platform"] == profile.platform
        assert shown["org"] == profile.org
        assert shown["auth_configured"] is True
        if profile.platform in APPLE_PLATFORMS:
            # Enrolled with the push topic its profile named, not the simulator's default.
            assert shown["facts"]["apns"]["topic"] == TOPIC, shown["facts"]
            assert shown["facts"]["apple_enrollment"]["enrolled"] is True
        found = api.get("/api/v1/enrollment/certificates", params={"device_id": profile.id})
        certs = found.json()["certificates"]
        assert len(certs) == 1, (profile.id, certs)
        cert = certs[0]
        assert cert["platform"] == ("windows" if profile.platform == "windows" else "apple")
        assert cert["org"] == profile.org
        assert cert["token_id"] == tokens[profile.org]["id"]
        assert cert["revoked_at"] is None
        deliveries = api.get(f"/api/v1/devices/{profile.id}/deliveries").json()
        states = [d["state"] for d in deliveries["deliveries"]]
        assert "acknowledged" in states, (profile.id, deliveries)


def test_an_enrolling_fleet_ends_enrolled_and_checks_clean(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    profiles = list(build_profiles(parse_scenario(tomllib.loads(SCENARIO))))
    windows = [p for p in profiles if p.platform == "windows"]
    apple = [p for p in profiles if p.platform in APPLE_PLATFORMS]
    assert len(windows) >= 4, [p.platform for p in profiles]
    assert len(apple) >= 4, [p.platform for p in profiles]
    port, apns_port = free_port(), free_port()
    with tls_gateway(tmp_path, port, apns_port) as pki, admin(pki, port) as api:
        report = tmp_path / "report"
        done = simulate(port, apns_port, pki, scenario, "--enroll", "--report", str(report))
        assert done.returncode == 0, done.stdout + done.stderr
        outcome = json.loads(done.stdout)

        # Every device enrolled, once, in its enrollment phase; none was registered.
        meta = outcome["meta"]
        assert meta["registered"] is False
        assert meta["enrollment"]["enrolled"] == 12, meta
        assert meta["enrollment"]["not_enrolled"] == 0
        enroll = outcome["totals"]["enroll"]
        assert enroll["all"]["enrolled"] == 12, enroll
        assert enroll["all"]["failed"] == 0, enroll
        assert enroll["all"]["latency"]["p50"] > 0
        assert set(enroll["platforms"]) == {p.platform for p in profiles}

        check_enrolled(api, profiles, meta["enrollment"]["tokens"])

    ledger = outcome["ledger"]
    assert ledger["passed"] is True, ledger
    assert ledger["devices_checked"] == 12
    assert ledger["counts"]["ok"] >= 12
    totals = outcome["totals"]["platforms"]
    # Several check-ins each after enrolling, on both platforms, without session errors.
    assert totals["windows"]["sessions"] >= 2 * len(windows)
    assert sum(totals[p]["sessions"] for p in APPLE_PLATFORMS if p in totals) >= 2 * len(apple)
    assert outcome["totals"]["all"]["errors"] == {}
    # The gateway pushed the installs to the Apple devices, through the stand-in.
    assert meta["pushes"] > 0
    # The report has the enrollment phase: in its totals, its timeline and its page.
    written = json.loads((report / "report.json").read_text())
    assert written["totals"]["enroll"]["all"]["enrolled"] == 12
    assert sum(b["enrollments"] for b in written["timeline"]) == 12
    page = (report / "report.html").read_text()
    assert 'id="enrollment-table"' in page
    assert "12 devices enrolled" in page


def _wait_expired(api: httpx.Client, token_id: str) -> None:
    deadline = time.monotonic() + 30
    while api.get(f"/api/v1/enrollment/tokens/{token_id}").json()["state"] != "expired":
        assert time.monotonic() < deadline, "the token did not expire"


@pytest.mark.parametrize("which", ["wrong", "expired"])
def test_a_refused_token_fails_the_run_with_enroll_errors(tmp_path: Path, which: str) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        SCENARIO.replace("devices = 12", "devices = 6").replace("duration = 8.0", "duration = 2.0")
    )
    port, apns_port = free_port(), free_port()
    with tls_gateway(tmp_path, port, apns_port) as pki, admin(pki, port) as api:
        if which == "wrong":
            value = "et_0123456789abcdef.not-the-secret-of-any-token"
            expected = "enroll_token_invalid"
        else:
            made = api.post(
                "/api/v1/enrollment/tokens", json={"org": "/sim", "expires_in_hours": 0.0003}
            )
            assert made.status_code == 201, made.text
            _wait_expired(api, made.json()["token"]["id"])
            value = made.json()["value"]
            expected = "enroll_token_refused"
        done = simulate(port, apns_port, pki, scenario, "--enrollment-token", value)
        assert done.returncode == 1, done.stdout + done.stderr
        outcome = json.loads(done.stdout)
        enroll = outcome["totals"]["enroll"]
        # Each device tried once and gave up: the token would be refused again.
        assert enroll["all"]["sessions"] == 6
        assert enroll["all"]["enrolled"] == 0
        assert enroll["all"]["errors"] == {expected: 6}, enroll
        for platform, record in enroll["platforms"].items():
            assert set(record["errors"]) == {expected}, (platform, record)
        # No check-in was attempted by a device that did not enroll.
        assert outcome["totals"]["all"]["sessions"] == 0
        assert outcome["meta"]["enrollment"]["not_enrolled"] == 6
        assert any("enrollment of" in note for note in outcome["notes"]), outcome["notes"]
        # Nothing was issued and no device exists.
        issued = api.get("/api/v1/enrollment/certificates").json()["certificates"]
        assert issued == []
        assert api.get("/api/v1/devices").json()["devices"] == []


def test_a_gateway_without_enrollment_is_refused_before_the_run(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    port, apns_port = free_port(), free_port()
    with tls_gateway(tmp_path, port, apns_port, enrollment=False) as pki:
        done = simulate(port, apns_port, pki, scenario, "--enroll")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the gateway cannot enroll devices" in done.stderr
    assert "MDMGATE_CA_PASSPHRASE" in done.stderr
    assert "Traceback" not in done.stderr


def test_enrolling_needs_an_https_target() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mdmgate", "simulate", "--target", "http://127.0.0.1:9"),
            *("--enroll", "--token", TOKEN, "--no-apns"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "enrollment needs an https:// target" in done.stderr


# -- the SCEP requester on its own ----------------------------------------------------------


def _scep_exchange() -> tuple[Any, ...]:
    """A CA, a device key and its PKCSReq, and the request as the gateway's SCEP module
    reads it."""
    ca_key = rsa_key()
    ca = certificate("simulated SCEP CA", ca_key, ca=True, days=30)
    key = rsa_key()
    subject = common_name("mdmgate device")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"one-time")
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    request = enroll_scep.pkcs_req(key=key, csr_der=csr, to=ca, subject=subject)
    read = scep.parse_pki_message(request.body, ca_cert=ca, ca_key=ca_key)
    return ca, ca_key, key, request, read


def test_the_scep_requester_reads_an_issued_certificate_and_a_failure() -> None:
    ca, ca_key, key, request, read = _scep_exchange()
    assert read.challenge == "one-time"
    assert read.transaction_id == request.transaction_id
    assert read.content_encryption == "aes128_cbc"
    issued = certificate("mdmgate device", key.public_key(), issuer=(ca.subject, ca_key))
    reply = scep.cert_rep(read, ca_cert=ca, ca_key=ca_key, issued=issued)
    answer = enroll_scep.read_cert_rep(reply, request=request, key=key, trusted=[ca])
    assert answer.status == enroll_scep.SUCCESS
    assert answer.certificate == issued
    refused = scep.cert_rep(
        read,
        ca_cert=ca,
        ca_key=ca_key,
        fail_info=scep.FailInfo.BAD_REQUEST,
        fail_text="the SCEP challenge was used already",
    )
    answer = enroll_scep.read_cert_rep(refused, request=request, key=key, trusted=[ca])
    assert answer.status == enroll_scep.FAILURE
    assert answer.fail_info == "badRequest"
    assert answer.fail_text == "the SCEP challenge was used already"


def test_the_scep_requester_refuses_a_reply_it_cannot_trust() -> None:
    ca, ca_key, key, request, read = _scep_exchange()
    issued = certificate("mdmgate device", key.public_key(), issuer=(ca.subject, ca_key))
    # Signed by another key under the CA's name: the signature does not verify.
    forged = scep.cert_rep(read, ca_cert=ca, ca_key=rsa_key(), issued=issued)
    with pytest.raises(enroll_scep.ScepReplyError, match="signature does not verify"):
        enroll_scep.read_cert_rep(forged, request=request, key=key, trusted=[ca])
    # A genuine reply, but to another request (its transaction and nonce are not these).
    _, _, _, other, _ = _scep_exchange()
    reply = scep.cert_rep(read, ca_cert=ca, ca_key=ca_key, issued=issued)
    with pytest.raises(enroll_scep.ScepReplyError, match="another transaction"):
        enroll_scep.read_cert_rep(reply, request=other, key=key, trusted=[ca])
    with pytest.raises(enroll_scep.ScepReplyError, match="not a readable CMS message"):
        enroll_scep.read_cert_rep(b"not CMS", request=request, key=key, trusted=[ca])
