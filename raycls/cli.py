"""The `raycls` command: parses arguments, loads settings, calls the library. No logic here.

Each command lives beside its stage (`raycls/<stage>/commands.py`) and is registered at the
end of this file with one `cli.add_command(...)` line. What commands share (--config,
--address, `a.b=value` overrides, flags that stand for config keys) is in `raycls.cli_common`.
"""

from __future__ import annotations

import atexit
import gc
import logging
import sys

import click

# Re-exported for command modules written against `raycls.cli`.
from raycls.cli_common import (  # noqa: F401
    OVERRIDES_HELP,
    address_option,
    config_option,
    fail,
    load_settings,
    overrides_argument,
    setting,
)

_fail = fail  # the name command modules used before raycls.cli_common


class RedactingFormatter(logging.Formatter):
    """Console log lines never show credentials inside URIs (s3://KEY:SECRET@bucket/...)."""

    def format(self, record: logging.LogRecord) -> str:
        from raycls.io.storage import redact

        return redact(super().format(record))


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


# Paths the system refuses: no such file, no permission, a file where a folder is needed or
# the other way round. The user's to fix, so the message (which names the path) is enough.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)  # fmt: skip


INTERRUPTED = (
    "Interrupted. What was written stays: rerun the same command to resume (classify keeps "
    "its committed shards; train, tune and self-train resume from their last checkpoints)."
)


class RayclsGroup(click.Group):
    """The command group: a path error any command meets ends as `Error: <message>` and exit
    status 1, not a traceback (`raycls -v` keeps the traceback); Ctrl-C ends with a line on
    resuming and exit status 130."""

    def invoke(self, ctx: click.Context) -> object:
        ray_before = _ray_running()
        try:
            try:
                return super().invoke(ctx)
            except PATH_ERRORS as error:
                if logging.getLogger().isEnabledFor(logging.DEBUG):
                    raise
                fail(error)
        except (click.ClickException, KeyboardInterrupt) as error:
            # Stop the Ray this command started (never one it found running: a test
            # session's, a job's) before the error is printed, so that the workers' log lines
            # still on their way (an actor's traceback) come first and the error comes last.
            if not ray_before and _ray_running():
                sys.modules["ray"].shutdown()
            if isinstance(error, KeyboardInterrupt):
                click.echo(INTERRUPTED, err=True)
                raise click.exceptions.Exit(130) from None
            raise


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@click.group(cls=RayclsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="raycls")
def cli(verbose: bool) -> None:
    """Classify images at cluster scale with a fused CNN + language-model classifier."""
    _setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # Registered before anything else, so it runs after every other exit handler (Ray's
    # shutdown among them): the interpreter's last garbage collection then skips what is
    # still alive at exit (torch's, Ray's and transformers' modules), which it would otherwise
    # walk once more before the process can end.
    atexit.register(gc.freeze)
    cli.main(args=argv, prog_name="raycls", standalone_mode=True)


# Commands. A new one lives in its stage's package (raycls/<stage>/commands.py, importing only
# click and raycls.cli_common at module level, the library inside the command's body) and is
# registered here: its import below, then one `cli.add_command(...)` line.
from raycls.bulk.commands import classify_cmd  # noqa: E402
from raycls.cluster.commands import jobs_group, submit_cmd  # noqa: E402
from raycls.demo.commands import make_dataset_cmd, quickstart_cmd  # noqa: E402
from raycls.fewlabel.commands import select_cmd, self_train_cmd  # noqa: E402
from raycls.inspect.commands import explain_cmd, report_cmd  # noqa: E402
from raycls.models.commands import describe_labels_cmd  # noqa: E402
from raycls.serve.commands import export_cmd, serve_cmd  # noqa: E402
from raycls.train.commands import evaluate_cmd, train_cmd  # noqa: E402
from raycls.tune.commands import tune_cmd  # noqa: E402

cli.add_command(make_dataset_cmd)
cli.add_command(quickstart_cmd)
cli.add_command(classify_cmd)
cli.add_command(train_cmd)
cli.add_command(evaluate_cmd)
cli.add_command(tune_cmd)
cli.add_command(submit_cmd)
cli.add_command(jobs_group)
cli.add_command(describe_labels_cmd)
cli.add_command(explain_cmd)
cli.add_command(report_cmd)
cli.add_command(serve_cmd)
cli.add_command(export_cmd)
cli.add_command(self_train_cmd)
cli.add_command(select_cmd)

if __name__ == "__main__":
    main(sys.argv[1:])
