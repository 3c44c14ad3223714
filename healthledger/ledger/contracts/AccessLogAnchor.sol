// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Roles} from "./Roles.sol";

/// @title AccessLogAnchor: Merkle roots (RFC 6962 / RFC 9162 tree heads) of access logs.
/// @notice A LOG_ANCHORER operator anchors (logId, treeSize, rootHash); tree sizes strictly grow per
/// log, so an anchored head can never be replaced by an older or equal one. Auditors check a
/// consistency proof between consecutive anchors off-chain. The pause stops anchoring (a compromised
/// anchorer key could otherwise keep writing); past anchors are never altered by any role.
contract AccessLogAnchor is Roles {
    bytes32 public constant LOG_ANCHORER = keccak256("LOG_ANCHORER");

    struct Head {
        uint64 treeSize;
        uint64 anchoredAt; // block timestamp
        bytes32 rootHash;
    }

    mapping(bytes32 logId => Head) private _heads;

    event Anchored(bytes32 indexed logId, uint64 treeSize, bytes32 rootHash);

    error EmptyRoot();
    error TreeSizeNotIncreasing(uint64 current, uint64 given);

    constructor(address initialAdmin) Roles(initialAdmin) {}

    function anchor(bytes32 logId, uint64 treeSize, bytes32 rootHash)
        external
        whenNotPaused
        onlyRole(LOG_ANCHORER)
    {
        if (rootHash == bytes32(0)) revert EmptyRoot();
        Head storage head = _heads[logId];
        uint64 current = head.treeSize;
        if (treeSize <= current) revert TreeSizeNotIncreasing(current, treeSize);
        (head.treeSize, head.anchoredAt, head.rootHash) = (treeSize, uint64(block.timestamp), rootHash);
        emit Anchored(logId, treeSize, rootHash);
    }

    /// @notice The latest anchored head of a log; zeros if never anchored.
    function latest(bytes32 logId) external view returns (uint64 treeSize, bytes32 rootHash, uint64 anchoredAt) {
        Head memory head = _heads[logId];
        return (head.treeSize, head.rootHash, head.anchoredAt);
    }
}
