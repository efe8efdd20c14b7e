"""The crude fusion ``follow_anatomy`` is measured against: the engine says where, registration draws.

Runs ``napari-fewshot evaluate`` with the arguments after ``--``, where a method
named ``ENGINE+registered`` (``alpnet+nofollow+registered``) is the engine method
``ENGINE`` with, on every slice where it predicts the structure, the registration
peer's mask instead, where that has one:

    .venv/bin/python benchmarks/registered.py -- evaluate --case ../shared/data/abdomen-ct all \\
        --case ../shared/data/abdomen-mr all --case ../shared/data/brain-mr-mni all --protocols one-largest \\
        --methods alpnet alpnet+nofollow alpnet+nofollow+registered --repeats 1 --device cpu --cache DIR --out DIR
"""

from __future__ import annotations

import sys

import numpy as np

from napari_fewshot.cli import main as cli_main
from napari_fewshot.evaluation.cases import Task
from napari_fewshot.evaluation.methods import Context, EngineMethod, Method, RegistrationMethod, register_method

SUFFIX = "+registered"


def registered_inside(prediction: np.ndarray, registered: np.ndarray) -> np.ndarray:
    """``prediction`` ``[Z, Y, X]`` bool with each slice that holds it replaced by ``registered``'s (same shape)
    where that slice of ``registered`` is not empty: where and whether from one, the boundary from the other."""
    fused = prediction.copy()
    use = prediction.any(axis=(1, 2)) & registered.any(axis=(1, 2))
    fused[use] = registered[use]
    return fused


class RegisteredInside(Method):
    """An engine method whose slices registration draws (same volume only)."""

    def __init__(self, name: str) -> None:
        self.name, self.engine = name, EngineMethod(name.removesuffix(SUFFIX))

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        return registered_inside(self.engine(task, context), RegistrationMethod()(task, context))


def main(argv: list[str]) -> int:
    arguments = argv[argv.index("--") + 1 :] if "--" in argv else argv
    for name in arguments:
        if name.endswith(SUFFIX):
            register_method(name, lambda name=name: RegisteredInside(name))
    return cli_main(arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
