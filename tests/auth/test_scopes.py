"""SMART scopes: parsing (v1 and v2), granting by intersection, checking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthledger.auth.scopes import (
    InvalidScope,
    ResourceScope,
    format_scopes,
    grant_scopes,
    parse_scope,
    parse_scopes,
    scope_allows,
)


@pytest.mark.parametrize("text, expected", [
    ("system/Observation.rs", ResourceScope("system", "Observation", "rs")),
    ("system/*.cruds", ResourceScope("system", "*", "cruds")),
    ("patient/*.read", ResourceScope("patient", "*", "rs")),
    ("user/Patient.write", ResourceScope("user", "Patient", "cud")),
    ("user/Patient.*", ResourceScope("user", "Patient", "cruds")),
    ("launch/patient", "launch/patient"),
    ("patient/Observation.rs?category=laboratory", None),  # granular: recognised, not granted
])
def test_parse(text: str, expected: object) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize("text", ["system/Observation.sr", "system/Observation.rr", "system/observation.rs",
                                  "admin/*.rs", "system/*.x", "system/*", "openid2", "system/Observation."])
def test_malformed_scopes_raise(text: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(text)


def test_grant_is_the_intersection() -> None:
    registered = "system/Observation.cruds system/Patient.rs launch/patient"
    got = grant_scopes("system/*.rs patient/*.rs launch/patient", registered)
    assert format_scopes(got) == "launch/patient system/Observation.rs system/Patient.rs"
    assert format_scopes(grant_scopes("system/Observation.c", registered)) == "system/Observation.c"
    with pytest.raises(InvalidScope):
        grant_scopes("system/Condition.rs", registered)
    with pytest.raises(InvalidScope):
        grant_scopes("user/*.rs", registered)  # context never widens


def test_scope_allows() -> None:
    scopes = parse_scopes("system/Observation.rs system/*.c")
    assert scope_allows(scopes, "system", "Observation", "read")
    assert scope_allows(scopes, "system", "Observation", "search")
    assert scope_allows(scopes, "system", "Patient", "create")
    assert not scope_allows(scopes, "system", "Patient", "read")
    assert not scope_allows(scopes, "system", "Observation", "delete")
    assert not scope_allows(scopes, "patient", "Observation", "read")
    assert not scope_allows(scopes, "system", "Observation", "frobnicate")


perm_st = st.sets(st.sampled_from("cruds"), min_size=1).map(lambda s: "".join(p for p in "cruds" if p in s))
scope_st = st.builds(ResourceScope, st.sampled_from(["patient", "user", "system"]),
                     st.sampled_from(["*", "Observation", "Patient", "Condition"]), perm_st)


@given(requested=st.lists(scope_st, min_size=1, max_size=4), registered=st.lists(scope_st, min_size=1, max_size=4),
       ctx=st.sampled_from(["patient", "user", "system"]), rtype=st.sampled_from(["Observation", "Patient", "Encounter"]),
       interaction=st.sampled_from(["create", "read", "update", "delete", "search"]))
def test_granted_never_exceeds_requested_or_registered(requested, registered, ctx, rtype, interaction) -> None:
    try:
        granted = grant_scopes(format_scopes(requested), format_scopes(registered))
    except InvalidScope:
        granted = []
    allowed = scope_allows(granted, ctx, rtype, interaction)
    assert not allowed or scope_allows(requested, ctx, rtype, interaction)
    assert not allowed or scope_allows(registered, ctx, rtype, interaction)
    # And nothing both sides allow is lost.
    if scope_allows(requested, ctx, rtype, interaction) and scope_allows(registered, ctx, rtype, interaction):
        assert allowed


@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_invalid_scope(text: str) -> None:
    try:
        parse_scopes(text)
    except InvalidScope:
        pass
