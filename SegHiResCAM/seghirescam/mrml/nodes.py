"""MRML nodes in and out: CT arrays, segment masks, markup voxels, heatmap and prediction nodes.

Arrays crossing this boundary are numpy (k, j, i), as ``slicer.util.arrayFromVolume`` gives;
matrices are 4x4 numpy IJK-to-RAS. Input nodes are only read; every temporary node made
while reading is removed again. No qt here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import slicer
import vtk

from seghirescam.imaging.geometry import Geometry

__all__ = ["ct_array_and_geometry", "ijk_to_ras_of", "node_ids", "remove_nodes", "remove_with_dependents",
           "segment_mask", "voxel_at_world", "add_heatmap_node", "add_prediction_segmentation", "CLASS_COLORS"]

CLASS_COLORS = {"kidney": (0.73, 0.40, 0.33), "tumor": (0.95, 0.85, 0.25), "cyst": (0.35, 0.60, 0.95)}
_OTHER_COLORS = ((0.55, 0.80, 0.45), (0.85, 0.45, 0.85), (0.45, 0.85, 0.85), (0.90, 0.60, 0.30))


def ijk_to_ras_of(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """Returns: the node's 4x4 IJK-to-RAS matrix (its own frame, parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ct_array_and_geometry(volume_node: slicer.vtkMRMLScalarVolumeNode) -> tuple[np.ndarray, Geometry]:
    """A copy of a scalar volume's voxels and its geometry.

    Args:
        volume_node: A scalar volume node with image data.

    Returns:
        (array (k, j, i), a copy; Geometry from its IJK-to-RAS).

    Raises:
        ValueError: If the node has no 3D scalar image.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("the input volume has no image data: load a CT first")
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise ValueError(f"the input volume must be a 3D scalar volume, its array has shape {array.shape}")
    return np.array(array, copy=True), Geometry.from_ijk_to_ras(ijk_to_ras_of(volume_node))


def node_ids(scene: slicer.vtkMRMLScene) -> set[str]:
    """Returns: the IDs of every node in the scene."""
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def remove_nodes(scene: slicer.vtkMRMLScene, ids: Iterable[str]) -> None:
    """Remove the nodes with these IDs (those still in the scene)."""
    for node_id in list(ids):
        node = scene.GetNodeByID(node_id)
        if node is not None:
            scene.RemoveNode(node)


def remove_with_dependents(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> None:
    """Remove a node with its display nodes (legends included) and storage nodes."""
    ids = [node.GetID()]
    for n in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
        ids.append(node.GetNthDisplayNodeID(n))
    for n in range(node.GetNumberOfStorageNodes() if hasattr(node, "GetNumberOfStorageNodes") else 0):
        ids.append(node.GetNthStorageNodeID(n))
    remove_nodes(scene, [i for i in ids if i])


def segment_mask(scene: slicer.vtkMRMLScene, segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str,
                 reference: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """One segment as a bool mask on the reference volume's grid (transforms of both nodes applied).

    Args:
        scene: The scene of both nodes; a temporary labelmap is added and removed again.
        segmentation_node: The segmentation (not modified: a segmentation without a labelmap
            representation is converted on a temporary copy).
        segment_id: The segment's ID.
        reference: The volume whose grid the mask takes.

    Returns:
        Bool (k, j, i) array of the reference's shape.

    Raises:
        ValueError: If the segment does not exist.
        RuntimeError: If the export fails.
    """
    if segmentation_node is None or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise ValueError(f"segment {segment_id!r} is not in the segmentation: choose a segment")
    before = node_ids(scene)
    try:
        source = segmentation_node
        labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if not segmentation_node.GetSegmentation().ContainsRepresentation(labelmap_name):
            # Exporting would add a labelmap representation to the user's segmentation (e.g. one that has only
            # closed surfaces): convert a temporary copy of the segment instead, the input stays as it was.
            source = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegHiResCAM temporary segmentation")
            source.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
            if not source.GetSegmentation().CopySegmentFromSegmentation(segmentation_node.GetSegmentation(),
                                                                        segment_id):
                raise RuntimeError(f"copying segment {segment_id!r} for conversion failed")
        temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegHiResCAM temporary mask")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(source, ids, temporary,
                                                                                       reference):
            raise RuntimeError(f"exporting segment {segment_id!r} onto the CT's grid failed")
        mask = slicer.util.arrayFromVolume(temporary) > 0
        if mask.shape != slicer.util.arrayFromVolume(reference).shape \
                or not np.allclose(ijk_to_ras_of(temporary), ijk_to_ras_of(reference), atol=1e-6):
            raise RuntimeError("the exported segment is not on the CT's grid")
        return mask.copy()
    finally:
        remove_nodes(scene, node_ids(scene) - before)


def voxel_at_world(volume_node: slicer.vtkMRMLVolumeNode, ras_world: Iterable[float]) -> tuple[int, int, int]:
    """The voxel of a volume at a world RAS position (the volume's parent transforms undone).

    Args:
        volume_node: The volume.
        ras_world: A position in world RAS mm.

    Returns:
        (k, j, i), rounded to the nearest voxel, ready to index the (k, j, i) array.

    Raises:
        ValueError: If the position lies outside the volume.
    """
    world_to_local = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume_node.GetParentTransformNode(), world_to_local)
    local = world_to_local.TransformPoint([float(v) for v in ras_world])
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    ijk = slicer.util.arrayFromVTKMatrix(ras_to_ijk) @ np.array([*local, 1.0])
    i, j, k = (int(np.round(v)) for v in ijk[:3])
    shape = slicer.util.arrayFromVolume(volume_node).shape
    if not (0 <= k < shape[0] and 0 <= j < shape[1] and 0 <= i < shape[2]):
        raise ValueError(f"the point (RAS {tuple(round(float(v), 1) for v in ras_world)}) lies outside the CT "
                         f"(voxel i, j, k = {i}, {j}, {k})")
    return k, j, i


def _set_geometry_like(node: slicer.vtkMRMLVolumeNode, reference: slicer.vtkMRMLVolumeNode) -> None:
    node.CopyOrientation(reference)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())


def add_heatmap_node(scene: slicer.vtkMRMLScene, ct_node: slicer.vtkMRMLVolumeNode, map_kji: np.ndarray, name: str,
                     attributes: dict[str, str]) -> slicer.vtkMRMLScalarVolumeNode:
    """A new scalar volume on the CT's exact grid and under its parent transform.

    Args:
        scene: Where to add it.
        ct_node: The CT (geometry and parent transform are copied from it).
        map_kji: float32 (k, j, i) map of the CT's shape.
        name: Node name.
        attributes: Node attributes to set.

    Returns:
        The node (with display nodes).
    """
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    _set_geometry_like(node, ct_node)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(map_kji, dtype=np.float32))
    for key, value in attributes.items():
        node.SetAttribute(key, str(value))
    node.CreateDefaultDisplayNodes()
    return node


def add_prediction_segmentation(scene: slicer.vtkMRMLScene, ct_node: slicer.vtkMRMLVolumeNode, labels_kji: np.ndarray,
                                classes: tuple[str, ...], name: str,
                                attributes: dict[str, str]) -> slicer.vtkMRMLSegmentationNode:
    """The model's prediction as a segmentation: one named, coloured segment per non-background class.

    Args:
        scene: Where to add it.
        ct_node: The CT whose grid ``labels_kji`` is on (its parent transform is copied).
        labels_kji: uint8 (k, j, i) labels; value c is ``classes[c]``.
        classes: Class names in label order; class 0 (background) gets no segment.
        name: Node name.
        attributes: Node attributes to set.

    Returns:
        The segmentation node; classes the model never predicted are empty segments.
    """
    before = node_ids(scene)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegHiResCAM temporary labels")
    _set_geometry_like(labelmap, ct_node)
    slicer.util.updateVolumeFromArray(labelmap, np.ascontiguousarray(labels_kji, dtype=np.uint8))
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation_node.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    segmentation_node.CreateDefaultDisplayNodes()
    keep = {segmentation_node.GetID(), *(segmentation_node.GetNthDisplayNodeID(n)
                                         for n in range(segmentation_node.GetNumberOfDisplayNodes()))}
    try:
        if labels_kji.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmap, segmentation_node):
            raise RuntimeError("importing the predicted labels into a segmentation failed")
    finally:
        remove_nodes(scene, node_ids(scene) - before - keep)
    segmentation = segmentation_node.GetSegmentation()
    found = {segmentation.GetNthSegment(n).GetLabelValue(): segmentation.GetNthSegmentID(n)
             for n in range(segmentation.GetNumberOfSegments())}
    for value, class_name in enumerate(classes):
        if value == 0:
            continue
        color = CLASS_COLORS.get(class_name.lower(), _OTHER_COLORS[value % len(_OTHER_COLORS)])
        if value in found:
            segment = segmentation.GetSegment(found[value])
            segment.SetName(class_name)
            segment.SetColor(*color)
        else:
            segmentation.AddEmptySegment(class_name, class_name, color)
    for key, value in attributes.items():
        segmentation_node.SetAttribute(key, str(value))
    return segmentation_node
