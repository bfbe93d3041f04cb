"""The training engine of both networks, in the parts of torchvision's references:
loaders, resume state, one training epoch, evaluation, checkpointing.

Adam, an optional cosine schedule, mixed precision where the hardware has it,
channels_last, a tqdm bar per epoch, a history CSV and its curves, the best
checkpoint by the validation ``score`` and the last one for resuming. Under
torchrun it runs DistributedDataParallel; only the main process validates and writes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler
from tqdm import tqdm

from steelflow import checkpoint, distributed
from steelflow.atomic import atomic_path
from steelflow.dataset import EpochSampler, normalise
from steelflow.device import autocast, memory_format, pick_device, pick_precision
from steelflow.errors import SteelflowError
from steelflow.masks import MaskCache
from steelflow.report import plot_history
from steelflow.tasks import TASKS, Task

log = logging.getLogger(__name__)


class TrainingError(SteelflowError):
    """Training cannot go on (a non-finite loss); the message says where it happened."""


@dataclass
class Progress:
    """How far a training got: epochs done, their history rows, the best score so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float = -np.inf


def on_device(x: torch.Tensor, masks: torch.Tensor, flags: torch.Tensor, device, fmt):
    """A loader's batch on the device: uint8 images normalised and uint8 masks (the
    defect share of each pixel, 0-255) made float 0-1 there, after the copy."""
    x = normalise(x.to(device, non_blocking=True)).contiguous(memory_format=fmt)
    masks = masks.to(device, non_blocking=True).float() / 255
    return x, masks, flags.to(device, non_blocking=True)


def loss_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16's GradScaler; a disabled one, which passes the loss through, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


class Step:
    """One optimisation step: forward in the autocast dtype, loss in fp32, backward, Adam,
    then the learning rate of the next step (``schedule``).

    Raises TrainingError on a non-finite loss; ``scaler`` scales an fp16 loss; ``ema``
    (an AveragedModel) follows the weights after each step.
    """

    def __init__(self, net, task: Task, optimizer, schedule, scaler, device, dtype, fmt, ema=None):
        self.net, self.task, self.optimizer, self.ema = net, task, optimizer, ema
        self.schedule, self.scaler = schedule, scaler
        self.device, self.dtype, self.fmt = device, dtype, fmt

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, flags: torch.Tensor) -> float:
        x, masks, flags = on_device(x, masks, flags, self.device, self.fmt)
        target = self.task.target(masks, flags)
        with autocast(self.device, self.dtype):
            logits = self.net(x)
        loss = self.task.loss(logits, target)
        value = loss.item()  # waits for the forward pass alone, before backward is queued
        if not math.isfinite(value):
            raise TrainingError(f"loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        if self.ema:
            self.ema.update_parameters(self.net)
        return value


def averaged(model: torch.nn.Module, cfg: dict) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights and buffers that the network's
    ``ema_decay`` asks for, or None where it is 0."""
    if not cfg["ema_decay"]:
        return None
    decay = get_ema_multi_avg_fn(cfg["ema_decay"])
    return AveragedModel(model, multi_avg_fn=decay, use_buffers=True)


def make_loaders(
    task: Task, images: Path, masks: Path, split: Path, device: torch.device, scratch: Path
):
    """Train and validation loaders, their images decoded into the folder ``scratch``
    (``Task.datasets``); the train order and samples depend only on (seed, epoch):
    the sampler (``EpochSampler``) sets the epoch, for the loader's workers too."""
    config, cfg = task.config, task.cfg
    train_set, val_set = task.datasets(images, MaskCache(masks), split, scratch)
    rank, world = distributed.rank_and_world()
    order = task.train_sampler(train_set, rank, world)
    if order is None:  # a plain shuffle, of this process's share
        order = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=task.seed)
    workers = config["machine"]["workers"]
    common = {
        "batch_size": cfg["batch_size"],
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    train_loader = DataLoader(
        train_set,
        sampler=EpochSampler(order),
        drop_last=len(train_set) > cfg["batch_size"],
        generator=torch.Generator(),  # worker seeds (unused), drawn apart from torch's own
        **common,
    )
    return train_loader, DataLoader(
        val_set, sampler=EpochSampler(SequentialSampler(val_set)), **common
    )


def lr_schedule(optimizer, cfg: dict, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of each step: a linear rise over ``warmup_epochs``, then
    constant or a cosine to 0 at the last step (torchvision's references do the same)."""
    warmup = round(cfg["warmup_epochs"] * steps_per_epoch)
    total = max(cfg["epochs"] * steps_per_epoch - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg["schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / total))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_state(last: Path, best_file: Path, parts: dict, recipe: dict, task: Task, device):
    """The progress saved in ``last`` when it was trained with the same ``recipe``
    (settings and image ids), else a fresh one, saying why in one line."""
    try:
        state = checkpoint.load(last, task.name, device)
    except checkpoint.CheckpointError as e:
        log.warning("%s; training %s from scratch", e, task.name)
        return Progress()
    saved = state.get("recipe", {})
    changed = sorted(k for k in recipe.keys() | saved.keys() if recipe.get(k) != saved.get(k))
    if changed:
        log.info(
            "not resuming from %s: it was trained with other %s; training %s from scratch",
            last,
            ", ".join(changed),
            task.name,
        )
        return Progress()
    for name, part in parts.items():  # model, optimizer, schedule, ema, scaler
        if name == "scaler" and "scaler" not in state:
            continue  # saved from a run without fp16: the loss scale starts afresh
        if part is not None:
            part.load_state_dict(state["weights" if name == "model" else name])
    # the best file went with an interrupted run: the next epoch saves anew
    best = state["best"] if best_file.is_file() else -np.inf
    log.info("resuming %s from epoch %d of %d", task.name, state["epoch"], task.cfg["epochs"])
    return Progress(state["epoch"], state["history"], best)


def train_one_epoch(step: Step, loader: DataLoader, epoch: int) -> tuple[float, float]:
    """Train one epoch; returns the mean loss and the seconds it took."""
    task, cfg = step.task, step.task.cfg
    loader.sampler.set_epoch(epoch)  # the same order and samples after a resume
    step.net.train()
    began, losses = time.perf_counter(), []
    bar = tqdm(
        loader,
        desc=f"{task.name} epoch {epoch + 1}/{cfg['epochs']}",
        unit="batch",
        disable=not distributed.is_main(),
        mininterval=1,
    )
    for i, batch in enumerate(bar):
        try:
            losses.append(step(*batch))
        except TrainingError as e:
            raise TrainingError(
                f"{task.name}: {e} at epoch {epoch + 1}, step {i + 1}; "
                f"lower {task.name}.lr (now {cfg['lr']}) or use precision: fp32"
            ) from None
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    return float(np.mean(losses)), time.perf_counter() - began


@torch.no_grad()
def evaluate(model, loader: DataLoader, task: Task, device, dtype, fmt) -> dict:
    """Validation loss and the task's metrics over the whole validation set."""
    model.eval()
    loss, evidence = 0.0, []
    for batch in loader:
        x, masks, flags = on_device(*batch, device, fmt)
        target = task.target(masks, flags)
        with autocast(device, dtype):
            logits = model(x)
        loss += task.loss(logits, target).item() * len(x)
        evidence.append([t.cpu() for t in task.evidence(logits, target, flags)])
    columns = [torch.cat(c).float().numpy() for c in zip(*evidence, strict=True)]
    return {"val_loss": loss / len(loader.dataset), **task.metrics(*columns)}


def save_epoch(
    paths: dict, parts: dict, task: Task, progress: Progress, metrics: dict, recipe: dict
) -> None:
    """After an epoch: the best checkpoint if it improved, the last one, history and curves.

    Checkpoints hold the weights that were validated (the EMA's, when there is one).
    """
    validated = parts["ema"].module if parts["ema"] else parts["model"]
    state = {
        "model": validated.state_dict(),
        "config": task.cfg,
        "epoch": progress.epoch,
        "metrics": metrics,
        "arch": task.cfg["arch"],
        "task": task.name,
    }
    if metrics["score"] > progress.best or not np.isfinite(progress.best):
        progress.best = metrics["score"]
        checkpoint.save(checkpoint.best_path(paths["out"]), state)
    resumable = {k: v.state_dict() for k, v in parts.items() if v is not None and k != "model"}
    resumable |= {"weights": parts["model"].state_dict()}
    extra = {"history": progress.history, "best": progress.best, "recipe": recipe}
    checkpoint.save(checkpoint.last_path(paths["out"]), state | resumable | extra)
    history = pd.DataFrame(progress.history)
    with atomic_path(paths["history"]) as tmp:
        history.to_csv(tmp, index=False)
    plot_history(history, task.name, paths["curves"])


@contextmanager
def scratch_folder(out: Path) -> Iterator[Path]:
    """An empty folder for the decoded images of the training that writes ``out``:
    under $TMPDIR (Snakemake sets it from ``resources.tmpdir``), named after ``out``, so
    a rerun clears what a killed run left; removed at the end. The main process makes
    and removes it; the other processes of a torchrun job read its files."""
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"steelflow-images-{digest}"
    main = distributed.is_main()
    if main:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        if main:
            shutil.rmtree(folder, ignore_errors=True)


def run(
    name: str,
    fold: int,
    config: dict,
    images: Path,
    masks: Path,
    split: Path,
    outputs: dict[str, Path],
    resume: bool = False,
    start: Path | None = None,
) -> dict | None:
    """Train network ``name`` on every fold but ``fold``, which validates. ``outputs``
    holds the paths ``out`` (best checkpoint), ``history`` (CSV) and ``curves`` (PNG);
    ``start`` the checkpoint whose encoder it starts from (``pretrained: unet``).
    The images are decoded once into ``scratch_folder``. Returns the best validation
    row; None in the processes other than the main one."""
    distributed.setup()
    task = TASKS[name](config, fold, start)
    with scratch_folder(outputs["out"]) as scratch:
        device = pick_device(config["train"]["device"])
        loaders = make_loaders(task, images, masks, split, device, scratch)
        progress = fit(task, *loaders, device, outputs, resume)
        del loaders  # their workers map files of the folder
    main = distributed.is_main()  # before teardown, after which every process looks like rank 0
    distributed.teardown()
    if not main:
        return None  # the main process reports
    # finished: the best model under its own name, and a rerun starts afresh
    os.replace(checkpoint.best_path(outputs["out"]), outputs["out"])
    checkpoint.last_path(outputs["out"]).unlink(missing_ok=True)
    return max(progress.history, key=lambda r: r["score"]) if progress.history else {}


def fit(
    task: Task,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device: torch.device,
    outputs: dict,
    resume: bool,
) -> Progress:
    """The epochs of ``task`` on ``device`` from scratch or, with ``resume``, from its
    last checkpoint; the main process validates and saves after each (``save_epoch``)."""
    cfg, train_cfg = task.cfg, task.config["train"]
    torch.manual_seed(task.seed)
    dtype = pick_precision(train_cfg["precision"], device)
    fmt = memory_format(train_cfg["channels_last"])

    model = task.model().to(device, memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    schedule = lr_schedule(optimizer, cfg, len(train_loader))
    ema = averaged(model, cfg)
    # fp16's loss scale, saved and resumed with the rest: a fresh one would skip steps
    # to find it again after every resume
    scaler = loss_scaler(device, dtype)
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule, "ema": ema}
    parts["scaler"] = scaler if scaler.is_enabled() else None
    recipe = task.recipe(train_loader.dataset, val_loader.dataset)
    last = checkpoint.last_path(outputs["out"])
    progress = Progress()
    if resume and last.is_file():
        progress = resume_state(
            last, checkpoint.best_path(outputs["out"]), parts, recipe, task, device
        )
    step = Step(distributed.wrap(model), task, optimizer, schedule, scaler, device, dtype, fmt, ema)

    for epoch in range(progress.epoch, cfg["epochs"]):
        train_loss, seconds = train_one_epoch(step, train_loader, epoch)
        if distributed.is_main():
            metrics = evaluate(ema.module if ema else model, val_loader, task, device, dtype, fmt)
            row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics}
            row |= {"lr": optimizer.param_groups[0]["lr"], "train_seconds": seconds}
            row["train_images_per_s"] = len(train_loader.dataset) / seconds
            progress.epoch, progress.history = epoch + 1, [*progress.history, row]
            print(
                f"{task.name} epoch {epoch + 1}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
                flush=True,
            )
            save_epoch(outputs, parts, task, progress, metrics, recipe)
        distributed.barrier()
    return progress
