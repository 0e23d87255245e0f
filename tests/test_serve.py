"""`mdmgate serve` as a user runs it: a separate process, real sockets, real HTTP clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def gateway(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdmgate", "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("mdmgate listening on "), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        yield proc, line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_serves_both_protocols_and_drains_on_sigterm(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    with gateway("--db", db) as (proc, base):
        for http2 in (False, True):
            with httpx.Client(http1=not http2, http2=http2, base_url=base) as client:
                r = client.get("/healthz")
                assert (r.status_code, r.text, r.http_version) == (
                    200,
                    "ok\n",
                    "HTTP/2" if http2 else "HTTP/1.1",
                )
        with httpx.Client(base_url=base) as client:
            assert client.get("/api/v1/openapi.json").status_code == 401
            assert (
                client.get("/api/v1/openapi.json", headers=AUTH).json()["openapi"].startswith("3")
            )
            metrics = client.get("/metrics").text
            assert "mdmgate_http_requests_total" in metrics
            assert "mdmgate_queue_depth" in metrics
            r = client.post("/ManagementServer/MDM.svc", content=b"<SyncML/>")
            assert r.status_code == 415
            assert "application/vnd.syncml.dm+xml" in r.text
            assert "mdmgate_omadm_sessions" in metrics
            r = client.put("/mdm/apple/checkin", content=b"x")
            assert r.status_code == 415
            assert "application/x-apple-aspen-mdm-checkin" in r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_acknowledged_command_survives_sigkill(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    get = (
        "<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
    )
    with gateway("--db", db) as (proc, base):
        with httpx.Client(base_url=base, headers=AUTH) as client:
            r = client.post("/api/v1/devices", json=[{"id": "win-1", "platform": "windows"}])
            assert r.status_code == 200, r.text
            r = client.post("/api/v1/commands", json={"devices": ["win-1"], "raw": get})
            assert r.status_code == 202, r.text
            command_id = r.json()["command_id"]
        proc.kill()  # SIGKILL right after the 2xx: no chance to flush anything else
        proc.wait(timeout=30)
    with gateway("--db", db) as (_, base), httpx.Client(base_url=base, headers=AUTH) as client:
        status = client.get(f"/api/v1/commands/{command_id}").json()
        assert [(d["device_id"], d["state"]) for d in status["deliveries"]] == [("win-1", "queued")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--workers", "2", "--db", "memory:"], "several workers need a shared database"),
        (["--listen", "nowhere"], "is not HOST:PORT"),
        (["--db", "postgres://x"], "unsupported database URL"),
        (["--apns-url", "ftp://push.example"], "is not an http(s) URL"),
    ],
)
def test_bad_configuration_is_one_line(args: list[str], needle: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mdmgate", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode in (1, 2)
    assert needle in r.stderr
    assert r.stdout == ""


def test_apns_config_table(tmp_path: Path) -> None:
    from mdmgate.server.app import ConfigError, load_config  # noqa: PLC0415

    good = tmp_path / "good.toml"
    good.write_text('[apns]\ntopic = "com.apple.mgmt.External.x"\nrate = 50.0\n')
    config = load_config(str(good), {"apns_url": "http://127.0.0.1:2197"})
    assert (config.apns_topic, config.apns_rate, config.apns_url) == (
        "com.apple.mgmt.External.x",
        50.0,
        "http://127.0.0.1:2197",
    )
    for text, needle in (
        ('[apns]\ntopik = "x"\n', "unknown apns keys: topik"),
        ('[apns]\ncert = "c.pem"\n', "apns cert and key go together"),
        ('[apns]\nkey_id = "K"\n', "auth_key, key_id and team_id go together"),
        ("[apns]\nrate = 0\n", "positive number of pushes"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            load_config(str(bad), {})
