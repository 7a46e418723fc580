"""Looking at what a model did: explanations of single predictions (`explain`) and browsable
HTML pages of a bulk run (`write_report`) and of an evaluation (`write_evaluation_page`).
"""

from raycls._lazy import lazy_exports

__all__ = ["explain", "write_evaluation_page", "write_report"]

__getattr__ = lazy_exports(
    __name__,
    {"explain": "explain", "write_report": "report", "write_evaluation_page": "evaluation"},
)
