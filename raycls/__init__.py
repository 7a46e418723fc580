"""raycls: classify images at cluster scale with a fused CNN + language-model classifier, on Ray.

The packages follow the data: `io` (bytes in: files, URIs, Parquet, tar) -> `models` (the fused
classifier, captioner) -> `bulk` (the Ray Data pipeline that writes Parquet), `train` (Ray
Train fine-tuning, evaluation) and `tune` (Ray Tune sweeps); `cluster` connects to Ray and
submits jobs; `demo` makes demo data and runs the quick start. Imports are lazy: `import raycls`
loads neither torch nor Ray.
"""

from raycls._lazy import lazy_exports

__all__ = [
    "Config",
    "build_dataset",
    "classify",
    "evaluate",
    "fit",
    "load_config",
    "load_model",
    "load_predictor",
    "run_sweep",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "Config": "config",
        "load_config": "config",
        "classify": "bulk.pipeline",
        "build_dataset": "bulk.dataset",
        "fit": "train.trainer",
        "evaluate": "train.evaluation",
        "run_sweep": "tune.sweep",
        "load_model": "models",
        "load_predictor": "models.predictor",
    },
)
