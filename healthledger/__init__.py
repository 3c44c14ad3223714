"""HealthLedger: a privacy-preserving consent ledger for health data."""

__version__ = "0.1.0"
