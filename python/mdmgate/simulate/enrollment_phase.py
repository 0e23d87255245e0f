"""The enrollment phase of a simulated run (``mdmgate simulate --enroll``): instead of being
registered through the admin API, every device enrolls at its first check-in, as a real one
does (:mod:`mdmgate.simulate.enroll`), and then checks in with the identity the gateway
issued it.

Before the fleet runs, :meth:`EnrollmentPhase.prepare` makes one enrollment token per org
through the admin API (``POST /api/v1/enrollment/tokens``: as many uses as the org has
devices, valid for the run, its drain and a margin), unless the run was handed a token value
to use for every device. Windows devices then authenticate by certificate only (their
profiles' ``auth`` becomes ``certificate``: the provisioning document configures exactly
that); Apple devices keep signing their messages or showing their identity over mTLS, as the
scenario says, with the identity SCEP issued.

Each device's enrollment counts in the stats as a session of kind ``enroll``
(:meth:`~mdmgate.simulate.stats.Stats.enrollment`). A refusal that would be refused again (a
wrong, expired, revoked or used-up token, a refused key, a SCEP failure) makes the device give
up: it never checks in. A failure that may pass (the connection, an overloaded gateway) is
tried again a few seconds later. Either way the first failure of each kind is noted with
what the gateway said, and a device that ends the run not enrolled fails it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from mdmgate.simulate.enroll import (
    EnrollFailed,
    apple_profile_path,
    enroll_apple,
    enroll_windows,
    new_key,
)
from mdmgate.simulate.scenario import APPLE_PLATFORMS, DeviceProfile, Scenario
from mdmgate.simulate.stats import Stats
from mdmgate.simulate.transport import AdminApi, ApiFailure, HttpClient

__all__ = ["EnrollmentPhase", "EnrollmentUnusable", "enrolling_profiles"]

#: Token lifetime beyond the run's duration and grace (seconds).
_TOKEN_MARGIN: Final = 3600.0
#: The longest token the admin API makes (hours).
_MAX_TOKEN_HOURS: Final = 24 * 366

# A device's state; 0: it has not enrolled yet.
_ENROLLED, _GAVE_UP = 1, 2


class EnrollmentUnusable(Exception):
    """The run cannot enroll its devices (no token, no TLS, the gateway has no
    enrollment); the message says what to change."""


def enrolling_profiles(profiles: Sequence[DeviceProfile]) -> list[DeviceProfile]:
    """The profiles as enrolled devices use them: Windows by certificate only."""
    return [
        p if p.platform in APPLE_PLATFORMS else msgspec.structs.replace(p, auth="certificate")
        for p in profiles
    ]


class EnrollmentPhase:
    """Who has enrolled, and the tokens they enroll with; see the module documentation.
    ``token``: a token value every device uses (no token is made); ``note``: where the
    run's notes go."""

    def __init__(
        self,
        *,
        client: HttpClient,
        api: AdminApi | None,
        stats: Stats,
        profiles: Sequence[DeviceProfile],
        scenario: Scenario,
        token: str | None,
        note: Callable[[str], None],
    ) -> None:
        if not client.target.tls:
            raise EnrollmentUnusable(
                "enrollment needs an https:// target: the gateway serves enrollment under "
                "TLS (mdmgate serve --tls-cert/--tls-key), and enrolled devices show their "
                "certificates over it"
            )
        if api is None and not token:
            raise EnrollmentUnusable(
                "enrollment needs an admin API token (--token, to make enrollment tokens) "
                "or an enrollment token value (--enrollment-token)"
            )
        self.client = client
        self.api = api
        self.stats = stats
        self.profiles = profiles
        self.scenario = scenario
        self.given = token
        self.note = note
        self.state = bytearray(len(profiles))
        #: Devices neither known to the gateway yet (:meth:`arrived`) nor given up.
        self.open = len(profiles)
        self.arrivals = bytearray(len(profiles))
        #: Set once every device has arrived at the gateway or given up.
        self.settled = trio.Event()
        if not profiles:
            self.settled.set()
        #: Org -> (token value, profile URL or None).
        self.tokens: dict[str, tuple[str, str | None]] = {}
        self.token_ids: dict[str, str] = {}
        self._noted: set[tuple[str, str]] = set()
        target = client.target
        self.base_url = f"{target.scheme}://{target.host_header}{target.prefix}"

    # -- before the run

    async def prepare(self) -> None:
        """Checks the gateway enrolls and makes the tokens; :class:`EnrollmentUnusable`
        when it cannot."""
        if self.given:
            self.tokens = {p.org: (self.given, None) for p in self.profiles}
            return
        api = self.api
        assert api is not None  # __init__ refused a run with neither
        # A gateway without enrollment answers 503 until it is restarted with it: not the
        # passing overload the admin API client waits out.
        patience, api.patience = api.patience, 0.0
        try:
            await api.call("GET", "/api/v1/enrollment/ca")
        except ApiFailure as e:
            raise EnrollmentUnusable(f"the gateway cannot enroll devices: {e}") from None
        finally:
            api.patience = patience
        per_org: dict[str, int] = {}
        for profile in self.profiles:
            per_org[profile.org] = per_org.get(profile.org, 0) + 1
        run = self.scenario.run
        hours = (run.ramp_up + run.duration + run.grace + _TOKEN_MARGIN) / 3600.0
        for org, count in per_org.items():
            body = {
                "org": org,
                "max_uses": count,
                "expires_in_hours": min(hours, float(_MAX_TOKEN_HOURS)),
                "description": f"mdmgate simulate, seed {self.scenario.seed}",
            }
            try:
                _, answer = await api.call("POST", "/api/v1/enrollment/tokens", body, retry=False)
            except ApiFailure as e:
                raise EnrollmentUnusable(f"making the enrollment token of {org}: {e}") from None
            if not isinstance(answer, dict) or not isinstance(answer.get("value"), str):
                raise EnrollmentUnusable(f"the enrollment token of {org} came without a value")
            url = answer.get("apple_profile_url")
            self.tokens[org] = (answer["value"], url if isinstance(url, str) else None)
            made = answer.get("token")
            if isinstance(made, dict) and isinstance(made.get("id"), str):
                self.token_ids[org] = made["id"]

    # -- a device

    def enrolled(self, index: int) -> bool:
        return self.state[index] == _ENROLLED

    def gave_up(self, index: int) -> bool:
        return self.state[index] == _GAVE_UP

    async def enroll(self, index: int, device: Any) -> Any:
        """Enrolls device ``index`` (its :class:`~mdmgate.simulate.apple.DeviceIdentity`),
        or records why not (``None``)."""
        profile = self.profiles[index]
        value, profile_url = self.tokens[profile.org]
        target = self.client.target
        apple = profile.platform in APPLE_PLATFORMS
        # A fresh key each time: one the gateway certified already would be refused again.
        key = await new_key("rsa" if apple else self.scenario.enrollment.windows_key)
        # Its making is the device's own business, not the gateway's latency.
        started = trio.current_time()
        exchange = self.client.exchange(new_connection=profile.new_connection)
        try:
            if apple:
                assert isinstance(key, rsa.RSAPrivateKey)
                path = apple_profile_path(value, profile_url, target.prefix)
                got = await enroll_apple(
                    exchange, profile, path, stats=self.stats, key=key, prefix=target.prefix
                )
                device.use_identity(got.identity, topic=got.topic)
                identity: Any = got.identity
            else:
                identity = await enroll_windows(
                    exchange,
                    profile,
                    value,
                    stats=self.stats,
                    key=key,
                    base_url=self.base_url,
                    prefix=target.prefix,
                )
        except EnrollFailed as failed:
            self.stats.enrollment(profile.platform, trio.current_time() - started, failed.kind)
            # The gateway's words once per platform and kind: enough to see why.
            seen = ("apple" if apple else "windows", failed.kind)
            if seen not in self._noted:
                self._noted.add(seen)
                self.note(f"enrollment of {profile.id} failed: {failed}")
            if failed.final:
                self.state[index] = _GAVE_UP
                self._close(index)
            return None
        finally:
            await exchange.aclose()
        self.stats.enrollment(profile.platform, trio.current_time() - started)
        self.state[index] = _ENROLLED
        return identity

    def arrived(self, index: int) -> None:
        """The gateway knows device ``index`` now (its first check-in after enrolling was
        taken): commands may be queued for it."""
        self._close(index)

    def _close(self, index: int) -> None:
        if not self.arrivals[index]:
            self.arrivals[index] = 1
            self.open -= 1
            if self.open == 0:
                self.settled.set()

    # -- after the run

    def summary(self) -> dict[str, Any]:
        """What the report's ``meta.enrollment`` shows (with the runner's count of devices
        the gateway does not know at the end)."""
        return {
            "enrolled": self.state.count(_ENROLLED),
            "gave_up": self.state.count(_GAVE_UP),
            "tokens": dict(self.token_ids) if not self.given else "given",
            "windows_key": self.scenario.enrollment.windows_key,
        }
