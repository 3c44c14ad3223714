// Long-lived Groth16 prover for zk/prover.py: one JSON request per stdin line, one JSON answer per stdout line.
//
//   argv[2]: the node_modules directory holding snarkjs (pinned in package.json).
//   request:  {"id": 1, "op": "prove" | "witness" | "ping", "wasm": PATH, "zkey": PATH, "input": {...}}
//   answer:   {"id": 1, "ok": true, "proof": {...}, "publicSignals": [...], "timings": {"witness_ms", "prove_ms"}}
//             {"id": 1, "ok": false, "kind": "unsatisfied" | "bad_request" | "internal", "error": "..."}
// stdout carries answers only: anything snarkjs or the witness calculator prints goes to stderr.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";

const nodeModules = process.argv[2];
if (!nodeModules) {
  process.stderr.write("usage: node prover_worker.mjs NODE_MODULES_DIR\n");
  process.exit(2);
}
const require = createRequire(join(nodeModules, "noop.js"));
const snarkjs = require("snarkjs");
const { WitnessCalculatorBuilder } = require("circom_runtime");
const { unstringifyBigInts } = require("ffjavascript").utils;

// Warm state: the compiled witness calculator per wasm and the zkey bytes per path, so a request pays
// neither the 7 MB WebAssembly compilation nor the zkey read again.
const calculators = new Map();
const zkeys = new Map();

async function calculator(wasmPath) {
  if (!calculators.has(wasmPath)) {
    calculators.set(wasmPath, await WitnessCalculatorBuilder(readFileSync(wasmPath)));
  }
  return calculators.get(wasmPath);
}

function zkeyFile(zkeyPath) {
  if (!zkeys.has(zkeyPath)) zkeys.set(zkeyPath, new Uint8Array(readFileSync(zkeyPath)));
  return { type: "mem", data: zkeys.get(zkeyPath) };
}

const answer = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
console.log = (...args) => process.stderr.write(args.join(" ") + "\n");
console.info = console.log;
console.warn = console.log;

// circom's witness calculator reports failed `===` constraints as "Assert Failed" / "Error in template".
function failureKind(message) {
  return /Assert Failed|Error in template|Not all inputs|Too many values|Signal not found|Invalid input/i.test(message)
    ? "unsatisfied"
    : "internal";
}

// Short, PHI-free reason: the template and line circom names, never input values.
function failureReason(message) {
  const where = /Error in template (\S+) line: (\d+)/.exec(message);
  if (where) return `constraint failed in template ${where[1]} line ${where[2]}`;
  const missing = /(Not all inputs have been set[^\n]*|Too many values for input signal \S+|Signal not found[^\n]*)/.exec(message);
  if (missing) return missing[1];
  return message.split("\n")[0].slice(0, 200);
}

async function handle(req) {
  if (req.op === "ping") return { ok: true };
  if (typeof req.wasm !== "string" || typeof req.input !== "object" || req.input === null) {
    return { ok: false, kind: "bad_request", error: "request needs wasm (path) and input (object)" };
  }
  const t0 = performance.now();
  let wtns;
  try {
    const wc = await calculator(req.wasm);
    wtns = { type: "mem", data: await wc.calculateWTNSBin(unstringifyBigInts(req.input), 0) };
  } catch (err) {
    calculators.delete(req.wasm); // never reuse an instance that stopped mid-computation
    const message = String(err && err.message ? err.message : err);
    return { ok: false, kind: failureKind(message), error: failureReason(message) };
  }
  const t1 = performance.now();
  if (req.op === "witness") return { ok: true, timings: { witness_ms: t1 - t0 } };
  if (req.op !== "prove") return { ok: false, kind: "bad_request", error: `unknown op ${req.op}` };
  if (typeof req.zkey !== "string") return { ok: false, kind: "bad_request", error: "prove needs zkey (path)" };
  const { proof, publicSignals } = await snarkjs.groth16.prove(zkeyFile(req.zkey), wtns);
  const t2 = performance.now();
  return { ok: true, proof, publicSignals, timings: { witness_ms: t1 - t0, prove_ms: t2 - t1 } };
}

// Requests are handled one at a time, in order (the Python side sends one and waits).
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
let queue = Promise.resolve();
lines.on("line", (line) => {
  queue = queue.then(async () => {
    let req;
    try {
      req = JSON.parse(line);
    } catch {
      answer({ id: null, ok: false, kind: "bad_request", error: "request is not JSON" });
      return;
    }
    try {
      answer({ id: req.id ?? null, ...(await handle(req)) });
    } catch (err) {
      answer({ id: req.id ?? null, ok: false, kind: "internal", error: failureReason(String(err && err.message ? err.message : err)) });
    }
  });
});
lines.on("close", () => {
  queue.then(() => process.exit(0));
});
answer({ id: 0, ok: true, ready: true, snarkjs: JSON.parse(readFileSync(join(nodeModules, "snarkjs", "package.json"), "utf8")).version });
