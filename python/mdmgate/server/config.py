"""``mdmgate serve``'s configuration: the TOML file, the command-line overrides and the
environment, read into one checked :class:`Config` (every refusal a :class:`ConfigError`
naming the key)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mdmgate.apple.push import APNS_PRODUCTION_URL
from mdmgate.enrollment.settings import EnrollmentSettings, SettingsError
from mdmgate.server.http import Limits
from mdmgate.storage.postgres import POSTGRES_SCHEMES, check_postgres_url
from mdmgate.webhooks.settings import WebhookSettings, WebhookSettingsError

__all__ = [
    "DB_URLS",
    "Config",
    "ConfigError",
    "check_db",
    "load_config",
    "metrics_access",
    "parse_listen",
    "webhook_settings",
]


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
    #: Events (config table ``[events]``): days the event log keeps an event. 30: a
    #: console offline longer than a month must resync from the resources anyway, and the
    #: log (and its pruning) stays proportional to a month of fleet activity.
    events_retention_days: float = 30.0
    #: Webhooks (config table ``[webhooks]``): see
    #: :class:`~mdmgate.webhooks.settings.WebhookSettings` for each key and its default.
    webhooks_allow_private: bool = False
    webhooks_max_attempts: int = 15
    webhooks_timeout: float = 10.0


def metrics_access(config: Config) -> str:
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
    "events": ("retention_days",),
    "webhooks": ("allow_private", "max_attempts", "timeout"),
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


def _check_events(config: Config) -> None:
    days = config.events_retention_days
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= 36500:
        raise ConfigError("events retention_days must be a number of days above 0 (at most 36500)")


def webhook_settings(config: Config) -> WebhookSettings:
    """The ``[webhooks]`` settings (``--dev`` lets webhooks reach private addresses)."""
    try:
        settings = WebhookSettings(
            allow_private=config.webhooks_allow_private,
            max_attempts=config.webhooks_max_attempts,
            timeout=config.webhooks_timeout,
        )
        settings.check()
    except WebhookSettingsError as e:
        raise ConfigError(str(e)) from None
    return replace(settings, allow_private=True) if config.dev else settings


def _check(config: Config) -> Config:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.client_ca is not None and config.tls_cert is None:
        raise ConfigError("--client-ca needs --tls-cert and --tls-key")
    if not 1 <= config.workers <= 64:
        raise ConfigError("--workers must be from 1 to 64")
    if config.durability not in ("full", "normal"):
        raise ConfigError("durability must be 'full' or 'normal'")
    check_db(config.db)
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
    _check_events(config)
    webhook_settings(config)
    return config


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """The config file (TOML), then command-line overrides, then ``MDMGATE_API_TOKEN``."""
    values = _read_toml(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if os.environ.get("MDMGATE_API_TOKEN"):
        values.setdefault("api_token", os.environ["MDMGATE_API_TOKEN"])
    unknown = sorted(set(values) - {f.name for f in fields(Config)} - set(_TABLES))
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
    values.update(_table("events", values.pop("events", {})))
    values.update(_table("webhooks", values.pop("webhooks", {})))
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


DB_URLS = "sqlite:///PATH, postgresql://[USER@][HOST][:PORT]/DATABASE or memory:"


def check_db(url: str) -> None:
    if url in ("memory:", "memory://") or url.startswith("sqlite:///"):
        return
    if not url.startswith(POSTGRES_SCHEMES):
        raise ConfigError(f"unsupported database URL {url!r}; use {DB_URLS}")
    try:
        check_postgres_url(url)
    except ValueError as e:
        raise ConfigError(str(e)) from None
