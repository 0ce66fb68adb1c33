"""Sample cases for Slicer's Sample Data module: the synthetic phantom and the real abdominal CT. No qt.

The phantom is made on the user's machine at first use (``seghirescam.synthetic.phantom``; nothing to
download). The real CT (TotalSegmentator's public test case, Apache-2.0) is downloaded by Sample Data
from the TotalSegmentator repository and checked against the SHA-256 digests below; it is not shipped
with the extension (the project keeps third-party data out of its repository).
"""

from __future__ import annotations

import slicer

from seghirescam.mrml.nodes import node_ids, remove_nodes
from seghirescam.synthetic.phantom import make_phantom

__all__ = ["PHANTOM_SAMPLE", "REAL_CT_SAMPLE", "REAL_CT_FILES", "TOTALSEGMENTATOR_NAMES", "add_phantom_case",
           "name_segments_by_label"]

PHANTOM_SAMPLE = "SegHiResCAM phantom"
REAL_CT_SAMPLE = "SegHiResCAM abdominal CT"
_TOTALSEG = "https://github.com/wasserth/TotalSegmentator/raw/master/tests/reference_files/"
# (URL, file name, node name, SHA-256) of the real CT and TotalSegmentator's labels on the same grid.
REAL_CT_FILES = (
    (_TOTALSEG + "example_ct.nii.gz", "example_ct.nii.gz", "Abdominal CT",
     "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"),
    (_TOTALSEG + "example_seg_fast_force_split.nii.gz", "example_seg_fast_force_split.nii.gz",
     "Abdominal CT TotalSegmentator", "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7"),
)
# Label values of the real case's label file (total_class_map.json of the shared data) that the module uses.
TOTALSEGMENTATOR_NAMES = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
PHANTOM_NAMES = {1: "kidney", 2: "tumor", 3: "cyst"}


def name_segments_by_label(segmentation_node: slicer.vtkMRMLSegmentationNode, names: dict[int, str]) -> None:
    """Name each segment after its label value (segments whose value is not in ``names`` keep their name)."""
    segmentation = segmentation_node.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(n)
        if segment.GetLabelValue() in names:
            segment.SetName(names[segment.GetLabelValue()])


def add_phantom_case(scene: slicer.vtkMRMLScene, shape: tuple[int, int, int] = (24, 96, 96),
                     spacing: tuple[float, float, float] = (4.0, 4.0, 8.0), seed: int = 0):
    """Add the synthetic kidney phantom: a CT and its segmentation (segments "kidney", "tumor", "cyst").

    Args:
        scene: Where to add them.
        shape: (k, j, i) voxels.
        spacing: (i, j, k) voxel size in mm.
        seed: The phantom's random seed (same seed, same case).

    Returns:
        (phantom, CT node, segmentation node); ``phantom.labels`` is the (k, j, i) label array.

    Raises:
        RuntimeError: If importing the labels fails (the scene is then unchanged).
    """
    phantom = make_phantom(seed=seed, shape=shape, spacing=spacing)
    matrix = slicer.util.vtkMatrixFromArray(phantom.geometry.ijk_to_ras())
    before = node_ids(scene)
    try:
        ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "SegHiResCAM phantom CT")
        ct.SetIJKToRASMatrix(matrix)
        slicer.util.updateVolumeFromArray(ct, phantom.ct)
        ct.CreateDefaultDisplayNodes()
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SegHiResCAM phantom labels")
        labelmap.SetIJKToRASMatrix(matrix)
        slicer.util.updateVolumeFromArray(labelmap, phantom.labels)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegHiResCAM phantom segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise RuntimeError("importing the phantom labels into a segmentation failed")
    except BaseException:
        remove_nodes(scene, node_ids(scene) - before)
        raise
    keep = {ct.GetID(), *(ct.GetNthDisplayNodeID(n) for n in range(ct.GetNumberOfDisplayNodes())),
            segmentation.GetID(),
            *(segmentation.GetNthDisplayNodeID(n) for n in range(segmentation.GetNumberOfDisplayNodes()))}
    remove_nodes(scene, node_ids(scene) - before - keep)
    name_segments_by_label(segmentation, PHANTOM_NAMES)
    return phantom, ct, segmentation
