"""Image geometry: spacing, origin and direction, and the IJK-to-RAS matrix they define.

Conventions (the same as SimpleITK / ITK): ``spacing`` and ``origin`` are given in (i, j, k)
order, i.e. (x, y, z); ``direction`` is the 3x3 matrix whose columns are the i, j, k axes in
LPS patient coordinates. Numpy arrays of a volume are in (k, j, i) order. Slicer works in
RAS: ``ijk_to_ras = diag(-1, -1, 1, 1) @ ijk_to_lps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Where a (k, j, i) voxel array sits in patient space.

    Attributes:
        spacing: Voxel size in mm along i, j, k.
        origin: LPS position in mm of voxel (i, j, k) = (0, 0, 0).
        direction: Row-major 3x3 direction matrix (9 floats); columns are the i, j, k axes in LPS.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).ravel())
        if len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
            raise ValueError("Geometry needs 3 spacings, 3 origin values and a 3x3 direction")
        if min(spacing) <= 0 or not np.all(np.isfinite(spacing + origin + direction)):
            raise ValueError(f"spacing must be positive and all values finite, got {spacing}, {origin}")
        if abs(abs(np.linalg.det(np.reshape(direction, (3, 3)))) - 1.0) > 1e-3:
            raise ValueError("direction must be an orthonormal 3x3 matrix")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns: i, j, k axes in LPS)."""
        return np.reshape(self.direction, (3, 3))

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to RAS millimetres (Slicer's IJKToRAS)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def ras_of_index(self, ijk: tuple[float, float, float]) -> np.ndarray:
        """RAS position (mm) of a voxel given as (i, j, k)."""
        return (self.ijk_to_ras() @ np.array([*ijk, 1.0]))[:3]

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> Geometry:
        """Build a geometry from a 4x4 IJK-to-RAS matrix (as Slicer's volume nodes hold).

        Raises:
            ValueError: If the matrix is not 4x4 or its columns have zero length.
        """
        matrix = np.asarray(matrix, dtype=float)
        if matrix.shape != (4, 4):
            raise ValueError(f"IJK-to-RAS must be 4x4, got {matrix.shape}")
        lps = LPS_TO_RAS @ matrix
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise ValueError("IJK-to-RAS has a zero-length axis")
        return cls(tuple(spacing), tuple(lps[:3, 3]), tuple((lps[:3, :3] / spacing).ravel()))
