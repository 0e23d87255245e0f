"""``mdmgate serve``: wires storage, the admin API and the HTTP layer into one process (or
several sharing the port), and drains cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import trio

from mdmgate.api_tokens import ApiTokens
from mdmgate.apple.service import AppleService
from mdmgate.catalogue.service import Catalogue
from mdmgate.enrollment.ca import CaError
from mdmgate.enrollment.service import EnrollmentService
from mdmgate.server import api_events, api_tokens, api_webhooks, cluster
from mdmgate.server.admin import AdminApi
from mdmgate.server.config import (
    DB_URLS,
    Config,
    ConfigError,
    check_db,
    load_config,
    metrics_access,
    webhook_settings,
)
from mdmgate.server.enrollment_api import EnrollmentApi
from mdmgate.server.enrollment_http import EnrollmentEndpoints
from mdmgate.server.http import Listener, Server, server_ssl_context
from mdmgate.server.metrics import Metrics
from mdmgate.server.push_wiring import PushCertificateWatch, Pushing
from mdmgate.server.types import Handler, Request, Response
from mdmgate.storage import Store
from mdmgate.storage.memory import MemoryStore
from mdmgate.storage.pgwire import PgError
from mdmgate.storage.postgres import (
    POSTGRES_SCHEMES,
    PostgresStore,
    SchemaTooNew,
    redact_url,
)
from mdmgate.storage.sqlite import SQLiteStore
from mdmgate.webhooks.delivery import WebhookDeliverer
from mdmgate.windows.service import WindowsService

__all__ = [
    "Config",
    "ConfigError",
    "EventPruning",
    "build_handler",
    "load_config",
    "open_store",
    "run",
]

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
#: The event log is pruned once an hour in the cluster, by whichever node holds the lease
#: :data:`PRUNE_LEASE` (claimed for the hour and left to expire): every node looks every
#: :data:`PRUNE_LOOK_SECONDS`, so a node that stopped delays pruning that much at most.
PRUNE_HOUR = 3600.0
PRUNE_LEASE = "events:prune"
PRUNE_LOOK_SECONDS = 300.0


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
        check_db(url)
        try:
            return await PostgresStore.open(url)
        except (PgError, SchemaTooNew) as e:
            reason = " ".join(str(e).split())  # libpq's reason, on one line
            raise OSError(f"cannot use the database {redact_url(url)}: {reason}") from e
    raise ConfigError(f"unsupported database URL {url!r}; use {DB_URLS}")


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
    carry one of the admin API's tokens, of any scope (others get its 401), with ``"open"``
    for anyone."""

    async def scrape(request: Request) -> Response:
        if access != "open":
            refusal = await admin.authorize(request)
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
    scrape = _metrics_only(metrics_handler(metrics, admin, metrics_access(config)), ready)
    host, port = config.metrics_listen
    sock = _listen_socket(host, port, reuse_port)
    if announce:
        bound = sock.getsockname()[1]
        print(f"mdmgate metrics on http://{host}:{bound}/metrics", flush=True)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    return Server(scrape, config.limits, metrics=Metrics(node=metrics.node)), [listener]


def _admin(
    config: Config,
    store: Store,
    catalogue: Catalogue,
    enrollment: EnrollmentApi,
    webhooks: WebhookDeliverer,
) -> AdminApi:
    """The admin API with every resource this process serves: named tokens, the event log
    and webhooks beside the built-in ones."""
    tokens = ApiTokens(store)
    return AdminApi(
        store,
        config.api_token,
        dev=config.dev,
        catalogue=catalogue,
        enrollment=enrollment,
        token_scope=tokens.scope_of,
        extra_operations=[
            *api_tokens.operations(api_tokens.TokensApi(tokens)),
            *api_events.operations(api_events.EventsApi(store)),
            *api_webhooks.operations(
                api_webhooks.WebhooksApi(store, webhooks.settings, on_changed=webhooks.wake)
            ),
        ],
        extra_types=[
            *api_tokens.REQUEST_TYPES,
            *api_tokens.RESPONSE_TYPES,
            *api_events.RESPONSE_TYPES,
            *api_webhooks.REQUEST_TYPES,
            *api_webhooks.RESPONSE_TYPES,
        ],
    )


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
    webhooks = WebhookDeliverer(store, presence.name, webhook_settings(config))
    admin = _admin(
        config, store, catalogue, EnrollmentApi(enrollment, endpoints.profile_url), webhooks
    )
    pruning = EventPruning(store, presence.name, retention_days=config.events_retention_days)
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
    here = None if config.metrics_listen is not None else metrics_access(config)
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

    pushing = Pushing(config, push)

    async def refresh_gauges() -> None:
        while True:
            depth[0] = float(await store.queue_depth())
            await push.refresh()
            pushing.follow()
            await trio.sleep(GAUGE_REFRESH_SECONDS)

    async def on_signals(nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                log.info("draining on %s", signal.Signals(sig).name)
                server.drain()  # (the metrics server is cancelled once it is done)
                return

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(presence.run)
            nursery.start_soon(pushing.run, store, presence, metrics, (admin, catalogue))
            if clock is not time.time:
                nursery.start_soon(cluster.tick, catalogue.wake, TESTING_TICK_SECONDS)
            await nursery.start(catalogue.follow)
            await nursery.start(catalogue.run)
            await nursery.start(pruning.run)
            await nursery.start(webhooks.run)
            nursery.start_soon(on_signals, nursery)
            nursery.start_soon(refresh_gauges)
            if scraping is not None:
                await nursery.start(scraping[0].run, scraping[1])
            await server.run(listeners)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


class EventPruning:
    """Deletes events older than ``retention_days`` from the log, at most once an hour
    across every node sharing ``store`` (``node`` names this one in the lease); ``clock``
    is Unix time."""

    def __init__(
        self,
        store: Store,
        node: str,
        *,
        retention_days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retention_days > 0:
            raise ValueError("retention_days must be positive")
        self.store = store
        self.node = node
        self.retention = retention_days * 86_400.0
        self.clock = clock
        self._hour_ends = -math.inf

    async def once(self) -> int | None:
        """Prunes if this hour's pruning is this node's to do: how many events went, or
        ``None`` when another node (or this one) pruned within the hour."""
        now = self.clock()
        # A claim by the lease's own holder renews it: this node keeps its own hour.
        if now < self._hour_ends:
            return None
        until = now + PRUNE_HOUR
        if not await self.store.claim_lease(PRUNE_LEASE, self.node, now=now, until=until):
            return None
        self._hour_ends = until
        return await self.store.prune_events(now - self.retention)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                pruned = await self.once()
                if pruned:
                    log.info("event log: %d event(s) older than the retention pruned", pruned)
            except Exception:  # a store away for a while must not stop the pruning for good
                log.exception("pruning the event log failed")
            await trio.sleep(PRUNE_LOOK_SECONDS)


async def _enrollment(
    config: Config, store: Store, catalogue: Catalogue, metrics: Metrics
) -> tuple[EnrollmentService, PushCertificateWatch, EnrollmentEndpoints]:
    """The enrollment service (its CA loaded or created), the push certificate this node
    uses, and the device-facing enrollment endpoints."""
    enrollment = EnrollmentService(
        store, config.enrollment, on_devices_changed=catalogue.note_devices
    )
    try:
        await enrollment.start()
    except CaError as e:
        raise ConfigError(f"enrollment: {e}") from None
    push = PushCertificateWatch(config, enrollment)
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
