"""Where the work runs: `runtime` connects to a Ray cluster or starts a local one on loopback;
`submit` sends a raycls command to a cluster as a Ray job.
"""

from raycls._lazy import lazy_exports

__all__ = ["init_ray", "submit_job"]

__getattr__ = lazy_exports(__name__, {"init_ray": "runtime", "submit_job": "submit"})
