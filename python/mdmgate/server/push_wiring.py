"""This node's APNs pushing: the push certificate it uses (``[apns]``'s, or the one
uploaded through the admin API and kept in the store), and the client and pusher, which
follow an upload made on any node without a restart."""

from __future__ import annotations

import hashlib
import logging
import ssl
import tempfile
import time
from pathlib import Path

import trio
from cryptography import x509

from mdmgate.apple.push import ApnsClient, es256_jwt_signer
from mdmgate.apple.pusher import DevicePusher
from mdmgate.catalogue.service import Catalogue
from mdmgate.enrollment.push_certificate import MATERIAL as PUSH_MATERIAL
from mdmgate.enrollment.push_certificate import PushCertificate
from mdmgate.enrollment.service import EnrollmentService
from mdmgate.server import cluster
from mdmgate.server.admin import AdminApi
from mdmgate.server.config import Config, ConfigError
from mdmgate.server.metrics import Metrics
from mdmgate.storage import Store

__all__ = ["PushCertificateWatch", "Pushing"]

log = logging.getLogger("mdmgate.server")


class Pushing:
    """This node's APNs pushing: it starts once there is a topic (at start, or when a push
    certificate is first uploaded, on any node), and the client switches to the uploaded
    certificate whenever another is stored (:meth:`follow`, after each refresh). Credentials
    in ``[apns]`` (cert and key, or auth_key) win over uploads. ``[apns] rate`` is the whole
    cluster's budget; this node paces at its share of it."""

    def __init__(self, config: Config, push: PushCertificateWatch) -> None:
        self.config = config
        self.push = push
        self.client: ApnsClient | None = None
        #: The topic and the digest of the uploaded certificate the client pushes with.
        self._using: tuple[str, bytes | None] | None = None
        self._ready = trio.Event()
        self._configured = config.apns_cert is not None or config.apns_auth_key is not None
        self._told_configured_win = False

    def _wanted(self) -> tuple[str, bytes | None] | None:
        topic = self.push.topic
        if not topic:
            return None
        return topic, None if self._configured else self.push.digest

    def follow(self) -> None:
        """Starts pushing, or switches the client's credentials, if what this node should push
        with has changed (never waits)."""
        uploaded = self.push.uploaded
        if self._configured and uploaded is not None and not self._told_configured_win:
            self._told_configured_win = True
            log.info(
                "APNs: pushing with the credentials of [apns]; the uploaded push certificate"
                " (topic %s) is not used for pushing",
                uploaded.topic,
            )
        wanted = self._wanted()
        if wanted is None or wanted == self._using:
            return
        if self.client is None:
            self._ready.set()
            return
        self._using = wanted  # (a certificate that cannot be loaded is reported once)
        try:
            self.client.use_credentials(_tls_context(self.config, self.push), wanted[0])
        except (OSError, ValueError) as e:
            log.error("APNs: cannot push with the new credentials, keeping the old: %s", e)
            return
        log.info("APNs: the push credentials changed; new pushes use topic %s", wanted[0])

    async def run(
        self,
        store: Store,
        presence: cluster.NodePresence,
        metrics: Metrics,
        queued_by: tuple[AdminApi, Catalogue],
    ) -> None:
        """Waits for a topic, then pushes to the devices ``queued_by`` queue commands for,
        until cancelled."""
        self.follow()
        await self._ready.wait()
        # Client and credentials are taken together, before any refresh can change them.
        client = _apns_client(self.config, self.push)
        self.client, self._using = client, self._wanted()
        log.info("APNs: pushing with topic %s", client.topic)
        async with client:
            pusher = DevicePusher(store, client, rate=self.config.apns_rate)
            presence.subscribe(pusher.share)
            metrics.register_gauge(
                "mdmgate_apns_push_rate",
                "Pushes per second this node paces at: its share of [apns] rate.",
                lambda: client.max_pushes_per_second or 0.0,
            )
            for queue in queued_by:
                queue.on_enqueued = pusher.wake
            await pusher.run()


class PushCertificateWatch:
    """The MDM push topic and certificate this node pushes with: ``[apns]``'s, else the
    one uploaded through the admin API (read from the store at start, and again with the
    gauges whenever what the store holds changed, so every node follows an upload made on
    another)."""

    def __init__(self, config: Config, enrollment: EnrollmentService) -> None:
        self.config = config
        self.enrollment = enrollment
        self.uploaded: PushCertificate | None = None
        #: SHA-256 of what the store holds for the uploaded certificate (None: nothing).
        self.digest: bytes | None = None
        self.expires_at: float | None = None
        self._configured_expiry = _certificate_expiry(config.apns_cert)
        self._warned_at = float("-inf")

    @property
    def topic(self) -> str | None:
        if self.config.apns_topic:
            return self.config.apns_topic
        return self.uploaded.topic if self.uploaded is not None else None

    async def refresh(self) -> None:
        stored = await self.enrollment.store.get_material(PUSH_MATERIAL)
        digest = hashlib.sha256(stored).digest() if stored is not None else None
        if digest != self.digest:
            self.digest = digest  # (a certificate that cannot be read is reported once)
            try:
                self.uploaded = await self.enrollment.push_certificate()
            except ValueError as e:  # a passphrase that does not open it: say so, keep going
                log.warning("the uploaded push certificate cannot be read: %s", e)
        if self._configured_expiry is not None:
            self.expires_at = self._configured_expiry
        elif self.uploaded is not None:
            self.expires_at = self.uploaded.not_after.timestamp()
        now = time.time()
        expiring = self.expires_at is not None and self.expires_at - now < WARN_SECONDS
        if expiring and now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            assert self.expires_at is not None
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
#: ... once an hour, not at every refresh.
WARN_EVERY_SECONDS = 3600.0


def _certificate_expiry(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read apns cert {path}: {e}") from None
    return cert.not_valid_after_utc.timestamp()


def _tls_context(config: Config, push: PushCertificateWatch) -> ssl.SSLContext | None:
    """The client TLS context for APNs (None for a cleartext test server): with ``[apns]``'s
    certificate, else none with token auth, else the uploaded certificate."""
    if not config.apns_url.startswith("https://"):
        return None
    context = ssl.create_default_context()
    if config.apns_cert is not None and config.apns_key is not None:
        # Certificate auth: the MDM push certificate names the topic.
        context.load_cert_chain(config.apns_cert, config.apns_key)
    elif push.uploaded is not None and config.apns_auth_key is None:
        _load_uploaded(context, push.uploaded)
    return context


def _apns_client(config: Config, push: PushCertificateWatch) -> ApnsClient:
    context = _tls_context(config, push)
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
