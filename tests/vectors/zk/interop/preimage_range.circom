pragma circom 2.1.0;

// Tiny interop circuit for zk/groth16.py tests: a Poseidon commitment to private (secret, value)
// salted by a public input, and a range check value < max_value on 32-bit inputs (Num2Bits first,
// since circomlib comparators assume their inputs fit in n bits).
include "circomlib/circuits/poseidon.circom";
include "circomlib/circuits/comparators.circom";
include "circomlib/circuits/bitify.circom";

template PreimageRange(BITS) {
    signal input secret;
    signal input value;
    signal input salt;       // public
    signal input max_value;  // public
    signal output commitment;

    component value_bits = Num2Bits(BITS);
    value_bits.in <== value;
    component max_bits = Num2Bits(BITS);
    max_bits.in <== max_value;

    component lt = LessThan(BITS);
    lt.in[0] <== value;
    lt.in[1] <== max_value;
    lt.out === 1;

    component h = Poseidon(3);
    h.inputs[0] <== secret;
    h.inputs[1] <== value;
    h.inputs[2] <== salt;
    commitment <== h.out;
}

component main {public [salt, max_value]} = PreimageRange(32);
