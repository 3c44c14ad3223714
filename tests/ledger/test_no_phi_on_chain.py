"""No PHI on-chain: grants, revokes and anchors for the Synthea fixture patients leave none of their
names, identifiers, birth dates or clinical codes in any calldata, event topic or event data.
"""
# ruff: noqa: F401, F811  (pytest fixtures imported from fixtures_relay are used as arguments)

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak

from healthledger import crypto
from healthledger.ledger import eip712, outbox, patient_keys, relayer
from healthledger.ledger.chain import Chain
from tests.ledger.fixtures_relay import key_provider, ledger_chain, relay_db

FAST = patient_keys.Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)
SCOPE_KEY = bytes.fromhex("a5" * 32)  # the hospital's secret scope-hash key (test value)
LOG_KEY = bytes.fromhex("3c" * 32)
VALID_FROM, VALID_UNTIL, DEADLINE = 1_700_000_000, 2_100_000_000, 2_000_000_000
GRANTEES = {
    "org:hospital-b": Account.from_key(keccak(b"grantee:hospital-b")).address,
    "study:cardio-2026": Account.from_key(keccak(b"grantee:cardio")).address,
}


# ---- what counts as PHI, in which encodings ------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    label: str
    encoding: str
    where: str


def encodings(value: str) -> dict[str, bytes]:
    """A value as it could leak: raw UTF-8, ASCII hex text, keccak256 and SHA-256 of it, numbers as words."""
    raw = value.encode("utf-8")
    out = {
        "utf-8": raw,
        "utf-16-be": value.encode("utf-16-be"),
        "hex-text": raw.hex().encode(),
        "HEX-text": raw.hex().upper().encode(),
        "keccak256": keccak(raw),
        "sha256": hashlib.sha256(raw).digest(),
    }
    digits = value.replace("-", "")
    if digits.isdigit() and int(digits) > 0:
        number = int(digits)
        out["uint256-word"] = number.to_bytes(32, "big")
        out["uint64-be"] = number.to_bytes(8, "big")
    return out


def date_encodings(iso: str) -> dict[str, bytes]:
    day = datetime.strptime(iso, "%Y-%m-%d").replace(tzinfo=UTC)
    out = encodings(iso)
    for fmt in ("%Y%m%d", "%m/%d/%Y", "%d.%m.%Y"):
        out |= {f"{k}({fmt})": v for k, v in encodings(day.strftime(fmt)).items()}
    stamp = int(day.timestamp())
    if stamp > 0:
        out["unix-uint256-word"] = stamp.to_bytes(32, "big")
        out["unix-uint64-be"] = stamp.to_bytes(8, "big")
    return out


def scan(blobs: Iterable[tuple[str, bytes]], needles: dict[str, dict[str, bytes]]) -> list[Finding]:
    found = []
    for where, blob in blobs:
        for label, variants in needles.items():
            for encoding, needle in variants.items():
                if needle and needle in blob:
                    found.append(Finding(label, encoding, where))
    return found


# ---- the fixture patients ----------------------------------------------------------------------


@dataclass(frozen=True)
class FixturePatient:
    ref: str
    needles: dict[str, dict[str, bytes]]
    codes: tuple[str, ...]


def load_patients(fixtures: Path) -> list[FixturePatient]:
    patients = []
    for path in sorted((fixtures / "synthea").glob("*_*-*.json")):
        bundle = json.loads(path.read_text())
        resources = [e["resource"] for e in bundle["entry"]]
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        needles: dict[str, dict[str, bytes]] = {}
        for name in patient.get("name", []):
            for part in [name.get("family", ""), *name.get("given", [])]:
                if part:
                    needles[f"name {part}"] = encodings(part)
            full = " ".join([*name.get("given", []), name.get("family", "")]).strip()
            needles[f"name {full}"] = encodings(full)
        needles["patient id"] = encodings(patient["id"])
        for ident in patient.get("identifier", []):
            needles[f"identifier {ident['value']}"] = encodings(ident["value"])
        for telecom in patient.get("telecom", []):
            needles[f"telecom {telecom['value']}"] = encodings(telecom["value"])
        for address in patient.get("address", []):
            for line in address.get("line", []):
                needles[f"address {line}"] = encodings(line)
            if address.get("postalCode"):
                needles["postal code"] = encodings(address["postalCode"])
        needles["birth date"] = date_encodings(patient["birthDate"])
        codes = sorted(
            {
                c["code"]
                for r in resources
                if r["resourceType"] in ("Condition", "Observation")
                for c in r.get("code", {}).get("coding", [])
            }
        )
        for code in codes:
            needles[f"code {code}"] = encodings(code)
        patients.append(FixturePatient(patient["id"], needles, tuple(codes)))
    assert len(patients) >= 5
    return patients


def scope_hash(patient_codes: tuple[str, ...], purpose: str) -> bytes:
    """Keyed hash (HMAC-SHA256 with the hospital's secret) of the consent scope; never the raw scope."""
    scope = {"purpose": purpose, "classes": list(patient_codes[:5]), "period": [VALID_FROM, VALID_UNTIL]}
    return crypto.keyed_hash(SCOPE_KEY, json.dumps(scope, sort_keys=True).encode())


def collect_chain_bytes(chain: Chain) -> list[tuple[str, bytes]]:
    """Every transaction's calldata and every log's topics and data, block by block from genesis."""
    blobs: list[tuple[str, bytes]] = []
    for number in range(chain.head() + 1):
        block = chain.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            tx_hash = "0x" + bytes(tx["hash"]).hex()
            blobs.append((f"calldata {tx_hash}", bytes(tx.get("input", tx.get("data", b"")))))
            for log in chain.w3.eth.get_transaction_receipt(tx["hash"])["logs"]:
                where = f"log {tx_hash}#{log['logIndex']}"
                blobs.append((where + " topics", b"".join(bytes(t) for t in log["topics"])))
                blobs.append((where + " data", bytes(log["data"])))
    return blobs


def run_consent_flows(db: Any, chain: Chain, provider: Any, patients: list[FixturePatient]) -> None:
    domain = eip712.Domain(chain.chain_id, chain.address_of("ConsentRegistry"))
    rng = random.Random(20261123)
    with db.begin() as s:
        for i, p in enumerate(patients):
            patient_keys.create_patient_key(
                s, p.ref, "correct horse battery", provider, now=0.0, random_bytes=rng.randbytes, params=FAST
            )
            master = patient_keys.unlock(s, p.ref, "correct horse battery")
            for grantee_ref, grantee in GRANTEES.items():
                account = patient_keys.pseudonym_account(s, p.ref, master, grantee_ref, now=0.0)
                scope = scope_hash(p.codes, "TREAT" if grantee_ref.startswith("org") else "HRESCH")
                grant = eip712.GrantMessage(
                    account.address, grantee, scope, VALID_FROM, VALID_UNTIL, 0, DEADLINE
                )
                relayer.submit_grant(
                    s, domain, grant, eip712.sign(bytes(account.key), domain, grant), now=0.0
                )
                if grantee_ref.startswith("study"):
                    revoke = eip712.RevokeMessage(account.address, grantee, scope, 1, DEADLINE)
                    relayer.submit_revoke(
                        s, domain, revoke, eip712.sign(bytes(account.key), domain, revoke), now=0.0
                    )
            entries = json.dumps({"patient": p.ref, "accessed": p.codes[:3]}).encode()
            relayer.submit_anchor(
                s,
                crypto.keyed_hash(LOG_KEY, b"log:hospital-a"),
                i + 1,
                crypto.keyed_hash(LOG_KEY, entries),
                now=0.0,
            )
    report = outbox.drain(
        db,
        chain,
        time.time,
        policy=outbox.OutboxPolicy(base_backoff_seconds=0.0, receipt_poll_seconds=0.0),
        max_passes=20,
    )
    assert report.failed == 0 and report.confirmed == len(patients) * 4


def test_no_patient_phi_in_calldata_or_events(
    relay_db, ledger_chain, key_provider, fixtures_dir: Path
) -> None:
    chain, _, _ = ledger_chain
    patients = load_patients(fixtures_dir)
    run_consent_flows(relay_db, chain, key_provider, patients)
    blobs = collect_chain_bytes(chain)
    assert sum(1 for where, _ in blobs if where.startswith("calldata")) >= 5 * 4
    needles = {f"{p.ref[:8]} {label}": v for p in patients for label, v in p.needles.items()}
    assert len(needles) > 100
    findings = scan(blobs, needles)
    assert findings == [], f"PHI found on-chain: {findings[:10]}"


def test_scanner_finds_a_planted_value(relay_db, ledger_chain, fixtures_dir: Path) -> None:
    chain, _, _ = ledger_chain
    patient = load_patients(fixtures_dir)[0]
    family = next(label.removeprefix("name ") for label in patient.needles if label.startswith("name "))
    birth = patient.needles["birth date"]["utf-8"].decode()
    # A careless integration: the family name as the log id, keccak(birth date) as the root.
    planted_log_id = family.encode().ljust(32, b"\0")
    with relay_db.begin() as s:
        relayer.submit_anchor(s, planted_log_id, 1, keccak(birth.encode()), now=0.0)
    outbox.drain(
        relay_db,
        chain,
        time.time,
        policy=outbox.OutboxPolicy(base_backoff_seconds=0.0, receipt_poll_seconds=0.0),
        max_passes=5,
    )
    findings = scan(collect_chain_bytes(chain), patient.needles)
    found = {(f.label, f.encoding, f.where.split(" ")[0]) for f in findings}
    assert (f"name {family}", "utf-8", "calldata") in found
    assert (f"name {family}", "utf-8", "log") in found  # the indexed logId topic
    assert ("birth date", "keccak256", "calldata") in found
    assert ("birth date", "keccak256", "log") in found
