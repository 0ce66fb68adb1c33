"""The body of the module's self-test, runnable in the application and headless.

``SegHiResCAMTest`` (Slicer's ``--testing``) calls ``run_self_test`` on ``slicer.mrmlScene`` with the
default model; pytest calls it on a headless scene with a small model. Every check is an
assertion that raises: nothing is reported as passed without being checked.
"""

from __future__ import annotations

import logging

import numpy as np
import slicer

from seghirescam.mrml.logic import ATTRIBUTE_PREFIX, SegHiResCAMLogic
from seghirescam.mrml.nodes import ijk_to_ras_of, node_ids, remove_nodes
from seghirescam.models.loading import LoadedModel, load_default_model
from seghirescam.synthetic.phantom import make_phantom
from seghirescam.cam.result import ExplanationCancelled
from seghirescam.imaging.volumes import SliceOrientation

__all__ = ["run_self_test", "SelfTestFailure"]

logger = logging.getLogger(__name__)


class SelfTestFailure(AssertionError):
    """A self-test check that did not hold."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SelfTestFailure(message)


def _count(scene: slicer.vtkMRMLScene, class_name: str) -> int:
    return scene.GetNodesByClass(class_name).GetNumberOfItems()


def _phantom_nodes(scene: slicer.vtkMRMLScene, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """A synthetic CT and its segmentation (segments "kidney", "tumor") in the scene."""
    phantom = make_phantom(seed=0, shape=shape, spacing=spacing)
    matrix = slicer.util.vtkMatrixFromArray(phantom.geometry.ijk_to_ras())
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "SegHiResCAM phantom CT")
    ct.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(ct, phantom.ct)
    ct.CreateDefaultDisplayNodes()
    before = node_ids(scene)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegHiResCAM phantom labels")
    labelmap.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(labelmap, phantom.labels)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegHiResCAM phantom segmentation")
    segmentation.CreateDefaultDisplayNodes()
    keep = {segmentation.GetID(), segmentation.GetDisplayNodeID()}
    _check(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation),
           "importing the phantom labels failed")
    remove_nodes(scene, node_ids(scene) - before - keep)
    names = {1: "kidney", 2: "tumor", 3: "cyst"}
    seg = segmentation.GetSegmentation()
    for n in range(seg.GetNumberOfSegments()):
        seg.GetNthSegment(n).SetName(names.get(seg.GetNthSegment(n).GetLabelValue(), "other"))
    return phantom, ct, segmentation


def run_self_test(scene: slicer.vtkMRMLScene, model: LoadedModel | None = None,
                  shape: tuple[int, int, int] = (24, 96, 96), spacing: tuple[float, float, float] = (4.0, 4.0, 8.0),
                  device: str = "auto") -> dict:
    """Build a phantom CT + segmentation in ``scene``, explain the kidney, check the results.

    Args:
        scene: The scene (``slicer.mrmlScene`` in the application).
        model: The model; default: the shipped default model (missing -> FileNotFoundError).
        shape: Phantom (k, j, i) shape.
        spacing: Phantom voxel size (i, j, k) in mm; the field of view must hold slices without kidney.
        device: Torch device for the run.

    Returns:
        A summary: the heatmap node names, slices explained, seconds.

    Raises:
        SelfTestFailure: If a check fails.
        FileNotFoundError: If no model is given and the default model is missing.
    """
    model = model or load_default_model()
    phantom, ct, segmentation = _phantom_nodes(scene, shape, spacing)
    kidney = segmentation.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    _check(bool(kidney), "the phantom has no kidney segment")
    logic = SegHiResCAMLogic(scene)
    ct_before = slicer.util.arrayFromVolume(ct).copy()
    volumes_before = _count(scene, "vtkMRMLScalarVolumeNode")
    nodes = logic.process(ct, segmentation, kidney, model=model, device=device)
    _check(len(nodes) == 2 and _count(scene, "vtkMRMLScalarVolumeNode") == volumes_before + 2,
           f"expected 2 new heatmap volumes, got {len(nodes)}")
    _check(np.array_equal(slicer.util.arrayFromVolume(ct), ct_before), "the input CT was modified")
    axis = SliceOrientation.from_geometry(phantom.geometry).permutation[0]
    present = np.moveaxis(phantom.labels == 1, axis, 0).any(axis=(1, 2))
    _check(0 < present.sum() < present.size, "the phantom needs slices with and without kidney")
    for node in nodes.values():
        _check(np.allclose(ijk_to_ras_of(node), ijk_to_ras_of(ct), atol=1e-9), f"{node.GetName()}: geometry differs")
        _check(slicer.util.arrayFromVolume(node).shape == phantom.ct.shape, f"{node.GetName()}: shape differs")
        heat = np.moveaxis(slicer.util.arrayFromVolume(node), axis, 0)
        _check(not heat[~present].any(), f"{node.GetName()}: nonzero on slices without the kidney")
        _check(heat.max() > 0 and node.GetAttribute(ATTRIBUTE_PREFIX + "TargetClass") == "kidney",
               f"{node.GetName()}: empty map or wrong class")
        _check(node.GetDisplayNode() is not None and node.GetDisplayNode().GetColorNode() is not None,
               f"{node.GetName()}: no colour table")
    old_ids = {node.GetID() for node in nodes.values()}
    again = logic.process(ct, segmentation, kidney, model=model, device=device)
    _check(all(scene.GetNodeByID(i) is None for i in old_ids), "a re-run did not replace the previous heatmaps")
    _check(_count(scene, "vtkMRMLScalarVolumeNode") == volumes_before + 2, "a re-run changed the number of heatmaps")
    before = node_ids(scene)
    try:
        logic.process(ct, segmentation, kidney, model=model, device=device, batchSize=1, cancel=lambda: True)
        raise SelfTestFailure("a cancelled run returned normally")
    except ExplanationCancelled:
        pass
    _check(node_ids(scene) == before, "a cancelled run changed the scene")
    logger.info("SegHiResCAM self-test: all checks held")
    return {"heatmaps": [node.GetName() for node in again.values()], "slices_with_kidney": int(present.sum()),
            "ct_node": ct, "segmentation_node": segmentation}
