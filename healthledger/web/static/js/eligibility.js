// The patient's side of joining a study, in the page: does my credential meet the study's published criteria
// (the circuit's checks, as zk/criteria.py CompiledCriteria.is_satisfied_by), and the eligibility circuit's
// full input (as zk/credential.py eligibility_inputs). Pure; numbers are decimal strings as in the API.
import { poseidon } from "./poseidon.js";

const FLAG_INCLUSION = 1n;

// attrs: the credential's circuitInputs (birthDays, sex, conditions, labs); criteria: the study's
// published circuit inputs (referenceDay, minAgeDays, maxAgeDays, sexMask, flags, inclusionCodes, ...).
export function meetsCriteria(attrs, criteria) {
  const age = BigInt(criteria.referenceDay) - BigInt(attrs.birthDays);
  if (age < BigInt(criteria.minAgeDays) || age > BigInt(criteria.maxAgeDays)) return false;
  if (((BigInt(criteria.sexMask) >> BigInt(attrs.sex)) & 1n) === 0n) return false;
  const present = attrs.conditions.map(String).filter((c) => c !== "0");
  const flags = BigInt(criteria.flags);
  const included = new Set(criteria.inclusionCodes.map(String));
  const excluded = new Set(criteria.exclusionCodes.map(String));
  if ((flags & FLAG_INCLUSION) && !present.some((c) => included.has(c))) return false;
  if (present.some((c) => excluded.has(c))) return false;
  for (let i = 0; i < attrs.labs.length; i++) {
    const value = BigInt(attrs.labs[i]);
    const enforced = (flags >> BigInt(1 + i)) & 1n;
    if (enforced && !(BigInt(criteria.labLo[i]) <= value && value <= BigInt(criteria.labHi[i]))) return false;
  }
  return true;
}

// An Ethereum address (0x + 40 hex digits) as the circuit's `enrollee` public input.
export function enrolleeField(address) {
  if (!/^0x[0-9a-fA-F]{40}$/.test(address)) throw new Error("enrollee must be a 20-byte hex address");
  return BigInt(address).toString();
}

// credential: circuitInputs with the secret; root: the anchored root; registration: {studyId, criteriaHash,
// circuit}; enrollee: the study pseudonym's address; params: Poseidon constants for two inputs.
export function eligibilityInputs({ credential, root, registration, enrollee, params }) {
  const nullifier = poseidon([BigInt(credential.secret), BigInt(registration.studyId)], params);
  return {
    root: String(root),
    studyId: String(registration.studyId),
    criteriaHash: String(registration.criteriaHash),
    enrollee: enrolleeField(enrollee),
    nullifier: nullifier.toString(),
    secret: String(credential.secret),
    birthDays: String(credential.birthDays),
    sex: String(credential.sex),
    conditions: credential.conditions.map(String),
    labs: credential.labs.map(String),
    issuanceEpoch: String(credential.issuanceEpoch),
    siblings: credential.siblings.map(String),
    pathBits: credential.pathBits.map(String),
    ...registration.circuit,
  };
}
