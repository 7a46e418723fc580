"""Images/s per GPU for captioning and for classification (bf16 autocast) at a few batch sizes.

    .venv/bin/python bench/gpu_bench.py                     # on a GPU machine, < 8 minutes
    .venv/bin/python bench/gpu_bench.py --tiny              # CPU smoke run, seconds
    .venv/bin/python bench/gpu_bench.py --captioner Salesforce/blip-image-captioning-base

Classification times the fused model (default: resnet50 at 224 px + all-MiniLM-L6-v2, concat;
random head weights, the shipped offline MiniLM) on pixels copied from pinned host memory each
step, with a text per image. Captioning times `raycls.models.captioner.Captioner` (processor on
CPU included, as in the pipeline's actors) on 384 px uint8 images; without `--captioner` a tiny
random BLIP is built locally, which measures overhead, not a real captioner. Zero-shot times
`raycls.models.predictor.load_predictor` on a CLIP-style model (`--zero-shot`, default a tiny
random CLIP at 224 px from tests/tiny_models.py) against 100 labels, on float16 numpy pixels as
the pipeline's actors receive them. `--pipeline N` also runs `raycls classify` end to end on
N generated JPEGs with one GPU classification actor.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raycls.config import DEFAULT_TEXT_ENCODER, ClassifyConfig, ModelConfig


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(step, device: str, seconds: float, images_per_step: int) -> float:
    """Images/s of `step()` over about `seconds`, after two warm-up steps."""
    step()
    step()
    _sync(device)
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        n += images_per_step
    _sync(device)
    return n / (time.perf_counter() - started)


def bench_classify(args: argparse.Namespace, device: str) -> list[dict]:
    from raycls.models import build_model

    text = None if args.text_encoder in ("", "none") else args.text_encoder
    config = ModelConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        text_encoder=text,
        fusion="concat" if text else "image_only",
        hidden_dim=256,
    )
    model = build_model(config, [f"class{i}" for i in range(100)]).to(device).eval()
    print(f"classifier: {config.backbone} {config.image_size}px + {text} ({config.fusion})")
    results = []
    for batch_size in args.classify_batch_sizes:
        host = torch.randn(batch_size, 3, config.image_size, config.image_size)
        host = host.pin_memory() if device == "cuda" else host
        tokens = model.tokenize(["a small photo of a red car on the street"] * batch_size)
        tokens = {k: v.to(device) for k, v in tokens.items()}

        def step(host=host, tokens=tokens) -> None:
            with torch.inference_mode(), torch.autocast(device, torch.bfloat16):
                pixels = host.to(device, non_blocking=True)
                model(pixels, **tokens).float().softmax(-1).topk(5)

        rate = _timed(step, device, args.seconds, batch_size)
        results.append({"task": "classify", "batch_size": batch_size, "images_per_s": rate})
        print(f"  classify  batch {batch_size:5d}: {rate:9.1f} images/s", flush=True)
    return results


def _tiny_captioner(path: Path) -> str:
    """The tests' tiny random BLIP (tests/tiny_models.py): only for runs without a captioner."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import make_tiny_captioner

    return make_tiny_captioner(path)


def bench_caption(args: argparse.Namespace, device: str) -> list[dict]:
    from raycls.models.captioner import Captioner

    name = args.captioner or _tiny_captioner(Path(args.workdir) / "tiny-captioner")
    captioner = Captioner(name, device=device, max_new_tokens=args.max_new_tokens)
    print(f"captioner: {name} ({captioner.dtype}, max_new_tokens={args.max_new_tokens})")
    rng = np.random.default_rng(0)
    side = args.caption_px
    results = []
    for batch_size in args.caption_batch_sizes:
        images = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(batch_size)]
        rate = _timed(lambda images=images: captioner(images), device, args.seconds, batch_size)
        results.append({"task": "caption", "batch_size": batch_size, "images_per_s": rate})
        print(f"  caption   batch {batch_size:5d}: {rate:9.1f} images/s", flush=True)
    return results


def bench_zeroshot(args: argparse.Namespace, device: str) -> list[dict]:
    from raycls.models.predictor import load_predictor, resolve_model

    name = args.zero_shot
    if name is None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import make_tiny_clip

        name = str(Path(args.workdir) / "tiny-clip-224")
        if not Path(name, "config.json").exists():
            make_tiny_clip(name, image_size=224)
    labels = ",".join(f"class{i}" for i in range(100))
    spec = resolve_model(name, kind="zero-shot", labels=labels)
    predictor = load_predictor(spec, device)
    side = spec.image.size
    print(f"zero-shot: {name} at {side} px, 100 labels")
    results = []
    for batch_size in args.classify_batch_sizes:
        pixels = np.random.default_rng(0).standard_normal((batch_size, 3, side, side))
        pixels = pixels.astype(np.float16)
        rate = _timed(lambda pixels=pixels: predictor(pixels), device, args.seconds, batch_size)
        results.append({"task": "zero-shot", "batch_size": batch_size, "images_per_s": rate})
        print(f"  zero-shot batch {batch_size:5d}: {rate:9.1f} images/s", flush=True)
    return results


def bench_pipeline(args: argparse.Namespace, device: str) -> dict:
    """`raycls classify` end to end: CPU decode tasks feeding one GPU classification actor."""
    from PIL import Image

    from raycls.bulk.pipeline import classify
    from raycls.cluster.runtime import init_ray
    from raycls.models import build_model, save_model

    work = Path(args.workdir)
    folder = work / f"jpegs-{args.pipeline}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(args.pipeline):
        path = folder / f"{i:07d}.jpg"
        if not path.exists():
            small = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
            small.resize((256, 256), Image.Resampling.BICUBIC).save(path, quality=90)
    text = None if args.text_encoder in ("", "none") else args.text_encoder
    config = ModelConfig(
        backbone=args.backbone, image_size=args.image_size, text_encoder=text,
        fusion="concat" if text else "image_only",
    )  # fmt: skip
    model_dir = work / "pipeline-model"
    save_model(build_model(config, [f"class{i}" for i in range(100)]), model_dir)
    init_ray(None)
    gpu = 1.0 if device == "cuda" else 0.0
    settings = ClassifyConfig(
        batch_size=args.classify_batch_sizes[-1], gpus_per_classify_actor=gpu,
        cpus_per_classify_actor=2 if gpu else os.cpu_count() or 1, shard_size=1000,
    )  # fmt: skip
    summary = classify(str(folder), str(model_dir), str(work / "out"), settings, overwrite=True)
    print(f"  pipeline: {summary['images_per_s']} images/s over {summary['rows']} images")
    return {"task": "pipeline", **summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small CPU settings, seconds")
    parser.add_argument("--captioner", default=None, help="hub id or dir; default: tiny BLIP")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="or none")
    parser.add_argument("--classify-batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--caption-batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--caption-px", type=int, default=384)
    parser.add_argument(
        "--zero-shot", default=None, help="CLIP-style hub id or dir; default: tiny CLIP"
    )
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--pipeline", type=int, default=None, help="images for the e2e run")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raycls-gpu"))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit(
            "gpu_bench.py: no CUDA device here (torch.cuda.is_available() is False), and its "
            "figures are per GPU. Run it on a GPU machine, or with --tiny for a CPU smoke run."
        )
    if args.tiny:
        args.backbone, args.image_size, args.seconds = "resnet18", 64, 1.0
        args.classify_batch_sizes, args.caption_batch_sizes = [8, 32], [4, 8]
        args.caption_px, args.max_new_tokens = 64, 5
    if args.pipeline is None:
        args.pipeline = 20000 if device == "cuda" else 0
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"device: {name}")
    results = bench_classify(args, device) + bench_caption(args, device)
    results += bench_zeroshot(args, device)
    if args.pipeline:
        results.append(bench_pipeline(args, device))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "results": results}, indent=2))
    print(json.dumps({"device": name, "results": results}, default=str))


if __name__ == "__main__":
    main()
