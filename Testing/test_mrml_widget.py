"""The real SegHiResCAM.py Widget, Module and Test classes, driven as a radiologist would (Testing/slicer_widgets.py).

Real MRML (slicer-core), the real Logic and worker process; stand-ins only for the Qt/CTK/qMRML
widgets. Scenarios: first run without PyTorch, Apply, Cancel mid-run, scene close mid-run, results
switching, a model that fails to load, the model folder picker (nnU-Net), the batch-size field, the
parameter node through a scene bundle, cleanup, the self-test with Sample Data.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_module, require_real_ct

slicer = require_module("slicer")

from seghirescam.mrml.nodes import node_ids  # noqa: E402
from seghirescam.mrml.parameters import BATCH_SIZE_RANGE, ModuleParameters, parameter_node  # noqa: E402
from seghirescam.mrml.sample_data import add_phantom_case  # noqa: E402
from slicer_scene import read_mrb  # noqa: E402
from slicer_widgets import install_harness  # noqa: E402

TESTING = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small U-Net saved as a model file with its card (what a user picks in 'Model file')."""
    import torch

    from seghirescam import UNet2D
    from seghirescam.models.loading import save_model, unet_card

    torch.manual_seed(0)
    net = UNet2D(1, 4, (4, 8, 16)).eval()
    card = unet_card(net, "small test U-Net", ("background", "kidney", "tumor", "cyst"), hu_clip=(-200, 300),
                     mean=50, std=100)
    return save_model(net, card, tmp_path_factory.mktemp("model") / "small.safetensors")


@pytest.fixture()
def harness(monkeypatch):
    h = install_harness(monkeypatch)
    h.load_module()
    yield h
    h.close()


def _open_with_phantom(harness, model_file, shape=(12, 64, 64), spacing=(5.0, 5.0, 12.0)):
    _, ct, seg = add_phantom_case(harness.scene, shape, spacing)
    widget = harness.open_module()
    widget.ui.modelPathLineEdit.currentPath = str(model_file)  # the user picks the model file
    widget.ui.inputVolumeSelector.setCurrentNode(ct)
    widget.ui.segmentSelector.setCurrentNode(seg)
    widget.ui.segmentSelector.setCurrentSegmentID(seg.GetSegmentation().GetSegmentIdBySegmentName("kidney"))
    return widget, ct, seg


def _heatmaps(scene) -> list:
    return [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())
            if scene.GetNthNode(n).GetAttribute("SegHiResCAM.Role") == "heatmap"]


def _foreground_ids(scene) -> set:
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return {composites.GetItemAsObject(n).GetForegroundVolumeID() for n in range(composites.GetNumberOfItems())}


def test_importing_the_module_file_imports_no_torch():
    """Slicer imports every module at start-up: with torch installed, ours must not import it."""
    script = (
        "import sys, time; sys.path[:0] = [%r, %r]\n"
        "import pytest; from slicer_widgets import install_harness\n"
        "h = install_harness(pytest.MonkeyPatch())\n"
        "started = time.perf_counter(); h.load_module(); seconds = time.perf_counter() - started\n"
        "print('torch' in sys.modules, round(seconds, 3))\n"
    ) % (str(TESTING), str(TESTING.parent / "SegHiResCAM"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    imported, seconds = out.stdout.split()[-2:]
    print(f"module file import: {seconds} s (torch imported: {imported})")
    assert imported == "False", out.stderr


def test_first_run_without_torch_enables_apply_and_installs_on_apply(harness, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec("torch") is None: PyTorch is not installed
    _, ct, seg = add_phantom_case(harness.scene, (12, 64, 64), (5.0, 5.0, 12.0))
    widget = harness.open_module()
    assert "PyTorch is not installed" in widget.modelStatusLabel.text
    widget.ui.inputVolumeSelector.setCurrentNode(ct)
    widget.ui.segmentSelector.setCurrentNode(seg)
    widget.ui.segmentSelector.setCurrentSegmentID(seg.GetSegmentation().GetSegmentIdBySegmentName("kidney"))
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip
    before = node_ids(harness.scene)
    harness.confirm = False  # the user declines the installation
    widget.ui.applyButton.click()
    assert harness.pip_calls == [] and "declined" in harness.errors[-1]
    harness.confirm = True
    widget.ui.applyButton.click()
    assert harness.pip_calls and "torch>=2.1" in harness.pip_calls[0]
    assert "fails to load" in harness.errors[-1] and "Restart" in harness.errors[-1]  # our torch stays blocked
    assert node_ids(harness.scene) == before and widget._run is None and widget.ui.applyButton.text == "Apply"


def test_a_torch_that_raises_oserror_is_reported_not_fatal(harness, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise OSError("[WinError 126] The specified module could not be found (c10.dll)")
        return real_import(name, *args, **kwargs)

    for name, module in list(sys.modules.items()):  # as in a fresh Slicer: torch and what imports it not loaded yet
        if name == "torch" or name.startswith(("torch.", "safetensors", "seghirescam.models")) or (
                name.startswith("seghirescam.") and module is not None and "torch" in vars(module)):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", broken_torch)
    widget = harness.open_module()  # the model cannot load: said, and the module still works
    assert "PyTorch fails to load" in widget.modelStatusLabel.text and "OSError" in widget.modelStatusLabel.text
    with pytest.raises(harness.module.DependencyError, match="OSError.*Restart"):
        harness.module.ensureDependencies()


def test_apply_runs_in_a_worker_and_shows_progress(harness, model_file):
    widget, ct, seg = _open_with_phantom(harness, model_file)
    assert "small test U-Net" in widget.modelStatusLabel.text
    assert [widget.ui.targetClassComboBox.itemData(n) for n in range(widget.ui.targetClassComboBox.count)] == \
        ["", "kidney", "tumor", "cyst"]
    assert widget.ui.targetClassComboBox.itemText(0) == 'Auto: kidney (from "kidney")'
    assert widget.ui.layerComboBox.currentData == "bottleneck"
    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text == "Cancel" and harness.timer.isActive() and _heatmaps(harness.scene) == []
    texts = []
    harness.run_until(lambda: texts.append(widget.ui.statusLabel.text) or widget._run is None)
    assert widget.ui.statusLabel.text.startswith("Done: 2 heatmap(s)"), widget.ui.statusLabel.text
    assert any("(" in t and " s)" in t for t in texts[:-1])  # elapsed time shown while running
    heatmaps = _heatmaps(harness.scene)
    assert len(heatmaps) == 2 and widget.ui.resultComboBox.count == 2
    assert {h.GetAttribute("SegHiResCAM.ModelPath") for h in heatmaps} == {str(model_file)}
    assert _foreground_ids(harness.scene) == {widget.ui.resultComboBox.currentData}
    assert not harness.timer.isActive() and widget.ui.applyButton.text == "Apply"


def test_cancel_mid_run_stops_the_worker_at_once_and_leaves_the_scene(harness, model_file):
    widget, ct, seg = _open_with_phantom(harness, model_file, shape=(24, 256, 256), spacing=(1.5, 1.5, 6.0))
    widget.ui.batchSizeSpinBox.value = 1
    before = node_ids(harness.scene)
    widget.ui.applyButton.click()
    run = widget._run
    harness.run_until(lambda: run.poll().stage == "explain" and 0 < run.poll().done < run.poll().total
                      or run.poll().state != "running")
    assert run.poll().state == "running", "the run ended before it could be cancelled mid-way"
    started = time.perf_counter()
    widget.ui.applyButton.click()  # Cancel
    seconds = time.perf_counter() - started
    print(f"cancel took {seconds:.3f} s")
    assert run.job.process.poll() is not None  # the worker is gone when the click returns
    assert widget._run is None and not harness.timer.isActive() and widget.ui.applyButton.text == "Apply"
    assert widget.ui.statusLabel.text.startswith("Cancelled") and node_ids(harness.scene) == before
    assert not run.job.folder.exists()


def test_closing_the_scene_mid_run_cancels_it_and_nothing_reaches_the_next_patient(harness, model_file):
    widget, ct, seg = _open_with_phantom(harness, model_file)
    widget.ui.applyButton.click()
    run = widget._run
    harness.close_scene()
    assert run.job.process.poll() is not None and widget._run is None
    assert "scene was closed" in widget.ui.statusLabel.text and widget.ui.resultComboBox.count == 0
    _, ct2, seg2 = add_phantom_case(harness.scene, (12, 64, 64), (5.0, 5.0, 12.0), seed=3)  # the next patient
    for _ in range(10):
        harness.timer.tick()
    assert _heatmaps(harness.scene) == [] and widget.ui.resultComboBox.count == 0
    assert _foreground_ids(harness.scene) <= {None, ""}
    assert widget.ui.inputVolumeSelector.currentNode() is ct2  # the selector follows the new scene


def test_results_switch_and_never_point_at_other_nodes(harness, model_file):
    widget, ct, seg = _open_with_phantom(harness, model_file)
    widget.ui.applyButton.click()
    harness.run_until(lambda: widget._run is None)
    combo = widget.ui.resultComboBox
    first, second = combo.itemData(0), combo.itemData(1)
    combo.setCurrentIndex(1)
    assert _foreground_ids(harness.scene) == {second}
    combo.setCurrentIndex(0)
    assert _foreground_ids(harness.scene) == {first}
    harness.close_scene()
    assert combo.count == 0
    _, ct2, _ = add_phantom_case(harness.scene, (12, 64, 64), (5.0, 5.0, 12.0), seed=3)
    combo.addItem("stale entry", ct2.GetID())  # even an ID that now names the next CT is never shown as a heatmap
    widget.onResultChanged()
    assert ct2.GetID() not in _foreground_ids(harness.scene)


def test_a_model_that_fails_to_load_is_shown_and_never_replaced(harness, model_file, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    (tmp_path / "broken.card.json").write_text(Path(str(model_file).replace(".safetensors", ".card.json")).read_text())
    widget, ct, seg = _open_with_phantom(harness, broken)
    assert widget.modelStatusLabel.text.startswith(f"Could not load {broken}")
    assert not widget.ui.applyButton.enabled and "model" in widget.ui.applyButton.toolTip
    assert widget.ui.layerComboBox.count == 0 and widget._model is None
    widget.ui.applyButton.click()  # disabled: nothing happens
    assert widget._run is None and _heatmaps(harness.scene) == []
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "missing.safetensors")
    assert "missing.safetensors" in widget.modelStatusLabel.text and widget._model is None
    widget.ui.modelPathLineEdit.currentPath = str(model_file)
    assert widget._model is not None and widget.ui.applyButton.enabled


@pytest.mark.slow
def test_model_folder_picker_loads_an_nnunet_folder_and_lists_its_classes(harness, tiny_nnunet_root):
    sys.path.insert(0, str(TESTING))
    from nnunet_folders import ensure_tiny_results

    folder = ensure_tiny_results(tiny_nnunet_root)["2d"]
    widget = harness.open_module()
    widget.modelFolderButton.directory = str(folder)  # the user picks the folder
    assert widget.ui.modelPathLineEdit.currentPath == str(folder)
    assert ModuleParameters(parameter_node(harness.scene)).modelPath == str(folder)
    model = widget._model
    assert model is not None, widget.modelStatusLabel.text
    assert [widget.ui.targetClassComboBox.itemData(n) for n in range(1, widget.ui.targetClassComboBox.count)] \
        == list(model.class_names[1:])
    assert widget.ui.layerComboBox.currentData == model.default_layer and "encoder.stages" in model.default_layer
    widget.modelFoldsLineEdit.type_and_finish("7")  # a fold the folder does not have: shown, not replaced
    assert widget._model is None and "fold" in widget.modelStatusLabel.text.lower()
    assert not widget.ui.applyButton.enabled


def test_batch_size_field_keeps_its_range_and_shows_auto(harness):
    widget = harness.open_module()
    box = widget.ui.batchSizeSpinBox
    assert (box.minimum, box.maximum) == BATCH_SIZE_RANGE and box.text == "auto"
    box.value = -5
    assert box.value == 0 and ModuleParameters(parameter_node(harness.scene)).batchSize == 0
    box.value = 5000
    assert box.value == 1024 and ModuleParameters(parameter_node(harness.scene)).batchSize == 1024
    assert widget._runArguments()["batchSize"] == 1024


def test_every_setting_made_in_the_widget_comes_back_with_the_scene(harness, model_file, tmp_path):
    widget, ct, seg = _open_with_phantom(harness, model_file)
    point = harness.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    ui = widget.ui
    ui.segmentSelector.setCurrentSegmentID(seg.GetSegmentation().GetSegmentIdBySegmentName("tumor"))
    ui.pixelSetComboBox.choose("point")
    ui.pointSelector.setCurrentNode(point)
    ui.targetClassComboBox.choose("cyst")
    ui.layerComboBox.choose("enc2")
    ui.deviceComboBox.choose("cpu")
    ui.normalizeComboBox.choose("none")
    ui.batchSizeSpinBox.value = 12
    ui.outputPrefixLineEdit.text = "Case 7"
    ui.keepPreviousCheckBox.checked = True
    widget._methodCheckBoxes["seg-grad-cam"].checked = False
    widget._methodCheckBoxes["seg-xres-cam"].checked = True
    widget.clickModeComboBox.choose("component")
    widget.clickRadiusSpinBox.value = 4
    saved = ModuleParameters(parameter_node(harness.scene)).values()
    assert saved["targetClass"] == "cyst" and saved["layer"] == "enc2" and saved["methods"] == "seg-hires-grad-cam,seg-xres-cam"
    assert harness.scene.WriteToMRB(str(tmp_path / "case.mrb"))
    harness.close_scene()
    assert ModuleParameters(parameter_node(harness.scene)).values()["outputPrefix"] == ""
    assert ui.outputPrefixLineEdit.text == "" and ui.batchSizeSpinBox.value == 0
    read_mrb(tmp_path / "case.mrb", tmp_path / "cache", harness.scene)  # File > Load scene
    assert ModuleParameters(parameter_node(harness.scene)).values() == saved
    widget.exit()
    widget.enter()  # the user comes back to the module
    assert ui.inputVolumeSelector.currentNode().GetID() == saved["inputVolume"]
    assert ui.segmentSelector.currentSegmentID() == saved["segmentId"]
    assert (ui.pixelSetComboBox.currentData, ui.pointSelector.currentNode().GetID()) == ("point", saved["pointNode"])
    assert ui.modelPathLineEdit.currentPath == str(model_file) and widget._model is not None
    assert (ui.targetClassComboBox.currentData, ui.layerComboBox.currentData) == ("cyst", "enc2")
    assert (ui.deviceComboBox.currentData, ui.normalizeComboBox.currentData) == ("cpu", "none")
    assert (ui.batchSizeSpinBox.value, ui.outputPrefixLineEdit.text, ui.keepPreviousCheckBox.checked) == (12, "Case 7", True)
    assert [k for k, box in widget._methodCheckBoxes.items() if box.checked] == ["seg-hires-grad-cam", "seg-xres-cam"]
    assert (widget.clickModeComboBox.currentData, widget.clickRadiusSpinBox.value) == ("component", 4)


def test_click_to_explain_explains_each_clicked_pixel_on_its_slice(harness, model_file):
    import numpy as np

    from seghirescam.mrml.nodes import ijk_to_ras_of

    widget, ct, seg = _open_with_phantom(harness, model_file)
    kidney = seg.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    from seghirescam.mrml.nodes import segment_mask

    labels = segment_mask(harness.scene, seg, kidney, ct)
    k, j, i = (int(v) for v in np.argwhere(labels)[len(np.argwhere(labels)) // 2])
    ras = (ijk_to_ras_of(ct) @ [i, j, k, 1.0])[:3]
    widget.clickModeComboBox.choose("disc")
    widget.clickRadiusSpinBox.value = 6
    widget.clickCheckBox.checked = True
    assert widget._clickExplainer is not None and "click a pixel" in widget.ui.statusLabel.text, widget.ui.statusLabel.text
    harness.click_slice_view(ras)
    assert "forward + backward" in widget.ui.statusLabel.text, widget.ui.statusLabel.text
    clicks = [n for n in (harness.scene.GetNthNode(x) for x in range(harness.scene.GetNumberOfNodes()))
              if n.GetAttribute("SegHiResCAM.Role") == "click"]
    assert clicks and widget._clickPoints.GetNumberOfControlPoints() == 0
    heats = [slicer.util.arrayFromVolume(node) for node in clicks]
    assert any(heat[k].any() for heat in heats) and not any(np.delete(heat, k, axis=0).any() for heat in heats)
    assert _foreground_ids(harness.scene) == {clicks[0].GetID()}
    harness.click_slice_view((ijk_to_ras_of(ct) @ [i + 1, j, k, 1.0])[:3])
    assert "one backward" in widget.ui.statusLabel.text
    widget.clickModeComboBox.choose("pixel")  # a setting changed while clicking: the next click uses it
    assert widget._clickExplainer.mode == "pixel"
    harness.click_slice_view(ras)
    assert "Explained" in widget.ui.statusLabel.text
    outside = (ijk_to_ras_of(ct) @ [i, j, k + 1000, 1.0])[:3]
    harness.click_slice_view(outside)
    assert widget.ui.statusLabel.text.startswith("Click not explained")
    points = widget._clickPoints
    widget.clickCheckBox.checked = False
    assert widget._clickExplainer is None and harness.scene.GetNodeByID(points.GetID()) is None
    assert harness.scene.GetNodeByID(clicks[0].GetID()) is clicks[0]  # the maps stay


def test_click_to_explain_needs_a_model_and_says_so(harness, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    widget = harness.open_module()
    widget.clickCheckBox.checked = True
    assert not widget.clickCheckBox.checked and "needs PyTorch" in widget.ui.statusLabel.text


def test_cleanup_removes_each_observer_once(harness, recwarn):
    widget = harness.open_module()
    widget.cleanup()
    assert not [w for w in recwarn if "does not have observer" in str(w.message)]
    assert widget.logic._closeObserver is None


def test_sample_data_registers_the_phantom_and_the_real_ct(harness):
    real = require_real_ct().parent
    harness.widget = None
    for slot in harness.app_connections("startupCompleted()"):
        slot()
    sources = {s.sampleName: s for s in slicer.modules.sampleDataSources["SegHiResCAM"]}
    assert set(sources) == {"SegHiResCAM phantom", "SegHiResCAM abdominal CT"}
    ct, segmentation = sources["SegHiResCAM phantom"].customDownloader(sources["SegHiResCAM phantom"])
    assert segmentation.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    source = sources["SegHiResCAM abdominal CT"]
    harness.downloads = {uri: real / name for uri, name in zip(source.uris, source.fileNames)}
    nodes = source.customDownloader(source)
    assert nodes[0].IsA("vtkMRMLScalarVolumeNode") and slicer.util.arrayFromVolume(nodes[0]).shape == (112, 101, 122)
    names = {nodes[1].GetSegmentation().GetNthSegment(n).GetName()
             for n in range(nodes[1].GetSegmentation().GetNumberOfSegments())}
    assert {"kidney_left", "kidney_right"} <= names


@pytest.mark.slow
def test_the_module_self_test_passes_with_sample_data(harness):
    harness.module.SegHiResCAMTest().runTest()
    assert harness.test_messages[-1] == "Test passed"
