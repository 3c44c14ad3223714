"""Groth16 proving through a long-lived snarkjs Node worker (`zk/prover_worker.mjs`), JSON lines over pipes.

A pure-Python prover would take tens of seconds at this circuit's size (see RECIPES), so witnesses and
proofs come from snarkjs. The worker is started on the first request, reused for the next ones (no cold
start), and restarted once, transparently, if it died between requests. One request at a time per
`NodeProver` (a lock serialises callers).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from zk.errors import ProverError

WORKER_SCRIPT = Path(__file__).with_name("prover_worker.mjs")
ARTIFACTS_DIR = Path(__file__).with_name("artifacts")
DEFAULT_NODE_MODULES = Path(__file__).resolve().parent.parent / "node_modules"
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ProveTimings:
    """Milliseconds: witness generation and proving inside Node, the round trip seen from Python, and the
    worker start-up paid by this request (0 when the worker was already running)."""

    witness_ms: float
    prove_ms: float
    round_trip_ms: float
    startup_ms: float

    @property
    def cold(self) -> bool:
        return self.startup_ms > 0


@dataclass(frozen=True)
class ProofResult:
    """A proof in snarkjs' JSON form (`proof.json`) with its public signals (decimal ints, snarkjs order)."""

    proof: dict[str, Any]
    public_signals: list[int]
    timings: ProveTimings

    def public_json(self) -> list[str]:
        return [str(s) for s in self.public_signals]

    def enrol_args(self) -> tuple[int, int, int, tuple[int, int], tuple[tuple[int, int], tuple[int, int]],
                                  tuple[int, int]]:
        """Arguments of `StudyRegistry.enrol(studyId, root, nullifier, a, b, c)` for an eligibility proof
        (public signals [root, studyId, criteriaHash, enrollee, nullifier]; G2 in EIP-197 order)."""
        from zk.snarkjs_io import load_proof, solidity_calldata

        if len(self.public_signals) != 5:
            raise ProverError("not an eligibility proof (expected 5 public signals)")
        a, b, c, public = solidity_calldata(load_proof(self.proof), self.public_signals)
        return public[1], public[0], public[4], a, b, c


@dataclass(frozen=True)
class CircuitFiles:
    """The run-time artifacts of one circuit."""

    wasm: Path
    zkey: Path
    verification_key: Path

    @classmethod
    def committed(cls, circuit: str = "eligibility", root: Path = ARTIFACTS_DIR) -> CircuitFiles:
        """The artifacts committed in `zk/artifacts/<circuit>/` by `python -m zk.build`."""
        folder = root / circuit
        return cls(folder / f"{circuit}.wasm", folder / f"{circuit}.zkey", folder / "verification_key.json")


class NodeProver:
    """Proves with snarkjs in a Node child process that lives as long as this object (or until `close`)."""

    def __init__(self, files: CircuitFiles, *, node: str = "node",
                 node_modules: Path = DEFAULT_NODE_MODULES, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        for path in (files.wasm, files.zkey):
            if not path.is_file():
                raise ProverError(f"circuit artifact missing: {path.name} (run `python -m zk.build`)")
        self._files = files
        self._node = node
        self._node_modules = node_modules
        self._timeout_s = timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._lock = threading.Lock()
        self._next_id = 1
        self.restarts = 0  # how many times a dead worker was replaced (for tests and monitoring)

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker (closing stdin lets it finish; killed if it does not exit in 5 s)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    def _start(self) -> float:
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [self._node, str(WORKER_SCRIPT), str(self._node_modules)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", bufsize=1, env={**os.environ, "NODE_OPTIONS": ""},
            )
        except OSError as exc:
            raise ProverError(f"cannot start the Node prover worker ({self._node}): {exc.strerror}") from None
        assert proc.stderr is not None
        threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True).start()
        self._proc = proc
        ready = self._read_answer(proc, expected_id=0)
        if not ready.get("ready"):
            self._stop()
            raise ProverError("the Node prover worker did not start")
        return (time.perf_counter() - started) * 1000

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr_tail.append(line.rstrip())

    # --- requests ----------------------------------------------------------------------------------

    def _read_answer(self, proc: subprocess.Popen[str], expected_id: int) -> dict[str, Any]:
        assert proc.stdout is not None
        deadline = time.monotonic() + self._timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    proc.kill()
                    raise ProverError(f"the prover worker did not answer within {self._timeout_s:.0f} s")
                if not sel.select(timeout=remaining):
                    continue
                line = proc.stdout.readline()
                if not line:
                    raise _WorkerDied()
                try:
                    answer = json.loads(line)
                except json.JSONDecodeError:
                    continue  # not ours: the worker routes logs to stderr, but be lenient
                if isinstance(answer, dict) and answer.get("id") == expected_id:
                    return answer

    def _request(self, op: str, inputs: Mapping[str, object]) -> tuple[dict[str, Any], float, float]:
        request = {"op": op, "wasm": str(self._files.wasm), "zkey": str(self._files.zkey),
                   "input": _json_ready(inputs)}
        with self._lock:
            for attempt in (1, 2):
                startup_ms = 0.0
                if self._proc is None or self._proc.poll() is not None:
                    if self._proc is not None:
                        self.restarts += 1
                        self._stop()
                    startup_ms = self._start()
                proc = self._proc
                assert proc is not None and proc.stdin is not None
                request_id = self._next_id
                self._next_id += 1
                sent = time.perf_counter()
                try:
                    proc.stdin.write(json.dumps({"id": request_id, **request}) + "\n")
                    proc.stdin.flush()
                    answer = self._read_answer(proc, request_id)
                except (BrokenPipeError, _WorkerDied):
                    if attempt == 2:
                        tail = "; ".join(list(self._stderr_tail)[-3:])
                        raise ProverError(f"the prover worker died ({tail or 'no output'})") from None
                    continue
                return answer, startup_ms, (time.perf_counter() - sent) * 1000
        raise AssertionError("unreachable")

    def prove(self, inputs: Mapping[str, object]) -> ProofResult:
        """Witness + Groth16 proof. Raises ProverError when the inputs do not satisfy the circuit."""
        answer, startup_ms, round_trip_ms = self._request("prove", inputs)
        _raise_for(answer)
        t = answer["timings"]
        return ProofResult(
            proof=answer["proof"],
            public_signals=[int(s) for s in answer["publicSignals"]],
            timings=ProveTimings(witness_ms=float(t["witness_ms"]), prove_ms=float(t["prove_ms"]),
                                 round_trip_ms=round_trip_ms, startup_ms=startup_ms),
        )

    def check_witness(self, inputs: Mapping[str, object]) -> float:
        """Only compute the witness (every constraint is asserted); returns its time in ms or raises."""
        answer, _, _ = self._request("witness", inputs)
        _raise_for(answer)
        return float(answer["timings"]["witness_ms"])


class _WorkerDied(Exception):
    pass


def _raise_for(answer: Mapping[str, Any]) -> None:
    if answer.get("ok"):
        return
    reason = str(answer.get("error", "unknown error"))
    if answer.get("kind") == "unsatisfied":
        raise ProverError(f"the inputs do not satisfy the circuit ({reason})")
    raise ProverError(f"the prover failed ({reason})")


def _json_ready(value: object) -> object:
    """Circuit inputs as snarkjs expects them: ints as decimal strings, lists and dicts recursively."""
    if isinstance(value, bool):
        raise ProverError("circuit inputs must be integers, not booleans")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    raise ProverError(f"circuit inputs must be integers or lists of integers, not {type(value).__name__}")
