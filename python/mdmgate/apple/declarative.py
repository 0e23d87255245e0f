"""Declarative device management over the check-in channel: the ``DeclarativeManagement``
check-in message, as :class:`~mdmgate.apple.service.AppleService` hands it to
:func:`respond`, by its ``Endpoint``:

* ``tokens``: the device's ``DeclarationsToken`` (changes exactly when one of its
  declarations, or the set, changes) and the time the gateway first saw that token (fact
  ``ddm_tokens``, written only when the token changes);
* ``declaration-items``: the manifest, every declaration's identifier and ServerToken by
  category;
* ``declaration/<category>/<identifier>``: one declaration (404 when the device has no
  such declaration);
* ``status``: the device's status report, kept in fact ``ddm_status``; reports are
  incremental, merged item by item, unless ``FullReport`` says otherwise. A report that
  changes the stored status writes a ``declaration.status`` event with it (what changed).

A device's declarations are those the store assigns to it (:mod:`mdmgate.apple.ddm` builds
and checks them), plus one synthesized activation (:data:`ACTIVATION_IDENTIFIER`)
referencing every configuration: devices apply only configurations an activation
references. A bad request is answered 400 naming the problem.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from mdmgate.apple import ddm
from mdmgate.apple.checkin import DeclarativeManagement
from mdmgate.apple.errors import AppleDecodeError
from mdmgate.events import declaration_status
from mdmgate.server.types import Response
from mdmgate.storage import Device, Store, StoredDeclaration

__all__ = [
    "ACTIVATION_IDENTIFIER",
    "ACTIVATION_TYPE",
    "FACT_DDM_STATUS",
    "FACT_DDM_TOKENS",
    "respond",
]

# The Apple service's logger: a declaration problem shows up with the device's messages.
_log = logging.getLogger("mdmgate.apple")

#: The identifier of the activation synthesized for every device's configurations.
ACTIVATION_IDENTIFIER = "mdmgate.activation"
ACTIVATION_TYPE = "com.apple.activation.simple"

#: Facts keys this module writes.
FACT_DDM_STATUS = "ddm_status"
FACT_DDM_TOKENS = "ddm_tokens"

#: DDM declaration categories (the third part of the type) and their manifest keys.
_CATEGORIES = {
    "activation": "Activations",
    "configuration": "Configurations",
    "asset": "Assets",
    "management": "Management",
}


async def respond(store: Store, message: DeclarativeManagement, device: Device) -> Response:
    """The answer to ``message`` from ``device``, which the caller has authorized, as the
    module documentation describes; facts ``ddm_tokens`` and ``ddm_status`` are written
    through ``store``, the declarations read from it."""
    endpoint = message.endpoint
    if not endpoint:
        return _text(400, "DeclarativeManagement without Endpoint")
    log = {"device": device.id, "message": f"DeclarativeManagement {endpoint}"}
    if endpoint == "status":
        return await _status(store, message, device, log)
    manifest = _Manifest(await store.declarations_for(device.id, device.org))
    if endpoint == "tokens":
        return await _tokens(store, manifest.token, device, log)
    if endpoint == "declaration-items":
        return _json_response(
            {"Declarations": manifest.items(), "DeclarationsToken": manifest.token}, log
        )
    return _declaration(manifest, endpoint, log)


async def _tokens(store: Store, token: str, device: Device, log: dict[str, str]) -> Response:
    stored = _dict(device.facts.get(FACT_DDM_TOKENS))
    timestamp = stored.get("timestamp")
    if stored.get("token") != token or not isinstance(timestamp, str):
        # The timestamp says when this device's set last changed, as the gateway first
        # saw it: written only when the token changes.
        timestamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await store.merge_facts(
            device.id, {FACT_DDM_TOKENS: {"token": token, "timestamp": timestamp}}
        )
    body = {"SyncTokens": {"DeclarationsToken": token, "Timestamp": timestamp}}
    return _json_response(body, log)


async def _status(
    store: Store, message: DeclarativeManagement, device: Device, log: dict[str, str]
) -> Response:
    try:
        report = message.data_json()
    except AppleDecodeError as exc:
        return _text(400, str(exc))
    if not isinstance(report, dict):
        return _text(400, "the status report (Data) is not a JSON object")
    items = report.get("StatusItems", {})
    if not isinstance(items, dict):
        return _text(400, "StatusItems is not a JSON object")
    old = _dict(device.facts.get(FACT_DDM_STATUS))
    # Reports are incremental unless FullReport says otherwise: merge item by item.
    merged = items if report.get("FullReport") else _deep_merge(old.get("StatusItems"), items)
    status = {"StatusItems": merged, "Errors": report.get("Errors", [])}
    if status != old:
        event = declaration_status(device.id, old.get("StatusItems"), merged, status["Errors"])
        await store.merge_facts(device.id, {FACT_DDM_STATUS: status}, events=[event])
    return Response(200, (), b"", log)


class _Manifest:
    """A device's declarations as the DDM endpoints show them, with the synthesized
    activation: devices apply only configurations an activation references."""

    def __init__(self, stored: Sequence[StoredDeclaration]) -> None:
        self.by_ref: dict[tuple[str, str], dict[str, Any]] = {}
        configurations: list[str] = []
        for decl in stored:
            category = _category(decl.type)
            if category is None:
                _log.warning("declaration %r has an unknown type %r", decl.identifier, decl.type)
                continue
            self.by_ref[category, decl.identifier] = {
                "Type": decl.type,
                "Identifier": decl.identifier,
                "ServerToken": decl.server_token,
                "Payload": decl.payload,
            }
            if category == "configuration":
                configurations.append(decl.identifier)
        if configurations:
            activation = ddm.declaration(
                ACTIVATION_TYPE,
                ACTIVATION_IDENTIFIER,
                {"StandardConfigurations": configurations},
            )
            self.by_ref["activation", ACTIVATION_IDENTIFIER] = {
                "Type": activation.type,
                "Identifier": activation.identifier,
                "ServerToken": activation.server_token,
                "Payload": activation.payload,
            }
        refs = sorted(
            [category, identifier, d["ServerToken"]]
            for (category, identifier), d in self.by_ref.items()
        )
        #: Changes exactly when a declaration (or the set) changes.
        self.token = hashlib.sha256(json.dumps(refs, separators=(",", ":")).encode()).hexdigest()

    def items(self) -> dict[str, list[dict[str, str]]]:
        found: dict[str, list[dict[str, str]]] = {key: [] for key in _CATEGORIES.values()}
        for (category, identifier), decl in self.by_ref.items():
            found[_CATEGORIES[category]].append(
                {"Identifier": identifier, "ServerToken": decl["ServerToken"]}
            )
        return found

    def get(self, category: str, identifier: str) -> dict[str, Any] | None:
        return self.by_ref.get((category, identifier))


def _declaration(manifest: _Manifest, endpoint: str, log: dict[str, str]) -> Response:
    """The ``declaration/<category>/<identifier>`` endpoint (404 when not assigned)."""
    if not endpoint.startswith("declaration/"):
        return _text(400, f"unknown DeclarativeManagement Endpoint {endpoint!r}")
    parts = endpoint.split("/", 2)
    found = manifest.get(parts[1], parts[2]) if len(parts) == 3 else None
    if found is None:
        return _text(404, f"no declaration {endpoint!r} for this device")
    return _json_response(found, log)


def _category(declaration_type: str) -> str | None:
    parts = declaration_type.split(".")
    if len(parts) < 3 or parts[0] != "com" or parts[1] != "apple":
        return None
    return parts[2] if parts[2] in _CATEGORIES else None


def _deep_merge(old: Any, new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old) if isinstance(old, dict) else {}
    for key, value in new.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


# -- small helpers


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _json_response(value: Any, log: dict[str, str]) -> Response:
    return Response(200, (("content-type", "application/json"),), msgspec.json.encode(value), log)


def _text(status: int, message: str) -> Response:
    headers = (("content-type", "text/plain; charset=utf-8"),)
    return Response(status, headers, message.encode() + b"\n")
