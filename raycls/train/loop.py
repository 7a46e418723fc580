"""The per-worker training loop run by Ray Train on every worker; rank 0 logs and checkpoints.

It reads top to bottom: set up (`_setup`), then per epoch train (`_train_epoch`), validate
(`_validate`), record and report (`_report`). Faults for tests come from outside, through Ray
Train callbacks (tests/faults.py), never from this loop.

Checkpoints: raycls.train.checkpoint.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from raycls.config import Config, TrainConfig
from raycls.models import FusedClassifier, build_model
from raycls.train.checkpoint import MODEL_DIR, load_checkpoint, save_checkpoint
from raycls.train.logs import log, log_epoch, setup_worker_logs
from raycls.train.losses import training_loss
from raycls.train.metrics import classification_metrics
from raycls.train.schedule import build_optimizer

__all__ = ["MODEL_DIR", "NonFiniteError", "train_loop_per_worker"]


class NonFiniteError(RuntimeError):
    """The loss or the gradients stopped being finite numbers."""


@dataclass
class _Run:
    """What every step of the loop needs; built once per worker by `_setup`."""

    t: TrainConfig
    classes: list[str]
    rank: int
    world: int
    device: torch.device
    model: FusedClassifier
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: nn.Module
    autocast: Any
    batches_per_epoch: int
    state: dict[str, Any]
    config: dict[str, Any]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train on this worker's shard of "train", validate on its share of "val", report."""
    run = _setup(config)
    if run is None:
        return
    t = run.t
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(run.state["epoch"] + 1, t.epochs):
        started = time.perf_counter()
        stats = _train_epoch(run, train_shard, epoch)
        train_time = time.perf_counter() - started
        val = _validate(run, val_shard)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": stats["loss"],
            "train_count": stats["count"],
            "nonfinite_steps": stats["skipped"],
            **val,
            "lr": run.scheduler.get_last_lr()[0],
            "train_samples_per_s": stats["count"] / train_time,
            "epoch_time_s": time.perf_counter() - started,
            "attempt_start_epoch": run.config["start_epoch"],  # > 1 after a resume or a restart
        }
        _track_best(run.state, metrics, t.metric, t.patience, epoch)
        run.state["nonfinite"] = stats["error"]
        run.state["stopped"] = run.state["stopped"] or stats["error"] is not None
        metrics["best_epoch"] = run.state["best_epoch"] + 1
        run.state["history"].append(metrics)
        log_epoch(run.rank, t.epochs, metrics)
        _report(run, metrics)
        if stats["error"] is not None:
            log(run.rank, "stopped: %s", stats["error"])
            break
        if run.state["stopped"]:
            log(run.rank, "early stop: %s did not improve for %d epochs", t.metric, t.patience)
            break


def _setup(config: dict[str, Any]) -> _Run | None:
    """Model, optimizer and schedule, resumed from the last checkpoint; None when done."""
    cfg = Config.from_dict(config["config"])
    t, classes = cfg.train, list(config["classes"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    setup_worker_logs(rank)
    # Ray sets one thread per reserved CPU; the driver may plan more (see trainer._plan_cpus).
    torch.set_num_threads(max(1, int(config.get("torch_threads") or torch.get_num_threads())))
    torch.manual_seed(t.seed)
    device = ray.train.torch.get_device()

    model = build_model(cfg.model, classes).to(device)
    batches_per_epoch = max(1, math.ceil(config["train_rows"] // world / t.batch_size))
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    optimizer, scheduler = build_optimizer(model, t, steps_per_epoch)
    state = {"epoch": -1, "history": [], "best": None, "best_epoch": None, "bad_epochs": 0,
             "stopped": False, "nonfinite": None}  # fmt: skip
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(Path(directory), model, optimizer, scheduler, device)
        if state.get("nonfinite"):  # a rerun, perhaps with a lower lr, tries again from here
            state.update(stopped=False, nonfinite=None)
        log(rank, "resuming after epoch %d from %s", state["epoch"] + 1, checkpoint.path)
    if model.text is not None:
        model.text.remember_features()  # a frozen encoder's features repeat every epoch
    start = state["epoch"] + 1
    if start >= t.epochs or state["stopped"]:
        log(rank, "run already finished at epoch %d; nothing to train", start)
        return None
    config = {**config, "start_epoch": start + 1}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    run = _Run(
        t=t, classes=classes, rank=rank, world=world, device=device, model=model,
        ddp_model=ray.train.torch.prepare_model(model), optimizer=optimizer,
        scheduler=scheduler, criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        autocast=autocast, batches_per_epoch=batches_per_epoch, state=state, config=config,
    )  # fmt: skip
    log(
        rank,
        "training %d classes on %d workers (%d torch threads each): %d examples, "
        "%d steps/epoch, epochs %d-%d",
        len(classes), world, torch.get_num_threads(), config["train_rows"], steps_per_epoch,
        start + 1, t.epochs,
    )  # fmt: skip
    return run


def _train_epoch(run: _Run, shard, epoch: int) -> dict[str, Any]:
    """One pass over this worker's shard; returns mean loss, count, skipped steps, error."""
    t, model = run.t, run.model
    model.train()
    if epoch < t.freeze_encoder_epochs and model.backbone and model.backbone.pretrained:
        model.backbone.eval()  # linear probing: BatchNorm statistics stay the pretrained ones
    # loss * n and n over finite losses, and n over all: summed on the device, since .item()
    # every step would wait for the GPU each time.
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    pending, skipped, step, error = 0, 0, 0, None
    batches = shard.iter_batches(
        batch_size=t.batch_size,
        batch_format="numpy",
        local_shuffle_buffer_size=max(256, 4 * t.batch_size),
        prefetch_batches=2,
    )
    for i, batch in enumerate(batches):
        pixels, inputs, labels = _tensors(model, batch, run.device)
        weights = torch.from_numpy(np.require(batch["weight"], np.float32, ["W"])).to(run.device)
        if len(labels) == 1:  # BatchNorm cannot normalise a single example in training
            pixels, labels, weights = pixels.repeat(2, 1, 1, 1), labels.repeat(2), weights.repeat(2)
            inputs = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in inputs.items()}
        pending += 1
        sync = pending == t.grad_accum_steps or i + 1 == run.batches_per_epoch
        no_sync = run.ddp_model.no_sync() if run.world > 1 and not sync else nullcontext()
        with no_sync:
            with run.autocast:
                logits, image_logits = run.ddp_model(pixels, **inputs, with_image_logits=True)
            loss = training_loss(logits, image_logits, labels, weights,
                                 label_smoothing=t.label_smoothing,
                                 image_loss_weight=model.config.image_loss_weight)  # fmt: skip
            (loss / t.grad_accum_steps).backward()
        finite = torch.isfinite(loss.detach()).double()
        sums[0] += torch.nan_to_num(loss.detach().double()) * finite * len(labels)
        sums[1] += finite * len(labels)
        sums[2] += len(labels)
        if sync:
            step += 1
            pending = 0
            if not _step(run, loss):
                skipped += 1
                if t.on_nonfinite == "stop":
                    error = _nonfinite_message(epoch, step, loss, t)
                    break
    if pending and error is None:  # gradients never all-reduced: more batches than planned
        _all_reduce_grads(model, run.world)
        step += 1
        skipped += 0 if _step(run, loss) else 1
    if error is None and skipped and skipped == step:
        error = _nonfinite_message(epoch, step, loss, t) + " (every step of the epoch)"
    sums = _all_reduce_sum(sums)
    return {
        "loss": float(sums[0] / max(sums[1], 1)),
        "count": int(sums[2]),
        "skipped": skipped,
        "error": error,
    }


def _step(run: _Run, loss: torch.Tensor) -> bool:
    """Clip and apply the gradients; False (nothing applied) when they are not finite.

    The decision rests on the gradient norm after the all-reduce, the same number on every
    worker, so all workers skip or stop together. It waits for the device once per step.
    """
    params = [p for p in run.model.parameters() if p.requires_grad]
    norm = nn.utils.clip_grad_norm_(params, run.t.grad_clip if run.t.grad_clip > 0 else math.inf)
    finite = bool(torch.isfinite(norm))
    if finite:
        run.optimizer.step()
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return finite


def _nonfinite_message(epoch: int, step: int, loss: torch.Tensor, t: TrainConfig) -> str:
    return (
        f"non-finite loss or gradients in epoch {epoch + 1}, step {step} (loss on this worker "
        f"{float(loss):.4g}); the step was not applied. Lower train.lr (now {t.lr:g}), "
        f"clip gradients (train.grad_clip=1.0; now {t.grad_clip:g}), or set "
        "train.on_nonfinite=skip to skip such steps and count them"
    )


def _tensors(
    model: FusedClassifier, batch: dict[str, np.ndarray], device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Pixels and labels to `device`; text tokenized here, per batch."""
    # Arrow-backed arrays are read-only; torch wants writable memory (a copy only if needed).
    pixels = torch.from_numpy(np.require(batch["pixels"], np.float32, ["C", "W"])).to(device)
    labels = torch.from_numpy(np.require(batch["label"], np.int64, ["W"])).to(device)
    inputs = model.tokenize(list(batch["text"]))
    return pixels, {k: v.to(device) for k, v in inputs.items()}, labels


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
def _validate(run: _Run, shard) -> dict[str, float]:
    """Metrics over the whole validation set: every worker's predictions gathered to all."""
    model = run.model
    model.eval()
    labels, preds, loss_sum = [], [], 0.0
    for batch in shard.iter_batches(batch_size=2 * run.t.batch_size, batch_format="numpy"):
        pixels, inputs, target = _tensors(model, batch, run.device)
        with run.autocast:
            logits = model(pixels, **inputs)
        loss_sum += run.criterion(logits.float(), target).item() * len(target)
        labels.append(target.cpu().numpy())
        preds.append(logits.argmax(1).cpu().numpy())
    mine = (
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.concatenate(preds) if preds else np.zeros(0, np.int64),
        loss_sum,
    )
    parts = [mine]
    if run.world > 1:
        parts = [None] * run.world
        dist.all_gather_object(parts, mine)
    all_labels = np.concatenate([p[0] for p in parts])
    all_preds = np.concatenate([p[1] for p in parts])
    metrics = classification_metrics(all_labels, all_preds, len(run.classes), prefix="val_")
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


def _report(run: _Run, metrics: dict) -> None:
    """All ranks report; only rank 0 writes and attaches a checkpoint."""
    if run.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        extra = {"metrics": metrics, "data": run.config["summary"]}
        save_checkpoint(Path(directory), run.model, run.optimizer, run.scheduler, run.state, extra)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
