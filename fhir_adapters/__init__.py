"""Pure FHIR knowledge: validation (R4B models), search parameters, bundles, de-identification. No Flask, no DB."""
