"""String search (R4 3.1.1.4.7): the case- and accent-insensitive form the index and the post-filter use."""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """Case- and accent-insensitive form for string search: NFKD, drop combining marks, casefold, squeeze spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    again = unicodedata.normalize("NFKD", stripped)  # casefold may yield decomposable characters
    return " ".join("".join(ch for ch in again if not unicodedata.combining(ch)).split())
