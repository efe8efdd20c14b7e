"""Prototype heads behind one interface, registered by name (see :class:`Head`)."""

from __future__ import annotations

from collections.abc import Callable

from .alpnet import ALPNetHead
from .base import Head, HeadOutput
from .dspnet import DSPNetHead
from .panet import PANetHead

HEADS: dict[str, Callable[[], Head]] = {"dspnet": DSPNetHead, "alpnet": ALPNetHead, "panet": PANetHead}
#: Measured best on abdomen-ct and brain-mr-mni, untrained and with the shipped trained models alike
#: (docs/experiments/01-trained-vs-untrained-heads.md); DSPNet comes close only once trained.
DEFAULT_HEAD = "alpnet"


def build_head(name: str) -> Head:
    """The head registered as ``name``, in eval mode; ``KeyError`` lists the known names."""
    if name not in HEADS:
        raise KeyError(f"unknown head '{name}'; choose one of {', '.join(HEADS)}")
    return HEADS[name]().eval()


__all__ = ["DEFAULT_HEAD", "HEADS", "Head", "HeadOutput", "build_head"]
