"""An encoder prepared for its runtime ahead of the first run: converted (and quantized) into the user's cache.

On OpenVINO an encoder's trunk is converted the first time it runs (a minute or
more for LiteMedSAM on a small CPU, holding Python's GIL).  The widget runs this
module in a process of its own before the first run, so the GUI never waits::

    python -m napari_fewshot.core.prepare --encoder litemedsam --backend openvino --precision auto

It exits 0 once the converted files are in the cache (at once when they already
were), or says why not in one line and exits 1.  Its time is kept as a rate
(:func:`prepare_key`) for the next estimate.
"""

from __future__ import annotations

import argparse
import sys
import time

from .openvino_backend import is_converted
from .runtime import Runtime


def trunk_name(encoder: str, runtime: Runtime) -> str:
    """The name an encoder's trunk is converted under on ``runtime`` (see :class:`~.openvino_backend.OpenVINOTrunk`)."""
    return f"{encoder}-trunk" + ("-int8" if runtime.precision == "int8" else "")


def is_prepared(encoder: str, runtime: Runtime) -> bool:
    """Whether ``encoder`` needs no preparing on ``runtime``: it is not OpenVINO, or the converted (and, at int8,
    quantized) trunk is already in the cache.  Reads no weights: fast enough for the GUI thread."""
    return runtime.backend != "openvino" or is_converted(trunk_name(encoder, runtime))


def prepare_key(encoder: str, runtime: Runtime) -> str:
    """The key (:mod:`~.rates`) of the seconds preparing ``encoder`` on ``runtime`` took here."""
    from .rates import rate_key

    return rate_key(f"prepare {encoder}", runtime)


def prepare(encoder: str, runtime: Runtime) -> float:
    """Convert (and quantize) ``encoder``'s trunk for ``runtime`` into the cache; the seconds it took (kept as
    :func:`prepare_key`'s rate when it converted).  Raises what the conversion raises."""
    from .backends import BACKENDS
    from .rates import remember_rate
    from .store import DEFAULT_STORE

    start = time.perf_counter()
    converting = not is_prepared(encoder, runtime)
    BACKENDS[runtime.backend].trunk(DEFAULT_STORE.encoder(encoder, runtime.device), runtime)
    seconds = time.perf_counter() - start
    if converting:
        remember_rate(prepare_key(encoder, runtime), seconds)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_fewshot.core.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args(argv)
    try:
        from .backends import resolve_runtime

        runtime = resolve_runtime(args.backend, args.precision, "cpu")
        prepare(args.encoder, runtime)
        if not is_prepared(args.encoder, runtime):
            raise OSError("the converted model is not kept in the cache folder (set NAPARI_FEWSHOT_CACHE to a "
                          "writable folder)")
    except Exception as error:  # whatever broke: one line; the run converts in its own process as before
        lines = str(error).strip().splitlines()
        print(f"preparing {args.encoder} failed: {type(error).__name__}: {lines[0] if lines else ''}"[:300],
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
