"""Writing a CT as a DICOM series with SimpleITK, for tests of DICOM-folder input."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """SimpleITK's "Dicom Series From Array" example, for an int16 image."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.123456789"
    orientation = "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                             direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".0",
            "0020|0037": orientation,
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0013": str(k + 1),
            "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_image)
