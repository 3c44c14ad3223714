"""The OpenAPI 3.0 description of the service's non-FHIR JSON API (`GET /openapi.json`): SMART and OpenID Connect
discovery, the authorization request's hand-over to the consent screen, the token endpoint, the CDS Hooks
consent consult, and the operator's endpoints. The FHIR API describes itself in its CapabilityStatement
(`GET /fhir/metadata`). Schemathesis tests the running service against this document
(tests/reliability/test_schemathesis.py), so what it says is what the service does.
"""

from __future__ import annotations

from typing import Any

OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "degraded", "not-ready"]},
        "checks": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["ok"],
            "properties": {"ok": {"type": "boolean"}, "required": {"type": "boolean"}, "detail": {"type": "string"}},
        }},
    },
}  # fmt: skip
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(OAUTH_ERROR, "error") for s in statuses}


def openapi_document() -> dict[str, Any]:
    card = {"type": "object", "required": ["summary", "indicator", "source"],
            "properties": {"summary": {"type": "string"}, "indicator": {"type": "string"}, "source": {"type": "object"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "HealthLedger non-FHIR API", "version": "1",
                 "description": "SMART Backend Services token endpoint, CDS Hooks consent consult, operations"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {
                "200": _json({"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok"]}}},
                             "the process answers")}}},
            "/readyz": {"get": {"summary": "readiness: database, migrations, key provider, consent index freshness",
                                "responses": {"200": _json(READINESS, "ready, or degraded: a check that is not required failed"),
                                              "503": _json(READINESS, "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus text exposition", "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/.well-known/smart-configuration": {"get": {"summary": "SMART discovery", "responses": {
                "200": _json({"type": "object", "required": ["token_endpoint", "grant_types_supported"],
                              "properties": {"token_endpoint": {"type": "string"},
                                             "grant_types_supported": {"type": "array", "items": {"type": "string"}}}},
                             "SMART configuration")}}},
            "/.well-known/openid-configuration": {"get": {
                "summary": "OpenID Connect discovery (with SMART App Launch; 404 when the service offers none)",
                "responses": {
                    "200": _json({"type": "object", "required": [
                        "issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported",
                        "subject_types_supported", "id_token_signing_alg_values_supported"],
                        "properties": {name: {"type": "string"} for name in (
                            "issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")}},
                        "OpenID Provider metadata (OpenID Connect Discovery 1.0 §3)"),
                    **_errors(404),
                }}},
            "/auth/authorize": {"get": {
                "summary": "SMART App Launch authorization request: sent on, as it came, to the patient's consent "
                           "screen in the web app, which signs the patient in and validates it",
                "parameters": [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                               for name in ("response_type", "client_id", "redirect_uri", "scope", "state", "aud",
                                            "code_challenge", "code_challenge_method", "launch", "nonce")],
                "responses": {"303": {"description": "to the consent screen, with the same query", "headers": {
                    "Location": {"schema": {"type": "string"}}}}},
            }},
            "/auth/jwks": {"get": {"summary": "the token signing keys", "responses": {
                "200": _json({"type": "object", "required": ["keys"],
                              "properties": {"keys": {"type": "array", "items": {"type": "object"}}}}, "JWKS")}}},
            "/auth/token": {"post": {
                "summary": "client_credentials token (private_key_jwt or a client secret)",
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]}, "scope": {"type": "string"},
                        "client_assertion_type": {
                            "type": "string", "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]},
                        "client_assertion": {"type": "string"},
                        "client_id": {"type": "string"}, "client_secret": {"type": "string"},
                    }}}}},
                "responses": {
                    "200": _json({"type": "object", "required": ["access_token", "token_type", "expires_in", "scope"],
                                  "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"},
                                                 "expires_in": {"type": "integer"}, "scope": {"type": "string"}}},
                                 "an access token"),
                    **_errors(400, 401, 403, 413, 415, 429),
                },
            }},
            "/cds-services": {"get": {"summary": "CDS Hooks discovery", "responses": {
                "200": _json({"type": "object", "required": ["services"],
                              "properties": {"services": {"type": "array", "items": {"type": "object"}}}},
                             "the services")}}},
            "/cds-services/patient-consent-consult": {"post": {
                "summary": "HL7 LEAP consent decision (CDS Hooks)",
                "security": BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["hook", "hookInstance", "context"],
                    "properties": {
                        "hook": {"type": "string"}, "hookInstance": {"type": "string"},
                        "context": {"type": "object", "properties": {
                            "patientId": {"type": "array", "items": {"type": "object"}},
                            "category": {"type": "array", "items": {"type": "object"}},
                            "purposeOfUse": {"type": "array", "items": {"type": "object"}},
                            "actor": {"type": "array", "items": {"type": "object"}},
                            "content": {"type": "object"},
                        }},
                    }}}}},
                "responses": {
                    "200": _json({"type": "object", "required": ["cards"],
                                  "properties": {"cards": {"type": "array", "items": card}}}, "the decision as cards"),
                    **_errors(400, 401, 403, 404, 413, 415, 422, 503),
                },
            }},
        },
    }
