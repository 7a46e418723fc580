"""Fine-tuning with Ray Train: `fit` prepares the data (`data`), runs the per-worker loop
(`loop`) on a TorchTrainer and publishes the model; `evaluate` scores a model on labelled data.
"""

from raycls._lazy import lazy_exports

__all__ = ["build_trainer", "evaluate", "fit"]

__getattr__ = lazy_exports(
    __name__, {"fit": "trainer", "build_trainer": "trainer", "evaluate": "evaluation"}
)
