"""Where a webhook may not go: the gateway's own network (server-side request forgery).

Whoever may create a webhook chooses a URL the gateway then POSTs to from inside its
network. Left unchecked, that reaches what only the gateway can reach: the cloud metadata
service (169.254.169.254), the database, admin ports on loopback. So a webhook URL must be
``https`` and every address its host resolves to must be globally routable; refused are
unspecified, loopback, link-local, multicast, private (RFC 1918, unique local, documentation
and benchmarking ranges), reserved and other not globally routable ranges (carrier-grade
NAT), and those same addresses dressed as IPv6: IPv4-mapped (``::ffff:127.0.0.1``),
IPv4-compatible (``::7f00:1``), NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``). One
refused address among a host's answers refuses the host (a name that resolves to a public
and a private address would otherwise reach the private one on some attempts).

The check runs when the webhook is created (the administrator learns at once) and again on
every delivery, where the request goes to the very address that was checked, never to a
second resolution of the name: a DNS answer that changes between check and connection (DNS
rebinding) cannot slip a private address in. TLS still verifies the certificate against the
host name.

``[webhooks] allow_private = true`` (or ``serve --dev``) lifts all of this, plain ``http``
included: for receivers on the gateway's own host or network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

__all__ = [
    "MAX_URL_LENGTH",
    "Address",
    "Resolver",
    "UrlRefused",
    "WebhookUrl",
    "address_refusal",
    "parse_webhook_url",
    "system_resolver",
    "vetted_addresses",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port)``: the addresses (text) a host name stands for; ``OSError`` when
#: there are none.
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UrlRefused(ValueError):
    """A webhook URL the gateway will not send to; the message says why."""


@dataclass(frozen=True)
class WebhookUrl:
    """A checked webhook URL, split for the request."""

    url: str
    scheme: str
    #: Lower case; an IPv6 literal without brackets.
    host: str
    port: int
    #: The request target: path and query (``/`` at least).
    target: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def literal(self) -> Address | None:
        """The address, when the host is one."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def _class_of(address: Address) -> str | None:
    # The most telling name first: 127.0.0.1 is private too, but "loopback" says more.
    classes = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not globally routable"),
    )
    return next((name for flagged, name in classes if flagged), None)


def address_refusal(address: Address) -> str | None:
    """Why a webhook must not be sent to ``address`` (its class), ``None`` when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: tuple[str, ipaddress.IPv4Address] | None = None
        if address.ipv4_mapped is not None:
            embedded = ("IPv4-mapped", address.ipv4_mapped)
        elif address in _NAT64:
            embedded = ("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        elif address.sixtofour is not None:
            embedded = ("6to4", address.sixtofour)
        elif address in _IPV4_COMPATIBLE and int(address) > 1:
            embedded = ("IPv4-compatible", ipaddress.IPv4Address(int(address)))
        if embedded is not None:
            # Judged by the IPv4 address it reaches (Python's own flags for these
            # forms differ between versions).
            form, inner = embedded
            reason = _class_of(inner)
            return None if reason is None else f"{form} {inner}: {reason}"
    return _class_of(address)


def parse_webhook_url(url: str, *, allow_private: bool) -> WebhookUrl:
    """Checks a webhook URL's form (and its host when it is an address literal);
    :class:`UrlRefused` naming the problem. Host names are checked on resolution
    (:func:`vetted_addresses`)."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UrlRefused("the URL holds a space or control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"the URL's port or host is malformed ({exc})") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme.lower() not in schemes:
        raise UrlRefused(
            "the URL must be https (plain http only where [webhooks] allow_private is set)"
        )
    if "@" in parts.netloc:
        raise UrlRefused("the URL must not carry credentials (user:password@)")
    if parts.fragment or url.endswith("#"):
        raise UrlRefused("the URL must not have a fragment (#...)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UrlRefused(f"the host {parts.hostname!r} is not a valid domain name") from None
    if port is not None and not 1 <= port <= 65535:
        raise UrlRefused(f"the port {port} is outside 1-65535")
    scheme = parts.scheme.lower()
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    checked = WebhookUrl(url, scheme, host, port or (443 if scheme == "https" else 80), target)
    literal = checked.literal
    if literal is not None and not allow_private:
        reason = address_refusal(literal)
        if reason is not None:
            raise UrlRefused(f"{literal} is {reason}: webhooks may not reach it")
    return checked


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system's resolver (``getaddrinfo``)."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def vetted_addresses(
    target: WebhookUrl, *, allow_private: bool, resolve: Resolver = system_resolver
) -> list[Address]:
    """The addresses to connect to for ``target`` (in the resolver's order, each once):
    :class:`UrlRefused` when it does not resolve, or when any address is refused (see the
    module docstring) and ``allow_private`` is false."""
    literal = target.literal
    if literal is not None:
        answers = [str(literal)]
    else:
        try:
            answers = await resolve(target.host, target.port)
        except OSError as exc:
            raise UrlRefused(f"cannot resolve {target.host}: {exc}") from None
    found: list[Address] = []
    for answer in answers:
        # A scoped IPv6 answer (fe80::1%eth0) is link-local either way.
        address = ipaddress.ip_address(answer.partition("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UrlRefused(f"cannot resolve {target.host}: no addresses")
    if not allow_private:
        for address in found:
            reason = address_refusal(address)
            if reason is not None:
                where = "is" if literal is not None else f"{target.host} resolves to"
                raise UrlRefused(f"{where} {address}, {reason}: webhooks may not reach it")
    return found
