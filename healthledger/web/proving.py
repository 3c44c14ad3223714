"""The files the browser proves with: snarkjs (npm, pinned in package.json) and the eligibility circuit's
WebAssembly and proving key (committed in `zk/artifacts/`), served by the app itself with their SHA-256.

`static/js/prove-worker.js` fetches them once, keeps them in the browser's Cache API and checks each against
the hash in `manifest.json` (from `SHA256SUMS`) before use, so a patient's device proves with exactly the
artifacts the hospital committed. The worker's own Content-Security-Policy allows what proving needs and
nothing more: WebAssembly compilation (`'wasm-unsafe-eval'`) and snarkjs' helper threads (`blob:` workers).
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, abort, jsonify, send_file

from zk.poseidon import CONSTANTS_FILE, FULL_ROUNDS, PARTIAL_ROUNDS
from zk.prover import ARTIFACTS_DIR, DEFAULT_NODE_MODULES

CIRCUIT = "eligibility"
ARTIFACTS = {"eligibility.wasm": "application/wasm", "eligibility.zkey": "application/octet-stream"}
SNARKJS = DEFAULT_NODE_MODULES / "snarkjs" / "build" / "snarkjs.min.js"
WORKER_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'"
)


def artifact_hashes(folder: Path = ARTIFACTS_DIR / CIRCUIT) -> dict[str, str]:
    """file name -> SHA-256 hex, from the circuit's committed SHA256SUMS."""
    hashes = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name in ARTIFACTS:
            hashes[name] = digest
    return hashes


def poseidon_parameters(inputs: int = 2) -> dict[str, object]:
    """circomlibjs' Poseidon constants for `inputs` inputs (width t = inputs + 1), as static/js/poseidon.js takes
    them: the page computes the enrolment nullifier Poseidon([secret, studyId]) with them."""
    data = json.loads(CONSTANTS_FILE.read_text())
    return {"t": inputs + 1, "fullRounds": FULL_ROUNDS, "partialRounds": PARTIAL_ROUNDS[inputs - 1],
            "C": data["C"][inputs - 1], "M": data["M"][inputs - 1]}


def proving_blueprint() -> Blueprint:
    bp = Blueprint("proving", __name__)
    hashes = artifact_hashes()

    @bp.get("/zk/manifest.json")
    def manifest() -> Response:
        return jsonify({"circuit": CIRCUIT, "files": {
            name: {"url": f"/app/zk/{name}", "sha256": digest} for name, digest in hashes.items()}})

    poseidon = poseidon_parameters()

    @bp.get("/zk/poseidon.json")
    def poseidon_constants() -> Response:
        return jsonify(poseidon)

    @bp.get("/zk/<name>")
    def artifact(name: str) -> Response:
        if name not in ARTIFACTS:
            abort(404)
        response = send_file(ARTIFACTS_DIR / CIRCUIT / name, mimetype=ARTIFACTS[name], conditional=True,
                             max_age=0, etag=hashes[name])
        response.headers["Cache-Control"] = "no-cache"  # the worker's Cache API copy is what is kept
        return response

    @bp.get("/vendor/snarkjs.min.js")
    def snarkjs() -> Response:
        if not SNARKJS.is_file():
            abort(404)  # Node tools not installed (`make run` installs them): the page says proving is unavailable
        response = send_file(SNARKJS, mimetype="text/javascript", conditional=True, max_age=0)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @bp.after_request
    def _worker_policy(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = WORKER_POLICY  # kept by the web app's header hook
        return response

    return bp
