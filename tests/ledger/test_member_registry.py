"""MemberRegistry: join, admit, key rotation, endpoint, removal, every revert; and the directory indexer, on the
embedded EVM and anvil."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from sqlalchemy.orm import Session, sessionmaker

from healthledger.db import make_engine, session_factory
from healthledger.ledger.chain import Chain, ContractRevert
from healthledger.ledger.members import (
    ACTIVE,
    PENDING,
    REGISTRY,
    REMOVED,
    MemberIndexer,
    fold,
    list_members,
    member_by_id,
)
from tests.ledger.conftest import fund


def reverts(name: str) -> pytest.RaisesExc[ContractRevert]:
    return pytest.raises(ContractRevert, match=rf"\b{name}\b")


@dataclass
class Directory:
    chain: Chain
    address: str
    block: int


@pytest.fixture(scope="module")
def directory(chain: Chain) -> Directory:
    address, receipt = chain.deploy(REGISTRY, chain.operator.address)
    chain.register(REGISTRY, address)
    return Directory(chain, address, int(receipt["blockNumber"]))


def send_as(chain: Chain, account: LocalAccount, fn: object) -> object:
    return chain.send(fn, sender=account)


def member_account(chain: Chain) -> LocalAccount:
    account: LocalAccount = Account.create()
    fund(chain, account.address)
    return account


def key(org_id: str) -> bytes:
    return keccak(text=org_id)


def test_join_admit_rotate_remove(directory: Directory) -> None:
    chain = directory.chain
    registry = chain.contract(REGISTRY)
    hospital = member_account(chain)
    org = f"hospital-{secrets.token_hex(3)}"
    thumb, new_thumb = secrets.token_bytes(32), secrets.token_bytes(32)
    assert chain.call(registry.functions.deployedAt()) == directory.block

    send_as(chain, hospital, registry.functions.requestJoin(org, "Hospital B", "https://b.example/fhir", thumb))
    m = chain.call(registry.functions.memberOf(key(org)))
    assert (m[0], m[1], bytes(m[2]), m[3], m[4], m[5]) == (
        hospital.address, 1, thumb, org, "Hospital B", "https://b.example/fhir")
    assert chain.call(registry.functions.isActiveKey(key(org), thumb)) is False  # pending is not active
    with reverts("MemberExists"):
        send_as(chain, hospital, registry.functions.requestJoin(org, "Again", "https://x", thumb))

    with reverts("NotAdmin"):
        send_as(chain, hospital, registry.functions.admit(key(org)))
    chain.send(registry.functions.admit(key(org)))
    assert chain.call(registry.functions.isActiveKey(key(org), thumb)) is True
    with reverts("WrongStatus"):
        chain.send(registry.functions.admit(key(org)))

    with reverts("NotController"):
        chain.send(registry.functions.rotateKey(key(org), new_thumb))  # the admin is not the member
    send_as(chain, hospital, registry.functions.rotateKey(key(org), new_thumb))
    assert chain.call(registry.functions.isActiveKey(key(org), thumb)) is False
    assert chain.call(registry.functions.isActiveKey(key(org), new_thumb)) is True
    send_as(chain, hospital, registry.functions.changeEndpoint(key(org), "https://b2.example/fhir"))

    chain.send(registry.functions.remove(key(org)))
    assert chain.call(registry.functions.isActiveKey(key(org), new_thumb)) is False
    with reverts("WrongStatus"):
        send_as(chain, hospital, registry.functions.rotateKey(key(org), thumb))
    with reverts("WrongStatus"):
        chain.send(registry.functions.remove(key(org)))
    with reverts("MemberExists"):  # a removed id never comes back
        send_as(chain, hospital, registry.functions.requestJoin(org, "Hospital B", "https://b.example/fhir", thumb))


def test_invalid_requests_and_strangers(directory: Directory) -> None:
    chain = directory.chain
    registry = chain.contract(REGISTRY)
    other = member_account(chain)
    thumb = secrets.token_bytes(32)
    with reverts("InvalidMember"):
        chain.send(registry.functions.requestJoin("", "Name", "https://x", thumb))
    with reverts("InvalidMember"):
        chain.send(registry.functions.requestJoin("x" * 41, "Name", "https://x", thumb))
    with reverts("InvalidMember"):
        chain.send(registry.functions.requestJoin("ok", "Name", "https://x", b"\0" * 32))
    with reverts("UnknownMember"):
        chain.send(registry.functions.rotateKey(key("nobody"), thumb))
    with reverts("UnknownMember"):
        chain.send(registry.functions.remove(key("nobody")))
    org = f"leaver-{secrets.token_hex(3)}"
    send_as(chain, other, registry.functions.requestJoin(org, "Leaver", "https://l.example/fhir", thumb))
    stranger = member_account(chain)
    with reverts("NotAdmin"):
        send_as(chain, stranger, registry.functions.remove(key(org)))
    send_as(chain, other, registry.functions.remove(key(org)))  # a member may leave by itself


def test_pause_stops_joining_but_not_removal_or_rotation(directory: Directory) -> None:
    chain = directory.chain
    registry = chain.contract(REGISTRY)
    hospital = member_account(chain)
    org = f"paused-{secrets.token_hex(3)}"
    send_as(chain, hospital, registry.functions.requestJoin(org, "P", "https://p.example/fhir", secrets.token_bytes(32)))
    chain.send(registry.functions.pause())
    try:
        with reverts("ContractPaused"):
            chain.send(registry.functions.requestJoin("late", "L", "https://l", secrets.token_bytes(32)))
        with reverts("ContractPaused"):
            chain.send(registry.functions.admit(key(org)))
        send_as(chain, hospital, registry.functions.rotateKey(key(org), secrets.token_bytes(32)))
        chain.send(registry.functions.remove(key(org)))
    finally:
        chain.send(registry.functions.unpause())


def test_admin_transfer_is_two_step(directory: Directory) -> None:
    chain = directory.chain
    address, _ = chain.deploy(REGISTRY, chain.operator.address)
    chain.register(REGISTRY, directory.address)  # deploy registered the new one under the name
    registry = chain.w3.eth.contract(address=address, abi=chain.contract(REGISTRY).abi)
    successor = member_account(chain)
    chain.send(registry.functions.transferAdmin(successor.address))
    assert chain.call(registry.functions.admin()) == chain.operator.address
    with reverts("NotPendingAdmin"):
        chain.send(registry.functions.acceptAdmin())
    send_as(chain, successor, registry.functions.acceptAdmin())
    assert chain.call(registry.functions.admin()) == successor.address


# ---- the directory indexer -----------------------------------------------------------------------


@pytest.fixture
def sessions(migrated_sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_sqlite_url)
    yield session_factory(engine)
    engine.dispose()


def test_indexer_follows_the_directory_into_members(directory: Directory, sessions: sessionmaker[Session]) -> None:
    chain = directory.chain
    registry = chain.contract(REGISTRY)
    indexer = MemberIndexer(sessions, chain, from_block=directory.block, confirmations=0)
    hospital = member_account(chain)
    org = f"indexed-{secrets.token_hex(3)}"
    thumb, new_thumb = secrets.token_bytes(32), secrets.token_bytes(32)
    send_as(chain, hospital, registry.functions.requestJoin(org, "Hospital I", "https://i.example/fhir", thumb))
    indexer.catch_up(0.0)
    with sessions() as session:
        m = member_by_id(session, org)
        assert m is not None and m.status == PENDING and m.key_thumbprint == "0x" + thumb.hex()
        assert m.controller == hospital.address
    chain.send(registry.functions.admit(key(org)))
    send_as(chain, hospital, registry.functions.rotateKey(key(org), new_thumb))
    indexer.run_once(0.0)
    with sessions() as session:
        m = member_by_id(session, org)
        assert m is not None and m.status == ACTIVE and m.key_thumbprint == "0x" + new_thumb.hex()
    chain.send(registry.functions.remove(key(org)))
    indexer.run_once(0.0)
    with sessions() as session:
        m = member_by_id(session, org)
        assert m is not None and m.status == REMOVED
        assert org in {x.org_id for x in list_members(session)}


def test_fold_ignores_events_of_unknown_members() -> None:
    from healthledger.ledger.members import MemberEvent

    assert fold([MemberEvent("0x01", "MemberJoined", {}, 1, 0, "0xaa")]) == {}


def test_a_reorganisation_replays_the_directory(directory: Directory, sessions: sessionmaker[Session]) -> None:
    """The cursor's block is replaced (anvil: snapshot, join, revert, other blocks): the join is forgotten."""
    chain = directory.chain
    if chain.chain_id != 1337:
        pytest.skip("only anvil can revert blocks")  # the embedded chain has no reorganisations to replay
    registry = chain.contract(REGISTRY)
    indexer = MemberIndexer(sessions, chain, from_block=directory.block, confirmations=0)
    indexer.catch_up(0.0)
    snapshot = chain.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    org = f"orphan-{secrets.token_hex(3)}"
    chain.send(registry.functions.requestJoin(org, "Orphan", "https://o.example/fhir", secrets.token_bytes(32)))
    indexer.run_once(0.0)
    with sessions() as session:
        assert member_by_id(session, org) is not None
    chain.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    for _ in range(3):
        chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    indexer.catch_up(0.0)
    with sessions() as session:
        assert member_by_id(session, org) is None
