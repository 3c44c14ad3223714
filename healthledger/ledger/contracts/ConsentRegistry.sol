// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Roles} from "./Roles.sol";

/// @title ConsentRegistry: patients' consent grants to grantees, as pseudonymous on-chain records.
/// @notice A patient key (a per-grantee pseudonym) grants a grantee access for a scope hash (a keyed
/// hash of the off-chain FHIR Consent's scope) between validFrom (inclusive) and validUntil
/// (exclusive), in seconds since the Unix epoch, and revokes it. The patient either calls directly
/// or signs an EIP-712 message (https://eips.ethereum.org/EIPS/eip-712) that a RELAYER submits.
///
/// Design decisions (gas budget: grant by signature <= 80k, revoke <= 35k):
/// - One storage slot per (patient, grantee, scopeHash) holds validFrom, validUntil and that grant's
///   nonce. Nonces are per grant key, not per patient: the slot is written anyway, so replay
///   protection costs no extra SSTORE, and a patient's signatures for different grants never race
///   each other in a relayer queue. Every state change (direct or signed) increments the nonce, so
///   a signature is valid at most once and a direct call invalidates older, unsubmitted signatures.
/// - Revocation keeps the slot (validity zeroed, nonce kept): deleting it would reset the nonce and
///   make an old grant signature replayable.
/// - No on-chain list of a patient's grants: an enumerable list would cost a new slot per grant.
///   Events index the patient, so `eth_getLogs` with the patient topic lists them from any node; the
///   indexer builds tables from them and `isLive` answers for one grant.
/// - grantBySig needs the RELAYER role: the consortium decides who submits (and pays for) writes, and
///   an unknown party cannot flood the registry with grants for keys it controls through our relayers'
///   path. A patient can always call grant/revoke directly (censorship resistance).
/// - revokeBySig is open to anyone, and revocation works while paused: revocation only ever removes
///   access, it is the patient's safety valve, and no operator or admin can block it.
/// - No role can write or alter a grant: only the patient's own call or signature changes its slot.
/// - The revocation path reads and writes its slot once and hashes in assembly: with 21,000 base gas,
///   ~2,800 calldata, 2,100 + 2,900 storage, 3,000 ecrecover and a 3-topic log, that keeps a relayed
///   revocation under 35,000 gas. Everything else is plain Solidity.
contract ConsentRegistry is Roles {
    bytes32 public constant RELAYER = keccak256("RELAYER");

    // EIP-712 section "Definition of typed structured data": typeHash = keccak256(encodeType).
    bytes32 public constant GRANT_TYPEHASH = keccak256(
        "Grant(address patient,address grantee,bytes32 scopeHash,uint64 validFrom,uint64 validUntil,uint64 nonce,uint64 deadline)"
    );
    bytes32 public constant REVOKE_TYPEHASH =
        keccak256("Revoke(address patient,address grantee,bytes32 scopeHash,uint64 nonce,uint64 deadline)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("HealthLedger ConsentRegistry");
    bytes32 private constant VERSION_HASH = keccak256("1");
    // secp256k1n / 2: EIP-2 rejects signatures with s in the upper half (malleability).
    uint256 private constant HALF_CURVE_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    struct Grant {
        uint64 validFrom;
        uint64 validUntil; // 0 = never granted or revoked
        uint64 nonce; // next nonce a signature for this key must carry
    }

    mapping(bytes32 grantId => Grant) private _grants;

    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    event ConsentGranted(
        bytes32 indexed grantId,
        address indexed patient,
        address indexed grantee,
        bytes32 scopeHash,
        uint64 validFrom,
        uint64 validUntil
    );
    event ConsentRevoked(bytes32 indexed grantId, address indexed patient);

    error InvalidGrantee();
    error InvalidValidity();
    error NoSuchGrant();
    error SignatureExpired(uint64 deadline);
    error InvalidNonce(uint64 expected, uint64 given);
    error MalformedSignature();
    error InvalidSigner();

    constructor(address initialAdmin) Roles(initialAdmin) {
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    // ---- writes ------------------------------------------------------------------------------

    function grant(address grantee, bytes32 scopeHash, uint64 validFrom, uint64 validUntil) external whenNotPaused {
        _grant(_grantId(msg.sender, grantee, scopeHash), msg.sender, grantee, scopeHash, validFrom, validUntil);
    }

    function grantBySig(
        address patient,
        address grantee,
        bytes32 scopeHash,
        uint64 validFrom,
        uint64 validUntil,
        uint64 nonce,
        uint64 deadline,
        bytes32 r,
        bytes32 vs
    ) external whenNotPaused onlyRole(RELAYER) {
        if (patient == address(0)) revert InvalidSigner();
        bytes32 id = _grantId(patient, grantee, scopeHash);
        _checkSignedCall(_grants[id].nonce, nonce, deadline);
        bytes32 structHash = keccak256(
            abi.encode(GRANT_TYPEHASH, patient, grantee, scopeHash, validFrom, validUntil, nonce, deadline)
        );
        _requireSigner(structHash, r, vs, patient);
        _grant(id, patient, grantee, scopeHash, validFrom, validUntil);
    }

    function revoke(address grantee, bytes32 scopeHash) external {
        bytes32 id = _grantId(msg.sender, grantee, scopeHash);
        Grant storage g = _grants[id];
        (uint64 validUntil, uint64 expected) = _load(g);
        _revoke(g, id, msg.sender, validUntil, expected);
    }

    function revokeBySig(
        address patient,
        address grantee,
        bytes32 scopeHash,
        uint64 nonce,
        uint64 deadline,
        bytes32 r,
        bytes32 vs
    ) external {
        bytes32 id = _grantId(patient, grantee, scopeHash);
        Grant storage g = _grants[id];
        (uint64 validUntil, uint64 expected) = _load(g);
        _checkSignedCall(expected, nonce, deadline);
        _requireSigner(_revokeStructHash(patient, grantee, scopeHash, nonce, deadline), r, vs, patient);
        _revoke(g, id, patient, validUntil, expected);
    }

    // ---- views -------------------------------------------------------------------------------

    /// @notice True while the grant exists, is not revoked and validFrom <= now < validUntil.
    function isLive(address patient, address grantee, bytes32 scopeHash) external view returns (bool) {
        Grant memory g = _grants[_grantId(patient, grantee, scopeHash)];
        return g.validUntil != 0 && g.validFrom <= block.timestamp && block.timestamp < g.validUntil;
    }

    /// @notice The stored record: validity (zeros when never granted or revoked) and the next nonce.
    function grantOf(address patient, address grantee, bytes32 scopeHash)
        external
        view
        returns (uint64 validFrom, uint64 validUntil, uint64 nonce)
    {
        Grant memory g = _grants[_grantId(patient, grantee, scopeHash)];
        return (g.validFrom, g.validUntil, g.nonce);
    }

    function nonceOf(address patient, address grantee, bytes32 scopeHash) external view returns (uint64) {
        return _grants[_grantId(patient, grantee, scopeHash)].nonce;
    }

    function grantIdOf(address patient, address grantee, bytes32 scopeHash) external pure returns (bytes32) {
        return _grantId(patient, grantee, scopeHash);
    }

    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    // ---- internals ---------------------------------------------------------------------------

    function _grant(
        bytes32 id,
        address patient,
        address grantee,
        bytes32 scopeHash,
        uint64 validFrom,
        uint64 validUntil
    ) private {
        if (grantee == address(0) || grantee == patient) revert InvalidGrantee();
        if (validUntil <= validFrom || validUntil <= block.timestamp) revert InvalidValidity();
        Grant storage g = _grants[id];
        uint64 next;
        unchecked {
            next = g.nonce + 1; // 2^64 changes of one grant key cannot happen
        }
        (g.validFrom, g.validUntil, g.nonce) = (validFrom, validUntil, next);
        emit ConsentGranted(id, patient, grantee, scopeHash, validFrom, validUntil);
    }

    /// @dev One SLOAD for the packed slot: validFrom in bits 0-63, validUntil 64-127, nonce 128-191.
    function _load(Grant storage g) private view returns (uint64 validUntil, uint64 nonce) {
        uint256 word;
        assembly ("memory-safe") {
            word := sload(g.slot)
        }
        return (uint64(word >> 64), uint64(word >> 128));
    }

    function _revoke(Grant storage g, bytes32 id, address patient, uint64 validUntil, uint64 nonce) private {
        if (validUntil == 0) revert NoSuchGrant();
        // One SSTORE of the whole slot: validity zeroed, nonce + 1 (2^64 changes of one key cannot happen).
        assembly ("memory-safe") {
            sstore(g.slot, shl(128, add(nonce, 1)))
        }
        emit ConsentRevoked(id, patient);
    }

    function _checkSignedCall(uint64 expected, uint64 nonce, uint64 deadline) private view {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        if (nonce != expected) revert InvalidNonce(expected, nonce);
    }

    /// @dev EIP-712 digest = keccak256("\x19\x01" || domainSeparator || structHash). The signature is
    /// in EIP-2098 compact form (r, vs): vs = (v - 27) << 255 | s, 64 bytes instead of 65 plus ABI
    /// padding. s above secp256k1n/2 is rejected (EIP-2 malleability rule).
    function _requireSigner(bytes32 structHash, bytes32 r, bytes32 vs, address patient) private view {
        bytes32 s = vs & bytes32(0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff);
        if (uint256(s) > HALF_CURVE_ORDER) revert MalformedSignature();
        bytes32 domainSeparator = DOMAIN_SEPARATOR();
        address signer;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, hex"1901")
            mstore(add(ptr, 0x02), domainSeparator)
            mstore(add(ptr, 0x22), structHash)
            let digest := keccak256(ptr, 0x42)
            mstore(ptr, digest)
            mstore(add(ptr, 0x20), add(shr(255, vs), 27))
            mstore(add(ptr, 0x40), r)
            mstore(add(ptr, 0x60), s)
            mstore(0x00, 0)
            pop(staticcall(gas(), 0x01, ptr, 0x80, 0x00, 0x20))
            signer := mload(0x00)
        }
        // ecrecover yields 0 for an invalid signature: grantBySig refuses patient 0 up front, and
        // no grant can exist for address 0, so revokeBySig then stops at NoSuchGrant.
        if (signer != patient) revert InvalidSigner();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// @dev hashStruct(Revoke) = keccak256(abi.encode(REVOKE_TYPEHASH, patient, grantee, scopeHash, nonce, deadline)).
    function _revokeStructHash(address patient, address grantee, bytes32 scopeHash, uint64 nonce, uint64 deadline)
        private
        pure
        returns (bytes32 structHash)
    {
        bytes32 typeHash = REVOKE_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            mstore(add(ptr, 0x20), patient)
            mstore(add(ptr, 0x40), grantee)
            mstore(add(ptr, 0x60), scopeHash)
            mstore(add(ptr, 0x80), nonce)
            mstore(add(ptr, 0xa0), deadline)
            structHash := keccak256(ptr, 0xc0)
        }
    }

    /// @dev keccak256(abi.encode(patient, grantee, scopeHash)), built past the free memory pointer.
    function _grantId(address patient, address grantee, bytes32 scopeHash) private pure returns (bytes32 id) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, patient)
            mstore(add(ptr, 0x20), grantee)
            mstore(add(ptr, 0x40), scopeHash)
            id := keccak256(ptr, 0x60)
        }
    }
}
