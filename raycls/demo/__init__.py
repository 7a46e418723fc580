"""Demo data and the quick start: `make_dataset` writes small labelled image sets (shapes with
captions, digits); `run_quickstart` trains, evaluates and bulk-classifies one end to end.
"""

from raycls._lazy import lazy_exports

__all__ = ["make_dataset", "run_quickstart"]

__getattr__ = lazy_exports(__name__, {"make_dataset": "datasets", "run_quickstart": "quickstart"})
