"""What the admin API's resource modules share: path and id types, the error body, the
refusal raised deep in a request and answered at the top, JSON decoding with JSONPath
error fields, and the OpenAPI operation builder. Names with an underscore are for the
modules of :mod:`mdmgate.server` only."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

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
_ORG_PATTERN = r"^/(?:[^/\x00-\x1f]+(?:/[^/\x00-\x1f]+)*)?$"
OrgPath = Annotated[
    str,
    Meta(
        pattern=_ORG_PATTERN,
        max_length=1024,
        description="An organisation path such as /acme/sales/tokyo; / is the root.",
    ),
]
_UUID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$"
_UUID = re.compile(_UUID_PATTERN)
CommandUuid = Annotated[
    str,
    Meta(
        pattern=_UUID_PATTERN,
        description="Becomes the command id; must not be taken by another command.",
    ),
]


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
    _ORG_PATTERN: "an org path: / or /name/name..., no empty names or control characters",
    _UUID_PATTERN: "1-128 of A-Z a-z 0-9 . _ : ~ -, starting with a letter or digit",
}


def _error_field(message: str) -> tuple[str, str]:
    """Splits msgspec's ``... - at `$.a[0]``` into the message and the JSONPath; a missing
    or unknown field is named in the path (``$.a[0].platform``)."""
    found = _AT.search(message)
    path = found.group(1) if found else "$"
    text = message[: found.start()] if found else message
    for pattern, meaning in _PATTERNS.items():
        text = text.replace(f"matching regex {pattern!r}", f"that is {meaning}")
    named = _NAMED.match(text)
    if named:
        path += "." + named.group(1)
    return text, path


def _decode(body: bytes, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=kind)
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


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "The body is not JSON."),
    "401": ("Unauthorized", "No bearer token, a wrong one, or none configured."),
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
    parameter: tuple[str, str] | None = None,
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
        responses["404"] = {
            "description": "Unknown devices; they are listed.",
            "content": _json_content(_ref(not_found)),
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(_ref(request))}
    if parameter is not None:
        name, text = parameter
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": text,
                "schema": {"type": "string"},
            }
        ]
    return operation


def _unknown(device_ids: Sequence[str], field: str | None) -> _Refusal:
    shown = ", ".join(device_ids[:5]) + (" ..." if len(device_ids) > 5 else "")
    message = f"{len(device_ids)} unknown device(s): {shown}"
    return _Refusal(404, UnknownDevicesError(message, field, devices=list(device_ids)))
