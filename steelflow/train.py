"""One training engine for both networks: the defect classifier and the U-Net.

Adam on BCE (or 0.6 BCE + 0.4 soft Dice), an optional cosine schedule, mixed
precision where the hardware has it, channels_last, a tqdm bar per epoch, a
history CSV, the best checkpoint by the validation metric and the last one for
resuming. Under torchrun it runs DistributedDataParallel, one process per
device; only rank 0 validates and writes.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from steelflow.atomic import atomic_path
from steelflow.dataset import SteelDataset, split_ids
from steelflow.masks import MaskCache
from steelflow.models import build_classifier, build_unet
from steelflow.report import plot_history

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """Training cannot go on (a non-finite loss); the message says where it happened."""


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; or the device named."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 where native, fp16 on older GPUs."""
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        log.info("no native bf16 on %s: training in fp32", device.type)
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per class over the whole batch, averaged over classes.

    Pooling the batch gives a rare class a real gradient whenever one sample
    has it, instead of averaging it away among samples where it is absent.
    """
    prob = torch.sigmoid(logits)
    dims = (0, *range(2, logits.dim()))
    inter = (prob * target).sum(dim=dims)
    total = prob.sum(dim=dims) + target.sum(dim=dims)
    return (1 - (2 * inter + eps) / (total + eps)).mean()


def loss_fn(logits: torch.Tensor, target: torch.Tensor, cfg: dict) -> torch.Tensor:
    """BCE, or ``bce_weight`` BCE + (1 - bce_weight) soft Dice; always in fp32."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if cfg.get("loss", "bce") == "bce":
        return bce
    return cfg["bce_weight"] * bce + (1 - cfg["bce_weight"]) * soft_dice_loss(logits, target)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class."""
    labels = labels.astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(scores).rank().to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    tp = int((predicted & labels).sum())
    denominator = int(predicted.sum() + labels.sum())
    return 1.0 if denominator == 0 else 2 * tp / denominator


def pair_dice(prob: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Dice per (image, class) at threshold 0.5, 1 where both are empty: shape (N, 4)."""
    pred = prob > 0.5
    truth = masks > 0.5
    inter = (pred & truth).sum(dim=(-2, -1)).float()
    total = (pred.sum(dim=(-2, -1)) + truth.sum(dim=(-2, -1))).float()
    return torch.where(total == 0, torch.ones_like(total), 2 * inter / total.clamp(min=1))


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_distributed() -> None:
    """Join the process group when started by torchrun (RANK / WORLD_SIZE set)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary name, then rename: a killed run never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class Task:
    """What differs between the two networks: model, data, targets and metrics."""

    def __init__(self, name: str, config: dict):
        self.name = name
        self.cfg = config[name]
        self.binary = name == "classifier" and self.cfg["head"] == "binary"

    def model(self) -> torch.nn.Module:
        return build_classifier(self.cfg) if self.name == "classifier" else build_unet(self.cfg)

    def datasets(self, images: Path, cache: MaskCache, split: Path, config: dict):
        train_ids, val_ids = split_ids(split, config["split"]["val_fold"])
        common = {"scale": self.cfg["scale"], "seed": config["seed"]}
        crop = self.cfg.get("crop_width")
        crop = int(crop * self.cfg["scale"]) if crop else None
        train = SteelDataset(
            images,
            cache,
            train_ids,
            crop_width=crop,
            augment=config["augment"],
            defect_crop_prob=self.cfg.get("defect_crop_prob", 0.0),
            **common,
        )
        return train, SteelDataset(images, cache, val_ids, **common)

    def target(self, masks: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        if self.name == "unet":
            return masks
        return flags.amax(dim=1, keepdim=True) if self.binary else flags

    def evaluate(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict:
        """Validation metrics; ``score`` is the one that picks the best checkpoint."""
        if self.name == "unet":
            dice = torch.cat(outputs).numpy()  # (N, 4) pair Dice
            truth = torch.cat(targets).numpy().astype(bool)  # (N, 4) class present
            row = {"score": float(dice.mean())}
            for c in range(4):
                defect = dice[truth[:, c], c]
                row[f"dice_defect_{c + 1}"] = float(defect.mean()) if defect.size else float("nan")
            return row
        scores = torch.cat(outputs).float().numpy()
        labels = torch.cat(targets).numpy().astype(bool)
        any_score, any_label = scores.max(axis=1), labels.max(axis=1)
        auc = roc_auc(any_score, any_label)
        return {"score": auc, "auc": auc, "f1": f1_score(any_score > 0.5, any_label)}


def run(
    name: str,
    config: dict,
    images: Path,
    masks: Path,
    split: Path,
    out: Path,
    history_csv: Path,
    resume: bool = False,
) -> dict:
    """Train network ``name`` ("classifier" or "unet"); return the best validation metrics."""
    setup_distributed()
    task = Task(name, config)
    cfg, train_cfg = task.cfg, config["train"]
    torch.manual_seed(config["seed"])
    torch.set_num_threads(train_cfg["threads"] or torch.get_num_threads())
    device = pick_device(train_cfg["device"])
    dtype = pick_precision(train_cfg["precision"], device)
    memory_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format

    model = task.model().to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
        if cfg["schedule"] == "cosine"
        else None
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    last = out.with_name(f"{out.stem}.last{out.suffix}")
    start, history, best = 0, [], -np.inf
    if resume and last.is_file():
        state = torch.load(last, map_location=device, weights_only=True)
        if state["config"] == cfg:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if schedule:
                schedule.load_state_dict(state["schedule"])
            start, history, best = state["epoch"], state["history"], state["best"]
            if not out.is_file():  # the best file went with the interrupted run: save anew
                best = -np.inf
            log.info("resuming %s from epoch %d of %d", name, start, cfg["epochs"])
        else:
            log.info("%s has another config: training %s from scratch", last, name)

    cache = MaskCache(masks)
    train_set, val_set = task.datasets(images, cache, split, config)
    sampler = DistributedSampler(train_set, seed=config["seed"]) if dist.is_initialized() else None
    loader_args = {
        "num_workers": train_cfg["workers"],
        "pin_memory": device.type == "cuda",
        "persistent_workers": train_cfg["workers"] > 0,
    }
    generator = torch.Generator().manual_seed(config["seed"])
    train_loader = DataLoader(
        train_set,
        batch_size=cfg["batch_size"],
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_set) > cfg["batch_size"],
        generator=generator,
        **loader_args,
    )
    val_loader = DataLoader(val_set, batch_size=cfg["batch_size"], **loader_args)
    net = model
    if dist.is_initialized():
        net = torch.nn.parallel.DistributedDataParallel(model)
        if is_main():
            log.info(
                "DistributedDataParallel with %d processes (%s)",
                dist.get_world_size(),
                dist.get_backend(),
            )
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    for epoch in range(start, cfg["epochs"]):
        began = time.perf_counter()
        generator.manual_seed(config["seed"] + epoch)  # the same shuffle after a resume
        train_set.set_epoch(epoch)
        if sampler:
            sampler.set_epoch(epoch)
        net.train()
        losses = []
        bar = tqdm(
            train_loader,
            desc=f"{name} epoch {epoch + 1}/{cfg['epochs']}",
            unit="batch",
            disable=not is_main(),
            mininterval=1,
        )
        for step, (x, m, flags) in enumerate(bar):
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            target = task.target(m, flags).to(device, non_blocking=True)
            with autocast():
                logits = net(x)
            loss = loss_fn(logits, target, cfg)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{name}: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"lower {name}.lr (now {cfg['lr']}) or use precision: fp32"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        if schedule:
            schedule.step()
        train_seconds = time.perf_counter() - began

        if is_main():
            metrics = validate(model, val_loader, task, device, autocast, memory_format, cfg)
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                **metrics,
                "lr": optimizer.param_groups[0]["lr"],
                "train_seconds": train_seconds,
                "train_images_per_s": len(train_set) / train_seconds,
            }
            history.append(row)
            print(
                f"{name} epoch {epoch + 1}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
                flush=True,
            )
            state = {
                "model": model.state_dict(),
                "config": cfg,
                "epoch": epoch + 1,
                "metrics": metrics,
                "arch": cfg["arch"],
                "task": name,
            }
            if metrics["score"] > best or not np.isfinite(best):
                best = metrics["score"]
                save_checkpoint(out, state)
            save_checkpoint(
                last,
                {
                    **state,
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "best": best,
                    "schedule": schedule.state_dict() if schedule else {},
                },
            )
            with atomic_path(history_csv) as tmp:
                pd.DataFrame(history).to_csv(tmp, index=False)
            plot_history(pd.DataFrame(history), name, history_csv.with_suffix(".png"))
        if dist.is_initialized():
            dist.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    if is_main():
        last.unlink(missing_ok=True)  # finished: a rerun starts afresh
    return max(history, key=lambda r: r["score"]) if history else {}


@torch.no_grad()
def validate(model, loader, task: Task, device, autocast, memory_format, cfg) -> dict:
    """Validation loss and metrics over the whole validation set."""
    model.eval()
    outputs, targets, losses = [], [], []
    for x, m, flags in loader:
        x = x.to(device).contiguous(memory_format=memory_format)
        target = task.target(m, flags).to(device)
        with autocast():
            logits = model(x)
        losses.append(loss_fn(logits, target, cfg).item() * len(x))
        prob = torch.sigmoid(logits.float())
        outputs.append((pair_dice(prob, target) if task.name == "unet" else prob).cpu())
        targets.append((target.amax(dim=(-2, -1)) if task.name == "unet" else flags).cpu())
    return {"val_loss": sum(losses) / len(loader.dataset), **task.evaluate(outputs, targets)}
