"""Hyperparameter search with Ray Tune: `run_sweep` runs one Train run per trial (`trial`) over
a search space (`space`), sized to the cluster (`resources`), and writes the results table and
the best model (`results`).
"""

from raycls._lazy import lazy_exports

__all__ = ["run_sweep"]

__getattr__ = lazy_exports(__name__, {"run_sweep": "sweep"})
