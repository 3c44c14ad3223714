#!/usr/bin/env bash
# Build the snarkjs interop vectors for tests/zk/test_groth16*.py with the pinned npm tools only.
# Usage: tests/vectors/zk/interop/make_interop.sh [OUT_DIR]   (default: this directory)
# LOCAL TEST CEREMONY: the powers of tau and phase-2 contributions use throwaway random entropy; the keys
# are for tests only. Steps: circom2 compile, powersoftau new/contribute/prepare phase2 (2^9),
# groth16 setup, zkey contribute, export verificationkey, groth16 fullprove, groth16 verify,
# zkey export soliditycalldata.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
OUT="$(mkdir -p "${1:-$HERE}" && cd "${1:-$HERE}" && pwd)"
BIN="$ROOT/node_modules/.bin"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
entropy() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

"$BIN/circom2" "$HERE/preimage_range.circom" --r1cs --wasm --O2 -l "$ROOT/node_modules" -o "$WORK" >/dev/null
"$BIN/snarkjs" powersoftau new bn128 9 "$WORK/pot_0.ptau" >/dev/null
"$BIN/snarkjs" powersoftau contribute "$WORK/pot_0.ptau" "$WORK/pot_1.ptau" --name=interop -e="$(entropy)" >/dev/null
"$BIN/snarkjs" powersoftau prepare phase2 "$WORK/pot_1.ptau" "$WORK/pot_final.ptau" >/dev/null
"$BIN/snarkjs" groth16 setup "$WORK/preimage_range.r1cs" "$WORK/pot_final.ptau" "$WORK/c_0.zkey" >/dev/null
"$BIN/snarkjs" zkey contribute "$WORK/c_0.zkey" "$OUT/preimage_range_final.zkey" --name=interop -e="$(entropy)" >/dev/null
"$BIN/snarkjs" zkey export verificationkey "$OUT/preimage_range_final.zkey" "$OUT/verification_key.json" >/dev/null
cp "$WORK/preimage_range_js/preimage_range.wasm" "$OUT/preimage_range.wasm"
cat > "$OUT/input.json" <<'JSON'
{"secret": "123456789123456789", "value": "41", "salt": "987654321", "max_value": "65"}
JSON
"$BIN/snarkjs" groth16 fullprove "$OUT/input.json" "$OUT/preimage_range.wasm" "$OUT/preimage_range_final.zkey" \
    "$OUT/proof.json" "$OUT/public.json" >/dev/null
"$BIN/snarkjs" groth16 verify "$OUT/verification_key.json" "$OUT/public.json" "$OUT/proof.json" | grep -q "OK"
(cd "$OUT" && "$BIN/snarkjs" zkey export soliditycalldata public.json proof.json > soliditycalldata.txt)
(cd "$OUT" && sha256sum preimage_range.wasm preimage_range_final.zkey verification_key.json proof.json public.json \
    soliditycalldata.txt > SHA256SUMS)
echo "interop vectors written to $OUT"
