"""FHIR R4 Consent -> compiled rules the decision engine evaluates (http://hl7.org/fhir/R4/consent.html).

Pure: a Consent resource (a JSON dict) in, frozen dataclasses out. Where R4 is loose, we decide:
- The root provision's `type` is the consent's base rule. When absent it follows `policyRule`
  (OPTIN-like codes -> permit, OPTOUT-like -> deny) and otherwise defaults to permit; a permit still
  needs its on-chain grant to be live before it can authorise anything.
- Every criterion a provision states must hold for it to apply (actor, action, purpose, class, code,
  securityLabel, period, dataPeriod, data); criteria it omits do not constrain it.
- Nested provisions are exceptions to their parent; among siblings that apply, deny wins.
- Codings match on system and code; a rule coding without a system matches any system's code.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_adapters.errors import InvalidResource

PERMIT = "permit"
DENY = "deny"

# http://terminology.hl7.org/CodeSystem/v3-ActCode consent policy codes (R4 Consent.policyRule examples).
_OPTIN_CODES = frozenset({"OPTIN", "OPTINR"})
_OPTOUT_CODES = frozenset({"OPTOUT", "OPTOUTE"})


@dataclass(frozen=True, slots=True)
class Period:
    """Closed-open instant range [start, end); None = unbounded on that side."""

    start: datetime | None
    end: datetime | None

    def contains(self, t: datetime) -> bool:
        return (self.start is None or self.start <= t) and (self.end is None or t < self.end)

    def covers(self, low: datetime, high: datetime) -> bool:
        """The whole range [low, high) lies inside this period."""
        return (self.start is None or self.start <= low) and (self.end is None or high <= self.end)


Coding = tuple[str, str]  # (system or "", code)


@dataclass(frozen=True, slots=True)
class Provision:
    type: str  # permit | deny
    path: str  # e.g. "Consent.provision.provision[1]", for reasons shown to people
    period: Period | None = None
    actor_refs: frozenset[str] = frozenset()  # "Practitioner/1", "Organization/2", ...
    actions: frozenset[str] = frozenset()  # consentaction codes: collect access use disclose correct
    security_labels: frozenset[Coding] = frozenset()
    purposes: frozenset[str] = frozenset()  # v3 PurposeOfUse codes
    classes: frozenset[str] = frozenset()  # resource types
    codes: frozenset[Coding] = frozenset()
    data_period: Period | None = None
    data_refs: frozenset[str] = frozenset()
    children: tuple[Provision, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentRules:
    consent_id: str
    patient_id: str
    status: str
    scopes: frozenset[str]
    root: Provision


def consent_rules(consent: Mapping[str, Any]) -> ConsentRules:
    """Compile a Consent resource. Raises InvalidResource naming the element when it cannot be used."""
    if consent.get("resourceType") != "Consent":
        raise InvalidResource("not a Consent resource", expression="Consent.resourceType")
    patient_ref = (consent.get("patient") or {}).get("reference", "")
    if not patient_ref.startswith("Patient/") or len(patient_ref) <= len("Patient/"):
        raise InvalidResource("Consent.patient must reference a Patient as Patient/{id}", expression="Consent.patient")
    status = consent.get("status")
    if not isinstance(status, str):
        raise InvalidResource("Consent.status is required", expression="Consent.status")
    scopes = frozenset(code for _, code in _codings(consent.get("scope"), "Consent.scope"))
    base = _policy_type(consent.get("policyRule"))
    root = _provision(consent.get("provision") or {}, "Consent.provision", default_type=base)
    return ConsentRules(
        consent_id=str(consent.get("id", "")),
        patient_id=patient_ref.removeprefix("Patient/"),
        status=status,
        scopes=scopes,
        root=root,
    )


def _policy_type(policy_rule: Any) -> str:
    codes = {code for _, code in _codings(policy_rule, "Consent.policyRule")}
    if codes & _OPTOUT_CODES:
        return DENY
    return PERMIT  # OPTIN codes and the unspecified case alike (see module docstring)


def _provision(p: Mapping[str, Any], path: str, *, default_type: str | None) -> Provision:
    if not isinstance(p, Mapping):
        raise InvalidResource("provision must be an object", expression=path)
    ptype = p.get("type", default_type)
    if ptype not in (PERMIT, DENY):
        raise InvalidResource("nested provisions need type permit or deny", expression=f"{path}.type")
    actors = p.get("actor") or []
    actor_refs = frozenset(
        ref for a in actors if (ref := ((a or {}).get("reference") or {}).get("reference"))
    )
    if len(actor_refs) != len(actors):
        raise InvalidResource("every provision.actor needs a reference", expression=f"{path}.actor")
    children = tuple(
        _provision(child, f"{path}.provision[{i}]", default_type=None) for i, child in enumerate(p.get("provision") or [])
    )
    return Provision(
        type=ptype,
        path=path,
        period=_period(p.get("period"), f"{path}.period"),
        actor_refs=actor_refs,
        actions=frozenset(code for cc in p.get("action") or [] for _, code in _codings(cc, f"{path}.action")),
        security_labels=frozenset(_coding_list(p.get("securityLabel"), f"{path}.securityLabel")),
        purposes=frozenset(code for _, code in _coding_list(p.get("purpose"), f"{path}.purpose")),
        classes=frozenset(code for _, code in _coding_list(p.get("class"), f"{path}.class")),
        codes=frozenset(c for cc in p.get("code") or [] for c in _codings(cc, f"{path}.code")),
        data_period=_period(p.get("dataPeriod"), f"{path}.dataPeriod"),
        data_refs=frozenset(
            ref for d in p.get("data") or [] if (ref := ((d or {}).get("reference") or {}).get("reference"))
        ),
        children=children,
    )


def _coding_list(codings: Any, path: str) -> Iterable[Coding]:
    for c in codings or []:
        if not isinstance(c, Mapping) or not isinstance(c.get("code"), str):
            raise InvalidResource("coding needs a code", expression=path)
        yield (c.get("system") or "", c["code"])


def _codings(concept: Any, path: str) -> Iterable[Coding]:
    if concept is None:
        return ()
    if not isinstance(concept, Mapping):
        raise InvalidResource("expected a CodeableConcept", expression=path)
    return tuple(_coding_list(concept.get("coding"), f"{path}.coding"))


def _period(value: Any, path: str) -> Period | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidResource("expected a Period", expression=path)
    start = instant_range(value["start"], f"{path}.start")[0] if value.get("start") else None
    end = instant_range(value["end"], f"{path}.end")[1] if value.get("end") else None
    return Period(start, end)


def instant_range(value: str, path: str = "dateTime") -> tuple[datetime, datetime]:
    """The [low, high) instants a FHIR date/dateTime/instant denotes (partial dates cover their span).

    Times without a zone are taken as UTC (FHIR leaves them to the server's zone; ours is UTC).
    """
    try:
        if len(value) == 4:
            y = int(value)
            return _utc(y, 1, 1), _utc(y + 1, 1, 1)
        if len(value) == 7:
            y, m = int(value[:4]), int(value[5:7])
            return _utc(y, m, 1), _utc(y, m, calendar.monthrange(y, m)[1]) + timedelta(days=1)
        if len(value) == 10:
            if value[4] != "-" or value[7] != "-" or not (value[:4] + value[5:7] + value[8:]).isdigit():
                raise ValueError(value)
            d = _utc(int(value[:4]), int(value[5:7]), int(value[8:]))  # strptime costs 10x, on every decision
            return d, d + timedelta(days=1)
        t = datetime.fromisoformat(value)  # Python 3.11 reads FHIR's "Z"
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t, t + (timedelta(microseconds=1) if t.microsecond else timedelta(seconds=1))
    except ValueError:
        raise InvalidResource("not a valid FHIR date or dateTime", expression=path) from None


def _utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)
