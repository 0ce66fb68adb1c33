"""A headless Slicer "application" for tests: a real MRML scene with the module logics a module uses.

Follows shared/docs/slicer-core-headless.md: vtkMRMLScene + vtkSlicerApplicationLogic, with
Colors, Volumes, Segmentations and Markups logics registered on it. No Qt, no OpenGL.
Arrays crossing this boundary are numpy (k, j, i), as ``slicer.util.arrayFromVolume`` gives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from seghirescam.mrml.sample_data import name_segments_by_label as rename_segments  # one rule: name by label value

__all__ = ["HeadlessSlicer", "make_headless_slicer", "volume_from_array", "segmentation_from_labels",
           "node_checksum", "read_mrb", "rename_segments"]


@dataclass
class HeadlessSlicer:
    """The scene and the logics of a headless Slicer session."""

    scene: slicer.vtkMRMLScene
    app: slicer.vtkSlicerApplicationLogic
    colors: slicer.vtkSlicerColorLogic
    volumes: slicer.vtkSlicerVolumesLogic
    segmentations: slicer.vtkSlicerSegmentationsModuleLogic
    markups: slicer.vtkSlicerMarkupsLogic


def make_headless_slicer() -> HeadlessSlicer:
    """Returns: a fresh scene with the Colors (built-in tables), Volumes, Segmentations and Markups logics."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    warnings = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()  # "HomeDirectory is not set": no colour files headless, expected
    try:
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(app)
        colors.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings)
    app.SetModuleLogic("Colors", colors)
    logics = {}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic), ("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    return HeadlessSlicer(scene, app, colors, logics["Volumes"], logics["Segmentations"], logics["Markups"])


def volume_from_array(scene: slicer.vtkMRMLScene, array_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str,
                      class_name: str = "vtkMRMLScalarVolumeNode") -> slicer.vtkMRMLVolumeNode:
    """A volume node holding a (k, j, i) array at the given 4x4 IJK-to-RAS, with display nodes."""
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    node.CreateDefaultDisplayNodes()
    return node


def segmentation_from_labels(scene: slicer.vtkMRMLScene, labels_kji: np.ndarray, ijk_to_ras: np.ndarray,
                             names: dict[int, str], name: str = "Segmentation") -> slicer.vtkMRMLSegmentationNode:
    """A segmentation node from a (k, j, i) label array; segments named ``names[label value]``.

    The temporary labelmap node (and what importing adds for it) is removed again.
    """
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    labelmap = volume_from_array(scene, labels_kji.astype(np.uint8), ijk_to_ras, "tmp", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
        raise RuntimeError("importing the labelmap failed")
    keep = {segmentation.GetID(),
            *(segmentation.GetNthDisplayNodeID(n) for n in range(segmentation.GetNumberOfDisplayNodes()))}
    for node_id in {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())} - before - keep:
        if scene.GetNodeByID(node_id) is not None:
            scene.RemoveNode(scene.GetNodeByID(node_id))
    rename_segments(segmentation, names)
    return segmentation


def node_checksum(node: slicer.vtkMRMLNode, segment_id: str | None = None) -> str:
    """A digest of a node's voxels and matrices (volume) or one segment's binary labelmap (segmentation)."""
    digest = hashlib.sha256()
    if isinstance(node, slicer.vtkMRMLVolumeNode):
        digest.update(np.ascontiguousarray(slicer.util.arrayFromVolume(node)).tobytes())
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        digest.update(slicer.util.arrayFromVTKMatrix(matrix).tobytes())
    else:
        image = slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segment_id, image)
        from vtk.util.numpy_support import vtk_to_numpy
        digest.update(np.asarray(image.GetExtent()).tobytes())
        digest.update(vtk_to_numpy(image.GetPointData().GetScalars()).tobytes())
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        digest.update(slicer.util.arrayFromVTKMatrix(matrix).tobytes())
    digest.update(str(node.GetTransformNodeID()).encode())
    digest.update(node.GetName().encode())
    return digest.hexdigest()


def read_mrb(path: Path, cache: Path, scene: slicer.vtkMRMLScene | None = None) -> slicer.vtkMRMLScene:
    """Read a scene bundle into ``scene`` (default: a new bare scene), with the cache and data I/O managers reading
    needs. Markups and segmentations need a scene whose module logics registered their node classes
    (``make_headless_slicer().scene``)."""
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    cache_manager = slicer.vtkCacheManager()
    cache_manager.SetRemoteCacheDirectory(str(cache))
    scene.SetCacheManager(cache_manager)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache_manager)
    scene.SetDataIOManager(io_manager)
    if not scene.ReadFromMRB(str(path)):
        raise RuntimeError(f"could not read {path}")
    return scene
