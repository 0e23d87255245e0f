"""What the HTTP layer hands to handlers and gets back: protocol-neutral, so a handler never
knows (or cares) whether the request came over HTTP/1.1 or HTTP/2."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

__all__ = ["Handler", "Request", "Response"]


# Structs rather than frozen dataclasses: one of each is built per request, and a Struct is
# built in C (several times faster than a frozen dataclass's __init__).
class Request(msgspec.Struct, frozen=True):
    method: str
    #: The path without the query string, e.g. ``/ManagementServer/MDM.svc``.
    path: str
    #: The raw query string (without ``?``), e.g. ``mode=Maintenance&Platform=WoA``.
    query: str
    #: Header names are lower-case; repeated headers keep their order.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: ``"1.1"`` or ``"2"``.
    http_version: str
    #: The peer's address as ``host:port``.
    peer: str
    #: The client certificate (DER) when TLS with a client CA verified one; else ``None``.
    client_cert: bytes | None = None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


class Response(msgspec.Struct, frozen=True):
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: Extra context for the access log (never sent to the client).
    log: dict[str, str] = msgspec.field(default_factory=dict)


#: A request handler. It must not raise for bad input: answer 4xx instead.
Handler = Callable[[Request], Awaitable[Response]]
