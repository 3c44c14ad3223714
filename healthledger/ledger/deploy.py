"""Deploy the ledger contracts, record them in `chain_contracts`, and refuse to run on unexpected code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from eth_utils import keccak, to_checksum_address
from sqlalchemy.orm import Mapped, Session, mapped_column

from healthledger.db import Base
from healthledger.errors import ConfigurationError
from healthledger.ledger.chain import Chain
from healthledger.ledger.compile import load_artifact

# Contract name -> the operator roles the service's own operator key needs on it (deployment order).
SERVICE_CONTRACTS: dict[str, tuple[str, ...]] = {
    "ConsentRegistry": ("RELAYER",),
    "AccessLogAnchor": ("LOG_ANCHORER",),
    "CredentialRegistry": ("ISSUER",),  # credential tree roots (healthledger/research/credentials.py)
    "StudyRegistry": ("STUDY_REGISTRAR", "RELAYER"),  # studies, and enrolments relayed for pseudonyms
}
# Contracts without roles or admin that the service's contracts call.
SUPPORT_CONTRACTS: tuple[str, ...] = ("EligibilityVerifier",)
# Everything the service needs on its chain, in deployment order (StudyRegistry takes the addresses of
# EligibilityVerifier and CredentialRegistry in its constructor, so it comes after both).
REQUIRED_CONTRACTS: tuple[str, ...] = (
    "ConsentRegistry", "AccessLogAnchor", "CredentialRegistry", "EligibilityVerifier", "StudyRegistry",
)


class ChainContract(Base):
    """Where a contract lives on a chain, and the runtime code we expect there."""

    __tablename__ = "chain_contracts"
    __table_args__ = (sa.UniqueConstraint("chain_id", "name", name="uq_chain_contracts_chain_id_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    name: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    address: Mapped[str] = mapped_column(sa.String(42), nullable=False)
    deployment_block: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    code_hash: Mapped[str] = mapped_column(sa.String(66), nullable=False)  # 0x + keccak256(runtime code)
    deployed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


@dataclass(frozen=True)
class DeploymentRecord:
    chain_id: int
    name: str
    address: str
    deployment_block: int
    code_hash: str


def _constructor_args(chain: Chain, name: str) -> tuple[str, ...]:
    """What each contract's constructor takes: the admin, and for StudyRegistry the contracts it calls
    (deployed earlier in this run, or registered on `chain` from the recorded deployments)."""
    if name in SUPPORT_CONTRACTS:
        return ()
    if name == "StudyRegistry":
        return (
            chain.operator.address,
            chain.contract("EligibilityVerifier").address,
            chain.contract("CredentialRegistry").address,
        )
    return (chain.operator.address,)


def deploy_contracts(
    chain: Chain, *, names: Sequence[str] = REQUIRED_CONTRACTS, admin: str | None = None
) -> list[DeploymentRecord]:
    """Deploy each contract with the operator as admin, grant the operator its roles, then (if
    `admin` is another address, e.g. a multisig) start the two-step admin transfer to it."""
    records = []
    for name in sorted(names, key=lambda n: REQUIRED_CONTRACTS.index(n) if n in REQUIRED_CONTRACTS else 99):
        address, receipt = chain.deploy(name, *_constructor_args(chain, name))
        chain.register(name, address)
        contract = chain.contract(name)
        for role in SERVICE_CONTRACTS.get(name, ()):
            chain.send(contract.functions.grantRole(keccak(text=role), chain.operator.address))
        if name in SUPPORT_CONTRACTS:
            pass  # no admin to hand over
        elif admin is not None and to_checksum_address(admin) != chain.operator.address:
            chain.send(contract.functions.transferAdmin(to_checksum_address(admin)))
        records.append(
            DeploymentRecord(
                chain_id=chain.chain_id,
                name=name,
                address=address,
                deployment_block=int(receipt["blockNumber"]),
                code_hash="0x" + keccak(chain.code_at(address)).hex(),
            )
        )
    return records


def save_deployments(session: Session, records: Sequence[DeploymentRecord], *, now: datetime) -> None:
    """Insert or replace the rows of these (chain id, name) pairs; the caller commits."""
    for record in records:
        row = session.scalar(
            sa.select(ChainContract).where(
                ChainContract.chain_id == record.chain_id, ChainContract.name == record.name
            )
        )
        if row is None:
            row = ChainContract(chain_id=record.chain_id, name=record.name)
            session.add(row)
        row.address = record.address
        row.deployment_block = record.deployment_block
        row.code_hash = record.code_hash
        row.deployed_at = now


def load_deployments(session: Session, chain_id: int) -> list[DeploymentRecord]:
    rows = session.scalars(
        sa.select(ChainContract).where(ChainContract.chain_id == chain_id).order_by(ChainContract.name)
    )
    return [DeploymentRecord(r.chain_id, r.name, r.address, r.deployment_block, r.code_hash) for r in rows]


def verify_deployment(
    chain: Chain, records: Sequence[DeploymentRecord], *, required: Sequence[str] = REQUIRED_CONTRACTS
) -> None:
    """Raise ConfigurationError unless every required contract is recorded for this chain and the code
    at its address is exactly the committed artifact's runtime code (so the service refuses to start)."""
    by_name = {r.name: r for r in records if r.chain_id == chain.chain_id}
    missing = [name for name in required if name not in by_name]
    if missing:
        raise ConfigurationError(
            f"contracts {', '.join(missing)} are not deployed on chain {chain.chain_id}: run `healthledger chain deploy`"
        )
    for record in by_name.values():
        code = chain.code_at(record.address)
        if not load_artifact(record.name).matches_runtime_code(code):
            raise ConfigurationError(
                f"code at {record.name}'s address {record.address} on chain {chain.chain_id} is not the "
                "contract this release ships: redeploy with `healthledger chain deploy --force`"
            )
        if "0x" + keccak(code).hex() != record.code_hash:
            raise ConfigurationError(
                f"code at {record.name}'s address {record.address} changed since it was deployed and recorded"
            )


def missing_contracts(records: Sequence[DeploymentRecord], chain_id: int) -> list[str]:
    """The required contracts not recorded for this chain, in deployment order."""
    have = {r.name for r in records if r.chain_id == chain_id}
    return [name for name in REQUIRED_CONTRACTS if name not in have]


def attach_deployments(chain: Chain, session: Session) -> list[DeploymentRecord]:
    """Load, verify and register this chain's contracts so `chain.contract(name)` works."""
    records = load_deployments(session, chain.chain_id)
    verify_deployment(chain, records)
    for record in records:
        chain.register(record.name, record.address)
    return records


def ensure_deployment(
    chain: Chain, session: Session, *, embedded: bool, now: datetime
) -> list[DeploymentRecord]:
    """Start-up check: verified records for this chain, or ConfigurationError (the service must not start).

    On the embedded chain (a fresh machine with no setup) the contracts are deployed on first start;
    on an external chain that is an operator's decision: `healthledger chain deploy`.
    """
    records = load_deployments(session, chain.chain_id)
    missing = missing_contracts(records, chain.chain_id)
    if missing and embedded:
        # A fresh chain, or one deployed by a release that had fewer contracts: add what is missing.
        for record in records:
            chain.register(record.name, record.address)
        save_deployments(session, deploy_contracts(chain, names=missing), now=now)
        session.commit()
        records = load_deployments(session, chain.chain_id)
    verify_deployment(chain, records)
    for record in records:
        chain.register(record.name, record.address)
    return records
