"""npe2 sample data: a small real abdominal CT with the liver painted on one slice."""

from __future__ import annotations

from importlib.resources import as_file, files

from ..io import read_volume
from .layers import LayerDataTuple, volume_layer_data

_PACKAGE = files("napari_fewshot") / "sample_data"


def abdomen_ct() -> list[LayerDataTuple]:
    """The sample CT as an Image layer and its one-slice liver support as a Labels layer."""
    layers = []
    for filename, name, kind, names in (
        ("abdomen_ct.nii.gz", "abdomen CT", "image", None),
        ("abdomen_ct_liver_support.nii.gz", "liver support", "labels", {1: "liver"}),
    ):
        with as_file(_PACKAGE / filename) as path:
            layers.append(volume_layer_data(read_volume(path, kind=kind), name=name, names=names))
    return layers
