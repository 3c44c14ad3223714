// Known-answer roots and paths for zk/merkle.py, with hashes computed by circomlibjs poseidon (pinned 0.1.7).
// Usage: node tests/vectors/zk/gen_merkle.mjs > tests/vectors/zk/merkle_circomlibjs.json
// Tree: binary, node = poseidon([left, right]), empty leaf 0, level 0 = leaves; path bit = index bit.
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../..");
const lib = await import(pathToFileURL(path.join(root, "node_modules/circomlibjs/main.js")).href);
const poseidon = await lib.buildPoseidon();
const H = (a, b) => poseidon.F.toObject(poseidon([a, b]));

function build(depth, leaves) {
  const zeros = [0n];
  for (let h = 0; h < depth; h++) zeros.push(H(zeros[h], zeros[h]));
  const levels = [new Map(leaves.map((v, i) => [i, v]))];
  for (let h = 0; h < depth; h++) {
    const below = levels[h], above = new Map();
    for (const i of below.keys()) {
      const p = i >> 1;
      if (above.has(p)) continue;
      const l = below.has(2 * p) ? below.get(2 * p) : zeros[h];
      const r = below.has(2 * p + 1) ? below.get(2 * p + 1) : zeros[h];
      above.set(p, H(l, r));
    }
    levels.push(above);
  }
  const get = (h, i) => (levels[h].has(i) ? levels[h].get(i) : zeros[h]);
  const paths = leaves.map((_, index) => {
    const siblings = [], bits = [];
    let i = index;
    for (let h = 0; h < depth; h++) { siblings.push(get(h, i ^ 1).toString()); bits.push(i & 1); i >>= 1; }
    return { leaf_index: index, siblings, path_bits: bits };
  });
  return { depth, leaves: leaves.map(String), root: get(depth, 0).toString(), zero_hashes: zeros.map(String), paths };
}

const trees = [
  build(3, [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]),
  build(4, [11n, 0n, 13n]),
  build(20, [1n, 2n, 3n, 4n, 5n]),
  build(20, [123456789n, 21888242871839275222246405745257275088548364400416034343698204186575808495616n]),
];
process.stdout.write(JSON.stringify({ source: "circomlibjs 0.1.7 buildPoseidon", trees }, null, 1) + "\n");
process.exit(0);
