import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_fewshot.core.encoders import build_encoder
from napari_fewshot.core.heads import HEADS, build_head
from napari_fewshot.core.preprocess import to_encoder_slices
from napari_fewshot.core.prototypes import COSINE_SCALE, class_score, cosine_scores, local_prototypes, masked_average


def test_masked_average_by_hand():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0] = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    features[0, 1] = 2.0
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    np.testing.assert_allclose(masked_average(features, mask).numpy(), [[2.0, 2.0]], rtol=1e-4)


def test_local_prototypes_keep_only_windows_over_95_percent():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # one whole 2x2 window
    mask[0, 2, 2] = 1.0  # a quarter of another: not a prototype
    prototypes = local_prototypes(features, mask, 2)
    assert prototypes.shape == (1, 1)
    assert prototypes.item() == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_class_score_of_one_prototype_is_its_scaled_cosine():
    query = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)
    score = class_score(cosine_scores(query, torch.tensor([[1.0, 0.0]])))
    np.testing.assert_allclose(score.numpy().ravel(), [COSINE_SCALE, COSINE_SCALE / 2**0.5], rtol=1e-5)


def disc_slices(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices [n, size, size] in [0, 1]: textured background, a bright disc drifting right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for k in range(n):
        mask = (yy - 30) ** 2 + (xx - 24 - 2 * k) ** 2 < 12**2
        image = 0.3 + 0.1 * np.sin(xx / 2.0) + rng.normal(0, 0.03, (size, size))
        image[mask] = 0.8 + rng.normal(0, 0.03, mask.sum())
        images.append(image)
        masks.append(mask)
    return torch.tensor(np.array(images), dtype=torch.float32), torch.tensor(np.array(masks))


@pytest.mark.parametrize("name", HEADS)
def test_head_recovers_the_structure_from_one_slice(name):
    images, masks = disc_slices()
    encoder, head = build_encoder("tiny"), build_head(name)
    with torch.no_grad():
        features = encoder(to_encoder_slices(images, encoder.input_size))
        small_mask = F.interpolate(masks[:1, None].float(), size=features.shape[-2:], mode="bilinear")[:, 0]
        output = head(features[:1], small_mask, features[1:])
    assert output.logits.shape == (3, 2, 32, 32) and output.attention.shape == (3, 32, 32)
    assert output.logits.dtype == torch.float32
    assert output.attention.min() >= -1.0001 and output.attention.max() <= 1.0001
    prediction = F.interpolate(output.logits, size=(64, 64), mode="bilinear").argmax(dim=1).bool()
    truth = masks[1:]
    dice = 2 * (prediction & truth).sum() / (prediction.sum() + truth.sum())
    assert dice > 0.85, f"{name}: Dice {dice:.3f}"
    # attention is higher inside the structure than outside
    attention = F.interpolate(output.attention[:, None], size=(64, 64), mode="bilinear")[:, 0]
    assert attention[truth].mean() > attention[~truth].mean() + 0.05


def test_alpnet_falls_back_to_global_prototypes():
    head = build_head("alpnet")
    support = torch.rand(1, 8, 32, 32)
    tiny_mask = torch.zeros(1, 32, 32)
    tiny_mask[0, 5, 5] = 1.0  # no 2x2 window is foreground: the global prototype stands alone
    background, foreground = head.prototypes(support, tiny_mask)
    assert foreground.shape == (1, 8) and len(background) > 100
    background, foreground = head.prototypes(support, torch.ones(1, 32, 32))  # all foreground
    assert background.shape == (1, 8)
    assert torch.isfinite(head(support, tiny_mask, support).logits).all()


def test_unknown_head():
    with pytest.raises(KeyError, match="choose one of"):
        build_head("unet")
