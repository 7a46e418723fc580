"""The per-worker training loop run by Ray Train on every worker; rank 0 logs and checkpoints.

A checkpoint is a directory: `model/` in the model-directory format (`save_model`),
`train_state.pt` (trainable weights, buffers, optimizer and scheduler state: tensors, numbers
and strings only, read back with `torch.load(weights_only=True)`) and `state.json` (epoch,
history, best so far, early-stopping count).

Test hook: `train_loop_config["test_crash"] = {"epoch": N, "marker": PATH}` (set by `fit` from
the environment variables RAYCLS_TEST_CRASH_AT_EPOCH and RAYCLS_TEST_CRASH_MARKER) makes rank 0
kill its own process once, in epoch N (1-based) after training and before reporting, if PATH
does not exist yet (it is created first). Used by the tests to check restart from a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from raycls.config import Config
from raycls.models import FusedClassifier, build_model, save_model
from raycls.train.metrics import classification_metrics

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
TRAIN_STATE_FILE = "train_state.pt"
STATE_FILE = "state.json"
# Seconds the crash hook waits first, so the controller has collected the last report
# (Ray Train polls workers every 2 s; a report not yet collected dies with the worker).
CRASH_DELAY_S = 5.0


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train on this worker's shard of "train", validate on its share of "val", report."""
    cfg = Config.from_dict(config["config"])
    t, classes = cfg.train, list(config["classes"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _quiet_report_logs()
    if rank == 0:
        _log_to_stderr()
    torch.manual_seed(t.seed)
    device = ray.train.torch.get_device()

    model = build_model(cfg.model, classes).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_scale, t.weight_decay))
    rows_per_worker = config["train_rows"] // world
    batches_per_epoch = max(1, math.ceil(rows_per_worker / t.batch_size))
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    total_steps = steps_per_epoch * t.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(total_steps, round(t.warmup_fraction * total_steps))
    )
    state = {
        "epoch": -1,
        "history": [],
        "best": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "stopped": False,
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = _load_checkpoint(Path(directory), model, optimizer, scheduler, device)
        if rank == 0:
            logger.info("resuming after epoch %d from %s", state["epoch"] + 1, checkpoint.path)
    start = state["epoch"] + 1
    if start >= t.epochs or state["stopped"]:
        if rank == 0:
            logger.info("run already finished at epoch %d; nothing to train", start)
        return

    ddp_model = ray.train.torch.prepare_model(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    crash = config.get("test_crash")
    if rank == 0:
        logger.info(
            "training %d classes on %d workers: %d examples, %d steps/epoch, epochs %d-%d",
            len(classes),
            world,
            config["train_rows"],
            steps_per_epoch,
            start + 1,
            t.epochs,
        )

    for epoch in range(start, t.epochs):
        started = time.perf_counter()
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss * n, n
        pending = 0
        batches = train_shard.iter_batches(
            batch_size=t.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=max(256, 4 * t.batch_size),
            prefetch_batches=2,
        )
        for i, batch in enumerate(batches):
            pixels, inputs, labels = _tensors(model, batch, device)
            if len(labels) == 1:  # BatchNorm cannot normalise a single example in training
                pixels, labels = pixels.repeat(2, 1, 1, 1), labels.repeat(2)
                inputs = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in inputs.items()}
            pending += 1
            sync = pending == t.grad_accum_steps or i + 1 == batches_per_epoch
            no_sync = ddp_model.no_sync() if world > 1 and not sync else nullcontext()
            with no_sync:
                with autocast:
                    logits = ddp_model(pixels, **inputs)
                loss = criterion(logits.float(), labels)
                (loss / t.grad_accum_steps).backward()
            # Summed on the device: .item() every step would wait for the GPU each time.
            sums[0] += loss.detach().double() * len(labels)
            sums[1] += len(labels)
            if sync:
                _step(model, optimizer, scheduler, t.grad_clip)
                pending = 0
        if pending:  # gradients never all-reduced: the shard had more batches than planned
            _all_reduce_grads(model, world)
            _step(model, optimizer, scheduler, t.grad_clip)
        train_time = time.perf_counter() - started
        sums = _all_reduce_sum(sums)

        if (
            crash
            and rank == 0
            and epoch + 1 == crash["epoch"]
            and not os.path.exists(crash["marker"])
        ):
            Path(crash["marker"]).touch()
            logger.warning("test hook: killing rank 0 in epoch %d", epoch + 1)
            time.sleep(CRASH_DELAY_S)
            os._exit(1)

        val = _validate(
            model, val_shard, criterion, autocast, device, len(classes), world, t.batch_size
        )
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(sums[0] / max(sums[1], 1)),
            "train_count": int(sums[1]),
            **val,
            "lr": scheduler.get_last_lr()[0],
            "train_samples_per_s": float(sums[1]) / train_time,
            "epoch_time_s": time.perf_counter() - started,
            "attempt_start_epoch": start + 1,  # > 1 after a resume or a restart
        }
        _track_best(state, metrics, t.metric, t.patience, epoch)
        metrics["best_epoch"] = state["best_epoch"] + 1
        state["history"].append(metrics)
        if rank == 0:
            logger.info(
                "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f  "
                "val_macro_f1 %.4f  (%d val)  %.0f samples/s  %.1fs",
                epoch + 1,
                t.epochs,
                metrics["train_loss"],
                metrics["val_loss"],
                metrics["val_accuracy"],
                metrics["val_macro_f1"],
                metrics["val_count"],
                metrics["train_samples_per_s"],
                metrics["epoch_time_s"],
            )
        _report(metrics, state, model, optimizer, scheduler, rank, config)
        if state["stopped"]:
            if rank == 0:
                logger.info("early stop: %s did not improve for %d epochs", t.metric, t.patience)
            break


def _warmup_cosine(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _tensors(
    model: FusedClassifier, batch: dict[str, np.ndarray], device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Pixels and labels to `device`; text tokenized here, per batch."""
    # Arrow-backed arrays are read-only; torch wants writable memory (a copy only if needed).
    pixels = torch.from_numpy(np.require(batch["pixels"], np.float32, ["C", "W"])).to(device)
    labels = torch.from_numpy(np.require(batch["label"], np.int64, ["W"])).to(device)
    inputs = model.tokenize(list(batch["text"]))
    return pixels, {k: v.to(device) for k, v in inputs.items()}, labels


def _step(model: nn.Module, optimizer, scheduler, grad_clip: float) -> None:
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _all_reduce_grads(model: nn.Module, world: int) -> None:
    if world == 1:
        return
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over workers; the tensor lives on this worker's device (NCCL needs it there)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values.cpu()


@torch.no_grad()
def _validate(
    model: FusedClassifier,
    shard,
    criterion,
    autocast,
    device,
    num_classes: int,
    world: int,
    batch_size: int,
) -> dict[str, float]:
    """Metrics over the whole validation set: every worker's predictions gathered to all."""
    model.eval()
    labels, preds, loss_sum = [], [], 0.0
    for batch in shard.iter_batches(batch_size=2 * batch_size, batch_format="numpy"):
        pixels, inputs, target = _tensors(model, batch, device)
        with autocast:
            logits = model(pixels, **inputs)
        loss_sum += criterion(logits.float(), target).item() * len(target)
        labels.append(target.cpu().numpy())
        preds.append(logits.argmax(1).cpu().numpy())
    mine = (
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.concatenate(preds) if preds else np.zeros(0, np.int64),
        loss_sum,
    )
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    all_labels = np.concatenate([p[0] for p in parts])
    all_preds = np.concatenate([p[1] for p in parts])
    metrics = classification_metrics(all_labels, all_preds, num_classes, prefix="val_")
    metrics["val_loss"] = sum(p[2] for p in parts) / max(len(all_labels), 1)
    return metrics


def _track_best(state: dict, metrics: dict, metric: str, patience: int, epoch: int) -> None:
    value = metrics[metric]
    if state["best"] is None or value > state["best"]:
        state.update(best=value, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
        state["stopped"] = state["bad_epochs"] >= patience
    state["epoch"] = epoch


def _report(
    metrics: dict,
    state: dict,
    model: FusedClassifier,
    optimizer,
    scheduler,
    rank: int,
    config: dict[str, Any],
) -> None:
    """All ranks report; only rank 0 writes and attaches a checkpoint."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        save_model(model, path / MODEL_DIR, extra={"metrics": metrics, "data": config["summary"]})
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        names |= {n for n, _ in model.named_buffers()}
        weights = {k: v for k, v in model.state_dict().items() if k in names}
        torch.save(
            {
                "model": weights,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            path / TRAIN_STATE_FILE,
        )
        (path / STATE_FILE).write_text(json.dumps(state, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _load_checkpoint(
    path: Path, model: FusedClassifier, optimizer, scheduler, device: torch.device
) -> dict[str, Any]:
    saved = torch.load(path / TRAIN_STATE_FILE, map_location=device, weights_only=True)
    result = model.load_state_dict(saved["model"], strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not match this model (unexpected "
            f"{result.unexpected_keys[:5]}); use a new --out for a different model"
        )
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return json.loads((path / STATE_FILE).read_text())


def _log_to_stderr() -> None:
    """Rank 0 only: raycls INFO logs to the worker's stderr, which Ray forwards to the driver."""
    root = logging.getLogger("raycls")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _quiet_report_logs() -> None:
    """Drop Ray Train's INFO line per report and worker (the whole metrics dict, twice an epoch).

    Its logger is named by file path, so RunConfig's LoggingConfig does not reach it.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
