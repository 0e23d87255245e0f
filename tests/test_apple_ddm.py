"""Declarations, their combination and software-update enforcement (requirements §C)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdmgate.apple import ddm, schema
from mdmgate.apple.ddm import (
    COMBINE_TYPES,
    ENFORCEMENT_TYPE,
    SETTINGS_TYPE,
    CombineError,
    Contribution,
    Declaration,
    DeclarationError,
    Enforcement,
    active_enforcement,
    combine_keys,
    declaration,
    effective_settings,
    pending_enforcements,
    validate,
)
from mdmgate.errors import UnknownPlatform

SETTINGS_KEYS = combine_keys(SETTINGS_TYPE)


def nested(path: str, value: Any) -> dict[str, Any]:
    """``{"A": {"B": value}}`` for ``A.B``."""
    head, _, rest = path.partition(".")
    return {head: nested(rest, value) if rest else value}


def merge_into(target: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value)
        else:
            target[key] = value
    return target


def settings_decl(identifier: str, payload: dict[str, Any]) -> Declaration:
    return declaration(SETTINGS_TYPE, identifier, payload)


def program(name: str) -> dict[str, str]:
    return {"Description": f"{name} beta", "Token": f"token-{name}"}


# --- per-key table ----------------------------------------------------------------------

# For every combinable key of the settings declaration: the values three declarations
# "a", "b", "c" set (None: not set), the effective value and the deciding declarations.
Case = tuple[tuple[Any, Any, Any], Any, tuple[str, ...]]

BOOL_AND: list[Case] = [
    ((True, True, None), True, ("a", "b")),
    ((True, False, None), False, ("b",)),
    ((False, True, False), False, ("a", "c")),
    ((None, None, True), True, ("c",)),
]
DAYS_MAX: list[Case] = [
    ((30, 60, None), 60, ("b",)),
    ((90, 1, 90), 90, ("a", "c")),
    ((None, 7, None), 7, ("b",)),
]
ENUM_ACTIONS: list[Case] = [
    (("Allowed", "AlwaysOn", None), "AlwaysOn", ("b",)),
    (("AlwaysOff", "AlwaysOn", "Allowed"), "AlwaysOff", ("a",)),
    (("Allowed", None, "Allowed"), "Allowed", ("a", "c")),
]

CASES: dict[str, list[Case]] = {
    "Notifications": BOOL_AND,
    "Deferrals.CombinedPeriodInDays": DAYS_MAX,
    "Deferrals.MajorPeriodInDays": DAYS_MAX,
    "Deferrals.MinorPeriodInDays": DAYS_MAX,
    "Deferrals.SystemPeriodInDays": DAYS_MAX,
    "RecommendedCadence": [
        (("All", "Oldest", None), "Oldest", ("b",)),
        (("Newest", "Oldest", "All"), "Newest", ("a",)),
        (("Oldest", None, "Oldest"), "Oldest", ("a", "c")),
    ],
    "AutomaticActions.Download": ENUM_ACTIONS,
    "AutomaticActions.InstallOSUpdates": ENUM_ACTIONS,
    "AutomaticActions.InstallSecurityUpdate": ENUM_ACTIONS,
    "RapidSecurityResponse.Enable": BOOL_AND,
    "RapidSecurityResponse.EnableRollback": BOOL_AND,
    "AllowStandardUserOSUpdates": BOOL_AND,
    "Beta.ProgramEnrollment": ENUM_ACTIONS,
    "Beta.OfferPrograms": [
        (
            ([program("x")], [program("y"), program("x")], None),
            [program("x"), program("y")],
            ("a", "b"),
        ),
        (([], [program("y")], [program("y")]), [program("y")], ("b", "c")),
    ],
    "Beta.RequireProgram": [
        ((program("x"), program("y"), None), program("x"), ("a",)),
        ((None, program("y"), program("x")), program("y"), ("b",)),
    ],
}


def test_cases_name_only_keys_of_the_data() -> None:
    assert set(CASES) <= set(SETTINGS_KEYS)


def key_cases() -> Iterator[Any]:
    # Driven by the data: a key of the facts without an entry in CASES fails below.
    for path in SETTINGS_KEYS:
        cases: list[Case | None] = [*CASES.get(path, [])] or [None]
        for number, case in enumerate(cases):
            yield pytest.param(path, case, id=f"{path}-{number}")


@pytest.mark.parametrize(("path", "case"), list(key_cases()))
def test_every_settings_key_combines(path: str, case: Case | None) -> None:
    assert case is not None, f"no test case for {path} ({SETTINGS_KEYS[path].combinetype})"
    values, expected, deciding = case
    decls = [
        settings_decl(ident, {} if value is None else nested(path, value))
        for ident, value in zip("abc", values, strict=True)
    ]
    result = effective_settings(decls)
    assert result == {path: Contribution(expected, deciding)}


def test_unset_keys_are_absent() -> None:
    assert effective_settings([settings_decl("a", {})]) == {}
    assert effective_settings([]) == {}


# --- combine types ----------------------------------------------------------------------


def all_combinetypes() -> set[str]:
    found: set[str] = set()

    def walk(specs: tuple[schema.KeySpec, ...]) -> None:
        for spec in specs:
            if spec.combinetype is not None:
                found.add(spec.combinetype)
            walk(spec.subkeys)

    for item in schema.facts().files.values():
        walk(item.payloadkeys)
        walk(item.responsekeys)
    return found


@pytest.mark.parametrize("combinetype", sorted(all_combinetypes()))
def test_every_combinetype_of_the_data_is_handled(combinetype: str) -> None:
    assert combinetype in COMBINE_TYPES, f"combinetype {combinetype!r} is not implemented"


def test_the_settings_declaration_is_combined() -> None:
    item = schema.facts().declarations[SETTINGS_TYPE]
    assert item.apply == "combined"
    assert schema.facts().declarations[ENFORCEMENT_TYPE].apply == "multiple"


def fake_facts(*specs: schema.KeySpec) -> schema.Facts:
    item = schema.SchemaFile(payloadkeys=specs, declarationtype="t.fake", apply="combined")
    return schema.Facts("test", {"fake.yaml": item})


def test_unknown_combinetype_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = schema.KeySpec(key="Days", type="<integer>", combinetype="number-average")
    outer = schema.KeySpec(key="Outer", type="<dictionary>", subkeys=(spec,))
    monkeypatch.setattr(schema, "facts", lambda: fake_facts(outer))
    with pytest.raises(CombineError, match="number-average") as info:
        ddm.combine("t.fake", [])
    assert info.value.key == "Outer.Days"


def test_missing_combinetype_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = schema.KeySpec(key="Name", type="<string>")
    monkeypatch.setattr(schema, "facts", lambda: fake_facts(spec))
    with pytest.raises(CombineError, match="no combinetype") as info:
        combine_keys("t.fake")
    assert info.value.key == "Name"


def test_boolean_or_and_number_min(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found elsewhere in the data (not in the settings declaration).
    specs = (
        schema.KeySpec(key="Any", type="<boolean>", combinetype="boolean-or"),
        schema.KeySpec(key="Low", type="<integer>", combinetype="number-min"),
    )
    monkeypatch.setattr(schema, "facts", lambda: fake_facts(*specs))
    decls = [
        declaration("t.fake", "a", {"Any": False, "Low": 5}),
        declaration("t.fake", "b", {"Any": True, "Low": 3}),
        declaration("t.fake", "c", {"Any": True, "Low": 3}),
    ]
    assert ddm.combine("t.fake", decls) == {
        "Any": Contribution(True, ("b", "c")),
        "Low": Contribution(3, ("b", "c")),
    }
    none = [declaration("t.fake", "a", {"Any": False}), declaration("t.fake", "b", {"Any": False})]
    assert ddm.combine("t.fake", none) == {"Any": Contribution(False, ("a", "b"))}


# --- the seed's combination examples ----------------------------------------------------


def test_seed_cadence_and_deferral_combine() -> None:
    # RecommendedCadence Oldest with CombinedPeriodInDays 30: both hold together.
    decls = [
        settings_decl("cadence", {"RecommendedCadence": "Oldest"}),
        settings_decl("deferral", {"Deferrals": {"CombinedPeriodInDays": 30}}),
    ]
    assert effective_settings(decls) == {
        "RecommendedCadence": Contribution("Oldest", ("cadence",)),
        "Deferrals.CombinedPeriodInDays": Contribution(30, ("deferral",)),
    }


def test_seed_several_declarations() -> None:
    decls = [
        settings_decl(
            "baseline",
            {
                "Notifications": True,
                "AutomaticActions": {"Download": "AlwaysOn", "InstallOSUpdates": "Allowed"},
                "RapidSecurityResponse": {"Enable": True, "EnableRollback": True},
                "Deferrals": {"MajorPeriodInDays": 30, "MinorPeriodInDays": 7},
                "Beta": {"ProgramEnrollment": "Allowed", "OfferPrograms": [program("x")]},
            },
        ),
        settings_decl(
            "strict",
            {
                "AutomaticActions": {"Download": "AlwaysOff"},
                "RapidSecurityResponse": {"EnableRollback": False},
                "Deferrals": {"MajorPeriodInDays": 90},
                "Beta": {
                    "ProgramEnrollment": "AlwaysOn",
                    "OfferPrograms": [program("y")],
                    "RequireProgram": program("y"),
                },
            },
        ),
        settings_decl("late", {"Beta": {"RequireProgram": program("x")}}),
    ]
    assert effective_settings(decls) == {
        "Notifications": Contribution(True, ("baseline",)),
        "Deferrals.MajorPeriodInDays": Contribution(90, ("strict",)),
        "Deferrals.MinorPeriodInDays": Contribution(7, ("baseline",)),
        "AutomaticActions.Download": Contribution("AlwaysOff", ("strict",)),
        "AutomaticActions.InstallOSUpdates": Contribution("Allowed", ("baseline",)),
        "RapidSecurityResponse.Enable": Contribution(True, ("baseline",)),
        "RapidSecurityResponse.EnableRollback": Contribution(False, ("strict",)),
        "Beta.ProgramEnrollment": Contribution("AlwaysOn", ("strict",)),
        "Beta.OfferPrograms": Contribution([program("x"), program("y")], ("baseline", "strict")),
        # First applied: the earlier assignment wins, whatever the later one says.
        "Beta.RequireProgram": Contribution(program("y"), ("strict",)),
    }


def test_other_declaration_types_are_skipped() -> None:
    other = declaration(ENFORCEMENT_TYPE, "e", {"TargetOSVersion": "18.1"})
    mine = settings_decl("s", {"Notifications": False})
    assert effective_settings([other, mine]) == {"Notifications": Contribution(False, ("s",))}


def test_invalid_or_duplicate_declarations_are_refused() -> None:
    with pytest.raises(DeclarationError) as info:
        effective_settings([settings_decl("a", {"Deferrals": {"CombinedPeriodInDays": 0}})])
    assert info.value.key == "Deferrals.CombinedPeriodInDays"
    twice = [settings_decl("a", {}), settings_decl("a", {"Notifications": True})]
    with pytest.raises(DeclarationError) as info:
        effective_settings(twice)
    assert info.value.key == "Identifier"


# --- order independence -----------------------------------------------------------------


def value_strategy(spec: schema.KeySpec) -> st.SearchStrategy[Any]:
    if spec.rangelist:
        return st.sampled_from(spec.rangelist)
    if spec.type == "<boolean>":
        return st.booleans()
    if spec.type == "<integer>":
        assert spec.range is not None
        return st.integers(int(spec.range.min or 0), int(spec.range.max or 0))
    if spec.type == "<array>":
        return st.lists(st.sampled_from([program(n) for n in "xyz"]), max_size=3)
    assert spec.type == "<dictionary>"
    return st.sampled_from([program(n) for n in "xyz"])


ORDER_FREE = {path: spec for path, spec in SETTINGS_KEYS.items() if spec.combinetype != "first"}


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(sorted(ORDER_FREE)), unique=True)):
        merge_into(payload, nested(path, draw(value_strategy(ORDER_FREE[path]))))
    return payload


def comparable(path: str, found: Contribution) -> tuple[Any, frozenset[str]]:
    value = found.value
    if SETTINGS_KEYS[path].combinetype == "set-union":
        value = frozenset(json.dumps(item, sort_keys=True) for item in value)
    return value, frozenset(found.declarations)


@settings(max_examples=150, deadline=None)
@given(st.lists(payloads(), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_merge_is_independent_of_order(payload_list: list[dict[str, Any]], rnd: Any) -> None:
    decls = [settings_decl(f"d{n}", p) for n, p in enumerate(payload_list)]
    shuffled = list(decls)
    rnd.shuffle(shuffled)
    first, second = effective_settings(decls), effective_settings(shuffled)
    assert first.keys() == second.keys()
    for path in first:
        assert comparable(path, first[path]) == comparable(path, second[path])


# --- validation -------------------------------------------------------------------------


def wrong_type(spec: schema.KeySpec) -> Any:
    return 7 if spec.type == "<string>" else "seven"


@pytest.mark.parametrize("path", list(SETTINGS_KEYS))
def test_every_settings_key_checks_its_type(path: str) -> None:
    decl = settings_decl("a", nested(path, wrong_type(SETTINGS_KEYS[path])))
    with pytest.raises(DeclarationError, match="expected") as info:
        validate(decl)
    assert info.value.key == path


@pytest.mark.parametrize(
    "path", [p for p, s in SETTINGS_KEYS.items() if s.range is not None or s.rangelist]
)
def test_every_constrained_settings_key_checks_its_values(path: str) -> None:
    spec = SETTINGS_KEYS[path]
    bad: list[Any] = ["Sometimes"] if spec.rangelist else []
    if spec.range is not None:
        bad += [int(spec.range.min or 0) - 1, int(spec.range.max or 0) + 1]
    for value in bad:
        with pytest.raises(DeclarationError) as info:
            validate(settings_decl("a", nested(path, value)))
        assert info.value.key == path
    validate(settings_decl("a", nested(path, next(iter(spec.rangelist or [1, 90])))))


def settings_bad(payload: dict[str, Any], key: str, text: str) -> Any:
    return pytest.param(SETTINGS_TYPE, payload, key, text, id=f"settings-{key}-{text}")


def enforcement_bad(payload: dict[str, Any], key: str, text: str) -> Any:
    return pytest.param(ENFORCEMENT_TYPE, payload, key, text, id=f"enforcement-{key}-{text}")


def at(when: str) -> dict[str, Any]:
    return {"TargetOSVersion": "18.1", "TargetLocalDateTime": when}


DAYS = "Deferrals.CombinedPeriodInDays"
LOCAL = "TargetLocalDateTime"
FORMAT = "YYYY-MM-DDTHH:MM:SS"


@pytest.mark.parametrize(
    ("kind", "payload", "key", "text"),
    [
        settings_bad(nested(DAYS, 91), DAYS, "maximum"),
        settings_bad(nested(DAYS, 0), DAYS, "minimum"),
        settings_bad(nested(DAYS, True), DAYS, "integer"),
        settings_bad(nested(DAYS, 30.0), DAYS, "integer"),
        settings_bad({"Deferrals": {"DaysOfRest": 3}}, "Deferrals.DaysOfRest", "unknown key"),
        settings_bad({"Colour": "blue"}, "Colour", "unknown key"),
        settings_bad(
            {"AutomaticActions": {"Download": "Never"}}, "AutomaticActions.Download", "not one of"
        ),
        settings_bad({"Deferrals": 30}, "Deferrals", "dictionary"),
        settings_bad(
            {"Beta": {"OfferPrograms": [{"Description": "x"}]}},
            "Beta.OfferPrograms[0].Token",
            "required",
        ),
        settings_bad(
            {"Beta": {"RequireProgram": {"Token": "t"}}},
            "Beta.RequireProgram.Description",
            "required",
        ),
        enforcement_bad({LOCAL: "2025-01-01T10:00:00"}, "TargetOSVersion", "required"),
        enforcement_bad({"TargetOSVersion": 18}, "TargetOSVersion", "string"),
        enforcement_bad(at("2025-01-01T10:00:00Z"), LOCAL, FORMAT),
        enforcement_bad(at("2025-01-01T10:00:00+01:00"), LOCAL, FORMAT),
        enforcement_bad(at("2025-01-01 10:00:00"), LOCAL, FORMAT),
        enforcement_bad(at("2025-01-01T10:00"), LOCAL, FORMAT),
        enforcement_bad(at("2025-01-01T10:00:00.5"), LOCAL, FORMAT),
        enforcement_bad(at("2025-02-30T10:00:00"), LOCAL, "day is out of range"),
        enforcement_bad(at("2025-01-01T24:00:00"), LOCAL, "does not match"),
        enforcement_bad({**at("2025-01-01T10:00:00"), "Deadline": "x"}, "Deadline", "unknown key"),
        pytest.param("com.example.nothing", {}, "Type", "unknown declaration type", id="type"),
    ],
)
def test_validation_names_the_key(kind: str, payload: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(DeclarationError, match=text) as info:
        validate(declaration(kind, "bad", payload))
    assert info.value.key == key


def test_valid_declarations_pass() -> None:
    validate(
        declaration(
            ENFORCEMENT_TYPE,
            "e",
            {
                "TargetOSVersion": "18.1",
                "TargetBuildVersion": "22B83a",
                "TargetLocalDateTime": "2025-01-31T23:59:59",
                "DetailsURL": "https://example.com/update",
            },
        )
    )
    every: dict[str, Any] = {}
    for path, spec in SETTINGS_KEYS.items():
        value = {"<boolean>": True, "<integer>": 45, "<array>": [program("x")]}.get(spec.type)
        if spec.rangelist:
            value = spec.rangelist[-1]
        elif spec.type == "<dictionary>":
            value = program("x")
        merge_into(every, nested(path, value))
    validate(settings_decl("every", every))


def test_tampered_token_is_refused() -> None:
    good = settings_decl("a", {"Notifications": True})
    bad = Declaration(good.type, good.identifier, {"Notifications": False}, good.server_token)
    with pytest.raises(DeclarationError) as info:
        validate(bad)
    assert info.value.key == "ServerToken"


# --- ServerToken ------------------------------------------------------------------------


def test_server_token_is_the_hash_of_canonical_json() -> None:
    decl = declaration("t", "id", {"b": 1, "a": [True, None, "é"]})
    canonical = '{"Identifier":"id","Payload":{"a":[true,null,"é"],"b":1},"Type":"t"}'
    assert decl.server_token == hashlib.sha256(canonical.encode()).hexdigest()


def test_server_token_is_stable() -> None:
    one = settings_decl("a", {"Notifications": True, "Deferrals": {"CombinedPeriodInDays": 30}})
    two = settings_decl("a", {"Deferrals": {"CombinedPeriodInDays": 30}, "Notifications": True})
    assert one == two
    assert one.server_token == two.server_token
    assert len(one.server_token) == 64


@pytest.mark.parametrize(
    ("kind", "identifier", "payload"),
    [
        (ENFORCEMENT_TYPE, "a", {"Notifications": True, "Deferrals": {"CombinedPeriodInDays": 30}}),
        (SETTINGS_TYPE, "b", {"Notifications": True, "Deferrals": {"CombinedPeriodInDays": 30}}),
        (SETTINGS_TYPE, "a", {"Notifications": False, "Deferrals": {"CombinedPeriodInDays": 30}}),
        (SETTINGS_TYPE, "a", {"Notifications": True, "Deferrals": {"CombinedPeriodInDays": 31}}),
        (SETTINGS_TYPE, "a", {"Notifications": 1, "Deferrals": {"CombinedPeriodInDays": 30}}),
        (SETTINGS_TYPE, "a", {"Notifications": True, "Deferrals": {"CombinedPeriodInDays": 30.0}}),
        (SETTINGS_TYPE, "a", {"Notifications": True}),
    ],
)
def test_any_change_gives_a_new_token(kind: str, identifier: str, payload: dict[str, Any]) -> None:
    base = settings_decl("a", {"Notifications": True, "Deferrals": {"CombinedPeriodInDays": 30}})
    assert declaration(kind, identifier, payload).server_token != base.server_token


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_token_is_a_function_of_content(payload: dict[str, Any]) -> None:
    reordered = dict(reversed(list(payload.items())))
    assert declaration("t", "i", payload) == declaration("t", "i", reordered)


def test_declaration_keeps_its_own_payload_and_encodes_for_apple() -> None:
    source: dict[str, Any] = {"Deferrals": {"CombinedPeriodInDays": 30}}
    decl = settings_decl("a", source)
    source["Deferrals"]["CombinedPeriodInDays"] = 60
    assert decl.payload == {"Deferrals": {"CombinedPeriodInDays": 30}}
    assert json.loads(msgspec.json.encode(decl)) == {
        "Type": SETTINGS_TYPE,
        "Identifier": "a",
        "Payload": {"Deferrals": {"CombinedPeriodInDays": 30}},
        "ServerToken": decl.server_token,
    }


@pytest.mark.parametrize("payload", [{"a": {1, 2}}, {"a": float("nan")}, {"a": b"x"}])
def test_non_json_payload_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(DeclarationError):
        declaration("t", "i", payload)


@pytest.mark.parametrize(
    ("kind", "identifier", "key"), [("", "i", "Type"), ("t", "", "Identifier")]
)
def test_empty_names_are_refused(kind: str, identifier: str, key: str) -> None:
    with pytest.raises(DeclarationError) as info:
        declaration(kind, identifier, {})
    assert info.value.key == key


# --- enforcement ------------------------------------------------------------------------


def target(ident: str, version: str, when: str, **extra: str) -> Declaration:
    payload = {"TargetOSVersion": version, "TargetLocalDateTime": when, **extra}
    return declaration(ENFORCEMENT_TYPE, ident, payload)


def order(decls: list[Declaration], os_version: str, platform: str = "ios") -> list[str]:
    found = pending_enforcements(decls, os_version=os_version, platform=platform)
    return [e.declaration for e in found]


def test_enforcement_fields() -> None:
    decl = target(
        "e", "17.4", "2024-03-20T18:30:00", TargetBuildVersion="21E219", DetailsURL="https://x"
    )
    assert active_enforcement([decl], os_version="17.3.1", platform="ios") == Enforcement(
        declaration="e",
        target_os_version="17.4",
        target_build_version="21E219",
        target_local_datetime=dt.datetime(2024, 3, 20, 18, 30),
        details_url="https://x",
    )
    bare = active_enforcement(
        [target("f", "17.4", "2024-03-20T18:30:00")], os_version="17.3", platform="ios"
    )
    assert bare is not None
    assert bare.target_build_version is None
    assert bare.details_url is None
    assert bare.target_local_datetime.tzinfo is None


@pytest.mark.parametrize(
    ("os_version", "platform", "expected"),
    [
        # At or below the current version: ignored.
        ("17.5", "ios", ["newer"]),
        ("17.5.0", "ios", ["newer"]),
        ("17.6", "ios", []),
        ("17.4", "ios", ["same", "newer"]),
        ("17.3", "ios", ["older", "same", "newer"]),
        ("17.5", "macos", ["newer"]),
    ],
)
def test_targets_at_or_below_are_ignored(
    os_version: str, platform: str, expected: list[str]
) -> None:
    decls = [
        target("older", "17.4", "2024-01-01T09:00:00"),
        target("same", "17.5", "2024-02-01T09:00:00"),
        target("newer", "17.5.1", "2024-03-01T09:00:00"),
    ]
    assert order(decls, os_version, platform) == expected


def test_earliest_date_is_processed_first_and_the_rest_wait() -> None:
    decls = [
        target("march", "18.3", "2025-03-01T08:00:00"),
        target("january", "18.2", "2025-01-15T08:00:00"),
        target("february", "18.2.1", "2025-02-01T08:00:00"),
    ]
    assert order(decls, "18.1") == ["january", "february", "march"]
    first = active_enforcement(decls, os_version="18.1", platform="ios")
    assert first is not None
    assert first.declaration == "january"


def test_reevaluated_after_an_update() -> None:
    decls = [
        target("b", "18.0", "2024-10-01T08:00:00"),
        target("a", "17.6", "2024-08-01T08:00:00"),
    ]
    steps = []
    for version in ["17.5", "17.6", "17.7", "18.0", "18.1"]:
        found = active_enforcement(decls, os_version=version, platform="ios")
        steps.append(None if found is None else found.declaration)
    assert steps == ["a", "b", "b", None, None]


def test_a_newer_target_with_an_earlier_date_jumps_ahead() -> None:
    # Moving past one target can put a newer-version target with an earlier date first.
    decls = [
        target("minor", "14.5", "2024-06-01T08:00:00"),
        target("major", "15.0", "2024-05-01T08:00:00"),
    ]
    assert order(decls, "14.4", "macos") == ["major", "minor"]
    assert order(decls, "14.5", "macos") == ["major"]


def test_ties_lower_version_then_identifier() -> None:
    when = "2025-01-01T08:00:00"
    decls = [
        target("z", "18.10", when),
        target("y", "18.9", when),
        target("b", "18.2", when),
        target("a", "18.2.0", when),
    ]
    # 18.9 < 18.10 as versions (not as text); 18.2 and 18.2.0 tie: identifier decides.
    assert order(decls, "18.1") == ["a", "b", "y", "z"]


@given(st.permutations(list(range(4))))
def test_enforcement_order_is_independent_of_input_order(perm: list[int]) -> None:
    decls = [
        target("a", "18.2", "2025-01-01T08:00:00"),
        target("b", "18.3", "2025-01-01T08:00:00"),
        target("c", "18.1", "2025-02-01T08:00:00"),
        target("d", "18.0", "2025-03-01T08:00:00"),
    ]
    assert order([decls[i] for i in perm], "17.0") == ["a", "b", "c", "d"]


def test_other_types_are_skipped_and_none_without_targets() -> None:
    decls = [settings_decl("s", {"Notifications": True})]
    assert active_enforcement(decls, os_version="18.0", platform="ios") is None
    assert pending_enforcements([], os_version="18.0", platform="macos") == []


def test_enforcement_refusals() -> None:
    good = [target("a", "18.1", "2025-01-01T08:00:00")]
    with pytest.raises(UnknownPlatform):
        pending_enforcements(good, os_version="18.0", platform="windows")
    with pytest.raises(DeclarationError) as info:
        pending_enforcements(
            [target("a", "eighteen", "2025-01-01T08:00:00")], os_version="18.0", platform="ios"
        )
    assert info.value.key == "TargetOSVersion"
    with pytest.raises(DeclarationError) as info:
        pending_enforcements(
            [declaration(ENFORCEMENT_TYPE, "x", {"TargetOSVersion": "18.1"})],
            os_version="18.0",
            platform="ios",
        )
    assert info.value.key == "TargetLocalDateTime"
