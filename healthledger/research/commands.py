"""`healthledger credentials issue` (the hospital as issuer) and `healthledger study join|leave` (a patient's
side, over HTTP against a running service: what the browser does)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from healthledger.runtime import Runtime

if TYPE_CHECKING:
    from healthledger.research.patient_client import PatientClient


@click.group("credentials")
def credentials_group() -> None:
    """Eligibility credentials: the hospital's Poseidon tree of patients' attributes, anchored on-chain."""


@credentials_group.command("issue")
@click.option("--patient", "patients", multiple=True, help="Patient id (repeatable); default: every activated patient")
@click.pass_obj
def issue_command(runtime: Runtime, patients: tuple[str, ...]) -> None:
    """Issue or re-issue the credentials of activated patients and queue the new root for anchoring."""
    from healthledger.research.credentials import CredentialIssuer
    from healthledger.research.worker import bulk_pair_hasher

    runtime.bootstrap()
    store = runtime.store
    refs = [p if p.startswith("Patient/") else f"Patient/{p}" for p in patients] or None
    started = time.perf_counter()
    with bulk_pair_hasher() as hasher, store.engine.begin() as conn:
        report = CredentialIssuer(store).issue(conn, refs, hash_pairs=hasher)
    seconds = time.perf_counter() - started
    click.echo(f"examined {report.examined}: {report.issued} issued, {report.reissued} re-issued, "
               f"{report.unchanged} unchanged" + (f", {report.not_activated} not activated" if report.not_activated else ""))
    for reason, count in sorted(report.skipped.items()):
        click.echo(f"  skipped {count}: {reason}")
    if report.root is not None:
        click.echo(f"new root {report.root} queued for anchoring as outbox item #{report.anchor_item} ({seconds:.1f} s)")
    else:
        click.echo("no change: the anchored root stands")


@click.group("study")
def study_group() -> None:
    """A patient's side of research studies, over HTTP (exactly what the web app does)."""


def _password(password_stdin: bool) -> str:
    if not password_stdin:
        return str(click.prompt("password", hide_input=True))
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise click.UsageError("--password-stdin: no password on standard input")
    return line


def _client(url: str, user: str, password: str) -> PatientClient:
    from healthledger.research.patient_client import PatientClient, UrllibTransport

    client = PatientClient(UrllibTransport(url))
    client.sign_in(user, password)
    return client


@study_group.command("join")
@click.argument("study_id")
@click.option("--url", required=True, help="the service's base URL, e.g. https://hospital.example")
@click.option("--user", required=True, help="your user name")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def join_command(study_id: str, url: str, user: str, password_stdin: bool) -> None:
    """Fetch your credential, check eligibility locally, prove with snarkjs, enrol and sign the study consent."""
    from healthledger.research.patient_client import NotEligible
    from zk.prover import CircuitFiles, NodeProver

    password = _password(password_stdin)
    client = _client(url, user, password)
    try:
        with NodeProver(CircuitFiles.committed()) as prover:
            joined = client.join(study_id, password, prover, on_step=lambda step: click.echo(f"... {step}", err=True))
    except NotEligible as exc:
        click.echo(exc.message, err=True)
        sys.exit(3)
    state = next((e.get("valueCode") for e in joined.subject.get("extension", [])), "pending")
    click.echo(f"enrolled in ResearchStudy/{study_id} as {joined.pseudonym} (on-chain: {state}); "
               f"ResearchSubject/{joined.subject['id']}")
    t = joined.timings
    click.echo(f"credential {t.credential_ms:.0f} ms, proof {t.prove_ms:.0f} ms, enrol {t.enrol_ms:.0f} ms", err=True)


@study_group.command("leave")
@click.argument("study_id")
@click.option("--url", required=True, help="the service's base URL")
@click.option("--user", required=True, help="your user name")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def leave_command(study_id: str, url: str, user: str, password_stdin: bool) -> None:
    """Leave the study: the study consent's grant is revoked (data already released stays logged)."""
    password = _password(password_stdin)
    client = _client(url, user, password)
    subject = client.leave(study_id, password)
    click.echo(f"left ResearchStudy/{study_id}: ResearchSubject/{subject['id']} is {subject['status']}; "
               "the study consent's grant is being revoked on-chain")
