"""Our FHIR extensions, in one place: one base URL, and each extension's StructureDefinition (R4 extensibility.html).

Every extension this project writes or reads is listed in `EXTENSIONS`; `structure_definition(id)` gives the R4
StructureDefinition published at the extension's URL (the service serves it at `/fhir/StructureDefinition/{id}`,
and `EXTENSION_BASE + id` is its canonical URL). Values use R4 types only (no R5 `integer64`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

EXTENSION_BASE: Final = "https://healthledger.dev/fhir/StructureDefinition/"
IDENTIFIER_BASE: Final = "https://healthledger.dev/fhir/"  # naming systems (`sid/...`) and code systems
FHIR_VERSION: Final = "4.0.1"
PUBLISHED: Final = "2026-12-01"


@dataclass(frozen=True)
class Part:
    """A sub-extension of a complex extension: its url (a name), value types, cardinality, and its own parts."""

    name: str
    types: tuple[str, ...] = ()
    min: int = 0
    max: str = "1"
    parts: tuple[Part, ...] = ()
    short: str = ""


@dataclass(frozen=True)
class Extension:
    id: str
    title: str
    description: str
    contexts: tuple[str, ...]  # element paths it may sit on (FHIRPath element context)
    types: tuple[str, ...] = ()  # value[x] types of a simple extension
    parts: tuple[Part, ...] = ()  # sub-extensions of a complex one

    @property
    def url(self) -> str:
        return EXTENSION_BASE + self.id


_BLOCK = ("integer", "string")  # R4 integer is 32-bit: a larger block number is written as a decimal string

EXTENSIONS: Final[Mapping[str, Extension]] = {
    e.id: e
    for e in (
        Extension(
            "consent-chain-state", "Consent chain state",
            "The on-chain state of a Consent's grants as the service last indexed them: the overall state and, per "
            "grantee, its state, the block it was mined in and the transaction. Added by the server on reads; "
            "ignored when written.",
            ("Consent",),
            parts=(
                Part("state", ("code",), 1, short="unsigned | pending | active | revoking | revoked | expired"),
                Part("grant", min=0, max="*", short="one grantee's grant", parts=(
                    Part("grantee", ("string",), 1, short="the grantee (an organisation reference or *)"),
                    Part("state", ("code",), 1, short="pending | active | revoking | revoked | expired"),
                    Part("block", _BLOCK, short="block number (integer; a string of digits above 2147483647)"),
                    Part("transaction", ("string",), short="transaction hash (0x...)"),
                )),
            ),
        ),
        Extension("audit-break-the-glass", "Break the glass",
                  "The access was an emergency access (purpose ETREAT with a reason): flagged for the patient.",
                  ("AuditEvent",), types=("boolean",)),
        Extension("audit-merkle-leaf-index", "Access-log leaf index",
                  "The entry's leaf index in the RFC 6962 Merkle log whose tree heads are anchored on-chain.",
                  ("AuditEvent",), types=("unsignedInt",)),
        Extension("study-eligibility-criteria", "Study eligibility criteria",
                  "The study's eligibility criteria as a JSON document (the zero-knowledge criteria language).",
                  ("ResearchStudy",), types=("string",)),
        Extension("study-data-category", "Study data category",
                  "A kind of data the study asks for: a resource type and, optionally, codes.",
                  ("ResearchStudy",), parts=(
                      Part("type", ("code",), 1, short="a resource type"),
                      Part("code", ("Coding",), max="*", short="codes of that type (none: every resource)"),
                  )),
        Extension("study-data-period", "Study data period", "The period of data the study asks for.",
                  ("ResearchStudy",), types=("Period",)),
        Extension("study-max-participants", "Study maximum participants", "How many may enrol at most.",
                  ("ResearchStudy",), types=("positiveInt",)),
        Extension("study-owner", "Study owner", "Who defined the study: the researcher and their organisation.",
                  ("ResearchStudy",), parts=(
                      Part("principal", ("string",), short="the researcher's principal"),
                      Part("organization", ("Reference",), short="their organisation"),
                  )),
        Extension("study-pseudonym", "Study pseudonym",
                  "The patient's per-study pseudonym (an Ethereum address) that signs the study consent's grant.",
                  ("Consent",), types=("string",)),
        Extension("study-ethics-approval", "Study ethics approval",
                  "The approving board (system) and approval number (value).", ("ResearchStudy",),
                  types=("Identifier",)),
        Extension("study-purpose-of-use", "Study purpose of use",
                  "The purpose of use of the study's accesses: always v3-ActReason HRESCH; set by the server.",
                  ("ResearchStudy",), types=("Coding",)),
        Extension("study-registration", "Study registration",
                  "How the study is registered on-chain, set by $publish.", ("ResearchStudy",), parts=(
                      Part("studyId", ("string",), 1, short="the StudyRegistry id (decimal)"),
                      Part("criteriaHash", ("string",), short="hash of the eligibility criteria"),
                      Part("verifyingKey", ("string",), short="SHA-256 (hex) of the Groth16 verification key"),
                      Part("referenceDate", ("date",), short="the date age criteria are evaluated at"),
                      Part("circuit", ("string",), short="JSON: the compiled criteria inputs a prover needs"),
                  )),
        Extension("enrolment-chain-state", "Enrolment chain state",
                  "The on-chain state of a research enrolment (the proof's transaction), as last indexed.",
                  ("ResearchSubject",), types=("code",)),
        Extension("export-file-sha256", "Export file SHA-256",
                  "In a Bulk Data export manifest's output entry (an `extension` object keyed by this URL): the "
                  "SHA-256 (hex) of the file's bytes.", ("Element",), types=("string",)),
        Extension("export-study", "Export study",
                  "In a Bulk Data export manifest (an `extension` object keyed by this URL): the ResearchStudy the "
                  "de-identified export was made for.", ("Element",), types=("string",)),
    )
}


def extension_url(extension_id: str) -> str:
    """The canonical URL of one of our extensions (KeyError for one we do not define)."""
    return EXTENSIONS[extension_id].url


def structure_definition(extension_id: str) -> dict[str, Any]:
    """The R4 StructureDefinition of one of our extensions (KeyError for one we do not define)."""
    ext = EXTENSIONS[extension_id]
    elements = _elements("Extension", "Extension", ext.url, ext.types, ext.parts, ext.description, top=True,
                         short=ext.title)
    name = "".join(word.capitalize() for word in ext.id.split("-"))
    return {
        "resourceType": "StructureDefinition",
        "id": ext.id,
        "url": ext.url,
        "version": "1.0.0",
        "name": name,
        "title": ext.title,
        "status": "active",
        "date": PUBLISHED,
        "publisher": "HealthLedger",
        "description": ext.description,
        "fhirVersion": FHIR_VERSION,
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": c} for c in ext.contexts],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": elements},
    }


def _elements(
    path: str, element_id: str, url: str, types: tuple[str, ...], parts: tuple[Part, ...], definition: str,
    *, top: bool = False, min_: int = 0, max_: str = "1", short: str = "", slice_name: str | None = None,
) -> list[dict[str, Any]]:
    head: dict[str, Any] = {"id": element_id, "path": path}
    if slice_name is not None:
        head["sliceName"] = slice_name
    head.update({"short": short or definition[:80], "definition": definition})
    if not top:
        head.update({"min": min_, "max": max_})
    out = [head]
    if parts:
        out.append({"id": f"{element_id}.extension", "path": f"{path}.extension", "slicing": {
            "discriminator": [{"type": "value", "path": "url"}], "rules": "closed"}})
        for part in parts:
            slice_id = f"{element_id}.extension:{part.name}"
            out += _elements(f"{path}.extension", slice_id, part.name, part.types, part.parts,
                             part.short or part.name, min_=part.min, max_=part.max, short=part.short,
                             slice_name=part.name)
    out.append({"id": f"{element_id}.url", "path": f"{path}.url", "fixedUri": url})
    if types:
        out.append({"id": f"{element_id}.value[x]", "path": f"{path}.value[x]", "min": 1,
                    "type": [{"code": t} for t in types]})
    else:
        out.append({"id": f"{element_id}.value[x]", "path": f"{path}.value[x]", "max": "0"})
    return out
