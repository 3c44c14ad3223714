// Follows a Consent's on-chain state until the ledger confirms it (or its revocation), through the same
// /fhir API as every client (GET /fhir/Consent/{id}, the consent-chain-state extension), with the page's
// own session. Updates the steps and the polite live region; stops after a few minutes.
const CHAIN_STATE_URL = "https://healthledger.dev/fhir/StructureDefinition/consent-chain-state";
const POLL_MS = 1500;
const GIVE_UP_MS = 5 * 60 * 1000;

export function chainState(consent) {
  const ext = (consent.extension || []).find((e) => e.url === CHAIN_STATE_URL);
  if (!ext) return { state: "unsigned", grants: [] };
  let state = "unsigned";
  const grants = [];
  for (const part of ext.extension || []) {
    if (part.url === "state") state = part.valueCode;
    if (part.url === "grant") {
      const fields = Object.fromEntries((part.extension || []).map((p) => [p.url, p]));
      grants.push({
        grantee: fields.grantee && fields.grantee.valueString,
        state: fields.state && fields.state.valueCode,
        block: fields.block ? Number(fields.block.valueInteger ?? fields.block.valueString ?? fields.block.valueInteger64) : null,
        transaction: fields.transaction ? fields.transaction.valueString : "",
      });
    }
  }
  if (state === "active" && grants.some((g) => g.state === "revoking")) state = "revoking";
  return { state, grants };
}

function describe({ state, grants }) {
  const withBlock = grants.filter((g) => g.block !== null).sort((a, b) => b.block - a.block);
  const where = withBlock.length ? ` in block ${withBlock[0].block} (transaction ${withBlock[0].transaction})` : "";
  switch (state) {
    case "active": return `Active on the ledger${where}.`;
    case "revoked": return `Revoked on the ledger${where}.`;
    case "pending": return "Waiting for the ledger to confirm. This usually takes a few seconds.";
    case "revoking": return "Revoked: access stopped now. Waiting for the ledger to record the revocation.";
    case "expired": return "This consent has ended.";
    default: return "Not signed yet.";
  }
}

const BADGES = {
  active: ["active", "Active on the ledger"], pending: ["pending", "Waiting for the ledger"],
  revoking: ["revoking", "Revoked; the ledger is recording it"], revoked: ["revoked", "Revoked on the ledger"],
  expired: ["expired", "Ended"],
};

// The parts of the page that show the chain state besides the live region: the status badge, the grants.
function showElsewhere({ state, grants }) {
  const badge = document.querySelector("#consent-status .status");
  const blocks = grants.filter((g) => g.block !== null).map((g) => g.block);
  if (badge && BADGES[state]) {
    const [css, words] = BADGES[state];
    badge.className = `status ${css}`;
    const where = blocks.length ? (state === "active" ? ` since block ${Math.max(...blocks)}`
      : state === "revoked" ? ` in block ${Math.max(...blocks)}` : "") : "";
    badge.textContent = words + where;
  }
  for (const g of grants) {
    const row = document.querySelector(`#grants tr[data-grantee="${CSS.escape(g.grantee || "")}"]`);
    if (!row) continue;
    const cells = row.querySelectorAll("td");
    cells[1].textContent = g.state;
    cells[2].textContent = g.block !== null ? String(g.block) : "not yet";
    cells[3].textContent = g.transaction || "not yet";
  }
}

function follow(box) {
  const url = box.dataset.consentUrl;
  const status = document.getElementById("chain-status");
  const steps = box.querySelectorAll(".progress li");
  const started = Date.now();
  let last = box.dataset.state;
  async function poll() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/fhir+json" }, credentials: "same-origin" });
      if (response.ok) {
        const now = chainState(await response.json());
        if (now.state !== last) {
          last = now.state;
          status.textContent = describe(now);
          showElsewhere(now);
          box.dataset.state = now.state;
          if (now.state === "active" && steps[1]) { steps[1].classList.remove("current"); steps[1].classList.add("done"); }
          if (now.state === "revoked" && steps[2]) { steps[2].classList.remove("current"); steps[2].classList.add("done"); }
        }
        if (!["pending", "revoking"].includes(now.state)) return;
      }
    } catch (error) {
      // offline for a moment: try again
    }
    if (Date.now() - started < GIVE_UP_MS) setTimeout(poll, POLL_MS);
    else status.textContent = "The ledger is taking longer than usual. Check again later: nothing is lost.";
  }
  setTimeout(poll, POLL_MS);
}

const box = document.getElementById("chain-progress");
if (box && ["pending", "revoking"].includes(box.dataset.state)) follow(box);
