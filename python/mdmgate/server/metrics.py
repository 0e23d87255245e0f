"""Server metrics in the Prometheus text exposition format (version 0.0.4), without dependencies.

Everything here runs on the Trio thread, so plain integers and dicts are enough: no locks. The
label sets are small and fixed (methods outside a known list count as ``OTHER``, statuses are
reduced to their class), so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_BUCKETS", "Counter", "Histogram", "Metrics", "default_node_name"]

_log = logging.getLogger("mdmgate.server")

#: Request latency buckets, in seconds: from a cache hit to a slow database write.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(float(value))


def default_node_name() -> str:
    """``hostname:pid``: a name no other gateway process has at the same time."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "", const: str = "") -> str:
    """``{const,name="value",...,extra}`` (``const`` and ``extra`` are rendered pairs)."""
    parts = [const] if const else []
    parts += [f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class Counter:
    """A monotonically increasing count per label combination."""

    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    _values: dict[tuple[str, ...], float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        for label in self.labelnames:
            if not _LABEL.match(label):
                raise ValueError(f"invalid label name {label!r}")

    def inc(self, *labelvalues: str, amount: float = 1) -> None:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._values[labelvalues] = self._values.get(labelvalues, 0) + amount

    def value(self, *labelvalues: str) -> float:
        """The current count for ``labelvalues`` (0 when never incremented)."""
        return self._values.get(labelvalues, 0)

    def render(self, const: str = "") -> Iterable[str]:
        """The text lines; ``const`` (rendered pairs, e.g. ``node="a"``) goes on every series."""
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} counter"
        for labelvalues, value in sorted(self._values.items()):
            labels = _labels(self.labelnames, labelvalues, const=const)
            yield f"{self.name}{labels} {_format_value(value)}"


@dataclass
class _HistogramSeries:
    counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram:
    """Observations counted into fixed upper-bounded buckets (``le``), per label combination."""

    name: str
    help: str
    labelnames: tuple[str, ...] = ()
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    _series: dict[tuple[str, ...], _HistogramSeries] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets:
            raise ValueError("buckets must be distinct and increasing")
        if math.isinf(self.buckets[-1]):
            self.buckets = self.buckets[:-1]

    def observe(self, value: float, *labelvalues: str) -> None:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        series = self._series.get(labelvalues)
        if series is None:
            series = self._series[labelvalues] = _HistogramSeries([0] * (len(self.buckets) + 1))
        # Non-cumulative counts here; render() accumulates. The last slot is +Inf.
        series.counts[bisect.bisect_left(self.buckets, value)] += 1
        series.total += value
        series.count += 1

    def count(self, *labelvalues: str) -> int:
        series = self._series.get(labelvalues)
        return 0 if series is None else series.count

    def render(self, const: str = "") -> Iterable[str]:
        """The text lines; ``const`` (rendered pairs, e.g. ``node="a"``) goes on every series."""
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} histogram"
        names = self.labelnames
        for labelvalues, series in sorted(self._series.items()):
            running = 0
            for bound, count in zip(self.buckets, series.counts[:-1], strict=True):
                running += count
                le = f'le="{float(bound)!r}"'
                yield f"{self.name}_bucket{_labels(names, labelvalues, le, const)} {running}"
            inf = _labels(names, labelvalues, 'le="+Inf"', const)
            yield f"{self.name}_bucket{inf} {series.count}"
            plain = _labels(names, labelvalues, const=const)
            yield f"{self.name}_sum{plain} {_format_value(series.total)}"
            yield f"{self.name}_count{plain} {series.count}"


@dataclass(frozen=True)
class _Gauge:
    name: str
    help: str
    callback: Callable[[], float]


class Metrics:
    """The gateway's metrics: HTTP requests, errors and connections, plus registered gauges,
    every series labelled ``node`` (``node``, default :func:`default_node_name`)."""

    def __init__(
        self, buckets: tuple[float, ...] = DEFAULT_BUCKETS, *, node: str | None = None
    ) -> None:
        #: The value of the ``node`` label on every series.
        self.node = node if node is not None else default_node_name()
        self._const = f'node="{_escape_label(self.node)}"'
        self.requests = Counter(
            "mdmgate_http_requests_total",
            "HTTP requests answered, by method, status class and protocol.",
            ("method", "status", "protocol"),
        )
        self.latency = Histogram(
            "mdmgate_http_request_duration_seconds",
            "Time from the start of a request to the end of its response.",
            ("method", "status", "protocol"),
            buckets,
        )
        self.errors = Counter(
            "mdmgate_http_errors_total",
            "Requests or connections that ended in an error, by kind.",
            ("kind",),
        )
        self.connections = Counter(
            "mdmgate_http_connections_total",
            "New connections by outcome: accepted; rejected (503, at the connection limit);"
            " over_budget (429, its address at its connection budget); dropped (closed"
            " unanswered, past both); shed (an open, waiting connection closed to make room).",
            ("outcome",),
        )
        #: Connections currently open.
        self.open_connections = 0
        #: Requests currently being handled.
        self.in_flight = 0
        self._gauges: dict[str, _Gauge] = {}
        self.register_gauge(
            "mdmgate_http_open_connections",
            "Client connections currently open.",
            lambda: self.open_connections,
        )
        self.register_gauge(
            "mdmgate_http_requests_in_flight",
            "Requests currently being handled.",
            lambda: self.in_flight,
        )

    def register_gauge(self, name: str, help: str, callback: Callable[[], float]) -> None:
        """Expose ``callback()`` as gauge ``name``; it is called on every :meth:`render`.

        The callback must be cheap and must not block. If it raises, the gauge is left out of
        that rendering (and the error logged) rather than breaking the whole scrape.
        """
        _check_name(name)
        if name in self._gauges or name in self._metric_names():
            raise ValueError(f"metric {name!r} is already registered")
        self._gauges[name] = _Gauge(name, help, callback)

    def _metric_names(self) -> set[str]:
        return {m.name for m in (self.requests, self.latency, self.errors, self.connections)}

    def observe_request(self, method: str, status: int, protocol: str, seconds: float) -> None:
        """Count one answered request and record how long it took."""
        method_label = method if method in _KNOWN_METHODS else "OTHER"
        status_label = f"{status // 100}xx" if 100 <= status <= 599 else "other"
        self.requests.inc(method_label, status_label, protocol)
        self.latency.observe(seconds, method_label, status_label, protocol)

    def error(self, kind: str) -> None:
        """Count one error of ``kind`` (e.g. ``handler``, ``rapid_reset``, ``read_timeout``)."""
        self.errors.inc(kind)

    def render(self) -> bytes:
        """All metrics in the Prometheus text format 0.0.4 (``text/plain; version=0.0.4``)."""
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.errors, self.connections):
            lines.extend(metric.render(self._const))
        for gauge in self._gauges.values():
            try:
                value = float(gauge.callback())
            except Exception:
                _log.exception("gauge %s failed", gauge.name)
                continue
            lines.append(f"# HELP {gauge.name} {_escape_help(gauge.help)}")
            lines.append(f"# TYPE {gauge.name} gauge")
            lines.append(f"{gauge.name}{{{self._const}}} {_format_value(value)}")
        lines.append("")
        return "\n".join(lines).encode()
