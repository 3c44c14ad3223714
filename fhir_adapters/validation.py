"""Parse and validate FHIR JSON against the R4B (4.3.0) models of `fhir.resources`, keeping what the client sent.

Why R4B and not the package default: `fhir.resources` 8 defaults to R5 and ships no 4.0.1 models; R4 JSON
(e.g. Synthea Encounters, whose `class` is a Coding, a list in R5) fails R5 and passes R4B. See docs/fhir-r4b.md.

Round-trip fidelity: the pydantic models are used only to *check* the JSON. `parse_resource` returns the
client's own JSON (key order, strings, decimal text), as sent; the models would otherwise re-serialise
decimals (`1.50` -> `1.5`, precision is significant in FHIR, 2.24.0.1 decimal). FHIR R4 2.6.2 "JSON" allows
no `null` value (but to align a repeating primitive with its `_name` array) and no empty object or array:
these are refused (400, json_types.check_json_types), never dropped nor stored.
Decimals whose text a Python float would not reproduce are kept as `FhirDecimal` (a float that remembers its
text): stock `json.dumps` still works on the result, `dumps_resource` writes the exact text back.
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable, Mapping
from itertools import accumulate
from typing import Any, Final, Self

from fhir_adapters.bindings import check_required_codes
from fhir_adapters.errors import InvalidResource, MalformedJson, UnknownResourceType
from fhir_adapters.json_types import check_json_types

# All resource types of FHIR 4.0.1 (R4), the version we declare and clients speak: the 146 concrete types of
# http://hl7.org/fhir/R4/resourcelist.html (the resource-types code system less Resource and DomainResource).
_R4_RESOURCE_TYPE_NAMES: Final = """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic
    Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
    ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
    CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
    CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric
    DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
    Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group
    GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List Location Measure
    MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
    MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization
    MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient
    MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
    MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition MessageHeader
    MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition OperationDefinition
    OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation
    Person PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse
    RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
    SpecimenDefinition StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid
    SubstancePolymer SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial
    SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport TestScript
    ValueSet VerificationResult VisionPrescription
"""
R4_RESOURCE_TYPES: Final[frozenset[str]] = frozenset(_R4_RESOURCE_TYPE_NAMES.split())
# All concrete resource types of FHIR 4.3.0 (R4B), as modelled by fhir.resources.R4B (checked by a test).
_R4B_RESOURCE_TYPE_NAMES: Final = """
    Account ActivityDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance Appointment
    AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle
    CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Citation Claim
    ClaimResponse ClinicalImpression ClinicalUseDefinition CodeSystem Communication CommunicationRequest
    CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
    CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest
    DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference Encounter Endpoint EnrollmentRequest
    EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceReport EvidenceVariable ExampleScenario
    ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService
    ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide Ingredient
    InsurancePlan Invoice Library Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media
    Medication MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProductDefinition MessageDefinition MessageHeader MolecularSequence
    NamingSystem NutritionOrder NutritionProduct Observation ObservationDefinition OperationDefinition
    OperationOutcome Organization OrganizationAffiliation PackagedProductDefinition Parameters Patient
    PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure
    Provenance Questionnaire QuestionnaireResponse RegulatedAuthorization RelatedPerson RequestGroup
    ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment Schedule
    SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition StructureMap
    Subscription SubscriptionStatus SubscriptionTopic Substance SubstanceDefinition SupplyDelivery
    SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
    VisionPrescription
"""
R4B_MODELLED_TYPES: Final[frozenset[str]] = frozenset(_R4B_RESOURCE_TYPE_NAMES.split())
# R4B reworked these R4 types (R4B history.html, evidence-based medicine): the R4B models would take R4B's shape,
# refuse R4's, and let us serve R4B JSON as R4, so they are not served at all (docs/fhir-r4b.md).
RESHAPED_IN_R4B: Final = frozenset({"Evidence", "EvidenceVariable"})
# The types we serve and declare: R4 ones that the R4B models check as R4. An R4B-only type (Citation,
# Ingredient, SubscriptionTopic, ...) is unknown here, as is an R4-only one (MedicinalProduct, ...).
RESOURCE_TYPES: Final[frozenset[str]] = (R4_RESOURCE_TYPES & R4B_MODELLED_TYPES) - RESHAPED_IN_R4B

MAX_ERRORS_NAMED: Final = 1  # the first failing path is named; the count of the rest is reported
_NAME = re.compile(r"^_?[A-Za-z][A-Za-z0-9_]*$")
_JSON_PROPERTY = re.compile(r"^_?[A-Za-z][A-Za-z0-9]{0,63}$")


def is_resource_type(name: str) -> bool:
    """True for every resource type we serve: RESOURCE_TYPES (case-sensitive, as FHIR requires)."""
    return name in RESOURCE_TYPES


class FhirDecimal(float):
    """A JSON decimal whose text a float would not reproduce (`1.50`, `1e3`, 25 digits); `text` is exact."""

    text: str

    def __new__(cls, text: str) -> Self:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __repr__(self) -> str:
        return self.text


def _parse_float(text: str) -> float:
    value = float(text)
    return value if repr(value) == text else FhirDecimal(text)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateName(Exception):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; repeated names are refused (RFC 8259 4: SHOULD be unique; parsers disagree on which wins)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateName
    return obj


def loads_json(raw: bytes | str) -> Any:
    """Parse JSON (RFC 8259) keeping decimal text; raise MalformedJson (no PHI) on any failure.

    The nesting is checked on the text first (`check_json_text_nesting`): the parser is recursive.
    """
    check_json_text_nesting(raw)
    try:
        text = raw.decode("utf-8-sig") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(
            text, parse_float=_parse_float, parse_constant=_reject_constant, object_pairs_hook=_object
        )
    except _DuplicateName:
        raise MalformedJson("Malformed JSON: a property name is repeated in one object") from None
    except UnicodeDecodeError:
        raise MalformedJson("Request body is not valid UTF-8") from None
    except RecursionError:
        raise MalformedJson("JSON nesting is too deep") from None
    except json.JSONDecodeError as exc:
        raise MalformedJson(f"Malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError:
        raise MalformedJson("Malformed JSON: NaN and Infinity are not JSON numbers") from None


def _float_text(value: float) -> str:
    if isinstance(value, FhirDecimal):
        return value.text
    if not math.isfinite(value):
        raise ValueError("NaN and Infinity are not FHIR decimals")
    return float.__repr__(value)


def dumps_resource(resource: Mapping[str, Any]) -> str:
    """Compact JSON with decimals written exactly as received (stock `json.dumps` would write `1.5` for `1.50`)."""
    iterencode: Callable[[Any, int], Any] = json.encoder._make_iterencode(  # type: ignore[attr-defined]
        {},  # markers: detect cycles
        _unserialisable,
        json.encoder.encode_basestring_ascii,
        None,  # indent
        _float_text,
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        True,  # _one_shot
    )
    return "".join(iterencode(resource, 0))


def _unserialisable(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# Real FHIR resources nest a few dozen levels at most (Questionnaire items, nested extensions, Bundles
# of resources with contained ones); anything deeper is refused before recursive code walks it.
MAX_JSON_DEPTH = 100

# Bytes that matter to nesting (RFC 8259 §2, §7): brackets, and the quotes that delimit strings. UTF-8
# continuation bytes never equal them. Outside strings `[`/`{` open a level (+1) and `]`/`}` close one
# (-1: the byte 0xff read as signed).
_NOT_STRUCTURE: Final = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_LEVEL_STEP: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_DEPTH_CHUNK: Final = 64 * 1024  # brackets per step of the running sum, so a deep text stops early


def json_text_depth(raw: bytes | bytearray | str, *, stop_above: int | None = None) -> int:
    r"""How deep arrays and objects nest in JSON text (brackets inside strings ignored), without parsing it.

    No recursion and no Python-level loop over bytes; every step is a C-speed bytes operation:
    1. Escapes (RFC 8259 §7): drop `\\` pairs, then `\"`; what is left of the quotes delimits strings.
    2. Keep only quotes and brackets, then drop adjacent `""` (the strings without brackets, nearly all):
       removing two adjacent quotes leaves every other byte inside or outside a string as it was.
    3. Split at the remaining quotes: the even pieces are outside strings (an unterminated string runs
       to the end, as the parser would read it).
    4. Brackets as +1/-1 steps; the depth is the largest running sum. With `stop_above`, the sum stops
       at the first 64 KiB of brackets that goes deeper than that, and returns the depth reached there.
    A backslash outside a string is not JSON: the parser stops there, and up to there the scan agrees
    with it, so the result is never below the depth the parser reaches.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = data.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    outside = b"".join(skeleton.split(b'"')[::2]) if b'"' in skeleton else skeleton
    steps = memoryview(outside.translate(_LEVEL_STEP)).cast("b")
    deepest = level = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):
        levels = list(accumulate(steps[start : start + _DEPTH_CHUNK], initial=level))
        deepest, level = max(deepest, max(levels)), levels[-1]
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def check_json_text_nesting(raw: bytes | bytearray | str, limit: int = MAX_JSON_DEPTH) -> None:
    """MalformedJson (400) when JSON text nests deeper than `limit`: checked before any recursive parser runs.

    The stdlib parser, like pydantic's walk and ours, recurses once per level; at the recursion limit
    some dependencies set (py_ecc: 100,000) a deep body overflows the C stack before RecursionError.
    """
    openers = raw.count("[") + raw.count("{") if isinstance(raw, str) else raw.count(b"[") + raw.count(b"{")
    if openers <= limit:
        return  # no text nests deeper than it has opening brackets (most single resources stop here)
    if json_text_depth(raw, stop_above=limit) > limit:
        raise MalformedJson(f"JSON nesting is deeper than {limit} levels")


def parse_resource(raw: bytes | str | Mapping[str, Any], expected_type: str | None = None) -> dict[str, Any]:
    """Validate one resource with the R4B models and return it as a JSON dict (see module docstring).

    Raises MalformedJson (not a JSON object), InvalidResource (400, `expression` = first failing path,
    also for a `resourceType` that differs from `expected_type`), UnknownResourceType (`expected_type`
    unknown: 404; body `resourceType` unknown: 400).
    """
    if expected_type is not None and not is_resource_type(expected_type):
        raise UnknownResourceType(f"Unknown resource type '{_clip(expected_type)}'", expression=None)
    data = loads_json(raw) if isinstance(raw, bytes | bytearray | str) else raw
    if not isinstance(data, Mapping):
        raise MalformedJson(f"A FHIR resource must be a JSON object, not {_json_kind(data)}")
    resource_type = data.get("resourceType")
    if resource_type is None:
        raise InvalidResource("Missing 'resourceType'", expression="resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource("'resourceType' must be a string", expression="resourceType")
    if not is_resource_type(resource_type):
        raise UnknownResourceType(
            f"Unknown resource type '{_clip(resource_type)}'", expression="resourceType", status=400
        )
    if expected_type is not None and resource_type != expected_type:
        raise InvalidResource(
            f"Expected a {expected_type} resource but got {resource_type}", expression="resourceType"
        )
    cleaned = _check_names(data, resource_type)
    _validate_model(cleaned, resource_type)
    check_required_codes(cleaned)
    return cleaned


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _clip(name: str) -> str:
    """A type name from input, made safe to echo: only identifier characters, at most 64."""
    return name[:64] if _NAME.match(name) else "(not a name)"


class _NotFhirJson(Exception):
    """Raised by the fast cleaning pass; the slow pass then finds and names the offending path."""


_KNOWN_PROPERTIES: set[str] = set()  # property names already checked (bounded: FHIR has a few thousand)


def _check_names(value: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A copy of `value` once its property names and nested `resourceType`s are checked and it nests no deeper
    than MAX_JSON_DEPTH. Nothing is dropped: a null, `{}` or `[]` is refused by check_json_types (R4 json.html),
    not taken as absent.

    Runs a fast pass without path bookkeeping; only when that fails is the input walked again with paths, to
    name the problem.
    """
    try:
        copied: dict[str, Any] = _copy_checked(value, 1)
    except _TooDeep:
        # The first recursive walk of every path into validation (API, NDJSON import, bundles) stops here.
        raise MalformedJson(f"JSON nesting is deeper than {MAX_JSON_DEPTH} levels") from None
    except _NotFhirJson:
        _locate_problem(value, path)
        raise InvalidResource("Invalid resource", expression=path) from None  # pragma: no cover
    return copied


class _TooDeep(Exception):
    pass


def _copy_checked(value: Any, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise _TooDeep
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in _KNOWN_PROPERTIES:
                if not isinstance(key, str) or not _JSON_PROPERTY.match(key):
                    raise _NotFhirJson
                if len(_KNOWN_PROPERTIES) < 10_000:
                    _KNOWN_PROPERTIES.add(key)
            out[key] = _copy_checked(item, depth + 1) if isinstance(item, Mapping | list) else item
        nested_type = out.get("resourceType")
        if nested_type is not None and (
            not isinstance(nested_type, str) or not is_resource_type(nested_type)
        ):
            raise _NotFhirJson
        return out
    if isinstance(value, list):
        return [_copy_checked(item, depth + 1) if isinstance(item, Mapping | list) else item for item in value]
    return value


def _locate_problem(value: Any, path: str) -> None:
    """Raise InvalidResource naming the first bad property name or nested resourceType under `path`."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):  # only possible for a dict built in Python
                raise InvalidResource("Property names must be strings", expression=path)
            if not _JSON_PROPERTY.match(key):
                # FHIR JSON names are `name` or `_name` (R4 2.6.2); this also refuses the models' Python aliases
                # (`class_fhir`, `birthDate__ext`, `resource_type`, `fhir_comments`) that pydantic would accept.
                where = f"{path}.{key}" if _NAME.match(key) and len(key) <= 64 else path
                raise InvalidResource(
                    f"Invalid {path.split('.')[0].split('[')[0]} at {where}: property name is not a FHIR element",
                    expression=where,
                )
            _locate_problem(item, f"{path}.{key}")
        nested_type = value.get("resourceType")
        if nested_type is not None and (
            not isinstance(nested_type, str) or not is_resource_type(nested_type)
        ):
            raise InvalidResource(
                "Unknown resourceType in a nested resource", expression=f"{path}.resourceType"
            )
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _locate_problem(item, f"{path}[{i}]")


def validate_element(data: Mapping[str, Any], model_name: str, path: str) -> dict[str, Any]:
    """Check a non-resource element against its R4B model (e.g. `BundleEntry` without its resource).

    Same rules as parse_resource (FHIR names only, no null or empties); errors are rooted at `path`,
    e.g. `Bundle.entry[3].request.ifMatch`.
    """
    cleaned = _check_names(data, path)
    _validate_model(cleaned, model_name, root=path)
    return cleaned


def _validate_model(data: dict[str, Any], resource_type: str, root: str | None = None) -> None:
    from fhir.resources.R4B import get_fhir_model_class  # heavy import, done on first use
    from pydantic import ValidationError

    model = get_fhir_model_class(resource_type)
    where = root or resource_type
    # First, so that its words name the problem: the models coerce ("true" passes as a boolean, "70.5" as a
    # decimal), which R4 JSON does not allow (json.html), and word a wrong JSON type as a format problem.
    check_json_types(data, resource_type, where)
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise _invalid_from_pydantic(exc, where) from None
    except RecursionError:
        raise InvalidResource("Resource nesting is too deep", expression=where) from None
    except Exception:  # noqa: BLE001 - fhir_core raises KeyError/TypeError on some malformed nested input
        raise InvalidResource(f"Invalid {resource_type}", expression=where) from None


def error_expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a FHIRPath-ish expression: `Patient.name[0].given[1]`."""
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if part == "resource_type":
            part = "resourceType"
        elif part.endswith("__ext"):  # fhir_core's name for the `_element` extension sibling
            part = "_" + part[: -len("__ext")]
        if _NAME.match(part):
            out += f".{part}"
    return out


_SAFE_MESSAGES: Final[Mapping[str, str]] = {
    "missing": "required element is missing",
    "model_field_validation.missing": "required element is missing",
    "extra_forbidden": "unknown element (not in FHIR R4)",
    "list_type": "must be an array",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "bool_parsing": "must be a boolean",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "decimal_type": "must be a number",
    "string_pattern_mismatch": "value does not match the FHIR format of this type",
    "string_too_short": "must not be empty",
}


def _invalid_from_pydantic(exc: Any, resource_type: str) -> InvalidResource:
    errors = exc.errors(include_url=False, include_input=True)
    first = errors[0]
    expression = error_expression(resource_type, tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    detail = _SAFE_MESSAGES.get(kind) or _scrub(str(first.get("msg", "invalid value")), first.get("input"))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    label = resource_type if _NAME.match(resource_type) else "element"
    return InvalidResource(f"Invalid {label} at {expression}: {detail}{more}", expression=expression)


def _scrub(message: str, offending: object) -> str:
    """Keep a library message but never echo the offending value (it may be PHI)."""
    message = message.removeprefix("Value error, ")
    if isinstance(offending, str | int | float) and len(str(offending)) >= 2:
        message = message.replace(str(offending), "<value>")
    return message[:200]
