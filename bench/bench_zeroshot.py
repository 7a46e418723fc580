"""Zero-shot bulk classification: `raycls classify` with a tiny CLIP at 224 px against the plain
loop a user writes with the same model and processor.

    .venv/bin/python bench/bench_zeroshot.py --images 1000

The model is make_tiny_clip from tests/tiny_models.py at 224 px (random weights, built from a
config: no hub), scored against `--labels` names. The plain loop: PIL decode, the model's own
`AutoImageProcessor`, `get_image_features`, similarity to the label embeddings, softmax, top-5,
in one process on all cores; timed after the model is loaded and one warm-up batch. raycls's
steady state is taken from two runs, on N/2 and on N images (same images): the extra N/2 images
over the extra time, so Ray Data and actor start-up, model loading and label embedding cancel
out. Figures only, no assertions. bench_classify.py holds the fused-model figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_classify import make_jpegs
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import make_tiny_clip  # noqa: E402

LABELS = ["cat", "dog", "bird", "car", "tree", "house", "street", "person", "sky", "water"]


def plain_loop(model_dir: str, paths: list[Path], batch_size: int) -> float:
    """Images/s of the loop a user writes with transformers alone."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        tokens = tokenizer([f"a photo of a {x}." for x in LABELS], padding=True,
                           return_tensors="pt")  # fmt: skip
        text = model.get_text_features(**tokens).pooler_output
        text = torch.nn.functional.normalize(text, dim=-1)
        scale = model.logit_scale.exp()

        def run(batch: list[Path]) -> list:
            images = [Image.open(p).convert("RGB") for p in batch]
            pixels = processor(images, return_tensors="pt")["pixel_values"]
            image = model.get_image_features(pixel_values=pixels).pooler_output
            sims = torch.nn.functional.normalize(image, dim=-1) @ text.T
            top = (sims * scale).softmax(-1).topk(5)
            return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))

        run(paths[:batch_size])  # warm-up
        started = time.perf_counter()
        results = []
        for i in range(0, len(paths), batch_size):
            results += run(paths[i : i + batch_size])
    elapsed = time.perf_counter() - started
    assert len(results) == len(paths)
    return len(paths) / elapsed


def raycls_run(model_dir: str, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    from raycls.bulk.pipeline import classify
    from raycls.config import ClassifyConfig

    config = ClassifyConfig(
        labels=",".join(LABELS), batch_size=args.batch_size, classify_actors=args.actors,
        cpus_per_classify_actor=1.0, shard_size=args.shard_size,
    )  # fmt: skip
    summary = classify(str(folder), model_dir, str(out), config, overwrite=True)
    assert summary["ok"] == summary["rows"], summary
    print(f"  raycls on {summary['rows']} images: {summary['seconds']:.1f} s, first rows after "
          f"{summary['first_rows_s']:.1f} s, {summary['images_per_s']:.1f} images/s overall",
          flush=True)  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-px", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--actors", type=int, default=cpus, help="classification actors")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raycls-bench"))
    args = parser.parse_args(argv)

    work = Path(args.workdir)
    half = args.images // 2
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}; {args.images} JPEGs of "
          f"{args.image_px} px", flush=True)  # fmt: skip
    paths = make_jpegs(work / f"jpegs-{args.images}-{args.image_px}px", args.images, args.image_px)
    make_jpegs(work / f"jpegs-{half}-{args.image_px}px", half, args.image_px)
    model_dir = str(work / "tiny-clip-224")
    if not Path(model_dir, "config.json").exists():
        make_tiny_clip(model_dir, image_size=224)
    print(f"model: tiny CLIP (2+2 layers, hidden 32, patch 8) at 224 px, {len(LABELS)} labels")

    loop = plain_loop(model_dir, paths, args.batch_size)
    print(f"  plain loop: {loop:.1f} images/s", flush=True)

    from raycls.cluster.runtime import init_ray

    init_ray(None)
    small = raycls_run(model_dir, work / f"jpegs-{half}-{args.image_px}px", work / "zs-out", args)
    full = raycls_run(model_dir, paths[0].parents[1], work / "zs-out", args)
    extra_s = full["seconds"] - small["seconds"]
    # Start-up varies by seconds from run to run; below that the difference means nothing.
    steady = (full["rows"] - small["rows"]) / extra_s if extra_s > 0.2 * small["seconds"] else None
    overall = full["images_per_s"]
    load = os.getloadavg()[0]
    print(f"\n{args.images} images, load average {load:.1f}")
    print(f"{'':44} {'images/s':>9} {'x loop':>7}")
    print(f"{'plain loop (transformers, same processor)':44} {loop:9.1f} {1.0:7.2f}")
    if steady is None:
        print(f"{'raycls classify, steady state':44} {'n/a':>9} {'n/a':>7}  (start-up noise "
              "exceeds the extra work: use more --images)")  # fmt: skip
    else:
        print(f"{'raycls classify, steady state':44} {steady:9.1f} {steady / loop:7.2f}")
    # Start-up included, so a lower bound on the steady state.
    print(f"{'raycls classify, overall (with start-up)':44} {overall:9.1f} {overall / loop:7.2f}")
    print(json.dumps({"bench": "zeroshot", "images": args.images, "plain_loop": round(loop, 1),
                      "raycls_steady": steady and round(steady, 1), "raycls_overall": overall,
                      "steady_vs_loop": steady and round(steady / loop, 3),
                      "overall_vs_loop": round(overall / loop, 3),
                      "first_rows_s": full["first_rows_s"], "load_average": load}))  # fmt: skip


if __name__ == "__main__":
    main()
