"""``mdmgate serve``: wires storage, the admin API and the HTTP layer into one process (or
several sharing the port), and drains cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import trio
from cryptography import x509

from mdmgate.apple.push import APNS_PRODUCTION_URL, ApnsClient, es256_jwt_signer
from mdmgate.apple.pusher import DevicePusher
from mdmgate.apple.service import AppleService
from mdmgate.catalogue.service import Catalogue
from mdmgate.enrollment.ca import CaError
from mdmgate.enrollment.push_certificate import PushCertificate
from mdmgate.enrollment.service import EnrollmentService
from mdmgate.enrollment.settings import EnrollmentSettings, SettingsError
from mdmgate.server import cluster
from mdmgate.server.admin import AdminApi
from mdmgate.server.enrollment_api import EnrollmentApi
from mdmgate.server.enrollment_http import EnrollmentEndpoints
from mdmgate.server.http import Limits, Listener, Server, server_ssl_context
from mdmgate.server.metrics import Metrics
from mdmgate.server.types import Handler, Request, Response
from mdmgate.storage import Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.storage.pgwire import PgError
from mdmgate.storage.postgres import (
    POSTGRES_SCHEMES,
    PostgresStore,
    SchemaTooNew,
    check_postgres_url,
    redact_url,
)
from mdmgate.storage.sqlite import SQLiteStore
from mdmgate.windows.service import WindowsService

__all__ = ["Config", "ConfigError", "build_handler", "load_config", "open_store", "run"]

log = logging.getLogger("mdmgate.server")

#: The Windows (OMA-DM) endpoint.
WINDOWS_PATH = "/ManagementServer/MDM.svc"
APPLE_CHECKIN_PATH = "/mdm/apple/checkin"
APPLE_CONNECT_PATH = "/mdm/apple/connect"
#: Device-facing paths (answered 501 by a handler built without their protocol).
DEVICE_PATHS = (WINDOWS_PATH, APPLE_CHECKIN_PATH, APPLE_CONNECT_PATH)
#: How often the queue-depth gauge is refreshed (a scrape must not wait for the database).
GAUGE_REFRESH_SECONDS = 5.0
#: With a ``[testing] clock_scale``: how often the scheduler looks for due waves.
TESTING_TICK_SECONDS = 0.1


class ConfigError(ValueError):
    """A configuration value or command-line option that cannot be used."""


@dataclass(frozen=True)
class Config:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 8080),)
    db: str = "sqlite:///./mdmgate.db"
    workers: int = 1
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    api_token: str | None = None
    dev: bool = False
    durability: str = "full"
    limits: Limits = field(default_factory=Limits)
    #: Who may read ``/metrics``: ``"token"`` (the admin API's bearer token) or ``"open"``
    #: (anyone who can reach it). Unset: ``"token"`` on the main port, which faces devices
    #: and the internet; ``"open"`` on ``metrics_listen`` (the Prometheus convention: an
    #: address only the monitoring network reaches).
    metrics: str | None = None
    #: A separate address (cleartext HTTP) serving ``/metrics`` and ``/healthz`` only; the
    #: main port then answers 404 for ``/metrics``.
    metrics_listen: tuple[str, int] | None = None
    #: APNs (config table ``[apns]``: url, topic, cert, key, rate). Without a topic the
    #: gateway does not push; devices still get their commands when they check in.
    apns_url: str = APNS_PRODUCTION_URL
    apns_topic: str | None = None
    apns_cert: str | None = None
    apns_key: str | None = None
    apns_rate: float = 200.0
    #: Token auth instead of a certificate: the .p8 signing key, its key id, the team id.
    apns_auth_key: str | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    #: Windows (config table ``[windows]``): the cap on offers of a command never answered
    #: (see ``mdmgate.windows.service.MAX_OFFERS``), and the gateway's own OMA-DM server
    #: credentials for devices that require the server to authenticate (a device's
    #: ``auth.server_username``/``server_secret`` win), sent ``on_challenge`` or always
    #: (``required``).
    windows_max_offers: int = 5
    #: Apple (config table ``[apple]``): the cap on offers of a command never answered (see
    #: ``mdmgate.apple.service.MAX_OFFERS``).
    apple_max_offers: int = 5
    windows_server_username: str | None = None
    windows_server_secret: str | None = None
    windows_server_auth: str = "on_challenge"
    #: This node's name among the gateway nodes sharing the database: the ``node`` label of
    #: every metric and the holder of its leases. Default ``hostname:pid``; with
    #: ``--workers N`` each worker is ``<node_name>/<index>`` (or its own ``hostname:pid``).
    node_name: str | None = None
    #: For tests only (config table ``[testing]``): the catalogue's clock runs
    #: ``clock_scale`` times as fast as the wall clock from ``clock_epoch`` (Unix time, the
    #: same on every node) on, and its scheduler looks for due waves every
    #: ``TESTING_TICK_SECONDS``, so that a roll-out paced per minute takes seconds.
    testing_clock_scale: float = 1.0
    testing_clock_epoch: float | None = None
    #: Enrollment (config table ``[enrollment]``): the CA, token-based Windows and Apple
    #: enrollment; see :class:`~mdmgate.enrollment.settings.EnrollmentSettings`.
    enrollment: EnrollmentSettings = field(default_factory=EnrollmentSettings)


def _metrics_access(config: Config) -> str:
    """``"token"`` or ``"open"``: the ``metrics`` setting, or its default for where
    ``/metrics`` is served."""
    if config.metrics is not None:
        return config.metrics
    return "open" if config.metrics_listen is not None else "token"


def _check_metrics(config: Config) -> None:
    if config.metrics not in (None, "token", "open"):
        raise ConfigError(f'metrics must be "token" or "open", not {config.metrics!r}')


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None


def _limits(raw: object) -> Limits:
    if not isinstance(raw, dict):
        raise ConfigError("limits must be a table")
    bad = sorted(set(raw) - {f.name for f in fields(Limits)})
    if bad:
        raise ConfigError(f"unknown limits: {', '.join(bad)}")
    try:
        return replace(Limits(), **raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"limits: {e}") from None


#: The keys of each config table whose values become ``Config`` fields ``<table>_<key>``.
_TABLES: dict[str, tuple[str, ...]] = {
    "apns": ("url", "topic", "cert", "key", "rate", "auth_key", "key_id", "team_id"),
    "windows": ("max_offers", "server_username", "server_secret", "server_auth"),
    "apple": ("max_offers",),
    "testing": ("clock_scale", "clock_epoch"),
}


def _table(name: str, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a table")
    known = _TABLES[name]
    bad = sorted(set(raw) - set(known))
    if bad:
        raise ConfigError(f"unknown {name} keys: {', '.join(bad)} (known: {', '.join(known)})")
    return {f"{name}_{k}": v for k, v in raw.items()}


def _check_cluster(config: Config) -> None:
    name = config.node_name
    if name is not None and (not isinstance(name, str) or not name.strip() or "\n" in name):
        raise ConfigError("node_name must be a non-empty line of text")
    scale = config.testing_clock_scale
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 3600:
        raise ConfigError("testing clock_scale must be a number from above 0 to 3600")
    if scale != 1 and not isinstance(config.testing_clock_epoch, int | float):
        raise ConfigError(
            "testing clock_scale needs clock_epoch (the same Unix time on every node)"
        )


def _check_offers(table: str, offers: object) -> None:
    if isinstance(offers, bool) or not isinstance(offers, int) or offers < 1:
        raise ConfigError(f"{table} max_offers must be a whole number of at least 1")


def _check_windows(config: Config) -> None:
    _check_offers("windows", config.windows_max_offers)
    _check_offers("apple", config.apple_max_offers)
    server = (config.windows_server_username, config.windows_server_secret)
    if (server[0] is None) != (server[1] is None):
        raise ConfigError("windows server_username and server_secret go together")
    if not all(v is None or (isinstance(v, str) and v) for v in server):
        raise ConfigError("windows server_username and server_secret must be non-empty strings")
    if config.windows_server_auth not in ("on_challenge", "required"):
        raise ConfigError("windows server_auth must be 'on_challenge' or 'required'")


def _check(config: Config) -> Config:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.client_ca is not None and config.tls_cert is None:
        raise ConfigError("--client-ca needs --tls-cert and --tls-key")
    if not 1 <= config.workers <= 64:
        raise ConfigError("--workers must be from 1 to 64")
    if config.durability not in ("full", "normal"):
        raise ConfigError("durability must be 'full' or 'normal'")
    _check_db(config.db)
    if (config.apns_cert is None) != (config.apns_key is None):
        raise ConfigError("apns cert and key go together")
    token_auth = (config.apns_auth_key, config.apns_key_id, config.apns_team_id)
    if any(v is not None for v in token_auth) and None in token_auth:
        raise ConfigError("apns auth_key, key_id and team_id go together (token auth)")
    if not config.apns_rate > 0:
        raise ConfigError("apns rate must be a positive number of pushes per second")
    if not config.apns_url.startswith(("https://", "http://")):
        raise ConfigError(f"apns url {config.apns_url!r} is not an http(s) URL")
    if config.workers > 1 and not config.db.startswith(("sqlite:", *POSTGRES_SCHEMES)):
        raise ConfigError("several workers need a shared database (sqlite:///PATH, postgresql://)")
    _check_metrics(config)
    _check_cluster(config)
    _check_windows(config)
    return config


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """The config file (TOML), then command-line overrides, then ``MDMGATE_API_TOKEN``."""
    values = _read_toml(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if os.environ.get("MDMGATE_API_TOKEN"):
        values.setdefault("api_token", os.environ["MDMGATE_API_TOKEN"])
    unknown = sorted(
        set(values) - {f.name for f in fields(Config)} - {"apns", "windows", "apple", "testing"}
    )
    try:
        values["enrollment"] = EnrollmentSettings.from_table(values.get("enrollment", {}))
    except SettingsError as e:
        raise ConfigError(str(e)) from None
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
    if "apns" in values:
        values.update(_table("apns", values.pop("apns")))
    values.update(_table("windows", values.pop("windows", {})))
    values.update(_table("apple", values.pop("apple", {})))
    values.update(_table("testing", values.pop("testing", {})))
    limits = _limits(values.pop("limits")) if "limits" in values else Limits()
    if "listen" in values:
        listen = values["listen"]
        items = [listen] if isinstance(listen, str) else list(listen)
        values["listen"] = tuple(parse_listen(str(v)) for v in items)
    if "metrics_listen" in values:
        values["metrics_listen"] = parse_listen(str(values["metrics_listen"]))
    try:
        config = Config(**values, limits=limits)
    except TypeError as e:
        raise ConfigError(f"configuration: {e}") from None
    return _check(config)


_DB_URLS = "sqlite:///PATH, postgresql://[USER@][HOST][:PORT]/DATABASE or memory:"


def _check_db(url: str) -> None:
    if url in ("memory:", "memory://") or url.startswith("sqlite:///"):
        return
    if not url.startswith(POSTGRES_SCHEMES):
        raise ConfigError(f"unsupported database URL {url!r}; use {_DB_URLS}")
    try:
        check_postgres_url(url)
    except ValueError as e:
        raise ConfigError(str(e)) from None


async def open_store(url: str, durability: str = "full") -> Store:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``memory:``, or a libpq URL
    ``postgresql://`` (or ``postgres://``; the ``PG*`` environment variables fill in what it
    leaves out). A PostgreSQL server that cannot be reached, or whose database this mdmgate
    cannot use, raises ``OSError`` with libpq's reason (the password left out)."""
    if url in ("memory:", "memory://"):
        return MemoryStore()
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await SQLiteStore.open(
            path, durability="normal" if durability == "normal" else "full"
        )
    if url.startswith(POSTGRES_SCHEMES):
        _check_db(url)
        try:
            return await PostgresStore.open(url)
        except (PgError, SchemaTooNew) as e:
            reason = " ".join(str(e).split())  # libpq's reason, on one line
            raise OSError(f"cannot use the database {redact_url(url)}: {reason}") from e
    raise ConfigError(f"unsupported database URL {url!r}; use {_DB_URLS}")


def _text(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(status, (("content-type", content_type),), text.encode())


class AppleEndpoints(Protocol):
    async def checkin(self, request: Request) -> Response: ...
    async def connect(self, request: Request) -> Response: ...


def build_handler(
    store: Store,
    admin: AdminApi,
    metrics: Metrics,
    windows: Handler | None = None,
    apple: AppleEndpoints | None = None,
    *,
    metrics_access: str | None = "token",
    ready: Handler | None = None,
    enrollment: Mapping[str, Handler] | None = None,
) -> Handler:
    """Routes a request: health, readiness and metrics, the admin API, the device endpoints.

    ``metrics_access`` is who may read ``/metrics`` here (see :func:`metrics_handler`);
    ``None`` when it is served elsewhere (``metrics_listen``): 404. ``ready`` answers
    ``/readyz`` (default: :func:`~mdmgate.server.cluster.readiness_handler` over ``store``)."""
    scrape = None if metrics_access is None else metrics_handler(metrics, admin, metrics_access)
    readyz = ready if ready is not None else cluster.readiness_handler(store)

    devices: dict[str, Handler] = {}
    if windows is not None:
        devices[WINDOWS_PATH] = windows
    if apple is not None:
        devices[APPLE_CHECKIN_PATH] = apple.checkin
        devices[APPLE_CONNECT_PATH] = apple.connect

    # By exact path: readiness, and the device endpoints (enrollment's included).
    exact: dict[str, Handler] = {"/readyz": readyz, **devices, **(enrollment or {})}

    async def handle(request: Request) -> Response:
        if request.path == "/healthz":
            return _text(200, "ok\n")
        if request.path == "/metrics" and scrape is not None:
            return await scrape(request)
        if request.path.startswith("/api/"):
            return await admin(request)
        found = exact.get(request.path)
        if found is not None:
            return await found(request)
        if request.path in DEVICE_PATHS:
            # Said plainly rather than answered with a half protocol a device could misread.
            return _text(501, "this device protocol is not served by this version of mdmgate\n")
        return _text(404, "not found\n")

    return handle


def metrics_handler(metrics: Metrics, admin: AdminApi, access: str) -> Handler:
    """``/metrics`` as Prometheus text; with ``access`` ``"token"`` only for requests that
    carry the admin API's bearer token (others get its 401), with ``"open"`` for anyone."""

    async def scrape(request: Request) -> Response:
        if access != "open":
            refusal = admin.token_refusal(request)
            if refusal is not None:
                return refusal
        return Response(
            200,
            (("content-type", "text/plain; version=0.0.4; charset=utf-8"),),
            metrics.render(),
        )

    return scrape


def _metrics_only(scrape: Handler, ready: Handler) -> Handler:
    """The handler of the ``metrics_listen`` address: ``/metrics``, ``/healthz``,
    ``/readyz``, else 404."""

    async def handle(request: Request) -> Response:
        if request.path == "/metrics":
            return await scrape(request)
        if request.path == "/healthz":
            return _text(200, "ok\n")
        if request.path == "/readyz":
            return await ready(request)
        return _text(404, "not found: this address serves /metrics, /healthz and /readyz only\n")

    return handle


def _listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Workers each bind the same port; the kernel spreads connections over them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _metrics_server(
    config: Config,
    metrics: Metrics,
    admin: AdminApi,
    reuse_port: bool,
    announce: bool,
    *,
    ready: Handler,
) -> tuple[Server, list[Listener]] | None:
    """The server of ``metrics_listen`` and its listener, if one is configured: cleartext,
    ``/metrics``, ``/healthz`` and ``/readyz`` only, with counters of its own (scrapes are
    not device traffic)."""
    if config.metrics_listen is None:
        return None
    scrape = _metrics_only(metrics_handler(metrics, admin, _metrics_access(config)), ready)
    host, port = config.metrics_listen
    sock = _listen_socket(host, port, reuse_port)
    if announce:
        bound = sock.getsockname()[1]
        print(f"mdmgate metrics on http://{host}:{bound}/metrics", flush=True)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    return Server(scrape, config.limits, metrics=Metrics(node=metrics.node)), [listener]


async def _serve(config: Config, reuse_port: bool, announce: bool) -> None:
    store = await open_store(config.db, config.durability)
    metrics, presence = _node(config, store)
    depth = [0.0]
    metrics.register_gauge(
        "mdmgate_queue_depth", "Deliveries waiting for a device's answer.", lambda: depth[0]
    )
    clock = _catalogue_clock(config)
    catalogue = Catalogue(store, node_id=presence.name, now=clock)
    enrollment, push, endpoints = await _enrollment(config, store, catalogue, metrics)
    admin = AdminApi(
        store,
        config.api_token,
        dev=config.dev,
        catalogue=catalogue,
        enrollment=EnrollmentApi(enrollment, endpoints.profile_url),
    )
    windows = WindowsService(
        store,
        dev=config.dev,
        on_devices_changed=catalogue.note_devices,
        max_offers=config.windows_max_offers,
        server_username=config.windows_server_username,
        server_secret=config.windows_server_secret,
        server_auth="required" if config.windows_server_auth == "required" else "on_challenge",
    )
    metrics.register_gauge(
        "mdmgate_omadm_sessions",
        "OMA-DM messages in flight on this node (sessions themselves live in the store).",
        lambda: windows.open_sessions,
    )
    apple = AppleService(
        store,
        dev=config.dev,
        on_devices_changed=catalogue.note_devices,
        max_offers=config.apple_max_offers,
    )
    # /metrics is served here, or on its own address (metrics_listen).
    here = None if config.metrics_listen is not None else _metrics_access(config)
    ready = cluster.readiness_handler(store, draining=lambda: server.draining)
    handler = build_handler(
        store,
        admin,
        metrics,
        windows,
        apple,
        metrics_access=here,
        ready=ready,
        enrollment=endpoints.handlers,
    )
    server = Server(handler, config.limits, metrics=metrics)
    # Devices enrolled here present certificates of the built-in CA.
    issued_by = enrollment.ca.pem if enrollment.ready else None
    listeners = _listeners(config, reuse_port, announce, issued_by)
    scraping = _metrics_server(config, metrics, admin, reuse_port, announce, ready=ready)

    async def refresh_gauges() -> None:
        while True:
            depth[0] = float(await store.queue_depth())
            await push.refresh()
            await trio.sleep(GAUGE_REFRESH_SECONDS)

    async def on_signals(nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                log.info("draining on %s", signal.Signals(sig).name)
                server.drain()  # (the metrics server is cancelled once it is done)
                return

    try:
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            await nursery.start(presence.run)
            if push.topic:
                client = await stack.enter_async_context(_apns_client(config, push))
                pusher = _pusher(config, store, client, presence, metrics)
                admin.on_enqueued = catalogue.on_enqueued = pusher.wake
                nursery.start_soon(pusher.run)
            if clock is not time.time:
                nursery.start_soon(cluster.tick, catalogue.wake, TESTING_TICK_SECONDS)
            await nursery.start(catalogue.follow)
            await nursery.start(catalogue.run)
            nursery.start_soon(on_signals, nursery)
            nursery.start_soon(refresh_gauges)
            if scraping is not None:
                await nursery.start(scraping[0].run, scraping[1])
            await server.run(listeners)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


async def _enrollment(
    config: Config, store: Store, catalogue: Catalogue, metrics: Metrics
) -> tuple[EnrollmentService, _PushCertificate, EnrollmentEndpoints]:
    """The enrollment service (its CA loaded or created), the push certificate this node
    uses, and the device-facing enrollment endpoints."""
    enrollment = EnrollmentService(
        store, config.enrollment, on_devices_changed=catalogue.note_devices
    )
    try:
        await enrollment.start()
    except CaError as e:
        raise ConfigError(f"enrollment: {e}") from None
    push = _PushCertificate(config, enrollment)
    await push.refresh()
    push.register(metrics)
    endpoints = EnrollmentEndpoints(
        enrollment, tls=config.tls_cert is not None, push_topic=lambda: push.topic
    )
    return enrollment, push, endpoints


def _listeners(
    config: Config, reuse_port: bool, announce: bool, issued_by: bytes | None = None
) -> list[Listener]:
    """The main port's listeners (under TLS when configured; client certificates of the
    ``--client-ca`` bundle and of ``issued_by``, the built-in CA, are accepted)."""
    context: ssl.SSLContext | None = None
    if config.tls_cert is not None and config.tls_key is not None:
        context = server_ssl_context(
            config.tls_cert, config.tls_key, config.client_ca, client_ca_data=issued_by
        )
    listeners: list[Listener] = []
    for host, port in config.listen:
        sock = _listen_socket(host, port, reuse_port)
        tcp = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        listeners.append(tcp if context is None else trio.SSLListener(tcp, context))
        if announce:
            bound = sock.getsockname()[1]
            scheme = "https" if context else "http"
            print(f"mdmgate listening on {scheme}://{host}:{bound}", flush=True)
    return listeners


def _node(config: Config, store: Store) -> tuple[Metrics, cluster.NodePresence]:
    """This node's metrics (labelled with its name) and its presence in the cluster."""
    node = cluster.node_name(config.node_name)
    log.info("mdmgate node %s", node)
    metrics = Metrics(node=node)
    presence = cluster.NodePresence(store, node)
    metrics.register_gauge(
        "mdmgate_cluster_nodes",
        "Gateway nodes alive (unexpired node leases in the database), this one included.",
        lambda: len(presence.live),
    )
    return metrics, presence


def _catalogue_clock(config: Config) -> Callable[[], float]:
    """The wall clock, or the ``[testing]`` one that runs faster."""
    if config.testing_clock_scale != 1 and config.testing_clock_epoch is not None:
        return cluster.scaled_clock(config.testing_clock_scale, config.testing_clock_epoch)
    return time.time


def _pusher(
    config: Config,
    store: Store,
    client: ApnsClient,
    presence: cluster.NodePresence,
    metrics: Metrics,
) -> DevicePusher:
    """The APNs pusher: ``[apns] rate`` is the whole cluster's budget, this node paces at
    its share of it."""
    pusher = DevicePusher(store, client, rate=config.apns_rate)
    presence.subscribe(pusher.share)
    metrics.register_gauge(
        "mdmgate_apns_push_rate",
        "Pushes per second this node paces at: its share of [apns] rate.",
        lambda: client.max_pushes_per_second or 0.0,
    )
    return pusher


class _PushCertificate:
    """The MDM push topic and certificate this node pushes with: ``[apns]``'s, else the
    one uploaded through the admin API (read from the store at start; its topic and
    expiry are re-read with the gauges, so every node shows an upload made on another)."""

    def __init__(self, config: Config, enrollment: EnrollmentService) -> None:
        self.config = config
        self.enrollment = enrollment
        self.uploaded: PushCertificate | None = None
        self.expires_at: float | None = None
        self._configured_expiry = _certificate_expiry(config.apns_cert)

    @property
    def topic(self) -> str | None:
        if self.config.apns_topic:
            return self.config.apns_topic
        return self.uploaded.topic if self.uploaded is not None else None

    async def refresh(self) -> None:
        try:
            self.uploaded = await self.enrollment.push_certificate()
        except ValueError as e:  # a passphrase that does not open it: say so, keep going
            log.warning("the uploaded push certificate cannot be read: %s", e)
        if self._configured_expiry is not None:
            self.expires_at = self._configured_expiry
        elif self.uploaded is not None:
            self.expires_at = self.uploaded.not_after.timestamp()
        if self.expires_at is not None and self.expires_at - time.time() < WARN_SECONDS:
            log.warning(
                "the APNs push certificate expires at %s: renew it before devices stop"
                " answering pushes",
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.expires_at)),
            )

    def register(self, metrics: Metrics) -> None:
        metrics.register_gauge(
            "mdmgate_apns_certificate_expiry_seconds",
            "Seconds until the APNs push certificate expires (negative: expired; absent"
            " value 0 with no certificate).",
            lambda: (self.expires_at - time.time()) if self.expires_at is not None else 0.0,
        )


#: Warn this long before the push certificate expires (Apple's last a year).
WARN_SECONDS = 30 * 86400.0


def _certificate_expiry(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read apns cert {path}: {e}") from None
    return cert.not_valid_after_utc.timestamp()


def _apns_client(config: Config, push: _PushCertificate) -> ApnsClient:
    context: ssl.SSLContext | None = None
    if config.apns_url.startswith("https://"):
        context = ssl.create_default_context()
        if config.apns_cert is not None and config.apns_key is not None:
            # Certificate auth: the MDM push certificate names the topic.
            context.load_cert_chain(config.apns_cert, config.apns_key)
        elif push.uploaded is not None and config.apns_auth_key is None:
            _load_uploaded(context, push.uploaded)
    signer = None
    if config.apns_auth_key and config.apns_key_id and config.apns_team_id:
        try:
            key = Path(config.apns_auth_key).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read apns auth_key {config.apns_auth_key}: {e}") from None
        signer = es256_jwt_signer(key, config.apns_key_id, config.apns_team_id)
    return ApnsClient(
        config.apns_url,
        topic=push.topic or "",
        ssl_context=context,
        jwt_signer=signer,
        max_pushes_per_second=config.apns_rate,
    )


def _load_uploaded(context: ssl.SSLContext, pushed: PushCertificate) -> None:
    """Loads the uploaded push certificate into a TLS context: through a private temporary
    directory, since OpenSSL reads key pairs from files, removed at once."""
    with tempfile.TemporaryDirectory(prefix="mdmgate-apns-") as folder:
        cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert.write_bytes(pushed.cert_pem())
        key.touch(mode=0o600)
        key.write_bytes(pushed.key_pem())
        context.load_cert_chain(cert, key)


async def _open_once(config: Config) -> None:
    store = await open_store(config.db, config.durability)
    await store.aclose()


def _worker(config: Config, index: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if config.node_name is not None:
        config = replace(config, node_name=cluster.node_name(config.node_name, index))
    trio.run(_serve, config, True, index == 0)


def run(config: Config) -> int:
    """Runs the gateway until SIGINT/SIGTERM; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if config.dev:
        log.warning("development mode: devices are accepted without registration or credentials")
    if config.workers == 1:
        trio.run(_serve, config, False, True)
        return 0
    # The schema is created (or migrated) here, once, before the workers open the database.
    trio.run(_open_once, config)
    # One process per worker, each with its own listening socket on the shared port.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(config, i)) for i in range(config.workers)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
