"""The plain PyTorch script a user would write instead of `raycls classify` (bench_classify.py
times both as whole processes): a file list, a DataLoader with one worker, PIL decode and
resize, forward with torch's default threads, one Parquet file of path, label and score.

    python bench/plain_classify.py FOLDER MODEL_DIR OUT.parquet [--batch-size 64]

Prints one JSON line: rows, first_rows_s (from BENCH_STARTED, the parent's time.time() when it
launched this process, else from this script's start), seconds, and load_s (imports, model).
"""

from __future__ import annotations

import argparse
import json
import os
import time

STARTED = float(os.environ.get("BENCH_STARTED", time.time()))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from raycls.models import load_model  # noqa: E402


class Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int) -> None:
        self.paths = paths
        self.transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(args.folder)
        for name in names
        if name.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    model = load_model(args.model_dir).eval()
    loaded = time.time()
    loader = torch.utils.data.DataLoader(
        Images(paths, model.config.image_size), batch_size=args.batch_size, num_workers=1
    )
    labels, scores, first = [], [], None
    with torch.inference_mode():
        for pixels in loader:
            top = model(pixels).softmax(-1).max(-1)
            labels.extend(model.labels[i] for i in top.indices.tolist())
            scores.extend(top.values.tolist())
            first = first or time.time()
    table = pa.table({"path": paths, "label": labels, "score": pa.array(scores, pa.float32())})
    pq.write_table(table, args.out)
    end = time.time()
    print(
        json.dumps(
            {
                "rows": len(paths),
                "first_rows_s": round(first - STARTED, 2),
                "seconds": round(end - STARTED, 2),
                "load_s": round(loaded - STARTED, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
