import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DIRECTIONS, ORIGIN, SPACING
from napari_fewshot.io import Geometry


def make(direction: np.ndarray, size=(11, 9, 6)) -> Geometry:
    return Geometry(SPACING, ORIGIN, tuple(direction.ravel()), size, "int16")


@pytest.mark.parametrize("name", DIRECTIONS)
def test_index_to_physical_matches_simpleitk(name):
    geometry = make(DIRECTIONS[name])
    image = sitk.Image(list(geometry.size), sitk.sitkInt16)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    for index_zyx in [(0, 0, 0), (5, 8, 10), (2, 3, 7)]:
        expected = image.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]])
        np.testing.assert_allclose(geometry.index_to_physical(np.array(index_zyx)), expected, atol=1e-9)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_napari_transform_round_trip(name):
    geometry = make(DIRECTIONS[name])
    back = Geometry.from_napari_transform(
        geometry.shape, geometry.napari_scale, geometry.napari_translate, geometry.napari_rotate, "int16"
    )
    assert back == geometry
    assert geometry.napari_scale == SPACING[::-1]
    assert geometry.napari_translate == ORIGIN[::-1]


def test_dict_round_trip_and_same_grid():
    geometry = make(DIRECTIONS["oblique"])
    assert Geometry.from_dict(geometry.to_dict()) == geometry
    assert geometry.same_grid(Geometry.from_dict(geometry.to_dict()))
    shifted = Geometry.from_dict({**geometry.to_dict(), "origin": [ORIGIN[0] + 0.5, ORIGIN[1], ORIGIN[2]]})
    assert not geometry.same_grid(shifted)
    assert geometry.with_pixel_type("uint8").same_grid(geometry)
    assert geometry.with_pixel_type("uint8").pixel_type == "uint8"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spacing": (1, 0, 1)}, "spacing must be positive"),
        ({"spacing": (1, 1)}, "3 values each"),
        ({"direction": (1, 0, 0, 0, 2, 0, 0, 0, 1)}, "orthonormal"),
        ({"direction": (1, 0, 0)}, "9 cosines"),
        ({"origin": (0, np.nan, 0)}, "origin must be finite"),
        ({"size": (3, 0, 2)}, "at least one voxel"),
    ],
)
def test_invalid_geometry_is_refused(kwargs, message):
    values = {"spacing": (1, 1, 1), "origin": (0, 0, 0), "direction": tuple(np.eye(3).ravel()), "size": (2, 2, 2)}
    with pytest.raises(ValueError, match=message):
        Geometry(**{**values, **kwargs})


def test_from_dict_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing \['direction'\]"):
        Geometry.from_dict({"spacing": [1, 1, 1], "origin": [0, 0, 0], "size": [1, 1, 1]})
