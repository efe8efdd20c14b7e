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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Shown:
    """What a bar shows: ``done`` of ``total`` slices (``about``: the total is an estimate), the ``fraction`` done
    and the ``seconds_left`` (None: not known yet)."""

    done: int
    total: int
    fraction: float
    about: bool
    seconds_left: float | None


class ForwardProgress:
    """A run's ``progress(done, total, seconds_left)`` as a bar that only moves forward.

    A segmentation's total changes as it goes (the outward walk learns how far each
    structure reaches) and counts a slice once per stage and structure.  What is
    shown: the fraction of the work done, never less than shown before; a total in
    slices of at most ``most`` (the slices the run can encode: the scan's, plus the
    support scan's when it is another), never below the slices shown done, called
    ``about`` while the run's plan can still change (``estimate``); and the seconds
    left, from the run's rates once it has them, else from ``expected_seconds`` (a
    run's time measured before it) less the time since the bar began.

    most : the most slices the run can handle (None: as many as it reports).
    estimate : whether the run's totals are estimates (a segmentation's), not counts fixed beforehand (an encoding's).
    expected_seconds : the run's whole time as measured before (None: not known).
    clock : seconds now (``time.perf_counter``; a test gives its own).
    """

    def __init__(self, most: int | None = None, *, estimate: bool = True, expected_seconds: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.most, self.estimate, self.expected, self.clock = most, estimate, expected_seconds, clock
        self.started = clock()
        self.shown = Shown(0, most or 0, 0.0, estimate, expected_seconds)

    def __call__(self, done: int, total: int, seconds_left: float | None = None) -> Shown:
        """What to show after the run said ``done`` of ``total`` with ``seconds_left``."""
        before = self.shown
        fraction = min(max(done / total if total > 0 else 0.0, before.fraction), 1.0)
        count = total if self.most is None else min(total, self.most)
        shown_done = max(round(fraction * count), before.done)
        count = max(count, shown_done)
        if seconds_left is None and self.expected is not None:
            left = self.expected - (self.clock() - self.started)
            seconds_left = left if left > 0 else None  # past what was expected: no longer known
        self.shown = Shown(shown_done, count, fraction, self.estimate and fraction < 1.0, seconds_left)
        return self.shown

    def text(self, unit: str = "slices") -> str:
        """``"12 of about 80 slices, about 40 s left"`` for what is shown now."""
        shown = self.shown
        left = "" if shown.seconds_left is None or shown.fraction >= 1.0 else f", about {duration(shown.seconds_left)} left"
        return f"{shown.done} of {'about ' if shown.about else ''}{shown.total} {unit}{left}"


def duration(seconds: float) -> str:
    """``seconds`` in words: whole seconds up to 90, then minutes."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
