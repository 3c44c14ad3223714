"""MemberRegistry on the chain: deploy or attach the consortium's registry, and the members' transactions."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from eth_utils import keccak, to_checksum_address
from sqlalchemy.orm import Session, sessionmaker

from healthledger.errors import BadRequest, ConfigurationError
from healthledger.ledger.chain import Chain
from healthledger.ledger.compile import load_artifact
from healthledger.ledger.deploy import DeploymentRecord, deploy_contracts, load_deployments, save_deployments
from healthledger.ledger.members import REGISTRY, STATUS_CODES, MemberIndexer

# An organisation id is a FHIR id (R4 `id`, at most 40 characters here, so that its client id fits 64): it names the member in references
# (Organization/{id}) at every other member, so it must be one.
ORG_ID = re.compile(r"^[A-Za-z0-9\-.]{1,40}$")


def org_key(org_id: str) -> bytes:
    return keccak(text=org_id)


def check_org_id(org_id: str) -> str:
    if not ORG_ID.match(org_id):
        raise BadRequest("an organisation id is 1-40 letters, digits, '-' or '.' (a FHIR id)")
    return org_id


def registry_record(session: Session, chain: Chain) -> DeploymentRecord | None:
    for record in load_deployments(session, chain.chain_id):
        if record.name == REGISTRY:
            return record
    return None


def attached_registry(session: Session, chain: Chain) -> DeploymentRecord:
    """The registry recorded for this chain, registered on `chain`; ConfigurationError if there is none."""
    record = registry_record(session, chain)
    if record is None:
        raise ConfigurationError(
            "no member registry is recorded for this chain: `healthledger federation deploy` (the consortium's "
            "first member) or `healthledger federation attach ADDRESS`"
        )
    chain.register(REGISTRY, record.address)
    return record


def deploy_registry(chain: Chain, session: Session, *, admin: str | None, now: datetime) -> DeploymentRecord:
    (record,) = deploy_contracts(chain, names=(REGISTRY,), admin=admin)
    save_deployments(session, [record], now=now)
    chain.register(REGISTRY, record.address)
    return record


def attach_registry(chain: Chain, session: Session, address: str, *, now: datetime) -> DeploymentRecord:
    """Record the consortium's registry at `address` after checking its code is the contract we ship."""
    address = to_checksum_address(address)
    code = chain.code_at(address)
    if not load_artifact(REGISTRY).matches_runtime_code(code):
        raise ConfigurationError(f"the code at {address} is not the MemberRegistry this release ships")
    chain.register(REGISTRY, address)
    block = int(chain.call(chain.contract(REGISTRY).functions.deployedAt()))
    record = DeploymentRecord(chain.chain_id, REGISTRY, address, block, "0x" + keccak(code).hex())
    save_deployments(session, [record], now=now)
    return record


@dataclass(frozen=True)
class OnChainMember:
    org_id: str
    name: str
    fhir_base_url: str
    key_thumbprint: str
    controller: str
    status: str  # "" (never heard of) | pending | active | removed


def on_chain_member(chain: Chain, org_id: str) -> OnChainMember:
    m = chain.call(chain.contract(REGISTRY).functions.memberOf(org_key(org_id)))
    controller, status, thumb, oid, name, url = m
    return OnChainMember(oid, name, url, "0x" + bytes(thumb).hex(), to_checksum_address(controller),
                         STATUS_CODES[int(status)])


def request_join(chain: Chain, org_id: str, name: str, fhir_base_url: str, thumbprint: bytes) -> int:
    check_org_id(org_id)
    receipt = chain.send(chain.contract(REGISTRY).functions.requestJoin(org_id, name, fhir_base_url, thumbprint))
    return int(receipt["blockNumber"])


def admit(chain: Chain, org_id: str) -> int:
    return int(chain.send(chain.contract(REGISTRY).functions.admit(org_key(org_id)))["blockNumber"])


def remove(chain: Chain, org_id: str) -> int:
    return int(chain.send(chain.contract(REGISTRY).functions.remove(org_key(org_id)))["blockNumber"])


def rotate_key(chain: Chain, org_id: str, thumbprint: bytes) -> int:
    receipt = chain.send(chain.contract(REGISTRY).functions.rotateKey(org_key(org_id), thumbprint))
    return int(receipt["blockNumber"])


def sync_directory(sessions: sessionmaker[Session], chain: Chain, record: DeploymentRecord) -> int:
    """Bring the indexed directory up to the chain now (the worker does this every poll)."""
    chain.register(REGISTRY, record.address)
    return MemberIndexer(sessions, chain, from_block=record.deployment_block).catch_up(time.time())
