"""Stopping a run promptly: ``cancel()`` is asked between batches and inside models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from .errors import SegmentationCancelled

CancelCheck = Callable[[], bool]


def check_cancel(cancel: CancelCheck | None) -> None:
    """Raise :class:`SegmentationCancelled` when ``cancel()`` returns True."""
    if cancel is not None and cancel():
        raise SegmentationCancelled("segmentation cancelled")


@contextmanager
def cancellable(model: nn.Module, cancel: CancelCheck | None) -> Iterator[None]:
    """Ask ``cancel()`` before every submodule of ``model`` runs, within this block.

    A large encoder takes seconds per batch on a CPU; checking at each layer lets a
    run stop within a fraction of that.
    """
    if cancel is None:
        yield
        return
    handles = [module.register_forward_pre_hook(lambda *_: check_cancel(cancel)) for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
