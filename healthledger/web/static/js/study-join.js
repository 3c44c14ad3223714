// Checking eligibility and joining a study, on the patient's device, through the same /fhir API as any client
// (README "Research": joining a study as plain HTTP), with the page's own session and CSRF token:
// 1. POST /fhir/Patient/{me}/$eligibility-credential (password, study): the credential with its secret and the
//    study pseudonym (enrollee); poll GET until its root is anchored on-chain;
// 2. check the study's published criteria locally (eligibility.js): if they are not met, nothing is sent;
// 3. prove in a Web Worker (prover.js / prove-worker.js: artifacts cached and hash-checked), cancellable;
// 4. POST /fhir/ResearchStudy/{id}/$enrol (proof, publicSignals, password): the server checks the proof and
//    signs the study consent with the pseudonym. Then the page reloads and shows the enrolment.
import { prove } from "./prover.js";
import { loadParameters } from "./poseidon.js";
import { eligibilityInputs, meetsCriteria } from "./eligibility.js";

const REGISTRATION_URL = "https://healthledger.dev/fhir/StructureDefinition/study-registration";
const ANCHOR_WAIT_MS = 120000;
const box = document.getElementById("join");
const form = document.getElementById("join-form");
const password = document.getElementById("password");
const checkButton = document.getElementById("check-button");
const joinButton = document.getElementById("join-button");
const cancelButton = document.getElementById("cancel-button");
const steps = document.getElementById("join-steps");
const status = document.getElementById("join-status");
const csrf = document.querySelector('meta[name="csrf-token"]').content;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function fhir(method, path, parameters) {
  const headers = { Accept: "application/fhir+json" };
  let body;
  if (parameters) {
    headers["Content-Type"] = "application/fhir+json";
    headers["X-CSRFToken"] = csrf;
    body = JSON.stringify({ resourceType: "Parameters", parameter: parameters });
  }
  const response = await fetch(`/fhir/${path}`, { method, credentials: "same-origin", headers, body });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const issue = data && data.issue && data.issue[0];
    throw new ApiError(response.status, (issue && issue.diagnostics) || `the server answered ${response.status}`);
  }
  return data;
}

function values(parameters) {
  return Object.fromEntries((parameters.parameter || []).map((p) => [p.name, Object.entries(p).find(([k]) => k.startsWith("value"))?.[1]]));
}

function step(name) {
  steps.hidden = false;
  let reached = false;
  for (const item of steps.querySelectorAll("li")) {
    const current = item.dataset.step === name;
    if (current) reached = true;
    item.className = current ? "current" : reached ? "" : "done";
  }
}

function say(text, kind = "") {
  status.textContent = text;
  status.className = kind ? `alert ${kind}` : "";
}

function passwordError(text) {
  let error = document.getElementById("password-error");
  if (!text) {
    if (error) error.remove();
    password.removeAttribute("aria-invalid");
    password.setAttribute("aria-describedby", "password-hint");
    return;
  }
  if (!error) {
    error = document.createElement("span");
    error.className = "field-error";
    error.id = "password-error";
    password.before(error);
  }
  error.textContent = text;
  password.setAttribute("aria-invalid", "true");
  password.setAttribute("aria-describedby", "password-hint password-error");
  password.focus();
}

async function registration() {
  const study = await fhir("GET", `ResearchStudy/${box.dataset.study}`);
  const ext = (study.extension || []).find((e) => e.url === REGISTRATION_URL);
  if (!ext) throw new Error("this study is not registered on the ledger yet");
  const part = Object.fromEntries((ext.extension || []).map((p) => [p.url, p]));
  return { studyId: part.studyId.valueString, criteriaHash: part.criteriaHash.valueString,
           circuit: JSON.parse(part.circuit.valueString) };
}

async function credential(secretWord) {
  step("credential");
  const path = `Patient/${box.dataset.patient}/$eligibility-credential`;
  const first = values(await fhir("POST", path, [
    { name: "password", valueString: secretWord }, { name: "study", valueString: `ResearchStudy/${box.dataset.study}` }]));
  let current = first;
  const deadline = Date.now() + ANCHOR_WAIT_MS;
  while (!current.anchored) {
    if (current.anchorState === "failed") throw new Error("your credential could not be recorded on the ledger; ask the hospital");
    if (Date.now() > deadline) throw new Error("your credential is not recorded on the ledger yet; try again in a few minutes");
    say("Waiting for the ledger to record your credential…");
    await new Promise((resolve) => setTimeout(resolve, 1000));
    current = values(await fhir("GET", path));
  }
  const inputs = JSON.parse(current.circuitInputs);
  inputs.secret = JSON.parse(first.circuitInputs).secret;
  return { inputs, root: current.root, enrollee: first.enrollee };
}

let running = null;

function busy(on) {
  checkButton.disabled = on;
  joinButton.disabled = on;
  password.readOnly = on;
}

async function attempt(join) {
  const secretWord = password.value;
  if (!secretWord) { passwordError("Enter your password"); return; }
  passwordError("");
  busy(true);
  say(join ? "Joining…" : "Checking…");
  try {
    const [cred, reg] = await Promise.all([credential(secretWord), registration()]);
    step("check");
    if (!meetsCriteria(cred.inputs, reg.circuit)) {
      steps.hidden = true;
      say("You do not meet this study's criteria, so you cannot join. Nothing was sent to the study.", "warning");
      return;
    }
    if (!join) {
      steps.hidden = true;
      say("You meet this study's criteria: you can join. Nothing was sent to the study.", "success");
      return;
    }
    const params = await loadParameters();
    const input = eligibilityInputs({ credential: cred.inputs, root: cred.root, registration: reg,
                                      enrollee: cred.enrollee, params });
    step("artifacts");
    cancelButton.hidden = false;
    running = prove(input, (stage) => { if (stage !== "done") step(stage); });
    const { proof, publicSignals } = await running.result;
    running = null;
    cancelButton.hidden = true;
    step("enrol");
    await fhir("POST", `ResearchStudy/${box.dataset.study}/$enrol`, [
      { name: "proof", valueString: JSON.stringify(proof) },
      { name: "publicSignals", valueString: JSON.stringify(publicSignals) },
      { name: "password", valueString: secretWord }]);
    for (const item of steps.querySelectorAll("li")) item.className = "done";
    say("You joined the study. Your study consent is signed and sent to the ledger.", "success");
    password.value = "";
    setTimeout(() => window.location.reload(), 1500);
  } catch (error) {
    cancelButton.hidden = true;
    if (error.message === "cancelled") {
      steps.hidden = true;
      say("Cancelled. Nothing was sent to the study.");
    } else if (error instanceof ApiError && error.status === 403) {
      steps.hidden = true;
      say("");
      passwordError("That password is not right: use the one you sign in with");
    } else {
      say(`That did not work: ${error.message}`, "error");
    }
  } finally {
    running = null;
    busy(false);
  }
}

if (box && form) {
  for (const note of document.querySelectorAll(".needs-js")) note.hidden = true;
  checkButton.disabled = false;
  joinButton.disabled = false;
  checkButton.addEventListener("click", () => attempt(false));
  form.addEventListener("submit", (event) => { event.preventDefault(); attempt(true); });
  cancelButton.addEventListener("click", () => { if (running) running.cancel(); });
}
