"""Volumes on disk and in patient space: file I/O, grids, resampling and axial reorientation.

Arrays are in numpy (k, j, i) order as ``sitk.GetArrayFromImage`` gives; geometry follows
SimpleITK (LPS, direction columns are the i, j, k axes). No Slicer or Qt imports here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from seghirescam.atomic import atomic_path
from seghirescam.imaging.dicom_series import read_dicom_series
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.integrity import check_image_file, nonfinite_error

__all__ = ["Volume", "SliceOrientation", "read_volume", "write_volume", "axial_axis",
           "physical_bounds", "same_grid", "resample_labels_onto"]

_TIE = 1e-3  # direction cosines closer than this are a tie: the axis choice would be arbitrary


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image: a (k, j, i) array and where it sits in patient space.

    ``eq=False``: equality is identity (a generated ``==`` would compare arrays ambiguously).
    """

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if np.ndim(self.array) != 3:
            raise ValueError(f"a Volume needs a 3D (k, j, i) array, got shape {np.shape(self.array)}")

    def to_sitk(self) -> sitk.Image:
        """Returns: a SimpleITK image with this array (bool stored as uint8) and geometry."""
        array = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
        image.SetSpacing(self.geometry.spacing)
        image.SetOrigin(self.geometry.origin)
        image.SetDirection(self.geometry.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Args: image: a 3D scalar SimpleITK image. Returns: the Volume (array copied).

        Raises:
            ValueError: If the image is not 3D or has vector pixels.
        """
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"expected scalar pixels, got {image.GetNumberOfComponentsPerPixel()} components")
        geometry = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        return cls(sitk.GetArrayFromImage(image), geometry)


def _refuse_nonfinite(volume: Volume, path: Path) -> None:
    """NaN/Inf voxels that survived the reader (NRRD, MHA, DICOM; NIfTI is checked before reading)."""
    if volume.array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise nonfinite_error(path, bad, volume.array.dtype)


def read_volume(path: str | os.PathLike, *, allow_irregular_slices: bool = False) -> Volume:
    """Read a 3D scalar volume from any file SimpleITK reads, or from a DICOM series folder.

    Files are checked before reading (``imaging.integrity``): truncated or damaged NIfTI/NRRD
    files and float data with NaN/Inf are refused, never read with zeros in their place.

    Args:
        path: An image file (NIfTI, NRRD, MHA, ...) or a DICOM folder (its largest series is read).
        allow_irregular_slices: A DICOM series with missing or unevenly spaced slices is resampled
            onto a uniform grid (with a warning) instead of refused (``imaging.dicom_series``).

    Returns:
        The volume.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CorruptImageError: A truncated or damaged file, or NaN/infinite voxels (a ValueError).
        IrregularSlicesError: A DICOM series with repeated slices, or uneven gaps without
            ``allow_irregular_slices`` (a ValueError).
        ValueError: If it cannot be read, holds no DICOM, is not 3D or has vector pixels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    try:
        if path.is_dir():
            image = read_dicom_series(path, allow_irregular_slices=allow_irregular_slices)
        else:
            check_image_file(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"could not read an image from {path}: {exc}") from exc
    except OSError as exc:
        raise ValueError(f"could not read {path}: {exc}") from exc
    try:
        volume = Volume.from_sitk(image)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    _refuse_nonfinite(volume, path)
    return volume


def _extension(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return path.name[-7:]
    if not path.suffix:
        raise ValueError(f"cannot tell the file format of {path}: it has no extension")
    return path.suffix


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a volume atomically (``seghirescam.atomic.atomic_path``).

    Args:
        volume: The volume to write.
        path: Target file; the extension picks the format. Parent folders are created.
        compress: Ask the writer to compress (NRRD, MHA, NIfTI).

    Returns:
        The path written.

    Raises:
        ValueError: If the path has no extension.
        OSError: If writing fails; no partial or temporary file is left behind.
    """
    path = Path(path)
    _extension(path)  # refuse a name without a format before writing anything
    try:
        with atomic_path(path) as temporary:
            sitk.WriteImage(volume.to_sitk(), str(temporary), useCompression=compress)
    except RuntimeError as exc:
        raise OSError(f"could not write {path}: {exc}") from exc
    return path


def axial_axis(geometry: Geometry) -> int:
    """The numpy axis of a (k, j, i) array whose image axis is most aligned with patient S-I.

    Args:
        geometry: The volume's geometry.
    Returns:
        0, 1 or 2 (numpy axis = 2 - image axis).

    Raises:
        ValueError: If no axis is within 60 degrees of S-I or two axes tie for the best.
    """
    cosines = np.abs(geometry.direction_matrix[2, :])
    best, second = np.sort(cosines)[::-1][:2]
    if best < 0.5 or best - second < _TIE:
        raise ValueError(f"no single image axis is aligned with patient S-I (|cos| per i, j, k: {cosines})")
    return 2 - int(np.argmax(cosines))


@dataclass(frozen=True)
class SliceOrientation:
    """Exact (permutation + flips, no resampling) map between a (k,j,i) volume array and a
    stack of axial slices in the model's display convention: array (s, r, c) where s runs
    inferior->superior, r runs anterior->posterior (anterior at the top of the image),
    c runs patient right->left (patient's right on the image left: radiological convention).

    ``to_slices(a) = flip(a.transpose(permutation), axes where flips)``; flips are per (s, r, c) axis.
    """

    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def from_geometry(cls, geometry: Geometry) -> SliceOrientation:
        """Args: geometry: The volume's geometry. Returns: the orientation, from the dominant
        LPS axis of each direction column.

        Raises:
            ValueError: If two image axes map to the same patient axis, or an axis sits (within
                ``_TIE``) halfway between two patient axes, e.g. a 45 degree in-plane rotation.
        """
        direction = geometry.direction_matrix
        magnitude = np.sort(np.abs(direction), axis=0)
        patient_axis = np.argmax(np.abs(direction), axis=0)  # per image axis d: 0=x(L), 1=y(P), 2=z(S)
        if len(set(patient_axis.tolist())) != 3 or np.any(magnitude[2] - magnitude[1] < _TIE):
            raise ValueError(f"two image axes map to the same patient axis (or one lies halfway between "
                             f"two): direction {geometry.direction}")
        permutation, flips = [], []
        for out_axis in range(3):  # s <- z, r <- y, c <- x, each increasing in LPS
            d = int(np.flatnonzero(patient_axis == 2 - out_axis)[0])
            permutation.append(2 - d)
            flips.append(bool(direction[2 - out_axis, d] < 0))
        return cls(tuple(permutation), tuple(flips))

    def _flip_index(self) -> tuple[slice, ...]:
        return tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)

    def to_slices(self, array_kji: np.ndarray) -> np.ndarray:
        """Args: array_kji: A (k, j, i) array. Returns: an (s, r, c) view of it."""
        return np.transpose(array_kji, self.permutation)[self._flip_index()]

    def from_slices(self, array_src: np.ndarray) -> np.ndarray:
        """Args: array_src: An (s, r, c) array. Returns: the (k, j, i) view (exact inverse)."""
        return np.transpose(array_src[self._flip_index()], np.argsort(self.permutation))

    def slice_spacing(self, geometry: Geometry) -> tuple[float, float, float]:
        """Args: geometry: The volume's geometry. Returns: (s, r, c) spacings in mm."""
        return tuple(float(geometry.spacing[2 - n]) for n in self.permutation)


def physical_bounds(geometry: Geometry, shape_kji: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of the voxels' extents (index -0.5 to n - 0.5 on each axis).

    Args:
        geometry: The grid's geometry.
        shape_kji: The grid's (k, j, i) shape.
    Returns:
        (min_xyz, max_xyz) in LPS mm.
    """
    size_ijk = np.asarray(shape_kji[::-1], dtype=float)
    corners = np.array([[c[0], c[1], c[2], 1.0] for c in np.ndindex(2, 2, 2)])
    corners[:, :3] = corners[:, :3] * size_ijk - 0.5
    lps = (geometry.ijk_to_lps() @ corners.T)[:3].T
    return lps.min(axis=0), lps.max(axis=0)


def same_grid(a: Geometry, b: Geometry, atol: float = 1e-4) -> bool:
    """Returns: whether spacing, origin and direction of ``a`` and ``b`` agree within ``atol``."""
    return all(np.allclose(getattr(a, f), getattr(b, f), rtol=0.0, atol=atol) for f in ("spacing", "origin", "direction"))


def resample_labels_onto(labels: Volume, reference: Geometry, shape_kji: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume onto a reference grid (outside: 0).

    Args:
        labels: The label volume.
        reference: Geometry of the target grid.
        shape_kji: (k, j, i) shape of the target grid.

    Returns:
        A (k, j, i) array of ``shape_kji`` with the labels' dtype (a copy if the grids are equal).

    Raises:
        ValueError: If the two grids' physical bounding boxes do not overlap.
    """
    shape_kji = tuple(int(n) for n in shape_kji)
    if labels.array.shape == shape_kji and same_grid(labels.geometry, reference):
        return labels.array.copy()
    lo_a, hi_a = physical_bounds(labels.geometry, labels.array.shape)
    lo_b, hi_b = physical_bounds(reference, shape_kji)
    if np.any(np.maximum(lo_a, lo_b) >= np.minimum(hi_a, hi_b)):
        raise ValueError(
            f"labels and reference grid do not overlap: labels span LPS {lo_a} .. {hi_a} mm, "
            f"reference spans {lo_b} .. {hi_b} mm"
        )
    image = labels.to_sitk()
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in shape_kji[::-1]])
    resampler.SetOutputSpacing(reference.spacing)
    resampler.SetOutputOrigin(reference.origin)
    resampler.SetOutputDirection(reference.direction)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    resampler.SetOutputPixelType(image.GetPixelID())
    return sitk.GetArrayFromImage(resampler.Execute(image)).astype(labels.array.dtype, copy=False)
