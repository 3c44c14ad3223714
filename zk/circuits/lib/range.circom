pragma circom 2.1.0;

// Range-checked comparisons. circomlib's LessThan(n) is only sound when both inputs are < 2^n,
// which it does not enforce; every value reaching a comparator here passes Num2Bits(n) first.

include "bitify.circom";
include "comparators.circom";

// Constrains `in` < 2^n (a prover cannot use field wrap-around).
template RangeCheck(n) {
    signal input in;
    component bits = Num2Bits(n);
    bits.in <== in;
}

// out = 1 iff lo <= value <= hi, for value, lo, hi each range-checked to n bits.
template InClosedRange(n) {
    signal input value;
    signal input lo;
    signal input hi;
    signal output out;

    component checkValue = RangeCheck(n);
    checkValue.in <== value;
    component checkLo = RangeCheck(n);
    checkLo.in <== lo;
    component checkHi = RangeCheck(n);
    checkHi.in <== hi;

    component aboveLo = LessEqThan(n);
    aboveLo.in[0] <== lo;
    aboveLo.in[1] <== value;
    component belowHi = LessEqThan(n);
    belowHi.in[0] <== value;
    belowHi.in[1] <== hi;

    out <== aboveLo.out * belowHi.out;
}
