import numpy as np
import pytest

from conftest import DIRECTIONS, ORIGIN, SPACING, ramp
from napari_fewshot.io import Geometry
from napari_fewshot.io.orientation import Orientation, closest_canonical, from_view, to_view, view_geometry


@pytest.mark.parametrize("name", DIRECTIONS)
def test_view_keeps_every_voxel_at_its_physical_position(name):
    data = ramp()
    geometry = Geometry(SPACING, ORIGIN, tuple(DIRECTIONS[name].ravel()), data.shape[::-1], "int16")
    orientation = closest_canonical(geometry)
    view, view_geom = to_view(data, orientation), view_geometry(geometry, orientation)
    assert view.shape == view_geom.shape
    # Every voxel value (all distinct) sits at the same physical point in both layouts.
    file_points = geometry.index_to_physical(np.argwhere(np.ones(data.shape, bool)))
    by_value = dict(zip(data.ravel().tolist(), file_points))
    view_points = view_geom.index_to_physical(np.argwhere(np.ones(view.shape, bool)))
    expected = np.array([by_value[v] for v in view.ravel().tolist()])
    np.testing.assert_allclose(view_points, expected, atol=1e-9)
    np.testing.assert_array_equal(from_view(view, orientation), data)
    assert np.shares_memory(view, data)  # a view, not a copy


@pytest.mark.parametrize("name", DIRECTIONS)
def test_view_direction_is_closest_to_identity(name):
    geometry = Geometry(SPACING, ORIGIN, tuple(DIRECTIONS[name].ravel()), (11, 9, 6))
    direction = view_geometry(geometry, closest_canonical(geometry)).direction_matrix
    assert np.all(np.diag(direction) > 0.9)  # only an oblique residual is left


def test_coronal_and_flipped_orientations():
    coronal = Geometry(SPACING, ORIGIN, tuple(DIRECTIONS["coronal"].ravel()), (11, 9, 6))
    assert closest_canonical(coronal) == Orientation((1, 0, 2), (False, True, False))
    ras = Geometry(SPACING, ORIGIN, tuple(DIRECTIONS["ras-flip"].ravel()), (11, 9, 6))
    assert closest_canonical(ras) == Orientation((0, 1, 2), (False, True, True))
    plain = Geometry(SPACING, ORIGIN, tuple(np.eye(3).ravel()), (11, 9, 6))
    assert closest_canonical(plain) == Orientation()


def test_orientation_dict_round_trip_and_validation():
    orientation = Orientation((2, 0, 1), (True, False, True))
    assert Orientation.from_dict(orientation.to_dict()) == orientation
    with pytest.raises(ValueError, match="not an orientation"):
        Orientation.from_dict({"axes": [0, 0, 1], "flip": [False] * 3})
