"""Compiled core of mdmgate (Rust, via pyo3). Use the typed wrappers in mdmgate.versions
and mdmgate.syncml."""

from collections.abc import Iterable
from typing import Any, final

MAX_VERSION_LEN: int

def version_platforms() -> list[str]: ...
def version_allows_downgrade(platform_name: str) -> bool: ...
def version_compare(a: str, b: str, platform_name: str) -> int: ...
def version_sort_key(version: str, platform_name: str) -> bytes: ...
def version_sort_keys(versions: Iterable[str], platform_name: str) -> list[bytes]: ...
def version_argsort(
    versions: Iterable[str], platform_name: str, descending: bool = False
) -> list[int]: ...
def version_sort(
    versions: list[str], platform_name: str, descending: bool = False
) -> list[str]: ...
def version_compare_many(a: Iterable[str], b: Iterable[str], platform_name: str) -> list[int]: ...
def version_max_per_group(
    groups: Iterable[str], versions: Iterable[str], platform_name: str
) -> dict[str, int]: ...
def install_action_names() -> list[str]: ...
def version_plan_installs(
    assigned: Iterable[str], installed: Iterable[str | None], platform_name: str
) -> tuple[bytes, list[int]]: ...

SYNCML_MAX_BYTES: int
SYNCML_MAX_DEPTH: int
SYNCML_MAX_ELEMENTS: int

def syncml_to_dict(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_elements: int | None = None,
) -> dict[str, Any]: ...
def syncml_from_dict(message: dict[str, Any], *, wbxml: bool = False) -> bytes: ...
def syncml_detect(data: bytes) -> str: ...
def syncml_decode(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_elements: int | None = None,
) -> Message: ...
def syncml_message_from_dict(message: dict[str, Any]) -> Message: ...
def syncml_app_inventory(
    data: bytes,
    prefix: str,
    cmd_ref: str | None = None,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_elements: int | None = None,
) -> bytes: ...

MetaDict = dict[str, str | list[str]]

@final
class Item:
    target: str | None
    target_name: str | None
    source: str | None
    source_name: str | None
    meta: MetaDict | None
    data: str | bytes | None
    data_attrs: dict[str, str]
    more_data: bool
    @property
    def format(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    def __init__(
        self,
        *,
        target: str | None = None,
        source: str | None = None,
        meta: MetaDict | None = None,
        data: str | bytes | None = None,
        data_attrs: dict[str, str] | None = None,
        more_data: bool = False,
        target_name: str | None = None,
        source_name: str | None = None,
    ) -> None: ...

@final
class Command:
    cmd_id: str | None
    no_resp: bool
    meta: MetaDict | None
    data: str | bytes | None
    data_attrs: dict[str, str]
    items: list[Item]
    msg_ref: str | None
    cmd_ref: str | None
    cmd: str | None
    target_refs: list[str]
    source_refs: list[str]
    chal: MetaDict | None
    correlator: str | None
    target: str | None
    source: str | None
    commands: list[Command]
    @property
    def name(self) -> str: ...
    def __init__(
        self,
        name: str,
        *,
        cmd_id: str | None = None,
        items: Iterable[Item] | None = None,
        meta: MetaDict | None = None,
        data: str | bytes | None = None,
        data_attrs: dict[str, str] | None = None,
        no_resp: bool = False,
        msg_ref: str | None = None,
        cmd_ref: str | None = None,
        cmd: str | None = None,
        target_refs: list[str] | None = None,
        source_refs: list[str] | None = None,
        chal: MetaDict | None = None,
        correlator: str | None = None,
        target: str | None = None,
        source: str | None = None,
        commands: Iterable[Command] | None = None,
    ) -> None: ...

@final
class Header:
    ver_dtd: str
    ver_proto: str
    session_id: str
    msg_id: str
    target: str | None
    target_name: str | None
    source: str | None
    source_name: str | None
    resp_uri: str | None
    no_resp: bool
    cred_meta: MetaDict | None
    cred_data: str | None
    meta: MetaDict | None
    @property
    def max_msg_size(self) -> int | None: ...
    @property
    def max_obj_size(self) -> int | None: ...
    def __init__(
        self,
        *,
        session_id: str,
        msg_id: str,
        target: str | None,
        source: str | None,
        ver_dtd: str = "1.2",
        ver_proto: str = "DM/1.2",
        target_name: str | None = None,
        source_name: str | None = None,
        resp_uri: str | None = None,
        no_resp: bool = False,
        cred_meta: MetaDict | None = None,
        cred_data: str | None = None,
        meta: MetaDict | None = None,
    ) -> None: ...

@final
class Message:
    header: Header
    commands: list[Command]
    final: bool
    def __init__(
        self, header: Header, commands: Iterable[Command] | None = None, final: bool = True
    ) -> None: ...
    def encode(self, *, wbxml: bool = False) -> bytes: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class MessageBuilder:
    def __init__(self, header: Header, max_size: int, *, wbxml: bool = False) -> None: ...
    def push(self, command: Command) -> str | None: ...
    @property
    def remaining(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    def __len__(self) -> int: ...
    def finish(self, *, final: bool = True) -> bytes: ...

PLIST_MAX_BYTES: int
PLIST_MAX_DEPTH: int
PLIST_MAX_NODES: int

def plist_loads(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    max_nodes: int | None = None,
) -> Any: ...
def plist_dumps(value: Any, *, binary: bool = False, sort_keys: bool = True) -> bytes: ...
def fleet_outcome_names() -> list[str]: ...

@final
class TargetResult:
    @property
    def outcomes(self) -> bytes: ...
    @property
    def selected(self) -> bytes: ...
    @property
    def silent(self) -> bytes: ...
    @property
    def licensed(self) -> bytes: ...
    @property
    def counts(self) -> list[int]: ...
    def __len__(self) -> int: ...

@final
class Scope:
    def __len__(self) -> int: ...
    def __contains__(self, device: int) -> bool: ...
    def devices(self) -> list[int]: ...
    def __or__(self, other: Scope) -> Scope: ...
    def __sub__(self, other: Scope) -> Scope: ...

@final
class FleetIndex:
    def __init__(
        self,
        ids: Iterable[str],
        org_ids: Iterable[int],
        platforms: Iterable[int],
        supervised: Iterable[int],
        silent: Iterable[int] | None = None,
    ) -> None: ...
    def push_device(
        self, id: str, org: int, platform: int, supervised: int, silent: bool
    ) -> int: ...
    def set_device(
        self, device: int, org: int, platform: int, supervised: int, silent: bool
    ) -> None: ...
    def scope(self, org_ranges: list[tuple[int, int]], devices: list[int]) -> Scope: ...
    def set_licensed(self, app: int, devices: list[int]) -> None: ...
    def update_licensed(self, app: int, device: int, held: bool) -> None: ...
    def is_licensed(self, app: int, device: int) -> bool: ...
    def set_take_over(self, flags: Iterable[int]) -> None: ...
    def set_device_take_over(self, device: int, on: bool) -> None: ...
    def can_take_over(self, device: int) -> bool: ...
    def set_user_installed(self, app: int, devices: list[int]) -> None: ...
    def update_user_installed(self, app: int, device: int, user: bool) -> None: ...
    def is_user_installed(self, app: int, device: int) -> bool: ...
    def __len__(self) -> int: ...
    def memory_bytes(self) -> int: ...
    def device_id(self, device: int) -> str: ...
    def device_ids(self, devices: list[int]) -> list[str]: ...
    def set_installed(
        self, app: int, devices: list[int], versions: Iterable[str], platform_name: str
    ) -> None: ...
    def update_installed(self, app: int, device: int, version: str | None) -> None: ...
    def installed_key(self, app: int, device: int) -> bytes | None: ...
    def target(
        self,
        app: int,
        *,
        version: str,
        version_platform: str,
        org_range: tuple[int, int] | None = None,
        scope: Scope | None = None,
        installed_only: bool = False,
        platform: int | None = None,
        allow_downgrade: bool = False,
        licences: int | None = None,
        percent: float | None = None,
        seed: str = "",
        take_over: bool = False,
    ) -> TargetResult: ...

HTTP1_MAX_HEAD_BYTES: int

class Http1Error(ValueError):
    """A refused HTTP/1.1 request; ``args`` is ``(status, message)``."""

#: method, target, version, headers, head length, content length, chunked, keep-alive,
#: expect 100-continue.
Http1Head = tuple[str, str, str, tuple[tuple[str, str], ...], int, int | None, bool, bool, bool]

def http1_parse_head(buffer: bytes | bytearray, scanned: int, max_head: int) -> int | Http1Head: ...

@final
class Http1ChunkedDecoder:
    def __init__(self, max_line: int, max_trailer: int) -> None: ...
    def feed(self, buffer: bytes | bytearray, keep: bool = True) -> tuple[bytes, int, bool]: ...
    @property
    def decoded(self) -> int: ...
