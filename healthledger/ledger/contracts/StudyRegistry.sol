// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Roles} from "./Roles.sol";

/// @dev The Groth16 verifier exported by `snarkjs zkey export solidityverifier` (EligibilityVerifier.sol).
interface IEligibilityVerifier {
    function verifyProof(
        uint256[2] calldata pA,
        uint256[2][2] calldata pB,
        uint256[2] calldata pC,
        uint256[5] calldata pubSignals
    ) external view returns (bool);
}

/// @dev The part of CredentialRegistry a study needs.
interface IRootHistory {
    function isKnownRoot(uint256 root) external view returns (bool);
}

/// @title StudyRegistry: studies with committed eligibility criteria, and zero-knowledge enrolment.
/// @notice A STUDY_REGISTRAR registers a study id with the Poseidon hash of its compiled criteria
/// (zk/criteria.py), the id of the verifying key its proofs are checked with, its enrolment window, its
/// maximum number of participants and its owner (a pseudonymous address of the researcher's organisation).
/// A patient (or a wallet acting for them) enrols by submitting a Groth16 proof of the eligibility circuit
/// (zk/circuits/eligibility.circom) whose public signals are [root, studyId, criteriaHash, enrollee,
/// nullifier]: the contract supplies criteriaHash from storage and the enrollee itself, so a proof only
/// works for the registered criteria and for the address it was made for. `enrol` takes the enrollee as
/// msg.sender; `enrolFor` lets a RELAYER submit (and pay for) the proof of an enrollee that holds no
/// ether: the proof is bound to that enrollee, so relaying it cannot enrol anyone else. The root must be a
/// known issuer root; the nullifier (Poseidon(secret, studyId)) may be used once, so nobody enrols twice.
/// Nothing here reveals who the patient is or which attributes they have.
contract StudyRegistry is Roles {
    bytes32 public constant STUDY_REGISTRAR = keccak256("STUDY_REGISTRAR");
    bytes32 public constant RELAYER = keccak256("RELAYER");
    /// @dev BN254 scalar field order (EIP-196): study ids and hashes are field elements.
    uint256 internal constant FIELD_ORDER =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;

    struct Study {
        uint256 criteriaHash; // 0 = not registered
        bytes32 verifyingKeyId; // sha256 of the snarkjs verification key the study's proofs are made for
        uint64 opensAt; // enrolment window [opensAt, closesAt) in seconds; closesAt 0 = open-ended
        uint64 closesAt;
        uint32 maxParticipants; // 0 = no limit
        uint32 participants;
        bool closed;
        address owner;
    }

    IEligibilityVerifier public immutable verifier;
    IRootHistory public immutable credentials;

    mapping(uint256 studyId => Study) public studies;
    /// @notice nullifier -> the address that enrolled with it (zero = unused).
    mapping(uint256 nullifier => address) public enrolledBy;

    event StudyRegistered(
        uint256 indexed studyId,
        uint256 criteriaHash,
        bytes32 verifyingKeyId,
        uint64 opensAt,
        uint64 closesAt,
        uint32 maxParticipants,
        address indexed owner
    );
    event StudyClosed(uint256 indexed studyId);
    event Enrolled(uint256 indexed studyId, uint256 indexed nullifier, address indexed enrollee, uint256 root);

    error InvalidStudy();
    error StudyExists(uint256 studyId);
    error UnknownStudy(uint256 studyId);
    error StudyIsClosed(uint256 studyId);
    error EnrolmentNotOpen(uint256 studyId);
    error StudyFull(uint256 studyId);
    error UnknownRoot(uint256 root);
    error NullifierUsed(uint256 nullifier);
    error InvalidProof();

    constructor(address initialAdmin, IEligibilityVerifier verifier_, IRootHistory credentials_) Roles(initialAdmin) {
        if (address(verifier_) == address(0) || address(credentials_) == address(0)) revert ZeroAddress();
        verifier = verifier_;
        credentials = credentials_;
    }

    function registerStudy(
        uint256 studyId,
        uint256 criteriaHash,
        bytes32 verifyingKeyId,
        uint64 opensAt,
        uint64 closesAt,
        uint32 maxParticipants,
        address owner
    ) external whenNotPaused onlyRole(STUDY_REGISTRAR) {
        if (studyId >= FIELD_ORDER || criteriaHash == 0 || criteriaHash >= FIELD_ORDER) revert InvalidStudy();
        if (closesAt != 0 && closesAt <= opensAt) revert InvalidStudy();
        if (owner == address(0)) revert ZeroAddress();
        if (studies[studyId].criteriaHash != 0) revert StudyExists(studyId);
        studies[studyId] = Study(criteriaHash, verifyingKeyId, opensAt, closesAt, maxParticipants, 0, false, owner);
        emit StudyRegistered(studyId, criteriaHash, verifyingKeyId, opensAt, closesAt, maxParticipants, owner);
    }

    function closeStudy(uint256 studyId) external onlyRole(STUDY_REGISTRAR) {
        if (studies[studyId].criteriaHash == 0) revert UnknownStudy(studyId);
        studies[studyId].closed = true;
        emit StudyClosed(studyId);
    }

    /// @notice Enrol msg.sender in `studyId` with a proof against credential root `root`.
    function enrol(
        uint256 studyId,
        uint256 root,
        uint256 nullifier,
        uint256[2] calldata pA,
        uint256[2][2] calldata pB,
        uint256[2] calldata pC
    ) external whenNotPaused {
        _enrol(msg.sender, studyId, root, nullifier, pA, pB, pC);
    }

    /// @notice Enrol `enrollee` (the address the proof was made for), submitted by a relayer.
    function enrolFor(
        address enrollee,
        uint256 studyId,
        uint256 root,
        uint256 nullifier,
        uint256[2] calldata pA,
        uint256[2][2] calldata pB,
        uint256[2] calldata pC
    ) external whenNotPaused onlyRole(RELAYER) {
        if (enrollee == address(0)) revert ZeroAddress();
        _enrol(enrollee, studyId, root, nullifier, pA, pB, pC);
    }

    function _enrol(
        address enrollee,
        uint256 studyId,
        uint256 root,
        uint256 nullifier,
        uint256[2] calldata pA,
        uint256[2][2] calldata pB,
        uint256[2] calldata pC
    ) private {
        Study storage study = studies[studyId];
        uint256 criteriaHash = study.criteriaHash;
        if (criteriaHash == 0) revert UnknownStudy(studyId);
        if (study.closed) revert StudyIsClosed(studyId);
        if (block.timestamp < study.opensAt || (study.closesAt != 0 && block.timestamp >= study.closesAt)) {
            revert EnrolmentNotOpen(studyId);
        }
        uint32 participants = study.participants;
        if (study.maxParticipants != 0 && participants >= study.maxParticipants) revert StudyFull(studyId);
        if (enrolledBy[nullifier] != address(0)) revert NullifierUsed(nullifier);
        if (!credentials.isKnownRoot(root)) revert UnknownRoot(root);
        uint256[5] memory pubSignals = [root, studyId, criteriaHash, uint256(uint160(enrollee)), nullifier];
        // The generated verifier returns false (rather than reverting) when a precompile fails, e.g. out
        // of gas: only an explicit true counts.
        if (!_verify(pA, pB, pC, pubSignals)) revert InvalidProof();
        enrolledBy[nullifier] = enrollee;
        study.participants = participants + 1;
        emit Enrolled(studyId, nullifier, enrollee, root);
    }

    function _verify(
        uint256[2] calldata pA,
        uint256[2][2] calldata pB,
        uint256[2] calldata pC,
        uint256[5] memory pubSignals
    ) private view returns (bool) {
        (bool ok, bytes memory result) = address(verifier).staticcall(
            abi.encodeWithSelector(IEligibilityVerifier.verifyProof.selector, pA, pB, pC, pubSignals)
        );
        return ok && result.length == 32 && abi.decode(result, (bool));
    }
}
