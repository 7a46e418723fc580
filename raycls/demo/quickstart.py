"""The whole story on the embedded default: data -> train -> evaluate -> bulk-classify."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raycls.config import Config, load_config

logger = logging.getLogger(__name__)

QUICKSTART_CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"


def run_quickstart(
    workdir: str | Path = "quickstart",
    *,
    config: Config | None = None,
    address: str | None = None,
    echo: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Make `shapes`, train a fused model, evaluate it, classify the test images into Parquet."""
    from raycls.bulk.pipeline import classify
    from raycls.cluster.runtime import init_ray
    from raycls.demo.datasets import make_dataset
    from raycls.train.evaluation import evaluate, format_report
    from raycls.train.trainer import fit

    config = config or load_config(QUICKSTART_CONFIG)
    work = Path(workdir).resolve()
    data, model_dir = work / "data", work / "model"
    report_dir, predictions = work / "report", work / "predictions"
    started = time.perf_counter()

    echo(f"1/4 making the 'shapes' demo data set in {data}")
    if not (data / "test" / "metadata.parquet").exists():
        # A half-written data set from an interrupted run is replaced.
        make_dataset("shapes", data, seed=config.data.seed, overwrite=True)

    where = init_ray(address, dashboard=True)  # for Ray Train's cleaner: see train.fit
    echo(f"2/4 training a {config.model.fusion} model with Ray Train (Ray: {where})")
    fit(config, str(data / "train"), str(model_dir), val_data=str(data / "val"))

    echo("3/4 evaluating on the held-out test split")
    metrics = evaluate(str(model_dir), str(data / "test"), str(report_dir))
    echo(format_report(metrics))

    echo("4/4 bulk-classifying the test images into Parquet with Ray Data")
    summary = classify(str(data / "test"), str(model_dir), str(predictions), config.classify)

    minutes = (time.perf_counter() - started) / 60
    echo(
        "\n".join(
            [
                f"Done in {minutes:.1f} min.",
                f"  model:        {model_dir}",
                f"  report:       {report_dir} (metrics.json, confusion_matrix.png)",
                f"  predictions:  {predictions} (Parquet: one row per image)",
                "Next:",
                f"  raycls classify YOUR_IMAGES --model {model_dir} --out OUT_DIR",
                f"  raycls tune {data / 'train'} --val {data / 'val'} --out sweep --num-samples 8",
                "  raycls submit --address http://HEAD:8265 -- classify s3://bucket/images "
                "--model s3://bucket/model --out s3://bucket/out   (see cluster.yaml)",
            ]
        )
    )
    return {"metrics": metrics, "classify": summary, "model_dir": str(model_dir)}
