"""`healthledger credentials issue` (the hospital as issuer), `healthledger study join|leave` (a patient's
side, over HTTP against a running service: what the browser does) and `healthledger research ...` (a
researcher's side, over HTTP: `researcher_client`)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from healthledger.runtime import Runtime

if TYPE_CHECKING:
    from healthledger.research.patient_client import PatientClient
    from healthledger.research.researcher_client import ResearcherClient


@click.group("credentials")
def credentials_group() -> None:
    """Eligibility credentials: the hospital's Poseidon tree of patients' attributes, anchored on-chain."""


@credentials_group.command("issue")
@click.option("--patient", "patients", multiple=True, help="Patient id (repeatable); default: every activated patient")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="processes computing leaves when there are many (default: one per CPU)")
@click.pass_obj
def issue_command(runtime: Runtime, patients: tuple[str, ...], workers: int | None) -> None:
    """Issue or re-issue the credentials of activated patients and queue the new root for anchoring."""
    from healthledger.research.credentials import CredentialIssuer
    from healthledger.research.worker import bulk_pair_hasher

    runtime.bootstrap()
    store = runtime.store
    refs = [p if p.startswith("Patient/") else f"Patient/{p}" for p in patients] or None
    started = time.perf_counter()
    with bulk_pair_hasher() as hasher, store.engine.begin() as conn:
        report = CredentialIssuer(store).issue(conn, refs, hash_pairs=hasher, leaf_workers=workers or os.cpu_count() or 1)
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
    from healthledger.research.patient_client import PatientClient
    from healthledger.research.service_client import UrllibTransport

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


@click.group("research")
def research_group() -> None:
    """A researcher's side of studies, over HTTP: define, publish, feasibility, list, export."""


def _connection(function: Callable[..., None]) -> Callable[..., None]:
    """--url, and who calls: --user with --password-stdin (or a prompt), or --token-stdin (a bearer token)."""
    function = click.option("--token-stdin", is_flag=True, help="read a bearer token from standard input")(function)
    function = click.option("--password-stdin", is_flag=True, help="read the password from standard input")(function)
    function = click.option("--user", default="", help="your user name (or use --token-stdin)")(function)
    return click.option("--url", required=True, help="the service's base URL, e.g. https://hospital.example")(function)


def _researcher(url: str, user: str, password_stdin: bool, token_stdin: bool) -> ResearcherClient:
    from healthledger.research.researcher_client import ResearcherClient
    from healthledger.research.service_client import UrllibTransport

    if token_stdin == bool(user):
        raise click.UsageError("give either --user (with --password-stdin or a prompt) or --token-stdin")
    if token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise click.UsageError("--token-stdin: no token on standard input")
        return ResearcherClient(UrllibTransport(url), token=token)
    client = ResearcherClient(UrllibTransport(url))
    client.sign_in(user, _password(password_stdin))
    return client


@research_group.command("studies")
@_connection
@click.option("--status", default=None, help="only studies of this status (e.g. active, draft)")
def studies_command(url: str, user: str, password_stdin: bool, token_stdin: bool, status: str | None) -> None:
    """List the studies you may see: published ones, and your own drafts."""
    studies = _researcher(url, user, password_stdin, token_stdin).studies(status)
    for study in studies:
        click.echo(f"{study.get('id')}\t{study.get('status')}\t{study.get('title', '')}")
    click.echo(f"{len(studies)} studies", err=True)


@research_group.command("create")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_connection
def create_command(study_file: Path, url: str, user: str, password_stdin: bool, token_stdin: bool) -> None:
    """Create a draft study from a FHIR ResearchStudy JSON file; prints its id."""
    try:
        study = json.loads(study_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="STUDY_FILE") from None
    created = _researcher(url, user, password_stdin, token_stdin).create(study)
    cohort = (created.get("enrollment") or [{}])[0].get("reference", "")
    click.echo(f"created ResearchStudy/{created['id']} (status {created.get('status')}, cohort {cohort})")


@research_group.command("publish")
@click.argument("study_id")
@_connection
@click.option("--wait", "wait_seconds", default=120.0, show_default=True, help="seconds to wait for it to be active")
def publish_command(study_id: str, url: str, user: str, password_stdin: bool, token_stdin: bool,
                    wait_seconds: float) -> None:
    """Publish a draft (or retry a failed registration) and wait until the chain confirms it."""
    study = _researcher(url, user, password_stdin, token_stdin).publish(
        study_id, wait_seconds=wait_seconds, on_wait=lambda note: click.echo(f"... {note}", err=True))
    click.echo(f"ResearchStudy/{study_id} is {study.get('status')}")


@research_group.command("feasibility")
@click.argument("study_id")
@_connection
@click.option("--criteria", "criteria_text", default=None, help="other criteria to count (JSON), instead of the study's")
def feasibility_command(study_id: str, url: str, user: str, password_stdin: bool, token_stdin: bool,
                        criteria_text: str | None) -> None:
    """A differentially private count of the patients who meet the criteria (spends privacy budget)."""
    from healthledger.research.service_client import parameters

    try:
        criteria = json.loads(criteria_text) if criteria_text is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--criteria") from None
    answer = parameters(_researcher(url, user, password_stdin, token_stdin).feasibility(study_id, criteria))
    interval = answer.get("interval") or {}
    low, high = (interval.get("low") or {}).get("value"), (interval.get("high") or {}).get("value")
    click.echo(f"{answer.get('result')}; 95 % interval {low} to {high}")
    click.echo(f"epsilon spent now {answer.get('epsilonSpentNow')}, spent {answer.get('epsilonSpent')}, "
               f"left {answer.get('epsilonRemaining')} of {answer.get('epsilonBudget')}"
               + (" (a repeated question: answered from its stored release)" if answer.get("repeat") else ""))


@research_group.command("export")
@click.argument("study_id")
@click.option("--out", "folder", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the folder for the NDJSON files and manifest.json")
@_connection
@click.option("--type", "types", default="", help="resource types, comma-separated (default: the study's)")
@click.option("--since", default="", help="only resources updated at or after this instant")
@click.option("--wait", "wait_seconds", default=600.0, show_default=True, help="seconds to wait for the export")
def export_command(study_id: str, folder: Path, url: str, user: str, password_stdin: bool, token_stdin: bool,
                   types: str, since: str, wait_seconds: float) -> None:
    """Export the study's cohort (Bulk Data), de-identified, into a folder; every file checked by its sha256."""
    exported = _researcher(url, user, password_stdin, token_stdin).export(
        study_id, folder, types=types, since=since, wait_seconds=wait_seconds,
        on_progress=lambda note: click.echo(f"... {note}", err=True))
    for f in exported.files:
        click.echo(f"{f.name}\t{f.resource_type}\t{f.count}\tsha256 {f.sha256}")
    click.echo(f"exported {exported.resources} resources in {len(exported.files)} files to {exported.folder} "
               f"(transactionTime {exported.transaction_time}); sha256 checked")
