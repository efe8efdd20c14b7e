"""What every training run of this package shares: ranks under ``torchrun``, checkpoints, the log, digests.

A run writes into its ``out`` folder: ``checkpoint.pt`` (everything the next step
depends on, written atomically; read back with ``weights_only``, so loading runs
no code), ``log.jsonl`` (one record per logged step) and ``ranks/rank<r>.json``
(each rank's weight digest at the end, to check that ranks trained in step).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import __version__
from ..core.device import resolve_device
from ..io.errors import VolumeWriteError
from ..io.write import atomic_write

#: The checkpoint, model and log file names inside a run's folder.
CHECKPOINT, MODEL, LOG = "checkpoint.pt", "model.safetensors", "log.jsonl"


class CheckpointError(ValueError):
    """A run's checkpoint cannot be resumed from; the message says how to start over."""


def check_number(name: str, value: float, low: float, high: float = math.inf, *, from_low: bool = False,
                 to_high: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a finite number above ``low`` (or ``from_low``: at
    least ``low``) and below ``high`` (or ``to_high``: at most ``high``); NaN and infinity are refused."""
    above = low <= value if from_low else low < value
    below = value <= high if to_high else value < high
    if not (above and below and math.isfinite(value)):
        bounds = f"{'from' if from_low else 'above'} {low:g}"
        if high != math.inf:
            bounds += f" {'up to' if to_high else 'below'} {high:g}"
        raise ValueError(f"{name} must be a finite number {bounds}; got {value}")


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
        self.average_(tensor)
        return tensor.tolist()

    def average_(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` in place by its mean over all ranks."""
        if self.world > 1:
            dist.all_reduce(tensor)
            tensor /= self.world

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


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Add ``record`` to the log ``path`` as a line of JSON; :class:`VolumeWriteError` when it cannot (a full disk:
    a resumed run rewrites the log from its checkpoint)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
    except OSError as error:
        raise VolumeWriteError(
            f"{path}: could not be written ({error.strerror}); the run stopped. Check that the disk has space and the "
            "folder is writable, then run it again: it resumes from its last checkpoint"
        ) from error


def weights_digest(model: nn.Module) -> str:
    """A digest of every trainable tensor of ``model``: equal digests, equal weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_rank_digest(out: Path, ranks: Ranks, model: nn.Module, step: int) -> None:
    """``<out>/ranks/rank<r>.json``: each rank's weight digest at the end, to check that ranks trained in step."""
    path = out / "ranks" / f"rank{ranks.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"rank": ranks.rank, "world": ranks.world, "step": step, "weights": weights_digest(model)})
    atomic_write(path, lambda target: target.write_text(record + "\n", encoding="utf-8"))


def code_version() -> str:
    """The package version, with the git commit (and "-dirty" for uncommitted changes) when run from a checkout."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                                text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__



def save_checkpoint(path: Path, identity: dict[str, Any], step: int, state: dict[str, Any],
                    history: list[dict[str, Any]]) -> None:
    """Write ``state`` (tensors, state dicts, numbers) with the run's ``identity``, ``step`` and log ``history``."""
    record = {"identity": json.dumps(identity), "step": step, "history": json.dumps(history), **state}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda target: torch.save(record, target))


def load_checkpoint(path: Path, identity: dict[str, Any], ranks: Ranks) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``step`` and ``history`` decoded), or None when there is none.

    A checkpoint of another run (another ``identity``) is refused.  Rank 0 rewrites
    the log to the checkpoint's history (lines logged after it would be logged again).
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        theirs = json.loads(state["identity"])
        state["history"] = json.loads(state["history"])
        int(state["step"])
    except Exception as error:  # torch raises many types for damaged files; its text would advise unsafe loading
        raise CheckpointError(
            f"{path} is damaged, or not a checkpoint napari-fewshot wrote ({type(error).__name__}); the run cannot "
            f"resume from it. Delete it (or move it away) to start the run over from step 0, or give a new --out folder."
        ) from None
    if theirs != identity:
        raise CheckpointError(
            f"{path} belongs to another run ({theirs}); give a new --out folder or the same settings to resume"
        )
    if ranks.main:
        lines = "".join(json.dumps(record) + "\n" for record in state["history"])
        atomic_write(path.parent / LOG, lambda target: target.write_text(lines, encoding="utf-8"))
    return state
