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
from seghirescam.imaging.geometry import Geometry
from seghirescam.mrml.nodes import ijk_to_ras_of, node_ids, segment_mask
from seghirescam.mrml.sample_data import add_phantom_case
from seghirescam.models.loading import LoadedModel, load_default_model
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


def run_self_test(scene: slicer.vtkMRMLScene, model: LoadedModel | None = None,
                  shape: tuple[int, int, int] = (24, 96, 96), spacing: tuple[float, float, float] = (4.0, 4.0, 8.0),
                  device: str = "auto", case: tuple | None = None) -> dict:
    """Explain the kidney of the phantom case in ``scene`` and check the results.

    Args:
        scene: The scene (``slicer.mrmlScene`` in the application).
        model: The model; default: the shipped default model (missing -> FileNotFoundError).
        shape: Phantom (k, j, i) shape, when the case is made here.
        spacing: Phantom voxel size (i, j, k) in mm; the field of view must hold slices without kidney.
        device: Torch device for the run.
        case: (CT node, segmentation node with a "kidney" segment) already in ``scene``, e.g. loaded
            through Slicer's Sample Data module; default: the phantom is added here.

    Returns:
        A summary: the heatmap node names, slices explained, seconds.

    Raises:
        SelfTestFailure: If a check fails.
        FileNotFoundError: If no model is given and the default model is missing.
    """
    model = model or load_default_model()
    if case is None:
        _, ct, segmentation = add_phantom_case(scene, shape, spacing)
    else:
        ct, segmentation = case
    kidney = segmentation.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    _check(bool(kidney), "the phantom has no kidney segment")
    labels = segment_mask(scene, segmentation, kidney, ct)
    logic = SegHiResCAMLogic(scene)
    ct_before = slicer.util.arrayFromVolume(ct).copy()
    volumes_before = _count(scene, "vtkMRMLScalarVolumeNode")
    nodes = logic.process(ct, segmentation, kidney, model=model, device=device)
    _check(len(nodes) == 2 and _count(scene, "vtkMRMLScalarVolumeNode") == volumes_before + 2,
           f"expected 2 new heatmap volumes, got {len(nodes)}")
    _check(np.array_equal(slicer.util.arrayFromVolume(ct), ct_before), "the input CT was modified")
    axis = SliceOrientation.from_geometry(Geometry.from_ijk_to_ras(ijk_to_ras_of(ct))).permutation[0]
    present = np.moveaxis(labels, axis, 0).any(axis=(1, 2))
    _check(0 < present.sum() < present.size, "the phantom needs slices with and without kidney")
    for node in nodes.values():
        _check(np.allclose(ijk_to_ras_of(node), ijk_to_ras_of(ct), atol=1e-9), f"{node.GetName()}: geometry differs")
        _check(slicer.util.arrayFromVolume(node).shape == ct_before.shape, f"{node.GetName()}: shape differs")
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
