"""Encrypted FHIR resource store: models, envelope encryption, blind indexes, key management."""
