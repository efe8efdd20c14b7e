"""The self-supervised trainer: one process, or one rank of ``torchrun`` (DistributedDataParallel).

Under ``torchrun --nproc_per_node=N`` every rank draws its own episodes (seeded by
seed, rank and step), gradients are averaged across ranks (gloo on the CPU, NCCL
on GPUs), so one step trains on N episodes and every rank holds the same weights.
Rank 0 prepares the data first (the others then read its cache), writes the
checkpoints, the log and the model.  A run resumes from ``<out>/checkpoint.pt``
when one is there: it loses at most one checkpoint interval.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..core.encoders import build_encoder
from ..core.features import HEAD_GRID
from ..core.heads import build_head
from ..core.model import FewShotModel, save_model
from ..core.preprocess import CT_WINDOW, MR_PERCENTILES
from ..io.write import check_output_folder
from .data import TrainingVolume, prepare_volume, preparation_settings
from .episodes import NEIGHBOUR_SLICES, EpisodeSampler
from .loss import EpisodeLoss
from .pseudolabels import SUPERPIXELS
from .runs import (
    CHECKPOINT, LOG, MODEL, Ranks, append_log, check_number, code_version, load_checkpoint, save_checkpoint,
    start_ranks, write_rank_digest,
)



@dataclass
class TrainConfig:
    """One training run; the defaults are the reference recipe (METHOD.md, "Self-supervised training")."""

    images: list[str]
    out: Path
    encoder: str = "litemedsam"
    head: str = "dspnet"
    freeze_encoder: bool = False
    steps: int = 10_000
    supervoxels: bool = False
    superpixels: str = "felzenszwalb"
    slice_mm: float = 0.0
    query_reach: int = NEIGHBOUR_SLICES
    absent_queries: float = 0.0
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 1000
    lr_gamma: float = 0.95
    bcma_lr_scale: float = 1e-4
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    cache: Path | None = None
    command: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Refuse settings that cannot train, with the fix."""
        if not self.images:
            raise ValueError("give at least one image to train on (--images PATH ...)")
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("--steps, --checkpoint-every and --log-every must be at least 1")
        if self.superpixels not in SUPERPIXELS:
            raise ValueError(f"unknown superpixel method '{self.superpixels}'; choose one of {', '.join(SUPERPIXELS)}")
        if self.query_reach < 1 or not 0.0 <= self.absent_queries < 1.0:
            raise ValueError("--query-reach must be at least 1 slice and --absent-queries a share from 0 to below 1")
        if self.absent_queries and not self.supervoxels:
            raise ValueError("--absent-queries needs --supervoxels: a 2D superpixel's query is its own slice")
        check_number("--lr", self.lr, 0.0)
        check_number("--slice-mm", self.slice_mm, 0.0, from_low=True)
        check_number("momentum", self.momentum, 0.0, 1.0, from_low=True)
        check_number("lr_gamma", self.lr_gamma, 0.0, 1.0, to_high=True)
        for name in ("weight_decay", "bcma_lr_scale"):
            check_number(name, getattr(self, name), 0.0, from_low=True)
        check_output_folder(self.out)
        check_output_folder(self.cache_dir)  # the cache (--cache, or OUT/cache) too, before the work

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.out / "cache"

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on with the run that resumes it."""
        return {"encoder": self.encoder, "head": self.head, "freeze_encoder": self.freeze_encoder,
                "supervoxels": self.supervoxels, "superpixels": self.superpixels, "seed": self.seed,
                "query_reach": self.query_reach, "absent_queries": self.absent_queries}


def train(config: TrainConfig, progress: Callable[[str, int, int, dict[str, float]], None] | None = None) -> Path:
    """Run (or resume) the training that ``config`` describes; returns the model file (``<out>/model.safetensors``).

    ``progress(stage, done, total, values)`` reports preparation (``prepare``, in
    slices) and training (``train``, in steps, with the latest losses); rank 0 only.
    """
    config.check()
    ranks, device = start_ranks(config.device)
    try:
        return _train(config, ranks, device, progress if ranks.main else None)
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


def _train(config: TrainConfig, ranks: Ranks, device: torch.device, progress: Callable[..., None] | None) -> Path:
    report = progress or (lambda *args: None)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    encoder = build_encoder(config.encoder, device)
    encoder.requires_grad_(not config.freeze_encoder)
    encoder.train(not config.freeze_encoder)
    model = FewShotModel(encoder, build_head(config.head).train()).to(device)
    volumes = _prepare(config, encoder, ranks, device, report)
    sampler = EpisodeSampler(volumes, from_trunk=config.freeze_encoder, head_grid=HEAD_GRID, reach=config.query_reach,
                             absent_share=config.absent_queries)
    loss_module: nn.Module = EpisodeLoss(model, from_trunk=config.freeze_encoder)
    if ranks.world > 1:
        loss_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    out = config.out
    step, history = _resume(out / CHECKPOINT, config, model, optimizer, schedule, sampler, ranks)
    totals = {"loss": 0.0, "query": 0.0, "alignment": 0.0, "n": 0}
    while step < config.steps:
        episode = sampler.draw(np.random.default_rng([config.seed, ranks.rank, step]))
        tensors = [t.to(device) for t in (episode.support, episode.support_mask, episode.query, episode.query_mask)]
        loss, query_loss, alignment_loss = loss_module(*tensors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        for key, value in (("loss", loss), ("query", query_loss), ("alignment", alignment_loss)):
            totals[key] += float(value.detach())
        totals["n"] += 1
        if step % config.log_every == 0 or step == config.steps:
            means = ranks.mean([totals[k] / totals["n"] for k in ("loss", "query", "alignment")])
            skipped = dict(zip(sampler.skipped, ranks.total(list(sampler.skipped.values()))))
            record = {"step": step, "loss": means[0], "query_loss": means[1], "alignment_loss": means[2],
                      "lr": schedule.get_last_lr()[0], "skipped": skipped, "episodes": step * ranks.world,
                      "seconds": round(time.perf_counter() - started, 1)}
            history.append(record)
            if ranks.main:
                append_log(out / LOG, record)
            totals = {"loss": 0.0, "query": 0.0, "alignment": 0.0, "n": 0}
            report("train", step, config.steps, {"loss": means[0]})
        if step % config.checkpoint_every == 0 or step == config.steps:
            skipped = dict(zip(sampler.skipped, ranks.total(list(sampler.skipped.values()))))
            if ranks.main:
                _save_checkpoint(out / CHECKPOINT, config, step, model, optimizer, schedule, skipped, history)
            ranks.barrier()
    write_rank_digest(out, ranks, model, step)
    path = out / MODEL
    if ranks.main:
        save_model(path, model, _card(config, volumes, ranks, step, history, time.perf_counter() - started),
                   with_trunk=not config.freeze_encoder)
    ranks.barrier()
    return path


def _prepare(config: TrainConfig, encoder: nn.Module, ranks: Ranks, device: torch.device,
             report: Callable[..., None]) -> list[TrainingVolume]:
    """Every training volume, prepared by rank 0 first (the cache then serves the other ranks)."""
    settings = preparation_settings(encoder, freeze=config.freeze_encoder, superpixel_method=config.superpixels,
                                    use_supervoxels=config.supervoxels, slice_mm=config.slice_mm)
    volumes: list[TrainingVolume] = []
    for turn in (0, 1):
        if (turn == 0) == ranks.main:
            for index, path in enumerate(config.images):
                report("prepare", index, len(config.images), {})
                volumes.append(prepare_volume(path, encoder, settings, config.cache_dir, device=device))
            report("prepare", len(config.images), len(config.images), {})
        ranks.barrier()
    return volumes


def _optimizer(model: FewShotModel, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay; BCMA's mixing matrix at ``lr * bcma_lr_scale``."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    slow = [p for name, p in trainable if name.startswith("head.bcma.")]
    rest = [p for name, p in trainable if not name.startswith("head.bcma.")]
    groups = [{"params": rest, "lr": config.lr}]
    if slow:
        groups.append({"params": slow, "lr": config.lr * config.bcma_lr_scale})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _save_checkpoint(path: Path, config: TrainConfig, step: int, model: FewShotModel, optimizer: torch.optim.Optimizer,
                     schedule: torch.optim.lr_scheduler.LRScheduler, skipped: dict[str, int],
                     history: list[dict[str, Any]]) -> None:
    """Everything the next step depends on (episodes are seeded by step, so no random state is needed).

    ``skipped``: skipped draws summed over all ranks so far."""
    state = {
        "model": model.trained_state(with_trunk=not config.freeze_encoder),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "skipped": skipped,
    }
    save_checkpoint(path, config.identity(), step, state, history)


def _resume(path: Path, config: TrainConfig, model: FewShotModel, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, sampler: EpisodeSampler,
            ranks: Ranks) -> tuple[int, list[dict[str, Any]]]:
    """The step and log history to go on from: a checkpoint's, or 0.

    Rank 0 takes over the skip counts summed over all ranks; the others count afresh.
    """
    state = load_checkpoint(path, config.identity(), ranks)
    if state is None:
        return 0, []
    model.load_trained_state(state["model"], str(path))
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if ranks.main:
        sampler.skipped.update(state["skipped"])
    return int(state["step"]), state["history"]


def _card(config: TrainConfig, volumes: list[TrainingVolume], ranks: Ranks, step: int,
          history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    intensities = torch.cat([v.images.reshape(-1)[:: 97] for v in volumes])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "command": " ".join(config.command) or None,
        "steps": step,
        "episodes": step * ranks.world,
        "ranks": ranks.world,
        "seconds": round(seconds, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "skipped_episodes": history[-1]["skipped"] if history else {},
        "preprocessing": {
            "ct_window_hu": list(CT_WINDOW),
            "mr_percentiles": list(MR_PERCENTILES),
            "encoder_input": "slices padded to a physical square, resized, scaled to [0, 1]",
            "training_input_mean": round(float(intensities.mean()), 4),
            "training_input_std": round(float(intensities.std()), 4),
        },
        "data": [{"image": v.source, "key": v.key, "slices": len(v.labels), "slice_mm": v.spacing_mm[0]} for v in volumes],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                   if k not in ("images", "out", "cache", "command")},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
