// Runs the study page's eligibility check and circuit input builder (healthledger/web/static/js/eligibility.js,
// poseidon.js) over cases read from stdin, as tests/web/test_eligibility_js.py writes them; prints one result
// per case: {meets} for "check" cases, {inputs} for "inputs" cases, {hash} for "poseidon" cases.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const js = join(here, "..", "..", "healthledger", "web", "static", "js");
const eligibility = await import(join(js, "eligibility.js"));
const poseidon = await import(join(js, "poseidon.js"));
const { params, cases } = JSON.parse(readFileSync(0, "utf8"));
const constants = poseidon.parameters(params);
const out = cases.map((c) => {
  if (c.kind === "check") return { meets: eligibility.meetsCriteria(c.attrs, c.criteria) };
  if (c.kind === "poseidon") return { hash: poseidon.poseidon(c.inputs, constants).toString() };
  return { inputs: eligibility.eligibilityInputs({ ...c.args, params: constants }) };
});
process.stdout.write(JSON.stringify(out));
