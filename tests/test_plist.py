"""The plist codec against plistlib: generated values in both formats and both directions,
hand-written XML and hand-built binary plists, hostile input, and the decoding limits."""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import enum
import math
import plistlib
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgate import plist
from mdmgate.errors import PlistDecodeError, PlistEncodeError
from tests import plist_samples as samples
from tests.plist_samples import (
    b_array,
    b_ascii,
    b_bool,
    b_data,
    b_date,
    b_dict,
    b_int,
    b_real,
    b_uid,
    b_utf16,
    build_bplist,
    installed_application_list_report,
    shared_reference_bplist,
    xml_plist,
)

KINDS = {"syntax", "encoding", "entity", "limit", "structure"}
XML = plistlib.FMT_XML
BINARY = plistlib.FMT_BINARY
FORMATS = pytest.mark.parametrize("binary", [False, True], ids=["xml", "binary"])


def _fmt(binary: bool) -> plistlib.PlistFormat:
    return BINARY if binary else XML


# --- exact comparison ---------------------------------------------------------------------


def canon(value: Any, *, ordered: bool = True, signed_zero: bool = True) -> Any:
    """A form of ``value`` whose ``==`` is exact: types count (``True`` is not ``1``, ``bytes``
    is not ``bytearray``), NaN equals NaN, ``-0.0`` differs from ``0.0`` when ``signed_zero``,
    and dict order counts when ``ordered``."""
    kind = type(value)
    if kind is dict:
        items = [
            (canon(k), canon(v, ordered=ordered, signed_zero=signed_zero)) for k, v in value.items()
        ]
        if not ordered:
            items.sort(key=repr)
        return ("dict", tuple(items))
    if kind is list:
        return ("list", tuple(canon(v, ordered=ordered, signed_zero=signed_zero) for v in value))
    if kind is float:
        if math.isnan(value):
            return ("float", "nan")
        return ("float", repr(value) if signed_zero else value)
    if kind is dt.datetime:
        assert value.tzinfo is None
        return ("datetime", value.isoformat())
    if kind is plistlib.UID:
        return ("UID", value.data)
    if kind in (str, int, bool, bytes) or value is None:  # a binary null reads as None
        return (kind.__name__, value)
    raise AssertionError(f"not a plist value: {kind.__name__} {value!r}")


def _sorted_keys(value: Any) -> Any:
    """``value`` with every dict's keys in plistlib's order (Python's, by code point)."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted_keys(v) for v in value]
    return value


def _xml_newlines(value: Any) -> Any:
    """What plistlib's XML writer makes of ``value``: it turns CR and CRLF into LF."""
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", "\n")
    if isinstance(value, dict):
        return {_xml_newlines(k): _xml_newlines(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_xml_newlines(v) for v in value]
    return value


# --- generated values ---------------------------------------------------------------------

# XML 1.0 cannot hold C0 controls other than tab, LF and CR, nor U+FFFE and U+FFFF; plistlib
# refuses the controls and expat the two non-characters. Neither format holds lone surrogates.
_XML_EXCLUDED = "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n\r") + "\ufffe\uffff"
_SPECIAL = ["&", "<", ">", "]]>", "&amp;", "<![CDATA[x]]>", '"', "'", "\r\n", "\r", "\n", "\t"]
_SPECIAL += [" ", "é", "€", "\u2028", "\ufeff", "\U0001f600", "\U0010ffff", "\ue000"]


def texts(binary: bool) -> st.SearchStrategy[str]:
    if binary:
        chars = st.characters(exclude_categories=("Cs",))
        special = st.sampled_from([*_SPECIAL, "\x00", "\x01", "\x1f", "\ufffe", "\uffff"])
    else:
        chars = st.characters(exclude_categories=("Cs",), exclude_characters=_XML_EXCLUDED)
        special = st.sampled_from(_SPECIAL)
    return st.lists(st.text(chars, max_size=8) | special, max_size=4).map("".join)


_INT_EDGES = [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32]
_INT_EDGES += [2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**31) - 1, -(2**63)]
integers = st.integers(-(2**63), 2**64 - 1) | st.sampled_from(_INT_EDGES)
floats = st.floats() | st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e22])


def datetimes(binary: bool) -> st.SearchStrategy[dt.datetime]:
    if binary:
        # Seconds from 2001 as a float64 hold every microsecond within about 140 years of 2001,
        # so these survive plistlib's own round trip exactly (wider: see the rounding test).
        return st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 12, 31))
    # plistlib's XML writes whole seconds.
    return st.datetimes().map(lambda d: d.replace(microsecond=0))


def plist_values(binary: bool) -> st.SearchStrategy[Any]:
    scalars = (
        texts(binary)
        | integers
        | floats
        | st.booleans()
        | st.binary(max_size=120)
        | datetimes(binary)
    )
    if binary:
        scalars |= st.integers(0, 2**64 - 1).map(plistlib.UID)
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=6) | st.dictionaries(texts(binary), children, max_size=6)
        ),
        max_leaves=40,
    )


HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FORMATS
@HYPOTHESIS
@given(data=st.data())
def test_loads_agrees_with_plistlib(binary: bool, data: st.DataObject) -> None:
    value = data.draw(plist_values(binary))
    for sort_keys in (True, False):
        encoded = plistlib.dumps(value, fmt=_fmt(binary), sort_keys=sort_keys)
        assert canon(plist.loads(encoded)) == canon(plistlib.loads(encoded))
    # mdmgate.plist.loads(plistlib.dumps(v)) == v, dict order included.
    unsorted = plistlib.dumps(value, fmt=_fmt(binary), sort_keys=False)
    expected = value if binary else _xml_newlines(value)
    # plistlib's binary writer stores equal scalars once, so 0.0 and -0.0 can become one.
    assert canon(plist.loads(unsorted), signed_zero=not binary) == canon(
        expected, signed_zero=not binary
    )


@FORMATS
@HYPOTHESIS
@given(data=st.data())
def test_dumps_is_read_back_by_plistlib(binary: bool, data: st.DataObject) -> None:
    value = data.draw(plist_values(binary))
    for sort_keys in (True, False):
        encoded = plist.dumps(value, binary=binary, sort_keys=sort_keys)
        assert encoded.startswith(b"bplist00") == binary
        back = plistlib.loads(encoded)  # plistlib.loads(mdmgate.plist.dumps(v)) == v
        expected = _sorted_keys(value) if sort_keys else value
        assert canon(back, signed_zero=not binary) == canon(expected, signed_zero=not binary)
        # And mdmgate reads its own output exactly as plistlib does.
        assert canon(plist.loads(encoded)) == canon(back)


@HYPOTHESIS
@given(st.datetimes())
def test_binary_dates_keep_plistlib_precision(value: dt.datetime) -> None:
    """Over the whole datetime range, where a float64 of seconds from 2001 no longer holds
    every microsecond: both directions round as plistlib does."""
    encoded = plistlib.dumps(value, fmt=BINARY)
    try:
        expected = plistlib.loads(encoded)
    except plistlib.InvalidFileException:  # rounded past year 9999
        with pytest.raises(PlistDecodeError):
            plist.loads(encoded)
        return
    assert plist.loads(encoded) == expected
    assert plistlib.loads(plist.dumps(value, binary=True)) == expected


@HYPOTHESIS
@given(
    st.floats(-1e12, 1e12)
    | st.floats()
    | st.sampled_from([0.0, -0.0, 0.5e-6, 1.5e-6, -0.5e-6, 2.5e-6, 1e-7, 978307200.0])
)
def test_binary_date_seconds_decode_like_plistlib(seconds: float) -> None:
    """Dates written by other encoders carry any float: rounding to the microsecond, and
    refusing what datetime cannot hold, must match plistlib."""
    encoded = build_bplist([b_date(seconds)])
    try:
        expected = plistlib.loads(encoded)
    except plistlib.InvalidFileException:
        with pytest.raises(PlistDecodeError):
            plist.loads(encoded)
    else:
        assert plist.loads(encoded) == expected


@HYPOTHESIS
@given(st.floats(width=32))
def test_binary_float32_reals(value: float) -> None:
    encoded = build_bplist([b_real(value, width=4)])
    assert canon(plist.loads(encoded)) == canon(plistlib.loads(encoded))


@HYPOTHESIS
@given(st.sampled_from([1, 2, 4, 8, 16]), st.data())
def test_binary_integers_of_every_width(width: int, data: st.DataObject) -> None:
    # 1, 2 and 4 bytes are unsigned, 8 and 16 signed; 16 only for values up to 2**64 - 1.
    signed = width >= 8
    low = -(2**63) if signed else 0
    high = min(2 ** (8 * width - signed) - 1, 2**64 - 1)
    value = data.draw(st.integers(low, high) | st.sampled_from([low, high]))
    marker = {1: 0x10, 2: 0x11, 4: 0x12, 8: 0x13, 16: 0x14}[width]
    encoded = build_bplist([bytes([marker]) + value.to_bytes(width, "big", signed=signed)])
    assert plistlib.loads(encoded) == value
    assert canon(plist.loads(encoded)) == ("int", value)


# --- decoding what other writers produce ----------------------------------------------------

HANDWRITTEN_XML = [
    ("no_declaration", b'<plist version="1.0"><string>a</string></plist>'),
    ("utf8_bom", b"\xef\xbb\xbf" + xml_plist("<string>bom</string>")),
    (
        "standalone",
        b'<?xml version="1.0" encoding="utf-8" standalone="yes"?>\n<plist><true/></plist>',
    ),
    ("comments", xml_plist("<!-- a --><dict><!-- b --><key>k</key><!-- c --><false/></dict>")),
    ("cdata", xml_plist("<string><![CDATA[a<b>&c]]></string>")),
    ("cdata_and_text", xml_plist("<string>x<![CDATA[]]]]><![CDATA[>]]>y</string>")),
    ("character_references", xml_plist("<string>&#65;&#x42;&#x1F600;&#13;&#10;</string>")),
    ("predefined_entities", xml_plist("<string>&amp;&lt;&gt;&quot;&apos;]]&gt;</string>")),
    ("entities_in_a_key", xml_plist("<dict><key>a&amp;b</key><true/></dict>")),
    ("crlf_inside_a_string", xml_plist("<string>a\r\nb\rc</string>")),
    ("whitespace_kept", xml_plist("<dict><key> k </key><string>\n\t v \n</string></dict>")),
    (
        "empty_elements",
        xml_plist("<array><string/><dict/><array/><data/><string></string></array>"),
    ),
    ("data_wrapped", xml_plist("<data>\n\tQUJD\n\tREVG\n</data>")),
    ("data_padding", xml_plist("<array><data>QQ==</data><data>QUI=</data></array>")),
    (
        "data_extra_padding",
        xml_plist("<array><data>QUJD====</data><data>QQ=\n==</data><data>=Q=UJD</data></array>"),
    ),
    ("data_only_padding", xml_plist("<data>==</data>")),
    ("data_loose_trailing_bits", xml_plist("<data>QR==</data>")),
    ("integers", xml_plist("<array><integer>-5</integer><integer>0x1F</integer></array>")),
    ("integer_plus", xml_plist("<integer>+7</integer>")),
    (
        "integer_extremes",
        xml_plist(
            "<array><integer>-9223372036854775808</integer>"
            "<integer>18446744073709551615</integer></array>"
        ),
    ),
    ("reals", xml_plist("<array><real>1</real><real>-2.5e-3</real><real>.5</real></array>")),
    (
        "real_specials",
        xml_plist("<array><real>inf</real><real>-inf</real><real>nan</real></array>"),
    ),
    (
        "dates",
        xml_plist(
            "<array><date>2024-02-29T23:59:59Z</date><date>0001-01-01T00:00:00Z</date></array>"
        ),
    ),
    ("non_ascii", xml_plist("<dict><key>ключ</key><string>日本語 \U0001f600</string></dict>")),
    (
        "indented_with_spaces",
        b'<?xml version="1.0"?>\n<plist>\n  <array>\n    <integer>1</integer>\n  </array>\n'
        b"</plist>\n",
    ),
    ("apple_doctype", xml_plist("<dict><key>a</key><integer>1</integer></dict>")),
    ("duplicate_keys_last_wins", xml_plist("<dict><key>a</key><true/><key>a</key><false/></dict>")),
]


@pytest.mark.parametrize(
    "data", [d for _, d in HANDWRITTEN_XML], ids=[n for n, _ in HANDWRITTEN_XML]
)
def test_handwritten_xml_reads_like_plistlib(data: bytes) -> None:
    assert canon(plist.loads(data)) == canon(plistlib.loads(data))


def _two_ref_dict() -> bytes:
    # {"a": "x", "b": "x"}: both values are one shared object, as plistlib writes them.
    return build_bplist([b_dict([1, 2], [3, 3]), b_ascii("a"), b_ascii("b"), b_ascii("x")])


HANDBUILT_BINARY = [
    ("true_false", build_bplist([b_array([1, 2]), b_bool(True), b_bool(False)])),
    (
        "empty_containers",
        build_bplist(
            [b_array([1, 2, 3, 4]), b_array([]), b_dict([], []), b_data(b""), b_ascii("")]
        ),
    ),
    ("long_ascii_string", build_bplist([b_ascii("x" * 300)])),
    ("long_data", build_bplist([b_data(bytes(range(256)) * 300)])),
    ("utf16_with_astral", build_bplist([b_utf16("caf\u00e9 \U0001f600 \uffff")])),
    ("utf16_empty", build_bplist([b"\x60"])),
    (
        "uids",
        build_bplist([b_array([1, 2, 3, 4]), b_uid(7), b_uid(300), b_uid(70000), b_uid(2**40)]),
    ),
    ("uid_of_3_bytes", build_bplist([b_uid(0x010203, size=3)])),
    ("reals", build_bplist([b_array([1, 2]), b_real(0.1), b_real(0.1, width=4)])),
    ("dates", build_bplist([b_array([1, 2]), b_date(0.0), b_date(-978307200.0)])),
    ("shared_values", _two_ref_dict()),
    ("top_object_not_first", build_bplist([b_int(1), b_array([0, 0])], top=1)),
    ("objects_out_of_order", build_bplist([b_ascii("b"), b_array([0, 2]), b_ascii("a")], top=1)),
    ("unused_objects", build_bplist([b_int(5), b_ascii("unused"), b_data(b"x")])),
    ("ref_size_2", build_bplist([b_array([1, 1], ref_size=2), b_int(9)], ref_size=2)),
    ("ref_size_3", build_bplist([b_array([1], ref_size=3), b_int(9)], ref_size=3)),
    ("offset_size_8", build_bplist([b_array([1]), b_int(9)], offset_size=8)),
    ("offset_size_3", build_bplist([b_array([1]), b_int(9)], offset_size=3)),
    # A count of 15 or more follows the marker as an int object of any width.
    ("count_as_2_byte_int", build_bplist([b"\x5f\x11\x00\x10" + b"y" * 16])),
    ("count_as_8_byte_int", build_bplist([b"\x4f\x13" + (3).to_bytes(8, "big") + b"abc"])),
    ("small_count_in_an_int", build_bplist([b"\x5f\x10\x02" + b"ab"])),
]


@pytest.mark.parametrize(
    "data", [d for _, d in HANDBUILT_BINARY], ids=[n for n, _ in HANDBUILT_BINARY]
)
def test_handbuilt_binary_reads_like_plistlib(data: bytes) -> None:
    assert canon(plist.loads(data)) == canon(plistlib.loads(data))


def test_the_200_app_report_reads_like_plistlib() -> None:
    for binary in (False, True):
        data = installed_application_list_report(200, binary=binary)
        assert canon(plist.loads(data)) == canon(plistlib.loads(data))
    assert 120_000 < len(installed_application_list_report(200)) < 200_000


# --- what dumps writes --------------------------------------------------------------------


def test_xml_output_is_escaped_once() -> None:
    value = {"k&<>]]>": "a & b < c > d ]]> e &amp; <![CDATA[x]]>"}
    encoded = plist.dumps(value)
    body = encoded.split(b"<dict>", 1)[1]
    assert b"]]>" not in body
    assert b"&amp;amp;" in body  # the literal "&amp;" in the value, escaped once
    assert b"<![CDATA[" not in body
    for needle in (b"&amp;", b"&lt;", b"&gt;"):
        assert needle in body
    assert plistlib.loads(encoded) == value
    assert plist.loads(encoded) == value


def test_xml_output_keeps_carriage_returns() -> None:
    # plistlib writes CR as LF; mdmgate writes &#13; so that the value survives.
    value = ["a\rb\r\nc", {"k\r": "\r"}]
    encoded = plist.dumps(value)
    assert plistlib.loads(encoded) == value
    assert plist.loads(encoded) == value


def test_xml_with_apples_doctype_is_accepted() -> None:
    data = xml_plist("<dict><key>Status</key><string>Acknowledged</string></dict>")
    assert samples.APPLE_DOCTYPE in data
    assert plist.loads(data) == {"Status": "Acknowledged"}
    assert plist.dumps({"a": 1}).startswith(samples.XML_DECL + samples.APPLE_DOCTYPE)


_UNSORTED = {
    "b": 1,
    "a": {"z": 1, "y": {"\U00010000": 1, "\ufffd": 2, "B": 3, "é": 4}},
    "\U00010000": [{"d": 1, "c": 2}],
    "\ufffd": 0,
    "B": 0,
    "": 0,
}


def _key_orders(value: Any) -> list[list[str]]:
    """Every dict's keys, in order, depth first."""
    out: list[list[str]] = []
    if isinstance(value, dict):
        out.append(list(value))
        for v in value.values():
            out += _key_orders(v)
    elif isinstance(value, list):
        for v in value:
            out += _key_orders(v)
    return out


@FORMATS
def test_keys_are_sorted_unless_told_not_to(binary: bool) -> None:
    # Python's order is by code point, so U+FFFD sorts before U+10000 (not so in UTF-16).
    fmt = _fmt(binary)
    ours = plistlib.loads(plist.dumps(_UNSORTED, binary=binary))
    assert _key_orders(ours) == _key_orders(plistlib.loads(plistlib.dumps(_UNSORTED, fmt=fmt)))
    assert _key_orders(ours) == _key_orders(_sorted_keys(_UNSORTED))
    unsorted = plistlib.loads(plist.dumps(_UNSORTED, binary=binary, sort_keys=False))
    assert _key_orders(unsorted) == _key_orders(_UNSORTED)


@FORMATS
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, {"a": 2**100}]])
def test_integers_out_of_range_raise_overflow_error(binary: bool, value: Any) -> None:
    with pytest.raises(OverflowError):
        plistlib.dumps(value, fmt=_fmt(binary))
    with pytest.raises(OverflowError):
        plist.dumps(value, binary=binary)


@FORMATS
def test_integer_extremes_round_trip(binary: bool) -> None:
    value = [2**64 - 1, 2**63, 2**63 - 1, -(2**63), -1, 0, True, False]
    assert canon(plist.loads(plist.dumps(value, binary=binary))) == canon(value)
    assert canon(plistlib.loads(plist.dumps(value, binary=binary))) == canon(value)


class _Color(enum.IntEnum):
    RED = 1


@FORMATS
@pytest.mark.parametrize(
    "value",
    [
        (1, "a"),
        bytearray(b"ab"),
        collections.OrderedDict(b=1, a=2),
        _Color.RED,
        [-0.0, math.inf, -math.inf],
        dt.datetime(2024, 2, 29, 12, 0, 1, 500000),
    ],
    ids=["tuple", "bytearray", "ordered_dict", "int_enum", "floats", "microseconds"],
)
def test_values_plistlib_converts(binary: bool, value: Any) -> None:
    """Types plistlib writes as another plist type read back as plistlib's would."""
    fmt = _fmt(binary)
    expected = plistlib.loads(plistlib.dumps(value, fmt=fmt))
    assert canon(plistlib.loads(plist.dumps(value, binary=binary))) == canon(expected)
    assert canon(plist.loads(plist.dumps(value, binary=binary))) == canon(expected)


@FORMATS
def test_nan_round_trips(binary: bool) -> None:
    assert math.isnan(plist.loads(plist.dumps(math.nan, binary=binary)))


_UNSUPPORTED = {
    "object": object(),
    "set": {1, 2},
    "complex": 1j,
    "date": dt.date(2024, 1, 1),
    "object_in_dict": {"a": object()},
    "int_key": {1: "a"},
    "bytes_key": {b"k": "a"},
    "tuple_key": {("a",): 1},
    "nested_int_key": {"a": {2: "b"}},
}


@FORMATS
@pytest.mark.parametrize("value", _UNSUPPORTED.values(), ids=_UNSUPPORTED.keys())
def test_unsupported_types_raise_type_error(binary: bool, value: Any) -> None:
    with pytest.raises(TypeError):
        plistlib.dumps(value, fmt=_fmt(binary))
    with pytest.raises(TypeError):
        plist.dumps(value, binary=binary)


@FORMATS
@pytest.mark.parametrize("value", [None, [None], {"a": None}], ids=["none", "list", "dict"])
def test_none_is_not_written(binary: bool, value: Any) -> None:
    """plistlib's XML writer refuses None but its binary writer writes a null object. mdmgate
    reads a binary null as None (docs/plist.md) and writes neither."""
    with pytest.raises(TypeError):
        plist.dumps(value, binary=binary)


def test_xml_refuses_characters_xml_cannot_hold() -> None:
    # plistlib writes U+FFFE and U+FFFF into XML that no XML parser (expat included) reads.
    for text in ("a\ufffe", "\uffff"):
        with pytest.raises(PlistEncodeError):
            plist.dumps({"k": [text]})
        assert plist.loads(plist.dumps(text, binary=True)) == text


def test_uid_is_binary_only() -> None:
    with pytest.raises(TypeError):
        plistlib.dumps(plistlib.UID(1))
    with pytest.raises(TypeError):
        plist.dumps(plistlib.UID(1))
    value = [plistlib.UID(0), plistlib.UID(255), plistlib.UID(256), plistlib.UID(2**64 - 1)]
    assert plist.loads(plist.dumps(value, binary=True)) == value
    assert plistlib.loads(plist.dumps(value, binary=True)) == value


def test_control_characters_in_xml_name_the_field() -> None:
    value = {"Items": [{"Name": "ok"}, {"Name": "a\x01b"}]}
    with pytest.raises(ValueError, match="control characters"):
        plistlib.dumps(value)
    with pytest.raises(PlistEncodeError) as info:
        plist.dumps(value)
    assert info.value.path == "Items[1].Name"
    # Binary plists hold them.
    assert plist.loads(plist.dumps(value, binary=True)) == value


@FORMATS
def test_lone_surrogates_are_refused(binary: bool) -> None:
    with pytest.raises(ValueError, match="surrogates"):
        plistlib.dumps("a\ud800", fmt=_fmt(binary))
    with pytest.raises(ValueError, match="surrogates"):
        plist.dumps(["a\ud800"], binary=binary)


@FORMATS
def test_a_container_inside_itself_is_refused(binary: bool) -> None:
    looped: list[Any] = [1]
    looped.append({"again": looped})
    started = time.perf_counter()
    with pytest.raises(PlistEncodeError):
        plist.dumps(looped, binary=binary)
    assert time.perf_counter() - started < 1.0


# --- hostile and malformed input ----------------------------------------------------------

HOSTILE = samples.hostile_plists()
WRONG = samples.wrong_but_plistlib_accepts()


def test_the_samples_are_there() -> None:
    names = [name for name, _ in HOSTILE]
    assert len(names) == len(set(names)) >= 50
    assert len(WRONG) >= 20


@pytest.mark.parametrize("data", [d for _, d in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_hostile_inputs_are_refused_quickly(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(PlistDecodeError) as info:
        plist.loads(data)
    assert time.perf_counter() - started < 1.0
    error = info.value
    assert isinstance(error, ValueError)
    assert error.kind in KINDS
    assert 0 <= error.offset <= len(data)
    assert f"at byte {error.offset}" in str(error)
    assert len(str(error)) > 20


# The kinds docs/plist.md promises for each cause.
EXPECTED_KINDS = {
    "xml_billion_laughs": "entity",
    "xml_external_entity": "entity",
    "xml_parameter_entity": "entity",
    "xml_internal_subset_without_entities": "entity",
    "xml_undefined_entity": "entity",
    "binary_shared_refs_2_to_the_40": "limit",
    "xml_100000_deep_arrays": "limit",
    "binary_100000_deep_arrays": "limit",
    "xml_invalid_utf8": "encoding",
    "binary_ascii_string_not_ascii": "encoding",
    "binary_utf16_lone_surrogate": "encoding",
    "xml_mismatched_tags": "syntax",
    "xml_truncated": "syntax",
    "binary_2_to_the_60_objects": "syntax",
    "binary_ascii_string_claims_2_to_the_40": "syntax",
    "binary_utf16_string_claims_2_to_the_63": "syntax",
    "binary_data_claims_2_to_the_40": "syntax",
    "binary_array_claims_2_to_the_61_refs": "syntax",
    "binary_array_contains_itself": "structure",
    "binary_two_array_cycle": "structure",
    "binary_dict_value_cycle": "structure",
    "binary_dict_key_ref_out_of_range": "structure",
    "binary_array_ref_out_of_range": "structure",
    "binary_unknown_marker_0x70": "structure",
    "xml_unknown_element": "structure",
    "xml_integer_garbage": "structure",
    "xml_real_garbage": "structure",
    "xml_data_bad_base64": "structure",
    "xml_date_invalid": "structure",
    "xml_date_not_a_date": "structure",
    "xml_dict_key_without_value": "structure",
}


def _refusal(data: bytes, **limits: int) -> PlistDecodeError:
    try:
        plist.loads(data, **limits)
    except PlistDecodeError as e:
        return e
    raise AssertionError("accepted")


def test_hostile_kinds() -> None:
    hostile = dict(HOSTILE)
    kinds = {name: _refusal(hostile[name]).kind for name in EXPECTED_KINDS}
    assert kinds == EXPECTED_KINDS


@pytest.mark.parametrize(
    ("data", "why"), [(d, w) for _, d, w in WRONG], ids=[n for n, _, _ in WRONG]
)
def test_malformed_input_plistlib_accepts_is_refused(data: bytes, why: str) -> None:
    plistlib.loads(data)  # the sample is honest: plistlib takes it
    try:
        plist.loads(data)
    except PlistDecodeError as e:
        assert 0 <= e.offset <= len(data)
    else:
        pytest.fail(f"accepted; plistlib reads it as {why}")


# --- limits -------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@FORMATS
def test_depth_limit(binary: bool) -> None:
    # Depth counts containers: a scalar is depth 0, [[]] is depth 2.
    fmt = _fmt(binary)
    for depth in (1, 2, 10, 50):
        data = plistlib.dumps(_nested(depth), fmt=fmt)
        assert plist.loads(data, max_depth=depth) == _nested(depth)
        error = _refusal(data, max_depth=depth - 1)
        assert error.kind == "limit"
        assert "depth" in str(error)
    assert plist.loads(plistlib.dumps("x", fmt=fmt), max_depth=0) == "x"
    deepest = plistlib.dumps(_nested(plist.MAX_DEPTH), fmt=fmt)
    assert plist.loads(deepest) == _nested(plist.MAX_DEPTH)
    assert _refusal(plistlib.dumps(_nested(plist.MAX_DEPTH + 1), fmt=fmt)).kind == "limit"


def _count_values(value: Any, *, keys: bool = True) -> int:
    """Containers and scalars, and dict keys when ``keys`` (binary plists store keys as
    objects, XML ones as elements that are not values)."""
    if isinstance(value, dict):
        return 1 + sum(keys + _count_values(v, keys=keys) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count_values(v, keys=keys) for v in value)
    return 1


def _node_threshold(data: bytes) -> int:
    """The smallest max_nodes that accepts ``data``."""
    low, high = 0, 10_000_000
    while low < high:
        mid = (low + high) // 2
        try:
            plist.loads(data, max_nodes=mid)
        except PlistDecodeError as e:
            assert e.kind == "limit"
            low = mid + 1
        else:
            high = mid
    return low


def test_node_limit() -> None:
    xml = installed_application_list_report(200)
    binary = installed_application_list_report(200, binary=True)
    value = plistlib.loads(xml)
    error = _refusal(xml, max_nodes=100)
    assert error.kind == "limit"
    assert "values" in str(error)
    assert _refusal(binary, max_nodes=100).kind == "limit"
    # The binary report stores each repeated key and value once and refers to it 200 times;
    # every use counts, so both forms of the same value count the same, keys included or not.
    assert _node_threshold(xml) == _node_threshold(binary)
    assert _node_threshold(binary) in {_count_values(value), _count_values(value, keys=False)}


def test_shared_references_under_the_cap_decode() -> None:
    # 17 objects that expand to 2**16 leaves and 2**17 - 1 values in all.
    data = shared_reference_bplist(16)
    expected = plistlib.loads(data)
    started = time.perf_counter()
    value = plist.loads(data)
    assert time.perf_counter() - started < 1.0
    assert value == expected
    assert _count_values(value) == 2**17 - 1
    assert plist.loads(data, max_nodes=2**17 - 1) == expected
    assert _refusal(data, max_nodes=2**17 - 2).kind == "limit"
    # A larger cap lets a larger expansion through.
    big = shared_reference_bplist(20)
    assert len(plist.loads(big, max_nodes=2**21)) == 2


def test_size_limit() -> None:
    data = installed_application_list_report(200)
    assert plist.loads(data, max_bytes=len(data)) == plistlib.loads(data)
    error = _refusal(data, max_bytes=len(data) - 1)
    assert error.kind == "limit"


# --- arbitrary and corrupted bytes --------------------------------------------------------


def _agree_or_refuse(data: bytes) -> None:
    """mdmgate either refuses with PlistDecodeError, or decodes the value plistlib does."""
    try:
        ours = plist.loads(data)
    except PlistDecodeError as e:
        assert 0 <= e.offset <= len(data)
        assert e.kind in KINDS
        return
    fmt = BINARY if data.startswith(b"bplist00") else XML
    theirs = plistlib.loads(data, fmt=fmt)
    assert canon(ours) == canon(theirs)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"bplist00" + b)
    | st.binary(max_size=300).map(lambda b: b'<?xml version="1.0"?><plist>' + b)
)
def test_arbitrary_bytes_are_decoded_or_refused(data: bytes) -> None:
    with contextlib.suppress(PlistDecodeError):
        plist.loads(data)


_SEEDS = [
    plistlib.dumps(
        {
            "a": [1, -2, 2**40, 1.5, True, False, b"\x00\xff", "é\U0001f600"],
            "d": dt.datetime(2024, 1, 2, 3, 4, 5),
            "n": {"x": [], "y": {}},
        },
        fmt=fmt,
    )
    for fmt in (XML, BINARY)
]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_corrupted_plists_are_refused_or_read_like_plistlib(data: st.DataObject) -> None:
    corrupted = bytearray(data.draw(st.sampled_from(_SEEDS)))
    for _ in range(data.draw(st.integers(1, 4))):
        corrupted[data.draw(st.integers(0, len(corrupted) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(corrupted)))
    _agree_or_refuse(bytes(corrupted))
    _agree_or_refuse(bytes(corrupted[:cut]))


# --- <data>: base64 as plistlib reads it ------------------------------------------------------

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_XML_SPACE = " \t\n\r"


def _data_plist(text: str) -> bytes:
    return xml_plist(f"<data>{text}</data>")


def _plistlib_data(text: str) -> bytes | None:
    """What plistlib makes of ``<data>text</data>``: the bytes, or ``None`` when it refuses
    the value or drops base64 characters after the padding that ends a group."""
    try:
        value = plistlib.loads(_data_plist(text))
    except Exception:  # binascii.Error, a ValueError
        return None
    assert isinstance(value, bytes)
    digits = sum(c in _B64_ALPHABET for c in text)
    if len(value) < digits * 6 // 8:
        return None  # "QQ==QUJD" is b"A" to plistlib: the rest is dropped, mdmgate refuses
    return value


@st.composite
def _padded_base64(draw: st.DrawFn) -> str:
    """Base64 text with extra padding and whitespace anywhere: a value's encoding (padding
    kept or dropped), or any string of base64 characters."""
    if draw(st.booleans()):
        text = base64.b64encode(draw(st.binary(max_size=40))).decode()
        if draw(st.booleans()):
            text = text.rstrip("=")
    else:
        text = draw(st.text(_B64_ALPHABET, max_size=40))
    chars = list(text)
    for _ in range(draw(st.integers(0, 8))):
        extra = draw(st.sampled_from("=" * 3 + _XML_SPACE))
        chars.insert(draw(st.integers(0, len(chars))), extra)
    return "".join(chars)


@settings(max_examples=2000, deadline=None)
@given(_padded_base64())
def test_data_with_extra_padding_and_whitespace_reads_like_plistlib(text: str) -> None:
    expected = _plistlib_data(text)
    data = _data_plist(text)
    if expected is None:
        with pytest.raises(PlistDecodeError) as info:
            plist.loads(data)
        assert info.value.kind == "structure"
    else:
        assert canon(plist.loads(data)) == canon(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("QUJD====", b"ABC"),
        ("QQ===", b"A"),
        ("QUI==", b"AB"),
        ("QUI= \n=", b"AB"),
        ("=QUJD", b"ABC"),
        ("Q=U=JD", b"ABC"),
        ("QU=JD", b"ABC"),
        ("====", b""),
        ("QR==", b"A"),
        ("QUJ=", b"AB"),
        ("QQ", None),  # plistlib: "Incorrect padding"
        ("QQ=", None),
        ("Q", None),
        ("QUJDR===", None),  # one base64 character more than a multiple of 4
        ("QU==JD", None),  # plistlib drops "JD"
        ("QQ==QUJD", None),  # two padded groups: plistlib reads b"A"
        ("QU*JD", None),  # plistlib skips the "*"
    ],
)
def test_data_padding_examples(text: str, expected: bytes | None) -> None:
    if expected is None:
        with pytest.raises(PlistDecodeError, match="base64"):
            plist.loads(_data_plist(text))
    else:
        assert plist.loads(_data_plist(text)) == expected
        assert plistlib.loads(_data_plist(text)) == expected
