"""Sweep search spaces: `section.key -> distribution`, validated against `Config` before any trial.

A space is a mapping of config paths to distributions, written in YAML like this:

    train.lr: {loguniform: [1.0e-4, 3.0e-3]}
    train.batch_size: {choice: [16, 32, 64]}
    model.fusion: {choice: [concat, gated]}
    model.dropout: {uniform: [0.0, 0.3]}
    model.hidden_dim: {randint: [64, 256]}     # inclusive bounds
    model.backbone: {grid: [resnet18, resnet50]}  # every value, num_samples trials each
    train.label_smoothing: 0.0                 # a plain value: fixed for every trial

Sections may also be nested (`train: {lr: {loguniform: [...]}}`). A user's space overrides or
extends `DEFAULT_SEARCH_SPACE` key by key; fixing a key to a plain value takes it out of the
search. No Ray import here: `raycls.tune.sweep` turns a validated space into Tune domains.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from raycls.config import Config
from raycls.config_parse import merge

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
# Values every trial set runs (Tune's grid_search): num_samples trials for each combination.
LISTS = ("choice", "grid")

# `raycls/demo/configs/search/default.yaml` holds the same space, for users to copy and edit.
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "train.lr": {"loguniform": [1.0e-4, 3.0e-3]},
    "train.batch_size": {"choice": [16, 32, 64]},
    "model.fusion": {"choice": ["concat", "gated", "film", "cross_attention"]},
    "train.weight_decay": {"loguniform": [1.0e-4, 1.0e-1]},
}

# The same for every trial of a sweep, or irrelevant to training.
_NOT_SEARCHABLE = {
    "train.epochs": "it is every trial's length (ASHA's max_t); set it in the config or --epochs",
    "train.metric": "trials are ranked by it; set it in the config or --metric",
    "classify": "classify settings do not affect training",
    "data": "the data are prepared once for all trials; set data.* in the config",
    "model.image_size": "the images are prepared once for all trials; set it in the config",
    "train.num_workers": "resources are planned once for all trials; set it in the config",
    "train.cpus_per_worker": "resources are planned once; use --resources-per-trial",
    "train.gpus_per_worker": "resources are planned once; use --resources-per-trial",
    "train.use_gpu": "resources are planned once; use --resources-per-trial gpu=N",
}


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) setting: `kind` is a distribution name or "fixed"."""

    key: str
    kind: str
    values: tuple

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


def load_search_space(path: str | Path) -> dict[str, Any]:
    """Read a search-space YAML file (a mapping); validation happens in `build_search_space`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"search space file {str(path)!r} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(
            f"search space file {str(path)!r} must hold a mapping of config paths to "
            "distributions, e.g. `train.lr: {loguniform: [1.0e-4, 1.0e-2]}`"
        )
    return loaded


def build_search_space(
    spec: dict[str, Any] | None, base: Config, *, use_default: bool = True
) -> dict[str, Param]:
    """The default space overridden/extended by `spec`, every value checked against `base`.

    Raises ValueError naming the key and the fix for unknown keys, malformed distributions,
    empty choices, bad bounds, and values the config would reject (e.g. fusion "sum").
    """
    merged = dict(DEFAULT_SEARCH_SPACE) if use_default else {}
    merged.update(_flatten(spec or {}))
    return {key: _parse(key, value, base) for key, value in merged.items()}


def apply_params(base: Config, sampled: dict[str, Any]) -> Config:
    """`base` with sampled values (flat `section.key` or nested by section) applied."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in _flatten(sampled).items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return Config.from_dict(merge(base.to_dict(), nested))


def describe(space: dict[str, Param]) -> dict[str, str]:
    """`{key: "loguniform(0.0001, 0.003)"}`, for logs and summaries."""
    return {
        k: (repr(p.values[0]) if p.kind == "fixed" else f"{p.kind}{tuple(p.values)!r}")
        for k, p in space.items()
    }


def count_trials(space: dict[str, Param], num_samples: int) -> int:
    """How many trials a sweep runs: num_samples for each combination of grid values."""
    return num_samples * math.prod(len(p.values) for p in space.values() if p.kind == "grid")


def _flatten(spec: dict[str, Any]) -> dict[str, Any]:
    """Accept `{"train": {"lr": ...}}` as well as `{"train.lr": ...}`."""
    sections = {f.name for f in fields(Config)}
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if not isinstance(key, str):
            raise ValueError(f"search space key {key!r} must be a config path like train.lr")
        if key in sections and isinstance(value, dict) and "." not in key:
            if set(value) & set(DISTRIBUTIONS):
                raise ValueError(
                    f"search space key {key!r} is a config section, not a setting; "
                    f"use a path like {key}.<setting>"
                )
            flat.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat


def _field_type(key: str) -> Any:
    """The type hint of `section.key`, or ValueError listing the valid keys."""
    section, dot, name = key.partition(".")
    section_types = {f.name: f.type for f in fields(Config)}
    if not dot or section not in section_types:
        raise ValueError(
            f"search space key {key!r} is not a config path; use section.setting with a "
            f"section among {sorted(section_types)}, e.g. train.lr or model.fusion"
        )
    if section in _NOT_SEARCHABLE or key in _NOT_SEARCHABLE:
        reason = _NOT_SEARCHABLE.get(key) or _NOT_SEARCHABLE[section]
        raise ValueError(f"search space key {key!r} cannot be searched: {reason}; remove it")
    hints = typing.get_type_hints(type(getattr(Config(), section)))
    if name not in hints:
        raise ValueError(
            f"search space key {key!r} is not a setting of {section!r}; valid keys: "
            + ", ".join(f"{section}.{n}" for n in hints)
        )
    hint = hints[name]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return inner[0] if inner else hint


def _parse(key: str, value: Any, base: Config) -> Param:
    hint = _field_type(key)
    if isinstance(value, list):
        raise ValueError(
            f"search space {key}: a bare list {value!r} is ambiguous; write "
            f"{{choice: {value!r}}} to sample from it"
        )
    if not isinstance(value, dict):
        _check_value(key, value, base)
        return Param(key, "fixed", (value,))
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise ValueError(
            f"search space {key}: {value!r} must be one distribution, one of "
            f"{', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}, "
            "or a plain value to fix it"
        )
    kind, args = next(iter(value.items()))
    if kind in LISTS:
        if not isinstance(args, list) or not args:
            raise ValueError(
                f"search space {key}: {kind} needs a non-empty list of values, got {args!r}"
            )
        for choice in args:
            _check_value(key, choice, base)
        return Param(key, kind, tuple(args))
    lo, hi = _bounds(key, kind, args, hint)
    _check_value(key, lo, base)
    _check_value(key, hi, base)
    return Param(key, kind, (lo, hi))


def _bounds(key: str, kind: str, args: Any, hint: Any) -> tuple[float, float]:
    numbers = isinstance(args, list) and len(args) == 2
    if numbers:
        numbers = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
    if not numbers:
        raise ValueError(f"search space {key}: {kind} needs [lower, upper] numbers, got {args!r}")
    lo, hi = args
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(
            f"search space {key}: {kind} bounds [{lo}, {hi}] need lower < upper (both finite)"
        )
    if kind == "loguniform" and lo <= 0:
        raise ValueError(
            f"search space {key}: loguniform bounds must be > 0, got [{lo}, {hi}]; use "
            "uniform for ranges that include 0"
        )
    if kind == "randint":
        if hint is not int or not (float(lo).is_integer() and float(hi).is_integer()):
            raise ValueError(
                f"search space {key}: randint needs an integer setting and integer bounds, got "
                f"[{lo}, {hi}]; use uniform or loguniform for {key}"
            )
        return int(lo), int(hi)
    if hint is not float:
        what = "an integer" if hint is int else f"a {getattr(hint, '__name__', hint)}"
        raise ValueError(
            f"search space {key}: {kind} samples real numbers but {key} is {what}; "
            "use randint or choice"
        )
    return float(lo), float(hi)


def _check_value(key: str, value: Any, base: Config) -> None:
    """The config `base` must accept `value` at `key` (types, ranges, choices, cross-checks)."""
    try:
        apply_params(base, {key: value})
    except ValueError as error:
        raise ValueError(
            f"search space {key}: value {value!r} is invalid ({error}); change or remove it"
        ) from None
