// RFC 6962 (as restated in RFC 9162 §2.1) Merkle tree hashing and inclusion-proof verification, in the
// browser (and in Node for the tests): the same algorithm as healthledger/audit/merkle.py, checked against
// the same transparency-dev vectors. SHA-256 comes from the Web Crypto API (crypto.subtle), which browsers
// offer on HTTPS and on localhost. Indexes and sizes are BigInts: tree sizes may pass 2^31.

export const HASH_SIZE = 32;
const LEAF_PREFIX = 0x00; // MTH({d(0)}) = SHA-256(0x00 || d(0))
const NODE_PREFIX = 0x01; // MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))

export class ProofError extends Error {
  constructor(message, expected = null, calculated = null) {
    super(expected && calculated ? `${message}: expected ${toHex(expected)}, calculated ${toHex(calculated)}` : message);
    this.name = "ProofError";
    this.expected = expected;
    this.calculated = calculated;
  }
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (typeof text !== "string" || text.length % 2 !== 0 || /[^0-9a-fA-F]/.test(text)) throw new ProofError("not a hex string");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function subtle() {
  const c = globalThis.crypto;
  if (!c || !c.subtle) throw new ProofError("this page needs a secure connection (HTTPS) to compute SHA-256");
  return c.subtle;
}

async function sha256(...parts) {
  const size = parts.reduce((n, p) => n + p.length, 0);
  const data = new Uint8Array(size);
  let at = 0;
  for (const p of parts) { data.set(p, at); at += p.length; }
  return new Uint8Array(await subtle().digest("SHA-256", data));
}

export function leafHash(entry) {
  return sha256(Uint8Array.of(LEAF_PREFIX), entry);
}

export function nodeHash(left, right) {
  return sha256(Uint8Array.of(NODE_PREFIX), left, right);
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// RFC 9162 §2.1.3.2: the root that leaf hash `leaf` at `index` and its audit path `proof` imply for a tree
// of `size` leaves. Requires 0 <= index < size; throws ProofError for a malformed proof.
export async function rootFromInclusionProof(index, size, leaf, proof) {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (fn < 0n || fn > sn) throw new ProofError(`leaf index ${index} is not in a tree of size ${size}`);
  if (leaf.length !== HASH_SIZE) throw new ProofError("leaf hash has the wrong length");
  let r = leaf;
  for (const p of proof) {
    if (p.length !== HASH_SIZE) throw new ProofError("proof element has the wrong length");
    if (sn === 0n) throw new ProofError("inclusion proof is longer than the tree is deep");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new ProofError("inclusion proof is shorter than the tree is deep");
  return r;
}

// Throws ProofError unless `proof` shows leaf hash `leaf` at `index` in the tree of `size` with `root`.
export async function verifyInclusion(index, size, leaf, proof, root) {
  const calculated = await rootFromInclusionProof(index, size, leaf, proof);
  if (!equal(calculated, root)) throw new ProofError("inclusion proof does not lead to the root", root, calculated);
}
