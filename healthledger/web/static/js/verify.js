// "Verify" on each access-history entry: fetch its inclusion proof from the same /fhir API
// (GET /fhir/AuditEvent/{id}/$inclusion-proof, with the page's session), recompute the entry's leaf hash
// from its canonical bytes and the root from the audit path here in the browser (merkle.js), and compare
// it with the tree head anchored on the ledger. The server's word is not needed for the arithmetic; the
// anchor's block and transaction let anyone look the root up on the ledger itself.
import { ProofError, fromBase64, fromHex, leafHash, toHex, verifyInclusion } from "./merkle.js";

const DECISIONS = { permitted: "permit", denied: "deny", refused: "error" };

function parameters(resource) {
  const out = new Map();
  for (const p of resource.parameter || []) {
    if (!out.has(p.name)) out.set(p.name, []);
    out.get(p.name).push(p);
  }
  return out;
}

function value(p) {
  if (!p) return undefined;
  for (const key of Object.keys(p)) if (key.startsWith("value")) return p[key];
  return undefined;
}

function short(hex) {
  return hex.length > 20 ? `${hex.slice(0, 10)}…${hex.slice(-8)}` : hex;
}

function line(parent, text, className) {
  const p = document.createElement("p");
  if (className) p.className = className;
  p.textContent = text;
  parent.appendChild(p);
  return p;
}

async function verify(button) {
  const id = button.dataset.entry;
  const out = document.getElementById(`verify-${id}`);
  out.replaceChildren();
  line(out, "Checking…");
  button.disabled = true;
  try {
    const response = await fetch(`/fhir/AuditEvent/${encodeURIComponent(id)}/$inclusion-proof`, {
      headers: { Accept: "application/fhir+json" }, credentials: "same-origin",
    });
    if (!response.ok) throw new ProofError(`the server did not give a proof (HTTP ${response.status})`);
    const params = parameters(await response.json());
    const entry = fromBase64(value(params.get("entry")[0]));
    const index = value(params.get("leafIndex")[0]);
    const path = (params.get("auditPath") || []).map((p) => fromHex(value(p)));
    const anchorPart = params.get("anchor") ? params.get("anchor")[0].part : null;
    const anchor = anchorPart ? Object.fromEntries(anchorPart.map((p) => [p.name, value(p)])) : null;
    const size = anchor ? anchor.treeSize : value(params.get("treeSize")[0]);
    const root = fromHex(anchor ? anchor.rootHash : value(params.get("rootHash")[0]));

    // The bytes proven must be this entry: same time, decision and action as the page shows.
    const fields = JSON.parse(new TextDecoder().decode(entry));
    const expectedDecision = DECISIONS[button.dataset.outcome];
    if (fields.time !== button.dataset.recorded || fields.decision !== expectedDecision) {
      throw new ProofError("the proof is for a different entry than the one shown");
    }
    const leaf = await leafHash(entry);
    await verifyInclusion(index, size, leaf, path, root);

    out.replaceChildren();
    if (anchor) {
      line(out, `Verified in your browser: this is entry ${index + 1} of ${size} in the access log, whose root ` +
        `${short(toHex(root))} was anchored on the ledger in block ${anchor.blockNumber}.`, "status verified");
      line(out, `Transaction: ${anchor.transaction}`, "hash");
    } else {
      line(out, `Included in the access log (entry ${index + 1} of ${size}, root ${short(toHex(root))}), ` +
        "but not anchored on the ledger yet. Try again after the next anchor (about a minute).", "status pending");
    }
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "What was checked";
    details.appendChild(summary);
    line(details, `Leaf hash: ${toHex(leaf)}`, "hash");
    line(details, `Root: ${toHex(root)}`, "hash");
    line(details, `Audit path: ${path.length} hashes. Entry as recorded: ${new TextDecoder().decode(entry)}`, "hash");
    out.appendChild(details);
  } catch (error) {
    out.replaceChildren();
    line(out, `Not verified: ${error.message}`, "status failed");
  } finally {
    button.disabled = false;
  }
}

for (const button of document.querySelectorAll("button.verify[data-entry]")) {
  button.hidden = false;
  button.addEventListener("click", () => verify(button));
}
for (const note of document.querySelectorAll(".needs-js")) note.hidden = true;
