"""Checking an access-log entry's inclusion proof offline, against the tree head anchored on-chain.

An auditor holds a proof file (`healthledger audit prove`, or the FHIR `$inclusion-proof` Parameters a
patient downloads) and a chain node; not the database. The check has two halves:

1. the proof itself (pure): the entry's canonical bytes hash to the leaf (RFC 6962 section 2.1,
   `leaf_hash`), and the audit path leads from that leaf to the tree head's root (RFC 9162 section
   2.1.3.2, `verify_inclusion`);
2. the anchor (on-chain): the transaction named by the proof is in the block it names, on the chain's
   canonical history, succeeded, and carries an `Anchored(logId, treeSize, rootHash)` event of the
   AccessLogAnchor contract at the address the auditor trusts, for that same tree size and root.

The contract address must come from somewhere the auditor trusts (the hospital publishes it:
`healthledger chain status`); one read from the proof file is reported as such.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from healthledger.audit.entries import decode_entry, entry_leaf_hash
from healthledger.audit.merkle import ProofError, verify_inclusion
from healthledger.errors import BadRequest

PROOF_FORMAT = "healthledger-inclusion-proof/v1"
ANCHORED_EVENT = "Anchored"


class ProofFileError(BadRequest):
    """A proof file that cannot be read as a proof (not a verdict on the log: the file is malformed)."""


@dataclass(frozen=True)
class AnchorClaim:
    """What the proof says about the on-chain anchor of its tree head."""

    tree_size: int
    root: bytes
    block_number: int
    block_hash: str  # 0x-hex
    transaction: str  # 0x-hex
    contract: str = ""  # address of AccessLogAnchor, if the file names one
    log_id: str = ""  # 0x-hex bytes32, if the file names one
    chain_id: int | None = None


@dataclass(frozen=True)
class ProofFile:
    leaf_index: int
    tree_size: int
    root: bytes
    path: list[bytes]
    leaf_hash: bytes
    entry: bytes | None  # the entry's canonical bytes, when the file carries them
    anchor: AnchorClaim | None


@dataclass
class CheckReport:
    """Each step checked, in order; `problem` is the first that failed (None: every step passed)."""

    steps: list[str] = field(default_factory=list)
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(self, message: str) -> CheckReport:
        self.problem = message
        return self


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ProofFileError(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise ProofFileError(f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise ProofFileError(f"{what} must be {size} bytes, not {len(raw)}")
    return raw


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofFileError(f"{what} must be a non-negative integer")
    return value


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProofFileError(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProofFileError(f"{what} is not base64") from None


def _anchor_claim(raw: dict[str, Any]) -> AnchorClaim:
    def get(*names: str) -> Any:
        for name in names:
            if name in raw:
                return raw[name]
        return None

    chain_id = get("chain_id", "chainId")
    return AnchorClaim(
        tree_size=_int(get("tree_size", "treeSize"), "anchor tree size"),
        root=_hex(get("root", "rootHash"), "anchor root", 32),
        block_number=_int(get("block_number", "blockNumber"), "anchor block number"),
        block_hash="0x" + _hex(get("block_hash", "blockHash"), "anchor block hash", 32).hex(),
        transaction="0x" + _hex(get("transaction"), "anchor transaction", 32).hex(),
        contract=str(get("contract") or ""),
        log_id="0x" + _hex(get("log_id", "logId"), "anchor log id", 32).hex() if get("log_id", "logId") else "",
        chain_id=None if chain_id is None else _int(chain_id, "anchor chain id"),
    )


def parse_proof(document: Any) -> ProofFile:
    """A proof from `healthledger audit prove` JSON or from FHIR `$inclusion-proof` Parameters."""
    if not isinstance(document, dict):
        raise ProofFileError("a proof file holds a JSON object")
    if document.get("resourceType") == "Parameters":
        document = _from_parameters(document)
    entry = _b64(document["entry"], "entry") if document.get("entry") is not None else None
    if "leaf_hash" in document:
        leaf = _hex(document["leaf_hash"], "leaf_hash", 32)
    elif entry is not None:
        leaf = entry_leaf_hash(entry)
    else:
        raise ProofFileError("the proof names neither the entry nor its leaf hash")
    path = document.get("path")
    if not isinstance(path, list):
        raise ProofFileError("path must be a list of hex hashes")
    anchor = document.get("anchor")
    if anchor is not None and not isinstance(anchor, dict):
        raise ProofFileError("anchor must be an object")
    return ProofFile(
        leaf_index=_int(document.get("leaf_index"), "leaf_index"),
        tree_size=_int(document.get("tree_size"), "tree_size"),
        root=_hex(document.get("root"), "root", 32),
        path=[_hex(h, f"path[{i}]", 32) for i, h in enumerate(path)],
        leaf_hash=leaf,
        entry=entry,
        anchor=None if anchor is None else _anchor_claim(anchor),
    )


def _from_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """FHIR Parameters (api/audit_events.proof_parameters) to the CLI's field names."""
    out: dict[str, Any] = {"path": []}
    names = {"entry": "entry", "leafIndex": "leaf_index", "treeSize": "tree_size", "rootHash": "root"}
    for p in params.get("parameter") or []:
        if not isinstance(p, dict):
            continue
        name = p.get("name")
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if name == "auditPath":
            out["path"].append(value)
        elif name == "anchor":
            out["anchor"] = {
                part.get("name"): next((v for k, v in part.items() if k.startswith("value")), None)
                for part in p.get("part") or [] if isinstance(part, dict)
            }
        elif name in names:
            out[names[name]] = value
    return out


def check_proof(proof: ProofFile) -> CheckReport:
    """The pure half: leaf from the entry, path to the root, and that root is the anchored one."""
    report = CheckReport()
    if proof.entry is not None:
        if entry_leaf_hash(proof.entry) != proof.leaf_hash:
            return report.fail("the entry's bytes do not hash to the proof's leaf hash")
        try:
            decode_entry(proof.entry)
        except (ValueError, KeyError, TypeError):
            return report.fail("the entry is not a canonical access-log entry")
        report.steps.append("entry bytes hash to the leaf (RFC 6962 leaf hash)")
    else:
        report.warnings.append("the file has no entry bytes: only the leaf hash is proved, not what it records")
    try:
        verify_inclusion(proof.leaf_index, proof.tree_size, proof.leaf_hash, proof.path, proof.root)
    except ProofError as exc:
        return report.fail(f"the audit path does not lead to the root: {exc.message}")
    report.steps.append(f"audit path of {len(proof.path)} nodes leads from leaf {proof.leaf_index} to the root of "
                        f"a tree of {proof.tree_size} entries")
    if proof.anchor is None:
        return report.fail("the proof names no on-chain anchor (its tree head is not anchored yet: run "
                           "`healthledger anchor`, then prove again)")
    if (proof.anchor.tree_size, proof.anchor.root) != (proof.tree_size, proof.root):
        return report.fail(f"the proof's tree head (size {proof.tree_size}) is not the anchor it names "
                           f"(size {proof.anchor.tree_size})")
    return report


@dataclass(frozen=True)
class AnchoredEvent:
    """An `Anchored` event as read from a transaction receipt."""

    address: str
    log_id: bytes
    tree_size: int
    root: bytes


@dataclass(frozen=True)
class ChainView:
    """The few reads the on-chain half needs, so tests and callers can hand in any node."""

    chain_id: Callable[[], int]
    head: Callable[[], int]
    block_hash: Callable[[int], str | None]  # canonical block hash at a height (0x-hex), None beyond the head
    receipt: Callable[[str], dict[str, Any] | None]  # {"status", "blockNumber", "blockHash", "events": [...]}


def check_anchor(proof: ProofFile, chain: ChainView, *, contract: str, log_id: bytes | None,
                 report: CheckReport) -> CheckReport:
    """The on-chain half: the named transaction anchored this very tree head in the trusted contract."""
    claim = proof.anchor
    assert claim is not None and report.ok
    chain_id = chain.chain_id()
    if claim.chain_id is not None and claim.chain_id != chain_id:
        return report.fail(f"the proof was anchored on chain {claim.chain_id}, but the node is on chain {chain_id}")
    receipt = chain.receipt(claim.transaction)
    if receipt is None:
        return report.fail(f"transaction {claim.transaction} is not on this chain")
    if int(receipt["status"]) != 1:
        return report.fail(f"transaction {claim.transaction} failed on-chain")
    if int(receipt["blockNumber"]) != claim.block_number or receipt["blockHash"].lower() != claim.block_hash.lower():
        return report.fail(f"transaction {claim.transaction} is in block {receipt['blockNumber']} "
                           f"({receipt['blockHash']}), not in block {claim.block_number} as the proof says")
    canonical = chain.block_hash(claim.block_number)
    if canonical is None or canonical.lower() != claim.block_hash.lower():
        return report.fail(f"block {claim.block_number} of the proof is no longer on the chain's canonical history")
    wanted = [e for e in receipt["events"] if e.address.lower() == contract.lower()]
    if not wanted:
        return report.fail(f"transaction {claim.transaction} emitted no Anchored event of the contract {contract}")
    match = [e for e in wanted if e.tree_size == proof.tree_size and e.root == proof.root
             and (log_id is None or e.log_id == log_id)]
    if not match:
        seen = ", ".join(f"size {e.tree_size} root {e.root.hex()[:16]}…" for e in wanted)
        return report.fail(f"the anchor in transaction {claim.transaction} is {seen}, not size {proof.tree_size} "
                           f"root {proof.root.hex()[:16]}… (or not for this log)")
    depth = chain.head() - claim.block_number + 1
    report.steps.append(f"root anchored by AccessLogAnchor {contract} on chain {chain_id} in block "
                        f"{claim.block_number}, tx {claim.transaction} ({depth} confirmation{'s' if depth != 1 else ''})")
    return report


def web3_chain_view(w3: Any, abi: list[dict[str, Any]]) -> ChainView:
    """A ChainView over a web3 connection; `abi` is AccessLogAnchor's (to decode its events)."""
    from web3.exceptions import BlockNotFound, MismatchedABI, TransactionNotFound

    decoder = w3.eth.contract(abi=abi)

    def block_hash(number: int) -> str | None:
        try:
            return "0x" + bytes(w3.eth.get_block(number)["hash"]).hex()
        except BlockNotFound:
            return None

    def receipt(tx: str) -> dict[str, Any] | None:
        try:
            raw = w3.eth.get_transaction_receipt(tx)
        except TransactionNotFound:
            return None
        events = []
        for log in raw["logs"]:
            try:
                decoded = decoder.events[ANCHORED_EVENT]().process_log(log)
            except MismatchedABI:
                continue  # another event's log (of another contract, or not Anchored)
            events.append(AnchoredEvent(str(log["address"]), bytes(decoded["args"]["logId"]),
                                        int(decoded["args"]["treeSize"]), bytes(decoded["args"]["rootHash"])))
        return {"status": raw["status"], "blockNumber": raw["blockNumber"],
                "blockHash": "0x" + bytes(raw["blockHash"]).hex(), "events": events}

    return ChainView(chain_id=lambda: int(w3.eth.chain_id), head=lambda: int(w3.eth.block_number),
                     block_hash=block_hash, receipt=receipt)
