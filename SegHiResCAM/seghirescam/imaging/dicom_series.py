"""A DICOM series folder as one 3D image, with its slice positions checked.

SimpleITK's series reader stacks the slices and takes one slice spacing for all of them, so a
series with a missing slice, or with slices at uneven distances, is read with every slice after
the gap sitting at the wrong place (only ITK's stderr warns). Here the slice positions
(ImagePositionPatient projected on the slice normal) are checked first: uneven gaps are refused,
unless the caller allows them; then the slices are linearly interpolated, along the slice normal,
onto a uniform grid from the first to the last slice, and a warning says so.

Arrays are in numpy (k, j, i) order (k: slices); geometry in SimpleITK's LPS convention.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["read_dicom_series", "IrregularSlicesError", "SLICE_TOLERANCE"]

logger = logging.getLogger(__name__)

SLICE_TOLERANCE = 0.01  # gaps within 1 % (of the smallest gap) of each other count as uniform


class IrregularSlicesError(ValueError):
    """A DICOM series whose slices are missing, repeated or unevenly spaced."""


def _series_files(folder: Path) -> tuple[str, ...]:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series_ids:
        raise ValueError(f"{folder} is a folder but holds no DICOM series")
    return max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)


def _positions(reader: sitk.ImageSeriesReader, n: int, folder: Path) -> np.ndarray:
    """(n, 3) ImagePositionPatient of the slices in the reader's order."""
    try:
        return np.array([[float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")] for k in range(n)])
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{folder}: a slice of the DICOM series has no readable ImagePositionPatient (0020,0032), "
                         f"so the slice spacing cannot be checked: {error}") from error


def _resample_uniform(array: np.ndarray, offsets: np.ndarray, spacing: float) -> np.ndarray:
    """Linear interpolation of (k, j, i) slices at increasing ``offsets`` (mm) onto a grid from
    ``offsets[0]`` to ``offsets[-1]`` with step ``spacing``. Returns: float32 (k', j, i)."""
    n = int(round((offsets[-1] - offsets[0]) / spacing)) + 1
    targets = np.linspace(offsets[0], offsets[-1], n)
    upper = np.clip(np.searchsorted(offsets, targets, side="right"), 1, len(offsets) - 1)
    lower = upper - 1
    weight = ((targets - offsets[lower]) / (offsets[upper] - offsets[lower])).astype(np.float32)[:, None, None]
    data = array.astype(np.float32, copy=False)
    return data[lower] * (1 - weight) + data[upper] * weight


def read_dicom_series(folder: str | Path, *, allow_irregular_slices: bool = False) -> sitk.Image:
    """Read the largest DICOM series of a folder, refusing missing or unevenly spaced slices.

    Args:
        folder: The folder of DICOM files.
        allow_irregular_slices: Resample a series with uneven slice gaps onto a uniform grid (its
            step: the smallest gap, adjusted so the first and last slices stay where they are)
            instead of refusing it; a warning says so.

    Returns:
        The image (3D; float32 when resampled, else the series' own pixel type).

    Raises:
        ValueError: No DICOM series in the folder, or unreadable slice positions.
        IrregularSlicesError: Repeated slice positions, or uneven gaps without ``allow_irregular_slices``.
        RuntimeError: From SimpleITK, for unreadable files.
    """
    folder = Path(folder)
    files = _series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "non uniform sampling" line: said better below
    try:
        image = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if len(files) < 3:
        return image
    positions = _positions(reader, len(files), folder)
    axis = positions[-1] - positions[0]
    length = float(np.linalg.norm(axis))
    if length == 0:
        raise IrregularSlicesError(f"{folder}: the first and last slices of the DICOM series are at the same position")
    offsets = (positions - positions[0]) @ (axis / length)
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    gaps = np.diff(offsets)
    smallest, largest = float(gaps.min()), float(gaps.max())
    if smallest <= SLICE_TOLERANCE * max(largest, 1e-6):
        k = int(np.argmin(gaps))
        raise IrregularSlicesError(f"{folder}: slices {k + 1} and {k + 2} of the DICOM series (in position order) are "
                                   f"at the same position (gap {smallest:.3g} mm): a repeated or mixed-up series")
    if largest - smallest <= SLICE_TOLERANCE * smallest:
        return image
    k = int(np.argmax(gaps))
    what = (f"{folder}: the DICOM series' slices are not evenly spaced: gaps from {smallest:.4g} to {largest:.4g} mm "
            f"(largest between slices {k + 1} and {k + 2} of {len(files)}, in position order"
            f"{'; a missing slice?' if largest > 1.5 * smallest else ''})")
    if not allow_irregular_slices:
        raise IrregularSlicesError(f"{what}; read as one stack its slices would sit at wrong positions. Pass "
                                   f"--allow-irregular-slices to resample it onto a uniform grid")
    array = sitk.GetArrayFromImage(image)[order]
    step = (offsets[-1] - offsets[0]) / round((offsets[-1] - offsets[0]) / smallest)
    resampled = sitk.GetImageFromArray(_resample_uniform(array, offsets, step))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 2] = axis / length
    resampled.SetDirection(tuple(direction.ravel()))
    resampled.SetOrigin(tuple(positions[order[0]]))
    resampled.SetSpacing((*image.GetSpacing()[:2], float(step)))
    logger.warning("%s; resampled (linear interpolation along the slice normal) onto a uniform grid of %d slices "
                   "%.4g mm apart", what, resampled.GetDepth(), step)
    return resampled
