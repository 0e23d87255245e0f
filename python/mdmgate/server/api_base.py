"""What the admin API's resource modules share: path and id types, the error body, the
refusal raised deep in a request and answered at the top, JSON decoding with JSONPath
error fields, and the OpenAPI operation builder. Names with an underscore are for the
modules of :mod:`mdmgate.server` only."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

import msgspec
from msgspec import Meta, Struct

from mdmgate.server.types import Request, Response

Platform = Literal["windows", "ios", "ipados", "macos", "android"]
DeviceId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=512,
        description="Windows: the SyncHdr Source device id; Apple: the UDID or EnrollmentID.",
    ),
]


def _checked(pattern: str) -> str:
    """A ``^...$`` pattern as JSON Schema (ECMA-262) reads it, for Python to check: there
    ``$`` is the end of the text, while Python's also matches before a final newline. The
    OpenAPI document shows such a pattern with its ``$`` again (:func:`ecma_pattern`)."""
    return pattern.removesuffix("$") + r"\Z"


def ecma_pattern(pattern: str) -> str:
    """The pattern of :func:`_checked` as the OpenAPI document shows it."""
    return pattern.removesuffix(r"\Z") + "$" if pattern.endswith(r"\Z") else pattern


# A name of an org path: no "/", no control characters, and no space at either end (the
# fleet index reads paths stripped: "/a " would be "/a" there). \s differs between
# Python and ECMA-262; naming \x85 and \ufeff too covers what either counts as a space.
_ORG_NAME = r"[^/\s\x00-\x1f\x85\ufeff](?:[^/\x00-\x1f]*[^/\s\x00-\x1f\x85\ufeff])?"
_ORG_PATTERN = rf"^/(?:{_ORG_NAME}(?:/{_ORG_NAME})*)?$"
OrgPath = Annotated[
    str,
    Meta(
        max_length=1024,
        description="An organisation path such as /acme/sales/tokyo; / is the root.",
        pattern=_checked(_ORG_PATTERN),
    ),
]
_UUID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$"
_UUID = re.compile(_UUID_PATTERN)
CommandUuid = Annotated[
    str,
    Meta(
        description="Becomes the command id; must not be taken by another command.",
        pattern=_checked(_UUID_PATTERN),
    ),
]
#: Base64 of at least one byte, standard alphabet, padded (as ``base64.b64decode`` with
#: ``validate=True`` takes it).
_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"


class Error(Struct):
    error: str
    field: Annotated[
        str | None,
        Meta(description="Where in the request body the problem is (JSONPath), or `null`."),
    ] = None


class UnknownDevicesError(Error, kw_only=True):
    devices: Annotated[
        list[str], Meta(description="Every device named in the request that is not registered.")
    ]


class _Refusal(Exception):
    """An answer other than success, raised from deep inside a request and turned into a
    JSON error response at the top."""

    def __init__(self, status: int, body: Error, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(body.error)
        self.status = status
        self.body = body
        self.headers = headers


def _refuse(status: int, message: str, field: str | None = None) -> _Refusal:
    return _Refusal(status, Error(message, field))


def _enc_hook(value: Any) -> Any:
    # Facts come from devices and may hold values JSON has no form for.
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)

_JSON_HEADERS = (("content-type", "application/json"), ("cache-control", "no-store"))


def _json(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    log = {"error": body.error} if isinstance(body, Error) else {}
    return Response(status, _JSON_HEADERS + headers, _encoder.encode(body), log)


_T = TypeVar("_T")

_AT = re.compile(r" - at `(\$[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]*)`")


#: What the patterns mean, for messages.
_PATTERNS = {
    _ORG_PATTERN: "an org path: / or /name/name..., no empty names, no control characters"
    " (line breaks included), no space at either end of a name",
    _UUID_PATTERN: "1-128 of A-Z a-z 0-9 . _ : ~ -, starting with a letter or digit",
    _BASE64_PATTERN: "base64 (standard alphabet, padded)",
    _SHA256_PATTERN: "64 hex digits",
}


def _error_field(message: str) -> tuple[str, str]:
    """Splits msgspec's ``... - at `$.a[0]``` into the message and the JSONPath; a missing
    or unknown field is named in the path (``$.a[0].platform``)."""
    found = _AT.search(message)
    path = found.group(1) if found else "$"
    text = message[: found.start()] if found else message
    for pattern, meaning in _PATTERNS.items():
        text = text.replace(f"matching regex {pattern!r}", f"that is {meaning}")
        text = text.replace(f"matching regex {_checked(pattern)!r}", f"that is {meaning}")
    named = _NAMED.match(text)
    if named:
        path += "." + named.group(1)
    return text, path


def _decode(body: bytes, kind: type[_T]) -> _T:
    try:
        decoded = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        # A typed decode stops at the first value of the wrong type, which may come before
        # a syntax error further on: malformed JSON is a 400 wherever it is.
        _check_syntax(body)
        text, path = _error_field(str(exc))
        raise _refuse(422, text, path) from None
    except msgspec.DecodeError as exc:
        raise _refuse(400, str(exc)) from None
    except UnicodeDecodeError:
        raise _refuse(400, _NOT_UTF8) from None
    except RecursionError:
        raise _refuse(400, "JSON is nested too deeply") from None
    if b"\\u0000" in body and _NUL.search(body):
        try:
            where = _nul_path(msgspec.json.decode(body), "$")
        except RecursionError:
            where = "$"
        raise _refuse(422, _NO_NUL, where or "$")
    return decoded


# U+0000 in a string, escaped (JSON text cannot hold it raw): after an even number of
# backslashes, so an escaped backslash followed by "u0000" is not one.
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# PostgreSQL text cannot hold it, nor XML (SyncML, plists), nor the event log: refused
# everywhere alike rather than deep in one store or encoder.
_NO_NUL = "a string holds U+0000, which is not stored"


def _nul_path(value: Any, path: str) -> str:
    """The JSONPath of the first string (or key) in ``value`` holding U+0000."""
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return path
            found = _nul_path(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found:
                return found
    elif isinstance(value, str) and "\x00" in value:
        return path
    return ""


# msgspec reports bad UTF-8 inside a string as Python's UnicodeDecodeError, with an offset
# into that string rather than into the body: name the problem without a misleading offset.
_NOT_UTF8 = "JSON text is not valid UTF-8 (a string holds bytes that are not UTF-8)"


def _check_syntax(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _refuse(400, str(exc)) from None
    except UnicodeDecodeError:
        raise _refuse(400, _NOT_UTF8) from None
    except RecursionError:
        raise _refuse(400, "JSON is nested too deeply") from None


def _check_content_type(request: Request) -> None:
    value = request.header("content-type")
    if value is None:
        raise _refuse(415, "Content-Type must be application/json (none was given)")
    media, *params = (part.strip() for part in value.split(";"))
    if media.lower() != "application/json":
        raise _refuse(415, f"Content-Type must be application/json, not {media!r}")
    for param in params:
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise _refuse(415, f"JSON must be UTF-8, not charset {arg.strip()!r}")


#: Query parameters a request may carry at most (more is a 400, not a long parse).
_MAX_QUERY_FIELDS = 200


def _query(
    request: Request,
    names: Collection[str],
    *,
    repeated: Collection[str] = (),
    prefixes: Collection[str] = (),
) -> dict[str, list[str]]:
    """The query parameters by name, each with its values in order. 422 naming the
    parameter for one not in ``names`` (nor starting with one of ``prefixes``), given
    twice though not in ``repeated``, or holding U+0000; 400 for a query string that is
    not UTF-8 or has more than :data:`_MAX_QUERY_FIELDS` parameters."""
    try:
        pairs = parse_qsl(
            request.query,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise _refuse(400, "the query string is not UTF-8 once percent-decoded") from None
    except ValueError:
        raise _refuse(400, f"more than {_MAX_QUERY_FIELDS} query parameters") from None
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in names and not any(name.startswith(p) for p in prefixes):
            known = ", ".join([*names, *(f"{p}NAME" for p in prefixes)]) or "none"
            raise _refuse(422, f"unknown query parameter {name!r} (known: {known})", name)
        if name in found and name not in repeated:
            raise _refuse(422, f"query parameter {name!r} is given twice", name)
        if "\x00" in value:
            raise _refuse(422, f"query parameter {name!r} holds U+0000, which is not stored", name)
        found.setdefault(name, []).append(value)
    return found


#: Event sequence numbers in a query have at most this many digits.
_CURSOR_DIGITS = 18
_MAX_CURSOR = 10**_CURSOR_DIGITS - 1


def _event_cursor(values: Sequence[str] | None) -> int:
    """The ``after`` of a query on the event log (an event's ``seq``); 0 when not given."""
    if not values:
        return 0
    text = values[0]
    if text.isascii() and text.isdigit() and len(text) <= _CURSOR_DIGITS:
        return int(text)
    raise _refuse(422, f"after must be a whole number of 0 or more, not {text!r}", "after")


def _query_limit(values: Sequence[str] | None, default: int = 100, most: int = 1000) -> int:
    """The ``limit`` parameter: a whole number from 1 to ``most``; 422 otherwise."""
    if not values:
        return default
    text = values[0]
    if text.isascii() and text.isdigit() and len(text) < 10 and 1 <= int(text) <= most:
        return int(text)
    raise _refuse(422, f"limit must be a whole number from 1 to {most}, not {text!r}", "limit")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "The body is not JSON."),
    "401": ("Unauthorized", "No bearer token, a wrong one, or none configured."),
    "403": ("Forbidden", "The token's scope does not open this operation (the message names it)."),
    "404": ("NotFound", "No such resource."),
    "405": ("MethodNotAllowed", "The path does not take this method."),
    "409": ("Conflict", "The command id is taken."),
    "415": ("UnsupportedMediaType", "The body is not application/json."),
    "422": ("UnprocessableContent", "The JSON does not fit the schema, or the command is refused."),
    "503": ("Unavailable", "Not set up on this gateway (the message names the setting)."),
}


def _operation(
    summary: str,
    ok: tuple[str, str, str],
    errors: Sequence[str],
    *,
    request: str | None = None,
    not_found: str | None = None,
    replaced: tuple[str, str] | None = None,
) -> dict[str, Any]:
    status, description, schema = ok
    responses: dict[str, Any] = {
        status: {"description": description, "content": _json_content(_ref(schema))}
    }
    if replaced is not None:
        # Another success status with the same body (e.g. 200 for a replacement).
        other, text = replaced
        responses[other] = {"description": text, "content": _json_content(_ref(schema))}
    for code in ("401", "405", *errors):
        responses[code] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[code][0]}"}
    if not_found is not None:
        # The path's own resource may be missing too (an unknown app or command): that
        # answer is a plain Error.
        responses["404"] = {
            "description": "Unknown devices (they are listed), or no such resource.",
            "content": _json_content({"anyOf": [_ref(not_found), _ref("Error")]}),
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(_ref(request))}
    return operation


def _unknown(device_ids: Sequence[str], field: str | None) -> _Refusal:
    shown = ", ".join(device_ids[:5]) + (" ..." if len(device_ids) > 5 else "")
    message = f"{len(device_ids)} unknown device(s): {shown}"
    return _Refusal(404, UnknownDevicesError(message, field, devices=list(device_ids)))
