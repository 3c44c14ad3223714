"""FHIR R4 search (http://hl7.org/fhir/R4/search.html) over an encrypted store: parse, index, narrow, match.

The store never sees search semantics. It keeps, per resource, the terms of `index_terms` (each HMAC-ed with a
per-parameter key), narrows a search with `candidate_filters` (a conjunction of "carries one of these terms"),
decrypts the candidates and keeps those for which `matches` is true.

INVARIANT (tested with hypothesis): for every resource r, meta m and query q,
    matches(r, q, m)  implies  for every TermFilter f in candidate_filters(q):
                               f.any_of ∩ index_terms(r)[f.param] ≠ ∅      (for f.param == "_id": m.id ∈ f.any_of)
so narrowing never loses a true match; it may over-approximate, `matches` is exact.

One concept per module; each imports only those listed above it, and none imports this package:
  parameters  the SearchParamDef table: each type's parameters, their FHIR type and element paths
  dates       Interval and the implicit range of a FHIR date (R4 3.1.1.4.6), the `ap` widening
  references  `Type/id`, bare-id and URL references (`parse_reference`)
  strings     `fold`, the case- and accent-insensitive form string search compares
  query       the query model and `parse_search`
  values      the values a parameter reads from a resource, by element path
  terms       the blind-index terms (`index_terms`, `candidate_filters`, date buckets) and their leakage
  matching    `matches`, the exact post-filter after decryption
  controls    result controls (`_sort`, `_include`, `_revinclude`, `_elements`, `_summary`, `_total`), `Prefer: handling`
  sorting     `_sort` over matches (date, string, token, `_id`, `_lastUpdated`)

This package re-exports the four steps the store calls; everything else is imported from its module.
"""

from fhir_adapters.search.matching import ResourceMeta, matches
from fhir_adapters.search.parameters import COMMON_PARAMETERS
from fhir_adapters.search.query import SearchQuery, parse_search
from fhir_adapters.search.terms import TermFilter, candidate_filters, index_terms

__all__ = [
    "COMMON_PARAMETERS",
    "ResourceMeta",
    "SearchQuery",
    "TermFilter",
    "candidate_filters",
    "index_terms",
    "matches",
    "parse_search",
]
