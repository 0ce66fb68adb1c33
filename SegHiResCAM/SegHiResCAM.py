"""3D Slicer module SegHiResCAM: Seg-HiRes-Grad CAM / Seg-Grad CAM heatmaps for kidney CT U-Nets.

Thin by design: the Module (metadata), a parameter node, the Widget (widgets, progress, calling
the Logic) and the self-test. The Logic is ``seghirescam.mrml.SegHiResCAMLogic`` (no qt), usable
from scripts and headless; it is re-exported here as Slicer's conventions expect.
"""

import importlib
import importlib.util
import logging
import os
import sys
import time

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the package lives beside this file (source tree and installed extension)
    sys.path.insert(0, _HERE)

# The method registry's metadata needs no torch: the checkboxes exist before torch is installed.
from seghirescam.cam.method_info import (DEFAULT_METHOD_KEYS, METHOD_INFO, format_method_keys,  # noqa: E402
                                         parse_method_keys, registered_methods)
from seghirescam.cam.vocabulary import NORMALIZATIONS, PIXEL_SETS  # noqa: E402 - menus: torch-free as well

try:  # needs torch; when it is missing the widget offers to install it, then imports again
    from seghirescam.mrml.logic import SegHiResCAMLogic
except ImportError:
    SegHiResCAMLogic = None

DEVICES = (("Auto (GPU if available)", "auto"), ("GPU (CUDA)", "cuda"), ("CPU", "cpu"))


def methodsHelpText() -> str:
    """Returns: one HTML line per registered method (display name, citation, description) for the help."""
    return "".join(f"<b>{m.display_name}</b> ({m.citation}): {m.description}<br>\n" for m in registered_methods())


class SegHiResCAM(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegHiResCAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegHiResCAM contributors"]
        self.parent.helpText = """
Explains what a 2D segmentation U-Net looks at when it segments a kidney, tumor or cyst in CT.
Choose a CT, a segment (its voxels are the pixel set M and its name picks the target class, e.g.
"Left kidney" -> kidney), a layer and the methods, then Apply. One heatmap volume per method and layer
is added on the CT's exact grid and shown over the CT.<br>
""" + methodsHelpText() + """
<b>Layer trap:</b> at the layer that feeds the 1x1 head directly (marked "collapses to the segmentation"),
both maps reduce to the model's own logit map and explain nothing beyond the segmentation. Use deeper
layers, the bottleneck by default.
"""
        self.parent.acknowledgementText = """
Methods: Rheude T., Wirtz A., Kuijper A., Wesarg S., "Leveraging CAM algorithms for explaining medical
semantic segmentation", MELBA 2024 (Seg-HiRes-Grad CAM); Vinogradova K., Dibrov A., Myers G., "Towards
interpretable semantic segmentation via gradient-weighted class activation mapping", AAAI 2020 (Seg-Grad CAM);
Draelos R. L., Carin L., HiResCAM, 2021. Module structure follows the Slicer scripted-module template.
"""


@parameterNodeWrapper
class SegHiResCAMParameterNode:
    """Settings kept in the scene (bound to widgets through their SlicerParameterName property)."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    pointNode: slicer.vtkMRMLMarkupsFiducialNode
    methods: str = format_method_keys(DEFAULT_METHOD_KEYS)  # the chosen method keys, "key1,key2"
    batchSize: int = 0
    outputPrefix: str = ""
    keepPrevious: bool = False


def ensureDependencies() -> bool:
    """Install torch (via the PyTorch extension if present) and the package's other requirements.

    Returns:
        True when everything imports; False if the user declined.
    """
    global SegHiResCAMLogic
    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=">=2.0")
            if torch is None:
                return False
        else:
            question = ("SegHiResCAM needs PyTorch. Install it now with pip? (This may take several minutes. "
                        "For GPU builds, install the PyTorch extension from the Extensions Manager instead.)")
            if not slicer.util.confirmOkCancelDisplay(question):
                return False
            slicer.util.pip_install("torch")
    for requirement, module in (("safetensors>=0.4", "safetensors"), ("tqdm>=4.60", "tqdm")):
        if importlib.util.find_spec(module) is None:
            slicer.util.pip_install(requirement)
    if SegHiResCAMLogic is None:
        SegHiResCAMLogic = importlib.import_module("seghirescam.mrml.logic").SegHiResCAMLogic
    return True


class SegHiResCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: widgets, parameter node, progress and cancel; all work is done by the Logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._model = None
        self._methodCheckBoxes = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegHiResCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for combo, choices in ((self.ui.pixelSetComboBox, PIXEL_SETS), (self.ui.normalizeComboBox, NORMALIZATIONS)):
            for key, choice in choices.items():  # the package's vocabulary: label shown, help as tooltip
                combo.addItem(choice.label, key)
                combo.setItemData(combo.count - 1, choice.help, qt.Qt.ToolTipRole)
        for text, value in DEVICES:
            self.ui.deviceComboBox.addItem(text, value)
        self._addMethodCheckBoxes()
        self._addModelFolderRows()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", lambda _path: self.onModelChanged())
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", lambda _id: self.updateTargetClass())
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: self.updateButtons())
        self.ui.pixelSetComboBox.connect("currentIndexChanged(int)", lambda _index: self.updateButtons())
        self.ui.resultComboBox.connect("currentIndexChanged(int)", lambda _index: self.onResultChanged())
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.initializeParameterNode()
        if SegHiResCAMLogic is not None:
            self.onModelChanged()
        else:
            self.ui.statusLabel.text = "PyTorch is not installed: it will be installed when you click Apply."

    def _addMethodCheckBoxes(self):
        """One checkbox per registered method: display name as label, description and citation as tooltip."""
        layout = self.ui.methodsWidget.layout()
        for method in registered_methods():
            checkBox = qt.QCheckBox(method.display_name)
            checkBox.objectName = f"methodCheckBox_{method.key}"
            checkBox.toolTip = f"{method.description} ({method.citation})"
            checkBox.connect("toggled(bool)", lambda _checked: self._onMethodToggled())
            layout.addWidget(checkBox)
            self._methodCheckBoxes[method.key] = checkBox

    def _onMethodToggled(self):
        """Store the ticked methods in the parameter node."""
        if self._parameterNode:
            self._parameterNode.methods = format_method_keys(
                key for key, checkBox in self._methodCheckBoxes.items() if checkBox.checked)

    def _updateMethodCheckBoxes(self, caller=None, event=None):
        """Tick the methods the parameter node names."""
        chosen = set(parse_method_keys(self._parameterNode.methods)) if self._parameterNode else set()
        for key, checkBox in self._methodCheckBoxes.items():
            wasBlocked = checkBox.blockSignals(True)
            checkBox.checked = key in chosen
            checkBox.blockSignals(wasBlocked)

    def cleanup(self):
        self.removeObservers()
        self.setParameterNode(None)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        parameterLogic = ScriptedLoadableModuleLogic()
        parameterLogic.moduleName = "SegHiResCAM"
        self.setParameterNode(SegHiResCAMParameterNode(parameterLogic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateMethodCheckBoxes)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateMethodCheckBoxes)
            self._updateMethodCheckBoxes()
            self.updateButtons()

    # ---- model, classes, layers ------------------------------------------------------------------
    def _addModelFolderRows(self):
        """A folder picker beside the file picker (nnU-Net results folders, MONAI bundles) and nnU-Net's folds."""
        import ctk

        self.modelFolderButton = ctk.ctkDirectoryButton()
        self.modelFolderButton.caption = "Choose an nnU-Net results folder or a MONAI bundle"
        self.modelFolderButton.toolTip = ("An nnU-Net v2 results folder (DatasetXXX_Name/TRAINER__PLANS__CONFIG) or a "
                                          "MONAI bundle folder; it becomes the model path above.")
        self.modelFolderButton.connect("directoryChanged(QString)",
                                       lambda folder: setattr(self.ui.modelPathLineEdit, "currentPath", folder))
        self.foldsLineEdit = qt.QLineEdit("all")
        self.foldsLineEdit.toolTip = "nnU-Net folds: 'all', or fold numbers separated by commas (an ensemble)"
        self.foldsLineEdit.connect("editingFinished()", self.onModelChanged)
        form = self.ui.modelPathLineEdit.parentWidget().layout()
        form.insertRow(1, "Model folder:", self.modelFolderButton)
        form.insertRow(2, "nnU-Net folds:", self.foldsLineEdit)

    def _modelOptions(self, path):
        """Loader options: nnU-Net folds for a folder, nothing for a file."""
        if not path or not os.path.isdir(path):
            return {}
        words = [word.strip() for word in self.foldsLineEdit.text.split(",") if word.strip()] or ["all"]
        return {"folds": tuple(word if word == "all" else int(word) for word in words)}

    def onModelChanged(self):
        self.logic = self.logic or SegHiResCAMLogic()
        path = self.ui.modelPathLineEdit.currentPath or None
        try:  # a model that fails to load is reported, never replaced by another model
            self._model = self.logic.loadModel(path, **self._modelOptions(path))
            self.ui.statusLabel.text = f"Model: {self._model.name}"
        except (FileNotFoundError, ValueError) as error:  # CardError, NnUNetLoadError, BundleError: ValueErrors
            self._model = None
            self.ui.statusLabel.text = f"No model loaded: {error}"
        self.ui.layerComboBox.clear()
        self.ui.targetClassComboBox.clear()
        if self._model is None:
            return
        for layer, collapses in self.logic.layerChoices(self._model):
            self.ui.layerComboBox.addItem(f"{layer} (collapses to the segmentation)" if collapses else layer, layer)
        self.ui.layerComboBox.setCurrentIndex(self.ui.layerComboBox.findData(self.logic.defaultLayer(self._model)))
        self.ui.targetClassComboBox.addItem("Auto (from the segment name)", None)
        for index, name in enumerate(self._model.class_names):
            self.ui.targetClassComboBox.addItem(name, index)
        self.updateTargetClass()

    def updateTargetClass(self):
        """Show which class the segment's name maps to (the user may still pick another)."""
        segmentation, segmentId = self.ui.segmentSelector.currentNode(), self.ui.segmentSelector.currentSegmentID()
        if self._model is None or segmentation is None or not segmentId:
            return
        name = segmentation.GetSegmentation().GetSegment(segmentId).GetName()
        try:
            mapped = self._model.class_names[self._model.class_for_segment(name)]
            self.ui.targetClassComboBox.setItemText(0, f"Auto: {mapped} (from \"{name}\")")
        except ValueError:
            self.ui.targetClassComboBox.setItemText(0, f"Auto: \"{name}\" names no class - choose one")
        self.updateButtons()

    def updateButtons(self, caller=None, event=None):
        if self._running:
            return
        pixelSet = self.ui.pixelSetComboBox.currentData
        self.ui.pointSelector.enabled = pixelSet == "point"
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        if pixelSet == "segment":
            ready = ready and bool(self.ui.segmentSelector.currentSegmentID())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.text = "Apply"
        self.ui.applyButton.toolTip = "Compute the heatmaps" if ready else "Choose a CT volume (and a segment)"

    # ---- the run ---------------------------------------------------------------------------------
    def onApplyButton(self):
        if self._running:
            self._cancelRequested = True
            self.ui.statusLabel.text = "Cancelling after the current batch..."
            return
        if SegHiResCAMLogic is None:
            try:
                with slicer.util.tryWithErrorDisplay("Installing the requirements failed."):
                    installed = ensureDependencies()
            except Exception:  # noqa: BLE001 - already shown to the user
                installed = False
            if not installed:
                return
            self.onModelChanged()
        started = time.perf_counter()
        self._running, self._cancelRequested = True, False
        self.ui.applyButton.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Running..."
        from seghirescam import ExplanationCancelled

        try:
            with slicer.util.tryWithErrorDisplay("Computing the explanation failed."):  # no wait cursor: Cancel
                try:
                    nodes = self.logic.process(**self._runArguments(), progress=self._onProgress,
                                               cancel=lambda: self._cancelRequested)
                except ExplanationCancelled:
                    nodes = None
            seconds = time.perf_counter() - started
            if nodes is None:
                self.ui.statusLabel.text = f"Cancelled, scene unchanged ({seconds:.1f} s)"
            else:
                self._showResults(nodes)
                self.ui.statusLabel.text = f"Done: {len(nodes)} heatmap(s) ({seconds:.1f} s)"
        except Exception as error:  # noqa: BLE001 - already shown by tryWithErrorDisplay; keep the GUI alive
            self.ui.statusLabel.text = f"Failed: {error} ({time.perf_counter() - started:.1f} s)"
        finally:
            self._running = False
            self.updateButtons()

    def _runArguments(self) -> dict:
        p = self._parameterNode
        methods = list(parse_method_keys(p.methods))
        if not methods:
            raise ValueError("Choose at least one method.")
        unknown = [key for key in methods if key not in METHOD_INFO]
        if unknown:
            raise ValueError(f"The scene asks for methods that are not registered: {', '.join(unknown)}. "
                             f"Known: {', '.join(METHOD_INFO)}.")
        pixelSet = self.ui.pixelSetComboBox.currentData
        sliceIndex = None
        if pixelSet == "slice":
            redSlice = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            center = redSlice.GetSliceToRAS().MultiplyPoint((0.0, 0.0, 0.0, 1.0))[:3]
            sliceIndex = self.logic.sliceIndexAt(p.inputVolume, center)
        return dict(ctNode=p.inputVolume, segmentationNode=self.ui.segmentSelector.currentNode(),
                    segmentId=self.ui.segmentSelector.currentSegmentID() or None, model=self._model,
                    targetClass=self.ui.targetClassComboBox.currentData, layers=self.ui.layerComboBox.currentData,
                    methods=methods, pixelSet=pixelSet, pointNode=p.pointNode, sliceIndex=sliceIndex,
                    device=self.ui.deviceComboBox.currentData, batchSize=p.batchSize or "auto",
                    normalize=self.ui.normalizeComboBox.currentData, keepPrevious=p.keepPrevious,
                    outputPrefix=p.outputPrefix or None)

    def _onProgress(self, done: int, total: int):
        self.ui.progressBar.maximum = total
        self.ui.progressBar.value = done
        self.ui.statusLabel.text = f"Explained {done} of {total} slices"
        slicer.app.processEvents()  # keeps the GUI responsive and lets Cancel be clicked

    # ---- results ---------------------------------------------------------------------------------
    def _showResults(self, nodes: dict):
        self.ui.resultComboBox.blockSignals(True)
        self.ui.resultComboBox.clear()
        for node in nodes.values():
            self.ui.resultComboBox.addItem(node.GetName(), node.GetID())
        self.ui.resultComboBox.blockSignals(False)
        self.ui.resultsCollapsibleButton.collapsed = False
        self.onResultChanged()

    def _currentResult(self):
        nodeId = self.ui.resultComboBox.currentData
        return slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None

    def onResultChanged(self):
        node = self._currentResult()
        if node is not None:
            slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=self.ui.opacitySlider.value)
            self.onThresholdChanged(self.ui.thresholdSlider.value)

    def onOpacityChanged(self, value: float):
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            composite.SetForegroundOpacity(value)

    def onThresholdChanged(self, value: float):
        node = self._currentResult()
        if node is not None and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetThreshold(value, 1.0e6)


class SegHiResCAMTest(ScriptedLoadableModuleTest):
    """Self-test (Slicer --testing / ctest): phantom CT + segmentation, the default model, assertions."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegHiResCAM_phantom()

    def test_SegHiResCAM_phantom(self):
        self.delayDisplay("Building a phantom CT and running the default model")
        self.assertTrue(ensureDependencies(), "PyTorch is required for this test")
        from seghirescam.mrml.selftest import run_self_test

        summary = run_self_test(slicer.mrmlScene)  # raises SelfTestFailure if any check fails
        self.assertEqual(len(summary["heatmaps"]), 2)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName(summary["heatmaps"][0]))
        logging.info("SegHiResCAM self-test summary: %s", summary["heatmaps"])
        self.delayDisplay("Test passed")
