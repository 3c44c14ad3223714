// Groth16 proving of the eligibility circuit with snarkjs, in a Web Worker so the page stays responsive.
// Messages in:  {type: "prove", input}   (the circuit's input signals, decimal strings)
// Messages out: {type: "stage", stage: "artifacts" | "witness" | "proof" | "done", ms} (ms: the stage before)
//               {type: "result", proof, publicSignals, timings: {artifacts_ms, witness_ms, prove_ms, cached}}
//               {type: "error", message}
// The page cancels by terminating the worker. Artifacts come from /app/zk/ (manifest.json gives each
// file's SHA-256), are kept in the Cache API, and are checked against the hash every time before use.
/* global snarkjs */
importScripts("/app/vendor/snarkjs.min.js");

const CACHE = "healthledger-zk-v1";

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function verifiedBytes(url, sha256) {
  const cache = await caches.open(CACHE);
  let response = await cache.match(url);
  let cached = Boolean(response);
  if (!response) {
    response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`could not download ${url} (HTTP ${response.status})`);
    await cache.put(url, response.clone());
  }
  const bytes = await response.arrayBuffer();
  const digest = hex(await crypto.subtle.digest("SHA-256", bytes));
  if (digest !== sha256) {
    await cache.delete(url);
    throw new Error(`${url} does not match its published SHA-256: refusing to use it`);
  }
  return { bytes: new Uint8Array(bytes), cached };
}

let artifacts = null; // kept while the worker lives: a second proof pays neither download nor hashing

async function load() {
  if (artifacts) return { ...artifacts, cached: true };
  const manifest = await (await fetch("/app/zk/manifest.json", { credentials: "same-origin" })).json();
  const wasm = await verifiedBytes(manifest.files["eligibility.wasm"].url, manifest.files["eligibility.wasm"].sha256);
  const zkey = await verifiedBytes(manifest.files["eligibility.zkey"].url, manifest.files["eligibility.zkey"].sha256);
  artifacts = { wasm: wasm.bytes, zkey: zkey.bytes };
  return { ...artifacts, cached: wasm.cached && zkey.cached };
}

self.onmessage = async (event) => {
  const message = event.data || {};
  if (message.type !== "prove") return;
  try {
    const t0 = performance.now();
    self.postMessage({ type: "stage", stage: "artifacts" });
    const { wasm, zkey, cached } = await load();
    const t1 = performance.now();
    self.postMessage({ type: "stage", stage: "witness", ms: t1 - t0 });
    const witness = { type: "mem" };
    await snarkjs.wtns.calculate(message.input, { type: "mem", data: wasm }, witness);
    const t2 = performance.now();
    self.postMessage({ type: "stage", stage: "proof", ms: t2 - t1 });
    const { proof, publicSignals } = await snarkjs.groth16.prove({ type: "mem", data: zkey }, witness);
    const t3 = performance.now();
    self.postMessage({ type: "stage", stage: "done", ms: t3 - t2 });
    self.postMessage({ type: "result", proof, publicSignals,
                       timings: { artifacts_ms: t1 - t0, witness_ms: t2 - t1, prove_ms: t3 - t2, cached } });
  } catch (error) {
    self.postMessage({ type: "error", message: String(error && error.message ? error.message : error) });
  }
};
