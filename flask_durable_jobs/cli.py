"""The ``flask jobs`` command group: thin wrappers over the extension."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import typing as t

import click
from flask.cli import AppGroup

from .errors import DurableJobsError
from .extension import get_state

if t.TYPE_CHECKING:
    from .extension import DurableJobs, State

jobs_cli = AppGroup("jobs", help="Durable background jobs.")


def _state() -> State:
    try:
        return get_state()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _ext() -> DurableJobs:
    return _state().ext


def _echo(data: t.Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@jobs_cli.command("process")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Most jobs to claim.")
def process_command(limit: int | None) -> None:
    """Run due jobs once and print the counts."""
    _echo(_ext().process_due(limit))


@jobs_cli.command("sweep")
def sweep_command() -> None:
    """Recover running jobs whose lease expired."""
    click.echo(f"recovered {_ext().sweep_orphans()} jobs")


@jobs_cli.command("prune")
@click.option("--older-than-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Prune succeeded and cancelled jobs older than this (default: retention).")
def prune_command(older_than_days: float | None) -> None:
    """Delete finished jobs past their retention."""
    older = None if older_than_days is None else dt.timedelta(days=older_than_days)
    click.echo(f"pruned {_ext().prune(older)} jobs")


@jobs_cli.command("stats")
def stats_command() -> None:
    """Print job counts by status and type."""
    _echo(_ext().stats())


@jobs_cli.command("health")
@click.option("--max-due-age", type=click.IntRange(min=1), default=None,
              help="Also fail when the oldest due job has waited longer (seconds).")
def health_command(max_due_age: int | None) -> None:
    """Print the health report as JSON; exit 1 when unhealthy."""
    from .health import health_report

    report = health_report(_state(), max_due_age=max_due_age)
    _echo(report)
    if not report["healthy"]:
        raise SystemExit(1)


@jobs_cli.command("retry")
@click.argument("job_id", type=click.IntRange(min=1))
def retry_command(job_id: int) -> None:
    """Send a dead or cancelled job back to pending."""
    try:
        job = _ext().retry(job_id)
    except DurableJobsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"job {job.id} is {job.status}")


@jobs_cli.command("pause")
@click.argument("name")
def pause_command(name: str) -> None:
    """Stop every process from starting the queue's jobs."""
    try:
        queue = _ext().pause_queue(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(f"queue {queue['name']} is paused")


@jobs_cli.command("resume")
@click.argument("name")
def resume_command(name: str) -> None:
    """Let every process start the queue's jobs again."""
    try:
        queue = _ext().resume_queue(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(f"queue {queue['name']} is running")


@jobs_cli.command("queues")
def queues_command() -> None:
    """Print every queue, whether it is paused, and its job counts."""
    _echo(_ext().queues())


@jobs_cli.command("processes")
def processes_command() -> None:
    """Print the processes that run jobs, as the registry knows them."""
    _echo([{**p, "started_at": p["started_at"].isoformat(),
            "last_seen": p["last_seen"].isoformat()} for p in _ext().processes()])


@jobs_cli.command("work")
def work_command() -> None:
    """Run the job processor in the foreground until SIGINT or SIGTERM."""
    work(_ext())


def work(ext: DurableJobs) -> None:
    """Run the current app's scheduler until SIGINT or SIGTERM, then stop it."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: t.Any) -> None:
        click.echo(f"received signal {signum}; finishing running jobs", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ext.start()
    click.echo("processing jobs; press Ctrl+C to stop", err=True)
    while not stop.wait(0.5):
        pass
    ext.stop()


@jobs_cli.command("periodic")
def periodic_command() -> None:
    """Print the recurring schedules with their last and next fire times."""
    from .periodic import describe

    _echo(describe(_state()))


@jobs_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade_command(revision: str) -> None:
    """Create or upgrade the job tables from the shipped migrations."""
    from .migrations import upgrade

    upgrade(_state().db.engine, revision)
    click.echo(f"durable jobs schema at {revision}")
