"""Encrypted FHIR store: versioned resources sealed per patient compartment, searched by blind index."""
