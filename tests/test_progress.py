"""A run's progress in slices and its time left: counted stages, plans that change, rates per stage."""

from __future__ import annotations

import time

from napari_fewshot.core.progress import RunProgress


def test_done_and_total_count_only_the_counted_stages_and_a_plan_may_change():
    told = []
    clock = RunProgress(lambda *a: told.append(a))
    assert told == []  # nothing told before there is a plan
    clock.plan(encode=10, head=10, draw=10)
    assert told[-1] == (0, 20, None)  # encoding takes time but is not counted; no rate yet
    clock.run("encode", 4)
    assert told[-1][:2] == (0, 20)
    clock.plan(head=6, draw=6)  # the walk found the structure shorter
    assert told[-1][:2] == (0, 12)
    clock.run("head", 8)  # more done than planned: the total never falls below what is done
    assert told[-1][:2] == (8, 14)


def test_seconds_left_use_each_stages_own_rate_after_its_first_step():
    clock = RunProgress(None)
    clock.plan(encode=12, head=12, draw=10)
    time.sleep(0.3)
    clock.run("encode", 1)  # the first step warms up (a model loading): not timed
    clock.run("head", 1)
    assert clock.seconds_left() is None  # no stage has a rate yet
    time.sleep(0.2)
    clock.run("encode", 2)  # ~0.1 s per slice
    assert clock.seconds_left() is None  # the head and drawing have no rate yet
    started = time.perf_counter()
    time.sleep(0.05)
    clock.sample("draw", time.perf_counter() - started, 1)  # drawing's rate, measured apart before it runs
    time.sleep(0.02)
    clock.run("head", 2)  # ~0.01 s per slice
    left = clock.seconds_left()
    # 9 slices to encode at ~0.1 s, 9 to predict at ~0.01 s, 10 to draw at 0.05 s
    assert 0.9 + 0.09 + 0.5 <= left < 1.5 * (0.9 + 0.09 + 0.5)
    clock.run("encode", 9), clock.run("head", 9), clock.run("draw", 10)
    assert clock.seconds_left() == 0.0


def test_an_encoding_run_counts_its_encoded_slices():
    told = []
    clock = RunProgress(lambda *a: told.append(a), counted=("encode",))
    clock.plan(encode=3)
    clock.run("encode", 1)
    clock.run("encode", 2)
    assert told == [(0, 3, None), (1, 3, None), (3, 3, 0.0)]


def test_a_rate_measured_before_the_run_stands_in_until_the_run_times_its_own():
    clock = RunProgress(None)
    clock.plan(encode=5, head=3)
    clock.assume("encode", 0.5)  # e.g. from an earlier run's encoding
    clock.run("head", 1)  # warms up
    assert clock.seconds_left() is None  # the head has no rate yet
    time.sleep(0.05)
    clock.run("head", 1)
    assert 2.5 + 0.05 <= clock.seconds_left() < 2.5 + 0.5
    clock.run("encode", 1)  # warms up: the assumed rate holds
    assert clock.seconds_left() >= 4 * 0.5
    time.sleep(0.2)
    clock.run("encode", 2)  # its own rate (~0.1 s per slice) replaces the assumed one
    assert clock.seconds_left() < 0.5


def test_a_bar_only_moves_forward_in_at_most_the_slices_there_are_and_says_about_while_estimated():
    from napari_fewshot.core.progress import ForwardProgress

    now = [0.0]
    bar = ForwardProgress(112, expected_seconds=300.0, clock=lambda: now[0])
    # what a segmentation told on a 112-slice scan (two structures: up to a slice per structure and stage)
    told = [(0, 138, None), (10, 200, None), (49, 200, 250.0), (49, 164, 240.0), (60, 234, 230.0), (80, 150, None),
            (150, 234, 20.0), (150, 151, 1.0), (151, 151, 0.0)]
    shown = []
    for done, total, left in told:
        now[0] += 10.0
        shown.append(bar(done, total, left))
    fractions, dones = [s.fraction for s in shown], [s.done for s in shown]
    assert fractions == sorted(fractions) and dones == sorted(dones)  # never backwards (49/200 then 49/164 included)
    assert all(s.done <= s.total <= 112 for s in shown)  # never more than the scan's slices, never below those done
    assert all(s.about for s in shown[:-1]) and not shown[-1].about and shown[-1].done == shown[-1].total == 112
    # no rate told yet: the time left is the time measured before, less the time since the bar began
    assert shown[0].seconds_left == 290.0 and shown[2].seconds_left == 250.0 and shown[5].seconds_left == 240.0
    assert bar.text() == "112 of 112 slices"
    bar = ForwardProgress(24, estimate=False)  # an encoding: its total is a count, never "about"
    bar(3, 24, 9.0)
    assert bar.text() == "3 of 24 slices, about 9 s left"
    times = iter([0.0, 60.0])
    late = ForwardProgress(expected_seconds=5.0, clock=lambda: next(times))
    assert late(1, 4).seconds_left is None  # past the time expected: not known, never a negative time
