"""Zero-knowledge eligibility: Poseidon, Poseidon Merkle tree, snarkjs formats, Groth16 verifier, criteria, prover."""
