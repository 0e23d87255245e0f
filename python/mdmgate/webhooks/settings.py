"""The ``[webhooks]`` configuration table."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["WebhookSettings", "WebhookSettingsError"]


class WebhookSettingsError(ValueError):
    """A ``[webhooks]`` value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class WebhookSettings:
    #: Lets webhook URLs reach loopback, private and other internal addresses, and plain
    #: ``http`` (see :mod:`mdmgate.webhooks.ssrf`): for receivers on the gateway's own host
    #: or network. ``serve --dev`` implies it.
    allow_private: bool = False
    #: Attempts at one event before it goes to the dead letters and the subscription moves
    #: on. 15, with the backoff of :class:`~mdmgate.webhooks.delivery.RetryPolicy`, keep an
    #: event for about 30 to 60 minutes: a receiver being redeployed or briefly down loses
    #: nothing, while one that is gone for good does not hold every later event back for
    #: longer than that. Each dead letter stays listed, and its event stays in the log.
    max_attempts: int = 15
    #: Seconds one request may take, connecting and the answer included: a receiver
    #: should answer at once and work afterwards.
    timeout: float = 10.0

    @classmethod
    def from_table(cls, raw: object) -> WebhookSettings:
        """The settings of a config table; :class:`WebhookSettingsError` naming an unknown
        key or a bad value."""
        if not isinstance(raw, dict):
            raise WebhookSettingsError("webhooks must be a table")
        known = [f.name for f in fields(cls)]
        bad = sorted(set(raw) - set(known))
        if bad:
            raise WebhookSettingsError(
                f"unknown webhooks keys: {', '.join(bad)} (known: {', '.join(known)})"
            )
        values: dict[str, Any] = dict(raw)
        if "timeout" in values and type(values["timeout"]) is int:
            values["timeout"] = float(values["timeout"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raises :class:`WebhookSettingsError` naming the first unusable value."""
        if not isinstance(self.allow_private, bool):
            raise WebhookSettingsError("webhooks allow_private must be true or false")
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
            raise WebhookSettingsError("webhooks max_attempts must be a whole number from 1 to 100")
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise WebhookSettingsError("webhooks timeout must be a number of seconds")
        if not 0 < timeout <= 120:
            raise WebhookSettingsError(
                "webhooks timeout must be a number of seconds above 0, at most 120"
            )
