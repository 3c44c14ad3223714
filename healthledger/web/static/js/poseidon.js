// Poseidon over the BN254 scalar field, as circomlib's Poseidon(n) template and zk/poseidon.py compute it (the
// HADES permutation on [0, ...inputs], first element out; Grassi et al., "Poseidon", USENIX Security 2021, §2).
// The constants (circomlibjs 0.1.7, width t = n + 1) come from the app: GET /app/zk/poseidon.json.
// Used by the study page for the enrolment nullifier Poseidon([secret, studyId]) (zk/credential.py).
export const R = 21888242871839275222246405745257275088548364400416034343698204186575808495617n;

// {t, fullRounds, partialRounds, C: [hex], M: [[hex]]} -> the same with BigInts
export function parameters(raw) {
  return {
    t: raw.t, fullRounds: raw.fullRounds, partialRounds: raw.partialRounds,
    C: raw.C.map((x) => BigInt(x)), M: raw.M.map((row) => row.map((x) => BigInt(x))),
  };
}

export async function loadParameters(url = "/app/zk/poseidon.json") {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`could not load the Poseidon constants (HTTP ${response.status})`);
  return parameters(await response.json());
}

function pow5(x) {
  const x2 = (x * x) % R;
  return (((x2 * x2) % R) * x) % R;
}

export function poseidon(inputs, params) {
  const t = inputs.length + 1;
  if (t !== params.t) throw new Error(`these constants are for ${params.t - 1} inputs, not ${inputs.length}`);
  let state = [0n, ...inputs.map((x) => BigInt(x))];
  if (state.some((x) => x < 0n || x >= R)) throw new Error("poseidon: an input is not a field element");
  const half = params.fullRounds / 2;
  const lastPartial = half + params.partialRounds;
  const rounds = params.fullRounds + params.partialRounds;
  for (let r = 0; r < rounds; r++) {
    state = state.map((s, i) => (s + params.C[r * t + i]) % R);
    if (r < half || r >= lastPartial) state = state.map(pow5);
    else state[0] = pow5(state[0]);
    state = params.M.map((row) => row.reduce((acc, m, j) => (acc + m * state[j]) % R, 0n));
  }
  return state[0];
}
