"""`healthledger clients ...` and `users ...`: register, list and disable API clients and accounts (--json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fhir_adapters.errors import MalformedJson
from fhir_adapters.validation import check_json_text_nesting
from healthledger.auth.models import ApiClient
from healthledger.auth.tokens import disable_client, list_clients, register_client
from healthledger.runtime import Runtime

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from healthledger.auth.users import AccountNames


def _sessions(runtime: Runtime) -> sessionmaker[Session]:
    runtime.migrate()
    return runtime.sessions


def _client_json(c: ApiClient) -> dict[str, Any]:
    return {
        "client_id": c.client_id, "name": c.name, "scopes": c.scopes, "auth_method": c.auth_method,
        "jwks_url": c.jwks_url, "role": c.role, "organization": c.organization,
        "default_purpose": c.default_purpose, "consult_for_others": bool(c.consult_for_others),
        "redirect_uris": json.loads(c.redirect_uris) if c.redirect_uris else [],
        "disabled": c.disabled, "created_at": c.created_at.isoformat(),
    }


@click.group("clients")
def clients_group() -> None:
    """API clients (SMART Backend Services)."""


@clients_group.command("add")
@click.argument("name")
@click.option("--scopes", required=True, help='SMART scopes it may be granted, e.g. "system/*.rs system/Observation.c"')
@click.option("--role", type=click.Choice(["system", "clinician", "researcher", "auditor"]), default="system", show_default=True)
@click.option("--organization", default=None,
              help="Organization/{id} the client acts for (default: the home organisation, see `healthledger init`)")
@click.option("--purpose", "default_purpose", default="TREAT", show_default=True, help="default PurposeOfUse")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JWKS file (public keys)")
@click.option("--jwks-url", help="URL of the client's JWKS")
@click.option("--secret", "with_secret", is_flag=True, help="a client secret instead of keys (development, or a confidential app)")
@click.option("--redirect-uri", "redirect_uris", multiple=True,
              help="an app for SMART App Launch: where patients' answers go (repeatable; https, http only on loopback)")
@click.option("--public", is_flag=True, help="an app without credentials (browser, phone): PKCE only")
@click.option("--consult-for-others", is_flag=True,
              help="may ask CDS Hooks consent consults on behalf of other actors (context.actor); "
                   "otherwise it may ask only as itself")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def add(runtime: Runtime, name: str, scopes: str, role: str, organization: str | None, default_purpose: str, jwks_file: Path | None,
        jwks_url: str | None, with_secret: bool, redirect_uris: tuple[str, ...], public: bool, consult_for_others: bool,
        as_json: bool) -> None:
    """Register a client. A secret, if asked for, is printed once and stored only as a hash.

    With --redirect-uri it is an app patients may authorise (SMART App Launch, standalone patient launch),
    e.g. `clients add "My Health App" --redirect-uri https://app.example/cb --public
    --scopes "launch/patient openid fhirUser offline_access patient/*.rs"`."""
    try:
        text = jwks_file.read_text() if jwks_file else None
        if text is not None:
            check_json_text_nesting(text)  # before the stdlib's recursive parser reads it
        jwks = json.loads(text) if text is not None else None
    except MalformedJson as exc:
        raise click.ClickException(f"{jwks_file}: {exc.message}") from None
    except ValueError:
        raise click.ClickException(f"{jwks_file} is not JSON") from None
    if organization is None:
        organization = "" if public or redirect_uris else runtime.home_organization()
    with _sessions(runtime).begin() as s:
        client, secret = register_client(
            s, name=name, scopes=scopes, role=role, organization=organization, jwks=jwks, jwks_url=jwks_url,
            with_secret=with_secret, default_purpose=default_purpose, consult_for_others=consult_for_others,
            now=datetime.now(UTC), redirect_uris=list(redirect_uris) or None, public=public,
        )
        out = _client_json(client)
    if secret:
        out["client_secret"] = secret
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"registered client {out['client_id']} ({name}), {out['auth_method']}")
        if secret:
            click.echo(f"client secret (shown once): {secret}")


@clients_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_cmd(runtime: Runtime, as_json: bool) -> None:
    """List registered clients."""
    with _sessions(runtime)() as s:
        rows = [_client_json(c) for c in list_clients(s)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        consults = "consults-for-others" if r["consult_for_others"] else "consults-as-itself"
        click.echo(f"{r['client_id']}  {state:8}  {r['auth_method']:15}  {r['role']:10}  {consults:19}  {r['name']}"
                   f"  [{r['scopes']}]")


@clients_group.command("disable")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def disable(runtime: Runtime, client_id: str, as_json: bool) -> None:
    """Disable a client: its tokens stop working at once."""
    with _sessions(runtime).begin() as s:
        out = _client_json(disable_client(s, client_id))
    click.echo(json.dumps(out) if as_json else f"disabled client {client_id}")


def _user_json(u: Any, username: str) -> dict[str, Any]:
    return {"user_id": u.user_id, "username": username, "role": u.role, "organization": u.organization,
            "patient_id": u.patient_id, "disabled": u.disabled, "created_at": u.created_at.isoformat()}


def _accounts(runtime: Runtime) -> tuple[sessionmaker[Session], AccountNames]:
    """Sessions on the store's database and the account-name crypto that uses the store's keys."""
    from healthledger.auth.users import AccountNames

    store = runtime.store
    return runtime.sessions, AccountNames(store)


@click.group("users")
def users_group() -> None:
    """People: patients, clinicians, researchers, auditors."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["patient", "clinician", "researcher", "auditor"]), required=True)
@click.option("--organization", default=None,
              help="Organization/{id} (clinicians, researchers; auditors read the log of its patients); "
                   "default for staff: the home organisation")
@click.option("--patient", "patient_id", default="", help="the Patient resource id (patients)")
@click.option("--display-name", default="", help="the name patients see in their access history (staff)")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input (else one is generated)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def add_user(runtime: Runtime, username: str, role: str, organization: str | None, patient_id: str, display_name: str,
             password_stdin: bool, as_json: bool) -> None:
    """Create an account. A patient also gets their signing key, wrapped by the password, and a
    recovery code printed once (keep it: with the hospital it restores the key)."""
    import secrets
    import sys
    import time

    from healthledger.auth.users import create_user
    from healthledger.ledger.patient_keys import create_patient_key

    if organization is None:
        organization = "" if role == "patient" else runtime.home_organization()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(12)
    sessions, names = _accounts(runtime)
    with sessions.begin() as s:
        user = create_user(s, names, username=username, password=password, role=role, now=datetime.now(UTC),
                           organization=organization, patient_id=patient_id, display_name=display_name)
        out = _user_json(user, names.open(s, user))
        if role == "patient":
            out["recovery_code"] = create_patient_key(s, f"Patient/{patient_id}", password, runtime.key_provider,
                                                      now=time.time())
    if not password_stdin:
        out["password"] = password
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"created {role} {out['username']} ({out['user_id']})")
    if "password" in out:
        click.echo(f"password (shown once): {out['password']}")
    if "recovery_code" in out:
        click.echo(f"recovery code (shown once, give it to the patient): {out['recovery_code']}")


@users_group.command("invite")
@click.argument("patient_id")
@click.option("--days", type=click.IntRange(1, 90), default=14, show_default=True, help="days the code stays valid")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def invite_user(runtime: Runtime, patient_id: str, days: int, as_json: bool) -> None:
    """Issue a one-time enrolment code for a Patient: with it the patient creates their own web account
    (/app/signup). Printed once; a new code for the same patient replaces the unused ones."""
    from datetime import timedelta

    from healthledger.auth.enrolment import EnrolmentCodes
    from healthledger.errors import Gone, NotFound
    from healthledger.principal import SYSTEM

    sessions, names = _accounts(runtime)
    try:
        runtime.store.read("Patient", patient_id, principal=SYSTEM)
    except (NotFound, Gone):
        raise click.ClickException(f"no Patient with id {patient_id!r} is stored here") from None
    with sessions.begin() as s:
        code = EnrolmentCodes(runtime.store, names).issue(
            s, patient_id, now=datetime.now(UTC), lifetime=timedelta(days=days))
    settings = runtime.settings
    base = settings.base_url.rstrip("/") or f"http://{settings.host}:{settings.port}"
    link = f"{base}/app/signup?code={code}"
    if as_json:
        click.echo(json.dumps({"patient_id": patient_id, "code": code, "link": link, "valid_days": days}))
        return
    click.echo(f"enrolment code (shown once, valid {days} days): {code}")
    click.echo(f"sign-up link: {link}")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_users_cmd(runtime: Runtime, as_json: bool) -> None:
    """List accounts."""
    from healthledger.auth.users import list_users

    sessions, names = _accounts(runtime)
    with sessions() as s:
        rows = [_user_json(u, names.open(s, u)) for u in list_users(s)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        click.echo(f"{r['username']:24} {state:8} {r['role']:10} {r['organization'] or r['patient_id']}")


@users_group.command("disable")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def disable_user_cmd(runtime: Runtime, username: str, as_json: bool) -> None:
    """Disable an account."""
    from healthledger.auth.users import disable_user

    sessions, names = _accounts(runtime)
    with sessions.begin() as s:
        user = disable_user(s, names, username)
        out = _user_json(user, names.open(s, user))
    click.echo(json.dumps(out) if as_json else f"disabled {out['username']}")
