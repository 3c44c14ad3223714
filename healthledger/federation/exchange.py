"""Hospital A's side of a cross-hospital read: the token a member hospital gets with no registration here.

A member (hospital B) asks `/auth/token` with `grant_type=client_credentials` and a client assertion (RFC 7523,
SMART Backend Services) that carries the UDAP B2B extension (`extensions.hl7-b2b`: organisation, purpose of use,
the requesting user, the consent relied on). Checks, in order (each refusal is logged with its reason code):

1. The organisation is an active member of the consortium's directory, as indexed here from MemberRegistry
   (`not-a-member`, `removed`); a copy older than the consent index may be (`max_index_age_seconds`) refuses
   every member (`directory-stale`, 503): fail closed.
2. The assertion is signed (ES384) by the key whose RFC 7638 thumbprint the directory lists for it; the public
   key travels in the JWS `jwk` header and is trusted only through that thumbprint (`key-not-in-directory`).
3. The usual assertion rules: iss = sub = the member's client id, aud = our token endpoint, exp at most five
   minutes ahead, jti never seen before.
4. The B2B extension: version "1", organization_id = iss, one purpose of use (HL7 v3 PurposeOfUse), the
   requesting user (`subject_id`), exactly one `consent_reference` naming a Consent of this server.
5. The Consent: a Consent here whose permit provisions name `Organization/{member id}`, whose on-chain grant is
   live in the consent index, and which permits that purpose now. A reference to a Consent that does not
   exist, or that grants someone else, gets the one answer `no-grant` (denied == missing: the caller learns
   nothing of other patients) and touches no patient's log; a Consent that does grant this member but is
   revoked, expired or does not cover the purpose says so, since the member is its grantee and knows it
   already, and the refusal is an entry (`federation-token:{reason}`, deny) in that patient's access log.

The token is short-lived (the server's token lifetime), its scopes are read/search of the types the Consent
permits (all types when it names none), and it names the member, the purpose, the user and the Consent. It is
no key to the data: every request is decided again by the consent engine with `Principal.consent_reference`
set, so the live grant decides each read, and a revocation stops the member within one indexer poll. Each use
re-checks the directory (member still active, the signing key unchanged, the copy fresh as in step 1), so a
removal or a key rotation stops its tokens at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy.orm import Session

from fhir_adapters.consent import PERMIT, ConsentRules, Provision, consent_rules
from fhir_adapters.errors import FhirInputError
from healthledger.audit.entries import AccessEntry
from healthledger.audit.log import record_access
from healthledger.audit.pseudonym import patient_pseudonym
from healthledger.auth.scopes import InvalidScope, format_scopes, grant_scopes
from healthledger.auth.tokens import (
    ASSERTION_TYPE,
    CLOCK_LEEWAY,
    GRANT_TYPE,
    MAX_ASSERTION_LIFETIME,
    AccessGrant,
    FederatedIssue,
    OAuthError,
    TokenRequest,
    check_jose_nesting,
)
from healthledger.consent.engine import GrantStatus
from healthledger.consent.index import ConsentIndex
from healthledger.consent.lifecycle import grantees_of
from healthledger.errors import HealthLedgerError, Unauthorized
from healthledger.federation.keys import ASSERTION_ALGORITHM, thumbprint_hex
from healthledger.ledger.members import ACTIVE, REMOVED, directory_age, member_by_id
from healthledger.principal import PURPOSES
from healthledger.store.repository import ResourceStore

log = structlog.get_logger("healthledger.federation")

MEMBER_URN = "urn:healthledger:member:"  # a member's client id (and UDAP organization_id): this + its org id
B2B_EXTENSION = "hl7-b2b"
B2B_VERSION = "1"
PURPOSE_SYSTEM = "urn:oid:2.16.840.1.113883.5.8"  # HL7 v3 ActReason (PurposeOfUse), as UDAP writes it: system#code
MAX_SUBJECT_CHARS = 256
_CONSENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def member_client_id(org_id: str) -> str:
    return MEMBER_URN + org_id


def member_reference(org_id: str) -> str:
    """How Consents here name a member hospital: `Organization/{its directory id}`."""
    return f"Organization/{org_id}"


def purpose_code(value: str) -> str | None:
    """`urn:oid:2.16.840.1.113883.5.8#TREAT` (UDAP's form) or a bare `TREAT` -> "TREAT"; None if not a purpose."""
    system, sep, code = value.rpartition("#")
    if sep and system != PURPOSE_SYSTEM:
        return None
    code = code if sep else value
    return code if code in PURPOSES else None


# ---- pure rules ---------------------------------------------------------------------------------------


def permitting_provisions(rules: ConsentRules, reference: str, purpose: str, now: datetime) -> list[Provision]:
    """Permit provisions (at any depth) that name `reference` (or nobody) and allow `purpose` (or any) now."""
    found: list[Provision] = []

    def walk(p: Provision, inherited_ok: bool) -> None:
        ok = inherited_ok and (p.period is None or p.period.contains(now))
        if p.type == PERMIT and ok and (not p.actor_refs or reference in p.actor_refs) and (
            not p.purposes or purpose in p.purposes
        ):
            found.append(p)
        for child in p.children:
            walk(child, ok)

    walk(rules.root, True)
    return found


def scopes_for(provisions: list[Provision]) -> str:
    """The SMART system scopes these provisions allow at most: read/search of their classes (any type if one
    names no class)."""
    classes: set[str] = set()
    for p in provisions:
        if not p.classes:
            return "system/*.rs"
        classes |= p.classes
    return " ".join(f"system/{c}.rs" for c in sorted(classes))


class Refusal(OAuthError):
    """A refused member token request: the OAuth error for the caller and a reason code for our log."""

    def __init__(self, error: str, description: str, reason: str, status: int = 400) -> None:
        OAuthError.__init__(self, error, description, status)
        self.reason = reason


class FederatedTokens:
    """`auth.tokens.FederatedClients` for this server: the directory, the Consent store and the consent index."""

    def __init__(
        self,
        store: ResourceStore,
        index: ConsentIndex,
        *,
        token_endpoint: str,
        fhir_base: str,
        max_index_age_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.index = index
        self.token_endpoint = token_endpoint
        self.fhir_base = fhir_base.rstrip("/")
        self.max_index_age = max_index_age_seconds
        self.clock = clock

    # -- routing ---------------------------------------------------------------------------------------
    def handles(self, unverified: dict[str, Any]) -> bool:
        iss = unverified.get("iss")
        extensions = unverified.get("extensions")
        return (isinstance(iss, str) and iss.startswith(MEMBER_URN)) or (
            isinstance(extensions, dict) and B2B_EXTENSION in extensions
        )

    # -- the token endpoint ----------------------------------------------------------------------------
    def issue(self, session: Session, req: TokenRequest, now: int) -> FederatedIssue:
        org = ""
        try:
            if req.grant_type != GRANT_TYPE:
                raise Refusal("unsupported_grant_type", "a member hospital uses grant_type=client_credentials",
                              "grant-type")
            if req.client_assertion_type != ASSERTION_TYPE:
                raise Refusal("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}", "assertion-type",
                              401)
            header, unverified = _parts(req.client_assertion)
            iss = unverified.get("iss")
            if not isinstance(iss, str) or not iss.startswith(MEMBER_URN):
                raise Refusal("invalid_client", f"a member's assertion has iss {MEMBER_URN}<organisation id>",
                              "iss", 401)
            org = iss[len(MEMBER_URN):]
            key = self._directory_key(session, org, header)
            claims = self._verified_claims(req.client_assertion, key, iss, now)
            b2b = _b2b(claims, iss)
            issued = self._grant(org, thumbprint_hex(key), b2b, req.scope, now)
            issued = replace(issued, jti=str(claims["jti"]), assertion_exp=int(claims["exp"]))
        except Refusal as refusal:
            log.warning("federation.token_refused", member=org[:64], reason=refusal.reason)
            raise
        log.info("federation.token_issued", member=org, purpose=issued.claims["pou"], consent=issued.claims["cst"])
        return issued

    def _directory_key(self, session: Session, org: str, header: dict[str, Any]) -> ECKey:
        indexed = directory_age(session)
        if indexed is None or self.clock().timestamp() - indexed > self.max_index_age:
            # Fail closed: a removal or a key rotation we have not read yet must not let a token through.
            raise Refusal("temporarily_unavailable", "this server's copy of the member directory is not fresh "
                          "enough; retry shortly", "directory-stale", 503)
        member = member_by_id(session, org)
        if member is None or member.status not in (ACTIVE, REMOVED):
            raise Refusal("invalid_client", f"{org[:64]!r} is not an active member of the consortium directory",
                          "not-a-member", 401)
        if member.status == REMOVED:
            raise Refusal("invalid_client", f"{org!r} was removed from the consortium directory", "removed", 401)
        if header.get("alg") != ASSERTION_ALGORITHM:
            raise Refusal("invalid_client", f"a member's assertion is signed {ASSERTION_ALGORITHM}", "alg", 401)
        try:
            key = ECKey.import_key(cast(Any, header.get("jwk")))
        except (JoseError, ValueError, TypeError, KeyError):
            raise Refusal("invalid_client", "the assertion's header carries no usable public key (jwk)", "jwk",
                          401) from None
        if key.is_private or thumbprint_hex(key) != member.key_thumbprint:
            raise Refusal(
                "invalid_client",
                f"the assertion is not signed with the key the directory lists for {org!r} (rotated? compare "
                "`healthledger federation status` with the directory)",
                "key-not-in-directory", 401,
            )
        return key

    def _verified_claims(self, assertion: str, key: ECKey, iss: str, now: int) -> dict[str, Any]:
        try:
            claims = dict(jwt.decode(assertion, key, algorithms=[ASSERTION_ALGORITHM]).claims)
            JWTClaimsRegistry(
                now=now, leeway=CLOCK_LEEWAY,
                iss={"essential": True, "value": iss}, sub={"essential": True, "value": iss},
                aud={"essential": True, "value": self.token_endpoint},
                exp={"essential": True}, jti={"essential": True},
            ).validate(claims)  # fmt: skip
        except JoseError as exc:
            raise Refusal("invalid_client", f"client_assertion rejected: {exc.error}", "assertion", 401) from None
        if int(claims["exp"]) > now + MAX_ASSERTION_LIFETIME + CLOCK_LEEWAY:
            raise Refusal("invalid_client", "client_assertion exp is more than five minutes ahead", "assertion", 401)
        return claims

    def _grant(self, org: str, key_thumbprint: str, b2b: B2B, requested_scope: str, now: int) -> FederatedIssue:
        no_grant = Refusal(
            "invalid_grant", f"consent_reference names no Consent here that grants {org!r} access", "no-grant"
        )
        consent_id = self._consent_id(b2b.consent_reference)
        if consent_id is None:
            raise no_grant
        at = datetime.fromtimestamp(now, UTC)
        reference = member_reference(org)
        with self.store.service_view() as view:
            stored = view.peek("Consent", consent_id)
            try:
                rules = consent_rules(stored.resource) if stored is not None and stored.resource else None
            except FhirInputError:
                rules = None
            if rules is None or reference not in grantees_of(rules):
                raise no_grant  # missing, unreadable, or granting someone else: one answer
            age = self.index.refresh(view.conn)
            if age > self.max_index_age:
                raise Refusal("temporarily_unavailable", "this server's consent state is not fresh enough; retry "
                              "shortly", "index-stale", 503)
            context = self.index.context(view.conn, rules.patient_id, at, age)
        try:
            state = context.grants.get(consent_id, GrantStatus.UNKNOWN)
            if state is not GrantStatus.LIVE:
                label = {GrantStatus.REVOKED: "revoked", GrantStatus.EXPIRED: "expired"}.get(state, "not live yet")
                raise Refusal("invalid_grant", f"the Consent under consent_reference is {label}",
                              f"grant-{state.value}")
            live = next((c for c in context.consents if c.consent_id == consent_id), None)
            if live is None or live.status != "active":
                raise Refusal("invalid_grant", "the Consent under consent_reference is not active", "consent-inactive")
            provisions = permitting_provisions(live, reference, b2b.purpose, at)
            if not provisions:
                raise Refusal("invalid_grant", f"the Consent does not permit {org!r} access for purpose "
                              f"{b2b.purpose}", "purpose-not-covered")
        except Refusal as refusal:
            # The Consent is real and names this member (checked above): the refusal goes into its patient's log.
            # Never before that check, or the log would differ for a patient who exists (an oracle to non-members).
            self._log_refusal(org, b2b, consent_id, rules.patient_id, at, refusal.reason)
            raise
        try:
            scope = format_scopes(grant_scopes(requested_scope or "system/*.rs", scopes_for(provisions)))
        except InvalidScope as exc:
            raise Refusal("invalid_scope", exc.message, "scope") from None
        return FederatedIssue(member_client_id(org), scope, {"org": org, "pou": b2b.purpose, "usr": b2b.subject_id,
                                                             "cst": consent_id, "kth": key_thumbprint}, "", 0)

    def _log_refusal(self, org: str, b2b: B2B, consent_id: str, patient_id: str, at: datetime, reason: str) -> None:
        with Session(self.store.engine) as session, session.begin():
            record_access(session, AccessEntry(
                time=at, actor=f"member:{org}/{b2b.subject_id}", organization=member_reference(org), role="system",
                purpose=b2b.purpose, action="read", resource_type="Consent", resource_id=consent_id,
                patient_pseudonym=patient_pseudonym(self.store.indexer, patient_id), decision="deny",
                reason=f"federation-token:{reason}",
            ))  # fmt: skip

    def _consent_id(self, reference: str) -> str | None:
        """`{our FHIR base}/Consent/{id}` or `Consent/{id}` -> id; None for anything else."""
        relative = reference.removeprefix(self.fhir_base + "/")
        kind, _, consent_id = relative.partition("/")
        return consent_id if kind == "Consent" and _CONSENT_ID.match(consent_id) else None

    # -- every request ---------------------------------------------------------------------------------
    def check(self, claims: dict[str, Any], grant: AccessGrant) -> AccessGrant:
        org = claims.get("org", "")
        with self.store.engine.connect() as conn, Session(bind=conn) as session:
            indexed = directory_age(session)
            member = member_by_id(session, org)
            consent_age = self.index.refresh(conn)
        if indexed is None or self.clock().timestamp() - indexed > self.max_index_age:
            # As at issue: a removal or rotation we have not read yet must not let a request through (fail closed).
            raise HealthLedgerError("this server's copy of the member directory is not fresh enough; retry shortly",
                                    status=503)
        if consent_age > self.max_index_age:
            # A member's request would otherwise be answered with every record withheld as `index-stale`: a search
            # that looks like "nothing to show", from which the member would remove its copies. Say so instead.
            raise HealthLedgerError("this server's consent state is not fresh enough; retry shortly", status=503)
        if member is None or member.status != ACTIVE:
            raise Unauthorized(f"{org!r} is no longer an active member of the consortium directory")
        if member.key_thumbprint != claims.get("kth"):
            raise Unauthorized(f"the directory key of {org!r} changed since this token was issued: ask again")
        return replace(
            grant, role="system", organization=member_reference(org), default_purpose=claims.get("pou", ""),
            member=org, acting_user=claims.get("usr", ""), consent_reference=claims.get("cst", ""),
        )


@dataclass(frozen=True)
class B2B:
    purpose: str
    subject_id: str
    subject_name: str
    consent_reference: str


def _parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        check_jose_nesting(assertion)
        compact = jws.extract_compact(assertion.encode())
        header, payload = dict(compact.protected), json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError, TypeError):
        raise Refusal("invalid_client", "client_assertion is not a well-formed JWT", "malformed", 401) from None
    if not isinstance(payload, dict):
        raise Refusal("invalid_client", "client_assertion is not a well-formed JWT", "malformed", 401)
    return header, payload


def _b2b(claims: dict[str, Any], iss: str) -> B2B:
    def bad(what: str) -> Refusal:
        return Refusal("invalid_request", f"extensions.{B2B_EXTENSION}: {what}", "b2b")

    extensions = claims.get("extensions")
    ext = extensions.get(B2B_EXTENSION) if isinstance(extensions, dict) else None
    if not isinstance(ext, dict):
        raise bad("required (organisation, purpose of use, requesting user, consent relied on)")
    if ext.get("version") != B2B_VERSION:
        raise bad(f'version must be "{B2B_VERSION}"')
    if ext.get("organization_id") != iss:
        raise bad("organization_id must be the assertion's iss")
    purposes = ext.get("purpose_of_use")
    if not isinstance(purposes, list) or len(purposes) != 1 or not isinstance(purposes[0], str):
        raise bad("purpose_of_use must hold exactly one code")
    purpose = purpose_code(purposes[0])
    if purpose is None:
        raise bad(f"purpose_of_use must be an HL7 v3 PurposeOfUse code ({PURPOSE_SYSTEM}#TREAT)")
    subject = ext.get("subject_id")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_CHARS or not subject.isprintable():
        raise bad(f"subject_id (the requesting user) is required: printable, at most {MAX_SUBJECT_CHARS} characters")
    name = ext.get("subject_name", "")
    if not isinstance(name, str) or len(name) > MAX_SUBJECT_CHARS or not name.isprintable():
        raise bad("subject_name must be printable text")
    references = ext.get("consent_reference")
    if not isinstance(references, list) or len(references) != 1 or not isinstance(references[0], str):
        raise bad("consent_reference must hold exactly one Consent URL")
    return B2B(purpose, subject.strip(), name, references[0])
