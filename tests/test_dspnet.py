"""DSPNet's pieces against values computed by hand (or by a plain numpy transcription)."""

import numpy as np
import pytest
import torch

from napari_fewshot.core.heads.dspnet import (
    BCMA,
    DSPNetHead,
    fspa_prototype,
    place_seeds,
    refine_support,
    seed_count,
    soft_clusters,
    tridiagonal,
)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_refinement_adds_the_support_features_weighted_by_their_cosine_to_the_query():
    # support positions (1, 0) and (0, 1); query positions (1, 0) and (1, 1)
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    query = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    refined = refine_support(support, query)
    assert refined.shape == (1, 1, 2, 1, 2)
    r = 2**-0.5
    cosine = np.array([[1.0, r], [0.0, r]])  # cos(S_i, Q_j)
    attended = softmax(cosine) @ np.array([[1.0, 0.0], [0.0, 1.0]])  # rows: sum_j A_ij S_j
    expected = np.array([[1.0, 0.0], [0.0, 1.0]]) + attended  # [position, channel]
    np.testing.assert_allclose(refined[0, 0, :, 0].T.numpy(), expected, rtol=1e-5)


def test_seed_count_is_area_over_100_on_the_reference_grid_capped_at_5():
    mask = torch.zeros(1, 32, 32)
    mask[0, :10, :25] = 1.0  # 250 positions -> round(2.5) = 2
    assert seed_count(mask) == 2
    mask[0, :, :] = 1.0
    assert seed_count(mask) == 5
    big = torch.zeros(1, 64, 64)
    big[0, :20, :20] = 1.0  # 400 positions of 64x64 = 100 of 32x32 -> 1
    assert seed_count(big) == 1
    assert seed_count(big * 0.4) == 0  # soft values of 0.5 or less are not inside


def test_seeds_go_to_the_deepest_points_one_by_one():
    inside = torch.zeros(2, 12, 12, dtype=torch.bool)
    inside[0, 2:9, 2:9] = True  # 7x7 square: centre (5, 5), 4 from the outside
    inside[1, 3:8, 3:8] = True  # 5x5 square on another slice: centre (5, 5), 3 from the outside
    seeds = place_seeds(inside, 2)
    positions = inside.nonzero()[seeds].tolist()
    # the second seed is the 5x5 centre: every point of the 7x7 square is within 2.9 of the first seed or its edge
    assert positions == [[0, 5, 5], [1, 5, 5]]


def test_soft_clustering_matches_a_plain_transcription():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 6, 3, generator=generator) * 10
    coords = torch.tensor([[0, 0], [0, 1], [1, 0], [5, 5], [5, 6], [6, 5]], dtype=torch.float32)
    centres = soft_clusters(features, coords, torch.tensor([0, 3]))

    f, xy = features[0].double().numpy(), coords.double().numpy()
    c, c_xy = f[[0, 3]], xy[[0, 3]]
    for _ in range(10):
        d = np.sqrt(((f[:, None] - c[None]) ** 2).sum(-1) / 100 + ((xy[:, None] - c_xy[None]) ** 2).sum(-1) / 100)
        w = np.exp(-d) / np.exp(-d).sum(axis=0, keepdims=True)  # normalised over positions
        c, c_xy = w.T @ f, w.T @ xy
    np.testing.assert_allclose(centres[0].numpy(), c, rtol=1e-4, atol=1e-4)


def test_bcma_by_hand():
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # C=3 channels, N=2 windows
    bcma = BCMA(channels=3, alpha=0.0)
    # alpha 0: P' = Lambda P with Lambda tridiagonal (0.3, 0.8, 0.3)
    expected = [[0.8, 0.3], [0.6, 1.1], [0.8, 1.1]]
    np.testing.assert_allclose(bcma(candidates).detach().numpy(), expected, rtol=1e-6)

    bcma = BCMA(channels=3, alpha=0.2)
    p = candidates.double().numpy()
    band = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    lam = np.array([[0.8, 0.3, 0], [0.3, 0.8, 0.3], [0, 0.3, 0.8]])
    expected = ((1 + 0.2 * band * softmax(p @ p.T)) * lam) @ p
    np.testing.assert_allclose(bcma(candidates).detach().numpy(), expected, rtol=1e-6)
    assert torch.equal(tridiagonal(3, 0.3, 0.8, 0.3), bcma.mixing.detach())
    assert [name for name, _ in bcma.named_parameters()] == ["mixing"]  # Lambda is learnable


def test_fspa_with_fewer_than_two_seeds_is_the_masked_average_of_the_refined_support():
    refined = torch.randn(2, 1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 32, 32)
    mask[0, 3:10, 3:10] = 1.0  # 49 positions: round(0.49) = 0 seeds
    expected = (refined[:, 0] * mask).sum(dim=(2, 3)) / (mask.sum() + 1e-5)
    # an average near zero differs from the summation order's rounding by more than rtol alone allows
    np.testing.assert_allclose(fspa_prototype(refined, mask).numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    mask[0, 3:20, 3:20] = 1.0  # 289 positions: 3 seeds, the attended centres change the prototype
    prototype = fspa_prototype(refined, mask)
    assert prototype.shape == (2, 4) and torch.isfinite(prototype).all()
    assert not torch.allclose(prototype, (refined[:, 0] * mask).sum(dim=(2, 3)) / mask.sum())


@pytest.mark.parametrize("n_support", [1, 2])
def test_dspnet_prototypes_are_per_query(n_support):
    head = DSPNetHead(channels=8)
    support, query = torch.randn(n_support, 8, 32, 32), torch.randn(3, 8, 32, 32)
    mask = torch.zeros(n_support, 32, 32)
    mask[:, 4:24, 6:20] = 1.0
    background, foreground = head.prototypes(support, mask, query)
    assert background.shape[0] == foreground.shape[0] == 3
    assert not torch.allclose(foreground[0], foreground[1])  # each query refines the support its own way
    mask[:] = 1.0  # no background window: the refined support's global background stands in
    background, _ = head.prototypes(support, mask, query)
    assert background.shape[:2] == (3, 1)
