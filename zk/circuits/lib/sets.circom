pragma circom 2.1.0;

// Membership of a patient's condition codes in a study's (zero-padded) code sets.
// Codes are opaque non-zero field elements (a keyed hash of "system|code"); 0 marks an empty slot on
// both sides, and an empty patient slot never counts as a match.

include "comparators.circom";

// member[i] = 1 iff codes[i] != 0 and codes[i] equals some entry of set (product of differences is 0).
template NonEmptyMembers(nCodes, nSet) {
    signal input codes[nCodes];
    signal input set[nSet];
    signal output member[nCodes];

    signal product[nCodes][nSet];
    component productIsZero[nCodes];
    component codeIsZero[nCodes];
    for (var i = 0; i < nCodes; i++) {
        product[i][0] <== codes[i] - set[0];
        for (var j = 1; j < nSet; j++) {
            product[i][j] <== product[i][j - 1] * (codes[i] - set[j]);
        }
        productIsZero[i] = IsZero();
        productIsZero[i].in <== product[i][nSet - 1];
        codeIsZero[i] = IsZero();
        codeIsZero[i].in <== codes[i];
        member[i] <== productIsZero[i].out * (1 - codeIsZero[i].out);
    }
}
