"""Boundaries carried from the paintings by registration, inside the engine's mask: where it ends, it ends."""

import numpy as np

from conftest import dice
from napari_fewshot.core.follow import follow_anatomy
from napari_fewshot.core.preprocess import Preprocessing
from napari_fewshot.core.registration import SliceRegistration
from test_registration import moving_disks


def blocky(mask: np.ndarray, cell: int = 6) -> np.ndarray:
    """Each slice of ``mask`` on a coarse grid: a cell is in where half of it is (a prototype head's boundary)."""
    z, h, w = mask.shape
    cells = mask.reshape(z, h // cell, cell, w // cell, cell).mean(axis=(2, 4)) >= 0.5
    return cells.repeat(cell, axis=1).repeat(cell, axis=2)


def test_registration_draws_the_boundary_and_the_engine_says_where_the_structure_ends():
    disks = moving_disks(size=48, slices=10, step=1, radius=9)
    image = np.where(disks, 300.0, 30.0) + np.random.default_rng(2).normal(0, 3, disks.shape)
    engine = blocky(disks)
    engine[8:] = False  # the engine finds the structure on slices 0-7 only
    painted = np.zeros_like(disks)
    painted[2] = disks[2]
    followed = follow_anatomy(engine, painted, (2,), SliceRegistration(image, (1.0, 1.0), Preprocessing("MR")))
    assert dice(followed[:8], disks[:8]) > dice(engine[:8], disks[:8]) + 0.05
    assert not followed[8:].any()
    assert (followed[2] == engine[2]).all()  # a painted slice keeps what the engine has there (the painting)


def test_where_the_carried_mask_misses_the_engine_the_slice_is_empty_and_where_it_vanishes_carrying_stops():
    mask = np.zeros((7, 12, 12), bool)
    mask[:, 2:6, 2:6] = True
    mask[4, 2:6, 2:6], mask[4, 7:11, 7:11] = False, True  # on slice 4 the engine has it elsewhere: a look-alike
    painted = np.zeros_like(mask)
    painted[1] = mask[1]
    calls = []

    def carry(carried, source, target):
        calls.append((source, target, int(carried.sum())))
        shrunk = carried.copy()
        shrunk[np.nonzero(carried)[0].min()] = False  # loses a row per slice: a boundary unlike the engine's
        return shrunk

    followed = follow_anatomy(mask, painted, (1,), carry, grow=0)
    assert calls == [(1, 2, 16), (2, 3, 12), (3, 4, 8), (4, 5, 4), (1, 0, 16)]  # vanished on 5: no more carrying
    assert followed[2].sum() == 12 and followed[3].sum() == 8  # the carried mask, inside the engine's
    assert not followed[4].any()  # the two disagree where it is
    assert (followed[5:] == mask[5:]).all() and followed[0].sum() == 12


def test_several_paintings_each_slice_carried_from_its_nearest_painted_slice():
    mask = np.ones((9, 4, 4), bool)
    painted = np.zeros_like(mask)
    calls = []
    follow_anatomy(mask, painted | mask, (1, 7), lambda m, s, t: calls.append((s, t)) or m, grow=0)
    assert sorted(t for _, t in calls) == [0, 2, 3, 4, 5, 6, 8]
    assert all(abs(t - s) == 1 for s, t in calls) and (3, 4) in calls and (5, 4) not in calls


def test_between_the_outermost_paintings_the_carried_mask_is_taken_as_it_is():
    mask = np.zeros((9, 12, 12), bool)
    mask[:, 3:9, 3:9] = True
    mask[4] = False  # the engine misses the structure on a slice between the paintings
    mask[2, 3:9, 3:6] = False  # and draws it short on another
    painted = np.zeros_like(mask)
    painted[[1, 7], 3:9, 3:9] = True
    followed = follow_anatomy(mask, painted, (1, 7), lambda m, s, t: m, grow=0)
    assert (followed[1:8] == painted[1]).all()  # the paintings said it runs from slice 1 to 7
    grown = mask.copy()
    grown[8, 2:10, 2:10] = True  # past the outermost painting the engine still bounds it
    assert (follow_anatomy(grown, painted, (1, 7), lambda m, s, t: np.ones_like(m), grow=0)[8] == grown[8]).all()


def test_near_the_outermost_painting_the_carried_mask_is_not_bounded_but_the_engine_still_ends_it():
    mask = np.zeros((9, 12, 12), bool)
    mask[:7, 4:8, 4:8] = True  # the engine draws the structure small and ends it after slice 6
    painted = np.zeros_like(mask)
    painted[2, 3:9, 3:9] = True
    followed = follow_anatomy(mask, painted, (2,), lambda m, s, t: m, grow=0, near=2)
    assert all((followed[z] == painted[2]).all() for z in (0, 1, 3, 4))  # within two slices: as carried
    assert all((followed[z] == mask[z]).all() for z in (5, 6))  # further: inside the engine's mask
    assert not followed[7:].any()
