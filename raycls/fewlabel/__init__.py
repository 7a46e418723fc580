"""Few labels, many images: `self_train` grows a training set round by round from confident
bulk predictions on an unlabelled pool (pseudo-labelling); `select_rows` picks the predictions
most worth a person's label (uncertainty sampling).
"""

from raycls._lazy import lazy_exports

__all__ = ["select_rows", "self_train"]

__getattr__ = lazy_exports(__name__, {"self_train": "selftrain", "select_rows": "select"})
