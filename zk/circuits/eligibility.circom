pragma circom 2.1.0;

// Eligibility proof: "a credential leaf in the issuer's tree with this root satisfies this study's
// criteria", bound to one study (nullifier) and one enrolling address. See zk/artifacts/eligibility/BUILD.md.
//
// Public signals, in this order (all are public inputs, the circuit has no outputs):
//   0 root          Poseidon Merkle root of the issuer's credential tree (zk/merkle.py)
//   1 studyId       the study's identifier as a field element
//   2 criteriaHash  Poseidon commitment to the study's compiled criteria (zk/criteria.py)
//   3 enrollee      the address that will call StudyRegistry.enrol (as an integer)
//   4 nullifier     Poseidon([secret, studyId]): one enrolment per patient and study
//
// Credential leaf (zk/credential.py), Poseidon with 4 + nConditions + nLabs inputs:
//   [identityCommitment, birthDays, sex, conditions[0..K-1], labs[0..L-1], issuanceEpoch]
//   identityCommitment = Poseidon([secret]); birthDays counts days since 1900-01-01;
//   sex: 0 unknown, 1 female, 2 male, 3 other; conditions are keyed hashes (0 = empty slot);
//   labs are 0 when not measured, else round(value * 100) + 1.

include "poseidon.circom";
include "comparators.circom";
include "bitify.circom";
include "lib/range.circom";
include "lib/merkle.circom";
include "lib/sets.circom";

// Bit widths of the range checks: days fit 17 bits (until year 2258), scaled labs 32 bits.
template Eligibility(depth, nConditions, nLabs, nInclusion, nExclusion) {
    var DAY_BITS = 17;
    var LAB_BITS = 32;
    var SEX_CODES = 4;
    var CRITERIA_VERSION = 1;

    // Public.
    signal input root;
    signal input studyId;
    signal input criteriaHash;
    signal input enrollee;
    signal input nullifier;

    // Private: the patient's secret, credential and Merkle path.
    signal input secret;
    signal input birthDays;
    signal input sex;
    signal input conditions[nConditions];
    signal input labs[nLabs];
    signal input issuanceEpoch;
    signal input siblings[depth];
    signal input pathBits[depth];

    // Private, but fixed by criteriaHash: the study's compiled criteria.
    signal input referenceDay;
    signal input minAgeDays;
    signal input maxAgeDays;
    signal input sexMask;
    signal input flags;            // bit 0: inclusion set required; bit 1 + i: lab i range enforced
    signal input inclusionCodes[nInclusion];
    signal input exclusionCodes[nExclusion];
    signal input labLo[nLabs];
    signal input labHi[nLabs];

    // 1. The credential leaf is in the tree.
    component identity = Poseidon(1);
    identity.inputs[0] <== secret;
    component leaf = Poseidon(4 + nConditions + nLabs);
    leaf.inputs[0] <== identity.out;
    leaf.inputs[1] <== birthDays;
    leaf.inputs[2] <== sex;
    for (var i = 0; i < nConditions; i++) {
        leaf.inputs[3 + i] <== conditions[i];
    }
    for (var i = 0; i < nLabs; i++) {
        leaf.inputs[3 + nConditions + i] <== labs[i];
    }
    leaf.inputs[3 + nConditions + nLabs] <== issuanceEpoch;
    component tree = MerkleRoot(depth);
    tree.leaf <== leaf.out;
    for (var i = 0; i < depth; i++) {
        tree.siblings[i] <== siblings[i];
        tree.pathBits[i] <== pathBits[i];
    }
    root === tree.root;

    // 2. The criteria are the ones the study committed to.
    component inclusionHash = Poseidon(nInclusion);
    for (var i = 0; i < nInclusion; i++) {
        inclusionHash.inputs[i] <== inclusionCodes[i];
    }
    component exclusionHash = Poseidon(nExclusion);
    for (var i = 0; i < nExclusion; i++) {
        exclusionHash.inputs[i] <== exclusionCodes[i];
    }
    component criteria = Poseidon(8 + 2 * nLabs);
    criteria.inputs[0] <== CRITERIA_VERSION;
    criteria.inputs[1] <== referenceDay;
    criteria.inputs[2] <== minAgeDays;
    criteria.inputs[3] <== maxAgeDays;
    criteria.inputs[4] <== sexMask;
    criteria.inputs[5] <== flags;
    criteria.inputs[6] <== inclusionHash.out;
    criteria.inputs[7] <== exclusionHash.out;
    for (var i = 0; i < nLabs; i++) {
        criteria.inputs[8 + i] <== labLo[i];
        criteria.inputs[8 + nLabs + i] <== labHi[i];
    }
    criteriaHash === criteria.out;

    // 3. Age in days at the reference day within [minAgeDays, maxAgeDays]. Range-checking the
    //    difference to DAY_BITS also rejects a birth day after the reference day (wrap-around).
    component birthBits = RangeCheck(DAY_BITS);
    birthBits.in <== birthDays;
    component referenceBits = RangeCheck(DAY_BITS);
    referenceBits.in <== referenceDay;
    component age = InClosedRange(DAY_BITS);
    age.value <== referenceDay - birthDays;
    age.lo <== minAgeDays;
    age.hi <== maxAgeDays;
    age.out === 1;

    // 4. Sex in the allowed set: bit `sex` of sexMask is set.
    component sexBits = Num2Bits(2);
    sexBits.in <== sex;
    component maskBits = Num2Bits(SEX_CODES);
    maskBits.in <== sexMask;
    component sexIs[SEX_CODES];
    signal sexAllowedTerm[SEX_CODES];
    var sexAllowed = 0;
    for (var k = 0; k < SEX_CODES; k++) {
        sexIs[k] = IsEqual();
        sexIs[k].in[0] <== sex;
        sexIs[k].in[1] <== k;
        sexAllowedTerm[k] <== sexIs[k].out * maskBits.out[k];
        sexAllowed += sexAllowedTerm[k];
    }
    sexAllowed === 1;

    // 5. Conditions: at least one in the inclusion set when required, none in the exclusion set.
    component flagBits = Num2Bits(1 + nLabs);
    flagBits.in <== flags;
    component included = NonEmptyMembers(nConditions, nInclusion);
    component excluded = NonEmptyMembers(nConditions, nExclusion);
    for (var i = 0; i < nConditions; i++) {
        included.codes[i] <== conditions[i];
        excluded.codes[i] <== conditions[i];
    }
    for (var j = 0; j < nInclusion; j++) {
        included.set[j] <== inclusionCodes[j];
    }
    for (var j = 0; j < nExclusion; j++) {
        excluded.set[j] <== exclusionCodes[j];
    }
    var includedCount = 0;
    for (var i = 0; i < nConditions; i++) {
        includedCount += included.member[i];
        excluded.member[i] === 0;
    }
    component noneIncluded = IsZero();
    noneIncluded.in <== includedCount;
    flagBits.out[0] * noneIncluded.out === 0;

    // 6. Each enforced lab value within [labLo, labHi] (a missing lab is 0, below any enforced lo >= 1).
    component labRange[nLabs];
    for (var i = 0; i < nLabs; i++) {
        labRange[i] = InClosedRange(LAB_BITS);
        labRange[i].value <== labs[i];
        labRange[i].lo <== labLo[i];
        labRange[i].hi <== labHi[i];
        flagBits.out[1 + i] * (1 - labRange[i].out) === 0;
    }

    // 7. Nullifier, and binding to the enrolling address (a squared copy keeps the otherwise unused
    //    public input in a constraint, so a proof for one address does not verify for another).
    component nullifierHash = Poseidon(2);
    nullifierHash.inputs[0] <== secret;
    nullifierHash.inputs[1] <== studyId;
    nullifier === nullifierHash.out;
    signal enrolleeSquare;
    enrolleeSquare <== enrollee * enrollee;
}

component main {public [root, studyId, criteriaHash, enrollee, nullifier]} = Eligibility(20, 8, 3, 8, 8);
