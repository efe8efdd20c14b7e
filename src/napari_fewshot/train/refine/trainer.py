"""The refine run (PCCS.md): one process, or one rank of ``torchrun`` (DistributedDataParallel).

Each step takes ``batch`` labelled and ``batch`` unlabelled slices (seeded by seed,
rank and step), each turned by a random multiple of 90° and flipped.  What the
step trains depends on the method:

- ``supervised``: ½ cross-entropy + ½ Dice on the labelled slices only;
- ``mean-teacher``: + the uncertainty-guided consistency with an EMA teacher that
  sees a noisy view, ramped up after ``warmup`` steps;
- ``pccs-frozen``: + the prototype losses after ``2 * warmup`` steps, with a
  teacher that never learns (the released code's behaviour);
- ``pccs``: everything, with the mean teacher.

Under ``torchrun`` gradients and the teacher's class prototypes are averaged
across ranks.  Checkpoints, resume, the log and the rank digests are the
self-supervised trainer's (:mod:`napari_fewshot.train.runs`).
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
import torch.nn.functional as F
from torch import nn

from ...core.intensity import Modality
from ...core.model import write_tensor_file
from ...core.preprocess import CT_WINDOW, MR_PERCENTILES, slice_aspect
from ...core.errors import SegmentationCancelled
from ...core.refined import MAX_SIZE, REFINED_FORMAT, segment_with_model
from ...core.unet import EMBEDDING, UNet
from ...io.write import check_output_folder
from ..runs import CHECKPOINT, LOG, MODEL, Ranks, append_log, code_version, load_checkpoint, save_checkpoint, start_ranks
from ..runs import check_number, write_rank_digest
from .data import RefineData, refine_data
from .losses import consistency_loss, entropy, ramp_up, supervised_loss, uncertainty_threshold
from .memory import PrototypeMemory
from .prototypes import Prototypes, prototype_contrastive_loss, slice_prototypes
from .teacher import ema_update, make_teacher

#: The refine methods, from the plainest to the full one.
METHODS = ("supervised", "mean-teacher", "pccs-frozen", "pccs")
#: How the uncertainty of each pixel is measured.
UNCERTAINTY = ("entropy", "mc-dropout")
#: Pixels per step that update the teacher's class prototypes.
MEMORY_PIXELS = 4096
#: Standard deviation and clip of the noise added to the teacher's view.
NOISE_STD, NOISE_CLIP = 0.1, 0.2

Progress = Callable[[str, int, int, dict[str, float]], None]


@dataclass
class RefineConfig:
    """One refine run; the defaults follow PCCS.md with fewer steps (a user waits for this one)."""

    images: list[str]
    labels: list[str]
    out: Path
    method: str = "pccs"
    steps: int = 2000
    batch: int = 8
    size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup: int = 0
    consistency: float = 0.1
    contrastive: float = 0.01
    auxiliary: float = 0.3
    uncertainty: str = "entropy"
    mc_passes: int = 4
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    modality: Modality | None = None
    command: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Refuse settings that cannot train, with the fix."""
        if not self.images or not self.labels:
            raise ValueError("give the images and the labels painted on them (--images PATH ... --labels PATH ...)")
        if len(self.labels) > len(self.images):
            raise ValueError(f"{len(self.labels)} label files for {len(self.images)} images; give one image per label file "
                             "(further images are unlabelled)")
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.uncertainty not in UNCERTAINTY:
            raise ValueError(f"unknown uncertainty '{self.uncertainty}'; choose one of {', '.join(UNCERTAINTY)}")
        if min(self.steps, self.batch, self.checkpoint_every, self.log_every, self.mc_passes) < 1 or self.warmup < 0:
            raise ValueError("--steps, --batch, --checkpoint-every, --log-every and MC passes must be at least 1")
        if not 16 <= self.size <= MAX_SIZE or self.size % 16:
            raise ValueError(f"--size must be a multiple of 16 (the U-Net halves it four times) up to {MAX_SIZE}; "
                             f"got {self.size}")
        check_number("lr", self.lr, 0.0)
        check_number("momentum", self.momentum, 0.0, 1.0, from_low=True)
        for name in ("weight_decay", "power", "consistency", "contrastive", "auxiliary"):
            check_number(name, getattr(self, name), 0.0, from_low=True)
        check_output_folder(self.out)

    @property
    def warmup_steps(self) -> int:
        """Supervised-only steps before the consistency (default a tenth of the run)."""
        return self.warmup or self.steps // 10

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on with the run that resumes it."""
        return {"images": self.images, "labels": self.labels, "method": self.method, "batch": self.batch,
                "size": self.size, "seed": self.seed, "uncertainty": self.uncertainty}


def refine(
    config: RefineConfig, progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
    data: RefineData | None = None,
) -> Path:
    """Run (or resume) the refine run ``config`` describes; returns the model file (``<out>/model.safetensors``).

    ``data``: the training slices, when they are at hand already (default: read
    ``config.images`` and ``config.labels`` with :func:`load_data`).
    ``progress("train", step, steps, {"loss": ..., "seconds_left": ...})`` after every
    logged step (rank 0).  ``cancel()`` is asked each step: when True the run
    writes a checkpoint and raises :class:`RefineCancelled` (a later run resumes).
    """
    config.check()
    config.out = Path(config.out)
    ranks, device = start_ranks(config.device)
    try:
        return _refine(config, data or load_data(config), ranks, device, progress if ranks.main else None, cancel)
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


class RefineCancelled(SegmentationCancelled):
    """The run was cancelled; its checkpoint holds the steps done."""


def refine_volume(
    image: np.ndarray,
    labels: np.ndarray,
    out: str | Path,
    *,
    spacing: tuple[float, float, float] | None = None,
    axis: int = 0,
    modality: Modality | None = None,
    method: str = RefineConfig.method,
    steps: int = RefineConfig.steps,
    batch: int = RefineConfig.batch,
    size: int = RefineConfig.size,
    device: str = RefineConfig.device,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, Path]:
    """Refine on the labelled slices of ``labels`` and the rest of ``image``, then segment ``image`` with the model.

    image, labels : ``[Z, Y, X]`` arrays of one shape (file units; label values),
    slices along ``axis``; spacing : mm per array axis.  The run's files go to
    ``out`` (a new folder for a new run: a checkpoint there is resumed).  Returns
    the labels the refined model predicts (its largest component per structure,
    every slice) and the model file.  The Python API of the widget's "Refine" action.
    """
    volume, painted = np.moveaxis(np.asarray(image), axis, 0), np.moveaxis(np.asarray(labels), axis, 0)
    data = refine_data([(volume, slice_aspect(spacing, axis))], [painted], size, modality)
    config = RefineConfig(images=["array"], labels=["array"], out=Path(out), method=method, steps=steps, batch=batch,
                          size=size, device=device, modality=data.modality, log_every=max(1, min(20, steps // 20)))
    model = refine(config, progress=progress, cancel=cancel, data=data)
    return segment_with_model(image, model, spacing=spacing, axis=axis, modality=data.modality, device=device,
                              cancel=cancel), model


def load_data(config: RefineConfig) -> RefineData:
    """The images and labels of ``config`` read from disk, as training slices (slices along the file's z)."""
    from ...io import check_same_grid, read_volume

    volumes, labels = [], []
    for index, path in enumerate(config.images):
        image = read_volume(path, kind="image")
        volumes.append((image.data, slice_aspect(tuple(image.geometry.spacing[::-1]), 0)))
        if index < len(config.labels):
            label = read_volume(config.labels[index], kind="labels")
            check_same_grid(label, image)
            labels.append(np.asarray(label.data))
    return refine_data(volumes, labels, config.size, config.modality)


def _refine(config: RefineConfig, data: RefineData, ranks: Ranks, device: torch.device, progress: Progress | None,
            cancel: Callable[[], bool] | None) -> Path:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    student = UNet(data.classes).to(device).train()
    teacher = make_teacher(student).train()
    memory = PrototypeMemory(data.classes, EMBEDDING, torch.Generator().manual_seed(config.seed)).to(device)
    trained: nn.Module = student
    if ranks.world > 1:
        # the projection head is unused until the prototype losses start
        trained = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None,
                                                      find_unused_parameters=True)
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    out = config.out
    step, history = 0, []
    state = load_checkpoint(out / CHECKPOINT, config.identity(), ranks)
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        memory.prototypes = state["memory"].to(device)
        step, history = int(state["step"]), state["history"]

    def checkpoint() -> None:
        if ranks.main:
            save_checkpoint(out / CHECKPOINT, config.identity(), step, {
                "student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "memory": memory.prototypes.cpu()}, history)
        ranks.barrier()

    totals: dict[str, float] = {}
    first_step, timer = step, time.perf_counter()
    while step < config.steps:
        if cancel is not None and cancel():
            checkpoint()
            raise RefineCancelled(f"cancelled at step {step} of {config.steps}; run again with the same --out to resume")
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (1 - step / config.steps) ** config.power
        rng = np.random.default_rng([config.seed, ranks.rank, step])
        losses = _step(config, data, trained, teacher, memory, ranks, rng, step, device)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if config.method in ("mean-teacher", "pccs"):
            ema_update(teacher, student, step)
        step += 1
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach())
        totals["n"] = totals.get("n", 0) + 1
        if step % config.log_every == 0 or step == config.steps:
            names = sorted(k for k in totals if k != "n")
            means = dict(zip(names, ranks.mean([totals[k] / totals["n"] for k in names])))
            per_step = (time.perf_counter() - timer) / (step - first_step)
            record = {"step": step, **means, "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - started, 1)}
            history.append(record)
            if ranks.main:
                append_log(out / LOG, record)
            totals = {}
            if progress is not None:
                progress("train", step, config.steps, {"loss": means["loss"], "seconds_left": per_step * (config.steps - step)})
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint()
    write_rank_digest(out, ranks, student, step)
    path = out / MODEL
    if ranks.main:
        write_tensor_file(path, student.state_dict(), _card(config, data, ranks, step, history, time.perf_counter() - started))
    ranks.barrier()
    return path


def _augmented(
    images: torch.Tensor, targets: torch.Tensor | None, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each slice (and its target) turned by a random multiple of 90° and flipped left-right half the time."""
    turned_images, turned_targets = [], []
    for i in range(len(images)):
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        for source, sink in ((images, turned_images), (targets, turned_targets)):
            if source is None:
                continue
            turned = torch.rot90(source[i], turns, dims=(-2, -1))
            sink.append(torch.flip(turned, dims=(-1,)) if flip else turned)
    return torch.stack(turned_images), (torch.stack(turned_targets) if targets is not None else None)


def _step(config: RefineConfig, data: RefineData, student: nn.Module, teacher: nn.Module, memory: PrototypeMemory,
          ranks: Ranks, rng: np.random.Generator, step: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The losses of one step (``loss`` is their weighted sum)."""
    b = config.batch
    labelled = rng.integers(len(data.labelled), size=b)
    unlabelled = rng.integers(len(data.unlabelled), size=b) if len(data.unlabelled) else labelled
    x_l, y_l = _augmented(data.labelled[labelled], data.targets[labelled], rng)
    x_u, _ = _augmented((data.unlabelled if len(data.unlabelled) else data.labelled)[unlabelled], None, rng)
    x, y_l = torch.cat([x_l, x_u]).to(device), y_l.to(device)
    logits, embedding = student(x)
    supervised = supervised_loss(logits[:b], y_l)
    losses = {"loss": supervised, "supervised": supervised}
    if config.method == "supervised" or step < config.warmup_steps:
        return losses
    generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
    noise = (torch.randn(x.shape, generator=generator, device=device) * NOISE_STD).clamp(-NOISE_CLIP, NOISE_CLIP)
    with torch.no_grad():
        teacher_logits, teacher_embedding = teacher(x + noise)
    student_p, teacher_p = logits.softmax(dim=1), teacher_logits.softmax(dim=1)
    threshold = uncertainty_threshold(step, config.steps)
    ramp = ramp_up(step - config.warmup_steps, config.warmup_steps * 4, 1.0)
    consistency = consistency_loss(student_p, teacher_p, entropy(teacher_p), threshold)
    losses["consistency"] = consistency
    losses["loss"] = losses["loss"] + ramp * config.consistency * consistency
    if config.method == "mean-teacher" or step < 2 * config.warmup_steps:
        return losses
    uncertainty = _uncertainty(config, student_p, teacher, x, noise)
    quarter = embedding.shape[-2:]
    down = F.interpolate(torch.stack([student_p.detach(), teacher_p]).flatten(0, 1), size=quarter, mode="bilinear",
                         align_corners=False).unflatten(0, (2, len(x)))
    unc = F.interpolate(uncertainty[:, None], size=quarter, mode="bilinear", align_corners=False)[:, 0]
    pseudo = down[1].argmax(dim=1)
    found = [slice_prototypes(embedding[i], pseudo[i].cpu().numpy(), unc[i], data.classes, threshold)
             for i in range(b, len(x))]
    contrastive = prototype_contrastive_loss(Prototypes.cat(found))
    agree = (down[0].argmax(dim=1) == pseudo).flatten()
    pixels = agree.nonzero().squeeze(1)
    pixels = pixels[torch.randperm(len(pixels), generator=generator, device=device)[:MEMORY_PIXELS]]
    student_pixels = embedding.permute(0, 2, 3, 1).reshape(-1, EMBEDDING)[pixels]
    teacher_pixels = teacher_embedding.permute(0, 2, 3, 1).reshape(-1, EMBEDDING)[pixels]
    targets = memory.update(teacher_pixels, student_pixels, pseudo.flatten()[pixels])
    ranks.average_(memory.prototypes)
    memory.prototypes = F.normalize(memory.prototypes, dim=-1)
    auxiliary = memory.auxiliary_loss(student_pixels, targets) if len(pixels) else embedding.sum() * 0.0
    losses.update(contrastive=contrastive, auxiliary=auxiliary)
    losses["loss"] = losses["loss"] + ramp * (config.contrastive * contrastive + config.auxiliary * auxiliary)
    return losses


def _uncertainty(config: RefineConfig, student_p: torch.Tensor, teacher: nn.Module, x: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
    """Per-pixel uncertainty ``[N, H, W]`` in nats: the student's entropy, or the entropy of the mean of
    ``mc_passes`` teacher passes with dropout on."""
    if config.uncertainty == "entropy":
        return entropy(student_p.detach())
    with torch.no_grad():
        mean = torch.stack([teacher(x + noise)[0].softmax(dim=1) for _ in range(config.mc_passes)]).mean(dim=0)
    return entropy(mean)


def _card(config: RefineConfig, data: RefineData, ranks: Ranks, step: int, history: list[dict[str, Any]],
          seconds: float) -> dict[str, Any]:
    return {
        "format": REFINED_FORMAT,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "command": " ".join(config.command) or None,
        "method": config.method,
        "values": list(data.values),
        "modality": data.modality,
        "size": config.size,
        "steps": step,
        "ranks": ranks.world,
        "seconds": round(seconds, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "data": {"images": config.images, "labels": config.labels, "labelled_slices": len(data.labelled),
                 "unlabelled_slices": len(data.unlabelled)},
        "preprocessing": {"ct_window_hu": list(CT_WINDOW), "mr_percentiles": list(MR_PERCENTILES),
                          "input": "slices padded to a physical square, resized, scaled to [0, 1]"},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                   if k not in ("images", "labels", "out", "command")},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
