"""Click to explain on real MRML nodes (PyPI slicer-core, headless): geometry, the slice cache, refusals.

A phantom CT stored KiTS-like (axial axis last in numpy order, 20 degrees in-plane rotation,
anisotropic), the shipped default model on the CPU; heatmaps compared with the core pipeline
(``LoadedModel.explain_ct``) for the same M. Arrays are numpy (k, j, i).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require_module

slicer = require_module("slicer")
vtk = require_module("vtk")

from scipy import ndimage  # noqa: E402

from seghirescam.cam.pixel_sets import pixel_set_from_points  # noqa: E402
from seghirescam.imaging.geometry import Geometry  # noqa: E402
from seghirescam.imaging.volumes import SliceOrientation, Volume  # noqa: E402
from seghirescam.models.loading import load_default_model  # noqa: E402
from seghirescam.mrml.click import CLICK_ROLE, ClickExplainLogic  # noqa: E402
from seghirescam.mrml.logic import ATTRIBUTE_PREFIX, SegHiResCAMLogic  # noqa: E402
from seghirescam.mrml.nodes import ijk_to_ras_of, node_ids  # noqa: E402
from seghirescam.synthetic.phantom import make_phantom  # noqa: E402
from slicer_scene import make_headless_slicer, node_checksum, volume_from_array  # noqa: E402

METHODS = ("seg-hires-grad-cam", "seg-grad-cam")
LAYERS = ("bottleneck", "dec3")
KIDNEY = 1
KITS_IPL = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float)  # i -> Inferior, j -> Posterior, k -> Left


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def case():
    phantom = make_phantom(seed=0, shape=(10, 80, 72), spacing=(4.5, 4.5, 6.0))
    geometry = Geometry(spacing=(3.0, 0.8, 0.7), origin=(10.0, -20.0, 30.0),
                        direction=tuple((_rotation_z(20) @ KITS_IPL).ravel()))
    orientation = SliceOrientation.from_geometry(geometry)
    assert orientation.permutation[0] == 2 and any(orientation.flips)  # axial = numpy's last axis, flipped axes
    ct = np.ascontiguousarray(orientation.from_slices(phantom.ct))
    app = make_headless_slicer()
    ct_node = volume_from_array(app.scene, ct, geometry.ijk_to_ras(), "KiTS CT")
    model = load_default_model()
    return SimpleNamespace(app=app, scene=app.scene, ct=ct, geometry=geometry, orientation=orientation,
                           ct_node=ct_node, model=model)


def _world(case, voxel, transform: np.ndarray | None = None) -> np.ndarray:
    k, j, i = voxel
    local = case.geometry.ijk_to_ras() @ [i, j, k, 1.0]
    return ((transform if transform is not None else np.eye(4)) @ local)[:3]


def _reference(case, mask: np.ndarray, layers=LAYERS) -> dict:
    """The core pipeline's heatmaps (k, j, i) for M = mask, as Apply would make them."""
    result = case.model.explain_ct(Volume(case.ct, case.geometry), mask, KIDNEY, layers=layers, methods=METHODS,
                                   device="cpu", batch_size=1, normalize="volume")
    return result.maps


def _assert_maps(nodes, reference, axial_index: int) -> None:
    assert set(nodes) == set(reference)
    for key, node in nodes.items():
        heat = slicer.util.arrayFromVolume(node)
        np.testing.assert_allclose(heat, reference[key], rtol=1e-5, atol=1e-5, err_msg=str(key))
        assert np.flatnonzero(heat.any(axis=(0, 1))).tolist() == [axial_index], key  # other slices zero
    assert all(values.max() > 0 for values in reference.values())  # not a comparison between zeros


def _forward_counter(case):
    calls = []
    handle = case.model.model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_the_clicked_voxel_is_m_and_the_maps_equal_the_pipeline(case):
    click = ClickExplainLogic(case.scene, case.ct_node, case.model, "kidney", layers=LAYERS, methods=METHODS,
                              mode="pixel", device="cpu")
    voxel = (40, 33, 6)  # (k, j, i); the axial axis is i
    nodes = click.explainAtRAS(_world(case, voxel))
    assert click.lastClick.voxel == voxel and click.lastClick.sliceIndex == 6 and click.lastClick.axis == 2
    assert click.lastClick.explanation.mask.sum() == 1
    mask = pixel_set_from_points(case.ct.shape, [voxel], radius=0, axis=2)
    _assert_maps(nodes, _reference(case, mask), 6)
    for (method, layer), node in nodes.items():
        assert np.array_equal(ijk_to_ras_of(node), ijk_to_ras_of(case.ct_node))
        assert np.allclose(ijk_to_ras_of(node), case.geometry.ijk_to_ras())
        assert node.GetAttribute(ATTRIBUTE_PREFIX + "Role") == CLICK_ROLE
        assert node.GetAttribute(ATTRIBUTE_PREFIX + "ClickVoxel") == "40,33,6"
        assert (node.GetAttribute(ATTRIBUTE_PREFIX + "Method"), node.GetAttribute(ATTRIBUTE_PREFIX + "Layer")) \
            == (method, layer)
        assert node.GetAttribute(ATTRIBUTE_PREFIX + "SourceVolumeID") == case.ct_node.GetID()
    assert set(SegHiResCAMLogic(case.scene).resultNodes(case.ct_node, CLICK_ROLE)) == set(nodes.values())
    click.clear()
    assert not SegHiResCAMLogic(case.scene).resultNodes(case.ct_node, CLICK_ROLE)


def test_parent_transform_and_disc_mode(case):
    transform = case.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = _rotation_z(15), (25.0, -10.0, 40.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    case.ct_node.SetAndObserveTransformNodeID(transform.GetID())
    click = ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY, layers=LAYERS, methods=METHODS,
                              mode="disc", radius=2, device="cpu")
    try:
        voxel = (35, 50, 3)
        nodes = click.explainAtRAS(_world(case, voxel, matrix))
        assert click.lastClick.voxel == voxel and click.lastClick.explanation.mask.sum() == 13
        assert all(node.GetTransformNodeID() == transform.GetID() for node in nodes.values())
        _assert_maps(nodes, _reference(case, pixel_set_from_points(case.ct.shape, [voxel], radius=2, axis=2)), 3)
        with pytest.raises(ValueError, match="outside the CT"):
            click.explainAtRAS(_world(case, voxel))  # the untransformed position is off the moved CT
    finally:
        click.clear()
        case.ct_node.SetAndObserveTransformNodeID(None)
        case.scene.RemoveNode(transform)


def test_a_second_click_on_the_slice_runs_no_forward_and_other_slices_refresh_the_cache(case):
    click = ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY, layers=("bottleneck",), methods=METHODS,
                              device="cpu")
    calls, handle = _forward_counter(case)
    try:
        first = click.explainAtRAS(_world(case, (40, 33, 6)))
        assert len(calls) == 1 and click.lastClick.ranForward
        second = click.explainAtRAS(_world(case, (20, 45, 6)))
        assert len(calls) == 1 and not click.lastClick.ranForward
        assert {key: node.GetID() for key, node in second.items()} == {key: node.GetID() for key, node in first.items()}
        click.configure(mode="disc", radius=3, normalize="none")  # M and scaling only: the cache stays
        click.explainAtRAS(_world(case, (20, 45, 6)))
        assert len(calls) == 1 and click.lastClick.explanation.mask.sum() == 29
        click.configure(mode="pixel", normalize="volume")
        third = click.explainAtRAS(_world(case, (20, 45, 2)))  # another slice: one new forward
        assert len(calls) == 2 and click.lastClick.ranForward
        for node in third.values():
            assert np.flatnonzero(slicer.util.arrayFromVolume(node).any(axis=(0, 1))).tolist() == [2]
        click.configure(layers=("dec3",))  # another layer on the same slice: a new forward, new nodes
        nodes = click.explainAtRAS(_world(case, (20, 45, 2)))
        assert len(calls) == 3 and set(nodes) == {(m, "dec3") for m in METHODS}
        assert not any(case.scene.GetNodeByID(node.GetID()) for node in third.values())
        click.configure(targetClass="tumor")
        tumor = click.explainAtRAS(_world(case, (20, 45, 2)))
        assert len(calls) == 4
        mask = pixel_set_from_points(case.ct.shape, [(20, 45, 2)], radius=0, axis=2)
        reference = case.model.explain_ct(Volume(case.ct, case.geometry), mask, 2, layers=("dec3",), methods=METHODS,
                                          device="cpu", batch_size=1).maps
        for key, node in tumor.items():
            assert node.GetAttribute(ATTRIBUTE_PREFIX + "TargetClass") == "tumor"
            np.testing.assert_allclose(slicer.util.arrayFromVolume(node), reference[key], rtol=1e-5, atol=1e-5)
    finally:
        handle.remove()
        click.clear()


def test_component_mode_explains_the_predicted_region_and_refuses_a_click_outside(case):
    click = ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY, layers=("bottleneck",), methods=METHODS,
                              mode="component", device="cpu")
    predicted = case.model.predict_ct(Volume(case.ct, case.geometry), device="cpu")
    index = int(np.argmax((predicted == KIDNEY).sum(axis=(0, 1))))
    kidney = np.argwhere(predicted[:, :, index] == KIDNEY)
    assert len(kidney), "the default model should find a kidney in the phantom"
    voxel = (int(kidney[0][0]), int(kidney[0][1]), index)
    try:
        nodes = click.explainAtRAS(_world(case, voxel))
        region = ndimage.label(predicted[:, :, index] == KIDNEY)[0]  # the (k, j) plane of the axial slice
        mask = np.zeros(case.ct.shape, bool)
        mask[:, :, index] = region == region[voxel[0], voxel[1]]
        assert 1 < click.lastClick.explanation.mask.sum() == mask.sum() < (predicted[:, :, index] == 0).sum()
        _assert_maps(nodes, _reference(case, mask, layers=("bottleneck",)), index)
        before = {node.GetID(): node_checksum(node) for node in nodes.values()}
        count = case.scene.GetNumberOfNodes()
        outside = np.argwhere(predicted[:, :, index] == 0)[0]
        with pytest.raises(ValueError, match="does not predict 'kidney' at the clicked voxel"):
            click.explainAtRAS(_world(case, (int(outside[0]), int(outside[1]), index)))
        assert case.scene.GetNumberOfNodes() == count
        assert {node.GetID(): node_checksum(node) for node in nodes.values()} == before
    finally:
        click.clear()


def test_bad_settings_and_models_are_refused_clearly(case, tmp_path):
    ids = node_ids(case.scene)
    with pytest.raises(ValueError, match="click mode must be one of pixel, disc, component"):
        ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY, mode="lasso")
    with pytest.raises(ValueError, match="unknown layer"):
        ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY, layers=("nope",))
    with pytest.raises(ValueError, match="radius"):
        ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY, mode="disc", radius=-2)
    with pytest.raises(ValueError, match="CT scalar volume"):
        ClickExplainLogic(case.scene, None, case.model, KIDNEY)
    click = ClickExplainLogic(case.scene, case.ct_node, case.model, KIDNEY)
    with pytest.raises(ValueError, match="unknown click setting"):
        click.configure(colour="red")
    with pytest.raises(ValueError, match="normalize must be one of"):
        click.configure(normalize="max")
    assert click.normalize == "volume"  # a refused change changes nothing
    import monai_bundles

    from seghirescam.models.explainable import load_explainable_model

    volumetric = load_explainable_model(monai_bundles.make_bundle(tmp_path, "3d"))
    with pytest.raises(ValueError, match="is a 3D model"):
        ClickExplainLogic(case.scene, case.ct_node, volumetric, KIDNEY)
    patches = load_explainable_model(monai_bundles.make_bundle(tmp_path, "2d"))
    with pytest.raises(ValueError, match="sees whole slices"):
        ClickExplainLogic(case.scene, case.ct_node, patches, KIDNEY)
    assert node_ids(case.scene) == ids
