"""Seconds per encoded slice measured on this machine, per encoder and runtime, for the widget's estimates.

A rate is remembered in this process and kept in the user's cache folder
(``rates.json``: a flat JSON object of numbers, read without executing anything),
so that the first run of a new session is estimated from this machine's speed,
never from a constant measured elsewhere.  A cache that cannot be read or written
only loses the estimate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .user_cache import save_in_cache, user_cache_folder

#: The file the rates are kept in, inside the user's cache folder.
RATES_FILE = "rates.json"

_measured: dict[str, float] = {}


def rate_key(encoder: str, runtime: object) -> str:
    """The key of a rate: the encoder and the runtime as printed (backend, precision, device, threads)."""
    return f"{encoder} on {runtime}"


def _path() -> Path:
    return user_cache_folder(RATES_FILE)


def _kept() -> dict[str, float]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and math.isfinite(v) and v > 0}


def measured_rate(key: str) -> float | None:
    """The seconds per slice measured for ``key`` (:func:`rate_key`) in this process, else in an earlier one."""
    if key not in _measured:
        kept = _kept().get(key)
        if kept is None:
            return None
        _measured[key] = kept
    return _measured[key]


def remember_rate(key: str, seconds_per_slice: float) -> None:
    """Keep ``seconds_per_slice`` measured for ``key`` in this process and in the user's cache folder."""
    if not (math.isfinite(seconds_per_slice) and seconds_per_slice > 0):
        return
    _measured[key] = seconds_per_slice
    rates = {**_kept(), key: round(seconds_per_slice, 4)}
    save_in_cache(_path(), lambda path: path.write_text(json.dumps(rates, indent=1)), "the measured encoding speed")
