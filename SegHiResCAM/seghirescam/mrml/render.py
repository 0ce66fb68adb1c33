"""A picture of a slice view without the application or OpenGL: Slicer's own slice pipeline to PNG.

``vtkMRMLSliceLogic`` reslices and blends background and foreground exactly as a slice view
does; its output image is written with ``vtkPNGWriter``. The slice and composite nodes made for
the picture are removed afterwards, so the scene is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import slicer
import vtk

from seghirescam.mrml.nodes import node_ids, remove_nodes

__all__ = ["renderSliceView", "render_slice_view", "RenderedSlice"]

_ORIENTATIONS = ("Axial", "Sagittal", "Coronal")


class RenderedSlice(NamedTuple):
    """A rendered slice view.

    Attributes:
        pixels: uint8 (height, width, channels), row 0 at the TOP (as in the PNG).
        xyToRAS: 4x4 matrix from view pixel (x, y from the BOTTOM, 0, 1) to world RAS mm;
            a RAS point lands at row ``height - 1 - y``.
    """

    pixels: np.ndarray
    xyToRAS: np.ndarray


def render_slice_view(scene: slicer.vtkMRMLScene, backgroundNode: slicer.vtkMRMLVolumeNode,
                      foregroundNode: slicer.vtkMRMLVolumeNode | None, pngPath: str | os.PathLike | None,
                      orientation: str = "Axial", sliceOffsetRAS: Sequence[float] | None = None,
                      opacity: float = 0.5, size: tuple[int, int] = (512, 512)) -> RenderedSlice:
    """Render one slice view (CT + heatmap blended as Slicer blends them) to a PNG.

    Args:
        scene: The scene holding the nodes.
        backgroundNode: The CT.
        foregroundNode: The heatmap (or None for the CT alone).
        pngPath: The PNG to write (parent folders are created), or None to only return pixels.
        orientation: "Axial", "Sagittal" or "Coronal".
        sliceOffsetRAS: A world RAS point the slice passes through (default: the background's centre);
            the view stays fitted to the background.
        opacity: Foreground opacity, 0..1.
        size: (width, height) in pixels.

    Returns:
        The picture and where its pixels lie in world RAS.

    Raises:
        ValueError: For an unknown orientation or a missing background.
    """
    if orientation not in _ORIENTATIONS:
        raise ValueError(f"orientation must be one of {_ORIENTATIONS}, got {orientation!r}")
    if backgroundNode is None:
        raise ValueError("a background volume is needed")
    before = node_ids(scene)
    try:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        slice_node = logic.AddSliceNode(f"SegHiResCAMRender{len(before)}")
        slice_node.SetOrientation(orientation)
        slice_node.SetDimensions(int(size[0]), int(size[1]), 1)
        composite = logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(backgroundNode.GetID())
        composite.SetForegroundVolumeID(foregroundNode.GetID() if foregroundNode is not None else None)
        composite.SetForegroundOpacity(float(opacity))
        logic.FitSliceToAll()
        if sliceOffsetRAS is None:
            bounds = [0.0] * 6
            backgroundNode.GetRASBounds(bounds)
            sliceOffsetRAS = [(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)]
        slice_node.JumpSliceByOffsetting(*(float(v) for v in sliceOffsetRAS))
        xy_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS())
        image = vtk.vtkImageData()
        image.DeepCopy(_updated_output(logic))
        if pngPath is not None:
            Path(pngPath).parent.mkdir(parents=True, exist_ok=True)
            writer = vtk.vtkPNGWriter()
            writer.SetFileName(str(pngPath))
            writer.SetInputData(image)
            writer.Write()
        logic.SetMRMLScene(None)
    finally:
        remove_nodes(scene, node_ids(scene) - before)
    from vtk.util.numpy_support import vtk_to_numpy
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return RenderedSlice(np.ascontiguousarray(pixels[::-1]), xy_to_ras)


def _updated_output(logic: slicer.vtkMRMLSliceLogic) -> vtk.vtkImageData:
    connection = logic.GetImageDataConnection()
    algorithm = connection.GetProducer()
    algorithm.Update()
    return algorithm.GetOutputDataObject(connection.GetIndex())


renderSliceView = render_slice_view  # Slicer-style name
