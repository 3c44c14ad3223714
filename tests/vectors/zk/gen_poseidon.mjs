// Known-answer vectors for zk/poseidon.py, computed by circomlibjs (node_modules, pinned 0.1.7).
// Usage: node tests/vectors/zk/gen_poseidon.mjs [per_arity] > tests/vectors/zk/poseidon_circomlibjs.json
// Inputs: fixed edge values plus fresh random field elements for every arity 1..16. Both circomlibjs
// implementations (the WebAssembly `buildPoseidon` and `buildPoseidonReference`) must agree.
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../..");
const lib = await import(pathToFileURL(path.join(root, "node_modules/circomlibjs/main.js")).href);
const R = 21888242871839275222246405745257275088548364400416034343698204186575808495617n;

const perArity = Number(process.argv[2] || 4);
const wasm = await lib.buildPoseidon();
const ref = await lib.buildPoseidonReference();

function randomField() {
  return BigInt("0x" + randomBytes(40).toString("hex")) % R;
}

const cases = [];
for (let n = 1; n <= 16; n++) {
  const inputsList = [
    Array.from({ length: n }, (_, i) => BigInt(i + 1)),
    Array.from({ length: n }, () => 0n),
    Array.from({ length: n }, () => R - 1n),
  ];
  for (let k = 0; k < perArity; k++) inputsList.push(Array.from({ length: n }, randomField));
  for (const inputs of inputsList) {
    const a = wasm.F.toObject(wasm(inputs));
    const b = ref.F.toObject(ref(inputs));
    if (a !== b) throw new Error(`circomlibjs implementations disagree for arity ${n}`);
    cases.push({ inputs: inputs.map(String), output: a.toString() });
  }
}
const version = createRequire(import.meta.url)(path.join(root, "node_modules/circomlibjs/package.json")).version;
process.stdout.write(JSON.stringify({ source: `circomlibjs ${version} buildPoseidon + buildPoseidonReference`, cases }, null, 1) + "\n");
process.exit(0);
