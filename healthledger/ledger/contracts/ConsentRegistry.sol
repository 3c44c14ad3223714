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
        _grant(msg.sender, grantee, scopeHash, validFrom, validUntil);
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
        _checkSignedCall(_grantId(patient, grantee, scopeHash), nonce, deadline);
        bytes32 structHash = keccak256(
            abi.encode(GRANT_TYPEHASH, patient, grantee, scopeHash, validFrom, validUntil, nonce, deadline)
        );
        _requireSigner(structHash, r, vs, patient);
        _grant(patient, grantee, scopeHash, validFrom, validUntil);
    }

    function revoke(address grantee, bytes32 scopeHash) external {
        _revoke(msg.sender, grantee, scopeHash);
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
        _checkSignedCall(_grantId(patient, grantee, scopeHash), nonce, deadline);
        bytes32 structHash = keccak256(abi.encode(REVOKE_TYPEHASH, patient, grantee, scopeHash, nonce, deadline));
        _requireSigner(structHash, r, vs, patient);
        _revoke(patient, grantee, scopeHash);
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

    function _grant(address patient, address grantee, bytes32 scopeHash, uint64 validFrom, uint64 validUntil)
        private
    {
        if (grantee == address(0) || grantee == patient) revert InvalidGrantee();
        if (validUntil <= validFrom || validUntil <= block.timestamp) revert InvalidValidity();
        bytes32 id = _grantId(patient, grantee, scopeHash);
        Grant storage g = _grants[id];
        uint64 next = g.nonce + 1;
        (g.validFrom, g.validUntil, g.nonce) = (validFrom, validUntil, next);
        emit ConsentGranted(id, patient, grantee, scopeHash, validFrom, validUntil);
    }

    function _revoke(address patient, address grantee, bytes32 scopeHash) private {
        bytes32 id = _grantId(patient, grantee, scopeHash);
        Grant storage g = _grants[id];
        if (g.validUntil == 0) revert NoSuchGrant();
        uint64 next = g.nonce + 1;
        (g.validFrom, g.validUntil, g.nonce) = (0, 0, next);
        emit ConsentRevoked(id, patient);
    }

    function _checkSignedCall(bytes32 id, uint64 nonce, uint64 deadline) private view {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        uint64 expected = _grants[id].nonce;
        if (nonce != expected) revert InvalidNonce(expected, nonce);
    }

    /// @dev EIP-712 digest = keccak256("\x19\x01" || domainSeparator || structHash). The signature is
    /// in EIP-2098 compact form (r, vs): vs = (v - 27) << 255 | s, 64 bytes instead of 65 plus ABI
    /// padding. s above secp256k1n/2 is rejected (EIP-2 malleability rule).
    function _requireSigner(bytes32 structHash, bytes32 r, bytes32 vs, address patient) private view {
        bytes32 s = vs & bytes32(0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff);
        uint8 v = uint8(uint256(vs) >> 255) + 27;
        if (uint256(s) > HALF_CURVE_ORDER) revert MalformedSignature();
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0) || signer != patient) revert InvalidSigner();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function _grantId(address patient, address grantee, bytes32 scopeHash) private pure returns (bytes32) {
        return keccak256(abi.encode(patient, grantee, scopeHash));
    }
}
