pragma circom 2.1.0;

// Inclusion in a binary Poseidon Merkle tree, as built by zk/merkle.py:
// node = Poseidon([left, right]); pathBits[i] = 1 when the running node is the RIGHT child at level i
// (bit i of the leaf index, least significant first); empty leaves are 0.

include "poseidon.circom";

template MerkleRoot(depth) {
    signal input leaf;
    signal input siblings[depth];
    signal input pathBits[depth];
    signal output root;

    signal running[depth + 1];
    signal left[depth];
    signal right[depth];
    component hashers[depth];
    running[0] <== leaf;
    for (var i = 0; i < depth; i++) {
        // A path bit that is not 0 or 1 would let the prover blend both orders.
        pathBits[i] * (1 - pathBits[i]) === 0;
        // left = bit ? sibling : running; right = bit ? running : sibling (one multiplication each).
        left[i] <== running[i] + pathBits[i] * (siblings[i] - running[i]);
        right[i] <== siblings[i] + running[i] - left[i];
        hashers[i] = Poseidon(2);
        hashers[i].inputs[0] <== left[i];
        hashers[i].inputs[1] <== right[i];
        running[i + 1] <== hashers[i].out;
    }
    root <== running[depth];
}
