"""A run's progress in slices, and the seconds it has left, from the rates it measured so far.

A segmentation handles each slice in stages that cost different times: encoding
(only where the features are not cached), the head's prediction, the decoder's
boundaries with the clean-up, and the boundaries carried by registration.
:class:`RunProgress` counts the slices each stage has done and plans to do (plans
change: the outward walk learns how far a structure goes as it walks), times each
stage, and tells the caller's ``progress(done, total, seconds_left)`` after every
step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: ``progress(done, total, seconds_left)``: slices done of the slices planned; the seconds left once they can be
#: estimated (None before).
Progress = Callable[[int, int, "float | None"], None]

#: The stages a slice goes through, in order: encoded, predicted by the head, its boundary drawn by the decoder,
#: its boundary carried from the neighbouring slice by registration.
STAGES = ("encode", "head", "draw", "follow")


class RunProgress:
    """Slices done and planned per stage, and the seconds left at each stage's rate so far.

    progress : told ``(done, total, seconds_left)`` after every change (None: told nothing).
    counted : the stages whose slices ``done`` and ``total`` count (the others only take time).

    ``run(stage, n)`` says ``n`` more slices finished ``stage``; the time since the
    previous step is that stage's.  A stage's first step is not timed: it warms the
    runtime up, and in a segmentation it is the painted slices alone, with the
    head's work on the painting.  ``plan(stage=n, ...)`` sets how many slices each
    stage will handle in all; ``sample(stage, seconds, n)`` gives a rate measured apart
    (such as the decoder's on the painted slices) for a stage that has not run yet;
    ``assume(stage, seconds_per_slice)`` a rate measured before the run.
    """

    def __init__(self, progress: Progress | None, counted: tuple[str, ...] = ("head", "draw", "follow")) -> None:
        self.progress, self.counted = progress, counted
        self.planned = dict.fromkeys(STAGES, 0)
        self.finished = dict.fromkeys(STAGES, 0)
        self._steps: dict[str, list[tuple[float, int]]] = {stage: [] for stage in STAGES}  # (seconds, slices)
        self._assumed: dict[str, float] = {}
        self._warmed: set[str] = set()  # the stages whose first step has run
        self._last = time.perf_counter()

    @property
    def done(self) -> int:
        """Slices done in the counted stages."""
        return sum(self.finished[stage] for stage in self.counted)

    @property
    def total(self) -> int:
        """Slices planned in the counted stages (never below those done)."""
        return sum(max(self.planned[stage], self.finished[stage]) for stage in self.counted)

    def run(self, stage: str, slices: int) -> None:
        """``slices`` more slices finished ``stage``; the seconds since the previous step were spent on them."""
        now = time.perf_counter()
        if stage in self._warmed:
            self._steps[stage].append((max(now - self._last, 0.0), slices))
        self._warmed.add(stage)
        self._last = now
        self.finished[stage] += slices
        self._tell()

    def plan(self, **slices: int) -> None:
        """Each stage named will handle that many slices in all (those done included): ``plan(head=40)``."""
        changed = {stage: n for stage, n in slices.items() if n != self.planned[stage]}
        if changed:
            self.planned.update(changed)
            self._tell()

    def sample(self, stage: str, seconds: float, slices: int) -> None:
        """``stage`` took ``seconds`` for ``slices`` slices outside this run's count (a rate before it runs)."""
        self._steps[stage].append((seconds, slices))
        self._last += seconds  # those seconds are not the next step's

    def assume(self, stage: str, seconds_per_slice: float) -> None:
        """``stage``'s rate (measured before this run, e.g. by an earlier one) until this run has timed it."""
        self._assumed[stage] = seconds_per_slice

    def advance(self, stage: str) -> Callable[[int], None]:
        """``advance(n)``: :meth:`run` of ``stage``, for the functions that report steps as a count of slices."""
        return lambda slices: self.run(stage, slices)

    def seconds_left(self) -> float | None:
        """The slices left in each stage times its seconds per slice (timed, sampled, or else assumed); None
        while a stage with slices left has no rate."""
        left = 0.0
        for stage in STAGES:
            remaining = self.planned[stage] - self.finished[stage]
            steps = self._steps[stage]
            slices = sum(n for _, n in steps)
            if remaining <= 0:
                continue
            if slices:
                left += remaining * sum(seconds for seconds, _ in steps) / slices
            elif stage in self._assumed:
                left += remaining * self._assumed[stage]
            else:
                return None
        return left

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total, self.seconds_left())
