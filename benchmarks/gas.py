"""Gas per ledger operation on the embedded chain, beside the budget and the Ethereum Attestation Service.

    python benchmarks/gas.py            # table
    python benchmarks/gas.py --json     # {operation: gas} on stdout (also benchmarks/results/gas.json)
    python benchmarks/gas.py --out FILE

Gas is deterministic for a given contract and state, so one run per operation is exact. "first"
rows touch a storage slot for the first time (20,000 gas per new slot); the others are the
steady state (e.g. the second anchor of a log, a re-grant of a revoked key).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from pathlib import Path

from eth_account import Account

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from healthledger.keys import LocalFileKeyProvider
from healthledger.ledger import eip712
from healthledger.ledger.chain import Chain, embedded_chain
from healthledger.ledger.deploy import deploy_contracts

RESULTS = ROOT / "benchmarks" / "results" / "gas.json"
BUDGET = {"grant_by_signature": 80_000, "revoke": 35_000, "revoke_by_signature": 35_000, "anchor": 50_000,
          "anchor_first": 50_000}
EAS = {"grant": 272_457, "grant_by_signature": 272_457, "revoke": 70_712, "revoke_by_signature": 70_712}
HOUR = 3600


def measure(chain: Chain) -> dict[str, int]:
    deploy_contracts(chain)
    registry, anchor = chain.contract("ConsentRegistry"), chain.contract("AccessLogAnchor")
    domain = eip712.Domain(chain.chain_id, registry.address)
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    gas: dict[str, int] = {}

    # Direct calls by a patient key that pays its own gas.
    patient = Account.create()
    fund(chain, patient.address)
    grantee, scope = Account.create().address, secrets.token_bytes(32)
    gas["grant"] = _gas(chain.send(registry.functions.grant(grantee, scope, now, now + HOUR), sender=patient))
    gas["revoke"] = _gas(chain.send(registry.functions.revoke(grantee, scope), sender=patient))
    gas["grant_again_after_revoke"] = _gas(
        chain.send(registry.functions.grant(grantee, scope, now, now + HOUR), sender=patient)
    )

    # The service's path: the patient signs EIP-712 messages, the relayer (operator) submits them.
    signer = Account.create()
    grant = eip712.GrantMessage(signer.address, grantee, scope, now, now + HOUR, 0, now + 600)
    r, vs = eip712.compact(eip712.sign(bytes(signer.key), domain, grant))
    gas["grant_by_signature"] = _gas(
        chain.send(
            registry.functions.grantBySig(
                signer.address, grantee, scope, now, now + HOUR, 0, now + 600, r, vs
            )
        )
    )
    revoke = eip712.RevokeMessage(signer.address, grantee, scope, 1, now + 600)
    r, vs = eip712.compact(eip712.sign(bytes(signer.key), domain, revoke))
    gas["revoke_by_signature"] = _gas(
        chain.send(registry.functions.revokeBySig(signer.address, grantee, scope, 1, now + 600, r, vs))
    )

    log_id = secrets.token_bytes(32)
    gas["anchor_first"] = _gas(chain.send(anchor.functions.anchor(log_id, 1, secrets.token_bytes(32))))
    gas["anchor"] = _gas(chain.send(anchor.functions.anchor(log_id, 1_000, secrets.token_bytes(32))))

    # The consortium's member directory (docs/federation.md): a join request stores the member's strings.
    chain.deploy("MemberRegistry", chain.operator.address)
    directory = chain.contract("MemberRegistry")
    key = chain.call(directory.functions.orgKeyOf("hospital-b"))
    gas["member_request_join"] = _gas(chain.send(directory.functions.requestJoin(
        "hospital-b", "Hospital B", "https://hospital-b.example/fhir", secrets.token_bytes(32))))
    gas["member_admit"] = _gas(chain.send(directory.functions.admit(key)))
    gas["member_rotate_key"] = _gas(chain.send(directory.functions.rotateKey(key, secrets.token_bytes(32))))
    gas["member_remove"] = _gas(chain.send(directory.functions.remove(key)))
    return gas


def fund(chain: Chain, address: str, wei: int = 10**20) -> None:
    fees = chain.fees()
    transfer = {
        "from": chain.operator.address,
        "to": address,
        "value": wei,
        "gas": 21_000,
        "chainId": chain.chain_id,
        "maxFeePerGas": fees.max_fee,
        "maxPriorityFeePerGas": fees.priority_fee,
    }
    chain.wait(chain.sign_and_submit(transfer))  # type: ignore[arg-type]


def _gas(receipt: object) -> int:
    return int(receipt["gasUsed"])  # type: ignore[index]


def table(gas: dict[str, int]) -> str:
    lines = [f"{'operation':<26} {'gas':>8} {'budget':>8} {'EAS':>8}  notes", "-" * 72]
    notes = {
        "grant": "patient calls directly, new slot",
        "grant_by_signature": "EIP-712, relayer submits, new slot",
        "revoke": "patient calls directly",
        "revoke_by_signature": "EIP-712, anyone submits",
        "anchor_first": "first head of a log (1 new slot)",
        "anchor": "next head of the same log (per batch)",
        "member_request_join": "MemberRegistry: org id, name, URL, key (strings stored)",
        "member_admit": "MemberRegistry: consortium admin",
        "member_rotate_key": "MemberRegistry: the member's controller",
        "member_remove": "MemberRegistry: admin or the member",
        "grant_again_after_revoke": "slot already used",
    }
    for name, value in gas.items():
        budget = BUDGET.get(name)
        mark = "" if budget is None else ("  OK" if value <= budget else "  OVER")
        lines.append(
            f"{name:<26} {value:>8,} {budget or '':>8} {EAS.get(name, ''):>8}  {notes.get(name, '')}{mark}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gas per ledger operation on the embedded chain")
    parser.add_argument("--json", action="store_true", help="print {operation: gas} as JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        chain = embedded_chain(Path(tmp), LocalFileKeyProvider(Path(tmp) / "keys"))
        try:
            gas = measure(chain)
        finally:
            chain.close()
    document = json.dumps(gas, indent=2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(document + "\n")
    if args.out:
        args.out.write_text(document + "\n")
    print(document if args.json else table(gas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
