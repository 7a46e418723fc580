"""Self-training with few labels, on real-shaped demo data: does it gain on labelled-only?

`digits` (sklearn's 8x8 handwritten digits, upscaled): LABELS images per class are labelled, the
rest of the training split is the unlabelled pool (its class folders are never read by the
model; they only score the pseudo-labels). Round 0 trains on the labelled images alone; rounds
1..R add confident pseudo-labels. Prints the rounds table, test accuracy of round 0's model and
of the best round's, and ends with one JSON line of all figures.

    .venv/bin/python bench/bench_selftrain.py [--labels 10] [--rounds 3] [--epochs 15]
        [--kind digits|shapes] [--fusion image_only] [--pseudo-weight 0.5]
        [--pseudo-augment strong|same]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from raycls.config import PSEUDO_AUGMENTS, load_config
from raycls.demo.datasets import make_dataset
from raycls.demo.quickstart import QUICKSTART_CONFIG
from raycls.fewlabel.commands import format_rounds
from raycls.fewlabel.selftrain import SelfTrainSettings, self_train
from raycls.train.evaluation import evaluate


def split_labeled(train: Path, labeled: Path, pool: Path, per_class: int) -> None:
    """The first `per_class` images of each class folder -> labeled/, the rest -> pool/."""
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        for target, chosen in ((labeled, files[:per_class]), (pool, files[per_class:])):
            (target / folder.name).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, target / folder.name / path.name)
    if (train / "metadata.parquet").exists():  # texts, by path relative to the root
        for target in (labeled, pool):
            shutil.copy(train / "metadata.parquet", target / "metadata.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=["digits", "shapes"], default="digits")
    parser.add_argument("--labels", type=int, default=10, help="labelled images per class")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--quota", type=int, default=None)
    parser.add_argument("--fusion", default="image_only")
    parser.add_argument("--pseudo-weight", type=float, default=None, help="default: settings'")
    parser.add_argument("--pseudo-augment", choices=PSEUDO_AUGMENTS, default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_selftrain_"))
    data = work / "data"
    if not (data / "test").exists():
        make_dataset(args.kind, data, seed=0, overwrite=True)
        split_labeled(data / "train", work / "labeled", work / "pool", args.labels)
    text = "none" if args.fusion == "image_only" else "sentence-transformers/all-MiniLM-L6-v2"
    train = {"epochs": args.epochs, "batch_size": 32, "lr": 2e-3, "patience": args.epochs}
    classify = {"classify_actors": 2, "shard_size": 200, "top_k": 3}
    if args.kind == "shapes":  # the quick start's recipe (48 px, quarter turns, image head)
        config = load_config(QUICKSTART_CONFIG, model={"fusion": args.fusion,
                             "text_encoder": text}, train=train, classify=classify)  # fmt: skip
    else:
        config = load_config(None, model={"fusion": args.fusion, "text_encoder": text,
                             "image_size": 32, "hidden_dim": 128}, data={"flip": False},
                             train=train, classify=classify)  # fmt: skip
    given = {"pseudo_weight": args.pseudo_weight, "pseudo_augment": args.pseudo_augment}
    settings = SelfTrainSettings(args.rounds, args.threshold, args.quota,
                                 **{k: v for k, v in given.items() if v is not None})  # fmt: skip
    started = time.perf_counter()
    result = self_train(config, str(work / "labeled"), str(work / "pool"), str(work / "run"),
                        val=str(data / "val"), settings=settings, echo=print)  # fmt: skip
    elapsed = time.perf_counter() - started
    test = str(data / "test")
    round0 = evaluate(str(work / "run" / "rounds" / "00" / "model"), test)["accuracy"]
    best = evaluate(result["model_dir"], test)["accuracy"]
    print(format_rounds(result["rounds"]))
    print(f"test accuracy: labelled only {round0:.4f}; self-trained (round {result['best_round']})"
          f" {best:.4f}; gain {100 * (best - round0):+.1f} points; {elapsed:.0f}s")  # fmt: skip
    figures = {
        "kind": args.kind, "fusion": args.fusion, "labels_per_class": args.labels,
        "pseudo_weight": settings.pseudo_weight, "pseudo_augment": settings.pseudo_augment,
        "rounds": result["rounds"], "best_round": result["best_round"],
        "test_accuracy_labelled_only": round(round0, 4), "test_accuracy_self_trained":
        round(best, 4), "gain_points": round(100 * (best - round0), 2), "elapsed_s": round(elapsed),
    }  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
