"""Fine-tune the classifier as a Ray job (Ray Train): `raycls train` behind `ray job submit`.

From the repository root, with the cluster's dashboard at http://127.0.0.1:8265 (Ray's own
client sends the cluster token, ~/.ray/auth_token, only when RAY_AUTH_MODE=token is set):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train.py s3://bucket/train --val s3://bucket/val --out s3://bucket/models/new

The arguments are those of `raycls train` (`raycls train --help`);
`raycls submit -- train ...` does the same in one step.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Run `raycls train ARGV` (default: this script's arguments)."""
    # `python jobs/train.py` puts jobs/ on sys.path, not the repository root; prefer the
    # raycls next to this file (the uploaded working dir) over any installed copy.
    root = Path(__file__).resolve().parents[1]
    if (root / "raycls" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from raycls.cli import main as raycls_main

    raycls_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
