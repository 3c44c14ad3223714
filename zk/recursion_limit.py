"""Import py_ecc here first: its `__init__` raises the interpreter's recursion limit to 100,000; this puts it back.

py_ecc reaches every HealthLedger process, directly (`zk.groth16.verify_reference`) or through web3,
eth-account and py-evm. At a limit of 100,000 a C-recursive routine (the stdlib JSON scanner; `repr`,
`copy.deepcopy` or `json.dumps` of nested lists) overflows the thread's C stack and the process dies
with SIGSEGV before it reaches the limit; at the limit in force before py_ecc's import (normally
CPython's 1,000) it raises RecursionError instead. py_ecc itself recurses at most once per scalar bit
(`multiply`, 256 deep), far below either limit.

`healthledger/__init__.py` imports this module, so no HealthLedger module can import py_ecc before it.
py-evm (`import eth`, only in the embedded chain's process) later raises the limit to 12,288 for the
EVM's 1,024 call frames: measured safe, the JSON scanner raises RecursionError there even on a 2 MiB
thread stack.
"""

from __future__ import annotations

import sys
from typing import Final

# The deepest any dependency needs (py-evm's EVM_RECURSION_LIMIT, `eth/__init__.py`). If py_ecc was
# imported before this module (by a host process), the limit found here is already py_ecc's 100,000.
MAX_SAFE_RECURSION_LIMIT: Final = 1024 * 12

_limit_before_py_ecc = sys.getrecursionlimit()

import py_ecc  # noqa: F401  -- imported for its side effect, undone on the next line

sys.setrecursionlimit(min(_limit_before_py_ecc, MAX_SAFE_RECURSION_LIMIT))
