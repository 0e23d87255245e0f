"""`mdmgate simulate` end to end, run as users run it (`python -m mdmgate simulate`): a mixed
fleet against a real `mdmgate serve` process (SQLite), the ledger checked against its admin
API; the same with the gateway SIGKILLed and restarted midway; devices known by their TLS
client certificates; bad input refused with exit status 2; the HTTP client's bounds; the
statistics' time series."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mdmgate import cli
from mdmgate.simulate.stats import Bucket, Stats
from mdmgate.simulate.transport import HttpClient, TransportError, parse_target
from tests.cluster import Pki

TOKEN = "simulate-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOPIC = "com.apple.mgmt.External.mdmgate-simulate"

GATEWAY_CONFIG = f"""\
[limits]
max_connections = 4000
max_connections_per_client = 4000
[apns]
topic = "{TOPIC}"
rate = 1000.0
"""

# Every behaviour the ledger must stay right through: errors, silence, NotNow, WBXML, a
# connection per message, installs (Windows 202 + Alert 1226) and inventories.
SCENARIO = """\
seed = 7
[fleet]
devices = 300
[rates]
error = 0.05
timeout = 0.05
not_now = 0.1
wbxml = 0.3
new_connection = 0.2
[cadence]
jitter = 0.2
[run]
ramp_up = 2.0
concurrency = 200
grace = 60.0
[workload]
install_per = 3
inventory_every = 2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def gateway(
    db: Path, port: int, apns_port: int, config: Path, *tls: str
) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN}
    # The log goes to a file: a pipe nobody reads would stall a busy server once full.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mdmgate",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--db",
                f"sqlite:///{db}",
                "--config",
                str(config),
                "--apns-url",
                f"http://127.0.0.1:{apns_port}",
                *tls,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if not line.startswith("mdmgate listening on "):
                proc.wait(timeout=30)
                log.seek(0)
                raise AssertionError(line + log.read())
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def simulate_command(
    port: int, apns_port: int, scenario: Path, *extra: str, scheme: str = "http"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mdmgate",
        "simulate",
        "--target",
        f"{scheme}://127.0.0.1:{port}",
        "--scenario",
        str(scenario),
        "--apns-listen",
        f"127.0.0.1:{apns_port}",
        "--token",
        TOKEN,
        "--json",
        *extra,
    ]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY_CONFIG)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    return {
        "db": tmp_path / "gateway.db",
        "config": config,
        "scenario": scenario,
        "port": free_port(),
        "apns_port": free_port(),
        "report": tmp_path / "report",
    }


def outcome_of(stdout: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(stdout)
    return document


def test_a_mixed_fleet_against_a_real_gateway_checks_clean(setup: dict[str, Any]) -> None:
    port, apns_port = setup["port"], setup["apns_port"]
    with gateway(setup["db"], port, apns_port, setup["config"]):
        done = subprocess.run(
            simulate_command(
                port,
                apns_port,
                setup["scenario"],
                "--duration",
                "15",
                "--time-factor",
                "4800",
                "--report",
                str(setup["report"]),
            ),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = outcome_of(done.stdout)
    ledger = outcome["ledger"]
    assert ledger["passed"] is True, ledger
    assert ledger["devices_checked"] == 300
    counts = ledger["counts"]
    # The workload went through and was answered, on both platforms.
    assert counts["ok"] >= 100, counts
    assert all(counts[p] == 0 for p in ("lost", "duplicated", "misattributed", "mismatched"))
    totals = outcome["totals"]
    assert set(totals["platforms"]) == {"windows", "ios", "ipados", "macos"}
    assert totals["platforms"]["windows"]["received"] > 0
    assert totals["platforms"]["ios"]["received"] > 0
    # Devices checked in on the compressed cadence, several times each.
    assert totals["all"]["sessions"] > 600
    # The installs queued for enrolled Apple devices were pushed through the stand-in.
    assert outcome["meta"]["pushes"] > 0
    assert outcome["meta"]["registered"] is True
    # What ran it, and what the run had to say, are in the report with it.
    meta = json.loads((setup["report"] / "report.json").read_text())["meta"]
    assert set(meta["versions"]) == {"mdmgate", "python", "trio", "h11"}
    assert meta["notes"] == [n for n in outcome["notes"] if not n.startswith("report: ")]
    page = (setup["report"] / "report.html").read_text()
    assert f"<th>trio</th><td>{trio.__version__}</td>" in page


def test_a_run_without_a_token_says_so_in_its_report(setup: dict[str, Any]) -> None:
    port, apns_port = setup["port"], setup["apns_port"]
    env = {k: v for k, v in os.environ.items() if k != "MDMGATE_API_TOKEN"}
    with gateway(setup["db"], port, apns_port, setup["config"], "--dev"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mdmgate",
                "simulate",
                "--target",
                f"http://127.0.0.1:{port}",
                "--devices",
                "20",
                "--duration",
                "2",
                "--grace",
                "5",
                "--no-apns",
                "--report",
                str(setup["report"]),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ledger: not checked (no API token)" in done.stdout
    meta = json.loads((setup["report"] / "report.json").read_text())["meta"]
    assert meta["notes"] == ["no API token: the ledger was not checked against the gateway"]
    page = (setup["report"] / "report.html").read_text()
    notes = page.split('<div class="note" id="notes">', 1)[1].split("</div>", 1)[0]
    assert "<li>no API token: the ledger was not checked against the gateway</li>" in notes


def test_a_token_that_may_not_register_ends_the_run_plainly(setup: dict[str, Any]) -> None:
    port, apns_port = setup["port"], setup["apns_port"]
    with gateway(setup["db"], port, apns_port, setup["config"]):
        made = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/tokens",
            json={"name": "look-only", "scope": "read"},
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert made.status_code == 201, made.text
        argv = simulate_command(port, apns_port, setup["scenario"], "--devices", "10")
        argv[argv.index("--token") + 1] = made.json()["token"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    # The registration is refused (403): exit status 2 and one line saying so.
    assert done.returncode == 2, done.stdout + done.stderr
    assert "registering the fleet failed" in done.stderr
    assert "Traceback" not in done.stderr


def answered_so_far(port: int) -> int:
    """Deliveries the gateway holds as answered, over every command."""
    try:
        page = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/commands", headers=AUTH, params={"limit": 1000}
        ).json()
    except httpx.HTTPError:
        return 0
    return sum(
        c["counts"].get("acknowledged", 0) + c["counts"].get("error", 0)
        for c in page.get("commands", [])
    )


def test_a_gateway_killed_and_restarted_midway_leaves_the_ledger_clean(
    setup: dict[str, Any],
) -> None:
    port, apns_port = setup["port"], setup["apns_port"]
    db, config = setup["db"], setup["config"]
    with tempfile.TemporaryFile("w+") as progress:
        with gateway(db, port, apns_port, config) as first:
            simulator = subprocess.Popen(
                simulate_command(
                    port, apns_port, setup["scenario"], "--duration", "20", "--time-factor", "4800"
                ),
                stdout=subprocess.PIPE,
                stderr=progress,
                text=True,
            )
            try:
                # Midway: once the queued workload is being answered.
                deadline = time.monotonic() + 60
                while answered_so_far(port) < 20:
                    assert simulator.poll() is None, "the simulator ended early"
                    assert time.monotonic() < deadline, "no answers reached the gateway"
                    time.sleep(0.1)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=30)
                with gateway(db, port, apns_port, config):
                    stdout, _ = simulator.communicate(timeout=240)
            finally:
                if simulator.poll() is None:
                    simulator.kill()
                    simulator.wait()
        progress.seek(0)
        log = progress.read()
    assert simulator.returncode == 0, stdout + log
    outcome = outcome_of(stdout)
    assert outcome["ledger"]["passed"] is True, outcome["ledger"]
    # The kill was felt: sessions failed while the gateway was down.
    errors = outcome["totals"]["all"]["errors"]
    assert any(kind.startswith("transport_") for kind in errors), errors
    assert outcome["ledger"]["counts"]["ok"] >= 100


def test_devices_with_client_certificates_over_tls_check_clean(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    # One CA signs the gateway's certificate and is its --client-ca; the simulator issues
    # each device's identity from it (--device-ca: the CA's certificate and key).
    pki = Pki.create(tmp_path / "pki")
    assert pki.ca is not None
    devices_ca = tmp_path / "devices-ca.pem"
    devices_ca.write_bytes(pki.ca.cert_pem.bytes() + pki.ca.private_key_pem.bytes())
    scenario = tmp_path / "mtls.toml"
    scenario.write_text(
        SCENARIO.replace("devices = 300", "devices = 120")
        + '[apple]\nauth = "mtls"\n[windows]\nauth = "certificate"\n'
    )
    port, apns_port = setup["port"], setup["apns_port"]
    with gateway(setup["db"], port, apns_port, setup["config"], *pki.serve_args()):
        command = simulate_command(port, apns_port, scenario, scheme="https")
        done = subprocess.run(
            [
                *command,
                "--duration",
                "8",
                "--time-factor",
                "4800",
                "--cacert",
                str(pki.ca_file),
                "--device-ca",
                str(devices_ca),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = outcome_of(done.stdout)
    assert outcome["ledger"]["passed"] is True, outcome["ledger"]
    assert outcome["ledger"]["counts"]["ok"] >= 20
    platforms = outcome["totals"]["platforms"]
    # Each device was registered with its certificate's SHA-256 and showed that certificate:
    # no session was refused (a Windows device without it gets SyncML 403), and commands
    # came through on both platforms.
    for name in ("windows", "ios"):
        assert platforms[name]["received"] > 0, platforms
        refused = [k for k in platforms[name]["errors"] if k.startswith(("http_", "syncml_"))]
        assert not refused, platforms


def test_client_certificate_devices_need_a_device_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "mtls.toml"
    scenario.write_text('[apple]\nauth = "mtls"\n')
    # Refused before any connection is tried.
    status, err = run_cli(
        ["--target", "https://127.0.0.1:9", "--scenario", str(scenario), "--no-apns"], capsys
    )
    assert status == 2
    assert "--device-ca" in err


# -- bad input ------------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``mdmgate simulate ARGS`` in this process (what ``python -m mdmgate`` runs)."""
    try:
        status = cli.main(["simulate", *args])
    except SystemExit as e:
        status = int(e.code or 0)
    return status, capsys.readouterr().err


def test_no_target_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli(["--devices", "10"], capsys)
    assert status == 2
    assert "--target" in err


def test_a_target_beyond_loopback_needs_allow_host(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli(["--target", "http://192.0.2.10:8080"], capsys)
    assert status == 2
    assert "--allow-host 192.0.2.10" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[fleet]\ncolour = 'blue'\n", "unknown key 'fleet.colour'"),
        ("[rates]\nerror = 1.5\n", "rates.error: expected `float` <= 1.0"),
        ("[fleet]\ndevices = 2000000\n", "fleet.devices: expected `int` <= 1000000"),
        ("[run]\nconcurrency = 0\n", "run.concurrency: expected `int` >= 1"),
        ("[[fleet.apps]]\nplatforms = ['windows']\nidentifier = 'x'\n", "versions"),
        ("seed = 'x'\n", "seed: expected `int`"),
        ("[fleet\n", "not TOML"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(text)
    status, err = run_cli(["--target", "http://127.0.0.1:9", "--scenario", str(scenario)], capsys)
    assert status == 2
    assert needle in err
    assert str(scenario) in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--devices", "0"], "--devices: expected `int` >= 1"),
        (["--devices", "1000001"], "--devices: expected `int` <= 1000000"),
        (["--time-factor", "0"], "--time-factor: expected `float` >= 0.001"),
        (["--duration", "nan"], "'nan' is not a finite number"),
        (["--apns-listen", "nowhere"], "--apns-listen 'nowhere' is not HOST:PORT"),
        (["--target", "ftp://127.0.0.1/"], "is not an http:// or https:// URL"),
    ],
)
def test_bad_options_are_refused(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    base = [] if "--target" in args else ["--target", "http://127.0.0.1:9"]
    status, err = run_cli([*base, *args], capsys)
    assert status == 2
    assert needle in err


def test_an_unreachable_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli(["--target", f"http://127.0.0.1:{free_port()}", "--no-apns"], capsys)
    assert status == 2
    assert "cannot reach the target" in err


# -- the HTTP client's bounds ---------------------------------------------------------------


async def serve_once(
    handler: Any, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_a_kept_alive_connection_carries_a_whole_session() -> None:
    connections: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        connections.append(1)
        while await read_head(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_once, handler)
        client = HttpClient(parse_target(f"http://127.0.0.1:{port}"))
        exchange = client.exchange()
        for _ in range(3):
            reply = await exchange("POST", "/x", [("content-type", "text/plain")], b"hi")
            assert (reply.status, reply.body, reply.header("content-length")) == (200, b"ok", "2")
        await exchange.aclose()
        assert len(connections) == 1
        fresh = client.exchange(new_connection=True)
        for _ in range(2):
            await fresh("POST", "/x", [], b"")
        assert len(connections) == 3
        nursery.cancel_scope.cancel()


async def test_an_oversized_silent_or_vanishing_server_is_a_transport_error() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        if b"/big" in head:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n")
        elif b"/slow" in head:
            await trio.sleep_forever()
        # /gone: close without a word

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_once, handler)
        client = HttpClient(
            parse_target(f"http://127.0.0.1:{port}"), read_timeout=0.5, max_response_bytes=1000
        )
        kinds = {}
        for path in ("/big", "/slow", "/gone"):
            with pytest.raises(TransportError) as caught:
                await client.exchange()("GET", path, [], b"")
            kinds[path] = caught.value.kind
        assert kinds == {"/big": "protocol", "/slow": "timeout", "/gone": "reset"}
        nursery.cancel_scope.cancel()
    refused = HttpClient(parse_target(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TransportError) as caught:
        await refused.exchange()("GET", "/", [], b"")
    assert caught.value.kind == "connect"


# -- statistics -----------------------------------------------------------------------------


def test_stats_keep_a_time_series_and_whole_run_percentiles() -> None:
    now = [100.0]
    cpu = [0.0]
    stats = Stats(clock=lambda: now[0], cpu=lambda: cpu[0])
    for n in range(1, 101):  # 10 ms .. 1 s in the first second
        stats.message("windows")
        stats.session("windows", n / 100)
    stats.command("windows", "received")
    stats.active = 3
    now[0] = 101.5
    cpu[0] = 0.25
    stats.session("ios", 2.0, "transport_reset")
    stats.command("ios", "answered")
    now[0] = 102.2
    timeline = stats.timeline()
    assert [b.t for b in timeline] == [0.0, 1.0]
    first, second = timeline
    assert (first.sessions, first.messages, first.received) == (100, 100, 1)
    assert first.latency_p50 == pytest.approx(0.50, rel=0.02)
    assert first.latency_p99 == pytest.approx(0.99, rel=0.02)
    assert (second.sessions, second.answered, second.errors) == (1, 1, {"transport_reset": 1})
    assert second.active == 3
    assert first.client_cpu + second.client_cpu == pytest.approx(0.25)
    totals = stats.totals()
    assert totals["all"]["sessions"] == 101
    assert totals["all"]["errors"] == {"transport_reset": 1}
    assert totals["platforms"]["windows"]["latency"]["p50"] == pytest.approx(0.50, rel=0.02)
    assert totals["platforms"]["ios"]["latency"]["max"] == 2.0
    stats.stop()
    now[0] = 500.0
    # The second the run stopped in is its last bucket, 0.2 s long; nothing comes after.
    assert [(b.t, b.span) for b in stats.timeline()] == [
        (0.0, 1.0),
        (1.0, 1.0),
        (2.0, pytest.approx(0.2)),
    ]


def totals_of(timeline: list[Bucket]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for bucket in timeline:
        for kind, n in bucket.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "sessions": sum(b.sessions for b in timeline),
        "messages": sum(b.messages for b in timeline),
        "received": sum(b.received for b in timeline),
        "answered": sum(b.answered for b in timeline),
        "errors": errors,
    }


@pytest.mark.parametrize("end", [4.75, 4.0], ids=["within-a-second", "on-a-second"])
def test_the_timeline_holds_everything_the_totals_count(end: float) -> None:
    now, cpu = [0.0], [0.0]
    stats = Stats(clock=lambda: now[0], cpu=lambda: cpu[0])
    # A run, then its drain: a burst of sessions in the second the run stops in.
    for at in (0.5, 1.2, 2.7, 3.1, *[3.9] * 5, *[end] * 40):
        now[0] = at
        cpu[0] = at / 2
        stats.message("windows")
        stats.session("windows", 0.05, "transport_reset" if at == 3.1 else None)
        stats.command("windows", "received")
        stats.command("windows", "answered")
        stats.tick()
    stats.stop()
    timeline = stats.timeline()
    whole = stats.totals()["all"]
    assert totals_of(timeline) == {k: whole[k] for k in totals_of(timeline)}
    assert whole["sessions"] == 49
    last = timeline[-1]
    assert last.t == 4.0
    assert last.span == pytest.approx(end - 4.0)
    assert [b.span for b in timeline[:-1]] == [1.0] * 4
    assert sum(b.client_cpu for b in timeline) == pytest.approx(end / 2)
    if end > 4.0:
        assert last.sessions == 40
        assert last.latency_p50 == pytest.approx(0.05, rel=0.02)
    # Stopping again, or reading again, changes nothing.
    now[0] = end + 10
    stats.stop()
    assert stats.timeline() == timeline
