"""FHIR R4 search (http://hl7.org/fhir/R4/search.html): parameters, parsing, blind-index terms and exact matching.

The store never sees search semantics. It keeps, per resource, the TERMS of `index_terms` (each HMAC-ed with a
per-parameter key), narrows a search with `candidate_filters` (a conjunction of "carries one of these terms"),
decrypts the candidates and keeps those for which `matches` is true.

INVARIANT (tested with hypothesis): for every resource r, meta m and query q,
    matches(r, q, m)  implies  for every TermFilter f in candidate_filters(q):
                               f.any_of ∩ index_terms(r)[f.param] ≠ ∅      (for f.param == "_id": m.id ∈ f.any_of)
so narrowing never loses a true match; it may over-approximate, `matches` is exact. Criteria that cannot be
narrowed safely (`ne`, `:not`, `:contains`, `:missing`, open date ranges, numbers) produce no filter.

Terms and what equal HMACs across rows reveal to someone holding the database (the leakage we accept):
- token: `c:code`, `s:system`, `sc:system|code`, `n:code` (no system). Equal codes are linkable across rows
  (e.g. "these 40 Observations share a LOINC code"), as with any deterministic blind index.
- string (FHIR default = case/accent-insensitive starts-with of the whole value; `:exact`): the value is
  normalised (NFKD, accents dropped, casefolded, whitespace collapsed) and yields `e:<whole>` plus
  `p:<prefix>` for each length in STRING_PREFIX_LENGTHS = (2, 3, 4, 6, 8). A query of length L uses the
  longest prefix length <= L; a 1-character query, or `:contains`, is not narrowed. Trade-off: more lengths
  narrow better but add terms per value and reveal more shared prefixes; no length-1 term means first-letter
  frequencies (a strong signal for names) are not revealed, lengths stop at 8 so long values are only
  linkable by their first 8 characters or by full equality. The number of terms per value reveals
  min(len, 8)-ish length information.
- date: the value's range (FHIR implicit range of a partial date, or a Period) yields `y:YYYY` for each UTC
  year it overlaps (up to DATE_MAX_YEAR_TERMS, else `y:*`) and `m:YYYY-MM` for each month (up to
  DATE_MAX_MONTH_TERMS, else `m:*`). Reveals the year and month of e.g. birth dates to anyone who can guess
  them (12 x ~120 candidates); days and times stay encrypted. Search with a bounded window uses months when
  the window spans at most DATE_QUERY_MAX_MONTHS, else years; unbounded windows are not narrowed.
- reference: `r:Type/id` and `i:id` (absolute URLs reduced to Type/id), `u:<reference>` for others.
- quantity: `sc:system|code` and `c:code` of the unit (the magnitude is not indexed; `matches` compares it).
- uri: `e:<uri>`.  `_id` is filtered on the store's id column (filter terms are plain ids, no term index);
  `_lastUpdated` comes from the store's metadata (see `last_updated_window`).
Dates without a timezone (birthDate, partial dates) are taken as UTC on both sides, consistently.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final, Literal

from fhir_adapters.errors import UnsupportedSearch
from fhir_adapters.validation import is_resource_type

ParamType = Literal["token", "string", "date", "reference", "quantity", "uri", "number"]

STRING_PREFIX_LENGTHS: Final = (2, 3, 4, 6, 8)
DATE_MAX_YEAR_TERMS: Final = 10
DATE_MAX_MONTH_TERMS: Final = 24
DATE_QUERY_MAX_MONTHS: Final = 24
DATE_QUERY_MAX_YEARS: Final = 200
MAX_OR_VALUES: Final = 100  # comma-separated alternatives in one parameter
MAX_CRITERIA: Final = 50  # parameters in one query
MAX_VALUE_LENGTH: Final = 1024


@dataclass(frozen=True)
class SearchParamDef:
    """One search parameter: its FHIR type and the element paths it reads (R4 SearchParameter.expression).

    `paths` are dotted element names from the resource root; a segment `name[x]` is a choice element
    (`effective[x]` reads effectiveDateTime, effectivePeriod, ...). `targets` restricts reference types
    (`patient` reads `subject` but only references to Patient). `system` is the implicit code system of a
    `code` element (Patient.gender), `single` says the element holds at most one value (lets AND-ed date
    criteria narrow together).
    """

    name: str
    type: ParamType
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    system: str | None = None
    single: bool = False
    description: str = ""


def _p(name: str, type_: ParamType, *paths: str, **kw: Any) -> tuple[str, SearchParamDef]:
    return name, SearchParamDef(name, type_, paths, **kw)


_SUBJECT_TARGETS = ("Patient", "Group", "Device", "Location")
ID_PARAM: Final = SearchParamDef(
    "_id", "token", ("id",), single=True, description="Logical id of the resource"
)
LAST_UPDATED_PARAM: Final = SearchParamDef(
    "_lastUpdated",
    "date",
    ("meta.lastUpdated",),
    single=True,
    description="When the resource version was stored",
)
COMMON_PARAMETERS: Final[Mapping[str, SearchParamDef]] = {"_id": ID_PARAM, "_lastUpdated": LAST_UPDATED_PARAM}

_GENDER = "http://hl7.org/fhir/administrative-gender"

_TYPE_PARAMETERS: dict[str, dict[str, SearchParamDef]] = {
    "Patient": dict(
        [
            _p("identifier", "token", "identifier"),
            _p("name", "string", "name"),
            _p("family", "string", "name.family"),
            _p("given", "string", "name.given"),
            _p("birthdate", "date", "birthDate", single=True),
            _p("gender", "token", "gender", system=_GENDER, single=True),
            _p("active", "token", "active", single=True),
            _p("address", "string", "address"),
            _p("address-city", "string", "address.city"),
            _p("address-postalcode", "string", "address.postalCode"),
            _p("telecom", "token", "telecom"),
            _p("general-practitioner", "reference", "generalPractitioner"),
            _p("organization", "reference", "managingOrganization", targets=("Organization",)),
        ]
    ),
    "Observation": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=_SUBJECT_TARGETS),
            _p("encounter", "reference", "encounter", targets=("Encounter",)),
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "effective[x]", single=True),
            _p("value-quantity", "quantity", "valueQuantity", single=True),
            _p("component-code", "token", "component.code"),
        ]
    ),
    "Condition": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("encounter", "reference", "encounter", targets=("Encounter",)),
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("clinical-status", "token", "clinicalStatus"),
            _p("verification-status", "token", "verificationStatus"),
            _p("onset-date", "date", "onset[x]", single=True),
            _p("recorded-date", "date", "recordedDate", single=True),
        ]
    ),
    "Encounter": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("date", "date", "period", single=True),
            _p("status", "token", "status", single=True),
            _p("class", "token", "class", single=True),
            _p("type", "token", "type"),
            _p("service-provider", "reference", "serviceProvider", targets=("Organization",)),
            _p("participant", "reference", "participant.individual"),
        ]
    ),
    "MedicationRequest": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("encounter", "reference", "encounter", targets=("Encounter",)),
            _p("status", "token", "status", single=True),
            _p("intent", "token", "intent", single=True),
            _p("code", "token", "medicationCodeableConcept"),
            _p("medication", "reference", "medicationReference", targets=("Medication",)),
            _p("authoredon", "date", "authoredOn", single=True),
            _p("requester", "reference", "requester"),
        ]
    ),
    "Consent": dict(
        [
            _p("patient", "reference", "patient", targets=("Patient",)),
            _p("status", "token", "status", single=True),
            _p("scope", "token", "scope"),
            _p("category", "token", "category"),
            _p("date", "date", "dateTime", single=True),
            _p("period", "date", "provision.period", single=True),
            _p("actor", "reference", "provision.actor.reference"),
            _p("organization", "reference", "organization", targets=("Organization",)),
        ]
    ),
    "AuditEvent": dict(
        [
            # R4: AuditEvent.agent.who.where(resolve() is Patient) | AuditEvent.entity.what.where(... Patient)
            _p("patient", "reference", "agent.who", "entity.what", targets=("Patient",)),
            _p("agent", "reference", "agent.who"),
            _p("entity", "reference", "entity.what"),
            _p("date", "date", "recorded", single=True),
            _p("type", "token", "type", single=True),
            _p("subtype", "token", "subtype"),
            _p("action", "token", "action", single=True),
            _p("outcome", "token", "outcome", single=True),
        ]
    ),
    "AllergyIntolerance": dict(
        [
            _p("patient", "reference", "patient", targets=("Patient",)),
            _p("code", "token", "code"),
            _p("clinical-status", "token", "clinicalStatus"),
            _p("date", "date", "recordedDate", single=True),
        ]
    ),
    "Immunization": dict(
        [
            _p("patient", "reference", "patient", targets=("Patient",)),
            _p("vaccine-code", "token", "vaccineCode"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "occurrence[x]", single=True),
        ]
    ),
    "Procedure": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=("Patient", "Group")),
            _p("code", "token", "code"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "performed[x]", single=True),
        ]
    ),
    "DiagnosticReport": dict(
        [
            _p("patient", "reference", "subject", targets=("Patient",)),
            _p("subject", "reference", "subject", targets=_SUBJECT_TARGETS),
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("status", "token", "status", single=True),
            _p("date", "date", "effective[x]", single=True),
        ]
    ),
    "Device": dict(
        [_p("patient", "reference", "patient", targets=("Patient",)), _p("type", "token", "type")]
    ),
    "Practitioner": dict(
        [
            _p("identifier", "token", "identifier"),
            _p("name", "string", "name"),
            _p("family", "string", "name.family"),
            _p("given", "string", "name.given"),
        ]
    ),
    "Organization": dict([_p("identifier", "token", "identifier"), _p("name", "string", "name")]),
    "Location": dict([_p("identifier", "token", "identifier"), _p("name", "string", "name")]),
}

SEARCH_PARAMETERS: Final[Mapping[str, Mapping[str, SearchParamDef]]] = {
    rtype: {**COMMON_PARAMETERS, **params} for rtype, params in _TYPE_PARAMETERS.items()
}


def search_parameters(resource_type: str) -> Mapping[str, SearchParamDef]:
    """The parameters searchable on a type: its own (SEARCH_PARAMETERS) or only `_id` and `_lastUpdated`."""
    return SEARCH_PARAMETERS.get(resource_type, COMMON_PARAMETERS)


# --- query model ---------------------------------------------------------------------------------------------

DatePrefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
DATE_PREFIXES: Final[frozenset[str]] = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})


@dataclass(frozen=True)
class Interval:
    """A half-open range [lo, hi) of UTC instants in microseconds since 0001-01-01T00:00Z (None = unbounded)."""

    lo: int | None
    hi: int | None

    def overlaps(self, other: Interval) -> bool:
        return (self.lo is None or other.hi is None or self.lo < other.hi) and (
            other.lo is None or self.hi is None or other.lo < self.hi
        )


@dataclass(frozen=True)
class TokenValue:
    """`[system]|[code]`: system None = any system, "" = no system (`|code`); code None = any code (`system|`)."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class StringValue:
    text: str
    folded: str


@dataclass(frozen=True)
class DateValue:
    prefix: DatePrefix
    range: Interval  # implicit range of the (partial) date given
    text: str


@dataclass(frozen=True)
class ReferenceValue:
    """`Type/id` (type may be None for a bare id), or `url` for a reference that is not a FHIR resource URL."""

    type: str | None
    id: str | None
    url: str | None = None


@dataclass(frozen=True)
class NumberValue:
    """`[prefix]number[|system|code]`; `range` is the implicit precision range (5.4 -> [5.35, 5.45))."""

    prefix: DatePrefix
    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class UriValue:
    uri: str


SearchValue = TokenValue | StringValue | DateValue | ReferenceValue | NumberValue | UriValue


@dataclass(frozen=True)
class SearchCriterion:
    """One `name[:modifier]=v1,v2` parameter: true when any value matches (OR). Criteria are AND-ed.

    `missing` is set for `:missing=true|false` (then `values` is empty).
    """

    param: SearchParamDef
    modifier: str | None
    values: tuple[SearchValue, ...]
    missing: bool | None = None


@dataclass(frozen=True)
class SearchQuery:
    resource_type: str
    criteria: tuple[SearchCriterion, ...]
    now: datetime | None = None  # for `ap` on dates (10% of the gap to now); None: 10% of the value's span


@dataclass(frozen=True)
class TermFilter:
    """Every result carries at least one of `any_of` among its terms for `param` (conjunction of these)."""

    param: str
    any_of: frozenset[str]


@dataclass(frozen=True)
class ResourceMeta:
    """What the store knows about a stored resource that the searched JSON may not carry."""

    id: str
    last_updated: datetime


# --- parsing -------------------------------------------------------------------------------------------------

# Result parameters (R4 3.1.1.5 and search.html#return) and paging names: they select nothing, so parsing sets
# them aside uninterpreted; their values are the business of whoever renders the results (healthledger.api).
RESULT_PARAMETERS: Final = frozenset(
    {"_count", "_offset", "_summary", "_sort", "_format", "_total", "_elements", "_pretty", "_cursor", "_page"}
)
_UNSUPPORTED_RESULT_PARAMS: Final = frozenset({"_include", "_revinclude", "_contained", "_containedType"})
_MODIFIERS: Final[Mapping[str, frozenset[str]]] = {
    "token": frozenset({"not", "missing"}),
    "string": frozenset({"exact", "contains", "missing"}),
    "date": frozenset({"missing"}),
    "reference": frozenset({"missing"}),  # plus a resource type, e.g. subject:Patient
    "quantity": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "uri": frozenset({"missing"}),
}
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _say(text: str, limit: int = 40) -> str:
    """A parameter name from input, safe to echo (names are not PHI; values never are echoed)."""
    return text[:limit] if _PARAM_NAME.match(text) else "(invalid name)"


def parse_search(
    resource_type: str, params: Sequence[tuple[str, str]], *, now: datetime | None = None
) -> SearchQuery:
    """Parse `(name, value)` pairs (already URL-decoded) of a type search; UnsupportedSearch on anything unknown.

    Repeated parameters are AND-ed, commas inside one value are OR-ed (R4 3.1.1.4.12 / .13); `\\,` `\\|` `\\$`
    escape. A parameter with an empty value is ignored, and so are result parameters (RESULT_PARAMETERS).
    """
    if not is_resource_type(resource_type):
        raise UnsupportedSearch(f"Unknown resource type '{_say(resource_type)}'", status=404)
    defs = search_parameters(resource_type)
    criteria: list[SearchCriterion] = []
    if len(params) > MAX_CRITERIA * 2:
        raise UnsupportedSearch(f"Too many search parameters (at most {MAX_CRITERIA})")
    for name, value in params:
        if not isinstance(name, str) or not isinstance(value, str):
            raise UnsupportedSearch("Search parameters must be text")
        if len(value) > MAX_VALUE_LENGTH * 4:
            raise UnsupportedSearch(f"Value of '{_say(name)}' is too long")
        base, _, modifier = name.partition(":")
        if base in RESULT_PARAMETERS:
            continue
        if base in _UNSUPPORTED_RESULT_PARAMS:
            raise UnsupportedSearch(f"'{base}' is not supported")
        definition = defs.get(base)
        if definition is None:
            raise UnsupportedSearch(f"Unknown search parameter '{_say(base)}' for {resource_type}")
        if value == "":
            continue  # R4 3.1.1: a parameter with no value is ignored
        criteria.append(_parse_criterion(definition, modifier if ":" in name else None, value, name))
    if len(criteria) > MAX_CRITERIA:
        raise UnsupportedSearch(f"Too many search parameters (at most {MAX_CRITERIA})")
    return SearchQuery(resource_type, tuple(criteria), now)


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split on `sep` not preceded by a backslash, then unescape `\\,` `\\|` `\\$` `\\\\` (R4 3.1.1.4.13)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            current.append(ch + value[i + 1])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text)


def _parse_criterion(
    definition: SearchParamDef, modifier: str | None, value: str, raw_name: str
) -> SearchCriterion:
    type_ = definition.type
    if modifier is not None:
        allowed = _MODIFIERS[type_]
        if modifier not in allowed and not (type_ == "reference" and is_resource_type(modifier)):
            raise UnsupportedSearch(
                f"Modifier ':{_say(modifier, 30)}' is not supported on '{definition.name}'"
            )
        if (
            type_ == "reference"
            and definition.targets
            and is_resource_type(modifier)
            and modifier not in definition.targets
        ):
            raise UnsupportedSearch(f"'{definition.name}' cannot refer to {modifier}")
    if modifier == "missing":
        if value not in ("true", "false"):
            raise UnsupportedSearch(f"':missing' on '{definition.name}' takes true or false")
        return SearchCriterion(definition, modifier, (), missing=value == "true")
    pieces = split_unescaped(value, ",")
    if len(pieces) > MAX_OR_VALUES:
        raise UnsupportedSearch(f"Too many alternatives in '{definition.name}' (at most {MAX_OR_VALUES})")
    parsed: list[SearchValue] = []
    for piece in pieces:
        if piece == "":
            raise UnsupportedSearch(f"Empty alternative in '{definition.name}'")
        if len(piece) > MAX_VALUE_LENGTH:
            raise UnsupportedSearch(f"A value of '{definition.name}' is too long")
        parsed.append(_PARSERS[type_](definition, modifier, piece))
    return SearchCriterion(definition, modifier, tuple(parsed))


def _parse_token(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    parts = split_unescaped(piece, "|")
    if len(parts) == 1:
        return TokenValue(None, _unescape(parts[0]))
    if len(parts) == 2:
        system, code = (_unescape(p) for p in parts)
        if system == "" and code == "":
            raise UnsupportedSearch(f"Token value of '{definition.name}' needs a system or a code")
        return TokenValue(system, code or None)
    raise UnsupportedSearch(f"Token value of '{definition.name}' has more than one unescaped '|'")


def _parse_string(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    text = _unescape(piece)
    return StringValue(text, fold(text))


def _parse_date(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    prefix, text = _split_prefix(piece)
    # An unencoded `+` in a query string arrives as a space (application/x-www-form-urlencoded).
    text = re.sub(r" (\d{2}:\d{2})$", r"+\1", text)
    interval = date_range(text)
    if interval is None:
        raise UnsupportedSearch(
            f"Date value of '{definition.name}' must be [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|+hh:mm]]]]"
        )
    return DateValue(prefix, interval, text)


def _parse_reference(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    ref = _unescape(piece)
    type_hint = modifier if modifier is not None and is_resource_type(modifier) else None
    parsed = parse_reference(ref)
    if parsed.type is None and parsed.id is not None:
        return ReferenceValue(type_hint, parsed.id)
    if parsed.type is not None:
        if type_hint is not None and parsed.type != type_hint:
            raise UnsupportedSearch(f"Reference type of '{definition.name}' contradicts its ':Type' modifier")
        if definition.targets and parsed.type not in definition.targets:
            raise UnsupportedSearch(f"'{definition.name}' cannot refer to {parsed.type}")
    return parsed


def _parse_quantity(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    parts = split_unescaped(piece, "|")
    if len(parts) not in (1, 3):
        raise UnsupportedSearch(f"Quantity value of '{definition.name}' must be [prefix]number[|system|code]")
    number = _parse_number(definition, modifier, parts[0])
    assert isinstance(number, NumberValue)
    if len(parts) == 3:
        system, code = _unescape(parts[1]) or None, _unescape(parts[2]) or None
        return NumberValue(number.prefix, number.value, number.low, number.high, system, code)
    return number


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?$")


def _parse_number(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    prefix, text = _split_prefix(piece)
    if not _NUMBER.match(text):
        raise UnsupportedSearch(f"Value of '{definition.name}' must be [prefix]number")
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise UnsupportedSearch(f"Value of '{definition.name}' must be [prefix]number") from None
    # R4 3.1.1.4.2: the implicit range is half a unit of the last significant digit either side.
    half = Decimal(1).scaleb(value.as_tuple().exponent) / 2  # type: ignore[arg-type]
    return NumberValue(prefix, value, value - half, value + half)


def _parse_uri(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    return UriValue(_unescape(piece))


_PARSERS: Final[Mapping[str, Callable[[SearchParamDef, str | None, str], SearchValue]]] = {
    "token": _parse_token,
    "string": _parse_string,
    "date": _parse_date,
    "reference": _parse_reference,
    "quantity": _parse_quantity,
    "number": _parse_number,
    "uri": _parse_uri,
}


def _split_prefix(piece: str) -> tuple[DatePrefix, str]:
    head = piece[:2]
    if head in DATE_PREFIXES and len(piece) > 2 and not piece[2:3].isalpha():
        return head, piece[2:]  # type: ignore[return-value]
    return "eq", piece


# --- normalisation of values ---------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Case- and accent-insensitive form for string search: NFKD, drop combining marks, casefold, squeeze spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    again = unicodedata.normalize("NFKD", stripped)  # casefold may yield decomposable characters
    return " ".join("".join(ch for ch in again if not unicodedata.combining(ch)).split())


_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH: Final = datetime(1, 1, 1, tzinfo=UTC)
_MAX_US: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
) + 1


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def date_range(text: str) -> Interval | None:
    """The implicit range of a FHIR date/dateTime/instant (R4 3.1.1.4.6), or None if it is not one.

    `2020` -> all of 2020, `2020-05` -> May, `2020-05-01T10:00Z` -> that minute; no timezone = UTC.
    """
    match = _DATE.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is None:
            return _span(datetime(year, 1, 1, tzinfo=UTC), "year")
        month = int(g["m"])
        if g["d"] is None:
            return _span(datetime(year, month, 1, tzinfo=UTC), "month")
        day = int(g["d"])
        if g["H"] is None:
            return _span(datetime(year, month, day, tzinfo=UTC), "day")
        tz = UTC if g["tz"] in (None, "Z") else _offset(g["tz"])
        second = min(int(g["S"] or 0), 59)  # a leap second (:60) is taken as :59
        fraction = g["f"] or ""
        local = datetime(
            year, month, day, int(g["H"]), int(g["M"]), second, int((fraction + "000000")[:6]), tz
        )
        start = _micros(local.astimezone(UTC))
        if g["S"] is None:
            unit = 60_000_000
        elif not fraction:
            unit = 1_000_000
        else:
            unit = max(1, 10 ** (6 - min(len(fraction), 6)))
        return Interval(start, start + unit)
    except (ValueError, OverflowError):
        return None


@lru_cache(maxsize=256)
def _offset(tz: str) -> timezone:
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("timezone offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _span(start: datetime, unit: str) -> Interval:
    lo = _micros(start)
    try:
        if unit == "year":
            end = start.replace(year=start.year + 1)
        elif unit == "month":
            end = (
                start.replace(year=start.year + 1, month=1)
                if start.month == 12
                else start.replace(month=start.month + 1)
            )
        else:
            end = start + timedelta(days=1)
        return Interval(lo, _micros(end))
    except (ValueError, OverflowError):
        return Interval(lo, _MAX_US)


def instant_range(moment: datetime) -> Interval:
    """A stored timestamp as a range (one microsecond wide); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    start = _micros(moment.astimezone(UTC))
    return Interval(start, start + 1)


_REF = re.compile(
    r"^(?:(?P<base>.*)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def parse_reference(reference: str) -> ReferenceValue:
    """`Patient/1`, `http://x/fhir/Patient/1/_history/2` -> (Patient, 1); a bare id -> (None, id); else url."""
    match = _REF.match(reference)
    if match is not None and is_resource_type(match["type"]):
        return ReferenceValue(match["type"], match["id"])
    if _ID.match(reference):
        return ReferenceValue(None, reference)
    return ReferenceValue(None, None, reference)


# --- extraction of values from a resource --------------------------------------------------------------------


def _walk(node: Any, segments: Sequence[str]) -> Iterator[Any]:
    if not segments:
        if isinstance(node, list):
            yield from (item for item in node if item is not None)
        elif node is not None:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, segments)
        return
    if not isinstance(node, Mapping):
        return
    head, rest = segments[0], segments[1:]
    if head.endswith("[x]"):
        stem = head[:-3]
        for key, value in node.items():
            if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper():
                yield from _walk(value, rest)
    elif head in node:
        yield from _walk(node[head], rest)


def values_at(resource: Mapping[str, Any], path: str) -> Iterator[Any]:
    """Elements at a dotted path (`subject`, `name.given`, `effective[x]`), arrays flattened, nulls skipped."""
    return _walk(resource, _segments(path))


def element_values(resource: Mapping[str, Any], definition: SearchParamDef) -> list[Any]:
    """The raw elements a parameter reads (arrays flattened)."""
    out: list[Any] = []
    for path in definition.paths:
        out.extend(_walk(resource, _segments(path)))
    return out


@lru_cache(maxsize=1024)
def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _tokens(definition: SearchParamDef, element: Any) -> Iterator[TokenValue]:
    if isinstance(element, bool):
        yield TokenValue(definition.system, "true" if element else "false")
    elif isinstance(element, str):
        yield TokenValue(definition.system, element)
    elif isinstance(element, Mapping):
        if "coding" in element:  # CodeableConcept
            codings = element.get("coding")
            for coding in codings if isinstance(codings, list) else ():
                if isinstance(coding, Mapping):
                    yield from _tokens(definition, coding)
        elif "code" in element or "system" in element and "value" not in element:  # Coding
            code = element.get("code")
            if isinstance(code, str):
                system = element.get("system")
                yield TokenValue(system if isinstance(system, str) else None, code)
        elif "value" in element:  # Identifier, ContactPoint
            value = element.get("value")
            if isinstance(value, str):
                system = element.get("system")
                yield TokenValue(system if isinstance(system, str) else None, value)


_NAME_PARTS: Final = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS: Final = ("text", "line", "city", "district", "state", "postalCode", "country")


def _strings(element: Any) -> Iterator[str]:
    if isinstance(element, str):
        yield element
    elif isinstance(element, Mapping):
        for part in (*_NAME_PARTS, *_ADDRESS_PARTS, "display", "name"):
            value = element.get(part)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))


def _date_ranges(element: Any) -> Iterator[Interval]:
    if isinstance(element, str):
        interval = date_range(element)
        if interval is not None:
            yield interval
    elif isinstance(element, Mapping) and ("start" in element or "end" in element):  # Period (R4 2.24.0.9)
        start = date_range(element["start"]) if isinstance(element.get("start"), str) else None
        end = date_range(element["end"]) if isinstance(element.get("end"), str) else None
        if "start" in element and start is None or "end" in element and end is None:
            return  # unparseable: not searchable (consistently for terms and matching)
        yield Interval(start.lo if start else None, end.hi if end else None)


def _references(definition: SearchParamDef, element: Any) -> Iterator[ReferenceValue]:
    if isinstance(element, Mapping):
        ref = element.get("reference")
        if isinstance(ref, str) and ref and not ref.startswith("#"):
            parsed = parse_reference(ref)
            if parsed.type is None and parsed.id is not None:
                parsed = ReferenceValue(None, None, ref)  # a bare id is not a valid reference in a resource
            if definition.targets and parsed.type not in definition.targets:
                return
            yield parsed


def _quantities(element: Any) -> Iterator[tuple[Decimal, str | None, str | None, str | None]]:
    if isinstance(element, Mapping):
        value = element.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
            except InvalidOperation:  # pragma: no cover
                return
            if not number.is_finite():
                return
            system, code, unit = element.get("system"), element.get("code"), element.get("unit")
            yield (
                number,
                system if isinstance(system, str) else None,
                code if isinstance(code, str) else None,
                unit if isinstance(unit, str) else None,
            )


# --- blind-index terms ---------------------------------------------------------------------------------------


def index_terms(resource: Mapping[str, Any]) -> dict[str, set[str]]:
    """Parameter name -> the normalised terms to blind-index (see the module docstring). `_id` is not included."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return {}
    out: dict[str, set[str]] = {}
    for name, definition in search_parameters(resource_type).items():
        if name in COMMON_PARAMETERS:
            continue
        terms = _terms_for(definition, element_values(resource, definition))
        if terms:
            out[name] = terms
    return out


def _terms_for(definition: SearchParamDef, elements: list[Any]) -> set[str]:
    terms: set[str] = set()
    kind = definition.type
    dates = 0
    for element in elements:
        if kind == "token":
            for token in _tokens(definition, element):
                terms.update(_token_terms(token))
        elif kind == "string":
            for text in _strings(element):
                terms.update(_string_terms(fold(text)))
        elif kind == "date":
            for interval in _date_ranges(element):
                terms.update(date_bucket_terms(interval))
                dates += 1
        elif kind == "reference":
            for ref in _references(definition, element):
                terms.update(_reference_terms(ref))
        elif kind == "quantity":
            for _number, system, code, unit in _quantities(element):
                for c in {code, unit} - {None}:
                    terms.add(f"c:{c}")
                    if system is not None:
                        terms.add(f"sc:{system}|{c}")
        elif kind == "uri" and isinstance(element, str):
            terms.add(f"e:{element}")
    if dates > 1 and definition.single:  # malformed data: keep the candidate_filters intersection sound
        terms.update(("y:*", "m:*"))
    return terms


def _token_terms(token: TokenValue) -> set[str]:
    code = token.code or ""
    if token.system:
        return {f"c:{code}", f"s:{token.system}", f"sc:{token.system}|{code}"}
    return {f"c:{code}", f"n:{code}"}


def _string_terms(folded: str) -> set[str]:
    terms = {f"e:{folded}"}
    terms.update(f"p:{folded[:k]}" for k in STRING_PREFIX_LENGTHS if len(folded) >= k)
    return terms


def _reference_terms(ref: ReferenceValue) -> set[str]:
    if ref.type is not None and ref.id is not None:
        return {f"r:{ref.type}/{ref.id}", f"i:{ref.id}"}
    return {f"u:{ref.url}"} if ref.url else set()


def _year_month(us: int) -> tuple[int, int]:
    moment = _EPOCH + timedelta(microseconds=us)
    return moment.year, moment.month


def _months_between(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """UTC (year, month) pairs that [lo, hi) overlaps (hi exclusive, lo < hi)."""
    year, month = _year_month(lo)
    last = _year_month(hi - 1)
    while (year, month) <= last:
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def date_bucket_terms(interval: Interval) -> set[str]:
    """`y:` and `m:` bucket terms of a date value's range (`y:*` / `m:*` when too wide or open)."""
    if interval.lo is None or interval.hi is None or interval.hi <= interval.lo:
        return {"y:*", "m:*"}
    first_year, last_year = _year_month(interval.lo)[0], _year_month(interval.hi - 1)[0]
    terms = (
        {"y:*"}
        if last_year - first_year + 1 > DATE_MAX_YEAR_TERMS
        else {f"y:{y:04d}" for y in range(first_year, last_year + 1)}
    )
    months: list[tuple[int, int]] = []
    for ym in _months_between(interval.lo, interval.hi):
        months.append(ym)
        if len(months) > DATE_MAX_MONTH_TERMS:
            break
    if len(months) > DATE_MAX_MONTH_TERMS:
        terms.add("m:*")
    else:
        terms.update(f"m:{y:04d}-{m:02d}" for y, m in months)
    return terms


# --- candidate filters ---------------------------------------------------------------------------------------


def candidate_filters(query: SearchQuery) -> list[TermFilter]:
    """Term filters every match satisfies (module INVARIANT); the store keeps rows meeting all of them."""
    filters: list[TermFilter] = []
    windows: dict[str, Interval] = {}
    for criterion in query.criteria:
        definition = criterion.param
        if criterion.missing is not None or criterion.modifier in ("not", "contains"):
            continue
        if definition.name == "_lastUpdated":
            continue  # from the store's metadata, not terms: see last_updated_window
        if definition.type == "date":
            hull = _date_hull(criterion, query.now)
            if hull is None:
                continue
            if definition.single:
                # One value T meets every AND-ed window; intervals that meet pairwise share a point (Helly,
                # 1-D), so T meets their intersection, provided it is not empty. Resources holding several
                # values for a `single` parameter carry the `*` bucket terms, which every window admits.
                previous = windows.get(definition.name)
                both = hull if previous is None else _intersect(previous, hull)
                if both.lo is None or both.hi is None or both.lo < both.hi:
                    windows[definition.name] = both
            else:
                _add(filters, definition.name, _window_terms(hull))
            continue
        if definition.name == "_id":
            ids = {v.code for v in criterion.values if isinstance(v, TokenValue) and v.code and not v.system}
            if len(ids) == len(criterion.values):
                filters.append(TermFilter("_id", frozenset(ids)))
            continue
        terms: set[str] = set()
        narrowable = True
        for value in criterion.values:
            value_terms = _query_terms(definition, criterion.modifier, value)
            if value_terms is None:
                narrowable = False
                break
            terms |= value_terms
        if narrowable:
            filters.append(TermFilter(definition.name, frozenset(terms)))
    for name, window in windows.items():
        _add(filters, name, _window_terms(window))
    return filters


def _add(filters: list[TermFilter], name: str, terms: frozenset[str] | None) -> None:
    if terms is not None:
        filters.append(TermFilter(name, terms))


def _query_terms(definition: SearchParamDef, modifier: str | None, value: SearchValue) -> set[str] | None:
    """Terms of which a matching resource carries at least one; None when this value cannot be narrowed."""
    if isinstance(value, TokenValue):
        if value.system is None:
            return {f"c:{value.code}"}
        if value.system == "":
            return {f"n:{value.code}"}
        if value.code is None:
            return {f"s:{value.system}"}
        return {f"sc:{value.system}|{value.code}"}
    if isinstance(value, StringValue):
        if modifier == "exact":
            return {f"e:{value.folded}"}
        usable = [k for k in STRING_PREFIX_LENGTHS if k <= len(value.folded)]
        return {f"p:{value.folded[: usable[-1]]}"} if usable else None
    if isinstance(value, ReferenceValue):
        if value.type is not None and value.id is not None:
            return {f"r:{value.type}/{value.id}"}
        if value.id is not None:
            return (
                {f"r:{t}/{value.id}" for t in definition.targets} if definition.targets else {f"i:{value.id}"}
            )
        return {f"u:{value.url}"}
    if isinstance(value, NumberValue) and definition.type == "quantity":
        if value.code is None:
            return None
        return {f"sc:{value.system}|{value.code}"} if value.system else {f"c:{value.code}"}
    if isinstance(value, UriValue):
        return {f"e:{value.uri}"}
    return None


def _date_hull(criterion: SearchCriterion, now: datetime | None) -> Interval | None:
    """An interval every matching value's range overlaps (convex hull over the OR-ed values); None = unbounded."""
    lo: int | None = None
    hi: int | None = None
    for index, value in enumerate(criterion.values):
        assert isinstance(value, DateValue)
        window = _date_window(value, now)
        if window.lo is None and window.hi is None:
            return None
        if index == 0:
            lo, hi = window.lo, window.hi
        else:
            lo = None if lo is None or window.lo is None else min(lo, window.lo)
            hi = None if hi is None or window.hi is None else max(hi, window.hi)
    return Interval(lo, hi)


def _date_window(value: DateValue, now: datetime | None) -> Interval:
    """Where a target range T must reach for `value` to match (R4 3.1.1.4.2 prefix definitions)."""
    s = value.range
    assert s.lo is not None and s.hi is not None
    prefix = value.prefix
    if prefix == "eq":
        return s  # T inside S
    if prefix in ("gt", "sa"):
        return Interval(s.hi, None)  # T reaches above S
    if prefix == "ge":
        return Interval(s.lo, None)
    if prefix in ("lt", "eb"):
        return Interval(None, s.lo)
    if prefix == "le":
        return Interval(None, s.hi)
    if prefix == "ap":
        return _approximate(s, now)
    return Interval(None, None)  # ne


def _approximate(s: Interval, now: datetime | None) -> Interval:
    """`ap`: the value's range widened by 10% of the gap to now (R4 3.1.1.4.2), or 10% of its own span."""
    assert s.lo is not None and s.hi is not None
    if now is not None:
        gap = abs(instant_range(now).lo - s.lo)  # type: ignore[operator]
    else:
        gap = s.hi - s.lo
    slack = max(gap // 10, 1)
    return Interval(max(0, s.lo - slack), min(_MAX_US, s.hi + slack))


def _intersect(a: Interval, b: Interval) -> Interval:
    lo = b.lo if a.lo is None else a.lo if b.lo is None else max(a.lo, b.lo)
    hi = b.hi if a.hi is None else a.hi if b.hi is None else min(a.hi, b.hi)
    return Interval(lo, hi)


def _window_terms(window: Interval) -> frozenset[str] | None:
    if window.lo is None or window.hi is None:
        return None
    months: list[tuple[int, int]] = []
    for ym in _months_between(window.lo, window.hi):
        months.append(ym)
        if len(months) > DATE_QUERY_MAX_MONTHS:
            break
    if len(months) <= DATE_QUERY_MAX_MONTHS:
        return frozenset({"m:*", *(f"m:{y:04d}-{m:02d}" for y, m in months)})
    first_year, last_year = _year_month(window.lo)[0], _year_month(window.hi - 1)[0]
    if last_year - first_year + 1 > DATE_QUERY_MAX_YEARS:
        return None
    return frozenset({"y:*", *(f"y:{y:04d}" for y in range(first_year, last_year + 1))})


def interval_datetime(us: int) -> datetime:
    """Microseconds since 0001-01-01T00:00Z (an Interval bound) as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


# --- exact matching ------------------------------------------------------------------------------------------


def matches(resource: Mapping[str, Any], query: SearchQuery, meta: ResourceMeta) -> bool:
    """Whether the resource satisfies every criterion, with FHIR R4 semantics (the exact post-filter)."""
    if resource.get("resourceType") != query.resource_type:
        return False
    return all(_criterion_holds(resource, criterion, meta, query.now) for criterion in query.criteria)


def _criterion_holds(
    resource: Mapping[str, Any], criterion: SearchCriterion, meta: ResourceMeta, now: datetime | None
) -> bool:
    definition = criterion.param
    elements: list[Any]
    if definition.name == "_id":
        elements = [meta.id]
    elif definition.name == "_lastUpdated":
        elements = [meta.last_updated]
    else:
        elements = element_values(resource, definition)
    present = _present_values(definition, elements)
    if criterion.missing is not None:
        return criterion.missing == (not present)
    if criterion.modifier == "not":  # R4 3.1.1.5.7: no value matches (incl. resources without the element)
        return not any(
            _value_matches(definition, criterion.modifier, value, present, now) for value in criterion.values
        )
    return any(
        _value_matches(definition, criterion.modifier, value, present, now) for value in criterion.values
    )


def _present_values(definition: SearchParamDef, elements: list[Any]) -> list[Any]:
    kind = definition.type
    out: list[Any] = []
    for element in elements:
        if isinstance(element, datetime):
            out.append(instant_range(element))
        elif kind == "token":
            out.extend(_tokens(definition, element))
        elif kind == "string":
            out.extend(_strings(element))
        elif kind == "date":
            out.extend(_date_ranges(element))
        elif kind == "reference":
            out.extend(_references(definition, element))
        elif kind == "quantity":
            out.extend(_quantities(element))
        elif kind == "uri" and isinstance(element, str):
            out.append(element)
        elif kind == "number" and isinstance(element, int | float) and not isinstance(element, bool):
            out.append((Decimal(repr(element)), None, None, None))
    return out


def _value_matches(
    definition: SearchParamDef,
    modifier: str | None,
    value: SearchValue,
    present: list[Any],
    now: datetime | None,
) -> bool:
    if isinstance(value, TokenValue):
        return any(_token_matches(value, token) for token in present)
    if isinstance(value, StringValue):
        if modifier == "exact":
            return any(text == value.text for text in present)
        if modifier == "contains":
            return any(value.folded in fold(text) for text in present)
        return any(fold(text).startswith(value.folded) for text in present)
    if isinstance(value, DateValue):
        return any(date_prefix_matches(value.prefix, value.range, target, now) for target in present)
    if isinstance(value, ReferenceValue):
        return any(_reference_matches(definition, value, ref) for ref in present)
    if isinstance(value, NumberValue):
        return any(_number_matches(value, q) for q in present)
    if isinstance(value, UriValue):
        return any(uri == value.uri for uri in present)
    return False  # pragma: no cover


def _token_matches(query: TokenValue, token: TokenValue) -> bool:
    if query.system is None:  # code in any system
        return token.code == query.code
    if query.system == "":  # |code: no system
        return not token.system and token.code == query.code
    if token.system != query.system:
        return False
    return query.code is None or token.code == query.code


def date_prefix_matches(prefix: str, s: Interval, t: Interval, now: datetime | None = None) -> bool:
    """R4 3.1.1.4.2 for a search range S and a target range T (T may be open-ended, e.g. a Period)."""
    assert s.lo is not None and s.hi is not None
    t_lo = -1 if t.lo is None else t.lo
    t_hi = _MAX_US + 1 if t.hi is None else t.hi
    contains = s.lo <= t_lo and t_hi <= s.hi
    if prefix == "eq":
        return contains
    if prefix == "ne":
        return not contains
    if prefix == "gt":
        return t_hi > s.hi
    if prefix == "lt":
        return t_lo < s.lo
    if prefix == "ge":
        return t_hi > s.hi or contains
    if prefix == "le":
        return t_lo < s.lo or contains
    if prefix == "sa":
        return t_lo >= s.hi
    if prefix == "eb":
        return t_hi <= s.lo
    if prefix == "ap":
        return _approximate(s, now).overlaps(Interval(t_lo, t_hi))
    return False


def _reference_matches(definition: SearchParamDef, query: ReferenceValue, ref: ReferenceValue) -> bool:
    if query.id is not None and query.type is None:
        return ref.id == query.id and (not definition.targets or ref.type in definition.targets)
    if query.id is not None:
        return ref.type == query.type and ref.id == query.id
    return ref.url == query.url


def _number_matches(query: NumberValue, quantity: tuple[Decimal, str | None, str | None, str | None]) -> bool:
    number, system, code, unit = quantity
    if query.code is not None:
        if query.system is not None and system != query.system:
            return False
        if query.code not in (code, unit):
            return False
    prefix = query.prefix
    if prefix == "eq":
        return query.low <= number < query.high
    if prefix == "ne":
        return not query.low <= number < query.high
    if prefix in ("gt", "sa"):
        return number > query.value
    if prefix in ("lt", "eb"):
        return number < query.value
    if prefix == "ge":
        return number >= query.value
    if prefix == "le":
        return number <= query.value
    if prefix == "ap":  # within 10% of the value (R4 3.1.1.4.2)
        slack = abs(query.value) / 10
        return query.value - slack <= number <= query.value + slack
    return False
