import pytest
import torch

from napari_fewshot.core.encoders import ENCODERS, EncoderUnavailable, build_encoder


def test_tiny_encoder_shape_and_determinism():
    encoder = build_encoder("tiny")
    x = torch.rand(3, 3, encoder.input_size, encoder.input_size)
    with torch.no_grad():
        features = encoder(x)
        assert features.shape == (3, 256, 32, 32) and features.dtype == torch.float32
        assert encoder.trunk(x).shape[1:] == encoder.trunk_shape  # what the feature cache checks files against
        assert torch.equal(build_encoder("tiny")(x), features)  # same weights every time
    with pytest.raises(ValueError, match=r"expects slices \[N, 3, H, W\]"):
        encoder(torch.rand(3, 64, 64))


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(KeyError, match="choose one of litemedsam, resnet101-coco, tiny"):
        build_encoder("sam-vit-h")


def test_litemedsam_loads_the_packaged_weights_safely(monkeypatch):
    seen = []
    original = torch.load

    def recording_load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    encoder = build_encoder("litemedsam")
    assert seen == [True]
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 256, 256))
    assert features.shape == (1, 256, 64, 64)
    # the untrained reduction is the identity: the features are LiteMedSAM's own
    with torch.no_grad():
        raw = encoder.image_encoder(torch.zeros(1, 3, 256, 256))
        assert torch.allclose(encoder(torch.zeros(1, 3, 256, 256)), raw, atol=1e-5)
    assert raw.shape[1:] == encoder.trunk_shape


def test_resnet_trunk_loads_or_says_what_to_use_instead():
    try:
        encoder = build_encoder("resnet101-coco")
    except EncoderUnavailable as error:
        assert "--encoder litemedsam" in str(error)
    else:
        with torch.no_grad():
            assert encoder(torch.rand(1, 3, 256, 256)).shape == (1, 256, 32, 32)
        assert encoder.trunk_shape == (2048, 32, 32)


def test_every_registered_encoder_names_itself():
    assert all(cls.name == name for name, cls in ENCODERS.items())
