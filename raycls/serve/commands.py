"""The `raycls serve` and `raycls export` commands (registered in raycls/cli.py)."""

from __future__ import annotations

import json
import time

import click

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Settings a served model shares with `raycls classify` (the classify section of a config).
CLASSIFY_SETTINGS = ("top_k", "max_pixels", "captioner", "caption_prompt", "max_new_tokens",
                     "trust_remote_code", "model_kind", "labels", "raw_scores")  # fmt: skip


@click.command("serve")
@click.argument("model_dir")
@click.option("--host", default=None, help="Address the HTTP proxy binds [default: 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="[default: 8000]")
@click.option("--replicas", type=click.IntRange(min=1), default=None, help="Fixed replica count.")
@click.option("--autoscale", default=None, help="MIN,MAX replicas, scaled by Serve on load.")
@click.option("--num-cpus", type=click.FloatRange(min=0), default=None, help="Per replica.")
@click.option("--num-gpus", type=click.FloatRange(min=0), default=None, help="Per replica.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None)
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=None)
@click.option("--max-ongoing-requests", type=click.IntRange(min=1), default=None)
@click.option("--top-k", type=click.IntRange(min=1), default=None)
@click.option("--captioner", default=None, help="Image-to-text model for images without text.")
@click.option("--caption-prompt", default=None)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File whose first line is a bearer token that /v1/* requests must carry.",
)
@click.option(
    "--insecure-no-token",
    is_flag=True,
    help="Allow a non-loopback --host without --token-file (anyone who reaches it can use it).",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Deploy and exit, leaving the app running on the cluster (needs --address).",
)
@click.option("--address", default=None, envvar="RAY_ADDRESS", help="Ray cluster address.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML settings; its classify section (top_k, max_pixels, captioner...) applies.",
)
@click.argument("overrides", nargs=-1)
def serve_cmd(model_dir: str, autoscale: str | None, token_file: str | None,
              insecure_no_token: bool, detach: bool, address: str | None,
              config_file: str | None, overrides: tuple[str, ...],
              **options: object) -> None:  # fmt: skip
    """Serve MODEL_DIR over HTTP: POST /v1/classify, GET /v1/model, GET /healthz.

    Trailing classify.key=value overrides work as for `raycls classify`.
    """
    from raycls.config import load_config
    from raycls.serve.http import read_token_file, token_digest
    from raycls.serve.settings import ServeSettings, parse_autoscale

    try:
        classify = load_config(config_file, overrides).classify
        given = {name: getattr(classify, name) for name in CLASSIFY_SETTINGS}
        given.update({k: v for k, v in options.items() if v is not None})
        if autoscale is not None:
            if "replicas" in given:
                raise ValueError("give --replicas N or --autoscale MIN,MAX, not both")
            given["autoscale"] = parse_autoscale(autoscale)
        if token_file:
            given["token_sha256"] = token_digest(read_token_file(token_file))
        settings = ServeSettings(**given)
        if settings.host not in LOOPBACK_HOSTS and not token_file and not insecure_no_token:
            raise ValueError(
                f"--host {settings.host} makes the model reachable from other machines; give "
                "--token-file (or --insecure-no-token if something else guards access)"
            )
        if detach and not address:
            raise ValueError("--detach needs a running cluster (--address or RAY_ADDRESS)")
        from raycls.serve.app import start_server

        url = start_server(model_dir, settings, address=address)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"Serving {model_dir} at {url}/v1/classify (app {settings.app_name!r}).")
    if detach:
        click.echo("Detached: `serve status` shows it, `serve shutdown` stops it.")
        return
    click.echo("Ctrl-C stops it.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.delete(settings.app_name)
        click.echo("Stopped.")


@click.command("export")
@click.argument("model_dir")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript", "safetensors-only"]),
    required=True,
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option(
    "--check-images",
    multiple=True,
    help="Image files or folders for the parity check's real inputs (repeatable).",
)
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-3, show_default=True)
def export_cmd(
    model_dir: str, fmt: str, out: str, check_images: tuple[str, ...], tolerance: float
) -> None:
    """Export MODEL_DIR to one file; ONNX and TorchScript are checked against torch."""
    from raycls.serve.export import export_model
    from raycls.serve.parity import ParityError

    try:
        summary = export_model(model_dir, out, fmt, check_images=list(check_images) or None,
                               tolerance=tolerance, echo=click.echo)  # fmt: skip
    except (ValueError, FileNotFoundError, ParityError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(summary, indent=2))
