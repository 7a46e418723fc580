"""Tune's side of a search space: validated `Param`s (raycls.tune.space) as Tune domains, and
the searcher that samples them."""

from __future__ import annotations

from typing import Any

from raycls.tune.space import Param


def param_space(space: dict[str, Param]) -> dict[str, dict[str, Any]]:
    """Tune's `param_space`: {section: {name: domain or fixed value}}."""
    from ray import tune

    domains = {
        "loguniform": lambda lo, hi: tune.loguniform(lo, hi),
        "uniform": lambda lo, hi: tune.uniform(lo, hi),
        "randint": lambda lo, hi: tune.randint(lo, hi + 1),  # inclusive in our YAML
        "choice": lambda *values: tune.choice(list(values)),
        "grid": lambda *values: tune.grid_search(list(values)),
        "fixed": lambda value: value,
    }
    nested: dict[str, dict[str, Any]] = {}
    for p in space.values():
        nested.setdefault(p.section, {})[p.name] = domains[p.kind](*p.values)
    return nested


def make_searcher(search: str, seed: int, max_concurrent: int):
    """Random search by default; Optuna's TPE behind a ConcurrencyLimiter on request.

    TuneConfig(max_concurrent_trials) is not used: Tune ignores it for a BasicVariantGenerator
    passed in (needed here for its random_state), so each searcher gets its own limit.
    """
    if search == "optuna":
        try:
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as error:
            raise ValueError("search=optuna needs optuna: pip install 'raycls[optuna]'") from error
        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
