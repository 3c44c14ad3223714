// Runs the web app's RFC 6962 verifier (healthledger/web/static/js/merkle.js) over cases read from stdin, as
// tests/web/test_merkle_js.py writes them, and prints one result per case: {leaf} for leaf-hash cases,
// {root} or {error} for inclusion cases. Node 20's crypto.subtle stands in for the browser's.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const merkle = await import(join(here, "..", "..", "healthledger", "web", "static", "js", "merkle.js"));
const cases = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const c of cases) {
  if (c.kind === "leaf") {
    out.push({ leaf: merkle.toHex(await merkle.leafHash(merkle.fromHex(c.entry))) });
    continue;
  }
  try {
    const proof = c.proof.map(merkle.fromHex);
    const leaf = merkle.fromHex(c.leaf);
    const root = await merkle.rootFromInclusionProof(c.index, c.size, leaf, proof);
    let verified = true;
    try { await merkle.verifyInclusion(c.index, c.size, leaf, proof, merkle.fromHex(c.root)); } catch (e) { verified = false; }
    out.push({ root: merkle.toHex(root), verified });
  } catch (error) {
    if (error.name !== "ProofError") throw error;
    out.push({ error: error.message, verified: false });
  }
}
process.stdout.write(JSON.stringify(out));
