"""The simulate run's report (report.json, report.html) and its live progress view."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from mdmgate.simulate import progress, report
from mdmgate.simulate.ledger import LedgerResult
from mdmgate.simulate.stats import Bucket, Stats

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&"\''
CHARTS = ("throughput", "latency", "errors", "commands", "active", "cpu")


class RecordedStats(Stats):
    """A run's statistics as already measured: the report and the live view read only these."""

    def __init__(self, buckets: list[Bucket], totals: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.buckets = buckets
        self._recorded_totals = totals or {}

    def timeline(self) -> list[Bucket]:
        return list(self.buckets)

    def totals(self) -> dict[str, Any]:
        return self._recorded_totals


def busy_run(seconds: int = 30, *, cpu: float = 0.4) -> list[Bucket]:
    buckets = []
    for t in range(seconds):
        buckets.append(
            Bucket(
                t=float(t),
                sessions=100 + t,
                messages=400 + 4 * t,
                errors={"transport_timeout": t % 3, "transport_connect": 1 if t == 7 else 0},
                # Some seconds end no session: the latency line has gaps.
                latency_p50=None if t % 10 == 9 else 0.012 + t / 1000,
                latency_p99=None if t % 10 == 9 else 0.150 + t / 100,
                received=50 + t,
                answered=49 + t,
                active=200 + t,
                client_cpu=cpu,
            )
        )
    return buckets


TOTALS: dict[str, Any] = {
    "sessions": 3435,
    "messages": 13740,
    "latency": {"p50": 0.027, "p99": 0.43},
    "errors": {"transport_timeout": 29, "transport_connect": 1},
    "platforms": {"windows": {"sessions": 2000}, "ios": {"sessions": 1435}},
}


class Page(HTMLParser):
    """Every tag and attribute of a page, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def by_id(self) -> set[str]:
        return {str(attrs["id"]) for _, attrs in self.tags if attrs.get("id")}


def write(tmp_path: Path, stats: Stats, ledger: Any = None, **meta: Any) -> tuple[str, Any]:
    meta = {"target": "https://gw.example:8443", "scenario": "soak", "devices": 1000} | meta
    json_path, html_path = report.write(tmp_path / "out", stats, ledger, meta)
    assert json_path == tmp_path / "out" / "report.json"
    assert html_path == tmp_path / "out" / "report.html"
    return html_path.read_text(), msgspec.json.decode(json_path.read_bytes())


# -- report.html ------------------------------------------------------------------------------


def test_html_is_self_contained(tmp_path: Path) -> None:
    page_text, _ = write(tmp_path, RecordedStats(busy_run(), TOTALS), {"ok": True})
    page = Page(page_text)
    loaders = {"script", "link", "img", "iframe", "object", "embed", "image", "use", "audio"}
    assert not [tag for tag, _ in page.tags if tag in loaders]
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in {"src", "href", "xlink:href", "action", "data", "poster"}:
                pytest.fail(f"<{tag} {name}={value!r}> loads something")
    lowered = page_text.lower()
    assert "url(" not in lowered
    assert "@import" not in lowered
    assert "@font-face" not in lowered
    # The only address on the page is the target, as text in the run table.
    assert lowered.count("://") == 1
    assert "https://gw.example:8443</td>" in page_text
    csp = [a for a in page.named("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp
    assert "default-src 'none'" in str(csp[0]["content"])


def test_html_escapes_hostile_strings(tmp_path: Path) -> None:
    buckets = busy_run(5)
    buckets[2].errors[HOSTILE] = 3
    ledger = {"ok": False, "problems": [{"device_id": HOSTILE, "command_id": "c1"}]}
    page_text, _ = write(
        tmp_path,
        RecordedStats(buckets, {HOSTILE: {"sessions": 1}}),
        ledger,
        target=HOSTILE,
        scenario=HOSTILE,
        **{HOSTILE: HOSTILE},
    )
    assert HOSTILE not in page_text
    assert "<script" not in page_text.lower()
    page = Page(page_text)
    assert not page.named("script")
    assert not page.named("img")
    assert all(not k.startswith("on") for _, attrs in page.tags for k in attrs)
    # Shown as the text it is: in the title, the run table, the error legend, totals, ledger.
    text = "".join(page.text)
    assert text.count(HOSTILE) >= 7
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page_text


def test_html_includes_each_chart(tmp_path: Path) -> None:
    page_text, _ = write(tmp_path, RecordedStats(busy_run(), TOTALS), None)
    page = Page(page_text)
    assert {f"chart-{key}" for key in CHARTS} <= page.by_id()
    sections = page_text.split('<section id="chart-')[1:]
    assert [s.split('"', 1)[0] for s in sections] == list(CHARTS)
    for section in sections:
        assert "<svg" in section
        assert "<path" in section  # a line, not just axes
    legends = {s.split('"', 1)[0]: s for s in sections}
    for key, names in {
        "throughput": ("sessions/s", "messages/s"),
        "latency": ("p50", "p99"),
        "errors": ("transport_connect", "transport_timeout"),
        "commands": ("received/s", "answered/s"),
        "cpu": ("client CPU",),
    }.items():
        for name in names:
            assert f"</span>{name}</li>" in legends[key], (key, name)
    # The latency line breaks where no session ended instead of bridging the gap.
    latency_paths = legends["latency"].split('d="')[1:]
    assert any(p.split('"', 1)[0].count("M") > 1 for p in latency_paths)


def test_html_without_errors_or_data_says_so(tmp_path: Path) -> None:
    quiet = busy_run(3)
    for bucket in quiet:
        bucket.errors = {}
    page_text, _ = write(tmp_path, RecordedStats(quiet), None)
    errors = page_text.split('<section id="chart-errors">', 1)[1].split("</section>", 1)[0]
    assert "no errors" in errors
    assert "<svg" not in errors
    empty_text, _ = write(tmp_path, RecordedStats([]), None)
    assert {f"chart-{key}" for key in CHARTS} <= Page(empty_text).by_id()


def test_client_saturation_is_called_out(tmp_path: Path) -> None:
    calm, _ = write(tmp_path, RecordedStats(busy_run(cpu=0.5)), None)
    assert "The client was saturated" not in calm
    assert "stayed below 90% of a core" in calm
    hot = busy_run(cpu=0.5)
    for bucket in hot[10:14]:
        bucket.client_cpu = 0.97
    saturated, _ = write(tmp_path, RecordedStats(hot), None)
    assert "The client was saturated" in saturated
    assert "in 4 of 30 seconds (peak 97%" in saturated
    cpu = saturated.split('<section id="chart-cpu">', 1)[1]
    assert "90%: saturated" in cpu  # the threshold drawn on the chart


@pytest.mark.parametrize(
    ("ledger", "verdict"),
    [
        ({"ok": True, "deliveries": 120, "problems": []}, "PASS"),
        ({"ok": False, "deliveries": 120, "problems": [{"kind": "lost"}]}, "FAIL"),
        (None, "Not checked"),
    ],
)
def test_ledger_verdict(tmp_path: Path, ledger: dict[str, Any] | None, verdict: str) -> None:
    page_text, data = write(tmp_path, RecordedStats(busy_run(3)), ledger)
    section = page_text.split('id="verdict"', 1)[1].split("<h2", 1)[0]
    assert verdict in section
    assert data["ledger"] == ledger
    if ledger and ledger["problems"]:
        assert "<th>kind</th>" in section
        assert "<td>lost</td>" in section


def test_ledger_struct_rendered_by_fields(tmp_path: Path) -> None:
    class Result(msgspec.Struct):
        ok: bool
        checked: int
        lost: list[str]

    page_text, data = write(tmp_path, RecordedStats(busy_run(3)), Result(False, 7, ["d1/c9"]))
    assert data["ledger"] == {"ok": False, "checked": 7, "lost": ["d1/c9"]}
    section = page_text.split('id="verdict"', 1)[1].split("<h2", 1)[0]
    assert "FAIL" in section
    assert "<th>checked</th>" in section
    assert "d1/c9" in section


def test_ledger_result_of_the_check(tmp_path: Path) -> None:
    clean = LedgerResult()
    clean.devices_checked = 40
    for _ in range(12):
        clean.add("ok", "SIM000001-W0000001", "c1", "gateway: acknowledged")
    clean.add("not_now", "SIM000001-I0000002", "u2", "gateway: not_now")
    page_text, data = write(tmp_path, RecordedStats(busy_run(3)), clean)
    assert data["ledger"]["passed"] is True
    assert data["ledger"]["counts"]["ok"] == 12
    section = page_text.split('id="verdict"', 1)[1].split("<h2", 1)[0]
    assert "PASS on all 40 devices checked: no command lost" in section
    assert "<th>not_now</th>" in section

    broken = LedgerResult()
    broken.devices_checked = 40
    broken.add("lost", HOSTILE, "c7", f"gateway: sent, but the device said {HOSTILE}")
    broken.add("duplicated", "SIM000001-W0000003", "c8", "handed out again")
    broken.unreadable["HTTP 503"] = 2
    page_text, data = write(tmp_path, RecordedStats(busy_run(3)), broken)
    assert data["ledger"]["passed"] is False
    assert data["ledger"]["problems"][0]["device_id"] == HOSTILE
    section = page_text.split('id="verdict"', 1)[1].split("<h2", 1)[0]
    assert "FAIL: 2 problems, devices whose deliveries could not be read" in section
    assert "<th>category</th><th>device_id</th><th>command_id</th><th>detail</th>" in section
    assert "HTTP 503" in section
    assert HOSTILE not in page_text


def test_report_of_a_recorded_run(tmp_path: Path) -> None:
    now, cpu = [0.0], [0.0]
    stats = Stats(clock=lambda: now[0], cpu=lambda: cpu[0])
    for second_ in range(5):
        now[0] = second_ + 0.5
        for _ in range(3):
            stats.message("windows")
        stats.message(HOSTILE)
        stats.session("windows", 0.040)
        stats.session("ios", 0.300, error="silent" if second_ == 2 else None)
        stats.command("windows", "received")
        stats.command("windows", "answered")
        cpu[0] += 0.5
        now[0] = second_ + 1.0
        stats.tick()  # the runner closes each second as it passes
    now[0] = 5.0
    stats.session(HOSTILE, 1.0, error=HOSTILE)
    now[0] = 6.5
    stats.session("windows", 0.040)  # in the second still open when the run stops
    stats.stop()
    page_text, data = write(tmp_path, stats, None)
    timeline = msgspec.convert(data["timeline"], list[Bucket])
    # Every second, the one the run stopped in too (half a second long).
    assert [b.sessions for b in timeline] == [2, 2, 2, 2, 2, 1, 1]
    assert [b.span for b in timeline] == [1.0] * 6 + [0.5]
    assert timeline[2].errors == {"silent": 1}
    assert data["totals"]["all"]["sessions"] == 12
    seen = page_text.split("<th>seen</th><td>", 1)[1].split("</td>", 1)[0]
    assert seen == (
        "6.5 s: 12 sessions, 20 messages, 5 commands received, 5 answered, 1 error, "
        "1 silent on purpose"
    )
    # Going silent is the scenario's doing: not among the gateway's failures.
    sessions = page_text.split('<p id="sessions">', 1)[1].split("</p>", 1)[0]
    assert sessions.startswith("1 session failed at the gateway or on the way to it (")
    assert "1 went silent on purpose (the scenario&#x27;s timeout rate)" in sessions
    assert "silent 1" not in sessions
    assert set(data["totals"]["platforms"]) == {"windows", "ios", HOSTILE}
    totals = page_text.split('id="totals-table"', 1)[1].split("</table>", 1)[0]
    assert "<th>all</th><th>" in totals
    assert "<th>windows</th>" in totals
    assert "<th>errors: silent</th>" in totals
    assert "<th>latency p99 (ms)</th>" in totals
    assert HOSTILE not in page_text
    assert "stayed below 90% of a core (peak 50%," in page_text


def test_silent_devices_are_no_failure_of_the_gateway(tmp_path: Path) -> None:
    quiet = busy_run(3)
    for bucket in quiet:
        bucket.errors = {"silent": 2}
    totals = {"all": {"sessions": 300, "errors": {"silent": 6}}}
    page_text, _ = write(tmp_path, RecordedStats(quiet, totals), {"passed": True})
    sessions = page_text.split('<p id="sessions">', 1)[1].split("</p>", 1)[0]
    assert sessions.startswith("No session failed at the gateway or on the way to it.")
    assert "6 went silent on purpose" in sessions
    seen = page_text.split("<th>seen</th><td>", 1)[1].split("</td>", 1)[0]
    assert seen.endswith("0 errors, 6 silent on purpose")


def test_notes_and_versions_are_shown_with_the_run(tmp_path: Path) -> None:
    notes = [
        "queuing workload: HTTP 503 from POST /api/v1/commands",
        f"device SIM000001-W0000001: RuntimeError: {HOSTILE}",
    ]
    versions = {"mdmgate": "0.9.0", "python": "3.11.7", "trio": "0.35.0", "h11": "0.16.0"}
    page_text, data = write(
        tmp_path, RecordedStats(busy_run(3)), None, notes=notes, versions=versions
    )
    assert data["meta"]["notes"] == notes
    shown = page_text.split('<div class="note" id="notes">', 1)[1].split("</div>", 1)[0]
    assert "<li>queuing workload: HTTP 503 from POST /api/v1/commands</li>" in shown
    assert "RuntimeError: &lt;script&gt;" in shown
    assert HOSTILE not in page_text
    run = page_text.split('<table id="run">', 1)[1].split("</table>", 1)[0]
    assert "<th>notes</th>" not in run  # shown once, as a list
    assert "<th>h11</th><td>0.16.0</td>" in run
    assert "<th>trio</th><td>0.35.0</td>" in run
    quiet, _ = write(tmp_path, RecordedStats(busy_run(3)), None, notes=[])
    assert 'id="notes"' not in quiet


def test_long_run_is_drawn_with_bounded_points(tmp_path: Path) -> None:
    day = [Bucket(t=float(t), sessions=t % 50, messages=t % 200) for t in range(86_400)]
    page_text, data = write(tmp_path, RecordedStats(day), None)
    assert len(data["timeline"]) == 86_400  # the JSON keeps every second
    throughput = page_text.split('<section id="chart-throughput">', 1)[1].split("</section>")[0]
    for path in throughput.split(' d="')[1:]:
        assert path.split('"', 1)[0].count("L") < 1300
    assert len(page_text) < 400_000


# -- report.json ------------------------------------------------------------------------------


def test_json_round_trips(tmp_path: Path) -> None:
    buckets = busy_run()
    ledger = {"ok": True, "deliveries": 10, "problems": []}
    meta = {
        "target": "https://gw.example:8443",
        "scenario": "soak.toml",
        "devices": 1000,
        "duration": 60.0,
        "versions": {"mdmgate": "0.9.0", "python": "3.11.7"},
        "report_dir": tmp_path,  # a Path is written as its text
    }
    json_path, _ = report.write(tmp_path, RecordedStats(buckets, TOTALS), ledger, meta)
    data = msgspec.json.decode(json_path.read_bytes())
    assert set(data) == {"meta", "totals", "timeline", "ledger"}
    assert msgspec.convert(data["timeline"], list[Bucket]) == buckets
    assert data["totals"] == TOTALS
    assert data["ledger"] == ledger
    assert data["meta"] == {**meta, "report_dir": str(tmp_path)}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- the live view ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def second(t: int, **counts: Any) -> Bucket:
    return Bucket(t=float(t), **({"sessions": 10, "messages": 40, "client_cpu": 0.25} | counts))


def test_live_logs_a_line_every_ten_seconds_off_a_terminal() -> None:
    clock, out = FakeClock(), io.StringIO()
    stats = RecordedStats([])
    live = progress.Live(stats, out, tty=False, clock=clock)
    for t in range(25):
        stats.buckets.append(
            second(
                t,
                errors={"transport_timeout": 1} if t == 3 else {},
                latency_p50=0.02,
                latency_p99=0.25,
                received=5,
                answered=4,
                active=17,
            )
        )
        clock.now += 1
        live.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("0:00:10 active 17 ")
    assert "sessions 10.0/s messages 40.0/s" in lines[0]
    assert "p50 20ms p99 250ms" in lines[0]
    assert "errors transport_timeout=1" in lines[0]
    assert "cpu 25%" in lines[0]
    assert lines[1].startswith("0:00:20 ")
    assert "received 100 answered 80" in lines[1]
    assert "\x1b" not in out.getvalue()
    live.final()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("done 0:00:25 ")
    assert "received 125 answered 100" in last
    live.final()  # once only
    for _ in range(10):
        clock.now += 1
        live.tick()  # the run checks its ledger: the view stays as it ended
    assert len(out.getvalue().splitlines()) == 3


def test_live_counts_the_filling_second_once() -> None:
    # The timeline's last second may still be counting: it is re-read, never added twice.
    clock, out = FakeClock(), io.StringIO()
    stats = RecordedStats([second(0, sessions=5)])
    live = progress.Live(stats, out, tty=False, clock=clock)
    for _ in range(9):
        clock.now += 1
        live.tick()
    stats.buckets[0] = second(0, sessions=10)
    stats.buckets.append(second(1, sessions=20))
    clock.now += 1
    live.tick()
    assert "sessions 3.0/s" in out.getvalue()  # 30 sessions over 10 s


def test_live_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    clock, out = FakeClock(), io.StringIO()
    stats = RecordedStats([second(0, errors={"transport_reset": 2}, active=3)])
    live = progress.Live(stats, out, tty=True, clock=clock)
    clock.now += 1
    live.tick()
    first = out.getvalue()
    assert not first.startswith("\x1b")
    assert len(first.splitlines()) == 5
    assert "devices in a session 3" in first
    assert "errors   transport_reset 2" in first
    stats.buckets.append(second(1, client_cpu=0.95))
    clock.now += 1
    live.tick()
    redraw = out.getvalue()[len(first) :]
    assert redraw.startswith("\x1b[5F\x1b[J")
    assert "client CPU 95% of a core (client saturated: the numbers measure it" in redraw
    stats.buckets.append(second(2, errors={"status \x1b[2J\x07": 1}))
    clock.now += 1
    live.final()
    assert out.getvalue().splitlines()[-5].endswith("done 0:00:03   devices in a session 0")
    assert "errors   status ?[2J? 1  transport_reset 2" in out.getvalue()
    assert out.getvalue().count("\x1b") == 4  # the view's own: up, clear; up, clear


def test_live_fits_lines_to_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # A wrapped line would throw the next redraw off by one line.
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    live = progress.Live(RecordedStats([second(0, client_cpu=0.99)]), out, tty=True)
    live.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert max(len(line) for line in lines) == 39


async def test_live_run_redraws_every_second(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    stats = RecordedStats([])
    live = progress.Live(stats, out, tty=False, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(live.run)
        for t in range(21):
            stats.buckets.append(second(t))
            await trio.sleep(1)  # virtual: the autojump clock moves on when all wait
        nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["0:00:10", "0:00:20"]


def test_live_over_recorded_statistics() -> None:
    now = [0.0]
    stats = Stats(clock=lambda: now[0], cpu=lambda: now[0] / 2)
    out = io.StringIO()
    live = progress.Live(stats, out, tty=False, clock=lambda: now[0])
    for t in range(20):
        now[0] = t + 0.5
        stats.message("windows")
        stats.message("windows")
        stats.session(
            "windows", 0.5 if t == 19 else 0.080, error="transport_reset" if t == 4 else None
        )
        now[0] = t + 1.0
        live.tick()
    now[0] = 20.5
    stats.command("windows", "received")  # in the second still open at the end
    live.final()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("0:00:10 active 0 sessions 1.0/s messages 2.0/s p50 79ms p99 79ms")
    assert "errors transport_reset=1 cpu 50%" in lines[0]
    assert lines[1].startswith("0:00:20 active 0 sessions 1.0/s messages 2.0/s")
    # The whole run's percentiles, not the last second's (80 ms, within the 2 % bins).
    assert lines[2].startswith("done 0:00:20 active 0 sessions 1.0/s messages 2.0/s p50 79ms")
    assert " received 1 answered 0 " in lines[2]


def test_live_survives_a_closed_file() -> None:
    out = io.StringIO()
    live = progress.Live(RecordedStats([second(0)]), out, tty=True)
    out.close()
    for _ in range(12):
        live.tick()
    live.final()


def test_live_survives_a_closed_pipe() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as out:
        live = progress.Live(RecordedStats([second(0)]), out, tty=False)
        for _ in range(20):
            live.tick()
        live.final()


def test_a_process_whose_reader_left_exits_cleanly() -> None:
    # Once the view found the reader gone, the command's own later output (and Python's last
    # flush at exit) must not fail the run with a BrokenPipeError.
    child = textwrap.dedent(
        """
        import sys
        from mdmgate.simulate.progress import Live
        from mdmgate.simulate.stats import Bucket, Stats

        class One(Stats):
            def timeline(self):
                return [Bucket(t=0.0, sessions=1)]

        sys.stdin.read()  # the parent closed its end of our stdout by now
        live = Live(One(), sys.stdout, tty=False)
        for _ in range(30):
            live.tick()
        live.final()
        print("report written to ...")  # what the command prints once the run is over
        print("finished", file=sys.stderr)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    assert proc.stderr is not None
    proc.stdout.close()
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err.strip() == "finished"
