"""The FHIR operations the server answers, each with its R4 OperationDefinition (R4 operationdefinition.html).

`OPERATIONS` lists every operation once: the CapabilityStatement declares them from it (on their type, or in
`rest.operation` when system-level) and the service serves `operation_definition(id)` at
`/fhir/OperationDefinition/{id}` for each of ours, `OPERATION_BASE + id` being its canonical URL (the id is
`{Type}-{code}`, or the code of a system-level operation). An operation defined by a published standard
(Bulk Data's Group `$export`) is declared with the standard's canonical and not re-published here. The
parameters are those the handlers in `healthledger/api/` really read and return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir_adapters.extensions import EXTENSION_BASE, IDENTIFIER_BASE, PUBLISHED

OPERATION_BASE: Final = IDENTIFIER_BASE + "OperationDefinition/"
assert EXTENSION_BASE.startswith(IDENTIFIER_BASE), "our canonical URLs share one base"
BULK_GROUP_EXPORT: Final = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"  # Bulk Data IG 2.0


@dataclass(frozen=True)
class Param:
    """One parameter: `type` a FHIR type code (R4 FHIRAllTypes), or none for one made of `parts` (opd-1)."""

    name: str
    type: str | None
    documentation: str
    min: int = 1
    max: str = "1"
    parts: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Operation:
    """An operation: `resource` None for a system-level one; `instance` whether it is invoked on one resource
    (`Type/{id}/$code`) rather than on the type; `affects_state` per R4 (a recorded access does not count)."""

    code: str
    resource: str | None
    instance: bool
    affects_state: bool
    title: str
    description: str
    inputs: tuple[Param, ...] = ()
    outputs: tuple[Param, ...] = ()
    standard: str | None = None  # the canonical of a standard's definition, which we do not re-publish

    @property
    def id(self) -> str:
        return f"{self.resource}-{self.code}" if self.resource else self.code

    @property
    def url(self) -> str:
        return self.standard or OPERATION_BASE + self.id


def _returns(resource_type: str, what: str) -> Param:
    """The single-resource output of R4 operations: a parameter named `return` (operations.html#response)."""
    return Param("return", resource_type, what)


_PASSWORD = Param("password", "string", "The patient's password: it unlocks the patient's key, which signs on the "
                  "chain. Never stored or logged.")
_RANGE_DOC = "The interval the true count lies in with the stated confidence."

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "sign", "Consent", True, True, "Sign a Consent",
        "The patient signs their Consent: the grants its provision names are written to the consent registry on "
        "the chain, signed by the patient's key. Returns the Consent with its chain state (pending until mined).",
        inputs=(_PASSWORD,),
        outputs=(_returns("Consent", "The Consent with the consent-chain-state extension."),),
    ),
    Operation(
        "revoke", "Consent", True, True, "Revoke a Consent",
        "The patient revokes their signed Consent: its grants are revoked on the chain, signed by the patient's "
        "key. Returns the Consent with its chain state (revoking until mined).",
        inputs=(_PASSWORD,),
        outputs=(_returns("Consent", "The Consent with the consent-chain-state extension."),),
    ),
    Operation(
        "record-locator", "Consent", True, True, "Make a record locator",
        "The patient makes a one-time record locator for the consortium member their Consent grants; they hand it "
        "to that member, who redeems it once to link its patient to this record. The locator carries no patient "
        "data. The Consent must grant an active member; `member` says which when it grants several.",
        inputs=(Param("member", "string", "The member's organisation id, when the Consent grants several.", 0),),
        outputs=(Param("locator", "string", "The one-time record locator."),
                 Param("member", "string", "The member it is for.")),
    ),
    Operation(
        "redeem-record-locator", None, False, True, "Redeem a record locator",
        "A consortium member redeems a record locator once, with a token issued under the Consent the locator was "
        "made for; it learns which patient here the locator leads to.",
        inputs=(Param("locator", "string", "The record locator the patient handed the member."),),
        outputs=(Param("patient", "Reference", "The patient here (Patient/{id})."),),
    ),
    Operation(
        "link-record", "Patient", True, True, "Link a record at a member",
        "Staff record a record locator the patient brought against this patient: the server redeems it at the "
        "member that made it, for the caller's purpose of use, and links this patient to the record there. A "
        "Consent already linked here is refused (409) before the locator is used; a link of this patient to the "
        "same record under an older Consent is replaced.",
        inputs=(Param("locator", "string", "The record locator the patient brought."),),
        outputs=(Param("source", "string", "The member holding the linked record."),
                 Param("consent", "string", "The Consent at that member the link is made under."),
                 Param("patient-at-source", "string", "The patient at that member (Patient/{id}).")),
    ),
    Operation(
        "unlink-record", "Patient", True, True, "Unlink a record at a member",
        "Staff remove this patient's links to a member (only the one under `consent` when given), e.g. before "
        "linking a locator the patient made under a new Consent. The copies already fetched stay.",
        inputs=(Param("source", "string", "The member's organisation id."),
                Param("consent", "string", "Only the link under this Consent at the member (Consent/{id}).", 0)),
        outputs=(Param("unlinked", "integer", "How many links were removed."),),
    ),
    Operation(
        "federation-fetch", "Patient", True, True, "Fetch from linked members",
        "Staff fetch what changed at every member this patient is linked to, as each member's consent allows, into "
        "this server's store, and remove the copies a member no longer shows (deleted there, or no longer "
        "permitted); each fetch is recorded in a Provenance. Takes no parameters.",
        outputs=(Param("source", None, "One per linked member.", 0, "*", parts=(
            Param("member", "string", "The member."),
            Param("consent", "string", "The Consent at the member the fetch was made under."),
            Param("fetched", "integer", "How many resources were written here."),
            Param("type", None, "Resources written, per type.", 0, "*", parts=(
                Param("type", "code", "The resource type."), Param("count", "integer", "How many."))),
            Param("removed", "integer", "How many copies were removed here, when any.", 0),
            Param("provenance", "Reference", "The Provenance recording the fetch.", 0),
            Param("refused", "string", "Why the member refused, when it did.", 0),
        )),),
    ),
    Operation(
        "eligibility-credential", "Patient", True, True, "The patient's eligibility credential",
        "The patient's own eligibility credential for research: their leaf in the credential tree, the tree root "
        "and whether it is anchored on the chain, and the inputs a prover needs. Only that patient may ask (anyone "
        "else is answered as if none were issued). GET reads it; POST with the password activates it the first "
        "time and adds the identity secret and, with `study`, the patient's pseudonym for that study.",
        inputs=(Param("password", "string", "POST: the patient's password (unlocks their key).", 0),
                Param("study", "string", "POST: a ResearchStudy (ResearchStudy/{id} or {id}) to get the "
                      "pseudonym an enrolment proof is bound to.", 0)),
        outputs=(
            Param("leafIndex", "integer", "The credential's leaf index in the credential tree."),
            Param("identityCommitment", "string", "The identity commitment (decimal)."),
            Param("root", "string", "The credential tree root (decimal)."),
            Param("anchored", "boolean", "Whether that root is anchored on the chain."),
            Param("anchorState", "code", "The anchoring of the root: queued | sent | confirmed | failed."),
            Param("circuitInputs", "string", "JSON: the credential's inputs to the eligibility circuit (with the "
                  "identity secret after a POST)."),
            Param("anchorBlock", "integer", "The block the root was anchored in.", 0),
            Param("anchorTransaction", "string", "The anchoring transaction.", 0),
            Param("enrollee", "string", "POST with `study`: the patient's pseudonym (an address) for the study.", 0),
        ),
    ),
    Operation(
        "publish", "ResearchStudy", True, True, "Publish a study",
        "The study's owner publishes their draft: it is registered on the chain with its criteria and turns "
        "`active` once the registration is mined (202 Accepted until then). A study is not edited otherwise.",
        outputs=(_returns("ResearchStudy", "The study, with the study-registration extension."),),
    ),
    Operation(
        "enrol", "ResearchStudy", True, True, "Enrol in a study",
        "A patient enrols with a zero-knowledge proof that they meet the study's criteria, made from their "
        "eligibility credential and bound to their pseudonym for the study; the study consent's grant is signed "
        "by that pseudonym. Returns the ResearchSubject (201).",
        inputs=(Param("proof", "string", "The Groth16 proof, snarkjs JSON."),
                Param("publicSignals", "string", "The proof's 5 public signals, a JSON array: root, studyId, "
                      "criteriaHash, enrollee, nullifier."),
                _PASSWORD),
        outputs=(_returns("ResearchSubject", "The enrolment, under the patient's pseudonym."),),
    ),
    Operation(
        "leave", "ResearchStudy", True, True, "Leave a study",
        "A participant leaves: the study consent's grant is revoked on the chain, signed by their pseudonym; the "
        "enrolment stays counted.",
        inputs=(_PASSWORD,),
        outputs=(_returns("ResearchSubject", "The enrolment, now withdrawn."),),
    ),
    Operation(
        "feasibility", "ResearchStudy", True, True, "Feasibility count",
        "The study's owner asks how many patients meet the study's criteria (or `criteria`); the answer is a "
        "differentially private noisy count, or 'fewer than' a threshold, and spends privacy budget (epsilon) of "
        "the study and of the researcher. Repeating a question returns the same release.",
        inputs=(Param("criteria", "string", "JSON: criteria to ask about instead of the study's own.", 0),),
        outputs=(
            Param("study", "Reference", "The study."),
            Param("count", "integer", "The noisy count, when above the threshold.", 0),
            Param("countBelow", "integer", "The threshold the count is below, when it is.", 0),
            Param("result", "string", "The answer in words."),
            Param("interval", "Range", _RANGE_DOC),
            Param("confidence", "decimal", "The confidence of that interval."),
            Param("epsilon", "decimal", "The privacy budget this release used."),
            Param("epsilonSpentNow", "decimal", "Budget spent by this request (0 for a repeat)."),
            Param("epsilonSpent", "decimal", "The study's budget spent so far."),
            Param("epsilonRemaining", "decimal", "The study's budget left."),
            Param("epsilonBudget", "decimal", "The study's whole budget."),
            Param("researcherEpsilonRemaining", "decimal", "The researcher's own budget left."),
            Param("repeat", "boolean", "Whether this is the earlier release of the same question."),
            Param("releasedAt", "instant", "When the release was made."),
            Param("referenceDate", "date", "The date age criteria were evaluated at."),
            Param("criteriaHash", "string", "Hash of the criteria asked about."),
            Param("mechanism", "string", "The noise mechanism and its scale."),
        ),
    ),
    Operation(
        "feasibility-releases", "ResearchStudy", True, False, "Past feasibility releases",
        "The feasibility answers released for the study so far, to whoever may see the study's releases.",
        outputs=(Param("release", None, "One per release, oldest first.", 0, "*", parts=(
            Param("releasedAt", "instant", "When it was made."),
            Param("count", "integer", "The noisy count, when above the threshold.", 0),
            Param("countBelow", "integer", "The threshold the count was below, when it was.", 0),
            Param("result", "string", "The answer in words."),
            Param("interval", "Range", _RANGE_DOC),
            Param("confidence", "decimal", "The confidence of that interval."),
            Param("epsilon", "decimal", "The privacy budget it used."),
            Param("referenceDate", "date", "The date age criteria were evaluated at."),
            Param("criteriaHash", "string", "Hash of the criteria asked about."),
            Param("askedByYou", "boolean", "Whether the caller asked it."),
        )),),
    ),
    Operation(
        "export-jobs", "ResearchStudy", True, False, "The study's export jobs",
        "The caller's Bulk Data export jobs for the study: their state, times and how many resources of each type "
        "were delivered (nothing about any one patient).",
        outputs=(Param("export", None, "One per job.", 0, "*", parts=(
            Param("job", "string", "The job id."),
            Param("status", "code", "queued | running | complete | failed | expired"),
            Param("statusUrl", "url", "Where its status is polled (Bulk Data)."),
            Param("requestedAt", "instant", "When it was asked for."),
            Param("finishedAt", "instant", "When it finished.", 0),
            Param("expiresAt", "instant", "When its files expire.", 0),
            Param("types", "string", "The resource types asked for (comma-separated).", 0),
            Param("output", None, "Resources delivered, per type.", 0, "*", parts=(
                Param("type", "code", "The resource type."), Param("count", "integer", "How many."))),
            Param("manifestSha256", "string", "SHA-256 (hex) of the manifest.", 0),
            Param("error", "string", "Why it failed, when it did.", 0),
        )),),
    ),
    Operation(
        "inclusion-proof", "AuditEvent", True, False, "Access-log inclusion proof",
        "Proof that an access-log entry is in the append-only log: the entry's canonical bytes and its RFC 6962 "
        "audit path to the first tree head anchored on the chain that covers it. Answered under the AuditEvent "
        "read rule (an entry the caller may not read is answered as missing).",
        outputs=(
            Param("entry", "base64Binary", "The entry's canonical bytes (the Merkle leaf's data)."),
            Param("leafIndex", "integer", "Its leaf index."),
            Param("treeSize", "integer", "The size of the tree the path leads to."),
            Param("rootHash", "string", "That tree's root (hex)."),
            Param("auditPath", "string", "One node (hex) per level, from the leaf up (RFC 6962 2.1.1).", 0, "*"),
            Param("anchor", None, "The on-chain anchor of that tree head, when there is one.", 0, parts=(
                Param("treeSize", "integer", "The anchored tree size."),
                Param("rootHash", "string", "The anchored root (hex)."),
                Param("blockNumber", "integer", "The block it was anchored in."),
                Param("blockHash", "string", "That block's hash."),
                Param("transaction", "string", "The anchoring transaction."),
            )),
        ),
    ),
    Operation(
        "export", "Group", True, False, "Bulk Data export of a study's cohort",
        "Bulk Data Group export (kick-off with Prefer: respond-async; _type, _since, _outputFormat) of a study's "
        "cohort Group, de-identified for the study.",
        standard=BULK_GROUP_EXPORT,
    ),
)

OURS: Final[Mapping[str, Operation]] = {op.id: op for op in OPERATIONS if op.standard is None}
assert all(op.url.startswith(OPERATION_BASE) for op in OURS.values())


# Operations between member hospitals (healthledger.api.federation): offered by a consortium member only.
FEDERATION_OPERATIONS: Final = frozenset(
    {"record-locator", "redeem-record-locator", "link-record", "unlink-record", "federation-fetch"})


def type_operations(*, federation: bool = True) -> dict[str, list[tuple[str, str, str]]]:
    """resource type -> its operations as (code, canonical, description), for the CapabilityStatement;
    `federation`: whether the server is a consortium member (else FEDERATION_OPERATIONS are left out)."""
    declared: dict[str, list[tuple[str, str, str]]] = {}
    for op in OPERATIONS:
        if op.resource is not None and (federation or op.code not in FEDERATION_OPERATIONS):
            declared.setdefault(op.resource, []).append((op.code, op.url, op.description))
    return declared


def system_operations(*, federation: bool = True) -> list[tuple[str, str, str]]:
    """The system-level operations as (code, canonical, description); `federation` as for type_operations."""
    return [(op.code, op.url, op.description) for op in OPERATIONS
            if op.resource is None and (federation or op.code not in FEDERATION_OPERATIONS)]


def operation_definition(operation_id: str) -> dict[str, Any]:
    """The R4 OperationDefinition of one of our operations (KeyError for one we do not define)."""
    op = OURS[operation_id]
    body: dict[str, Any] = {
        "resourceType": "OperationDefinition",
        "id": op.id,
        "url": op.url,
        "version": "1.0.0",
        "name": "".join(word.capitalize() for word in op.id.replace("-", " ").split()),
        "title": op.title,
        "status": "active",
        "kind": "operation",
        "date": PUBLISHED,
        "publisher": "HealthLedger",
        "description": op.description,
        "affectsState": op.affects_state,
        "code": op.code,
        "system": op.resource is None,
        "type": op.resource is not None and not op.instance,
        "instance": op.instance,
    }
    if op.resource is not None:
        body["resource"] = [op.resource]
    parameters = [_parameter(p, "in") for p in op.inputs] + [_parameter(p, "out") for p in op.outputs]
    if parameters:
        body["parameter"] = parameters
    return body


def _parameter(param: Param, use: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param.name, "use": use, "min": param.min, "max": param.max,
                           "documentation": param.documentation}
    if param.type is not None:
        out["type"] = param.type
    if param.parts:
        out["part"] = [_parameter(p, use) for p in param.parts]
    return out


__all__ = ["BULK_GROUP_EXPORT", "OPERATIONS", "OPERATION_BASE", "OURS", "Operation", "Param",
           "operation_definition", "system_operations", "type_operations"]
