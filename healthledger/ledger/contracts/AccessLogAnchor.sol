// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Roles} from "./Roles.sol";

/// @title AccessLogAnchor: Merkle roots (RFC 6962 / RFC 9162 tree heads) of access logs.
/// @notice A LOG_ANCHORER operator anchors (logId, treeSize, rootHash); tree sizes strictly grow per
/// log, so an anchored head can never be replaced by an older or equal one. Auditors check a
/// consistency proof between consecutive anchors off-chain. Past anchors are never altered by any role.
/// Anchoring is not stopped by the pause: it only appends commitments, and pausing it would leave every
/// log of every hospital on the contract unanchored meanwhile; a leaked anchorer key is removed with
/// `revokeRole`, which stops it as immediately (and the pause check would cost a cold storage read).
/// @dev Gas: a log's head is one storage slot (its tree size and the first 24 bytes of its root), so the
/// first anchor of a log writes one new slot, not two. The full root is in the `Anchored` event, which is
/// what auditors read (events are covered by the block's receipts root like storage is by its state
/// root); on-chain readers compare a root they hold with `isLatest` (192 bits of the root: finding a
/// second root with the same prefix is a 2^192 search, two colliding roots 2^96).
contract AccessLogAnchor is Roles {
    bytes32 public constant LOG_ANCHORER = keccak256("LOG_ANCHORER");

    struct Head {
        uint64 treeSize;
        bytes24 rootPrefix; // the root's first 24 bytes
    }

    mapping(bytes32 logId => Head) private _heads;

    event Anchored(bytes32 indexed logId, uint64 treeSize, bytes32 rootHash);

    error EmptyRoot();
    error TreeSizeNotIncreasing(uint64 current, uint64 given);

    constructor(address initialAdmin) Roles(initialAdmin) {}

    function anchor(bytes32 logId, uint64 treeSize, bytes32 rootHash) external onlyRole(LOG_ANCHORER) {
        if (rootHash == bytes32(0)) revert EmptyRoot();
        uint64 current = _heads[logId].treeSize;
        if (treeSize <= current) revert TreeSizeNotIncreasing(current, treeSize);
        _heads[logId] = Head(treeSize, bytes24(rootHash));
        emit Anchored(logId, treeSize, rootHash);
    }

    /// @notice The latest anchored head of a log (tree size, first 24 bytes of the root); zeros if never anchored.
    function latest(bytes32 logId) external view returns (uint64 treeSize, bytes24 rootPrefix) {
        Head memory head = _heads[logId];
        return (head.treeSize, head.rootPrefix);
    }

    /// @notice Whether (treeSize, rootHash) is the latest anchored head of the log.
    function isLatest(bytes32 logId, uint64 treeSize, bytes32 rootHash) external view returns (bool) {
        Head memory head = _heads[logId];
        return head.treeSize == treeSize && treeSize != 0 && head.rootPrefix == bytes24(rootHash);
    }
}
