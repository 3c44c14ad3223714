// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Roles} from "./Roles.sol";

/// @title CredentialRegistry: Merkle roots of issuers' eligibility-credential trees, with a root history.
/// @notice Each ISSUER (a hospital) keeps a Poseidon Merkle tree of credential leaves off-chain
/// (zk/merkle.py) and anchors every new root here. A proof made against one of an issuer's last
/// ROOT_HISTORY roots stays valid, so patients proving while the issuer inserts others are not
/// invalidated. A root stops being known when its issuer loses the ISSUER role (e.g. a compromised
/// key), and it never identifies a patient: leaves are Poseidon commitments.
/// @dev Lookup is O(1): root -> (issuer, sequence) plus a per-issuer latest sequence, instead of
/// scanning a ring buffer (ROOT_HISTORY cold SLOADs inside every enrolment).
contract CredentialRegistry is Roles {
    bytes32 public constant ISSUER = keccak256("ISSUER");
    /// @dev BN254 scalar field order (EIP-196): roots are field elements.
    uint256 internal constant FIELD_ORDER =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;
    uint64 public constant ROOT_HISTORY = 30;

    struct RootRecord {
        address issuer;
        uint64 sequence; // 1-based position in the issuer's anchoring order
    }

    mapping(uint256 root => RootRecord) private _roots;
    mapping(address issuer => uint64) public latestSequence;
    mapping(address issuer => uint256) public latestRoot;

    event RootAnchored(address indexed issuer, uint256 indexed root, uint64 sequence, uint64 leafCount);

    error InvalidRoot();
    error RootAlreadyAnchored(uint256 root);

    constructor(address initialAdmin) Roles(initialAdmin) {}

    /// @notice Anchor the issuer's new tree root (`leafCount` leaves so far, for auditors).
    function anchorRoot(uint256 root, uint64 leafCount) external whenNotPaused onlyRole(ISSUER) {
        if (root == 0 || root >= FIELD_ORDER) revert InvalidRoot();
        if (_roots[root].issuer != address(0)) revert RootAlreadyAnchored(root);
        uint64 sequence = latestSequence[msg.sender] + 1;
        _roots[root] = RootRecord(msg.sender, sequence);
        latestSequence[msg.sender] = sequence;
        latestRoot[msg.sender] = root;
        emit RootAnchored(msg.sender, root, sequence, leafCount);
    }

    /// @notice True if `root` is among its issuer's last ROOT_HISTORY roots and the issuer still holds ISSUER.
    function isKnownRoot(uint256 root) public view returns (bool) {
        RootRecord memory record = _roots[root];
        if (record.issuer == address(0)) return false;
        if (latestSequence[record.issuer] - record.sequence >= ROOT_HISTORY) return false;
        return hasRole[ISSUER][record.issuer];
    }

    /// @notice Who anchored `root` (zero address if unknown).
    function issuerOf(uint256 root) external view returns (address) {
        return _roots[root].issuer;
    }
}
