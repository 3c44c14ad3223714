"""The CDS Hooks `patient-consent-consult` hook's wire format, pure: parse a request, render a decision.

HL7 LEAP's Consent Decision Service format; `healthledger/api/cds_hooks.py` is the HTTP shell that serves
it and `healthledger/consent/consult.py` answers it with the consent engine.

What was checked against LEAP (github.com/sdhealthconnect/leap-cds: README.md, schemas/
patient-consent-consult-hook-request.schema.json and -response.schema.json, schemas/service-definitions.json,
lib/consent-decision-card.js, lib/consent-valuesets.js, test/controllers/patient-consent-consult.test.js):
- request: `hook` = "patient-consent-consult"; `hookInstance` (string) and `context` required;
  `context.patientId` required, an array of {system?, value}; `context.actor` an array of {system?, value};
  `context.purposeOfUse` a string or an array of bare v3 PurposeOfUse codes (no system); `context.category`
  and `context.class` arrays of {system, code}; the older `context.scope` string (adr | research |
  patient-privacy | treatment) is still used by LEAP's own request fixture, so it is accepted too.
- response: one card; `summary` and `extension.decision` are CONSENT_PERMIT | CONSENT_DENY | NO_CONSENT;
  `indicator` is info for a permit, critical for a deny and warning for NO_CONSENT (LEAP's choice, which
  differs from "always info"); `source` is {label, url}; `extension.obligations` holds
  {id: {system, code}, parameters: {codes: [...]}} with id v3-ActCode#REDACT for "redact what carries
  these labels"; obligations are empty unless the decision is a permit; NO_CONSENT carries nothing but
  the decision and an empty obligation list.
- a patient no consent store knows gets NO_CONSENT (LEAP resolves no patient, finds no consents).

Where we differ from LEAP, or could not verify:
- LEAP's README example writes `class` entries as {system, value} while its schema says {system, code};
  both spellings are accepted. Only the resource-types system is supported (our engine matches classes
  against resource types); any other class system is refused rather than ignored, since ignoring it
  would answer a broader question than the one asked. `context.content` (LEAP's redact-this-bundle
  extension) is refused: this service does not take PHI in, label or redact it.
- de-identification has no LEAP obligation; we send id v3-ActCode#DEID (ObligationPolicy "deidentify")
  with no parameters. A redaction label without a system is sent as {code} only, although LEAP's
  response schema requires `system`.
- `extension.basedOn` (LEAP: the full URL of the deciding Consent) and the consent ids in
  `extension.reasons` (our addition: rule, provision, detail of each reason) are sent only when the
  renderer is given `consent_url`; by default no identifier the caller did not send leaves the service.
- limits (array lengths, string lengths) and the refusal of empty `patientId` arrays are ours.
- LEAP answers for whatever `context.actor` asserts; here a client asks only as itself unless it is
  registered to ask for others, and an actor with no relationship to the patient is told nothing but a
  permit (healthledger/consent/consult.py; docs/consent-semantics.md, "CDS Hooks: who may ask").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from fhir_adapters.consent import Coding
from healthledger.consent.engine import Decision, Obligation, Outcome, Reason
from healthledger.errors import BadRequest

__all__ = [
    "HOOK",
    "CardSource",
    "ConsultDecision",
    "ConsultRequest",
    "Identifier",
    "consult_response",
    "parse_consult_request",
]

HOOK = "patient-consent-consult"

# Card summaries and extension.decision values (LEAP schemas/patient-consent-consult-hook-response.schema.json).
CONSENT_PERMIT, CONSENT_DENY, NO_CONSENT = "CONSENT_PERMIT", "CONSENT_DENY", "NO_CONSENT"
_SUMMARY = {Decision.PERMIT: CONSENT_PERMIT, Decision.DENY: CONSENT_DENY, Decision.NOT_APPLICABLE: NO_CONSENT}
# CDS Hooks card indicator (info | warning | critical), as LEAP sets it per decision.
_INDICATOR = {Decision.PERMIT: "info", Decision.DENY: "critical", Decision.NOT_APPLICABLE: "warning"}

RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_SCOPES = frozenset({"adr", "research", "patient-privacy", "treatment"})
# Obligation ids: v3 ObligationPolicy codes, which live in the v3-ActCode code system.
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_OBLIGATION_IDS = {"redact-security-labels": "REDACT", "de-identify": "DEID"}

# Bounds on what one consult may ask (ours, not LEAP's): a consult is a few identifiers and codes.
MAX_ITEMS = 64
MAX_STRING = 1024

_PURPOSE_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")

Identifier = tuple[str, str]  # (system or "", value)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ConsultRequest:
    """One `patient-consent-consult` call, validated. Every field is as the caller sent it, deduplicated."""

    hook_instance: str
    patient_identifiers: tuple[Identifier, ...]  # at least one; any of them may name the patient
    actor_identifiers: tuple[Identifier, ...] = ()  # any of them may name the actor
    purposes: tuple[str, ...] = ()  # v3 PurposeOfUse codes, e.g. TREAT, HRESCH
    scope: str = ""  # legacy LEAP `scope`: adr | research | patient-privacy | treatment, or ""
    classes: tuple[str, ...] = ()  # FHIR resource types, e.g. MedicationStatement
    categories: tuple[Coding, ...] = ()  # consent categories, e.g. (CONSENT_SCOPE_SYSTEM, "patient-privacy")


@dataclass(frozen=True, slots=True)
class ConsultDecision:
    """The answer to one consult: the engine's decision, its reasons, and (for a permit) obligations."""

    decision: Decision
    reasons: tuple[Reason, ...] = ()
    obligations: tuple[Obligation, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision", Decision(self.decision))  # "permit" etc. are accepted too
        if self.obligations and self.decision is not Decision.PERMIT:
            raise ValueError("obligations only accompany a permit")
        for obligation in self.obligations:
            if obligation.kind not in _OBLIGATION_IDS:
                raise ValueError(f"no CDS Hooks rendering for obligation kind {obligation.kind!r}")

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> ConsultDecision:
        return cls(outcome.decision, outcome.reasons, outcome.obligations)


@dataclass(frozen=True, slots=True)
class CardSource:
    """CDS Hooks Card.source: who answered (LEAP fills it from ORG_NAME / ORG_URL)."""

    label: str = "HealthLedger consent decision service"
    url: str = ""


# --- parsing (pure) ---------------------------------------------------------------------------------------------


def parse_consult_request(body: object) -> ConsultRequest:
    """Validate a decoded `patient-consent-consult` request body; BadRequest names the first bad field."""
    root = _object(body, "request body")
    hook = root.get("hook")
    if hook is None:
        _bad("hook", f"is required and must be {HOOK!r}")
    if hook != HOOK:
        _bad("hook", f"must be {HOOK!r}: this service answers no other hook")
    hook_instance = _string(root.get("hookInstance"), "hookInstance")
    context = _object(root.get("context"), "context")
    if "content" in context:
        _bad("context.content", "is not supported: this service decides; it does not label or redact content")

    if "patientId" not in context:
        _bad("context.patientId", "is required: an array of {system, value} patient identifiers")
    patients = _identifiers(context["patientId"], "context.patientId")
    if not patients:
        _bad("context.patientId", "must name at least one patient identifier")
    actors = _identifiers(context.get("actor", []), "context.actor")
    purposes = _purposes(context.get("purposeOfUse", []))
    scope = ""
    if "scope" in context:
        scope = _string(context["scope"], "context.scope")
        if scope not in CONSENT_SCOPES:
            _bad("context.scope", f"must be one of {', '.join(sorted(CONSENT_SCOPES))}")
    categories = tuple(
        _category(item, f"context.category[{i}]") for i, item in enumerate(_array(context.get("category", []),
                                                                                  "context.category"))
    )
    classes = tuple(
        _resource_class(item, f"context.class[{i}]") for i, item in enumerate(_array(context.get("class", []),
                                                                                     "context.class"))
    )
    return ConsultRequest(
        hook_instance=hook_instance,
        patient_identifiers=_unique(patients),
        actor_identifiers=_unique(actors),
        purposes=_unique(purposes),
        scope=scope,
        classes=_unique(classes),
        categories=_unique(categories),
    )


def _bad(path: str, problem: str) -> NoReturn:
    raise BadRequest(f"{path} {problem}", expression=path)


def _object(value: object, path: str) -> Mapping[Any, Any]:
    if value is None:
        _bad(path, "is required and must be a JSON object")
    if not isinstance(value, Mapping):
        _bad(path, "must be a JSON object")
    return value


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _bad(path, "must be a JSON array")
    if len(value) > MAX_ITEMS:
        _bad(path, f"has more than {MAX_ITEMS} entries")
    return value


def _string(value: object, path: str) -> str:
    if value is None:
        _bad(path, "is required and must be a non-empty string")
    if not isinstance(value, str) or not value.strip():
        _bad(path, "must be a non-empty string")
    if len(value) > MAX_STRING:
        _bad(path, f"is longer than {MAX_STRING} characters")
    return value


def _optional_system(item: Mapping[Any, Any], path: str) -> str:
    system = item.get("system")
    if system is None or system == "":
        return ""
    return _string(system, f"{path}.system")


def _identifiers(value: object, path: str) -> list[Identifier]:
    out: list[Identifier] = []
    for i, raw in enumerate(_array(value, path)):
        item_path = f"{path}[{i}]"
        item = _object(raw, item_path)
        system = _optional_system(item, item_path)
        out.append((system, _string(item.get("value"), f"{item_path}.value")))
    return out


def _purposes(value: object) -> list[str]:
    path = "context.purposeOfUse"
    items: list[Any] = [value] if isinstance(value, str) else _array(value, path)
    out: list[str] = []
    for i, raw in enumerate(items):
        item_path = path if isinstance(value, str) else f"{path}[{i}]"
        code = _string(raw, item_path)
        if not _PURPOSE_CODE.fullmatch(code):
            _bad(item_path, "must be a bare v3 PurposeOfUse code such as TREAT (no system)")
        out.append(code)
    return out


def _coding(raw: object, path: str, *, code_keys: tuple[str, ...] = ("code",)) -> Coding:
    item = _object(raw, path)
    system = _string(item.get("system"), f"{path}.system")
    key = next((k for k in code_keys if k in item), code_keys[0])
    return system, _string(item.get(key), f"{path}.{key}")


def _category(raw: object, path: str) -> Coding:
    system, code = _coding(raw, path)
    if system == CONSENT_SCOPE_SYSTEM and code not in CONSENT_SCOPES:
        _bad(f"{path}.code", f"is not a consent scope: use one of {', '.join(sorted(CONSENT_SCOPES))}")
    return system, code


def _resource_class(raw: object, path: str) -> str:
    # LEAP's schema says {system, code}; its README example says {system, value}: accept both.
    system, code = _coding(raw, path, code_keys=("code", "value"))
    if system != RESOURCE_TYPES_SYSTEM:
        _bad(f"{path}.system", f"must be {RESOURCE_TYPES_SYSTEM}: only resource-type classes are supported")
    if not _RESOURCE_TYPE.fullmatch(code):
        _bad(path, "must name a FHIR resource type, e.g. MedicationStatement")
    return code


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


# --- rendering (pure) -------------------------------------------------------------------------------------------


def consult_response(
    decision: ConsultDecision,
    *,
    source: CardSource | None = None,
    consent_url: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """The CDS Hooks response for `decision`: one card in LEAP's shape.

    NO_CONSENT carries nothing but the decision, so a patient nobody knows and a known patient without an
    applicable consent get the same bytes. Consent ids are sent only through `consent_url`.
    """
    summary = _SUMMARY[decision.decision]
    extension: dict[str, Any] = {"decision": summary, "obligations": []}
    if decision.decision is Decision.PERMIT:
        extension["obligations"] = [_obligation(o) for o in decision.obligations]
    if decision.decision is not Decision.NOT_APPLICABLE:
        if consent_url is not None:
            consent_ids = [r.consent_id for r in decision.reasons if r.consent_id]
            if consent_ids:
                extension["basedOn"] = consent_url(consent_ids[0])
        extension["reasons"] = [_reason(r, consent_url) for r in decision.reasons]
    source = source or CardSource()
    card_source = {"label": source.label, **({"url": source.url} if source.url else {})}
    card = {
        "summary": summary,
        "detail": _detail(decision),
        "indicator": _INDICATOR[decision.decision],
        "source": card_source,
        "extension": extension,
    }
    return {"cards": [card]}


def _detail(decision: ConsultDecision) -> str:
    if decision.decision is Decision.NOT_APPLICABLE:
        return "No applicable patient consent was found."
    rules = {reason.rule for reason in decision.reasons}
    if decision.decision is Decision.DENY:
        if "consent" in rules:
            return "A patient consent denies this access."
        return "This access is denied by policy."
    if "break-glass" in rules:
        return "Permitted as an emergency (break-the-glass) access; the access is flagged for review."
    if "consent" in rules:
        return "A patient consent permits this access."
    return "No patient consent applies; this access is permitted by policy."


def _reason(reason: Reason, consent_url: Callable[[str], str] | None) -> dict[str, str]:
    out = {"rule": reason.rule}
    if reason.consent_id and consent_url is not None:
        out["consent"] = consent_url(reason.consent_id)
    if reason.provision:
        out["provision"] = reason.provision
    if reason.detail:
        out["detail"] = reason.detail
    return out


def _obligation(obligation: Obligation) -> dict[str, Any]:
    rendered: dict[str, Any] = {"id": {"system": ACT_CODE_SYSTEM, "code": _OBLIGATION_IDS[obligation.kind]}}
    if obligation.kind == "redact-security-labels":
        rendered["parameters"] = {"codes": [_code(label) for label in sorted(obligation.labels)]}
    return rendered


def _code(coding: Coding) -> dict[str, str]:
    system, code = coding
    return {"system": system, "code": code} if system else {"code": code}
