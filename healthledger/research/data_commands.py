"""`healthledger research-data ...`: what the research data releases have disclosed, for the hospital and its
ethics board: privacy budgets spent per study and researcher, feasibility releases, export jobs."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import select

from healthledger.runtime import Runtime


@click.group("research-data")
def research_data_group() -> None:
    """Feasibility budgets and releases, de-identified exports (docs/research.md)."""


@research_data_group.command("budgets")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def budgets_command(runtime: Runtime, as_json: bool) -> None:
    """ε spent and left per study and per researcher, and each feasibility release (never an exact count)."""
    from healthledger.research.data_models import FeasibilityRelease, PrivacyBudget
    from healthledger.research.feasibility import MICRO

    runtime.migrate()
    tenant = runtime.settings.tenant
    with runtime.sessions() as s:
        budgets = s.scalars(select(PrivacyBudget).where(PrivacyBudget.tenant == tenant)
                            .order_by(PrivacyBudget.holder)).all()
        releases = s.scalars(select(FeasibilityRelease).where(FeasibilityRelease.tenant == tenant)
                             .order_by(FeasibilityRelease.id)).all()
    rows = [{"holder": b.holder, "epsilon_spent": b.spent_micro / MICRO, "epsilon_total": b.total_micro / MICRO}
            for b in budgets]
    released: list[dict[str, Any]] = [{"study": r.study_id, "criteria_hash": r.question_hash, "epsilon": r.epsilon_micro / MICRO,
                 "by": r.requested_by, "released_at": r.released_at.isoformat(),
                 "shown": r.noisy_count if r.noisy_count is not None else f"fewer than {r.threshold}"}
                for r in releases]
    if as_json:
        click.echo(json.dumps({"budgets": rows, "releases": released}, indent=2))
        return
    if not rows:
        click.echo("no feasibility question has been asked")
        return
    for b in rows:
        click.echo(f"{b['holder']:60s} ε {b['epsilon_spent']:g} of {b['epsilon_total']:g} spent")
    for r in released:
        click.echo(f"  {r['released_at'][:19]}  {r['study']}  ε {r['epsilon']:g}  {r['shown']}  by {r['by']}  "
                   f"criteria {r['criteria_hash'][:12]}")


@research_data_group.command("exports")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def exports_command(runtime: Runtime, as_json: bool) -> None:
    """Export jobs: study, researcher, state, resources delivered, the manifest's sha256 (as logged)."""
    from sqlalchemy import func

    from healthledger.research.data_models import ExportFile, ExportJob

    runtime.migrate()
    tenant = runtime.settings.tenant
    with runtime.sessions() as s:
        jobs = s.scalars(select(ExportJob).where(ExportJob.tenant == tenant).order_by(ExportJob.created_at)).all()
        counts = dict(s.execute(select(ExportFile.job_id, func.sum(ExportFile.count)).group_by(ExportFile.job_id)).all())
    rows: list[dict[str, Any]] = [{"job": j.id, "study": j.study_id, "by": j.requested_by, "state": "cancelled" if j.cancelled else j.status,
             "created_at": j.created_at.isoformat(), "resources": int(counts.get(j.id) or 0),
             "manifest_sha256": j.manifest_sha256, "types": j.types} for j in jobs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no export has been asked for")
        return
    for r in rows:
        click.echo(f"{r['created_at'][:19]}  {r['job']}  {r['study']}  {r['state']:9s}  {r['resources']:6d} resources  "
                   f"by {r['by']}" + (f"  manifest sha256 {r['manifest_sha256']}" if r["manifest_sha256"] else ""))
