// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Roles} from "./Roles.sol";

/// @title MemberRegistry: the consortium's directory of member organisations.
/// @notice Each member is an organisation id (a short slug, e.g. "hospital-b"; the key is its keccak256),
/// a display name, the base URL of its FHIR API, the RFC 7638 SHA-256 thumbprint of the public key its
/// servers sign client assertions with, and a status. The data is public by nature (organisations,
/// endpoints, public keys); no patient data ever comes here.
///
/// Life of a member:
/// - the organisation's own account (its `controller`, the hospital's chain operator) asks to join:
///   `requestJoin` -> Pending;
/// - the consortium's admin (a multisig or its governance) admits it: `admit` -> Active (`MemberJoined`);
/// - the controller rotates its signing key whenever it likes: `rotateKey` (`KeyRotated`); the old key stops
///   being the member's key at once (servers re-check the key on every token and every request);
/// - the admin removes it: `remove` -> Removed (`MemberRemoved`), for good (a removed id cannot come back:
///   an organisation that rejoins does so under a new id, so old grants to the old id do not revive).
/// Removal and key rotation work while paused: they only take trust away. Joining does not.
contract MemberRegistry is Roles {
    enum Status {
        None,
        Pending,
        Active,
        Removed
    }

    struct Member {
        address controller;
        Status status;
        bytes32 keyThumbprint;
        string orgId;
        string name;
        string fhirBaseUrl;
    }

    uint256 internal constant MAX_TEXT = 256;

    /// @notice The block this registry was deployed in: members attaching to it index from here.
    uint256 public immutable deployedAt;

    mapping(bytes32 orgKey => Member) private members;

    event JoinRequested(bytes32 indexed orgKey, address indexed controller, string orgId, string name, string fhirBaseUrl, bytes32 keyThumbprint);
    event MemberJoined(bytes32 indexed orgKey, address indexed admin);
    event KeyRotated(bytes32 indexed orgKey, bytes32 previousThumbprint, bytes32 keyThumbprint);
    event EndpointChanged(bytes32 indexed orgKey, string fhirBaseUrl);
    event MemberRemoved(bytes32 indexed orgKey, address indexed admin);

    error InvalidMember();
    error MemberExists(bytes32 orgKey);
    error UnknownMember(bytes32 orgKey);
    error NotController(bytes32 orgKey, address account);
    error WrongStatus(bytes32 orgKey, Status status);

    constructor(address initialAdmin) Roles(initialAdmin) {
        deployedAt = block.number;
    }

    /// @notice The key of an organisation id in this registry.
    function orgKeyOf(string calldata orgId) public pure returns (bytes32) {
        return keccak256(bytes(orgId));
    }

    /// @notice Ask to join as `orgId`; msg.sender becomes the member's controller.
    function requestJoin(
        string calldata orgId,
        string calldata name,
        string calldata fhirBaseUrl,
        bytes32 keyThumbprint
    ) external whenNotPaused returns (bytes32 orgKey) {
        if (
            bytes(orgId).length == 0 || bytes(orgId).length > 40 || bytes(name).length == 0
                || bytes(name).length > MAX_TEXT || bytes(fhirBaseUrl).length == 0
                || bytes(fhirBaseUrl).length > MAX_TEXT || keyThumbprint == bytes32(0)
        ) revert InvalidMember();
        orgKey = keccak256(bytes(orgId));
        if (members[orgKey].status != Status.None) revert MemberExists(orgKey);
        members[orgKey] = Member(msg.sender, Status.Pending, keyThumbprint, orgId, name, fhirBaseUrl);
        emit JoinRequested(orgKey, msg.sender, orgId, name, fhirBaseUrl, keyThumbprint);
    }

    /// @notice The admin admits a pending member.
    function admit(bytes32 orgKey) external onlyAdmin whenNotPaused {
        Member storage m = members[orgKey];
        if (m.status != Status.Pending) revert WrongStatus(orgKey, m.status);
        m.status = Status.Active;
        emit MemberJoined(orgKey, msg.sender);
    }

    /// @notice The member's controller replaces its signing key (pending or active members).
    function rotateKey(bytes32 orgKey, bytes32 keyThumbprint) external {
        Member storage m = _controlled(orgKey);
        if (keyThumbprint == bytes32(0)) revert InvalidMember();
        bytes32 previous = m.keyThumbprint;
        m.keyThumbprint = keyThumbprint;
        emit KeyRotated(orgKey, previous, keyThumbprint);
    }

    /// @notice The member's controller moves its FHIR endpoint.
    function changeEndpoint(bytes32 orgKey, string calldata fhirBaseUrl) external whenNotPaused {
        Member storage m = _controlled(orgKey);
        if (bytes(fhirBaseUrl).length == 0 || bytes(fhirBaseUrl).length > MAX_TEXT) revert InvalidMember();
        m.fhirBaseUrl = fhirBaseUrl;
        emit EndpointChanged(orgKey, fhirBaseUrl);
    }

    /// @notice The admin removes a pending or active member, for good; so may the member itself (leaving).
    function remove(bytes32 orgKey) external {
        Member storage m = members[orgKey];
        if (m.status == Status.None) revert UnknownMember(orgKey);
        if (msg.sender != admin && msg.sender != m.controller) revert NotAdmin(msg.sender);
        if (m.status == Status.Removed) revert WrongStatus(orgKey, m.status);
        m.status = Status.Removed;
        emit MemberRemoved(orgKey, msg.sender);
    }

    /// @notice Everything the directory says of one member (status None: never heard of).
    function memberOf(bytes32 orgKey) external view returns (Member memory) {
        return members[orgKey];
    }

    /// @notice Is `keyThumbprint` the current key of an active member?
    function isActiveKey(bytes32 orgKey, bytes32 keyThumbprint) external view returns (bool) {
        Member storage m = members[orgKey];
        return m.status == Status.Active && m.keyThumbprint == keyThumbprint;
    }

    function _controlled(bytes32 orgKey) private view returns (Member storage m) {
        m = members[orgKey];
        if (m.status == Status.None) revert UnknownMember(orgKey);
        if (m.status == Status.Removed) revert WrongStatus(orgKey, m.status);
        if (msg.sender != m.controller) revert NotController(orgKey, msg.sender);
    }
}
