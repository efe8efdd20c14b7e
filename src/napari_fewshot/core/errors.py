"""Errors of the engine: bad input (with its fix) and a run the user cancelled."""

from __future__ import annotations


class SegmentationError(Exception):
    """Input the engine cannot segment; the message names the problem and the fix."""


class SegmentationCancelled(Exception):
    """``cancel()`` returned True: the run stopped and returned nothing."""
