"""The search query model and `parse_search`: `(name, value)` pairs to typed criteria (R4 3.1.1.4).

Prefixes (eq ne gt lt ge le sa eb ap), `[system]|[code]` tokens, implicit ranges of dates and numbers,
references with a `:Type` modifier, `number|system|code` quantities and uris; `,` ORs values, repeated
parameters AND. Result parameters (`_count`, `_sort`, ...) select nothing and are set aside uninterpreted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final, Literal

from fhir_adapters.errors import InvalidSearchValue, UnsupportedSearch
from fhir_adapters.search.dates import Interval, date_range
from fhir_adapters.search.parameters import SearchParamDef, search_parameters
from fhir_adapters.search.references import ReferenceValue, parse_reference
from fhir_adapters.search.strings import fold
from fhir_adapters.validation import is_resource_type

MAX_OR_VALUES: Final = 100  # comma-separated alternatives in one parameter
MAX_CRITERIA: Final = 50  # parameters in one query
MAX_VALUE_LENGTH: Final = 1024

DatePrefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
DATE_PREFIXES: Final[frozenset[str]] = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})


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
class HasClause:
    """`_has:Type:param:criterion=value` (R4 3.1.1.5.10, reverse chaining): resources of the searched type
    that a resource of `source_type` matching `inner` refers to through its reference parameter `reference`."""

    source_type: str
    reference: str
    inner: SearchQuery
    text: str  # the parameter name as given (for links)


@dataclass(frozen=True)
class SearchQuery:
    resource_type: str
    criteria: tuple[SearchCriterion, ...]
    now: datetime | None = None  # for `ap` on dates (10% of the gap to now, at least the value's precision)
    # Parameters set aside under lenient handling (R4 3.1.1.4 "handling"): unknown names, unsupported
    # modifiers. Each is named once, so the answer can say it was ignored (search.mode = outcome).
    ignored: tuple[str, ...] = ()
    # Reverse chains (`_has`): resolved by whoever runs the query (the store), as the caller sees the sources.
    has: tuple[HasClause, ...] = ()


# Result parameters (R4 3.1.1.5) and paging names: they select nothing, so parsing sets them aside
# uninterpreted; their values are the business of whoever renders the results (healthledger.api).
RESULT_PARAMETERS: Final = frozenset(
    {"_count", "_offset", "_summary", "_sort", "_format", "_total", "_elements", "_pretty"}
    | {"_cursor", "_page"}  # paging
)
# Result controls interpreted by whoever runs the search (healthledger.api + store): set aside here too.
CONTROL_PARAMETERS: Final = frozenset({"_include", "_revinclude"})
_UNSUPPORTED_RESULT_PARAMS: Final = frozenset({"_contained", "_containedType"})
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


def _say_param(name: str) -> str:
    """A parameter name with its modifier or chain (`name:exact`, `_has:Observation:patient:code`), safe to echo."""
    return name[:80] if all(_PARAM_NAME.match(part) for part in name.split(":")) else "(invalid name)"


def _say(text: str, limit: int = 40) -> str:
    """A parameter name from input, safe to echo (names are not PHI; values never are echoed)."""
    return text[:limit] if _PARAM_NAME.match(text) else "(invalid name)"


def parse_search(
    resource_type: str, params: Sequence[tuple[str, str]], *, now: datetime | None = None, strict: bool = True
) -> SearchQuery:
    """Parse `(name, value)` pairs (already URL-decoded) of a type search.

    Repeated parameters are AND-ed, commas inside one value are OR-ed (R4 3.1.1.4.12 / .13); `\\,` `\\|` `\\$`
    escape. A parameter with an empty value is ignored, and so are result parameters (RESULT_PARAMETERS).
    `strict` (the client sent `Prefer: handling=strict`): UnsupportedSearch on an unknown parameter or
    modifier. Lenient (FHIR's default, R4 3.1.1.4): those are left out and named in `ignored`. A value that
    does not parse is an error either way: ignoring it would widen the search behind the client's back.
    """
    if not is_resource_type(resource_type):
        raise UnsupportedSearch(f"Unknown resource type '{_say(resource_type)}'", status=404)
    defs = search_parameters(resource_type)
    criteria: list[SearchCriterion] = []
    ignored: list[str] = []
    has: list[HasClause] = []

    def unsupported(message: str, name: str) -> None:
        if strict:
            raise UnsupportedSearch(message)
        shown = _say_param(name)
        if shown not in ignored:
            ignored.append(shown)
    if len(params) > MAX_CRITERIA * 2:
        raise UnsupportedSearch(f"Too many search parameters (at most {MAX_CRITERIA})")
    for name, value in params:
        if not isinstance(name, str) or not isinstance(value, str):
            raise UnsupportedSearch("Search parameters must be text")
        if len(value) > MAX_VALUE_LENGTH * 4:
            raise InvalidSearchValue(f"Value of '{_say(name)}' is too long")
        base, _, modifier = name.partition(":")
        if base in RESULT_PARAMETERS or base in CONTROL_PARAMETERS:
            continue
        if base == "_has":
            if value == "":
                continue  # R4 3.1.1: a parameter with no value is ignored (whatever its chain names)
            clause = _parse_has(resource_type, name, value, now, strict)
            if clause is None:
                unsupported(f"'{_say(name, 80)}' is not a supported _has (_has:Type:reference:parameter)", name)
            else:
                has.append(clause)
            continue
        if base in _UNSUPPORTED_RESULT_PARAMS:
            unsupported(f"'{base}' is not supported", base)
            continue
        definition = defs.get(base)
        if definition is None:
            unsupported(f"Unknown search parameter '{_say(base)}' for {resource_type}", base)
            continue
        if value == "":
            continue  # R4 3.1.1: a parameter with no value is ignored
        if modifier and not _modifier_allowed(definition, modifier):
            unsupported(f"Modifier ':{_say(modifier, 30)}' is not supported on '{definition.name}'", name)
            continue
        criteria.append(_parse_criterion(definition, modifier if ":" in name else None, value))
    if len(criteria) + len(has) > MAX_CRITERIA:
        raise UnsupportedSearch(f"Too many search parameters (at most {MAX_CRITERIA})")
    return SearchQuery(resource_type, tuple(criteria), now, tuple(ignored), tuple(has))


def _modifier_allowed(definition: SearchParamDef, modifier: str) -> bool:
    if definition.type == "reference" and is_resource_type(modifier):
        return True  # `subject:Patient`; whether the type is a target is checked (an error) when parsing
    return modifier in _MODIFIERS[definition.type]


def _parse_has(
    resource_type: str, name: str, value: str, now: datetime | None, strict: bool
) -> HasClause | None:
    """`_has:Source:reference:parameter` (one level; R4 3.1.1.5.10). None when it names nothing we know."""
    parts = name.split(":")
    if len(parts) != 4:
        return None
    _, source, reference, inner_name = parts
    if not is_resource_type(source):
        return None
    definition = search_parameters(source).get(reference)
    if definition is None or definition.type != "reference":
        return None
    if definition.targets and resource_type not in definition.targets:
        return None
    if inner_name.partition(":")[0] in ("_has", *RESULT_PARAMETERS, *CONTROL_PARAMETERS):
        return None
    inner = parse_search(source, [(inner_name, value)], now=now, strict=strict)
    if inner.ignored or not inner.criteria:
        return None
    return HasClause(source, reference, inner, name)


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


def _parse_criterion(definition: SearchParamDef, modifier: str | None, value: str) -> SearchCriterion:
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
            raise InvalidSearchValue(f"':missing' on '{definition.name}' takes true or false")
        return SearchCriterion(definition, modifier, (), missing=value == "true")
    pieces = split_unescaped(value, ",")
    if len(pieces) > MAX_OR_VALUES:
        raise UnsupportedSearch(f"Too many alternatives in '{definition.name}' (at most {MAX_OR_VALUES})")
    parsed: list[SearchValue] = []
    for piece in pieces:
        if piece == "":
            raise InvalidSearchValue(f"Empty alternative in '{definition.name}'")
        if len(piece) > MAX_VALUE_LENGTH:
            raise InvalidSearchValue(f"A value of '{definition.name}' is too long")
        parsed.append(_PARSERS[type_](definition, modifier, piece))
    return SearchCriterion(definition, modifier, tuple(parsed))


def _parse_token(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    parts = split_unescaped(piece, "|")
    if len(parts) == 1:
        return TokenValue(None, _unescape(parts[0]))
    if len(parts) == 2:
        system, code = (_unescape(p) for p in parts)
        if system == "" and code == "":
            raise InvalidSearchValue(f"Token value of '{definition.name}' needs a system or a code")
        return TokenValue(system, code or None)
    raise InvalidSearchValue(f"Token value of '{definition.name}' has more than one unescaped '|'")


def _parse_string(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    text = _unescape(piece)
    return StringValue(text, fold(text))


def _parse_date(definition: SearchParamDef, modifier: str | None, piece: str) -> SearchValue:
    prefix, text = _split_prefix(piece)
    # An unencoded `+` in a query string arrives as a space (application/x-www-form-urlencoded).
    text = re.sub(r" (\d{2}:\d{2})$", r"+\1", text)
    interval = date_range(text)
    if interval is None:
        raise InvalidSearchValue(
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
        raise InvalidSearchValue(f"Quantity value of '{definition.name}' must be [prefix]number[|system|code]")
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
        raise InvalidSearchValue(f"Value of '{definition.name}' must be [prefix]number")
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise InvalidSearchValue(f"Value of '{definition.name}' must be [prefix]number") from None
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
