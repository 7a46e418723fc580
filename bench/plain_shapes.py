"""A plain PyTorch loop on the `shapes` demo images, image only: how fast can a from-scratch
ResNet-18 learn shape there, and what slows it? The yardstick for the quick start's recipe
(raycls/demo/configs/quickstart.yaml) and for `train.grad_clip`'s default.

    python bench/plain_shapes.py [--size 48] [--epochs 40] [--clip 1.0] [--seed 0]
        [--augment hflip|flips] [--raycls-model]

torchvision ImageFolder, Resize, reflect-padded shift of 1/8 and flips, batch 32, AdamW lr 2e-3
weight decay 0.05, OneCycle, label smoothing 0.1, one DataLoader worker. `--raycls-model` swaps
in raycls's image-only model with its optimizer groups and schedule (train/schedule.py), which
isolates raycls's data pipeline from its model. Prints test accuracy and shape accuracy (the
share of test images whose shape, whatever the colour, was right) every 4 epochs, then one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--clip", type=float, default=0.0, help="gradient-norm clip; 0: none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", choices=["hflip", "flips"], default="flips")
    parser.add_argument("--raycls-model", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms as T

    from raycls.demo.datasets import make_dataset

    torch.manual_seed(args.seed)
    data = Path(tempfile.mkdtemp(prefix="plain_shapes_"))
    make_dataset("shapes", data)
    size = args.size
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    flips = [T.RandomHorizontalFlip()] + (
        [T.RandomVerticalFlip()] if args.augment == "flips" else []
    )
    shift = T.RandomCrop(size, padding=size // 8, padding_mode="reflect")
    train_tf = T.Compose([T.Resize(size), shift, *flips, T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(size), T.ToTensor(), norm])
    train = torchvision.datasets.ImageFolder(str(data / "train"), train_tf)
    test = torchvision.datasets.ImageFolder(str(data / "test"), test_tf)
    loader = torch.utils.data.DataLoader(
        train, batch_size=32, shuffle=True, num_workers=1, persistent_workers=True
    )
    test_loader = torch.utils.data.DataLoader(test, batch_size=128)
    steps = args.epochs * len(loader)
    if args.raycls_model:
        from raycls.config import ModelConfig, TrainConfig
        from raycls.models import build_model
        from raycls.train.schedule import build_optimizer

        config = ModelConfig(text_encoder=None, fusion="image_only", image_size=size)
        model = build_model(config, train.classes)
        train_config = TrainConfig(epochs=args.epochs, batch_size=32, lr=2e-3)
        optimizer, scheduler = build_optimizer(model, train_config, len(loader))
    else:
        model = torchvision.models.resnet18(num_classes=len(train.classes))
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, 2e-3, total_steps=steps, pct_start=0.1
        )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def evaluate() -> tuple[float, float]:
        model.eval()
        preds, labels = [], []
        with torch.no_grad():
            for x, y in test_loader:
                preds += model(x).argmax(1).tolist()
                labels += y.tolist()
        model.train()
        shape = [train.classes[p].split("_")[1] == train.classes[y].split("_")[1]
                 for p, y in zip(preds, labels, strict=True)]  # fmt: skip
        return float(np.mean(np.array(preds) == np.array(labels))), float(np.mean(shape))

    started, norms = time.perf_counter(), []
    for epoch in range(args.epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            clip = args.clip if args.clip > 0 else float("inf")
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip)))
            optimizer.step()
            scheduler.step()
        if epoch % 4 == 3:
            accuracy, shape = evaluate()
            grad = np.median(norms[-len(loader) :])
            print(f"epoch {epoch + 1:>3}  test acc {accuracy:.3f}  shape acc {shape:.3f}  "
                  f"median grad norm {grad:.2f}", flush=True)  # fmt: skip
    accuracy, shape = evaluate()
    figures = {**vars(args), "test_accuracy": accuracy, "shape_accuracy": shape,
               "train_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
