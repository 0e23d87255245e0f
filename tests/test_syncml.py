"""The SyncML codec against the corpus, the xml.etree reference decoder, generated messages
and hostile input."""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmgate import syncml
from mdmgate.errors import SyncMLDecodeError, SyncMLEncodeError
from tests import syncml_corpus as corpus
from tests.syncml_reference import normalise_data, reference_to_dict

STRICT = corpus.seed_messages() + corpus.shape_messages()
BIG = [("inventory", corpus.inventory_results()), ("session", corpus.session_message())]
LENIENT = corpus.lenient_messages()


def _ids(pairs: list[tuple[str, bytes]]) -> list[str]:
    return [name for name, _ in pairs]


def test_corpus_is_not_empty() -> None:
    # The corpus must really contain the seeds and shapes, not silently nothing.
    assert len(corpus.seed_messages()) >= 20
    assert len(corpus.shape_messages()) >= 15
    assert len(corpus.malformed_seed_messages()) >= 3


@pytest.mark.parametrize(
    "data", [d for _, d in STRICT + BIG + LENIENT], ids=_ids(STRICT + BIG + LENIENT)
)
def test_agrees_with_the_reference_decoder(data: bytes) -> None:
    assert normalise_data(syncml.to_dict(data)) == normalise_data(reference_to_dict(data))


@pytest.mark.parametrize("data", [d for _, d in STRICT + BIG], ids=_ids(STRICT + BIG))
def test_round_trips(data: bytes) -> None:
    model = syncml.to_dict(data)
    xml = syncml.from_dict(model)
    # XML -> model -> XML gives the same model, and the reference reads our output the same way.
    assert syncml.to_dict(xml) == model
    assert normalise_data(reference_to_dict(xml)) == normalise_data(model)
    # Encoding is deterministic: a second pass writes the same bytes.
    assert syncml.from_dict(syncml.to_dict(xml)) == xml
    wbxml = syncml.from_dict(model, wbxml=True)
    assert syncml.detect(wbxml) == "wbxml"
    assert syncml.to_dict(wbxml) == model
    assert syncml.decode(wbxml).to_dict() == model


@pytest.mark.parametrize("data", [d for _, d in LENIENT], ids=_ids(LENIENT))
def test_lenient_inputs_decode_and_strict_output_says_why(data: bytes) -> None:
    model = syncml.to_dict(data)
    try:
        xml = syncml.from_dict(model)
    except SyncMLEncodeError as e:
        # Only the CmdID rule refuses lenient input, and the error names the command.
        assert "CmdID" in e.message
        assert e.path.startswith("SyncBody[")
    else:
        assert syncml.to_dict(xml) == model


@pytest.mark.parametrize(
    "data",
    [d for _, d in corpus.malformed_seed_messages()],
    ids=_ids(corpus.malformed_seed_messages()),
)
def test_malformed_seed_examples_are_refused_by_both_decoders(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        reference_to_dict(data)
    with pytest.raises(SyncMLDecodeError) as info:
        syncml.to_dict(data)
    assert 0 <= info.value.offset <= len(data)
    assert info.value.kind in {"syntax", "structure"}


@pytest.mark.parametrize(
    "data", [d for _, d in corpus.hostile_inputs()], ids=_ids(corpus.hostile_inputs())
)
def test_hostile_inputs_are_refused_quickly(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(SyncMLDecodeError) as info:
        syncml.to_dict(data)
    assert time.perf_counter() - started < 1.0
    error = info.value
    assert error.kind in {"syntax", "encoding", "entity", "limit", "structure"}
    assert 0 <= error.offset <= len(data)
    assert f"at byte {error.offset}" in str(error)


def test_hostile_kinds() -> None:
    kinds = {name: _kind(data) for name, data in corpus.hostile_inputs()}
    assert kinds["billion_laughs"] == "entity"
    assert kinds["external_entity"] == "entity"
    assert kinds["deep_nesting"] == "limit"
    assert kinds["wbxml_1gb_string_table"] == "syntax"


def _kind(data: bytes) -> str:
    try:
        syncml.to_dict(data)
    except SyncMLDecodeError as e:
        return e.kind
    raise AssertionError("accepted")


def test_limits_are_configurable() -> None:
    data = corpus.inventory_results()
    with pytest.raises(SyncMLDecodeError, match="over the limit") as info:
        syncml.to_dict(data, max_bytes=len(data) - 1)
    assert info.value.kind == "limit"
    with pytest.raises(SyncMLDecodeError, match="element count"):
        syncml.decode(data, max_elements=1000)
    with pytest.raises(SyncMLDecodeError, match="nesting depth"):
        syncml.to_dict(data, max_depth=4)
    assert syncml.to_dict(data, max_bytes=len(data)) == syncml.to_dict(data)


def test_data_is_escaped_exactly_once() -> None:
    markup = '<Application PackageUri="https://x/a.appx?a=1&amp;b=2"/>'
    message = _message([{"Exec": {"CmdID": "1", "Item": [{"Data": markup}]}}])
    xml = syncml.from_dict(message)
    assert b'&lt;Application PackageUri="https://x/a.appx?a=1&amp;amp;b=2"/&gt;' in xml
    assert syncml.to_dict(xml)["SyncBody"][0]["Exec"]["Item"][0]["Data"] == markup
    # Markup inlined unescaped by a device is kept as written, then escaped once on output.
    inlined = xml.replace(
        b'&lt;Application PackageUri="https://x/a.appx?a=1&amp;amp;b=2"/&gt;', markup.encode()
    )
    assert syncml.to_dict(inlined)["SyncBody"][0]["Exec"]["Item"][0]["Data"] == markup
    assert syncml.from_dict(syncml.to_dict(inlined)) == xml


def test_msft_attributes_and_namespaces() -> None:
    message = _message(
        [
            {
                "Status": {
                    "CmdID": "1",
                    "MsgRef": "1",
                    "CmdRef": "2",
                    "Cmd": "Exec",
                    "Data": "500",
                    "DataAttrs": {"msft:originalerror": "0x80070057"},
                }
            }
        ]
    )
    xml = syncml.from_dict(message)
    assert b'xmlns:msft="http://schemas.microsoft.com/MobileDevice/MDM"' in xml
    assert b'msft:originalerror="0x80070057"' in xml
    assert xml.startswith(b'<SyncML xmlns="SYNCML:SYNCML1.2">')
    assert syncml.to_dict(xml) == message
    assert syncml.to_dict(syncml.from_dict(message, wbxml=True)) == message


def test_binary_wbxml_data() -> None:
    message = _message([{"Replace": {"CmdID": "1", "Item": [{"Data": b"\xff\x00\x80"}]}}])
    wbxml = syncml.from_dict(message, wbxml=True)
    assert syncml.to_dict(wbxml) == message
    xml = syncml.from_dict(message)
    assert b"<Data>/wCA</Data>" in xml


@pytest.mark.parametrize(
    ("message", "path", "needle"),
    [
        ({"SyncHdr": {"MsgID": "1"}, "SyncBody": []}, "SyncHdr", "SessionID is required"),
        (_m := {"SyncHdr": {"SessionID": "1", "MsgID": "1"}, "SyncBody": []}, "SyncHdr", "Target"),
        ("not a dict", "message", "expected an object"),
    ],
)
def test_encode_errors_name_the_field(message: Any, path: str, needle: str) -> None:
    with pytest.raises(SyncMLEncodeError) as info:
        syncml.from_dict(message)
    assert info.value.path == path
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("command", "path", "needle"),
    [
        ({"Get": {"CmdID": "0"}}, "SyncBody[0]", '"0"'),
        ({"Get": {}}, "SyncBody[0]", "CmdID is required"),
        ({"Get": {"CmdID": "1", "Data": "x"}}, "SyncBody[0].Get", "unknown field"),
        ({"Frobnicate": {"CmdID": "1"}}, "SyncBody[0]", "unknown command"),
        (
            {"Get": {"CmdID": "1", "Item": [{"Data": 5}]}},
            "SyncBody[0].Get.Item[0].Data",
            "str or bytes",
        ),
        (
            {"Get": {"CmdID": "1", "Item": [{"Data": "a\x01b"}]}},
            "SyncBody[0].Item[0].Data",
            "U+0001",
        ),
        ({"Status": {"CmdID": "1", "MsgRef": "1", "CmdRef": "1"}}, "SyncBody[0]", "Cmd"),
        (
            {"Atomic": {"CmdID": "1", "Commands": [{"Status": {"CmdID": "2"}}]}},
            "SyncBody[0].Commands[0]",
            "nested",
        ),
    ],
)
def test_strict_output(command: dict[str, Any], path: str, needle: str) -> None:
    with pytest.raises(SyncMLEncodeError) as info:
        syncml.from_dict(_message([command]))
    assert info.value.path == path
    assert needle in str(info.value)


def test_duplicate_cmdids_are_refused() -> None:
    body = [
        {"Get": {"CmdID": "1"}},
        {"Atomic": {"CmdID": "2", "Commands": [{"Add": {"CmdID": "1"}}]}},
    ]
    with pytest.raises(SyncMLEncodeError, match="used twice"):
        syncml.from_dict(_message(body))


# ---------------------------------------------------------------- typed objects


def test_typed_decode_matches_the_dict_form() -> None:
    data = corpus.session_message()
    msg = syncml.decode(data)
    assert msg.to_dict() == syncml.to_dict(data)
    assert msg.header.session_id == syncml.to_dict(data)["SyncHdr"]["SessionID"]
    names = [c.name for c in msg.commands]
    assert names == [next(iter(c)) for c in syncml.to_dict(data)["SyncBody"]]
    assert msg.encode() == syncml.from_dict(syncml.to_dict(data))


def test_typed_objects_are_editable() -> None:
    header = syncml.Header(
        session_id="5", msg_id="2", target="dev", source="https://mdm", meta={"MaxMsgSize": "4096"}
    )
    assert header.max_msg_size == 4096
    item = syncml.Item(
        target="./Vendor/MSFT/X", meta={"Format": "int", "Type": "text/plain"}, data="1"
    )
    assert (item.format, item.type) == ("int", "text/plain")
    get = syncml.Command("Replace", cmd_id="7", items=[item])
    msg = syncml.Message(header, [get])
    get.items.append(syncml.Item(target="./Vendor/MSFT/Y", data="2"))
    msg.commands[0].no_resp = True
    decoded = syncml.to_dict(msg.encode(wbxml=True))
    replace = decoded["SyncBody"][0]["Replace"]
    assert replace["NoResp"] is True
    assert [i["Target"]["LocURI"] for i in replace["Item"]] == [
        "./Vendor/MSFT/X",
        "./Vendor/MSFT/Y",
    ]
    with pytest.raises(TypeError, match="unknown command"):
        syncml.Command("Sync")
    msg.commands.append("not a command")  # type: ignore[arg-type]
    with pytest.raises(SyncMLEncodeError, match="expected Command"):
        msg.encode()


@pytest.mark.parametrize("wbxml", [False, True])
def test_builder_splits_by_max_msg_size(wbxml: bool) -> None:
    header = syncml.Header(session_id="1", msg_id="2", target="dev", source="https://mdm")
    pending = [
        syncml.Command("Get", items=[syncml.Item(target=f"./Vendor/MSFT/Node{i}")])
        for i in range(60)
    ]
    messages = []
    budget = 700 if wbxml else 1500
    while pending:
        builder = syncml.MessageBuilder(header, budget, wbxml=wbxml)
        status = syncml.Command("Status", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="200")
        assert builder.push(status) == "1"
        placed = 0
        for command in pending:
            if builder.push(command) is None:
                break
            placed += 1
        assert placed > 0
        pending = pending[placed:]
        data = builder.finish(final=not pending)
        assert len(data) <= budget
        messages.append(syncml.to_dict(data))
    assert len(messages) > 2
    assert [m["Final"] for m in messages] == [False] * (len(messages) - 1) + [True]
    uris = [
        c["Get"]["Item"][0]["Target"]["LocURI"]
        for m in messages
        for c in m["SyncBody"]
        if "Get" in c
    ]
    assert uris == [f"./Vendor/MSFT/Node{i}" for i in range(60)]
    for m in messages:
        ids = [next(iter(c.values()))["CmdID"] for c in m["SyncBody"]]
        assert len(set(ids)) == len(ids)
        assert "0" not in ids


def test_builder_refuses_what_can_never_fit() -> None:
    header = syncml.Header(session_id="1", msg_id="2", target="dev", source="https://mdm")
    with pytest.raises(SyncMLEncodeError, match="header alone"):
        syncml.MessageBuilder(header, 100)
    builder = syncml.MessageBuilder(header, 1000)
    big = syncml.Command("Replace", items=[syncml.Item(target="./x", data="y" * 5000)])
    assert builder.push(big) is None
    assert big.cmd_id is None
    builder.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        builder.finish()


# ---------------------------------------------------------------- generated messages

_xml_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="".join(
            map(chr, [*range(0, 9), 11, 12, *range(14, 32), 0xFFFE, 0xFFFF])
        ),
    ),
    max_size=20,
)
_leaf = _xml_text.map(lambda s: s.strip(" \t\r\n"))
_meta = st.dictionaries(
    st.sampled_from(["Format", "Type", "Mark", "Size", "NextNonce", "MaxObjSize", "Vendor"]),
    _leaf,
    max_size=3,
)
_loc = st.builds(
    lambda uri, name: {"LocURI": uri} | ({"LocName": name} if name is not None else {}),
    _leaf,
    st.none() | _leaf,
)


@st.composite
def _items(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for key, strategy in (("Target", _loc), ("Source", _loc), ("Meta", _meta), ("Data", _xml_text)):
        if draw(st.booleans()):
            item[key] = draw(strategy)
    if "Data" in item and draw(st.booleans()):
        item["DataAttrs"] = {"msft:originalerror": draw(_leaf.map(lambda s: " ".join(s.split())))}
    if draw(st.booleans()):
        item["MoreData"] = True
    return item


@st.composite
def _command(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    names = ["Add", "Alert", "Copy", "Delete", "Exec", "Get", "Replace", "Results", "Status"]
    if depth < 2:
        names += ["Atomic", "Sequence"]
    name = draw(st.sampled_from(names))
    body: dict[str, Any] = {}
    if name in ("Atomic", "Sequence"):
        body["Commands"] = draw(
            st.lists(
                _command(depth + 1).filter(lambda c: next(iter(c)) not in ("Results", "Status")),
                max_size=3,
            )
        )
    else:
        items = draw(st.lists(_items(), max_size=3))
        if items:
            body["Item"] = items
    if name in ("Alert", "Status"):
        body["Data"] = draw(_xml_text)
    if name in ("Status", "Results"):
        body["MsgRef"] = "1"
        body["CmdRef"] = draw(_leaf.filter(bool))
    if name == "Status":
        body["Cmd"] = "Get"
    if draw(st.booleans()):
        body["Meta"] = draw(_meta)
    return {name: body}


def _number(commands: list[dict[str, Any]], counter: list[int]) -> None:
    for command in commands:
        body = next(iter(command.values()))
        counter[0] += 1
        body["CmdID"] = str(counter[0])
        _number(body.get("Commands", []), counter)


@st.composite
def _messages(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.lists(_command(), max_size=5))
    _number(body, [0])
    message = _message(body)
    message["SyncHdr"]["SessionID"] = draw(_leaf.filter(bool))
    message["Final"] = draw(st.booleans())
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_generated_messages_round_trip(message: dict[str, Any]) -> None:
    expected = copy.deepcopy(message)
    xml = syncml.from_dict(message)
    assert syncml.to_dict(xml) == expected
    # An independent decoder reads our XML the same way.
    assert reference_to_dict(xml) == expected
    wbxml = syncml.from_dict(message, wbxml=True)
    assert syncml.to_dict(wbxml) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_decoded_or_refused(data: bytes) -> None:
    try:
        syncml.to_dict(data)
    except SyncMLDecodeError as e:
        assert 0 <= e.offset <= max(len(data), syncml.MAX_BYTES)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_messages_are_decoded_or_refused(data: st.DataObject) -> None:
    _, original = data.draw(st.sampled_from(STRICT))
    encoded = data.draw(
        st.sampled_from([original, syncml.from_dict(syncml.to_dict(original), wbxml=True)])
    )
    corrupted = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 6))):
        corrupted[data.draw(st.integers(0, len(corrupted) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(corrupted)))
    for candidate in (bytes(corrupted), bytes(corrupted[:cut])):
        with contextlib.suppress(SyncMLDecodeError):
            syncml.to_dict(candidate)


def _message(body: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "SyncHdr": {
            "VerDTD": "1.2",
            "VerProto": "DM/1.2",
            "SessionID": "1",
            "MsgID": "1",
            "Target": {"LocURI": corpus.DEVICE_ID},
            "Source": {"LocURI": corpus.SERVER_URL},
        },
        "SyncBody": body,
        "Final": True,
    }
