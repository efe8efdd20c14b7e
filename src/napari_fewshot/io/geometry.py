"""The physical geometry of a volume: where each voxel sits in millimetres.

Conventions
-----------
`Geometry` keeps ITK's order and frame, exactly as SimpleITK reads a file:
``spacing``, ``origin`` and ``size`` are (x, y, z), ``direction`` is the 3x3
matrix of direction cosines in row-major order, and physical coordinates are
LPS millimetres.  A voxel with ITK index (i, j, k) sits at

    origin + direction @ diag(spacing) @ (i, j, k).

Arrays (numpy, napari) index the same voxel as ``array[k, j, i]``: the array's
first axis is ITK's last.  The ``napari_*`` helpers turn the geometry into a
napari layer's ``scale``/``rotate``/``translate`` in that array order, so that
the layer's world coordinates are the scan's physical (z, y, x) millimetres and
images and masks of different grids overlay exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: Tolerance, in millimetres and in direction cosines, for "same grid".
GRID_TOLERANCE = 1e-4


def check_grid(spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]) -> None:
    """Raise ``ValueError`` unless spacing, origin and direction describe a grid of any dimension ``n``.

    ``spacing`` must be positive and ``origin`` finite (``n`` values each), and
    ``direction`` ``n * n`` orthonormal direction cosines (row-major).
    """
    n = len(spacing)
    if len(origin) != n or len(direction) != n * n:
        raise ValueError(f"direction needs {n * n} cosines (a {n}x{n} matrix), got {len(direction)}")
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"spacing must be positive millimetres, got {tuple(spacing)}")
    if not all(np.isfinite(origin)):
        raise ValueError(f"origin must be finite millimetres, got {tuple(origin)}")
    matrix = np.reshape(np.asarray(direction, dtype=float), (n, n))
    with np.errstate(over="ignore", invalid="ignore"):
        unit = np.all(np.isfinite(matrix)) and np.allclose(np.linalg.norm(matrix, axis=0), 1.0, atol=1e-3)
    if not unit:
        raise ValueError(f"direction must be orthonormal direction cosines (unit columns), got {matrix.tolist()}")
    if not np.allclose(matrix.T @ matrix, np.eye(n), atol=1e-3):
        raise ValueError(f"direction must be orthonormal direction cosines: its axes are not perpendicular, "
                         f"got {matrix.tolist()}")


@dataclass(frozen=True)
class Geometry:
    """Spacing, origin, direction and size of a 3D volume, in ITK (x, y, z) order.

    Attributes
    ----------
    spacing : (sx, sy, sz) voxel size in millimetres, all > 0.
    origin : (ox, oy, oz) physical position of voxel (0, 0, 0) in LPS millimetres.
    direction : 9 direction cosines, row-major 3x3; column c is the physical
        direction of ITK axis c.
    size : (nx, ny, nz) number of voxels; the array shape is (nz, ny, nx).
    pixel_type : the pixel type of the file it was read from (numpy dtype name,
        e.g. ``"int16"``), so that an export can keep it.
    source : the file or folder it was read from, or ``""``.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    size: tuple[int, int, int]
    pixel_type: str = "float32"
    source: str = ""

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = tuple(float(d) + 0.0 for d in np.asarray(self.direction, dtype=float).ravel())  # no -0.0
        size = tuple(int(n) for n in self.size)
        if len(spacing) != 3 or len(origin) != 3 or len(size) != 3:
            raise ValueError(
                f"geometry needs 3 values each for spacing, origin and size, "
                f"got {len(spacing)}, {len(origin)}, {len(size)}"
            )
        check_grid(spacing, origin, direction)
        if min(size) < 1:
            raise ValueError(f"size must be at least one voxel per axis, got {size}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "pixel_type", str(np.dtype(self.pixel_type)))

    # -- construction ---------------------------------------------------------------
    @classmethod
    def identity(cls, shape: tuple[int, int, int], pixel_type: str = "float32") -> Geometry:
        """Unit spacing, zero origin, identity direction for an array of ``shape`` (z, y, x)."""
        return cls((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), tuple(shape[::-1]), pixel_type)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Geometry:
        """Rebuild a geometry from :meth:`to_dict`'s output (e.g. ``layer.metadata["geometry"]``)."""
        missing = {"spacing", "origin", "direction", "size"} - set(values)
        if missing:
            raise ValueError(f"geometry is missing {sorted(missing)}")
        optional = {k: values[k] for k in ("pixel_type", "source") if k in values}
        return cls(values["spacing"], values["origin"], values["direction"], values["size"], **optional)

    @classmethod
    def from_napari_transform(
        cls,
        shape: tuple[int, int, int],
        scale: Any,
        translate: Any,
        rotate: Any | None = None,
        pixel_type: str = "float32",
    ) -> Geometry:
        """The geometry a napari layer's ``scale``/``translate``/``rotate`` (array order) describe."""
        scale_zyx = np.asarray(scale, dtype=float)[-3:]
        translate_zyx = np.asarray(translate, dtype=float)[-3:]
        rotate_zyx = np.eye(3) if rotate is None else np.asarray(rotate, dtype=float)[-3:, -3:]
        return cls(
            spacing=tuple(scale_zyx[::-1]),
            origin=tuple(translate_zyx[::-1]),
            direction=tuple(rotate_zyx[::-1, ::-1].ravel()),
            size=tuple(shape[::-1]),
            pixel_type=pixel_type,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for ``layer.metadata["geometry"]`` and sidecar files."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "size": list(self.size),
            "pixel_type": self.pixel_type,
            "source": self.source,
        }

    # -- derived values ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) of a volume on this grid."""
        return tuple(self.size[::-1])  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction cosines as a 3x3 array in ITK (x, y, z) order."""
        return np.reshape(self.direction, (3, 3))

    @property
    def napari_scale(self) -> tuple[float, float, float]:
        """Voxel size in millimetres in array order (z, y, x)."""
        return tuple(self.spacing[::-1])  # type: ignore[return-value]

    @property
    def napari_translate(self) -> tuple[float, float, float]:
        """Physical position (z, y, x) of the first voxel, in millimetres."""
        return tuple(self.origin[::-1])  # type: ignore[return-value]

    @property
    def napari_rotate(self) -> np.ndarray:
        """Direction cosines in array order: the ITK matrix with both axes reversed."""
        return self.direction_matrix[::-1, ::-1].copy()

    @property
    def has_identity_direction(self) -> bool:
        """True when the direction is the identity (no rotation needed to show it)."""
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=GRID_TOLERANCE))

    def napari_kwargs(self) -> dict[str, Any]:
        """``scale``, ``translate`` and (when not the identity) ``rotate`` for a napari layer."""
        kwargs: dict[str, Any] = {"scale": self.napari_scale, "translate": self.napari_translate}
        if not self.has_identity_direction:
            kwargs["rotate"] = self.napari_rotate
        return kwargs

    def index_to_physical(self, index_zyx: np.ndarray) -> np.ndarray:
        """Physical LPS coordinates (x, y, z) in mm of array indices ``[..., 3]`` in (z, y, x) order."""
        ijk = np.asarray(index_zyx, dtype=float)[..., ::-1]
        return ijk * np.asarray(self.spacing) @ self.direction_matrix.T + np.asarray(self.origin)

    def same_grid(self, other: Geometry, tolerance: float = GRID_TOLERANCE) -> bool:
        """True when both describe the same voxels (size, spacing, origin, direction)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tolerance, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tolerance, rtol=0)
        )

    def with_pixel_type(self, pixel_type: str) -> Geometry:
        """A copy with another pixel type (e.g. a label map on an image's grid)."""
        return replace(self, pixel_type=pixel_type)
