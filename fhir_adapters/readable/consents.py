"""A FHIR R4 Consent in plain words, both ways: a patient's few choices (who, what for, which kinds of data,
until when) as a Consent resource, and any Consent as a sentence with its on-chain state. Pure.

The vocabulary (purposes and kinds of data) is the one the share form offers; a Consent written elsewhere
that uses other codes is still described, with the codes it uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_adapters.extensions import extension_url
from fhir_adapters.readable.text import concept_text, human_date, parse_date

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
LOINC = "http://loinc.org"
PRIVACY_CONSENT = "59284-0"  # LOINC: Patient Consent
CHAIN_STATE_URL = extension_url("consent-chain-state")

# HL7 v3 PurposeOfUse -> what it means to a patient. The first ones are offered by the share form.
PURPOSES: Mapping[str, str] = {
    "TREAT": "your care and treatment",
    "HRESCH": "health research",
    "HPAYMT": "paying for your care",
    "PUBHLTH": "public health",
    "ETREAT": "emergency care",
    "HOPERAT": "running the health service",
    "CLINTRCH": "clinical trial research",
    "PATRQT": "your own request",
}
OFFERED_PURPOSES = ("TREAT", "HRESCH", "HPAYMT", "PUBHLTH")

# Kinds of data (share form key -> words, FHIR resource types). The patient's demographics (Patient) go
# with any kind: the recipient needs to know whose data it is.
CATEGORIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("conditions", "conditions and diagnoses", ("Condition",)),
    ("medications", "medicines", ("MedicationRequest", "MedicationStatement")),
    ("allergies", "allergies", ("AllergyIntolerance",)),
    ("immunizations", "vaccinations", ("Immunization",)),
    ("encounters", "visits", ("Encounter",)),
    ("observations", "test results and measurements", ("Observation", "DiagnosticReport")),
    ("procedures", "procedures", ("Procedure",)),
)
EVERYTHING = "everything"
_TYPE_WORDS = {t: words for _, words, types in CATEGORIES for t in types} | {
    "Patient": "name and date of birth", "Consent": "consents", "AuditEvent": "access history",
}

# Chain state (the consent-chain-state extension) -> words for the page.
CHAIN_WORDS: Mapping[str, str] = {
    "unsigned": "not signed yet",
    "pending": "waiting for the ledger",
    "active": "active on the ledger",
    "revoking": "being revoked on the ledger",
    "revoked": "revoked on the ledger",
    "expired": "expired",
}


def category_types(keys: Sequence[str]) -> tuple[str, ...]:
    """The resource types of the chosen kinds of data (empty for everything)."""
    if EVERYTHING in keys:
        return ()
    chosen = [t for key, _, types in CATEGORIES if key in keys for t in types]
    return ("Patient", *chosen) if chosen else ()


def draft_consent(
    *,
    patient_id: str,
    recipient: str,
    recipient_display: str,
    purpose: str,
    categories: Sequence[str],
    start: date,
    end: date | None,
    today: date,
) -> dict[str, Any]:
    """The Consent a patient's choices make: a permit for `recipient` (a reference), for one purpose, over the
    chosen kinds of data, from `start` to `end` (whole days; open-ended without `end`). Status `proposed`: the
    patient's key makes it active by signing its grant (`$sign`)."""
    period: dict[str, str] = {"start": start.isoformat()}
    if end is not None:
        period["end"] = end.isoformat()
    provision: dict[str, Any] = {
        "type": "permit",
        "period": period,
        "actor": [{
            "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
            "reference": {"reference": recipient, "display": recipient_display},
        }],
        "purpose": [{"system": ACT_REASON, "code": purpose, "display": PURPOSES.get(purpose, purpose)}],
    }
    types = category_types(categories)
    if types:
        provision["class"] = [{"system": RESOURCE_TYPES, "code": t} for t in types]
    return {
        "resourceType": "Consent",
        "status": "proposed",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": LOINC, "code": PRIVACY_CONSENT}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": today.isoformat(),
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
    }


@dataclass(frozen=True)
class Grant:
    grantee: str  # a reference, or "*"
    grantee_name: str
    state: str  # pending | active | revoking | revoked | expired
    block: int | None
    transaction: str


@dataclass(frozen=True)
class ConsentView:
    id: str
    permits: bool  # a permit (sharing) rather than a refusal
    who: tuple[tuple[str, str], ...]  # (reference, name); empty = anyone
    purposes: tuple[str, ...]  # words
    kinds: tuple[str, ...]  # words; empty = all of it
    start: date | None
    end: date | None
    status: str  # as the API shows it: proposed | active | inactive | rejected | ...
    chain_state: str  # unsigned | pending | active | revoking | revoked | expired
    grants: tuple[Grant, ...]
    recorded: str  # Consent.dateTime in words
    recorded_by_patient: bool
    exceptions: tuple[str, ...] = ()  # the nested provisions, each in words ("not ...", "only ...")

    @property
    def who_text(self) -> str:
        return _and([name for _, name in self.who]) if self.who else "Anyone"

    @property
    def kinds_text(self) -> str:
        return "your " + _and(list(self.kinds)) if self.kinds else "all your data"

    @property
    def purposes_text(self) -> str:
        return _and(list(self.purposes), "or") if self.purposes else "any purpose"

    @property
    def period_text(self) -> str:
        if self.start and self.end:
            return f"from {human_date(self.start)} until {human_date(self.end)}"
        if self.end:
            return f"until {human_date(self.end)}"
        if self.start:
            return f"from {human_date(self.start)}, with no end date"
        return "with no end date"

    @property
    def sentence(self) -> str:
        verb = "may see" if self.permits else "may not see"
        return f"{self.who_text} {verb} {self.kinds_text} for {self.purposes_text}, {self.period_text}."

    @property
    def is_request(self) -> bool:
        """Waiting for the patient's signature: a proposed permit with no grant signed yet."""
        return self.permits and self.status == "proposed" and self.chain_state == "unsigned"

    def answerable_on(self, today: date) -> bool:
        """A request the patient can still answer: its period has not ended (a grant for a period that is over
        could not be signed; docs/consent-semantics.md, "Requests for access")."""
        return self.is_request and (self.end is None or today <= self.end)

    @property
    def is_live(self) -> bool:
        return self.status == "active"

    @property
    def chain_words(self) -> str:
        return CHAIN_WORDS.get(self.chain_state, self.chain_state)

    @property
    def last_block(self) -> int | None:
        blocks = [g.block for g in self.grants if g.block is not None]
        return max(blocks) if blocks else None

    @property
    def last_transaction(self) -> str:
        with_tx = [g for g in self.grants if g.transaction and g.block is not None]
        return max(with_tx, key=lambda g: g.block or 0).transaction if with_tx else ""


def _and(items: list[str], word: str = "and") -> str:
    if len(items) <= 1:
        return items[0] if items else ""
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def describe_consent(consent: Mapping[str, Any], names: Mapping[str, str]) -> ConsentView:
    """A Consent as the API shows it (with the consent-chain-state extension) in plain words. `names`: display
    names of the references it may name (organisations, practitioners, studies)."""
    provision = consent.get("provision") if isinstance(consent.get("provision"), Mapping) else {}
    assert isinstance(provision, Mapping)
    ptype = provision.get("type")
    if ptype is None:
        codes = {c.get("code") for c in (consent.get("policyRule") or {}).get("coding") or [] if isinstance(c, Mapping)}
        ptype = "deny" if codes & {"OPTOUT", "OPTOUTE"} else "permit"
    who = []
    for actor in provision.get("actor") or []:
        ref = ((actor or {}).get("reference") or {}) if isinstance(actor, Mapping) else {}
        reference = str(ref.get("reference") or "")
        if reference:
            who.append((reference, names.get(reference) or str(ref.get("display") or "") or _fallback_name(reference)))
    purposes = tuple(
        PURPOSES.get(str(p.get("code")), concept_text({"coding": [p]}))
        for p in provision.get("purpose") or [] if isinstance(p, Mapping)
    )
    types = [str(c.get("code")) for c in provision.get("class") or [] if isinstance(c, Mapping)]
    kinds = tuple(dict.fromkeys(_TYPE_WORDS.get(t, t) for t in types if t != "Patient"))
    if types and not kinds:
        kinds = (_TYPE_WORDS["Patient"],)
    period = provision.get("period") if isinstance(provision.get("period"), Mapping) else {}
    assert isinstance(period, Mapping)
    state, grants = chain_state(consent, names)
    patient_ref = str((consent.get("patient") or {}).get("reference") or "")
    performers = {str((p or {}).get("reference")) for p in consent.get("performer") or [] if isinstance(p, Mapping)}
    return ConsentView(
        id=str(consent.get("id") or ""),
        permits=ptype == "permit",
        who=tuple(who),
        purposes=purposes,
        kinds=kinds,
        start=parse_date(period.get("start")),
        end=parse_date(period.get("end")),
        status=str(consent.get("status") or ""),
        chain_state=state,
        grants=grants,
        recorded=human_date(consent.get("dateTime")) if consent.get("dateTime") else "",
        recorded_by_patient=bool(patient_ref) and patient_ref in performers,
        exceptions=tuple(_exception_words(p, ptype == "permit", names) for p in provision.get("provision") or []
                         if isinstance(p, Mapping)),
    )


def _exception_words(p: Mapping[str, Any], root_permits: bool, names: Mapping[str, str]) -> str:
    """A nested provision in words: what it takes out of (or adds to) the root's, and its own exceptions.

    A deny under a permit whose own nested permits say what of it is still shared (the shape of a study consent:
    a type narrowed to some codes and a period) reads "of your X, only ..."."""
    denies = p.get("type") == "deny" if p.get("type") in ("deny", "permit") else root_permits
    what = _what_words(p, names)
    inner = [c for c in p.get("provision") or [] if isinstance(c, Mapping)]
    if denies and inner and all(c.get("type") == "permit" for c in inner):
        return f"of {what}, only " + _and([_what_words(c, names, bare=True) for c in inner], "or")
    text = ("not " if denies else "also ") + what
    if inner:
        text += ", except " + _and([_what_words(c, names) for c in inner], "or")
    return text


def _what_words(p: Mapping[str, Any], names: Mapping[str, str], *, bare: bool = False) -> str:
    """The data a provision is about, in words: its types, codes, labels, the period the data is from, and who
    it is for when it names someone."""
    types = [str(c.get("code")) for c in p.get("class") or [] if isinstance(c, Mapping)]
    kinds = list(dict.fromkeys(_TYPE_WORDS.get(t, t) for t in types))
    parts = [] if bare else [("your " + _and(kinds)) if kinds else "your data"]
    codes = [concept_text(c) for c in p.get("code") or [] if isinstance(c, Mapping)]
    if codes:
        parts.append(("those " if bare else "") + "coded " + _and([c for c in codes if c], "or"))
    labels = [concept_text({"coding": [c]}) for c in p.get("securityLabel") or [] if isinstance(c, Mapping)]
    if labels:
        parts.append(("those " if bare else "") + "labelled " + _and([x for x in labels if x], "or"))
    period = p.get("dataPeriod") if isinstance(p.get("dataPeriod"), Mapping) else None
    if period:
        start, end = parse_date(period.get("start")), parse_date(period.get("end"))
        span = (f"from {human_date(start.isoformat())} to {human_date(end.isoformat())}" if start and end
                else f"from {human_date(start.isoformat())} on" if start
                else f"up to {human_date(end.isoformat())}" if end else "")
        if span:
            parts.append(("those " if bare and not parts else "") + "recorded " + span)
    actors = [ref for a in p.get("actor") or [] if isinstance(a, Mapping)
              and (ref := str(((a.get("reference") or {}) if isinstance(a.get("reference"), Mapping) else {})
                              .get("reference") or ""))]
    if actors:
        parts.append(("those " if bare and not parts else "") + "for " + _and(
            [names.get(r) or _fallback_name(r) for r in actors], "or"))
    if bare and not parts:
        return "some of them"
    return " ".join(parts)


def chain_state(consent: Mapping[str, Any], names: Mapping[str, str]) -> tuple[str, tuple[Grant, ...]]:
    """The consent-chain-state extension: overall state and each grant's (grantee, state, block, tx)."""
    for ext in consent.get("extension") or []:
        if not isinstance(ext, Mapping) or ext.get("url") != CHAIN_STATE_URL:
            continue
        state = "unsigned"
        grants = []
        for part in ext.get("extension") or []:
            if not isinstance(part, Mapping):
                continue
            if part.get("url") == "state":
                state = str(part.get("valueCode") or state)
            elif part.get("url") == "grant":
                fields = {str(p.get("url")): p for p in part.get("extension") or [] if isinstance(p, Mapping)}
                grantee = str(fields.get("grantee", {}).get("valueString") or "")
                found = fields.get("block", {})
                # valueInteger (R4), a string of digits above 2^31-1; valueInteger64 from older servers.
                block = next((found[k] for k in ("valueInteger", "valueString", "valueInteger64") if k in found), None)
                grants.append(Grant(
                    grantee=grantee,
                    grantee_name="anyone" if grantee == "*" else names.get(grantee) or _fallback_name(grantee),
                    state=str(fields.get("state", {}).get("valueCode") or ""),
                    block=int(block) if block is not None else None,
                    transaction=str(fields.get("transaction", {}).get("valueString") or ""),
                ))
        if state == "active" and any(g.state == "revoking" for g in grants):
            state = "revoking"  # revoked off-chain (access stopped), the revocation not mined yet
        return state, tuple(grants)
    return "unsigned", ()


def _fallback_name(reference: str) -> str:
    kind = reference.partition("/")[0]
    return {"Organization": "an organisation", "Practitioner": "a clinician", "PractitionerRole": "a clinician",
            "ResearchStudy": "a research study"}.get(kind, "someone")


def type_words(resource_type: str) -> str:
    """A resource type as a kind of data, in words ("test results and measurements")."""
    return _TYPE_WORDS.get(resource_type, resource_type)
