"""The consent engine's obligations on a FHIR R4 resource (a JSON dict): label redaction, de-identification.

Pure functions, no I/O; each returns a new dict that shares no mutable object with its input.

- `element_labels(resource)`: the inline security labels found at any depth, as (system, code): the engine's
  `ResourceFacts.element_labels`. Inline labels are the DS4P IG extension `extension-inline-sec-label`
  (valueCoding, context Element): http://hl7.org/fhir/uv/security-label-ds4p/inline_security_labels.html
- `redact_labelled(resource, labels)`: the obligation `redact-security-labels`.
- `deidentify(resource, pseudonym=..., now_year=...)`: the obligation `de-identify` (HIPAA Safe Harbor,
  45 CFR 164.514(b)(2)); its docstring maps each of the 18 identifiers to what is done.

With both obligations, redact first: `deidentify` keeps inline labels (they are codes).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from fhir_adapters.errors import InvalidResource
from fhir_adapters.validation import is_resource_type

INLINE_SECURITY_LABEL: Final = (
    "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label"
)
OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
REDACTED: Final = (OBSERVATION_VALUE, "REDACTED")
# PSEUDED rather than ANONYED: ids and references become pseudonyms that stay linkable within a study.
PSEUDED: Final = (OBSERVATION_VALUE, "PSEUDED")
DATA_ABSENT_REASON: Final = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
MASKED: Final = "masked"  # "not available due to security, privacy or related reasons"
UCUM: Final = "http://unitsofmeasure.org"
OLDEST_AGE: Final = 89  # 164.514(b)(2)(i)(C): ages over 89 are aggregated into one category, 90 or older

Label = tuple[str, str]  # (system or "", code), as fhir_adapters.consent.Coding

# --- inline security labels -------------------------------------------------------------------------------


def element_labels(resource: Mapping[str, Any]) -> frozenset[Label]:
    """Every inline security label coding in the resource: any depth, the root and contained resources too."""
    found: set[Label] = set()
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(v for v in node if type(v) not in _SCALARS)
        elif isinstance(node, Mapping):
            if "extension" in node:
                found.update(_inline_labels(node))
            stack.extend(v for v in node.values() if type(v) not in _SCALARS)
    return frozenset(found)


def label_matches(rule: frozenset[Label], label: Label) -> bool:
    """A label matches a rule coding with its code and its system, or with its code and no system."""
    return any(code == label[1] and (not system or system == label[0]) for system, code in rule)


def redact_labelled(resource: Mapping[str, Any], labels: frozenset[Label]) -> dict[str, Any]:
    """A copy without every element that carries an inline security label matching `labels`.

    An element is any JSON object below the root: a complex element, an array item, a contained resource,
    or a primitive through its `_name` sibling (`"_birthDate": {"extension": [label]}` removes `birthDate` and
    `_birthDate`; in arrays, the item at the same index of both). An object or array left empty is removed
    too (FHIR JSON has no empty objects, R4 2.6.2), so removing a required element leaves a resource that no
    longer validates, and the REDACTED mark says why. If anything was removed, meta.security gains REDACTED
    (v3-ObservationValue); otherwise the copy equals the input.

    Raises InvalidResource if the root itself carries a matching label: the extension's context is Element,
    a whole resource is labelled in meta.security, and nothing would be left to return.
    """
    if any(label_matches(labels, label) for label in _inline_labels(resource)):
        raise InvalidResource(
            "An inline security label on the resource itself: label the resource in meta.security",
            expression="extension",
        )
    removed: list[bool] = []  # one entry per removal
    out = _redact_object(resource, labels, removed)
    if removed:
        out["meta"] = _with_security(out.get("meta"), REDACTED)
    return out


def _inline_labels(element: Mapping[str, Any]) -> list[Label]:
    extensions = element.get("extension")
    if not isinstance(extensions, list):
        return []
    out: list[Label] = []
    for ext in extensions:
        if not isinstance(ext, Mapping) or ext.get("url") != INLINE_SECURITY_LABEL:
            continue
        coding = ext.get("valueCoding")
        if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
            system = coding.get("system")
            out.append((system if isinstance(system, str) else "", coding["code"]))
    return out


def _carries(element: Any, labels: frozenset[Label]) -> bool:
    return isinstance(element, Mapping) and any(label_matches(labels, lab) for lab in _inline_labels(element))


def _redact_object(node: Mapping[str, Any], labels: frozenset[Label], removed: list[bool]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("_") and key[1:] in node:
            continue  # a primitive's extensions: decided with the primitive
        sibling_key = f"_{key}"
        sibling = node.get(sibling_key) if not key.startswith("_") else None
        if isinstance(value, list):
            aligned = sibling if isinstance(sibling, list) else None
            kept, kept_sibling = _redact_list(value, aligned, labels, removed)
            if not kept and value:
                continue
            out[key] = kept
            if kept_sibling is not None:
                out[sibling_key] = kept_sibling
            elif sibling is not None and aligned is None:  # malformed: not an array beside an array
                _put(out, sibling_key, _redact_item(sibling, labels, removed))
            continue
        if _carries(value, labels) or _carries(sibling, labels):
            removed.append(True)
            continue
        item = _redact_item(value, labels, removed)
        if item is None and value is not None:
            continue  # emptied by redaction
        out[key] = item
        if sibling is not None:
            _put(out, sibling_key, _redact_item(sibling, labels, removed))
    return {k: out[k] for k in node if k in out}  # the input's key order


def _redact_list(
    items: list[Any], siblings: list[Any] | None, labels: frozenset[Label], removed: list[bool]
) -> tuple[list[Any], list[Any] | None]:
    kept: list[Any] = []
    kept_siblings: list[Any] = []
    for i, item in enumerate(items):
        sibling = siblings[i] if siblings is not None and i < len(siblings) else None
        if _carries(item, labels) or _carries(sibling, labels):
            removed.append(True)
            continue
        redacted = _redact_item(item, labels, removed)
        if redacted is None and item is not None:
            continue  # emptied by redaction
        kept.append(redacted)
        kept_siblings.append(_redact_item(sibling, labels, removed))
    if siblings is None or all(s is None for s in kept_siblings):
        return kept, None
    return kept, kept_siblings


def _redact_item(value: Any, labels: frozenset[Label], removed: list[bool]) -> Any:
    """A redacted copy of one value; None when an object or array was emptied by redaction."""
    if isinstance(value, Mapping):
        out = _redact_object(value, labels, removed)
        return out if out or not value else None
    if isinstance(value, list):
        kept, _ = _redact_list(value, None, labels, removed)
        return kept if kept or not value else None
    return value


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


def _with_security(meta: Any, label: Label) -> dict[str, Any]:
    """A copy of `meta` (or a new one) whose `security` includes `label` once."""
    out: dict[str, Any] = _copy(meta) if isinstance(meta, Mapping) else {}
    found = out.get("security")
    security: list[Any] = found if isinstance(found, list) else []
    if not any(isinstance(c, Mapping) and (c.get("system"), c.get("code")) == label for c in security):
        security = [*security, {"system": label[0], "code": label[1]}]
    out["security"] = security
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# --- which elements are what ------------------------------------------------------------------------------
# Decided by JSON property name, and by FHIR path where a name is ambiguous: the resource type and element
# names, no indexes, a recursive element named once (Composition.section.section.title is
# Composition.section.title).
# tests/fhir_adapters/test_deidentify.py checks these tables against every element of the R4B models.

# Removed wherever they occur, with their `_name` primitive-extension siblings.
DROPPED_ELEMENTS: Final = frozenset({
    "text",  # Narrative (DomainResource.text) and every other free-text `text` (CodeableConcept, Dosage, ...)
    "note",  # Annotation
    "progress",  # Annotation (CarePlan.activity.progress)
    "comment",
    "patientInstruction",
    "telecom",  # ContactPoint: phone, fax, e-mail, URL
    "contact",  # Patient.contact (relatives), Organization.contact, ContactDetail, ContactPoint
    "photo",
    "position",  # Location.position: latitude/longitude
    "signature",  # Signature.data is computed over the original content
    "udiCarrier",  # Device UDI
    "serialNumber",
    "requisition",  # Identifier-typed elements whose name does not end in "identifier"
    "predecessor",
    "subscriberId",  # Coverage: plan member numbers, account and authorisation numbers held as strings
    "dependent",
    "preAuthRef",
    "businessArrangement",
    "altId",  # AuditEvent.agent: a user's other identity
    "datasetId",  # MolecularSequence.repository: ids of the raw data
    "readsetId",
    "variantsetId",
})
# Free text, removed when it is a string (or strings); the same names typed CodeableConcept etc. are kept.
FREE_TEXT_ELEMENTS: Final = frozenset({
    "description", "conclusion", "summary", "disposition", "detail", "mitigation", "rationale",
    "outcomeDesc", "overrideReason", "paymentTerms", "cancelledReason", "statusReason", "instruction",
    "administrationInstruction", "availabilityExceptions", "textEquivalent", "basis",
})
# Choice types ([x]) that are identifiers or free text, by the type suffix of the JSON name.
DROPPED_SUFFIXES: Final = ("HumanName", "ContactPoint", "Annotation", "Signature", "String", "Markdown")
KEPT_STRINGS: Final = frozenset({"doseNumberString", "seriesDosesString"})  # dose labels ("Booster"), 1..1
DROPPED_PATHS: Final = frozenset({
    "Organization.name",  # an employer's or a small practice's name
    "Organization.alias",
    "Location.name",
    "Location.alias",
    "Account.name",  # names that are often a person's: "Peter Chalmers' account", "Aunt Sue", a user
    "CareTeam.name",
    "Group.name",  # a group of patients may be named after them ("the Smith family")
    "FamilyMemberHistory.name",
    "AuditEvent.agent.name",
    "AuditEvent.entity.name",
    "AuditEvent.entity.query",  # the query as sent (base64), may hold a name
    "Coverage.class.value",  # group and plan numbers
    "CarePlan.title",  # titles of patient data (those of definitions are not about anyone)
    "Composition.title",
    "Composition.section.title",
    "ImagingStudy.series.instance.title",
    "List.title",
    "RequestGroup.action.title",
    "Device.url",  # network address of the device
    "Device.lotNumber",  # the UDI production identifier holds it
    "Device.version.component",  # Identifier
    "Claim.related.reference",  # Identifier (elsewhere `reference` is a Reference or its string)
    "ExplanationOfBenefit.related.reference",
    "Binary.data",  # opaque content that cannot be de-identified
    "Bundle.link",  # search URLs (a query may hold a name)
    "Bundle.entry.link",
    "Bundle.entry.request",  # transaction details: URLs with ids, conditional queries
    "Bundle.entry.response",
})
# `name` that is not a plain string is a HumanName, except at these paths (backbone elements of products).
KEPT_NAMES: Final = frozenset({"MedicinalProductDefinition.name", "SubstanceDefinition.name"})
# Required (1..1, 1..*) elements the rules above remove: left present, holding only a "masked"
# data-absent-reason (a primitive through its `_name` sibling), so the resource still validates. Required
# choice elements of a primitive type (Communication.payload.contentString, Immunization.occurrenceString,
# ...) cannot be kept this way (the R4B models want a value) and are removed.
REQUIRED_MASKED: Final = frozenset({
    "CapabilityStatement.implementation.description",
    "Citation.citedArtifact.abstract.text",
    "Citation.citedArtifact.relatesTo.targetIdentifier",
    "Citation.citedArtifact.title.text",
    "Citation.relatesTo.targetIdentifier",
    "Citation.summary.text",
    "CapabilityStatement.messaging.endpoint.address",
    "Composition.title",
    "Coverage.class.value",
    "ClaimResponse.processNote.text",
    "Composition.relatesTo.targetIdentifier",
    "Contract.signer.signature",
    "Endpoint.address",
    "EvidenceReport.relatesTo.targetIdentifier",
    "ExampleScenario.instance.version.description",
    "HealthcareService.notAvailable.description",
    "MessageHeader.response.identifier",
    "PractitionerRole.notAvailable.description",
    "SearchParameter.description",
    "TerminologyCapabilities.implementation.description",
    *(f"Task.{io}.value{kind}" for io in ("input", "output")
      for kind in ("Annotation", "ContactPoint", "HumanName", "Identifier", "Signature")),
})
# Optional arrays whose items need a primitive choice value (content[x]): an item emptied by removals is
# removed rather than masked (a masked one would not validate).
REMOVED_WHEN_EMPTIED: Final = frozenset({"Communication.payload", "CommunicationRequest.payload"})

# Attachment-typed elements keep their description (contentType, language, size, creation), not the content.
ATTACHMENT_ELEMENTS: Final = frozenset({
    "attachment", "content", "form", "image", "presentedForm", "document",
})
ATTACHMENT_PAYLOAD: Final = frozenset({"data", "url", "hash", "title"})

# Elements typed date, dateTime or instant somewhere in R4B whose name does not end in Date/DateTime/Instant.
DATE_ELEMENTS: Final = frozenset({
    "authored", "authoredOn", "created", "creation", "date", "dateAccessed", "dateAsserted", "dateTime",
    "dateWritten", "detected", "effectiveTime", "end", "event", "expiry", "ifModifiedSince", "issued",
    "lastModified", "lastOccurrence", "lastPerformed", "lastUpdated", "nextScheduled", "onset", "received",
    "receivedTime", "recorded", "recordedOn", "sent", "start", "started", "time", "timestamp", "useBy",
    "validTo", "value", "when", "whenHandedOver", "whenPrepared",
})
DATE_SUFFIXES: Final = ("Date", "DateTime", "Instant")
# instant (R4 2.24.0.1: a full timestamp with zone, no partial form): by name anywhere, or at these paths.
INSTANT_ELEMENTS: Final = frozenset({"lastUpdated", "timestamp", "when", "ifModifiedSince"})
INSTANT_PATHS: Final = frozenset({
    "Observation.issued", "DiagnosticReport.issued", "Media.issued", "DocumentReference.date",
    "Appointment.start", "Appointment.end", "AppointmentResponse.start", "AppointmentResponse.end",
    "Slot.start", "Slot.end", "Subscription.end", "AuditEvent.recorded", "Provenance.recorded",
    "DeviceMetric.calibration.time",
})

# A FHIR date/dateTime/instant, loosely (a sloppy "2019-02-25 16:05" is one too); group 1 is the year.
_DATE_LIKE: Final = re.compile(r"^(\d{4})(?:-\d{2}(?:-\d{2}(?:[T ].*)?)?)?$", re.DOTALL)
_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # R4 id
_REFERENCE: Final = re.compile(
    r"^(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$"
)
# UUIDv5 namespace: pseudonyms of other references (urn:uuid:..., URLs) and of fullUrls become urn:uuids.
_PSEUDONYM_NAMESPACE: Final = uuid.UUID("6f2b7d3e-5a0c-5d8e-9b61-0c4f4e1d2a37")
_YEARS_PER_UNIT: Final[Mapping[str, float]] = {
    "a": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25,  # UCUM codes
    "yr": 1.0, "year": 1.0, "years": 1.0,  # common `unit` texts
}
_CODING_KEYS: Final = frozenset({"system", "code", "version", "userSelected"})
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})  # JSON leaves, kept as they are


def _child(path: str, key: str) -> str:
    """The path of element `key` of the object at `path`; a recursive element (`item.item`) is named once."""
    return path if path.endswith(f".{key}") else f"{path}.{key}"


# What the rules above say of element `key` of the object at `path`, worked out once per (path, key): the
# rules are tables of names and paths, and a resource repeats the same few hundred (path, key) pairs.
_ADDRESS, _BIRTH_DATE, _DATE, _INSTANT, _AGE, _REFERENCE_KEY, _FULL_URL, _ATTACHMENT, _CONTAINED, _VALUE = range(10)


class _Plan:
    """The rules for one (path, key): whether it is removed (always, or depending on its value) and how its
    value is de-identified otherwise."""

    __slots__ = (
        "drop",
        "drop_display",
        "drop_name",
        "drop_text",
        "extensions",
        "full",
        "handler",
        "mask",
        "required_masked",
    )

    def __init__(self, path: str, key: str) -> None:
        full = _child(path, key)
        self.full = full
        self.drop = (
            key in DROPPED_ELEMENTS
            or key.lower().endswith("identifier")
            or (key.endswith(DROPPED_SUFFIXES) and key not in KEPT_STRINGS)
            or full in DROPPED_PATHS
        )
        self.drop_name = key == "name" and full not in KEPT_NAMES  # unless a plain string
        self.drop_text = key in FREE_TEXT_ELEMENTS  # when a string or strings
        self.drop_display = key == "display"  # unless inside a Coding
        self.required_masked = full in REQUIRED_MASKED
        self.mask = full not in REMOVED_WHEN_EMPTIED
        self.extensions = key in ("extension", "modifierExtension")
        if key == "address" or key.endswith("Address"):
            self.handler = _ADDRESS
        elif key == "birthDate":
            self.handler = _BIRTH_DATE
        elif key in INSTANT_ELEMENTS or key.endswith("Instant") or full in INSTANT_PATHS:
            self.handler = _INSTANT
        elif key in DATE_ELEMENTS or key.endswith(DATE_SUFFIXES):
            self.handler = _DATE
        elif key.endswith("Age"):
            self.handler = _AGE  # when an object (a Quantity)
        elif key == "reference":
            self.handler = _REFERENCE_KEY  # when a string
        elif key == "fullUrl":
            self.handler = _FULL_URL  # when a string
        elif key in ATTACHMENT_ELEMENTS or key.endswith(("Attachment", "attachment")):
            self.handler = _ATTACHMENT  # when an object or array
        elif key == "contained":
            self.handler = _CONTAINED  # when an array
        else:
            self.handler = _VALUE

    def dropped(self, value: Any, in_coding: bool) -> bool:
        return (
            self.drop
            or (self.drop_name and not isinstance(value, str))
            or (self.drop_text and _is_text(value))
            or (self.drop_display and not in_coding)  # Reference.display, often a person's name
        )


_plan = functools.lru_cache(maxsize=8192)(_Plan)


def dropped(key: str, path: str, value: Any = None, *, in_coding: bool = False) -> bool:
    """Whether element `key` (holding `value`) of the object at FHIR path `path` is removed whole."""
    return _plan(path, key).dropped(value, in_coding)


def _is_text(value: Any) -> bool:
    """A string or strings (or nothing, when only a `_name` sibling is there), not an object."""
    if isinstance(value, list):
        return not any(isinstance(item, Mapping) for item in value)
    return not isinstance(value, Mapping)


def date_kind(key: str, path: str) -> Literal["date", "instant"] | None:
    """How element `key` of the object at `path` is cut to its year: `YYYY`, an instant, or not a date."""
    handler = _plan(path, key).handler
    if handler == _INSTANT:
        return "instant"
    if handler in (_DATE, _BIRTH_DATE):
        return "date"
    return None


def is_address(key: str) -> bool:
    return key == "address" or key.endswith("Address")


def is_attachment(key: str) -> bool:
    return key in ATTACHMENT_ELEMENTS or key.endswith(("Attachment", "attachment"))


# --- de-identification ------------------------------------------------------------------------------------


def deidentify(
    resource: Mapping[str, Any], *, pseudonym: Callable[[str], str], now_year: int
) -> dict[str, Any]:
    """A de-identified copy of `resource` after HIPAA Safe Harbor, 45 CFR 164.514(b)(2)(i)(A)-(R).

    `pseudonym(key)` maps `Type/id` (or another reference, or `#id` of a contained resource) to a pseudonym.
    It must be deterministic within a study, keyed with a secret the recipient does not hold (164.514(c)),
    and return a FHIR id, `[A-Za-z0-9-.]{1,64}` (else ValueError). Ages are computed at `now_year`.

    What happens to each Safe Harbor identifier, as far as it can appear in a FHIR R4 resource:
    (A) Names: HumanName elements (`name` unless a plain string, `valueHumanName`, ...) and `contact`
        (relatives; contacts of organisations) removed; Reference.display (often a name) removed; string
        names that are a person's or an employer's removed (Organization/Location name and alias,
        Account.name, CareTeam.name, FamilyMemberHistory.name, AuditEvent agent and entity names).
    (B) Geographic subdivisions smaller than a State: Address elements (`address`, `valueAddress`, e.g. the
        birthPlace extension, `locationAddress`) keep only `country`; string `address`es (Endpoint,
        AuditEvent network) and Location.position (latitude/longitude) removed. ZIP3 is not kept.
    (C) All elements of dates but the year, and ages over 89: every date, dateTime and instant (DATE_ELEMENTS,
        names ending in Date/DateTime/Instant; Period.start/end through those) becomes its year `YYYY`; an
        instant, which has no partial form (INSTANT_ELEMENTS, INSTANT_PATHS, `*Instant`), becomes
        `YYYY-01-01T00:00:00Z`. `birthDate` becomes its year, or is removed when now_year - year > 89; an Age
        (`onsetAge`, `ageAge`, ...) over 89 years becomes `>= 90 a`.
    (D) Social Security numbers, (H) medical record numbers, (I) health plan beneficiary numbers,
    (J) account numbers, (K) certificate/licence numbers: every Identifier removed (`identifier`, any name
        ending in "identifier", `requisition`, `predecessor`, DROPPED_PATHS), Reference.identifier included;
        numbers held as strings too: Coverage.subscriberId, dependent and class.value, `preAuthRef`,
        `businessArrangement`, AuditEvent.agent.altId.
    (E) Telephone numbers, (F) fax numbers, (G) e-mail addresses: `telecom` and other ContactPoints removed.
    (L) Vehicle identifiers and serial numbers: no FHIR element holds them; free text is removed (see R).
    (M) Device identifiers and serial numbers: `udiCarrier`, `serialNumber`, `deviceIdentifier`,
        `distinctIdentifier`, Device.lotNumber removed.
    (N) URLs, (O) IP addresses: ContactPoint URLs, Device.url, string `address`es, Attachment.url, Bundle
        links and request/response removed; references are reduced to `Type/pseudonym` (no base URL).
    (P) Biometric identifiers, (Q) full-face photographs: `photo` removed; every Attachment (`content`,
        `presentedForm`, `valueAttachment`, ...) loses `data`, `url`, `hash` and `title`; Binary.data removed.
    (R) Any other unique identifying number, characteristic or code: resource `id` becomes
        pseudonym(`Type/id`) (a contained resource's, pseudonym(`#id`)); references
        `[base/]Type/id[/_history/v]` become `Type/pseudonym(Type/id)`, `#id` becomes `#pseudonym(#id)`; other
        references (`urn:uuid:`, ...) and Bundle fullUrls become `urn:uuid:` + UUIDv5(pseudonym(them)). Free
        text removed: `text` (narrative and every other), `note`, `comment`, `patientInstruction`,
        FREE_TEXT_ELEMENTS when strings (`description`, `conclusion`, `summary`, ...), the titles of patient
        data (CarePlan, Composition, List, ...), string and markdown choice values (`valueString`, e.g.
        mothersMaidenName; `contentString`, ...), `signature`. `meta` keeps only `security`, plus PSEUDED
        (v3-ObservationValue) on each resource that is not contained.
    Codes (Coding, CodeableConcept.coding, Quantity) are kept. An object emptied by these removals, and a
    required element in REQUIRED_MASKED, stays present holding only a data-absent-reason "masked" extension
    (so the resource still validates); an extension left without a value is removed.

    Left out: identifiers inside strings that are kept (tests/fhir_adapters/test_deidentify.py lists each
    string element of the patient-compartment resources that is kept: code displays, units, versions, device
    and product names, Immunization.lotNumber, ...), strings of resources outside the patient compartment
    (definitions, HealthcareService), age ranges (`onsetRange`), genetic sequences, and the "actual
    knowledge" condition of 164.514(b)(2)(ii).
    """
    return _deidentify_resource(resource, _Study(pseudonym, now_year), contained=False)


class _Study:
    """The parameters of one de-identification run."""

    __slots__ = ("now_year", "pseudonym")

    def __init__(self, pseudonym: Callable[[str], str], now_year: int) -> None:
        self.pseudonym = pseudonym
        self.now_year = now_year

    def id_for(self, key: str) -> str:
        new_id = self.pseudonym(key)
        if not isinstance(new_id, str) or not _ID.match(new_id):
            raise ValueError("pseudonym() must return a FHIR id: [A-Za-z0-9-.]{1,64}")
        return new_id

    def reference(self, reference: str) -> str:
        if reference.startswith("#"):  # a contained resource; `#` alone is the container
            return f"#{self.id_for(reference)}" if len(reference) > 1 else reference
        match = _REFERENCE.match(reference)
        if match is not None and is_resource_type(match["type"]):
            return f"{match['type']}/{self.id_for(match['type'] + '/' + match['id'])}"
        return self.opaque(reference)

    def full_url(self, full_url: str) -> str:
        match = _REFERENCE.match(full_url)
        if match is not None and is_resource_type(match["type"]):
            return self.opaque(f"{match['type']}/{match['id']}")
        return self.opaque(full_url)

    def opaque(self, reference: str) -> str:
        if reference[:9].lower() == "urn:uuid:":
            reference = reference.lower()  # RFC 4122 3: UUIDs compare as values
        return _opaque(str(self.pseudonym(reference)))


@functools.lru_cache(maxsize=8192)
def _opaque(pseudonym: str) -> str:
    """A pseudonym as a urn:uuid (UUIDv5, RFC 4122 4.3), remembered: a participant's references repeat."""
    return f"urn:uuid:{uuid.uuid5(_PSEUDONYM_NAMESPACE, pseudonym)}"


class _Drop:
    """Marks a removed element."""

    __slots__ = ()


_DROP: Final = _Drop()


def _masked() -> dict[str, Any]:
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": MASKED}]}


def _deidentify_resource(node: Mapping[str, Any], study: _Study, *, contained: bool) -> dict[str, Any]:
    resource_type = node.get("resourceType")
    path = resource_type if isinstance(resource_type, str) and is_resource_type(resource_type) else ""
    out: dict[str, Any] = {}
    if isinstance(resource_type, str):
        out["resourceType"] = resource_type
    resource_id = node.get("id")
    if isinstance(resource_id, str) and _ID.match(resource_id) and (path or contained):
        out["id"] = study.id_for(f"#{resource_id}" if contained else f"{path}/{resource_id}")
    body = {k: v for k, v in node.items() if k not in ("resourceType", "id", "_id", "meta")}
    out.update(_deidentify_object(body, path, study))
    meta = node.get("meta")
    security = meta.get("security") if isinstance(meta, Mapping) else None
    codings = [_copy(c) for c in security if isinstance(c, Mapping)] if isinstance(security, list) else []
    if not contained and not any((c.get("system"), c.get("code")) == PSEUDED for c in codings):
        codings.append({"system": PSEUDED[0], "code": PSEUDED[1]})
    if codings:
        out["meta"] = {"security": codings}
    return out


def _deidentify_object(node: Mapping[str, Any], path: str, study: _Study) -> dict[str, Any]:
    out: dict[str, Any] = {}
    removed: set[str] = set()
    masked_siblings = False  # a `_name` added for a removed required `name` (REQUIRED_MASKED)
    in_coding = not _CODING_KEYS.isdisjoint(node)
    siblings = False
    for key, value in node.items():
        if not isinstance(key, str):
            continue
        if key[:1] == "_":
            siblings = True
            continue
        plan = _plan(path, key)
        result = _DROP if plan.dropped(value, in_coding) else _deidentify_element(plan, value, study)
        if result is not _DROP:
            out[key] = result
            continue
        removed.add(key)
        if plan.required_masked:
            if isinstance(value, Mapping):
                out[key] = _masked()
            elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
                out[key] = [_masked()]
            else:
                out[f"_{key}"] = [_masked()] if isinstance(value, list) else _masked()
                masked_siblings = True
    if siblings:
        for key, value in node.items():  # `_name` primitive siblings, once their primitives are decided
            if not isinstance(key, str) or not key.startswith("_"):
                continue
            name = key[1:]
            if name in removed or (name not in node and dropped(name, path, in_coding=in_coding)):
                continue
            if isinstance(value, list):  # aligned with the primitive array: an emptied item becomes null
                items = [_deidentify_value(item, _child(path, name), study, mask=False) for item in value]
                aligned = [None if item is _DROP else item for item in items]
                if any(item is not None for item in aligned):
                    out[key] = aligned
                continue
            sibling = _deidentify_value(value, _child(path, name), study, mask=False)
            if sibling is not _DROP:
                out[key] = sibling
    if not siblings and not masked_siblings and len(out) == len(node):
        return out  # every key kept, in the input's order already
    ordered: dict[str, Any] = {}
    for key in node:  # the input's key order; a masked `_name` follows its (removed) `name`
        if key in out:
            ordered[key] = out[key]
        if masked_siblings and isinstance(key, str) and f"_{key}" in out and f"_{key}" not in node:
            ordered[f"_{key}"] = out[f"_{key}"]
    return ordered


def _deidentify_element(plan: _Plan, value: Any, study: _Study) -> Any:
    """The de-identified value of an element that is not removed whole (`plan`: its rules), or _DROP."""
    handler = plan.handler
    if handler == _VALUE:
        return _deidentify_value(value, plan.full, study, mask=plan.mask, extensions=plan.extensions)
    if handler == _ADDRESS:
        return _address(value)
    if handler == _BIRTH_DATE:
        return _birth_date(value, study.now_year)
    if handler == _DATE or handler == _INSTANT:
        return _dates(value, plan.full, study, instant=handler == _INSTANT)
    if handler == _AGE and isinstance(value, Mapping):
        return _age(value, plan.full, study)
    if handler == _REFERENCE_KEY and isinstance(value, str):
        return study.reference(value)
    if handler == _FULL_URL and isinstance(value, str):
        return study.full_url(value)
    if handler == _ATTACHMENT and isinstance(value, Mapping | list):
        return _attachment(value, plan.full, study)
    if handler == _CONTAINED and isinstance(value, list):
        return [
            _deidentify_resource(item, study, contained=True) for item in value if isinstance(item, Mapping)
        ]
    return _deidentify_value(value, plan.full, study, mask=plan.mask, extensions=plan.extensions)


def _deidentify_value(
    value: Any, path: str, study: _Study, *, mask: bool = True, extensions: bool = False
) -> Any:
    """Objects and arrays, recursively. An object emptied by removals is masked (mask=False: removed)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        if "resourceType" in value:  # Bundle.entry.resource, Parameters.parameter.resource, ...
            return _deidentify_resource(value, study, contained=False)
        out = _deidentify_object(value, path, study)
        if value and not out:
            return _masked() if mask else _DROP
        return out
    if isinstance(value, list):
        items = []
        for item in value:
            result = _deidentify_value(item, path, study, mask=mask)
            if result is _DROP:
                continue
            if extensions and isinstance(result, Mapping) and not (set(result) - {"url", "id"}):
                continue  # an extension whose value was removed
            items.append(result)
        return items if items or not value else _DROP
    return value


def _address(value: Any) -> Any:
    """Address -> {country}, or removed; a string address (a URL, a network address) is removed."""
    if isinstance(value, list):
        kept = [a for a in (_address(item) for item in value) if a is not _DROP]
        return kept or _DROP
    if isinstance(value, Mapping):
        country = value.get("country")
        return {"country": country} if isinstance(country, str) and country else _DROP
    return _DROP


def _year(value: Any) -> str | None:
    match = _DATE_LIKE.match(value) if isinstance(value, str) else None
    return match.group(1) if match is not None else None


def _birth_date(value: Any, now_year: int) -> Any:
    year = _year(value)
    if year is None or now_year - int(year) > OLDEST_AGE:
        return _DROP  # over 89, or not a date that can be cut to its year
    return year


def _dates(value: Any, path: str, study: _Study, *, instant: bool) -> Any:
    """Date-like strings (alone or in arrays: Timing.event) cut to the year; objects (Period) recursed."""
    if isinstance(value, str):
        year = _year(value)
        if year is None:
            return value  # a code or a number sharing the name (Timing.repeat.when, ...)
        return f"{year}-01-01T00:00:00Z" if instant else year
    if isinstance(value, list):
        return [_dates(item, path, study, instant=instant) for item in value]
    return _deidentify_value(value, path, study)


def _age(value: Mapping[str, Any], path: str, study: _Study) -> Any:
    """An Age (Quantity) over 89 years becomes `>= 90 a` (164.514(b)(2)(i)(C)); others are kept."""
    number = value.get("value")
    unit = value.get("code") if isinstance(value.get("code"), str) else value.get("unit")
    factor = _YEARS_PER_UNIT.get(unit) if isinstance(unit, str) else None
    if (
        isinstance(number, int | float)
        and not isinstance(number, bool)
        and factor is not None
        and number * factor > OLDEST_AGE
    ):
        return {"value": OLDEST_AGE + 1, "comparator": ">=", "unit": "years", "system": UCUM, "code": "a"}
    return _deidentify_value(value, path, study)


def _attachment(value: Any, path: str, study: _Study) -> Any:
    """An Attachment without its content: `data`, `url`, `hash` and `title` removed, the rest kept."""
    if isinstance(value, list):
        return [_attachment(item, path, study) for item in value]
    if not isinstance(value, Mapping):
        return _deidentify_value(value, path, study)
    stripped = {k: v for k, v in value.items() if k.lstrip("_") not in ATTACHMENT_PAYLOAD}
    if value and not stripped:
        return _masked()
    return _deidentify_value(stripped, path, study)
