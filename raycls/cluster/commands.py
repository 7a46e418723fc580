"""`raycls submit` and `raycls jobs list|logs|stop`: raycls commands as Ray jobs."""

from __future__ import annotations

import click

from raycls.cli_common import fail
from raycls.cluster.upload import MAX_UPLOAD_MB

job_address_option = click.option(
    "--address",
    default=None,
    help="Ray dashboard URL, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS).",
)


def _echo_log(chunk: str) -> None:
    click.echo(chunk, nl=False)


@click.command(
    "submit",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@job_address_option
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the job's logs and exit with its outcome; else print its id.",
)
@click.option(
    "--working-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder uploaded as the job's working dir, less secrets and data (default: this "
    "checkout's raycls/, jobs/, configs/ and files COMMAND names).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0),
    default=MAX_UPLOAD_MB,
    show_default=True,
    help="Refuse uploads larger than this.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def submit_cmd(
    ctx: click.Context,
    address: str | None,
    wait: bool,
    working_dir: str | None,
    max_upload_mb: float,
    command: tuple[str, ...],
) -> None:
    """Run a raycls COMMAND on a Ray cluster as a job: raycls submit -- classify ..."""
    from raycls.cluster.submit import JobError, submit_job

    try:
        outcome = submit_job(
            list(command),
            address=address,
            wait=wait,
            working_dir=working_dir,
            on_log=_echo_log,
            on_upload=lambda upload: click.echo(upload.describe(), err=True),
            max_upload_mb=max_upload_mb,
        )
    except (ValueError, JobError) as error:
        fail(error)
    if not wait:
        click.echo(outcome.job_id)
        return
    if outcome.exit_code:
        click.echo(f"Job {outcome.job_id} {outcome.status}: {outcome.message}", err=True)
    else:
        click.echo(f"Job {outcome.job_id} {outcome.status}.", err=True)
    ctx.exit(outcome.exit_code)


@click.group("jobs")
def jobs_group() -> None:
    """List, read and stop jobs on a Ray cluster."""


@jobs_group.command("list")
@job_address_option
def jobs_list_cmd(address: str | None) -> None:
    """The cluster's jobs, oldest first: id, status, start time, entrypoint."""
    import time

    from raycls.cluster.submit import JobError, list_jobs

    try:
        rows = list_jobs(address)
    except (ValueError, JobError) as error:
        fail(error)
    for row in rows:
        started = row["start_time"]
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started / 1000)) if started else "-"
        )
        click.echo(f"{row['job_id']:<28} {row['status']:<9} {when}  {row['entrypoint']}")


@jobs_group.command("logs")
@click.argument("job_id")
@job_address_option
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
def jobs_logs_cmd(job_id: str, address: str | None, follow: bool) -> None:
    """Print the logs of JOB_ID."""
    from raycls.cluster.submit import JobError, job_logs

    try:
        job_logs(job_id, _echo_log, address=address, follow=follow)
    except (ValueError, JobError) as error:
        fail(error)


@jobs_group.command("stop")
@click.argument("job_id")
@job_address_option
def jobs_stop_cmd(job_id: str, address: str | None) -> None:
    """Stop JOB_ID."""
    from raycls.cluster.submit import JobError, stop_job

    try:
        stopped = stop_job(job_id, address=address)
    except (ValueError, JobError) as error:
        fail(error)
    click.echo(f"Stopping job {job_id}." if stopped else f"Job {job_id} was not running.")
