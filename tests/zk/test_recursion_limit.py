"""py_ecc raises the recursion limit to 100,000 on import; importing our packages must leave a sane one.

Each check runs in a fresh interpreter: the test process has imported everything long ago.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from support import ROOT

from zk.recursion_limit import MAX_SAFE_RECURSION_LIMIT

INTEROP = ROOT / "tests" / "vectors" / "zk" / "interop"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def _fresh_default() -> int:
    return int(_run("import sys; print(sys.getrecursionlimit())").stdout)


def test_the_app_leaves_the_interpreter_default(tmp_path: Path) -> None:
    """create_app reaches py_ecc through web3 and eth-account; the limit is still CPython's default after it."""
    done = _run(f"""
        import sys
        from healthledger.app import bootstrap, create_app
        from healthledger.config import Settings
        settings = Settings(data_dir={str(tmp_path / "var")!r}, load_demo_data=False)
        bootstrap(settings)
        create_app(settings)
        import web3, eth_account, py_ecc  # noqa: F401  (imported already: no second side effect)
        print(sys.getrecursionlimit())
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == _fresh_default()


def test_py_ecc_through_zk_leaves_the_default_and_still_verifies() -> None:
    """The reference verifier runs py_ecc's pairings at the restored limit (its recursion is 256 deep)."""
    done = _run(f"""
        import sys
        from zk.groth16 import verify_reference
        from zk.snarkjs_io import load_proof, load_public_signals, load_verification_key
        interop = {str(INTEROP)!r}
        ok = verify_reference(
            load_verification_key(interop + "/verification_key.json"),
            load_proof(interop + "/proof.json"),
            load_public_signals(interop + "/public.json"),
        )
        print(ok, sys.getrecursionlimit())
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", str(_fresh_default())]


def test_py_ecc_imported_first_by_a_host_process_is_capped() -> None:
    done = _run("""
        import sys
        import py_ecc  # noqa: F401  (a host process got there first: the limit is 100,000 now)
        import healthledger  # noqa: F401
        print(sys.getrecursionlimit())
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) == MAX_SAFE_RECURSION_LIMIT


def test_deep_json_raises_instead_of_crashing_a_worker_thread() -> None:
    """The mechanism: at the restored limit the C JSON scanner stops with RecursionError, no SIGSEGV.

    With the embedded chain's py-evm imported too (12,288) and on a small 2 MiB thread stack.
    """
    done = _run("""
        import json, threading
        import healthledger.app  # noqa: F401
        import healthledger.ledger.backends.embedded  # noqa: F401  (py-evm: 12,288)
        threading.stack_size(2 * 1024 * 1024)
        outcome = []
        def parse():
            try:
                json.loads("[" * 1_000_000)
            except RecursionError:
                outcome.append("RecursionError")
        worker = threading.Thread(target=parse)
        worker.start()
        worker.join()
        print(*outcome)
    """)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["RecursionError"]
