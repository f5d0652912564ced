"""``flask sync run``: a sync run from the command line, in this process."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

from .extensions import db
from .models import CrmIntegration


@click.group(cls=AppGroup)
def sync() -> None:
    """Run the CRM sync."""


@sync.command("run")
@click.option("--integration", "integration_id", type=int, required=True, help="the integration's id")
@click.option("--step", "steps", multiple=True, help="only this nightly step (repeatable); default: all")
@click.option("--dry-run", is_flag=True, help="report what would be created, updated and skipped; write nothing")
@click.option("--full", is_flag=True, help="read every CRM record, not only those modified since the last run")
def run_cmd(integration_id: int, steps: tuple[str, ...], dry_run: bool, full: bool) -> None:
    """Run the nightly steps now and print the ledger of the run."""
    from . import sync as engine

    integration = db.session.get(CrmIntegration, integration_id)
    if integration is None:
        raise click.ClickException(f"No integration with id {integration_id}.")
    unknown = [s for s in steps if s not in engine.NIGHTLY_STEPS]
    if unknown:
        raise click.ClickException(f"Unknown step {unknown[0]!r}: use one of {', '.join(engine.NIGHTLY_STEPS)}.")
    if not integration.connection_complete:
        raise click.ClickException("The integration's CRM Connection Settings are not saved yet.")
    run = engine.new_run(integration, "manual", dry_run=dry_run, trigger="command line", full=full)
    run = engine.execute(run.id, steps=list(steps) or None)
    title = "Dry run (nothing written)" if dry_run else "Run"
    click.echo(f"{title} {run.id}: {run.status.value} — {run.message}")
    for step in run.steps:
        click.echo(f"  {step['title']:<52} created {step['created']:>6}  updated {step['updated']:>6}  "
                   f"skipped {step['skipped']:>6}  failed {step['failed']:>6}  {step['note']}")
        for sample in step.get("samples", []):
            click.echo(f"      e.g. {sample}")
    sys.exit(0 if run.status.value in ("finished", "partial") else 1)
