"""The SOAP 1.2 layer of Windows enrollment ([MS-MDE2]), shared by its exchanges
(:mod:`mdmgate.enrollment.windows`) and its provisioning document
(:mod:`mdmgate.enrollment.windows_provisioning`): the fault a device understands, a reader
for untrusted XML and a writer for what goes back.

:func:`read_xml` reads namespace-aware with expat, as UTF-8, at most
:data:`MAX_MESSAGE_BYTES` and 32 levels deep; a document type declaration is refused as it
starts, so no entity is ever defined, expanded or fetched. :func:`parse_envelope` opens a
SOAP 1.2 envelope around it. :func:`write_xml` escapes every value, echoed ones included,
and refuses characters XML cannot carry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from io import BytesIO
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit
from xml.parsers import expat
from xml.sax.saxutils import XMLGenerator
from xml.sax.xmlreader import AttributesNSImpl

from mdmgate.errors import MdmgateError

__all__ = [
    "CONTENT_TYPE",
    "FAULT_ACTION",
    "MAX_MESSAGE_BYTES",
    "PKI",
    "SECEXT",
    "TRUST",
    "Element",
    "EnrollmentFault",
    "Node",
    "check_text",
    "envelope",
    "https_host",
    "node",
    "parse_envelope",
    "read_xml",
    "refused",
    "soap_fault",
    "write_xml",
]

CONTENT_TYPE = "application/soap+xml; charset=utf-8"
#: Larger bodies are refused unread: the largest real request, an enrollment carrying
#: attestation claims, is a few kilobytes.
MAX_MESSAGE_BYTES = 256 * 1024
_MAX_DEPTH = 32

_SOAP = "http://www.w3.org/2003/05/soap-envelope"
_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
_ADDRESSING = "http://www.w3.org/2005/08/addressing"
TRUST = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
SECEXT = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_UTILITY = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PKI = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
#: WS-Addressing's fault action (MS-MDE2's own sample fault uses the response's action).
FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"

_FAULT_SUBCODES = (
    *("s:MessageFormat", "s:Authentication", "s:Authorization", "s:CertificateRequest"),
    *("s:EnrollmentServer", "a:InternalServiceFault", "a:InvalidSecurity"),
)
# MS-MDE2 2.2.10: what a DeviceEnrollmentServiceError detail may name.
_ERROR_TYPES = (
    *("DeviceCapReached", "DeviceNotSupported", "NotSupported", "NotEligibleToRenew"),
    *("InMaintenance", "UserLicense", "InvalidEnrollmentData", "CustomServerError"),
)


class EnrollmentFault(MdmgateError):
    """A refusal the device understands: a SOAP 1.2 fault with ``code`` ``s:Sender`` (the
    request is at fault) or ``s:Receiver`` (the server is), an MS-MDE2 2.2.10 ``subcode``
    (``s:MessageFormat``, ``s:Authentication``, ``s:Authorization``, ``s:CertificateRequest``,
    ``s:EnrollmentServer``, ``a:InternalServiceFault``, ``a:InvalidSecurity``) and a
    ``message`` naming the problem; ``error_type`` adds a DeviceEnrollmentServiceError detail
    (e.g. ``NotEligibleToRenew``). Parsers set ``message_id`` once they have read the
    request's MessageID: the fault answers it."""

    def __init__(
        self, code: str, subcode: str, message: str, *, error_type: str | None = None
    ) -> None:
        if code not in ("s:Sender", "s:Receiver"):
            raise ValueError(f"fault code must be s:Sender or s:Receiver, not {code!r}")
        if subcode not in _FAULT_SUBCODES:
            raise ValueError(f"fault subcode {subcode!r} is not one of MS-MDE2's")
        if error_type is not None and error_type not in _ERROR_TYPES:
            raise ValueError(f"fault error_type {error_type!r} is not one of MS-MDE2's")
        super().__init__(message)
        self.code, self.subcode, self.message = code, subcode, message
        self.error_type = error_type
        self.message_id: str | None = None

    def __str__(self) -> str:
        return f"{self.subcode}: {self.message}"

    def __reduce__(self) -> tuple[type[EnrollmentFault], tuple[str, str, str], dict[str, Any]]:
        state = {"error_type": self.error_type, "message_id": self.message_id}
        return (type(self), (self.code, self.subcode, self.message), state)

    @property
    def http_status(self) -> int:
        """The status to send the fault with (SOAP 1.2 HTTP binding): 400 for the sender's
        faults, 500 for the receiver's."""
        return 400 if self.code == "s:Sender" else 500


def refused(message: str, subcode: str = "s:MessageFormat") -> EnrollmentFault:
    """A fault of the request (``s:Sender``), ``s:MessageFormat`` unless told otherwise."""
    return EnrollmentFault("s:Sender", subcode, message)


# -- reading untrusted XML

# How missing elements are named in faults.
_SHOWN = {_SOAP: "s:", _ADDRESSING: "a:", TRUST: "wst:", SECEXT: "wsse:"}


class Element:
    """A parsed element: namespace, local name, attributes (``"namespace name"`` or
    ``name``), child elements and its own character data."""

    __slots__ = ("attributes", "children", "name", "namespace", "parts")

    def __init__(self, namespace: str, name: str, attributes: dict[str, str]) -> None:
        self.namespace, self.name, self.attributes = namespace, name, attributes
        self.children: list[Element] = []
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        """Its own character data without the XML whitespace around it (layout)."""
        return "".join(self.parts).strip(" \t\r\n")

    def all(self, namespace: str, name: str) -> list[Element]:
        return [c for c in self.children if c.name == name and c.namespace == namespace]

    def find(self, namespace: str, name: str) -> Element | None:
        return next(iter(self.all(namespace, name)), None)

    def need(self, namespace: str, name: str) -> Element:
        found = self.find(namespace, name)
        if found is None:
            shown = _SHOWN.get(namespace, "") + name
            raise refused(f"the request has no {shown} element (in {self.name})")
        return found

    def attribute(self, name: str) -> str | None:
        """An attribute, unqualified or wsse-qualified (devices send both)."""
        return self.attributes.get(name, self.attributes.get(f"{SECEXT} {name}"))


def read_xml(body: bytes) -> Element:
    """The root element of ``body``, read as the module documentation says.
    :class:`EnrollmentFault` ``s:MessageFormat`` names a body too large, too deep, with a
    DTD or not well-formed UTF-8 XML; ``TypeError`` when it is not bytes."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"an enrollment message is bytes, not {type(body).__name__}")
    if len(body) > MAX_MESSAGE_BYTES:
        raise refused(f"the message is {len(body)} bytes; at most {MAX_MESSAGE_BYTES} are read")
    # UTF-8 whatever the declaration says: the content type says so, and no codec is looked up.
    parser = expat.ParserCreate("utf-8", " ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[Element] = []
    roots: list[Element] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        if len(stack) >= _MAX_DEPTH:
            raise refused(f"elements are nested deeper than {_MAX_DEPTH} levels")
        namespace, _, local = name.rpartition(" ")
        element = Element(namespace, local, attributes)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def characters(data: str) -> None:
        if stack:
            stack[-1].parts.append(data)

    def document_type(*_: object) -> None:
        raise refused("a DTD (<!DOCTYPE ...>) is not accepted: enrollment messages have none")

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _name: stack.pop()
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = document_type
    parser.EntityDeclHandler = document_type
    try:
        parser.Parse(bytes(body), True)
    except (expat.ExpatError, ValueError, LookupError) as exc:
        raise refused(f"the message is not well-formed UTF-8 XML: {exc}") from None
    return roots[0]


_T = TypeVar("_T")


def parse_envelope(body: bytes, action: str, build: Callable[[Element, Element, str], _T]) -> _T:
    """Opens a SOAP 1.2 envelope, checks its action and hands header, body and MessageID to
    ``build``; every fault from then on answers the MessageID."""
    root = read_xml(body)
    if (root.namespace, root.name) == (_SOAP11, "Envelope"):
        raise refused(f"the envelope is SOAP 1.1; Windows enrollment speaks SOAP 1.2 ({_SOAP})")
    if (root.namespace, root.name) != (_SOAP, "Envelope"):
        raise refused(f"the message is not a SOAP 1.2 s:Envelope but {root.name!r}")
    header = root.need(_SOAP, "Header")
    message_id = header.need(_ADDRESSING, "MessageID").text
    if not message_id:
        raise refused("the a:MessageID is empty")
    try:
        given = header.need(_ADDRESSING, "Action").text
        if given != action:
            raise refused(f"the a:Action is {given!r}; this endpoint takes {action}")
        return build(header, root.need(_SOAP, "Body"), message_id)
    except EnrollmentFault as fault:
        fault.message_id = message_id
        raise


# -- faults


def soap_fault(
    fault: EnrollmentFault, *, relates_to: str | None, action: str | None = None
) -> bytes:
    """The SOAP 1.2 envelope of ``fault`` (MS-MDE2 2.2.10): code and subcode as QNames of
    the envelope's own ``s:``/``a:`` prefixes, the message as its en-US reason, and a
    DeviceEnrollmentServiceError detail when it has an ``error_type``. ``relates_to`` is the
    request's MessageID (``fault.message_id`` when a parser raised it; ``None`` if it could
    not be read); ``action`` defaults to :data:`FAULT_ACTION`. Send with
    ``fault.http_status``."""
    subcode = node("s:Subcode", [node("s:Value", fault.subcode)])
    parts = [
        node("s:Code", [node("s:Value", fault.code), subcode]),
        node("s:Reason", [node("s:Text", fault.message, {"xml:lang": "en-US"})]),
    ]
    if fault.error_type is not None:
        error = [node("ErrorType", fault.error_type), node("Message", fault.message)]
        detail = node("DeviceEnrollmentServiceError", error, {"xmlns": PKI})
        parts.append(node("s:Detail", [detail]))
    return envelope(action or FAULT_ACTION, relates_to, [node("s:Fault", parts)])


# -- writing

#: An element to write: qualified name, attributes, then text, children or nothing. A
#: ``prefix:`` of :data:`_PREFIXES` names the namespace (the writer declares it on the root);
#: an ``xmlns`` attribute sets the default namespace of the element and its subtree.
Node: TypeAlias = tuple[str, dict[str, str], "str | list[Node] | None"]

_PREFIXES = {"s": _SOAP, "a": _ADDRESSING, "o": SECEXT, "u": _UTILITY, "xsi": _XSI}
_XML = "http://www.w3.org/XML/1998/namespace"
# Characters XML 1.0 cannot carry, not even escaped.
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def node(
    name: str, content: str | list[Node] | None = None, attributes: dict[str, str] | None = None
) -> Node:
    """The :data:`Node` ``name`` with ``content`` and ``attributes``."""
    return (name, attributes or {}, content)


def envelope(
    action: str, relates_to: str | None, body: list[Node], headers: list[Node] | None = None
) -> bytes:
    """A SOAP 1.2 envelope: a:Action (mustUnderstand), a:RelatesTo when ``relates_to`` is
    given, any further ``headers``, then ``body``. ``ValueError`` as :func:`write_xml`."""
    header = [node("a:Action", action, {"s:mustUnderstand": "1"})]
    header += [node("a:RelatesTo", relates_to)] if relates_to is not None else []
    parts = [node("s:Header", header + (headers or [])), node("s:Body", body)]
    return write_xml(node("s:Envelope", parts))


def check_text(value: object, name: str) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is non-empty text without control
    characters, every character of it one XML can carry."""
    if not isinstance(value, str) or not value or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError(f"{name} must be non-empty text without control characters")
    if _XML_BAD.search(value):
        raise ValueError(f"{name} has a character XML cannot carry")


def https_host(url: str, name: str) -> str:
    """The host of ``url``; ``ValueError`` naming ``name`` unless it is an https URL with a
    host, every character of it one XML can carry."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "https" or not parts.hostname or _XML_BAD.search(url):
        raise ValueError(f"{name} must be an https:// URL, not {url!r}")
    return parts.hostname


def write_xml(root: Node) -> bytes:
    """``root`` as a UTF-8 document, every prefix of :data:`_PREFIXES` it uses declared on
    it. ``ValueError`` names an element with a value XML cannot carry."""
    out = BytesIO()
    writer = XMLGenerator(out, encoding="utf-8", short_empty_elements=True)
    writer.startDocument()
    used: set[str] = set()
    _prefixes(root, used)
    for prefix in sorted(used, key=list(_PREFIXES).index):
        writer.startPrefixMapping(prefix, _PREFIXES[prefix])
    _emit(writer, root, None)
    writer.endDocument()
    return out.getvalue()


def _prefixes(tree: Node, used: set[str]) -> None:
    name, attributes, content = tree
    for qualified in (name, *attributes):
        prefix = qualified.partition(":")[0] if ":" in qualified else ""
        if prefix in _PREFIXES:
            used.add(prefix)
    for child in content if isinstance(content, list) else ():
        _prefixes(child, used)


def _emit(writer: XMLGenerator, tree: Node, default: str | None) -> None:
    name, attributes, content = tree
    if "xmlns" in attributes:
        default = attributes["xmlns"]
        writer.startPrefixMapping(None, default)
    values = {_qualify(k, None): v for k, v in attributes.items() if k != "xmlns"}
    for value in (*values.values(), content if isinstance(content, str) else ""):
        if _XML_BAD.search(value):
            raise ValueError(f"a value of {name} has a character XML cannot carry")
    writer.startElementNS(_qualify(name, default), name, AttributesNSImpl(values, {}))
    if isinstance(content, str):
        writer.characters(content)
    for child in content if isinstance(content, list) else ():
        _emit(writer, child, default)
    writer.endElementNS(_qualify(name, default), name)
    if "xmlns" in attributes:
        writer.endPrefixMapping(None)


def _qualify(name: str, default: str | None) -> tuple[str | None, str]:
    prefix, _, local = name.rpartition(":")
    return ({"xml": _XML, **_PREFIXES}[prefix] if prefix else default, local)
