"""A stored FHIR R4 `ResearchStudy` -> the terms every research module reads (studies, enrolment,
feasibility, export): one parser, so they cannot disagree about what a study asks for.

Where R4 has no element for what a study needs, it is an extension under our one base URL, published as a
StructureDefinition (docs/research.md lists them):

- `study-eligibility-criteria` (valueString): the eligibility criteria as a JSON document in the
  zk criteria language (zk/criteria.py); the cohort `Group.characteristic` repeats them in words.
- `study-data-category` (complex, 1..*): one requested kind of data; sub-extension `type` (valueCode, a
  FHIR resource type) and optional `code` (valueCoding, 0..*) narrowing it to a code set.
- `study-data-period` (valuePeriod): the dates of the data wanted (a resource's own clinical date).
- `study-max-participants` (valuePositiveInt).
- `study-owner` (complex): `principal` (valueString, the creating researcher's principal id) and
  `organization` (valueReference to their Organization): who may publish, export and ask feasibility.
- `study-ethics-approval` (valueIdentifier): the approving board (system) and approval number (value).
- `study-purpose-of-use` (valueCoding): always v3-ActReason HRESCH; set by the server.
- `study-registration` (complex, set by `$publish`): `studyId` (valueString, the StudyRegistry id, decimal),
  `criteriaHash` (valueString), `verifyingKey` (valueString, SHA-256 hex of the verification key),
  `referenceDate` (valueDate, the date age criteria are evaluated at) and `circuit` (valueString, JSON: the
  compiled criteria inputs a prover needs).

R4 elements used as they are: `ResearchStudy.period` is the enrolment window, `enrollment[0]` references
the cohort `Group`, `status` is draft / active / closed-to-accrual / completed / withdrawn.

A participant's study consent is a Consent for the patient with purpose HRESCH whose
`provision.actor.reference` is `ResearchStudy/{id}` (`study_reference`), and whose grant is signed by the
patient's per-study pseudonym (an Ethereum address), carried as `Consent.extension[study-pseudonym]`
(valueString). The researcher sees the pseudonym as a `ResearchSubject.individual.identifier` in the
`STUDY_PSEUDONYM_SYSTEM`, never a Patient reference. Only `$enrol` writes one (`names_a_study`: the store
refuses any other write of a Consent naming a study).

Its provision (`study_consent_provision`) releases exactly the study's categories, each with its own codes, and
the study's data period, under the consent engine's rule that nested provisions are exceptions to their parent
(fhir_adapters/consent.py): the root permits the study (actor, purpose HRESCH) the requested resource types;
under it, for each type the study narrows, a deny of that type whose own exceptions are one permit per
category of the type (its codes, and the data period unless the type is undated, `UNDATED_TYPES`). A resource
of a narrowed type then matches the deny and is released only if one of its permits matches too. No
`dataPeriod` sits on a provision that covers the Patient resource: the engine dates a Patient by its birth
date, so a period there would withhold it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from fhir_adapters.consent import Period, instant_range
from fhir_adapters.errors import InvalidResource
from fhir_adapters.extensions import EXTENSION_BASE

CRITERIA_URL: Final = EXTENSION_BASE + "study-eligibility-criteria"
DATA_CATEGORY_URL: Final = EXTENSION_BASE + "study-data-category"
DATA_PERIOD_URL: Final = EXTENSION_BASE + "study-data-period"
MAX_PARTICIPANTS_URL: Final = EXTENSION_BASE + "study-max-participants"
OWNER_URL: Final = EXTENSION_BASE + "study-owner"
STUDY_PSEUDONYM_URL: Final = EXTENSION_BASE + "study-pseudonym"
ETHICS_APPROVAL_URL: Final = EXTENSION_BASE + "study-ethics-approval"
PURPOSE_URL: Final = EXTENSION_BASE + "study-purpose-of-use"
REGISTRATION_URL: Final = EXTENSION_BASE + "study-registration"
STUDY_PSEUDONYM_SYSTEM: Final = "https://healthledger.dev/fhir/sid/study-pseudonym"

Coding = tuple[str, str]  # (system or "", code)
# Resource types without a clinical date, to which a study's data period does not apply: the participant
# themself (de-identified demographics).
UNDATED_TYPES: Final = frozenset({"Patient"})
IRCP: Final = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


@dataclass(frozen=True, slots=True)
class DataCategory:
    resource_type: str
    codes: tuple[Coding, ...] = ()  # empty: every resource of the type


@dataclass(frozen=True, slots=True)
class StudyTerms:
    study_id: str
    status: str
    title: str
    cohort_group_id: str | None
    criteria: Mapping[str, Any]
    categories: tuple[DataCategory, ...]
    data_period: Period | None
    enrolment_window: Period | None
    max_participants: int | None
    owner_principal: str | None
    owner_organization: str | None  # "Organization/{id}"

    @property
    def reference(self) -> str:
        return study_reference(self.study_id)


def study_reference(study_id: str) -> str:
    return f"ResearchStudy/{study_id}"


def study_consent_provision(study_id: str, terms: StudyTerms) -> dict[str, Any]:
    """The provision of a participant's study consent: the study's categories, codes and period, no more (see
    the module docstring for its shape)."""
    by_type: dict[str, list[DataCategory]] = {}
    for category in terms.categories:
        by_type.setdefault(category.resource_type, []).append(category)
    period = terms.data_period
    exceptions: list[dict[str, Any]] = []
    for resource_type, categories in by_type.items():
        dated = period is not None and resource_type not in UNDATED_TYPES
        if not dated and any(not c.codes for c in categories):
            continue  # every resource of the type, whenever: the root's class says it all
        permits: list[dict[str, Any]] = []
        for category in categories:
            permit: dict[str, Any] = {"type": "permit", "class": [_resource_type(resource_type)]}
            if category.codes:
                permit["code"] = [{"coding": [{"system": s, "code": c} if s else {"code": c}]}
                                  for s, c in category.codes]
            if dated and period is not None:
                permit["dataPeriod"] = _period_json(period)
            permits.append(permit)
        exceptions.append({"type": "deny", "class": [_resource_type(resource_type)], "provision": permits})
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [{"role": {"coding": [dict(IRCP)]}, "reference": {"reference": study_reference(study_id)}}],
        "purpose": [{"system": V3_ACT_REASON, "code": "HRESCH"}],
        "class": [_resource_type(t) for t in by_type],
    }
    if exceptions:
        provision["provision"] = exceptions
    return provision


def names_a_study(consent: Mapping[str, Any]) -> bool:
    """Whether a Consent names a `ResearchStudy` as actor in any provision (only `$enrol` writes those)."""

    def walk(p: Any) -> bool:
        if not isinstance(p, Mapping):
            return False
        for actor in p.get("actor") or []:
            ref = ((actor or {}).get("reference") or {}).get("reference") if isinstance(actor, Mapping) else None
            if isinstance(ref, str) and ref.startswith("ResearchStudy/"):
                return True
        return any(walk(child) for child in p.get("provision") or [])

    return walk(consent.get("provision"))


def _resource_type(code: str) -> dict[str, str]:
    return {"system": RESOURCE_TYPES, "code": code}


def _period_json(period: Period) -> dict[str, str]:
    return {k: v.isoformat() for k, v in (("start", period.start), ("end", period.end)) if v is not None}


def study_terms(study: Mapping[str, Any]) -> StudyTerms:
    """Parse a ResearchStudy; InvalidResource names the element that is missing or malformed."""
    if study.get("resourceType") != "ResearchStudy":
        raise InvalidResource("resourceType must be ResearchStudy")
    ext = _extensions(study, "ResearchStudy.extension")
    criteria_text = _one(ext, CRITERIA_URL)
    criteria: Mapping[str, Any] = {}
    if criteria_text is not None:
        raw = criteria_text.get("valueString")
        if not isinstance(raw, str):
            raise InvalidResource(f"extension {CRITERIA_URL} needs valueString (a JSON criteria document)")
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise InvalidResource(f"extension {CRITERIA_URL}: not JSON ({exc.args[0]})") from None
        if not isinstance(parsed, dict):
            raise InvalidResource(f"extension {CRITERIA_URL}: the criteria must be a JSON object")
        criteria = parsed
    owner = _one(ext, OWNER_URL)
    owner_parts = _extensions(owner, "study-owner.extension") if owner else {}
    enrollment = study.get("enrollment") or []
    cohort = None
    if enrollment:
        ref = enrollment[0].get("reference", "") if isinstance(enrollment[0], Mapping) else ""
        if not isinstance(ref, str) or not ref.startswith("Group/"):
            raise InvalidResource("ResearchStudy.enrollment[0] must reference a Group")
        cohort = ref.removeprefix("Group/")
    max_participants = _one(ext, MAX_PARTICIPANTS_URL)
    return StudyTerms(
        study_id=str(study.get("id") or ""),
        status=str(study.get("status") or ""),
        title=str(study.get("title") or ""),
        cohort_group_id=cohort,
        criteria=criteria,
        categories=tuple(_category(c) for c in ext.get(DATA_CATEGORY_URL, [])),
        data_period=_period(_one(ext, DATA_PERIOD_URL), "study-data-period.valuePeriod"),
        enrolment_window=_period({"valuePeriod": study["period"]} if "period" in study else None,
                                 "ResearchStudy.period"),
        max_participants=int(max_participants["valuePositiveInt"]) if max_participants else None,
        owner_principal=_value(owner_parts, "principal", "valueString"),
        owner_organization=(_value(owner_parts, "organization", "valueReference") or {}).get("reference"),
    )


def _extensions(element: Mapping[str, Any], path: str) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = {}
    for item in element.get("extension") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            raise InvalidResource(f"{path}: every extension needs a url")
        found.setdefault(item["url"], []).append(item)
    return found


def _one(ext: Mapping[str, list[Mapping[str, Any]]], url: str) -> Mapping[str, Any] | None:
    items = ext.get(url, [])
    if len(items) > 1:
        raise InvalidResource(f"extension {url} may appear once")
    return items[0] if items else None


def _value(ext: Mapping[str, list[Mapping[str, Any]]], url: str, key: str) -> Any:
    item = _one(ext, url)
    return item.get(key) if item else None


def _category(item: Mapping[str, Any]) -> DataCategory:
    parts = _extensions(item, "study-data-category.extension")
    resource_type = _value(parts, "type", "valueCode")
    if not isinstance(resource_type, str) or not resource_type:
        raise InvalidResource("study-data-category needs a 'type' sub-extension with valueCode (a resource type)")
    codes = tuple(
        (str(c["valueCoding"].get("system") or ""), str(c["valueCoding"].get("code") or ""))
        for c in parts.get("code", [])
        if isinstance(c.get("valueCoding"), Mapping)
    )
    return DataCategory(resource_type, codes)


def _period(item: Mapping[str, Any] | None, path: str) -> Period | None:
    if item is None:
        return None
    value = item.get("valuePeriod")
    if not isinstance(value, Mapping):
        raise InvalidResource(f"{path} must be a Period")
    start: datetime | None = instant_range(value["start"], f"{path}.start")[0] if value.get("start") else None
    end: datetime | None = instant_range(value["end"], f"{path}.end")[1] if value.get("end") else None
    return Period(start, end)
