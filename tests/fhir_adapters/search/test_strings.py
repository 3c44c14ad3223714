"""String search normalisation (fhir_adapters.search.strings)."""

from __future__ import annotations

from fhir_adapters.search.strings import fold


def test_fold_is_case_and_accent_insensitive() -> None:
    assert fold("  Zoë   MÜLLER ") == "zoe muller"
    assert fold("Straße") == "strasse"
    assert fold("ﬁ") == "fi"  # NFKD compatibility forms
