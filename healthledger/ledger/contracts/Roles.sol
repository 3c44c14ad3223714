// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Roles: one admin, operator roles, an emergency pause.
/// @notice The admin (a multisig or the consortium's governance) adds and removes operators
/// (hospitals' relayers, log anchorers, credential issuers, ...) and may pause. Admin transfer is
/// two-step (transferAdmin + acceptAdmin) so a typo cannot lock the contract. Contracts that inherit
/// this decide which functions a role or the pause may touch; the admin itself writes no records.
abstract contract Roles {
    /// @dev Packed with `paused` in one storage slot: one SLOAD serves the pause check.
    address public admin;
    bool public paused;
    address public pendingAdmin;

    mapping(bytes32 role => mapping(address account => bool)) public hasRole;

    event RoleGranted(bytes32 indexed role, address indexed account, address indexed sender);
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed sender);
    event AdminTransferStarted(address indexed currentAdmin, address indexed pendingAdmin);
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    event Paused(address indexed account);
    event Unpaused(address indexed account);

    error NotAdmin(address account);
    error NotPendingAdmin(address account);
    error MissingRole(bytes32 role, address account);
    error ZeroAddress();
    error ContractPaused();
    error NotPaused();

    constructor(address initialAdmin) {
        if (initialAdmin == address(0)) revert ZeroAddress();
        admin = initialAdmin;
        emit AdminTransferred(address(0), initialAdmin);
    }

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    modifier onlyRole(bytes32 role) {
        if (!hasRole[role][msg.sender]) revert MissingRole(role, msg.sender);
        _;
    }

    modifier whenNotPaused() {
        if (paused) revert ContractPaused();
        _;
    }

    function grantRole(bytes32 role, address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        if (!hasRole[role][account]) {
            hasRole[role][account] = true;
            emit RoleGranted(role, account, msg.sender);
        }
    }

    function revokeRole(bytes32 role, address account) external onlyAdmin {
        _dropRole(role, account);
    }

    /// @notice An operator gives up its own role (e.g. a key it believes compromised).
    function renounceRole(bytes32 role) external {
        _dropRole(role, msg.sender);
    }

    function transferAdmin(address newAdmin) external onlyAdmin {
        if (newAdmin == address(0)) revert ZeroAddress();
        pendingAdmin = newAdmin;
        emit AdminTransferStarted(msg.sender, newAdmin);
    }

    function acceptAdmin() external {
        if (msg.sender != pendingAdmin) revert NotPendingAdmin(msg.sender);
        address previous = admin;
        admin = msg.sender;
        delete pendingAdmin;
        emit AdminTransferred(previous, msg.sender);
    }

    function pause() external onlyAdmin whenNotPaused {
        paused = true;
        emit Paused(msg.sender);
    }

    function unpause() external onlyAdmin {
        if (!paused) revert NotPaused();
        paused = false;
        emit Unpaused(msg.sender);
    }

    function _dropRole(bytes32 role, address account) private {
        if (hasRole[role][account]) {
            hasRole[role][account] = false;
            emit RoleRevoked(role, account, msg.sender);
        }
    }
}
