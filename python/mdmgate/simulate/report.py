"""The report of a simulate run: ``report.json`` for machines and ``report.html`` for people.

The HTML page stands alone: its CSS is inline and its charts are SVG drawn here, so it opens
from a CI artefact or a mail attachment with nothing fetched from the network (its Content
Security Policy forbids fetching anything at all). Every string that came from the scenario,
the target or the gateway is escaped: a device id or an error text is data, never markup.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from mdmgate.simulate.ledger import LedgerResult
from mdmgate.simulate.stats import ENROLL, SILENT, SIMULATOR, Bucket, Stats, gateway_fault

__all__ = ["SATURATED_CPU", "write"]

#: A client above this share of a core is measuring itself: the page says so.
SATURATED_CPU = 0.9
#: Points per chart line at most; a longer run is averaged (or maxed) into this many.
_MAX_POINTS = 1200
#: Rows of a list shown in full before the rest is summarised (the JSON has them all).
_MAX_ROWS = 200
#: Meta keys shown first, in this order; any others follow, sorted.
_META_ORDER = ("target", "scenario", "devices", "duration", "versions")

# Okabe-Ito: told apart by most colour-blind readers.
_PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")

# The chart canvas, in SVG user units.
_W, _H = 960, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 12, 30

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;
margin:0 auto;max-width:1000px;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;margin:4px 0 12px}
th,td{border-bottom:1px solid #ddd;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.verdict{font-weight:600;padding:8px 12px;border-radius:4px;margin:8px 0}
.pass{background:#e3f4ea;border-left:6px solid #009e73}
.fail{background:#fbe5dc;border-left:6px solid #d55e00}
.none{background:#eee;border-left:6px solid #888}
.note{background:#fff6d6;border-left:6px solid #e69f00;padding:8px 12px;margin:8px 0}
.ok{background:#eef4fa;border-left:6px solid #0072b2;padding:8px 12px;margin:8px 0}
svg{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#555}
.legend{margin:2px 0 0;padding:0;list-style:none}
.legend li{display:inline-block;margin-right:16px}
.legend span{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:5px}
.empty{color:#777;font-style:italic}
"""


class _Series(NamedTuple):
    name: str
    values: list[float | None]
    #: How seconds merge into one point on a long run: the mean, or the worst (``max``).
    merge: Callable[[list[float]], float]


class _Chart(NamedTuple):
    key: str
    title: str
    unit: str
    series: list[_Series]
    #: A horizontal line drawn across (value, label), e.g. the saturation threshold.
    reference: tuple[float, str] | None = None
    #: Said instead of a chart when no series has a value.
    empty: str = "no data"


def write(
    directory: Path,
    stats: Stats,
    ledger: LedgerResult | Mapping[str, Any] | None,
    meta: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory``; return their paths.

    ``ledger`` is the ledger check's result (or any mapping or msgspec Struct of fields), or
    ``None`` when the run did not check one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    timeline = stats.timeline()
    totals = stats.totals()
    ledger_data = _ledger_builtins(ledger) if ledger is not None else None
    document = {
        "meta": _builtins(dict(meta)),
        "totals": _builtins(totals),
        "timeline": _builtins(timeline),
        "ledger": ledger_data,
    }
    json_path = directory / "report.json"
    html_path = directory / "report.html"
    _replace(json_path, msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
    page = render(timeline, document["totals"], ledger_data, document["meta"])
    _replace(html_path, page.encode())
    return json_path, html_path


def render(
    timeline: Sequence[Bucket], totals: Any, ledger: Any | None, meta: Mapping[str, Any]
) -> str:
    """The HTML page, from plain data (``msgspec.to_builtins`` of totals, ledger and meta)."""
    title = "mdmgate simulate"
    if meta.get("scenario"):
        title += f": {_scalar(meta['scenario'])}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Even if a string escaped the escaping, the page may neither run nor fetch anything.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _run_table(meta, totals, timeline),
        _notes(meta.get("notes")),
        '<h2 id="verdict">Ledger verdict</h2>',
        _ledger_section(ledger),
        _sessions_note(totals, timeline),
        '<h2 id="client-cpu">Client or server?</h2>',
        _cpu_note(timeline),
        '<h2 id="charts">Over time</h2>',
        *(_chart_section(chart, timeline) for chart in _charts(timeline)),
        '<h2 id="totals">Totals</h2>',
        _totals_section(totals),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# -- sections ---------------------------------------------------------------------------------


def _run_table(meta: Mapping[str, Any], totals: Any, timeline: Sequence[Bucket]) -> str:
    keys = [k for k in _META_ORDER if k in meta]
    keys += sorted(k for k in meta if k not in _META_ORDER and k != "notes")
    rows = [f"<tr><th>{_e(k)}</th><td>{_value(meta[k])}</td></tr>" for k in keys]
    rows.append(f"<tr><th>seen</th><td>{_e(_seen(totals, timeline))}</td></tr>")
    return '<table id="run">' + "".join(rows) + "</table>"


def _seen(totals: Any, timeline: Sequence[Bucket]) -> str:
    # The whole run's counts when the statistics give them, else the timeline's.
    whole = totals.get("all") if isinstance(totals, Mapping) else None
    counts = {
        name: sum(getattr(b, name) for b in timeline)
        for name in ("sessions", "messages", "received", "answered")
    }
    seconds: float = sum(b.span for b in timeline)
    if isinstance(whole, Mapping):
        for name in counts:
            if isinstance(whole.get(name), int):
                counts[name] = whole[name]
        if isinstance(whole.get("seconds"), int | float):
            seconds = whole["seconds"]
    failed, silent, simulator = _failures(totals, timeline)
    text = (
        f"{_number(seconds)} s: {counts['sessions']:,} sessions, {counts['messages']:,} "
        f"messages, {counts['received']:,} commands received, {counts['answered']:,} "
        f"answered, {_count(sum(failed.values()), 'error')}"
    )
    if silent:
        text += f", {silent:,} silent on purpose"
    if simulator:
        text += f", {simulator:,} simulator faults"
    enrolled = _enrollment(totals)
    if enrolled is not None:
        text += f"; {_count(_int(enrolled, 'enrolled'), 'device')} enrolled"
    return text


def _enrollment(totals: Any) -> Mapping[str, Any] | None:
    """The whole fleet's enrollment totals, in a run whose devices enrolled."""
    enroll = totals.get(ENROLL) if isinstance(totals, Mapping) else None
    whole = enroll.get("all") if isinstance(enroll, Mapping) else None
    return whole if isinstance(whole, Mapping) else None


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    return value if isinstance(value, int) else 0


def _failures(totals: Any, timeline: Sequence[Bucket]) -> tuple[dict[str, int], int, int]:
    """Session errors by kind that count against the gateway (or the network), then the
    sessions that went silent on purpose and the simulator's own faults."""
    whole = totals.get("all") if isinstance(totals, Mapping) else None
    errors: dict[str, int] = {}
    if isinstance(whole, Mapping) and isinstance(whole.get("errors"), Mapping):
        errors = {str(k): v for k, v in whole["errors"].items() if isinstance(v, int)}
    else:
        for bucket in timeline:
            for kind, n in bucket.errors.items():
                errors[kind] = errors.get(kind, 0) + n
    # Enrollment failures are told apart (_sessions_note): no session ran for them.
    failed = {
        k: v
        for k, v in sorted(errors.items())
        if v and gateway_fault(k) and not k.startswith(f"{ENROLL}_")
    }
    return failed, errors.get(SILENT, 0), errors.get(SIMULATOR, 0)


def _notes(notes: Any) -> str:
    if not notes:
        return ""
    items = notes if isinstance(notes, list | tuple) else [notes]
    rows = "".join(f"<li>{_e(_scalar(n))}</li>" for n in items[:_MAX_ROWS])
    return f'<div class="note" id="notes">Notes from the run:<ul>{rows}</ul></div>'


def _sessions_note(totals: Any, timeline: Sequence[Bucket]) -> str:
    """What the sessions' failures say about the gateway: a device going silent on purpose
    is the scenario's doing, and a simulator fault the simulator's, not the gateway's."""
    failed, silent, simulator = _failures(totals, timeline)
    parts = []
    if failed:
        n = sum(failed.values())
        kinds = ", ".join(f"{k} {v:,}" for k, v in failed.items())
        parts.append(
            f"{_count(n, 'session')} failed at the gateway or on the way to it ({kinds}): "
            "the charts show when."
        )
    else:
        parts.append("No session failed at the gateway or on the way to it.")
    if silent:
        parts.append(
            f"{silent:,} went silent on purpose (the scenario's timeout rate): the devices' "
            "doing, not the gateway's; what they took comes again at their next check-in."
        )
    if simulator:
        parts.append(f"{simulator:,} hit a fault of the simulator itself (see the notes).")
    enrolled = _enrollment(totals)
    if enrolled is not None:
        errors = enrolled.get("errors")
        kinds = ", ".join(
            f"{k} {v:,}" for k, v in (errors.items() if isinstance(errors, Mapping) else ())
        )
        parts.append(
            f"{_count(_int(enrolled, 'enrolled'), 'device')} enrolled"
            + (
                f"; {_count(_int(enrolled, 'failed'), 'enrollment')} failed ({kinds})."
                if kinds
                else "; no enrollment failed."
            )
        )
    return f'<p id="sessions">{_e(" ".join(parts))}</p>'


def _ledger_section(ledger: Any | None) -> str:
    if ledger is None:
        return (
            '<p class="verdict none">Not checked: this run kept no ledger or could not read '
            "the gateway's admin API, so lost, duplicated or misattributed commands were not "
            "looked for.</p>"
        )
    if not isinstance(ledger, Mapping):
        return _value(ledger)
    verdict = _verdict(ledger)
    counts = ledger.get("counts")
    problems = ledger.get("problems")
    unreadable = ledger.get("unreadable")
    if verdict is None:
        banner = '<p class="verdict none">Ledger result (no overall verdict given)</p>'
    elif verdict:
        checked = ledger.get("devices_checked")
        of = f" on all {_scalar(checked)} devices checked" if checked is not None else ""
        banner = (
            f'<p class="verdict pass">PASS{_e(of)}: no command lost, duplicated or '
            "misattributed, and every answer stored as the device gave it.</p>"
        )
    else:
        found = []
        if isinstance(counts, Mapping):
            n = sum(v for k, v in counts.items() if k in _PROBLEMS and isinstance(v, int))
            found.append(f"{n:,} problem{'s' if n != 1 else ''}")
        if unreadable:
            found.append("devices whose deliveries could not be read")
        banner = (
            '<p class="verdict fail">FAIL: '
            + _e(", ".join(found) if found else "see below")
            + " (lost, duplicated or misattributed commands, or answers stored other than "
            "given, fail the run).</p>"
        )
    if not isinstance(counts, Mapping):
        return banner + _value(ledger)
    parts = [banner, _counts_table(counts)]
    if problems:
        parts.append(
            f"<h3>Problems (the first {len(problems)} in detail; the counts above are all)"
            "</h3>" + _value(problems)
        )
    if unreadable:
        parts.append("<h3>Devices whose deliveries could not be read</h3>" + _value(unreadable))
    rest = {k: v for k, v in ledger.items() if k not in _LEDGER_SHOWN}
    if rest:
        parts.append(_value(rest))
    return "".join(parts)


# What each ledger category means, in the page's words (simulate/ledger.py decides them).
_CATEGORY_TEXT = {
    "ok": "answered, and stored at the gateway with the answer the device gave",
    "not_now": "deferred by the device (NotNow); open at the gateway as not_now",
    "accepted": "accepted by the device (202), outcome to come; open at the gateway",
    "unfinished": "queued or handed out, not answered yet when the run ended",
    "failed": "given up by the gateway after offers the device never answered",
    "retried": "handed out again legitimately (after NotNow, or an answer that never left)",
    "lost": "the device's answer reached the gateway, which does not hold it",
    "duplicated": "handed out again after the device's answer was confirmed",
    "misattributed": "received by a device it was not queued for, or stored from one",
    "mismatched": "stored with another answer than the device gave",
    "phantom": "stored as answered, though the device never answered it",
}
_PROBLEMS = frozenset(("lost", "duplicated", "misattributed", "mismatched", "phantom"))
_LEDGER_SHOWN = frozenset(("passed", "ok", "counts", "problems", "unreadable", "devices_checked"))


def _counts_table(counts: Mapping[str, Any]) -> str:
    rows = []
    for category, count in counts.items():
        problem = category in _PROBLEMS and isinstance(count, int) and count > 0
        mark = ' style="color:#b33a00;font-weight:600"' if problem else ""
        rows.append(
            f"<tr{mark}><th>{_e(category)}</th>{_cell(count)}"
            f"<td>{_e(_CATEGORY_TEXT.get(str(category), ''))}</td></tr>"
        )
    return '<table id="ledger-counts"><tr><th>category</th><th>count</th><th></th></tr>' + (
        "".join(rows) + "</table>"
    )


def _verdict(ledger: Mapping[str, Any]) -> bool | None:
    for key in ("passed", "ok"):
        if isinstance(ledger.get(key), bool):
            return bool(ledger[key])
    return None


def _totals_section(totals: Any) -> str:
    if not totals:
        return '<p class="empty">no totals recorded</p>'
    if not (isinstance(totals, Mapping) and isinstance(totals.get("all"), Mapping)):
        return _value(totals)
    platforms = totals.get("platforms")
    columns: list[tuple[str, Mapping[str, Any]]] = [("all", totals["all"])]
    if isinstance(platforms, Mapping):
        columns += [(str(k), v) for k, v in platforms.items() if isinstance(v, Mapping)]
    kinds = sorted(
        {str(k) for _, c in columns if isinstance(c.get("errors"), Mapping) for k in c["errors"]}
    )
    # (row label, table inside the column or "", key, milliseconds from seconds)
    rows: list[tuple[str, str, str, bool]] = [
        ("sessions", "", "sessions", False),
        ("sessions/s", "", "sessions_per_second", False),
        ("messages", "", "messages", False),
        ("messages/s", "", "messages_per_second", False),
        ("commands received", "", "received", False),
        ("commands answered", "", "answered", False),
    ]
    rows += [(f"errors: {kind}", "errors", kind, False) for kind in kinds]
    rows += [
        (f"latency {label} (ms)", "latency", key, True)
        for key, label in (
            ("p50", "p50"),
            ("p90", "p90"),
            ("p99", "p99"),
            ("p999", "p99.9"),
            ("max", "max"),
            ("mean", "mean"),
        )
    ]
    head = "".join(f"<th>{_e(name)}</th>" for name, _ in columns)
    body = "".join(
        f"<tr><th>{_e(label)}</th>"
        + "".join(_cell(_pick(c, table, key, ms)) for _, c in columns)
        + "</tr>"
        for label, table, key, ms in rows
    )
    seconds = totals["all"].get("seconds")
    note = (
        f"<p>Over {_e(_scalar(seconds))} s; latency is a whole session's, from the device's "
        "first message to the server's last answer.</p>"
        if isinstance(seconds, int | float)
        else ""
    )
    table = f'{note}<table id="totals-table"><tr><th></th>{head}</tr>{body}</table>'
    return table + _enrollment_table(totals.get(ENROLL))


def _enrollment_table(enroll: Any) -> str:
    """Each platform's enrollments: a phase of its own, apart from the check-ins."""
    if not isinstance(enroll, Mapping) or not isinstance(enroll.get("all"), Mapping):
        return ""
    columns: list[tuple[str, Mapping[str, Any]]] = [("all", enroll["all"])]
    platforms = enroll.get("platforms")
    if isinstance(platforms, Mapping):
        columns += [(str(k), v) for k, v in platforms.items() if isinstance(v, Mapping)]
    kinds = sorted(
        {str(k) for _, c in columns if isinstance(c.get("errors"), Mapping) for k in c["errors"]}
    )
    rows: list[tuple[str, str, str, bool]] = [
        ("enrollments", "", "sessions", False),
        ("enrolled", "", "enrolled", False),
        ("failed", "", "failed", False),
        *((f"errors: {kind}", "errors", kind, False) for kind in kinds),
        *((f"latency {key} (ms)", "latency", key, True) for key in ("p50", "p99", "max")),
    ]
    head = "".join(f"<th>{_e(name)}</th>" for name, _ in columns)
    body = "".join(
        f"<tr><th>{_e(label)}</th>"
        + "".join(_cell(_pick(c, table, key, ms)) for _, c in columns)
        + "</tr>"
        for label, table, key, ms in rows
    )
    return (
        '<h3 id="enrollment">Enrollment</h3><p>Each device enrolled at its first check-in '
        "(Windows: discovery, policy and certificate request; Apple: profile and SCEP); "
        "latency is the whole enrollment's.</p>"
        f'<table id="enrollment-table"><tr><th></th>{head}</tr>{body}</table>'
    )


def _pick(column: Mapping[str, Any], table: str, key: str, ms: bool) -> Any:
    inner = column.get(table) if table else column
    value = inner.get(key) if isinstance(inner, Mapping) else None
    if ms and isinstance(value, int | float) and not isinstance(value, bool):
        return value * 1000
    return value


def _cpu_note(timeline: Sequence[Bucket]) -> str:
    if not timeline:
        return '<p class="empty">no seconds recorded</p>'
    shares = [share for b in timeline if (share := _rate(b.client_cpu, b.span)) is not None]
    busy = [share for share in shares if share > SATURATED_CPU]
    peak = max(shares, default=0.0)
    seconds = sum(b.span for b in timeline)
    mean = sum(b.client_cpu for b in timeline) / seconds if seconds > 0 else 0.0
    if busy:
        return (
            f'<p class="note">The client was saturated: above {SATURATED_CPU:.0%} of a core '
            f"in {len(busy):,} of {len(timeline):,} seconds (peak {peak:.0%}, mean "
            f"{mean:.0%}). In those seconds this process, not the gateway, was the "
            "bottleneck: the latencies include time the simulated devices waited for the "
            "client's own CPU, and the throughput is a floor for what the gateway can do, "
            "not its ceiling. Run fewer devices per process, or several processes, to "
            "measure the gateway.</p>"
        )
    return (
        f'<p class="ok">The client stayed below {SATURATED_CPU:.0%} of a core (peak '
        f"{peak:.0%}, mean {mean:.0%}): it was not the bottleneck, so the latencies are the "
        "gateway's and the network's. The throughput is what the scenario's cadence and "
        "concurrency asked for (a gateway that keeps up serves just that); its limit is "
        "found by asking for more.</p>"
    )


def _charts(timeline: Sequence[Bucket]) -> list[_Chart]:
    kinds = sorted({kind for b in timeline for kind in b.errors})
    return [
        _Chart(
            "throughput",
            "Throughput",
            "per second",
            [
                _Series("sessions/s", [_rate(b.sessions, b.span) for b in timeline], _mean),
                _Series("messages/s", [_rate(b.messages, b.span) for b in timeline], _mean),
                *(
                    [
                        _Series(
                            "enrollments/s",
                            [_rate(b.enrollments, b.span) for b in timeline],
                            _mean,
                        )
                    ]
                    if any(b.enrollments for b in timeline)
                    else []
                ),
            ],
        ),
        _Chart(
            "latency",
            "Session latency",
            "ms",
            [
                _Series("p50", [_times1000(b.latency_p50) for b in timeline], _mean),
                _Series("p99", [_times1000(b.latency_p99) for b in timeline], max),
            ],
            empty="no session ended",
        ),
        _Chart(
            "errors",
            "Errors by kind",
            "per second",
            [
                _Series(kind, [_rate(b.errors.get(kind, 0), b.span) for b in timeline], _mean)
                for kind in kinds
            ],
            empty="no errors",
        ),
        _Chart(
            "commands",
            "Commands",
            "per second",
            [
                _Series("received/s", [_rate(b.received, b.span) for b in timeline], _mean),
                _Series("answered/s", [_rate(b.answered, b.span) for b in timeline], _mean),
            ],
        ),
        _Chart(
            "active",
            "Devices in a session",
            "devices",
            [_Series("active", [float(b.active) for b in timeline], _mean)],
        ),
        _Chart(
            "cpu",
            "Client CPU",
            "% of a core",
            [_Series("client CPU", [_percent(b.client_cpu, b.span) for b in timeline], _mean)],
            reference=(SATURATED_CPU * 100, f"{SATURATED_CPU:.0%}: saturated"),
        ),
    ]


def _chart_section(chart: _Chart, timeline: Sequence[Bucket]) -> str:
    head = f'<section id="chart-{chart.key}"><h3>{_e(chart.title)} ({_e(chart.unit)})</h3>'
    has_data = any(v is not None for s in chart.series for v in s.values)
    if not timeline or not has_data:
        return head + f'<p class="empty">{_e(chart.empty)}</p></section>'
    legend = "".join(
        f'<li><span style="background:{_PALETTE[i % len(_PALETTE)]}"></span>{_e(s.name)}</li>'
        for i, s in enumerate(chart.series)
    )
    svg = _svg(chart, [b.t for b in timeline])
    return head + svg + f'<ul class="legend">{legend}</ul></section>'


# -- SVG --------------------------------------------------------------------------------------


def _svg(chart: _Chart, times: list[float]) -> str:
    times, series = _downsample(times, chart.series)
    top = max((v for s in series for v in s.values if v is not None), default=0.0)
    if chart.reference is not None:
        top = max(top, chart.reference[0])
    step = _nice_step(top / 4 if top > 0 else 1.0)
    y_max = step * max(math.ceil(top / step), 1)
    t0, t1 = times[0], max(times[-1], times[0] + 1)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(t: float) -> float:
        return _LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - v / y_max * plot_h

    out = [
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(chart.title)}">',
        f"<title>{_e(chart.title)} ({_e(chart.unit)})</title>",
    ]
    tick = 0.0
    while tick <= y_max + step / 2:
        yy = y(tick)
        out.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{_number(tick)}</text>'
        )
        tick += step
    span = t1 - t0
    t_step = _time_step(span)
    tick = math.ceil(t0 / t_step) * t_step
    while tick <= t1:
        xx = x(tick)
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" '
            'stroke="#f0f0f0"/>'
            f'<text x="{xx:.1f}" y="{_H - 10}" text-anchor="middle">'
            f"{_clock(tick, span)}</text>"
        )
        tick += t_step
    if chart.reference is not None:
        value, label = chart.reference
        yy = y(value)
        out.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
            'stroke="#d55e00" stroke-dasharray="6 4"/>'
            f'<text x="{_W - _RIGHT - 4}" y="{yy - 4:.1f}" text-anchor="end">{_e(label)}</text>'
        )
    out.append(
        f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_TOP + plot_h}" y2="{_TOP + plot_h}" '
        'stroke="#999"/>'
    )
    for i, s in enumerate(series):
        colour = _PALETTE[i % len(_PALETTE)]
        points = [
            (x(t), y(v) if v is not None else None) for t, v in zip(times, s.values, strict=True)
        ]
        out.append(_line(points, colour))
    out.append("</svg>")
    return "".join(out)


def _line(points: list[tuple[float, float | None]], colour: str) -> str:
    # A second without a value (no session ended) breaks the line rather than bridging it.
    path: list[str] = []
    dots: list[str] = []
    run: list[tuple[float, float]] = []
    for x, y in [*points, (0.0, None)]:
        if y is not None:
            run.append((x, y))
            continue
        if len(run) == 1:
            dots.append(
                f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="2" fill="{colour}"/>'
            )
        elif run:
            path.append("M" + "L".join(f"{px:.1f} {py:.1f}" for px, py in run))
        run = []
    line = (
        f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="1.6" '
        'stroke-linejoin="round"/>'
        if path
        else ""
    )
    return line + "".join(dots)


def _downsample(times: list[float], series: list[_Series]) -> tuple[list[float], list[_Series]]:
    if len(times) <= _MAX_POINTS:
        return times, series
    size = math.ceil(len(times) / _MAX_POINTS)
    starts = range(0, len(times), size)
    merged = []
    for s in series:
        values: list[float | None] = []
        for i in starts:
            group = [v for v in s.values[i : i + size] if v is not None]
            values.append(s.merge(group) if group else None)
        merged.append(s._replace(values=values))
    return [times[i] for i in starts], merged


def _nice_step(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _time_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800):
        if span / step <= 8:
            return step
    return 21600 * math.ceil(span / 21600 / 8)


def _clock(t: float, span: float) -> str:
    whole = round(t)
    if span >= 3600:
        return f"{whole // 3600}:{whole // 60 % 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"


# -- values -----------------------------------------------------------------------------------


def _value(value: Any) -> str:
    """Any plain value (mapping, list, scalar) as escaped HTML."""
    if isinstance(value, Mapping):
        if not value:
            return '<span class="empty">none</span>'
        rows = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list | tuple):
        return _sequence(value)
    return _e(_scalar(value))


def _cell(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="n">{_e(_scalar(value))}</td>'
    return f"<td>{_value(value)}</td>"


def _sequence(items: Sequence[Any]) -> str:
    if not items:
        return '<span class="empty">none</span>'
    shown, rest = items[:_MAX_ROWS], len(items) - _MAX_ROWS
    more = f'<p class="empty">and {rest:,} more (all in report.json)</p>' if rest > 0 else ""
    if all(isinstance(item, Mapping) for item in shown):
        columns: list[str] = []
        for item in shown:
            columns += [k for k in item if k not in columns]
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(_cell(item.get(c, "")) for c in columns) + "</tr>" for item in shown
        )
        return f"<table><tr>{head}</tr>{body}</table>{more}"
    if all(not isinstance(item, Mapping | list | tuple) for item in shown):
        return _e(", ".join(_scalar(item) for item in shown)) + more
    return "<ul>" + "".join(f"<li>{_value(item)}</li>" for item in shown) + "</ul>" + more


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _rate(count: float, span: float) -> float | None:
    """Per second over a bucket (the run's last one is shorter; one of no length has none)."""
    return count / span if span > 0 else None


def _percent(cpu: float, span: float) -> float | None:
    share = _rate(cpu, span)
    return None if share is None else share * 100


def _times1000(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _ledger_builtins(ledger: Any) -> Any:
    # LedgerResult says its own verdict ("passed") in its to_builtins; its fields alone don't.
    if isinstance(ledger, LedgerResult):
        return _builtins(ledger.to_builtins())
    return _builtins(ledger)


def _builtins(value: Any) -> Any:
    # Paths, enums and the like in meta are written as their text rather than refused.
    return msgspec.to_builtins(value, enc_hook=str)


def _replace(path: Path, data: bytes) -> None:
    # Written beside and renamed, so a reader never sees half a report.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
