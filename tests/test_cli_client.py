"""`mdmgate devices|commands|rollouts|events ...`: the command as a client of a running gateway.

Every test runs the command as a user does (``python -m mdmgate ...``, a separate process)
against a real ``mdmgate serve`` process on a real socket; the gateway's state is set up and
checked through its admin API with httpx, and Apple devices talk to it over mTLS as
tests/test_apple_e2e.py's do. Roll-outs run on the gateway's ``[testing]`` clock, fast
enough that a paced wave comes every half second. Nothing sleeps for timing: every wait reads
output or polls for what it waits for, under a deadline.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pty
import re
import selectors
import signal
import ssl
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mdmgate import plist
from mdmgate.client.rollouts import progress
from tests.cluster import Pki, free_port

TOKEN = "cli-client-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOPIC = "com.apple.mgmt.External.cli-client"
CHECKIN = "application/x-apple-aspen-mdm-checkin"
#: The catalogue's clock runs this much faster: a paced minute passes in half a second.
CLOCK_SCALE = 120.0
#: Any one CLI run or wait must end within this.
DEADLINE = 60.0


# --- the gateway ---------------------------------------------------------------------------------


@dataclass
class Gateway:
    """A running ``mdmgate serve`` and how to reach it."""

    proc: subprocess.Popen[str]
    url: str
    log: Path
    cacert: Path | None = None

    def admin(self) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=self.cacert) if self.cacert else False
        return httpx.Client(base_url=self.url, headers=AUTH, verify=verify, timeout=DEADLINE)

    def env(self, **more: str) -> dict[str, str]:
        """The environment a user of this gateway sets: its URL and the token."""
        return {**os.environ, "MDMGATE_URL": self.url, "MDMGATE_API_TOKEN": TOKEN, **more}

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _start(directory: Path, *args: str) -> Gateway:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "mdmgate.toml"
    epoch = round(time.time(), 3)
    config.write_text(f"[testing]\nclock_scale = {CLOCK_SCALE}\nclock_epoch = {epoch}\n")
    log = directory / "gateway.log"
    argv = [sys.executable, "-m", "mdmgate", "serve", "--listen", "127.0.0.1:0"]
    argv += ["--db", "memory:", "--config", str(config), *args]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=sink,  # a pipe nobody reads would stall the gateway once full
            text=True,
            env={**os.environ, "MDMGATE_API_TOKEN": TOKEN},
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("mdmgate listening on "):
        proc.kill()
        proc.wait(timeout=30)
        raise AssertionError(line + log.read_text())
    return Gateway(proc, line.split()[-1], log)


def _stop(gateway: Gateway) -> None:
    # SIGKILL: nothing is kept (memory:), and a SIGTERM would let the gateway drain, which
    # waits out the long poll of an `events tail --follow` that is gone already.
    gateway.proc.kill()
    gateway.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One cleartext gateway for the module's tests (each uses ids of its own)."""
    started = _start(tmp_path_factory.mktemp("gateway"))
    try:
        yield started
    finally:
        _stop(started)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Gateway]:
    """A gateway under TLS that takes device identities from ``pki``'s CA (mTLS)."""
    started = _start(tmp_path_factory.mktemp("tls-gateway"), *pki.serve_args())
    started.cacert = pki.ca_file
    try:
        yield started
    finally:
        _stop(started)


# --- running the command -------------------------------------------------------------------------


def mdmgate(
    gateway: Gateway | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m mdmgate ARGS`` to its end, with the gateway's URL and token in the
    environment (``env`` instead, when given)."""
    environment = env if env is not None else gateway.env() if gateway else dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "mdmgate", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=DEADLINE,
        check=False,
    )


def ok(gateway: Gateway | None, *args: str) -> str:
    """The stdout of a run that must succeed (exit 0, nothing on stderr)."""
    r = mdmgate(gateway, *args)
    assert (r.returncode, r.stderr) == (0, ""), (r, gateway.log_tail() if gateway else "")
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The error of a run that failed as the command promises: exit 2, nothing on stdout,
    one line on stderr, ``mdmgate: error: ...`` (``mdmgate COMMAND ACTION: error: ...`` for
    a usage error argparse found)."""
    assert (r.returncode, r.stdout) == (2, ""), r
    found = re.fullmatch(r"mdmgate(?: [a-z-]+)*: error: ([^\n]*)\n", r.stderr)
    assert found, r.stderr
    return found.group(1)


def column_starts(header: str) -> list[int]:
    """Where each column of ``header`` (names separated by 2+ spaces) starts."""
    return [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """Reads an aligned table: its column names, and each row's cells (cut where the header's
    columns start, so the test fails if a row is not aligned under its header)."""
    header, *rows = text.rstrip("\n").split("\n")
    starts = column_starts(header)
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    cells = []
    for row in rows:
        for start in starts[1:]:
            # A cell starts where its column does: the character before it is a space.
            assert row[start - 1] == " ", (row, header)
        cells.append([row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)])
    return names, cells


def register(gateway: Gateway, devices: list[dict[str, Any]]) -> None:
    with gateway.admin() as admin:
        r = admin.post("/api/v1/devices", json=devices)
        assert r.status_code == 200, r.text


def store_app(gateway: Gateway, app_id: str, version: str = "2.0") -> None:
    """An iOS App Store app with one version."""
    with gateway.admin() as admin:
        r = admin.post(
            "/api/v1/apps",
            json={
                "id": app_id,
                "name": app_id.title(),
                "platform": "ios",
                "kind": "store",
                "identifier": f"com.acme.{app_id}",
                "itunes_store_id": 1234567,
            },
        )
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/v1/apps/{app_id}/versions", json={"file_version": version})
        assert r.status_code in (200, 201), r.text


def phones(prefix: str, count: int, org: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "platform": "ios",
            "org": org,
            "os_version": "17.5",
            "supervised": True,
        }
        for i in range(count)
    ]


class Lines:
    """A running command's stdout, read line by line under a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.stream = proc.stdout
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.stream, selectors.EVENT_READ)
        self.buffer = b""
        self.seen: list[str] = []

    def next(self, within: float = DEADLINE) -> str:
        deadline = time.monotonic() + within
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                raise AssertionError(f"no line within {within:g} s; so far {self.seen}")
            chunk = os.read(self.stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the command ended; its lines: {self.seen}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]


def start(gateway: Gateway, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mdmgate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=gateway.env(),
    )


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out.decode(), err.decode()


# --- devices -------------------------------------------------------------------------------------


def test_devices_list_is_an_aligned_table_and_json_for_scripts(gateway: Gateway) -> None:
    register(
        gateway,
        [
            {"id": "dl-win-1", "platform": "windows", "org": "/dl", "os_version": "10.0.22631"},
            {
                "id": "dl-ios-longer-name-2",
                "platform": "ios",
                "org": "/dl/sales",
                "os_version": "17.5",
                "supervised": True,
                "apps": [{"identifier": "com.acme.chat", "version": "1.0", "name": "Chat"}],
            },
            {"id": "dl-mac-3", "platform": "macos", "org": "/elsewhere"},
        ],
    )
    names, rows = table(ok(gateway, "devices", "list", "--org", "/dl"))
    assert names[:4] == ["ID", "PLATFORM", "ORG", "OS"], names
    assert [r[:4] for r in rows] == [
        ["dl-ios-longer-name-2", "ios", "/dl/sales", "17.5"],
        ["dl-win-1", "windows", "/dl", "10.0.22631"],
    ]
    assert rows[0][names.index("APPS")] == "1"
    assert rows[0][names.index("SUPERVISED")] == "yes"

    # Scripts get the API's device objects, as one JSON array.
    listed = json.loads(ok(gateway, "devices", "list", "--org", "/dl", "--json"))
    with gateway.admin() as admin:
        expected = admin.get("/api/v1/devices", params={"org": "/dl"}).json()["devices"]
    assert listed == expected

    # Filters go to the API as they are named.
    names, rows = table(ok(gateway, "devices", "list", "--org", "/dl", "--platform", "windows"))
    assert [r[0] for r in rows] == ["dl-win-1"]
    listed = json.loads(
        ok(gateway, "devices", "list", "--app", "com.acme.chat", "--app-version", "1.0", "--json")
    )
    assert [d["id"] for d in listed] == ["dl-ios-longer-name-2"]


def test_devices_list_pages_up_to_the_limit_and_says_where_to_go_on(gateway: Gateway) -> None:
    register(gateway, [{"id": f"pg-{i}", "platform": "windows", "org": "/pg"} for i in range(5)])
    r = mdmgate(gateway, "devices", "list", "--org", "/pg", "--limit", "2", "--json")
    assert r.returncode == 0, r
    assert [d["id"] for d in json.loads(r.stdout)] == ["pg-0", "pg-1"]
    # The rest is one option away, and the command says which.
    assert "--after pg-1" in r.stderr
    listed = json.loads(ok(gateway, "devices", "list", "--org", "/pg", "--after", "pg-1", "--json"))
    assert [d["id"] for d in listed] == ["pg-2", "pg-3", "pg-4"]
    # --all follows the cursor to the end, however small the pages.
    listed = json.loads(ok(gateway, "devices", "list", "--org", "/pg", "--all", "--json"))
    assert [d["id"] for d in listed] == [f"pg-{i}" for i in range(5)]


def test_devices_show_for_people_and_scripts(gateway: Gateway) -> None:
    register(
        gateway,
        [
            {
                "id": "show-1",
                "platform": "ios",
                "org": "/show",
                "os_version": "17.5",
                "supervised": False,
                "apps": [{"identifier": "com.acme.notes", "version": "3.1", "name": "Notes"}],
            }
        ],
    )
    text = ok(gateway, "devices", "show", "show-1")
    assert re.search(r"^id +show-1$", text, re.M), text
    assert re.search(r"^org +/show$", text, re.M), text
    assert re.search(r"^supervised +no$", text, re.M), text
    assert re.search(r"^com\.acme\.notes +3\.1 +Notes", text, re.M), text

    shown = json.loads(ok(gateway, "devices", "show", "show-1", "--json"))
    with gateway.admin() as admin:
        assert shown == admin.get("/api/v1/devices/show-1").json()

    # What devices report reaches a person's terminal with its control characters escaped:
    # an app name cannot retitle the window or recolour what follows.
    hostile = "Notes\x1b]0;owned\x07\x1b[31m"
    register(
        gateway,
        [
            {
                "id": "show-2",
                "platform": "ios",
                "org": "/show",
                "apps": [{"identifier": "com.acme.notes", "version": "3.1", "name": hostile}],
            }
        ],
    )
    text = ok(gateway, "devices", "show", "show-2")
    assert "\x1b" not in text, repr(text)
    assert "Notes\\x1b]0;owned\\x07\\x1b[31m" in text, text
    # Scripts get it as the API gives it.
    shown = json.loads(ok(gateway, "devices", "show", "show-2", "--json"))
    assert shown["apps"][0]["name"] == hostile

    # --deliveries adds the device's queue and history.
    with gateway.admin() as admin:
        r = admin.post(
            "/api/v1/devices/show-1/commands",
            json={"apple": {"request_type": "DeviceInformation", "payload": {"Queries": ["UDID"]}}},
        )
        assert r.status_code == 202, r.text
        command_id = r.json()["command_id"]
    text = ok(gateway, "devices", "show", "show-1", "--deliveries")
    assert re.search(rf"^{command_id} +apple +queued", text, re.M), text
    shown = json.loads(ok(gateway, "devices", "show", "show-1", "--deliveries", "--json"))
    assert [(d["command_id"], d["state"]) for d in shown["deliveries"]] == [(command_id, "queued")]


# --- commands ------------------------------------------------------------------------------------

GET_SWV = (
    "<Get><CmdID>1</CmdID><Item><Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>"
)


def test_commands_queue_and_show(gateway: Gateway, tmp_path: Path) -> None:
    register(gateway, [{"id": f"cq-win-{i}", "platform": "windows", "org": "/cq"} for i in (1, 2)])
    register(gateway, phones("cq-ios", 1, "/cq"))

    # Raw SyncML for two devices; the id is what a script reads back.
    accepted = json.loads(
        ok(gateway, "commands", "queue", "--device", "cq-win-1", "--device", "cq-win-2",
           "--raw", GET_SWV, "--json")
    )  # fmt: skip
    assert (accepted["kind"], accepted["deliveries"]) == ("syncml", 2)
    command_id = accepted["command_id"]

    # A typed Apple command, for people: one line naming the command.
    text = ok(
        gateway, "commands", "queue", "--device", "cq-ios-0", "--apple", "DeviceInformation",
        "--payload", '{"Queries": ["OSVersion"]}',
    )  # fmt: skip
    found = re.fullmatch(r"queued command (\S+) \(apple\) for 1 device\n", text)
    assert found, text
    apple_id = found.group(1)

    # Any form of the API's command body from a file (here SyncML in its JSON form).
    body = tmp_path / "command.json"
    body.write_text(json.dumps({"syncml": {"Get": {"Item": [{"Target": {"LocURI": "./x"}}]}}}))
    accepted = json.loads(
        ok(gateway, "commands", "queue", "--device", "cq-win-1", "--body", str(body), "--json")
    )
    assert accepted["kind"] == "syncml"

    # show: the body as sent and each device's delivery.
    text = ok(gateway, "commands", "show", command_id)
    assert GET_SWV in text, text
    names, rows = table(text[text.index("DEVICE") :])
    assert names[:2] == ["DEVICE", "STATE"], names
    assert [r[:2] for r in rows] == [["cq-win-1", "queued"], ["cq-win-2", "queued"]]
    shown = json.loads(ok(gateway, "commands", "show", apple_id, "--json"))
    command = {"RequestType": "DeviceInformation", "Queries": ["OSVersion"]}
    assert shown["body"]["Command"] == command
    assert [(d["device_id"], d["state"]) for d in shown["deliveries"]] == [("cq-ios-0", "queued")]


def test_commands_queue_refuses_bad_input_in_one_line(gateway: Gateway, tmp_path: Path) -> None:
    register(gateway, [{"id": "cqbad-1", "platform": "windows", "org": "/cq"}])
    # No command given, two given, --payload that is not JSON: refused before any request.
    r = mdmgate(gateway, "commands", "queue", "--device", "cqbad-1")
    assert "one of --raw, --raw-file, --apple, --syncml, --body" in one_line_error(r)
    r = mdmgate(gateway, "commands", "queue", "--device", "cqbad-1", "--raw", "x", "--syncml", "{}")
    assert "not allowed with argument" in one_line_error(r)
    r = mdmgate(
        gateway, "commands", "queue", "--device", "cqbad-1", "--apple", "X", "--payload", "{"
    )
    assert "--payload is not JSON" in one_line_error(r)
    missing = tmp_path / "missing.json"
    r = mdmgate(gateway, "commands", "queue", "--device", "cqbad-1", "--body", str(missing))
    assert f"cannot read {missing}" in one_line_error(r)
    # The gateway's refusal: status, message and where in the body.
    r = mdmgate(gateway, "commands", "queue", "--device", "nobody-here", "--raw", GET_SWV)
    line = one_line_error(r)
    assert line.startswith("404 "), line
    assert "nobody-here" in line, line
    r = mdmgate(gateway, "commands", "queue", "--device", "cqbad-1", "--raw", "<Bogus/>")
    line = one_line_error(r)
    assert line.startswith("422 "), line
    assert "$.raw" in line, line


def test_commands_list(gateway: Gateway) -> None:
    register(gateway, [{"id": "cl-win-1", "platform": "windows", "org": "/cl"}])
    made = []
    for _ in range(3):
        accepted = json.loads(
            ok(gateway, "commands", "queue", "--device", "cl-win-1", "--raw", GET_SWV, "--json")
        )
        made.append(accepted["command_id"])
    listed = json.loads(ok(gateway, "commands", "list", "--device", "cl-win-1", "--json"))
    assert [c["command_id"] for c in listed] == made
    names, rows = table(ok(gateway, "commands", "list", "--device", "cl-win-1"))
    assert names[:3] == ["COMMAND", "KIND", "NAME"], names
    assert [(r[0], r[1], r[2]) for r in rows] == [(c, "syncml", "Get") for c in made]
    assert {r[names.index("PENDING")] for r in rows} == {"1"}
    r = mdmgate(gateway, "commands", "list", "--device", "cl-win-1", "--limit", "2", "--json")
    assert [c["command_id"] for c in json.loads(r.stdout)] == made[:2]
    assert f"--after {made[1]}" in r.stderr


def test_commands_cancel_for_some_devices_then_all(gateway: Gateway) -> None:
    register(gateway, [{"id": f"cc-win-{i}", "platform": "windows", "org": "/cc"} for i in (1, 2)])
    accepted = json.loads(
        ok(gateway, "commands", "queue", "--device", "cc-win-1", "--device", "cc-win-2",
           "--raw", GET_SWV, "--json")
    )  # fmt: skip
    command_id = accepted["command_id"]
    text = ok(gateway, "commands", "cancel", command_id, "--device", "cc-win-1")
    assert "cancelled for 1 device: cc-win-1" in text, text
    cancelled = json.loads(ok(gateway, "commands", "cancel", command_id, "--json"))
    assert cancelled["cancelled"] == ["cc-win-2"]
    assert cancelled["left"] == {"cc-win-1": "error"}
    with gateway.admin() as admin:
        states = admin.get(f"/api/v1/commands/{command_id}").json()["deliveries"]
    assert {d["state"] for d in states} == {"error"}


# --- roll-outs -----------------------------------------------------------------------------------


def test_rollout_watched_to_the_end_one_line_per_change(gateway: Gateway) -> None:
    """Three phones, one a (fast) minute: three waves. Without a terminal the progress is
    printed one line per change, each wave's line as it changes."""
    register(gateway, phones("ro", 3, "/ro"))
    store_app(gateway, "roapp")
    proc = start(
        gateway, "rollouts", "start", "roapp", "--org", "/ro", "--pace", "1", "--watch",
        "--interval", "0.1",
    )  # fmt: skip
    status, out, err = finish(proc)
    assert (status, err) == (0, ""), (out, err, gateway.log_tail())
    lines = out.splitlines()
    for wave in (1, 2, 3):
        assert any(re.match(rf"wave {wave} +\[\.+\] +1 device +0 done +0 failed +1 pending$", line)
                   for line in lines), out  # fmt: skip
    # A line per change: no line is printed twice in a row.
    assert all(a != b for a, b in itertools.pairwise(lines)), out
    assert re.search(r"^rollout \S+ done: 3 queued, 0 done, 0 failed, 3 pending$", out, re.M), out


def test_rollout_watch_json_lines_and_a_cancelled_one_exits_1(gateway: Gateway) -> None:
    register(gateway, phones("rj", 2, "/rj"))
    store_app(gateway, "rjapp")
    proc = start(
        gateway, "rollouts", "start", "rjapp", "--org", "/rj", "--pace", "1", "--watch",
        "--interval", "0.1", "--json",
    )  # fmt: skip
    status, out, err = finish(proc)
    assert (status, err) == (0, ""), (out, err)
    snapshots = [json.loads(line) for line in out.splitlines()]
    last = snapshots[-1]
    assert last["state"] == "done"
    waves = [(w["wave"], w["devices"], w["pending"]) for w in last["waves"]]
    assert waves == [(1, 1, 1), (2, 1, 1)], last
    assert last["counts"] == {"queued": 2}
    assert snapshots[0]["state"] == "running"

    # One due in the far future, cancelled: its watch ends at once, with status 1.
    made = json.loads(
        ok(gateway, "rollouts", "start", "rjapp", "--org", "/rj", "--at", "2099-01-01T00:00:00Z",
           "--json")
    )  # fmt: skip
    assert made["state"] == "scheduled"
    text = ok(gateway, "rollouts", "cancel", made["id"])
    assert re.search(rf"^rollout {made['id']} \(rjapp .*\): cancelled", text, re.M), text
    r = mdmgate(gateway, "rollouts", "show", made["id"], "--watch", "--interval", "0.1")
    assert r.returncode == 1, r
    assert re.search(rf"^rollout {made['id']} cancelled", r.stdout, re.M), r.stdout
    # Cancelling it again is the gateway's 409, as one line.
    line = one_line_error(mdmgate(gateway, "rollouts", "cancel", made["id"]))
    assert line.startswith("409 "), line


def test_rollout_watch_redraws_on_a_terminal(gateway: Gateway) -> None:
    """On a terminal the block of lines is drawn again in place, each line cut to the
    terminal's width (a wrapped line would throw the redrawing off by a row)."""
    register(gateway, phones("rt", 2, "/rt"))
    store_app(gateway, "rtapp")
    main, terminal = pty.openpty()
    columns = 100
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdmgate", "rollouts", "start", "rtapp", "--org", "/rt",
         "--pace", "1", "--watch", "--interval", "0.1"],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={k: v for k, v in gateway.env().items() if k not in ("COLUMNS", "LINES")},
    )  # fmt: skip
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + DEADLINE
    with selectors.DefaultSelector() as selector:
        selector.register(main, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            assert selector.select(max(left, 0)), f"still watching: {seen!r}"
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    os.close(main)
    assert proc.wait(timeout=DEADLINE) == 0, seen
    text = seen.decode()
    # The lines are drawn again in place (cursor up, erase line), not appended.
    assert "\x1b[2K" in text, text
    assert re.search(r"\x1b\[\d+F", text), text
    assert re.search(r"wave 2 +\[\.+\] +1 device", text), text
    assert "done: 2 queued" in text, text
    drawn = [re.sub(r"\x1b\[\d*[A-Za-z]", "", line) for line in text.split("\r\n")]
    assert max(len(line) for line in drawn) < columns, drawn
    # The header (id, app, state, next wave's time) is longer: cut, and says so.
    assert any(line.startswith("rollout ") and line.endswith("…") for line in drawn), drawn


class Phone:
    """An iPhone's MDM client over mTLS: check-ins and command reports as plists."""

    def __init__(self, gateway: Gateway, pki: Pki, udid: str, directory: Path) -> None:
        identity, _ = pki.identity(directory, udid)
        self.udid = udid
        self.client = httpx.Client(
            base_url=gateway.url, verify=pki.client_context(identity), timeout=DEADLINE
        )

    def checkin(self, message: dict[str, Any]) -> None:
        r = self.client.put(
            "/mdm/apple/checkin",
            content=plist.dumps({"UDID": self.udid, **message}),
            headers={"content-type": CHECKIN},
        )
        assert r.status_code == 200, r.text

    def enroll(self) -> None:
        self.checkin(
            {"MessageType": "Authenticate", "Topic": TOPIC, "OSVersion": "17.5",
             "ProductName": "iPhone15,2", "SerialNumber": f"SN{self.udid}"}
        )  # fmt: skip
        self.checkin(
            {"MessageType": "TokenUpdate", "Topic": TOPIC, "Token": self.udid.encode(),
             "PushMagic": f"magic-{self.udid}"}
        )  # fmt: skip

    def connect(self, status: str, **fields: Any) -> dict[str, Any] | None:
        report = {"UDID": self.udid, "Status": status, **fields}
        r = self.client.put("/mdm/apple/connect", content=plist.dumps(report))
        assert r.status_code == 200, r.text
        return plist.loads(r.content) if r.content else None

    def answer_all(self, status: str) -> int:
        """Takes every queued command and answers each with ``status``; returns how many."""
        answered = 0
        command = self.connect("Idle")
        while command is not None:
            answered += 1
            command = self.connect(status, CommandUUID=command["CommandUUID"])
        return answered


def test_rollout_watched_until_devices_answer_over_tls(
    tls_gateway: Gateway, pki: Pki, tmp_path: Path
) -> None:
    """``--until-delivered`` watches on after the last wave until no delivery is open;
    ``--cacert`` trusts the gateway's CA. Phones answer: two acknowledge, one refuses."""
    gateway = tls_gateway
    devices = phones("tls", 3, "/tls")
    register(gateway, devices)
    store_app(gateway, "tlsapp")
    runs = [Phone(gateway, pki, d["id"], tmp_path) for d in devices]
    for phone in runs:
        phone.enroll()
    cacert = str(pki.ca_file)
    proc = start(
        gateway, "rollouts", "start", "tlsapp", "--org", "/tls", "--pace", "2", "--watch",
        "--until-delivered", "--interval", "0.1", "--cacert", cacert,
    )  # fmt: skip
    lines = Lines(proc)
    # The first wave (two phones) is queued: they answer; the second wave's phone after it.
    while not re.match(r"wave 2 ", lines.next()):
        pass
    assert [p.answer_all("Acknowledged") for p in runs[:2]] == [1, 1]
    assert runs[2].answer_all("Error") == 1
    status, out, err = finish(proc)
    out = "\n".join(lines.seen) + "\n" + lines.buffer.decode() + out
    # One phone failed its install: the watch says so and exits 1.
    assert (status, err) == (1, ""), (out, err, gateway.log_tail())
    assert re.search(r"^wave 1 +\[=+\] +2 devices +2 done +0 failed +0 pending$", out, re.M), out
    assert re.search(r"^wave 2 +\[x+\] +1 device +0 done +1 failed +0 pending$", out, re.M), out
    assert re.search(r"^rollout \S+ done: 3 queued, 2 done, 1 failed, 0 pending$", out, re.M), out

    # Without the CA the gateway's certificate is not trusted: one line, exit 2.
    r = mdmgate(gateway, "devices", "show", "tls-0")
    line = one_line_error(r)
    assert "certificate verify failed" in line, line
    r = mdmgate(gateway, "devices", "show", "tls-0", "--cacert", str(tmp_path / "none.pem"))
    assert "cannot read --cacert" in one_line_error(r)
    shown = json.loads(ok(gateway, "devices", "show", "tls-0", "--cacert", cacert, "--json"))
    assert shown["id"] == "tls-0"
    for phone in runs:
        phone.client.close()


def test_waves_are_the_deliveries_in_device_order_cut_every_pace() -> None:
    """The progress of a paced roll-out from what the API shows: the deliveries of all its
    commands (a first install and an update are two commands) sorted by device id and cut
    every ``pace_per_minute``; the last wave may have queued nothing."""
    notification = {"id": "n", "app_id": "a", "state": "done", "waves": 3, "pace_per_minute": 2}
    deliveries = [
        {"device_id": "d4", "state": "queued"},  # command 2
        {"device_id": "d1", "state": "acknowledged"},  # command 1
        {"device_id": "d3", "state": "error"},  # command 1
        {"device_id": "d2", "state": "failed"},  # command 2
    ]
    shown = progress(notification, deliveries)
    assert [(w.number, w.devices, w.done, w.failed, w.pending) for w in shown.waves] == [
        (1, 2, 1, 1, 0),
        (2, 2, 0, 1, 1),
        (3, 0, 0, 0, 0),
    ]
    assert (shown.done, shown.failed, shown.pending) == (1, 2, 1)
    assert shown.waves[0].bar() == "=" * 10 + "x" * 10
    assert shown.waves[1].bar() == "x" * 10 + "." * 10
    # Not paced: one wave.
    unpaced = progress({**notification, "pace_per_minute": None, "waves": 1}, deliveries)
    assert [(w.devices, w.done, w.failed, w.pending) for w in unpaced.waves] == [(4, 1, 2, 1)]


# --- events --------------------------------------------------------------------------------------


def test_events_tail_and_follow(gateway: Gateway) -> None:
    """A command cancelled for a device is an event (``command.cancelled``, about the
    device, subject the command): ``tail`` prints those logged, ``--follow`` waits for more."""
    register(gateway, [{"id": "ev-win-1", "platform": "windows", "org": "/ev"}])

    def cancelled_command() -> str:
        queued = ok(
            gateway, "commands", "queue", "--device", "ev-win-1", "--raw", GET_SWV, "--json"
        )
        command_id: str = json.loads(queued)["command_id"]
        ok(gateway, "commands", "cancel", command_id)
        return command_id

    first = cancelled_command()
    mine = ("--types", "command.cancelled", "--device", "ev-win-1")
    tailed = [
        json.loads(line) for line in ok(gateway, "events", "tail", *mine, "--json").split("\n")[:-1]
    ]
    assert [(e["type"], e["device_id"], e["subject"]) for e in tailed] == [
        ("command.cancelled", "ev-win-1", first)
    ], tailed
    seq = tailed[0]["seq"]
    text = ok(gateway, "events", "tail", *mine, "--after", str(seq - 1))
    assert re.fullmatch(rf" *{seq} +\S+ +command\.cancelled +ev-win-1 +{first} +\S.*\n", text), text
    assert ok(gateway, "events", "tail", *mine, "--after", str(seq)) == ""

    follow = start(gateway, "events", "tail", "--follow", "--after", str(seq), *mine, "--json")
    try:
        lines = Lines(follow)
        second = cancelled_command()
        event = json.loads(lines.next())
        assert (event["type"], event["subject"]) == ("command.cancelled", second)
        assert event["seq"] > seq
    finally:
        follow.send_signal(signal.SIGINT)
        status, _, err = finish(follow)
    # Interrupted by the user: no traceback, the shell's status for SIGINT.
    assert (status, err) == (130, ""), err


# --- errors and help -----------------------------------------------------------------------------


def test_wrong_token_missing_token_404_are_one_line_exit_2(gateway: Gateway) -> None:
    r = mdmgate(gateway, "devices", "list", env=gateway.env(MDMGATE_API_TOKEN="wrong"))
    assert one_line_error(r) == "401 wrong bearer token"
    # --token wins over the environment.
    r = mdmgate(gateway, "devices", "list", "--token", "wrong")
    assert one_line_error(r) == "401 wrong bearer token"
    assert ok(gateway, "devices", "list", "--token", TOKEN, "--org", "/nothing-here") == ""
    env = gateway.env()
    del env["MDMGATE_API_TOKEN"]
    r = mdmgate(gateway, "devices", "list", env=env)
    assert "no API token" in one_line_error(r)
    r = mdmgate(gateway, "devices", "show", "no-such-device")
    assert one_line_error(r) == "404 no device 'no-such-device'"
    r = mdmgate(gateway, "rollouts", "show", "no-such-rollout")
    assert one_line_error(r) == "404 no install notification 'no-such-rollout'"


def test_unreachable_gateway_and_bad_url_are_one_line_exit_2() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MDMGATE_API_TOKEN": TOKEN}
    r = mdmgate(None, "devices", "list", "--url", closed, env=env)
    line = one_line_error(r)
    assert line.startswith(f"cannot connect to {closed}: "), line
    assert "refused" in line, line
    r = mdmgate(None, "devices", "list", env={**env, "MDMGATE_URL": closed})
    assert one_line_error(r).startswith(f"cannot connect to {closed}: ")
    r = mdmgate(None, "devices", "list", "--url", "ftp://example.com", env=env)
    assert "--url must be http:// or https://" in one_line_error(r)


def test_every_client_command_has_a_worked_example() -> None:
    for group, actions in {
        "devices": ("list", "show"),
        "commands": ("queue", "show", "list", "cancel"),
        "rollouts": ("start", "show", "cancel"),
        "events": ("tail",),
    }.items():
        r = mdmgate(None, group, "--help")
        assert r.returncode == 0, r
        assert f"mdmgate {group} " in r.stdout, r.stdout
        for action in actions:
            r = mdmgate(None, group, action, "--help")
            assert r.returncode == 0, r
            assert re.search(rf"^  (\S+=\S+ )*mdmgate {group} {action}\b", r.stdout, re.M), r.stdout
            for option in ("--url", "--token", "--cacert", "--json"):
                assert option in r.stdout, (group, action, option)
