"""Faults of issue 12 at the Logic level, each on a real headless MRML scene (slicer-core).

A closed-surface-only segmentation stays unchanged; raw ("none") maps get a window that fits
their values and a legend that says so; the batch size keeps its 0..1024 range everywhere; the
settings survive a scene bundle (.mrb) round trip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_module

slicer = require_module("slicer")
vtk = require_module("vtk")

from seghirescam.mrml.display import add_legend  # noqa: E402
from seghirescam.mrml.logic import ATTRIBUTE_PREFIX, SegHiResCAMLogic  # noqa: E402
from seghirescam.mrml.nodes import node_ids  # noqa: E402
from seghirescam.mrml.parameters import BATCH_SIZE_RANGE, SETTINGS, ModuleParameters, parameter_node  # noqa: E402
from seghirescam.synthetic.phantom import make_phantom  # noqa: E402
from slicer_scene import make_headless_slicer, read_mrb, segmentation_from_labels, volume_from_array  # noqa: E402


@pytest.fixture(scope="module")
def model():
    import torch

    from seghirescam import UNet2D
    from seghirescam.models.loading import LoadedModel, unet_card

    torch.manual_seed(0)
    net = UNet2D(1, 4, (4, 8, 16)).eval()
    card = unet_card(net, "test", ("background", "kidney", "tumor", "cyst"), hu_clip=(-200, 300), mean=50, std=100)
    return LoadedModel(net, card, Path("test"))


@pytest.fixture()
def phantom_scene():
    phantom = make_phantom(seed=0, shape=(12, 64, 64), spacing=(5.0, 5.0, 12.0))
    app = make_headless_slicer()
    matrix = phantom.geometry.ijk_to_ras()
    ct = volume_from_array(app.scene, phantom.ct, matrix, "CT")
    seg = segmentation_from_labels(app.scene, phantom.labels, matrix, {1: "kidney", 2: "tumor"})
    return app, ct, seg, phantom


def _representations(segmentation_node) -> list[str]:
    converter = slicer.vtkSegmentationConverter
    names = (converter.GetBinaryLabelmapRepresentationName(), converter.GetClosedSurfaceRepresentationName())
    return sorted(name for name in names if segmentation_node.GetSegmentation().ContainsRepresentation(name))


def test_closed_surface_only_segmentation_is_not_changed(phantom_scene, model):
    app, ct, seg, phantom = phantom_scene
    assert seg.CreateClosedSurfaceRepresentation()
    closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    seg.GetSegmentation().SetSourceRepresentationName(closed)
    seg.GetSegmentation().RemoveRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    assert _representations(seg) == [closed]
    kidney = seg.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    before = node_ids(app.scene)
    nodes = SegHiResCAMLogic(app.scene).process(ct, seg, kidney, model=model, device="cpu", batchSize=4)
    assert _representations(seg) == [closed]  # no labelmap representation added to the input
    heat = slicer.util.arrayFromVolume(nodes[("seg-hires-grad-cam", "bottleneck")])
    present = (phantom.labels == 1).any(axis=(1, 2))
    assert heat[present].any() and not heat[~present].any()  # M still came from the surfaces
    assert node_ids(app.scene) - before == {n.GetID() for node in nodes.values()
                                            for n in (node, node.GetDisplayNode())} | _color_ids(app.scene, before)


def _color_ids(scene, before) -> set[str]:
    return {i for i in node_ids(scene) - before if scene.GetNodeByID(i).IsA("vtkMRMLColorNode")}


def test_raw_values_get_a_fitting_window_and_an_honest_legend(phantom_scene, model):
    app, ct, seg, _ = phantom_scene
    kidney = seg.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    logic = SegHiResCAMLogic(app.scene, colorLogic=app.colors)
    node = logic.process(ct, seg, kidney, model=model, device="cpu", normalize="none",
                         methods=("seg-hires-grad-cam",))[("seg-hires-grad-cam", "bottleneck")]
    top = float(slicer.util.arrayFromVolume(node).max())
    assert top > 0 and node.GetAttribute(ATTRIBUTE_PREFIX + "Normalize") == "none"
    display = node.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, top), rel=1e-5)
    assert display.GetLowerThreshold() == pytest.approx(0.05 * top, rel=1e-5)
    assert add_legend(node, app.colors).GetTitleText() == "CAM (raw values)"
    normalized = logic.process(ct, seg, kidney, model=model, device="cpu",
                               methods=("seg-hires-grad-cam",))[("seg-hires-grad-cam", "bottleneck")]
    assert normalized.GetDisplayNode().GetWindowLevelMax() == pytest.approx(1.0)
    assert add_legend(normalized, app.colors).GetTitleText() == "CAM (normalized)"


@pytest.mark.parametrize("bad", [-1, -8, BATCH_SIZE_RANGE[1] + 1, 2.5, "many", True])
def test_a_batch_size_outside_its_range_is_refused_before_any_work(phantom_scene, model, bad):
    app, ct, seg, _ = phantom_scene
    kidney = seg.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    before = node_ids(app.scene)
    with pytest.raises(ValueError, match="batchSize"):
        SegHiResCAMLogic(app.scene).process(ct, seg, kidney, model=model, device="cpu", batchSize=bad)
    assert node_ids(app.scene) == before


def test_the_parameter_node_keeps_the_batch_size_range():
    scene = slicer.vtkMRMLScene()
    params = ModuleParameters(parameter_node(scene))
    assert params.batchSize == 0  # shown as "auto"
    for bad in (-1, BATCH_SIZE_RANGE[1] + 1):
        with pytest.raises(ValueError, match="batchSize must be 0..1024"):
            params.batchSize = bad
    params.batchSize = 16
    params.node.SetParameter("batchSize", "-5")  # e.g. written by an older version
    assert params.batchSize == 0
    with pytest.raises(ValueError, match="pixelSet"):
        params.pixelSet = "everything"


def _fill(params: ModuleParameters, scene, ct, seg, point) -> dict:
    """Give every setting a non-default value; returns what was set."""
    params.inputVolume, params.segmentationNode, params.pointNode = ct, seg, point
    chosen = {"segmentId": seg.GetSegmentation().GetNthSegmentID(1), "modelPath": "/models/Dataset001_Kidney/nnUNet",
              "modelFolds": "0,1", "targetClass": "tumor", "layer": "enc2", "methods": "seg-xres-cam,seg-grad-cam",
              "device": "cpu", "normalize": "none", "pixelSet": "point", "batchSize": 1024, "outputPrefix": "Case 7",
              "keepPrevious": True, "clickMode": "component", "clickRadius": 5}
    for name, value in chosen.items():
        setattr(params, name, value)
    assert {s.name for s in SETTINGS} == set(chosen) | {"inputVolume", "segmentationNode", "pointNode"}
    return chosen


def test_every_setting_survives_a_scene_bundle_round_trip(phantom_scene, tmp_path):
    app, ct, seg, _ = phantom_scene
    point = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    point.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0))
    params = ModuleParameters(parameter_node(app.scene))
    chosen = _fill(params, app.scene, ct, seg, point)
    saved = params.values()
    assert app.scene.WriteToMRB(str(tmp_path / "scene.mrb"))
    app.scene.Clear(0)
    assert ModuleParameters(parameter_node(app.scene)).values()["modelPath"] == ""  # cleared for real
    loaded = read_mrb(tmp_path / "scene.mrb", tmp_path / "cache", make_headless_slicer().scene)
    restored = ModuleParameters(parameter_node(loaded))
    assert restored.values() == saved
    assert {name: getattr(restored, name) for name in chosen} == chosen
    assert restored.inputVolume.GetName() == "CT" and restored.segmentationNode.GetName() == "Segmentation"
    assert restored.pointNode.GetNumberOfControlPoints() == 1
    assert loaded.GetNodesByClass("vtkMRMLScriptedModuleNode").GetNumberOfItems() == 1
