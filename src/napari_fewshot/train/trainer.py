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
import hashlib
import json
import os
import subprocess
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

from .. import __version__
from ..core.device import resolve_device
from ..core.encoders import build_encoder
from ..core.features import HEAD_GRID
from ..core.heads import build_head
from ..core.model import FewShotModel, save_model
from ..core.preprocess import CT_WINDOW, MR_PERCENTILES
from ..io.write import atomic_write
from .data import TrainingVolume, prepare_volume, preparation_settings
from .episodes import EpisodeSampler
from .loss import EpisodeLoss
from .pseudolabels import SUPERPIXELS

#: The checkpoint and model file names inside a run's folder.
CHECKPOINT, MODEL, LOG = "checkpoint.pt", "model.safetensors", "log.jsonl"


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

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.out / "cache"

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on with the run that resumes it."""
        return {"encoder": self.encoder, "head": self.head, "freeze_encoder": self.freeze_encoder,
                "supervoxels": self.supervoxels, "superpixels": self.superpixels, "seed": self.seed}


@dataclass
class Ranks:
    """Where this process stands among the ranks of a run (one rank without torchrun)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """``values`` averaged over all ranks."""
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(tensor)
            tensor /= self.world
        return tensor.tolist()

    def total(self, values: list[int]) -> list[int]:
        tensor = torch.tensor(values, dtype=torch.int64)
        if self.world > 1:
            dist.all_reduce(tensor)
        return [int(v) for v in tensor]


def start_ranks(device: str) -> tuple[Ranks, torch.device]:
    """Join ``torchrun``'s process group when there is one: (ranks, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch_device = resolve_device(device)
    if world == 1:
        return Ranks(), torch_device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(torch_device)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    # rank 0 may spend a long time encoding before the others pass the first barrier
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return ranks, torch_device


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
    sampler = EpisodeSampler(volumes, from_trunk=config.freeze_encoder, head_grid=HEAD_GRID)
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
                _append_log(out / LOG, record)
            totals = {"loss": 0.0, "query": 0.0, "alignment": 0.0, "n": 0}
            report("train", step, config.steps, {"loss": means[0]})
        if step % config.checkpoint_every == 0 or step == config.steps:
            skipped = dict(zip(sampler.skipped, ranks.total(list(sampler.skipped.values()))))
            if ranks.main:
                _save_checkpoint(out / CHECKPOINT, config, step, model, optimizer, schedule, skipped, history)
            ranks.barrier()
    _write_rank_digest(out, ranks, model, step)
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
        "identity": json.dumps(config.identity()),
        "step": step,
        "model": model.trained_state(with_trunk=not config.freeze_encoder),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "skipped": skipped,
        "history": json.dumps(history),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda target: torch.save(state, target))


def _resume(path: Path, config: TrainConfig, model: FewShotModel, optimizer: torch.optim.Optimizer,
            schedule: torch.optim.lr_scheduler.LRScheduler, sampler: EpisodeSampler,
            ranks: Ranks) -> tuple[int, list[dict[str, Any]]]:
    """The step and log history to go on from: a checkpoint's (loaded with ``weights_only``), or 0.

    Rank 0 takes over the skip counts summed over all ranks, and rewrites the log
    to the checkpoint's history (lines logged after it would be logged again); the
    others count afresh.
    """
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    identity = json.loads(state["identity"])
    if identity != config.identity():
        raise ValueError(
            f"{path} belongs to another run ({identity}); give a new --out folder or the same settings to resume"
        )
    model.load_trained_state(state["model"], str(path))
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    history = json.loads(state["history"])
    if ranks.main:
        sampler.skipped.update(state["skipped"])
        lines = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write(path.parent / LOG, lambda target: target.write_text(lines, encoding="utf-8"))
    return int(state["step"]), history


def _append_log(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def weights_digest(model: nn.Module) -> str:
    """A digest of every trainable tensor of ``model``: equal digests, equal weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_rank_digest(out: Path, ranks: Ranks, model: FewShotModel, step: int) -> None:
    """``<out>/ranks/rank<r>.json``: each rank's weight digest at the end, to check that ranks trained in step."""
    path = out / "ranks" / f"rank{ranks.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"rank": ranks.rank, "world": ranks.world, "step": step, "weights": weights_digest(model)})
    atomic_write(path, lambda target: target.write_text(record + "\n", encoding="utf-8"))


def _code_version() -> str:
    """The package version, with the git commit (and "-dirty" for uncommitted changes) when run from a checkout."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                                text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def _card(config: TrainConfig, volumes: list[TrainingVolume], ranks: Ranks, step: int,
          history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    intensities = torch.cat([v.images.reshape(-1)[:: 97] for v in volumes])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_version": _code_version(),
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
