"""Run statistics: whole-run totals per platform and a per-second time series.

Every device calls in here for each message, session and command, so recording is a few
dict and list operations; latencies go into fixed logarithmic histograms (about 2 % wide),
which keep percentiles of any number of sessions in constant memory.

A session that fails ends with one error kind, the same words for every platform:
``http_<status>`` (the gateway answered a message with that status), ``syncml_<code>``
(Windows: the gateway refused the session in SyncML), ``transport_<kind>`` (``connect``,
``timeout``, ``reset``, ``protocol``: the exchange failed on the way), ``protocol`` (an answer
the device's protocol does not allow), :data:`SILENT` (the device went quiet on purpose, as
the scenario asked: not the gateway's fault) and :data:`SIMULATOR` (a fault of the simulator
itself). :func:`gateway_fault` tells the ones that count against the gateway.

Enrollment (``mdmgate simulate --enroll``) is a phase of its own: each device's enrollment is
one session of kind :data:`ENROLL` (:meth:`Stats.enrollment`), with its latency and, when it
failed, an ``enroll_<reason>`` kind, kept apart from the check-in sessions (whose latency it
would distort) in :meth:`Stats.totals`' ``enroll`` and the buckets' ``enrollments``. Its
messages and errors count with the platform's, as every request and failure does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["ENROLL", "SILENT", "SIMULATOR", "Bucket", "Histogram", "Stats", "gateway_fault"]

#: The session's device went quiet on purpose mid-session (``rates.timeout``).
SILENT = "silent"
#: The simulator itself failed (the run's notes say how).
SIMULATOR = "simulator"
#: The kind of session a device's enrollment is.
ENROLL = "enroll"


def gateway_fault(kind: str) -> bool:
    """Whether a session's error kind is the gateway's or the network's doing, rather than
    the scenario's (a device going silent) or the simulator's."""
    return kind not in (SILENT, SIMULATOR)


class Bucket(msgspec.Struct):
    """One second of the run; the last one ends with the run, so may be shorter."""

    t: float  # seconds since the run started
    sessions: int = 0
    messages: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)  # by kind
    latency_p50: float | None = None  # seconds, of the sessions that ended in this second
    latency_p99: float | None = None
    received: int = 0  # commands
    answered: int = 0
    active: int = 0  # devices in a session at the end of the second
    client_cpu: float = 0.0  # this process's CPU seconds used in the second
    span: float = 1.0  # its length in seconds: 1, except the run's last, cut short by the stop
    enrollments: int = 0  # devices' enrollments (sessions of kind enroll) ended in the second


# Histogram bins: bin i holds latencies in [_LOW * _RATIO**i, _LOW * _RATIO**(i+1)).
_LOW = 1e-5
_RATIO = 1.02
_LOG_RATIO = math.log(_RATIO)
_BINS = int(math.log(3600.0 / _LOW) / _LOG_RATIO) + 2


class Histogram:
    """Latencies in logarithmic bins: percentiles within about 1 %, constant memory."""

    __slots__ = ("bins", "count", "max", "total")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        index = 0 if seconds <= _LOW else min(int(math.log(seconds / _LOW) / _LOG_RATIO), _BINS)
        self.bins[index] = self.bins.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def merge(self, other: Histogram) -> None:
        for index, n in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, share: float) -> float | None:
        """The latency below which ``share`` (0..1) of the sessions fall; None if empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(share * self.count))
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                # The bin's geometric middle, never above the largest latency seen.
                middle: float = _LOW * _RATIO ** (index + 0.5)
                return min(middle, self.max)
        return self.max

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "mean": self.total / self.count if self.count else None,
            "p50": self.percentile(0.50),
            "p90": self.percentile(0.90),
            "p99": self.percentile(0.99),
            "p999": self.percentile(0.999),
            "max": self.max if self.count else None,
        }


class _Platform:
    __slots__ = ("answered", "errors", "latency", "messages", "received", "sessions")

    def __init__(self) -> None:
        self.sessions = 0
        self.messages = 0
        self.received = 0
        self.answered = 0
        self.errors: dict[str, int] = {}
        self.latency = Histogram()


class Stats:
    """Counters shared by every simulated device; cheap enough to call per message.

    ``clock`` is the time source (monotonic seconds; Trio's clock in a run); the run starts
    at the first call of :meth:`start` or at construction.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._clock = clock
        self._cpu = cpu
        self._start = clock()
        self._platforms: dict[str, _Platform] = {}
        self._enrollments: dict[str, _Platform] = {}
        self._buckets: list[Bucket] = []
        # The open (not yet closed) seconds' latencies; closed seconds keep percentiles only.
        self._open_latency: dict[int, Histogram] = {}
        self._closed = 0
        self._cpu_mark = cpu()
        self._end: float | None = None
        self.active = 0

    def start(self) -> None:
        """Restart the clock and the time series (counts so far are kept)."""
        self._start = self._clock()
        self._end = None
        self._buckets.clear()
        self._open_latency.clear()
        self._closed = 0
        self._cpu_mark = self._cpu()

    def stop(self) -> None:
        """The run is over: the time series and rates end now. The second the stop falls in
        is closed as the last bucket, ``span`` shorter than a second, so that the timeline
        holds everything the totals count (a drain is often a burst in that last second)."""
        if self._end is not None:
            return
        self._end = end = self._clock()
        last = self._bucket()
        # A stop on a second's very first instant leaves it no length (span 0), though it
        # may hold what happened at that instant.
        last.span = max(end - self._start, 0.0) - last.t
        self._close(range(self._closed, int(last.t) + 1), last.span)

    def _now(self) -> float:
        return self._clock() if self._end is None else self._end

    def elapsed(self) -> float:
        return self._now() - self._start

    def _platform(self, platform: str) -> _Platform:
        found = self._platforms.get(platform)
        if found is None:
            found = self._platforms[platform] = _Platform()
        return found

    def _bucket(self) -> Bucket:
        second = max(int(self._now() - self._start), 0)
        buckets = self._buckets
        while len(buckets) <= second:
            buckets.append(Bucket(t=float(len(buckets))))
        return buckets[second]

    # -- what devices record

    def session(self, platform: str, seconds: float, error: str | None = None) -> None:
        """One whole device session ended after ``seconds``; ``error`` is its failure kind."""
        record = self._platform(platform)
        record.sessions += 1
        record.latency.add(seconds)
        bucket = self._bucket()
        bucket.sessions += 1
        index = int(bucket.t)
        histogram = self._open_latency.get(index)
        if histogram is None:
            histogram = self._open_latency[index] = Histogram()
        histogram.add(seconds)
        if error is not None:
            record.errors[error] = record.errors.get(error, 0) + 1
            bucket.errors[error] = bucket.errors.get(error, 0) + 1

    def enrollment(self, platform: str, seconds: float, error: str | None = None) -> None:
        """One device's enrollment ended after ``seconds``; ``error`` is why it failed."""
        record = self._enrollments.get(platform)
        if record is None:
            record = self._enrollments[platform] = _Platform()
        record.sessions += 1
        record.latency.add(seconds)
        self._bucket().enrollments += 1
        if error is not None:
            record.errors[error] = record.errors.get(error, 0) + 1
            self.error(platform, error)

    def message(self, platform: str) -> None:
        """One HTTP request sent."""
        self._platform(platform).messages += 1
        self._bucket().messages += 1

    def command(self, platform: str, event: str) -> None:
        """A command ``"received"`` or ``"answered"``."""
        record = self._platform(platform)
        bucket = self._bucket()
        if event == "received":
            record.received += 1
            bucket.received += 1
        elif event == "answered":
            record.answered += 1
            bucket.answered += 1

    def error(self, platform: str, kind: str) -> None:
        """A failure outside a device session (registration, the admin API, the runner)."""
        record = self._platform(platform)
        record.errors[kind] = record.errors.get(kind, 0) + 1
        bucket = self._bucket()
        bucket.errors[kind] = bucket.errors.get(kind, 0) + 1

    # -- the time series

    def tick(self) -> None:
        """Close every second before the current one: its percentiles, active devices and
        CPU. Call about once a second (the runner does); reading does it too."""
        if self._end is not None:
            return  # stopped: every bucket is closed
        current = self._bucket()
        self._close(range(self._closed, int(current.t)), 1.0)
        current.active = self.active

    def _close(self, indexes: range, last_span: float) -> None:
        """Closes these buckets; the last of them lasts ``last_span`` seconds."""
        if not indexes:
            return
        cpu = self._cpu()
        # CPU is sampled when a second is closed; seconds closed together share it by length.
        per_second = (cpu - self._cpu_mark) / (len(indexes) - 1 + last_span or 1.0)
        for index in indexes:
            bucket = self._buckets[index]
            histogram = self._open_latency.pop(index, None)
            if histogram is not None:
                bucket.latency_p50 = histogram.percentile(0.5)
                bucket.latency_p99 = histogram.percentile(0.99)
            bucket.active = self.active
            bucket.client_cpu = per_second * (last_span if index == indexes[-1] else 1.0)
        self._cpu_mark = cpu
        self._closed = indexes[-1] + 1

    def timeline(self) -> list[Bucket]:
        """The closed seconds so far, oldest first (copies); after :meth:`stop`, all of
        them: their counts add up to :meth:`totals`."""
        self.tick()
        return [
            msgspec.structs.replace(b, errors=dict(b.errors)) for b in self._buckets[: self._closed]
        ]

    def totals(self) -> dict[str, Any]:
        """Whole-run counts, latency percentiles and errors by kind: per platform and all;
        ``enroll`` likewise for the enrollments, when there were any."""
        everything = _Platform()
        platforms: dict[str, Any] = {}
        for name in sorted(self._platforms):
            record = self._platforms[name]
            platforms[name] = _summary(record)
            everything.sessions += record.sessions
            everything.messages += record.messages
            everything.received += record.received
            everything.answered += record.answered
            everything.latency.merge(record.latency)
            for kind, n in record.errors.items():
                everything.errors[kind] = everything.errors.get(kind, 0) + n
        elapsed = self.elapsed()
        total = _summary(everything)
        total["seconds"] = elapsed
        total["sessions_per_second"] = everything.sessions / elapsed if elapsed > 0 else None
        total["messages_per_second"] = everything.messages / elapsed if elapsed > 0 else None
        out: dict[str, Any] = {"all": total, "platforms": platforms}
        if self._enrollments:
            out[ENROLL] = _enrollment_summary(self._enrollments)
        return out


def _enrollment_summary(records: dict[str, _Platform]) -> dict[str, Any]:
    everything = _Platform()
    platforms: dict[str, Any] = {}
    for name in sorted(records):
        record = records[name]
        everything.sessions += record.sessions
        everything.latency.merge(record.latency)
        for kind, n in record.errors.items():
            everything.errors[kind] = everything.errors.get(kind, 0) + n
        platforms[name] = _enrolled(record)
    return {"all": _enrolled(everything), "platforms": platforms}


def _enrolled(record: _Platform) -> dict[str, Any]:
    failed = sum(record.errors.values())
    return {
        "sessions": record.sessions,
        "enrolled": record.sessions - failed,
        "failed": failed,
        "errors": dict(sorted(record.errors.items())),
        "latency": record.latency.summary(),
    }


def _summary(record: _Platform) -> dict[str, Any]:
    return {
        "sessions": record.sessions,
        "messages": record.messages,
        "received": record.received,
        "answered": record.answered,
        "errors": dict(sorted(record.errors.items())),
        "latency": record.latency.summary(),
    }
