"""HealthLedger: a privacy-preserving consent ledger for health data."""

# Before any module of ours imports web3, eth-account or py-evm (which import py_ecc): py_ecc raises the
# recursion limit so high that deep input overflows the C stack (SIGSEGV) instead of raising RecursionError.
import zk.recursion_limit  # noqa: F401

__version__ = "0.1.0"
