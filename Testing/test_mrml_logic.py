"""The Slicer Logic on a real MRML scene (PyPI slicer-core, headless): geometry, scene hygiene, display, I/O.

No mocks: real volume, segmentation, markups and transform nodes; a small random U-Net on the CPU.
Arrays are numpy (k, j, i) as ``slicer.util.arrayFromVolume`` gives.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require_module, require_real_ct
import torch

slicer = require_module("slicer")
vtk = require_module("vtk")

from seghirescam import ExplanationCancelled, UNet2D, explain_volume, predict_volume  # noqa: E402
from seghirescam.cam.method_info import METHOD_INFO  # noqa: E402
from seghirescam.imaging.geometry import Geometry  # noqa: E402
from seghirescam.models.loading import LoadedModel, unet_card  # noqa: E402
from seghirescam.mrml.logic import ATTRIBUTE_PREFIX, SegHiResCAMLogic, renderSliceView  # noqa: E402
from seghirescam.mrml.display import INFERNO_TABLE_NAME, add_legend, inferno_rgb  # noqa: E402
from seghirescam.mrml.nodes import ijk_to_ras_of, node_ids  # noqa: E402
from seghirescam.synthetic.phantom import make_phantom  # noqa: E402
from seghirescam.imaging.volumes import SliceOrientation  # noqa: E402
from slicer_scene import (make_headless_slicer, node_checksum, read_mrb, rename_segments,  # noqa: E402
                          segmentation_from_labels, volume_from_array)

METHODS = ("seg-hires-grad-cam", "seg-grad-cam")
KEY = ("seg-hires-grad-cam", "bottleneck")
LEFT_KIDNEY = 3  # TotalSegmentator label of kidney_left
KITS_IPL = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float)  # i -> Inferior, j -> Posterior, k -> Left


def _test_model() -> LoadedModel:
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    card = unet_card(model, "test", ("background", "kidney", "tumor", "cyst"), hu_clip=(-200, 300), mean=50, std=100)
    return LoadedModel(model, card, Path("test"))


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return _test_model()


def _heatmaps(logic: SegHiResCAMLogic, ct) -> dict[tuple[str, str], object]:
    return {(n.GetAttribute(ATTRIBUTE_PREFIX + "Method"), n.GetAttribute(ATTRIBUTE_PREFIX + "Layer")): n
            for n in logic.resultNodes(ct)}


@pytest.fixture(scope="module")
def real(model):
    """The real CT and TotalSegmentator labels in a headless scene, explained once on the left kidney."""
    folder = require_real_ct().parent
    app = make_headless_slicer()
    ct = app.volumes.AddArchetypeVolume(str(folder / "example_ct.nii.gz"), "CT", 0, vtk.vtkStringArray())
    labelmap = app.volumes.AddArchetypeVolume(str(folder / "example_seg_fast_force_split.nii.gz"), "labels", 1,
                                              vtk.vtkStringArray())
    seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    rename_segments(seg, {2: "kidney_right", LEFT_KIDNEY: "kidney_left"})
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("kidney_left")
    labels = slicer.util.arrayFromVolume(labelmap).copy()
    checksums = {"ct": node_checksum(ct), "labels": node_checksum(labelmap), "seg": node_checksum(seg, segment_id)}
    logic = SegHiResCAMLogic(app.scene, colorLogic=app.colors)
    nodes = logic.process(ct, seg, segment_id, model=model, methods=METHODS, device="cpu", batchSize=8)
    return SimpleNamespace(app=app, scene=app.scene, ct=ct, labelmap=labelmap, seg=seg, segment_id=segment_id,
                           labels=labels, checksums=checksums, logic=logic, first=nodes)


def test_real_ct_heatmaps_share_the_ct_geometry(real):
    heatmaps = _heatmaps(real.logic, real.ct)
    assert set(heatmaps) == {(m, "bottleneck") for m in METHODS}
    ct_matrix = ijk_to_ras_of(real.ct)
    titles = {"seg-hires-grad-cam": "Seg-HiRes-Grad CAM", "seg-grad-cam": "Seg-Grad CAM"}
    for (method, layer), node in heatmaps.items():
        assert np.array_equal(ijk_to_ras_of(node), ct_matrix)
        assert slicer.util.arrayFromVolume(node).shape == slicer.util.arrayFromVolume(real.ct).shape
        voxel = np.array([60, 50, 85, 1.0])  # (i, j, k, 1): same RAS position in both nodes
        assert np.array_equal(ijk_to_ras_of(node) @ voxel, ct_matrix @ voxel)
        assert node.GetName() == f"CT {titles[method]} {layer} (kidney)"
        assert node.GetAttribute(ATTRIBUTE_PREFIX + "TargetClass") == "kidney"


def test_real_ct_maps_are_zero_where_the_segment_is_absent(real):
    present = (real.labels == LEFT_KIDNEY).any(axis=(1, 2))
    assert 0 < present.sum() < present.size
    for node in _heatmaps(real.logic, real.ct).values():
        heat = slicer.util.arrayFromVolume(node)
        assert heat.dtype == np.float32 and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        assert not heat[~present].any()
        assert heat[present].any(axis=(1, 2)).mean() > 0.9


def test_real_ct_inputs_are_not_modified(real):
    assert node_checksum(real.ct) == real.checksums["ct"]
    assert node_checksum(real.labelmap) == real.checksums["labels"]
    assert node_checksum(real.seg, real.segment_id) == real.checksums["seg"]


def test_heatmap_display_uses_one_inferno_table(real):
    tables = real.scene.GetNodesByClassByName("vtkMRMLColorTableNode", INFERNO_TABLE_NAME)
    assert tables.GetNumberOfItems() == 1
    table = tables.GetItemAsObject(0)
    assert table.GetNumberOfColors() == 256
    colors = inferno_rgb()
    assert colors[0] == pytest.approx((0, 0, 4 / 255)) and colors[-1] == pytest.approx((252 / 255, 1.0, 164 / 255))
    rgba = [0.0] * 4
    table.GetColor(200, rgba)
    assert rgba[:3] == pytest.approx(colors[200])
    for node in _heatmaps(real.logic, real.ct).values():
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() == table.GetID()
        assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.05)
    legend = add_legend(node, real.app.colors)  # what the app does with slicer.modules.colors.logic()
    assert legend is not None and legend.GetTitleText() == "CAM (normalized)"
    assert legend.GetDisplayableNode() is node
    real.scene.RemoveNode(legend)


def test_rerun_replaces_and_keep_previous_adds(real, model):
    old = _heatmaps(real.logic, real.ct)
    old_ids = {n.GetID() for n in old.values()}
    old_arrays = {k: slicer.util.arrayFromVolume(n).copy() for k, n in old.items()}
    new = real.logic.process(real.ct, real.seg, real.segment_id, model=model, methods=METHODS, device="cpu",
                             batchSize=8)
    assert len(real.logic.resultNodes(real.ct)) == len(old)
    assert all(real.scene.GetNodeByID(i) is None for i in old_ids)
    assert all(np.array_equal(slicer.util.arrayFromVolume(new[k]), old_arrays[k]) for k in new)
    kept = real.logic.process(real.ct, real.seg, real.segment_id, model=model, methods=("seg-hires-grad-cam",),
                              pixelSet="slice", sliceIndex=85, device="cpu", batchSize=8, keepPrevious=True,
                              outputPrefix="Kept")
    assert len(real.logic.resultNodes(real.ct)) == len(old) + 1
    assert all(real.scene.GetNodeByID(n.GetID()) is n for n in new.values())
    assert kept[KEY].GetName().startswith("Kept Seg-HiRes-Grad CAM")
    real.scene.RemoveNode(kept[KEY])


def test_every_registered_method_runs_through_the_logic(real, model):
    """Each method of the registry gives a heatmap node named by its display name, only on the slice holding M."""
    before_ids = node_ids(real.scene)
    with pytest.raises(ValueError, match="layer 'bottleneck' does not feed one: for this model CAM applies at 'dec1'"):
        real.logic.process(real.ct, real.seg, real.segment_id, model=model, methods=("seg-cam",), device="cpu",
                           pixelSet="slice", sliceIndex=85, keepPrevious=True)
    assert node_ids(real.scene) == before_ids
    keys = [key for key in METHOD_INFO if key != "seg-cam"]
    nodes = real.logic.process(real.ct, real.seg, real.segment_id, model=model, methods=keys, pixelSet="slice",
                               sliceIndex=85, device="cpu", batchSize=8, keepPrevious=True, outputPrefix="All")
    nodes.update(real.logic.process(real.ct, real.seg, real.segment_id, model=model, methods=("seg-cam",), layers="dec1",
                                    pixelSet="slice", sliceIndex=85, device="cpu", keepPrevious=True, outputPrefix="All"))
    try:
        assert set(nodes) == {(key, "bottleneck") for key in keys} | {("seg-cam", "dec1")}
        shown = 0
        for (key, _layer), node in nodes.items():
            heat = slicer.util.arrayFromVolume(node)
            assert not np.delete(heat, 85, axis=0).any(), key  # only the slice holding M is explained
            shown += bool(heat[85].any())  # a random model may leave a method's map all <= 0 before the ReLU
            assert node.GetName().startswith(f"All {METHOD_INFO[key].display_name} ")
        assert shown >= len(nodes) - 3
    finally:
        for node in nodes.values():
            real.scene.RemoveNode(node)


def test_cancel_midway_leaves_the_scene_unchanged(real, model):
    before_ids, before_count = node_ids(real.scene), real.scene.GetNumberOfNodes()
    calls = []
    with pytest.raises(ExplanationCancelled):
        real.logic.process(real.ct, real.seg, real.segment_id, model=model, methods=METHODS, device="cpu", batchSize=4,
                           progress=lambda done, total: calls.append((done, total)), cancel=lambda: bool(calls))
    assert calls == [(4, 33)]
    assert real.scene.GetNumberOfNodes() == before_count and node_ids(real.scene) == before_ids


def test_an_error_while_creating_nodes_leaves_the_scene_unchanged(real, model, monkeypatch):
    import seghirescam.mrml.logic as mrml

    def broken(node, color_node):
        raise RuntimeError("display failed")

    monkeypatch.setattr(mrml, "setup_heatmap_display", broken)
    before_ids = node_ids(real.scene)
    with pytest.raises(RuntimeError, match="display failed"):
        real.logic.process(real.ct, None, None, model=model, targetClass="kidney", pixelSet="slice", sliceIndex=85,
                           device="cpu", batchSize=8)
    assert node_ids(real.scene) == before_ids


def test_bad_inputs_say_what_to_choose_and_leave_the_scene_unchanged(real, model):
    before_ids = node_ids(real.scene)
    liver = real.seg.GetSegmentation().GetSegmentIdBySegmentName("Label_5")
    with pytest.raises(ValueError, match="choose the target class"):
        real.logic.process(real.ct, real.seg, liver, model=model, device="cpu")
    with pytest.raises(ValueError, match="sliceIndex"):
        real.logic.process(real.ct, None, None, model=model, targetClass=1, pixelSet="slice", sliceIndex=500)
    with pytest.raises(ValueError, match="markups point"):
        real.logic.process(real.ct, None, None, model=model, targetClass=1, pixelSet="point")
    assert node_ids(real.scene) == before_ids


def test_scene_bundle_round_trip_keeps_the_heatmap(real, tmp_path):
    heat = _heatmaps(real.logic, real.ct)[KEY]
    assert real.scene.WriteToMRB(str(tmp_path / "scene.mrb"))
    loaded = read_mrb(tmp_path / "scene.mrb", tmp_path / "cache")
    copy = loaded.GetFirstNodeByName(heat.GetName())
    assert copy is not None
    assert np.array_equal(slicer.util.arrayFromVolume(copy), slicer.util.arrayFromVolume(heat))
    assert np.allclose(ijk_to_ras_of(copy), ijk_to_ras_of(heat), atol=1e-6)
    assert copy.GetAttribute(ATTRIBUTE_PREFIX + "Method") == "seg-hires-grad-cam"
    assert loaded.GetNodeByID(copy.GetDisplayNode().GetColorNodeID()).GetName() == INFERNO_TABLE_NAME


def _pixel_of(rendered, ras) -> tuple[int, int]:
    x, y = (np.linalg.inv(rendered.xyToRAS) @ np.array([*ras, 1.0]))[:2]
    return rendered.pixels.shape[0] - 1 - int(round(y)), int(round(x))


def test_slice_view_shows_the_heatmap_over_the_kidney(real, tmp_path):
    heat_node = _heatmaps(real.logic, real.ct)[KEY]
    heat = slicer.util.arrayFromVolume(heat_node)
    kidney = real.labels == LEFT_KIDNEY
    k = int(np.argmax(np.where(kidney, heat, -1).max(axis=(1, 2))))  # the slice where the kidney is hottest
    hot_j, hot_i = np.unravel_index(np.argmax(np.where(kidney[k], heat[k], -1)), heat[k].shape)
    cold_j, cold_i = np.argwhere((heat[k] == 0) & (slicer.util.arrayFromVolume(real.ct)[k] > -200))[0]
    assert heat[k, hot_j, hot_i] > 0.5  # inferno is orange-yellow from here on
    matrix = ijk_to_ras_of(real.ct)
    hot_ras, cold_ras = (matrix @ [hot_i, hot_j, k, 1.0])[:3], (matrix @ [cold_i, cold_j, k, 1.0])[:3]
    nodes_before = node_ids(real.scene)
    rendered = renderSliceView(real.scene, real.ct, heat_node, tmp_path / "view.png", sliceOffsetRAS=hot_ras)
    assert node_ids(real.scene) == nodes_before
    assert (tmp_path / "view.png").stat().st_size > 1000 and rendered.pixels.shape[:2] == (512, 512)
    red, green, blue = rendered.pixels[_pixel_of(rendered, hot_ras)][:3].astype(int)
    assert red > blue + 30, (red, green, blue)  # warm (orange to yellow): inferno over grey at 50 %
    red, green, blue = rendered.pixels[_pixel_of(rendered, cold_ras)][:3].astype(int)
    assert abs(red - green) <= 2 and abs(green - blue) <= 2, (red, green, blue)  # grey CT only
    plain = renderSliceView(real.scene, real.ct, None, None, sliceOffsetRAS=hot_ras)
    assert np.array_equal(plain.pixels[_pixel_of(plain, cold_ras)], rendered.pixels[_pixel_of(rendered, cold_ras)])


# ---- synthetic CTs: non-identity directions, transforms, pixel sets ---------------------------------------------

def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def kits():
    """A phantom stored KiTS-like (axial axis first in file order, 20 degrees in-plane rotation), anisotropic."""
    phantom = make_phantom(seed=0, shape=(16, 64, 64), spacing=(5.0, 5.0, 12.0))
    geometry = Geometry(spacing=(3.0, 0.8, 0.7), origin=(10.0, -20.0, 30.0),
                        direction=tuple((_rotation_z(20) @ KITS_IPL).ravel()))
    orientation = SliceOrientation.from_geometry(geometry)
    assert orientation.permutation[0] == 2  # the axial axis is numpy's LAST axis (i)
    ct = np.ascontiguousarray(orientation.from_slices(phantom.ct))
    labels = np.ascontiguousarray(orientation.from_slices(phantom.labels))
    app = make_headless_slicer()
    ct_node = volume_from_array(app.scene, ct, geometry.ijk_to_ras(), "KiTS CT")
    seg = segmentation_from_labels(app.scene, labels, geometry.ijk_to_ras(), {1: "Left kidney", 2: "tumour"})
    return SimpleNamespace(app=app, scene=app.scene, ct=ct, labels=labels, geometry=geometry, orientation=orientation,
                           ct_node=ct_node, seg=seg, logic=SegHiResCAMLogic(app.scene),
                           kidney=seg.GetSegmentation().GetSegmentIdBySegmentName("Left kidney"))


def test_kits_orientation_heatmap_equals_the_core_engine(kits, model):
    nodes = kits.logic.process(kits.ct_node, kits.seg, kits.kidney, model=model, methods=METHODS, device="cpu",
                               batchSize=6)
    mask = kits.labels == 1
    reference = explain_volume(model.model, kits.orientation.to_slices(kits.ct), kits.orientation.to_slices(mask), 1,
                               layers=("bottleneck",), methods=METHODS, axis=0, batch_size=6, device="cpu",
                               preprocess=model.card.preprocess)
    present = mask.any(axis=(0, 1))  # slices along the true axial axis (numpy axis 2)
    assert 0 < present.sum() < present.size
    for key, node in nodes.items():
        assert np.array_equal(ijk_to_ras_of(node), ijk_to_ras_of(kits.ct_node))
        assert np.allclose(ijk_to_ras_of(node), kits.geometry.ijk_to_ras())
        heat = slicer.util.arrayFromVolume(node)
        assert np.array_equal(heat, kits.orientation.from_slices(reference[key]))
        assert not heat[:, :, ~present].any() and heat[:, :, present].any()


def test_parent_transform_is_shared_and_points_are_taken_in_world_space(kits, model):
    transform = kits.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = _rotation_z(15), (25.0, -10.0, 40.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    kits.ct_node.SetAndObserveTransformNodeID(transform.GetID())
    kits.seg.SetAndObserveTransformNodeID(transform.GetID())
    try:
        voxel = (30, 35, 9)  # (k, j, i); axial index = i = 9
        world = (matrix @ kits.geometry.ijk_to_ras() @ [voxel[2], voxel[1], voxel[0], 1.0])[:3]
        points = kits.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
        points.AddControlPoint(vtk.vtkVector3d(*world))
        nodes = kits.logic.process(kits.ct_node, None, None, model=model, targetClass="kidney", pixelSet="point",
                                   pointNode=points, device="cpu", batchSize=4)
        heat = slicer.util.arrayFromVolume(nodes[KEY])
        assert nodes[KEY].GetTransformNodeID() == transform.GetID()
        assert np.flatnonzero(heat.any(axis=(0, 1))).tolist() == [voxel[2]]
        segment_run = kits.logic.process(kits.ct_node, kits.seg, kits.kidney, model=model, device="cpu", batchSize=6)
        assert all(n.GetTransformNodeID() == transform.GetID() for n in segment_run.values())
        assert np.flatnonzero(slicer.util.arrayFromVolume(segment_run[KEY]).any(axis=(0, 1))).tolist() \
            == np.flatnonzero((kits.labels == 1).any(axis=(0, 1))).tolist()
    finally:
        kits.ct_node.SetAndObserveTransformNodeID(None)
        kits.seg.SetAndObserveTransformNodeID(None)


def test_slice_pixel_set_explains_one_axial_slice(kits, model):
    nodes = kits.logic.process(kits.ct_node, None, None, model=model, targetClass=1, pixelSet="slice", sliceIndex=7,
                               methods=("seg-xres-cam",), device="cpu", batchSize="auto")
    heat = slicer.util.arrayFromVolume(nodes[("seg-xres-cam", "bottleneck")])
    assert np.flatnonzero(heat.any(axis=(0, 1))).tolist() == [7]
    assert "Seg-XRes CAM" in nodes[("seg-xres-cam", "bottleneck")].GetName()


def test_prediction_pixel_set_adds_a_named_segmentation(kits, model):
    predicted = kits.orientation.from_slices(predict_volume(model.model, kits.orientation.to_slices(kits.ct), axis=0,
                                                            preprocess=model.card.preprocess, device="cpu"))
    target = int(np.argmax(np.bincount(predicted.ravel(), minlength=4)[1:])) + 1
    count = kits.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()
    nodes = kits.logic.process(kits.ct_node, None, None, model=model, targetClass=target, pixelSet="prediction",
                               layers=["enc2", "bottleneck"], device="cpu", batchSize=8)
    assert set(nodes) == {(m, layer) for m in METHODS for layer in ("enc2", "bottleneck")}
    assert kits.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == count + 1
    prediction = kits.logic.lastPredictionNode
    segmentation = prediction.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert sorted(names) == ["cyst", "kidney", "tumor"]
    assert prediction.GetAttribute(ATTRIBUTE_PREFIX + "Role") == "prediction"
    heat = slicer.util.arrayFromVolume(nodes[KEY])
    assert not heat[:, :, ~(predicted == target).any(axis=(0, 1))].any()
    again = kits.logic.process(kits.ct_node, None, None, model=model, targetClass=target, pixelSet="slice",
                               sliceIndex=3, device="cpu", batchSize=8)
    assert kits.scene.GetNodeByID(prediction.GetID()) is None  # replaced with the rest of the last run
    assert len(again) == 2 and kits.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == count
    assert kits.logic.lastPredictionNode is None


def test_module_self_test_body_runs_headless(model):
    from seghirescam.mrml.selftest import run_self_test

    app = make_headless_slicer()
    summary = run_self_test(app.scene, model=model, shape=(16, 64, 64), spacing=(5.0, 5.0, 12.0), device="cpu")
    assert len(summary["heatmaps"]) == 2 and summary["slices_with_kidney"] > 0


def test_only_the_mrml_modules_import_slicer():
    """The core package stays importable without Slicer: no slicer/vtk/qt/ctk import anywhere else (even lazily)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "SegHiResCAM" / "seghirescam"
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.stem.startswith("mrml"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("slicer", "vtk", "qt", "ctk")]
    assert not offenders
