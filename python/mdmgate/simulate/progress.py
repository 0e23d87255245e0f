"""The live view of a simulate run, drawn from :meth:`Stats.timeline` while the fleet runs.

On a terminal a few lines are redrawn in place once a second; anywhere else (a log file, a
CI job, a pipe) one line is written every ten seconds, so the output stays readable as a log.
Rates are measured between two draws from the run's cumulative counts, so they are right
whether or not the timeline's last second is still filling.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from typing import TextIO

import trio

from mdmgate.simulate.stats import Bucket, Stats

__all__ = ["Live"]

#: Seconds between two lines when the output is not a terminal.
LOG_EVERY = 10
#: A client using more than this share of a core measures itself, not the gateway.
SATURATED_CPU = 0.9

# ANSI: cursor to the start of the line N lines up; clear from the cursor to the screen's end.
_UP = "\x1b[{}F"
_CLEAR_BELOW = "\x1b[J"


class _Totals:
    """Cumulative counts over the buckets seen so far."""

    __slots__ = ("answered", "cpu", "enrollments", "errors", "messages", "received", "sessions")

    def __init__(self) -> None:
        self.sessions = 0
        self.enrollments = 0
        self.messages = 0
        self.received = 0
        self.answered = 0
        self.cpu = 0.0
        self.errors: dict[str, int] = {}

    def add(self, bucket: Bucket) -> None:
        self.sessions += bucket.sessions
        self.messages += bucket.messages
        self.received += bucket.received
        self.answered += bucket.answered
        self.enrollments += bucket.enrollments
        self.cpu += bucket.client_cpu
        for kind, count in bucket.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count

    def plus(self, bucket: Bucket | None) -> _Totals:
        out = _Totals()
        out.sessions, out.messages = self.sessions, self.messages
        out.received, out.answered, out.cpu = self.received, self.answered, self.cpu
        out.enrollments = self.enrollments
        out.errors = dict(self.errors)
        if bucket is not None:
            out.add(bucket)
        return out


class _Sample:
    """What one draw shows."""

    __slots__ = ("active", "at", "p50", "p99", "totals")

    def __init__(
        self, at: float, totals: _Totals, active: int, p50: float | None, p99: float | None
    ) -> None:
        self.at = at
        self.totals = totals
        self.active = active
        self.p50 = p50
        self.p99 = p99


class Live:
    """Shows a run's progress on ``out`` until cancelled; :meth:`final` closes it off."""

    def __init__(
        self,
        stats: Stats,
        out: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._out = out
        self._tty = tty
        self._clock = clock
        self._start = clock()
        # Buckets before the timeline's last one no longer change: folded once, not per draw.
        self._folded = _Totals()
        self._folded_until: float | None = None
        # Rates of the first draw are counted from the start of the view.
        self._last_draw = self._last_log = _Sample(self._start, _Totals(), 0, None, None)
        self._drawn_lines = 0
        self._ticks = 0
        self._closed = False
        self._finished = False

    async def run(self) -> None:
        """Redraw once a second until cancelled."""
        while True:
            await trio.sleep(1)
            self.tick()

    def tick(self) -> None:
        """One second passed: redraw (a terminal) or, every tenth time, log a line."""
        if self._finished:
            return  # the run may go on checking its ledger; the final state stays on screen
        sample = self._sample()
        self._ticks += 1
        if self._tty:
            self._draw(self._screen(self._last_draw, sample))
        elif self._ticks % LOG_EVERY == 0:
            self._emit(self._line(self._last_log, sample) + "\n")
            self._last_log = sample
        self._last_draw = sample

    def final(self) -> None:
        """The run is over: the last state, with whole-run averages; nothing is drawn after."""
        if self._finished:
            return
        self._finished = True
        sample = self._sample()
        _whole_run(self._stats, sample)
        start = _Sample(self._start, _Totals(), 0, None, None)
        if self._tty:
            self._draw(self._screen(start, sample, head="done"))
        else:
            self._emit("done " + self._line(start, sample) + "\n")

    # -- sampling -------------------------------------------------------------------------

    def _sample(self) -> _Sample:
        buckets = self._stats.timeline()
        now = self._clock()
        last = buckets[-1] if buckets else None
        for bucket in buckets[:-1]:
            if self._folded_until is None or bucket.t > self._folded_until:
                self._folded.add(bucket)
                self._folded_until = bucket.t
        totals = self._folded.plus(last)
        p50, p99 = _latest_latency(reversed(buckets[-3:]))
        return _Sample(now, totals, last.active if last is not None else 0, p50, p99)

    # -- rendering ------------------------------------------------------------------------

    def _screen(self, before: _Sample, now: _Sample, head: str = "simulate") -> list[str]:
        rate = _Rates(before, now)
        t = now.totals
        return [
            f"{head} {_duration(now.at - self._start)}   devices in a session {now.active:,}",
            f"  sessions {rate.sessions:,.1f}/s   messages {rate.messages:,.1f}/s   "
            f"latency p50 {_ms(now.p50)}  p99 {_ms(now.p99)}",
            f"  commands received {t.received:,}   answered {t.answered:,}" + _enrolled(t),
            f"  errors   {_errors(t.errors)}",
            f"  client CPU {rate.cpu:.0%} of a core" + _saturated(rate.cpu),
        ]

    def _line(self, before: _Sample, now: _Sample) -> str:
        rate = _Rates(before, now)
        t = now.totals
        return (
            f"{_duration(now.at - self._start)} active {now.active} "
            f"sessions {rate.sessions:.1f}/s messages {rate.messages:.1f}/s "
            f"p50 {_ms(now.p50)} p99 {_ms(now.p99)} "
            f"received {t.received} answered {t.answered}{_enrolled(t, compact=True)} "
            f"errors {_errors(t.errors, compact=True)} cpu {rate.cpu:.0%}" + _saturated(rate.cpu)
        )

    def _draw(self, lines: list[str]) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        # A line wider than the terminal wraps and would throw the next redraw off by one.
        body = "".join(f"{line[:width]}\n" for line in lines)
        prefix = _UP.format(self._drawn_lines) + _CLEAR_BELOW if self._drawn_lines else ""
        self._drawn_lines = len(lines)
        self._emit(prefix + body)

    def _emit(self, text: str) -> None:
        if self._closed:
            return
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError) as exc:
            # The reader went away (a closed pipe, a closed file): the run goes on unwatched.
            self._closed = True
            if isinstance(exc, BrokenPipeError):
                _discard_rest(self._out)


class _Rates:
    """Per-second rates between two samples."""

    __slots__ = ("cpu", "messages", "sessions")

    def __init__(self, before: _Sample, now: _Sample) -> None:
        if now.at <= before.at:
            self.sessions = self.messages = self.cpu = 0.0
            return
        span = now.at - before.at
        self.sessions = (now.totals.sessions - before.totals.sessions) / span
        self.messages = (now.totals.messages - before.totals.messages) / span
        self.cpu = (now.totals.cpu - before.totals.cpu) / span


def _latest_latency(buckets: Iterable[Bucket]) -> tuple[float | None, float | None]:
    # The newest second may have had no session end yet: show the last one that did.
    for bucket in buckets:
        if bucket.latency_p50 is not None or bucket.latency_p99 is not None:
            return bucket.latency_p50, bucket.latency_p99
    return None, None


def _whole_run(stats: Stats, sample: _Sample) -> None:
    # The run's own totals, when the statistics keep them: they include the last second,
    # still open when the run stopped, and percentiles over every session.
    totals = stats.totals()
    whole = totals.get("all")
    if not isinstance(whole, dict):
        return
    t = sample.totals
    for name in ("sessions", "messages", "received", "answered"):
        value = whole.get(name)
        if isinstance(value, int):
            setattr(t, name, value)
    enroll = totals.get("enroll")
    if isinstance(enroll, dict) and isinstance(enroll.get("all"), dict):
        sessions = enroll["all"].get("sessions")
        if isinstance(sessions, int):
            t.enrollments = sessions
    errors = whole.get("errors")
    if isinstance(errors, dict):
        t.errors = {str(k): v for k, v in errors.items() if isinstance(v, int)}
    latency = whole.get("latency")
    if isinstance(latency, dict):
        p50, p99 = latency.get("p50"), latency.get("p99")
        if isinstance(p50, float | int) and isinstance(p99, float | int):
            sample.p50, sample.p99 = float(p50), float(p99)


def _enrolled(totals: _Totals, *, compact: bool = False) -> str:
    # Only a run whose devices enroll says so: the others' view stays as it was.
    if not totals.enrollments:
        return ""
    if compact:
        return f" enrollments {totals.enrollments}"
    return f"   enrollments {totals.enrollments:,}"


def _discard_rest(out: TextIO) -> None:
    # The command goes on writing to the stream (the report's path, Python's last flush at
    # exit): with its descriptor on /dev/null those writes cannot fail the finished run.
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass  # best effort: the run's result does not depend on it
    finally:
        os.close(devnull)


def _duration(seconds: float) -> str:
    whole = max(int(seconds), 0)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def _errors(errors: dict[str, int], *, compact: bool = False) -> str:
    pattern, sep = ("{}={}", ",") if compact else ("{} {}", "  ")
    shown = [
        pattern.format(_printable(kind), count) for kind, count in sorted(errors.items()) if count
    ]
    return sep.join(shown) if shown else "none"


def _printable(text: str) -> str:
    # An error kind may quote a server; its control characters must not drive the terminal.
    return "".join(c if c.isprintable() else "?" for c in text)


def _saturated(cpu: float) -> str:
    if cpu > SATURATED_CPU:
        return " (client saturated: the numbers measure it, not the gateway)"
    return ""
