"""3D Slicer module SegHiResCAM: Seg-HiRes-Grad CAM / Seg-Grad CAM heatmaps for segmentation networks in CT.

Thin by design: the Module (metadata, sample data), the Widget (widgets <-> parameter node, progress,
cancel, calling the Logic) and the self-test. The Logic is ``seghirescam.mrml.SegHiResCAMLogic``
(no qt), usable from scripts and headless.

Never frozen - the design choice and its trade-offs
----------------------------------------------------
Long work (the model's prediction, the explanation, perturbation methods such as Seg-XRes) runs in a
**worker process** (``seghirescam.ct.worker``, started with ``PythonSlicer`` as SlicerMONAIAuto3DSeg
does), not in Slicer's GUI thread and not in a Python thread:

- The GUI thread only reads the input nodes (``Logic.prepare``), starts the worker, polls it with a
  ``qt.QTimer`` every 200 ms (progress bar and status at least once a second, with the elapsed time
  even while the worker is silent, e.g. during the prediction), and creates the result nodes when
  the worker has finished (``Logic.finish``). The scene is only ever modified on the main thread.
- Cancel kills the worker's process tree at once (well under a second, whatever it is doing: a
  batch of 512^2 slices, the prediction, a perturbation method); nothing was added to the scene, so
  the scene is exactly as it was. A failed run likewise adds nothing. Closing the scene during a run
  cancels it (the widget and the Logic both observe ``StartCloseEvent``), so no heatmap of the old
  patient can land in the new scene and the Results list is emptied.
- Trade-offs: each run pays the worker's start-up (import torch and load the model: about 2-6 s)
  and passes the CT, M and the maps through temporary ``.npz`` files (about 3x the CT's size on
  disk while the run lasts). A Python thread would avoid both, but a batch cannot be interrupted
  mid-way (Cancel would wait 3-15 s on CPU) and torch's CPU kernels still contend with the GUI for
  the GIL between operations. The GPU memory a run used is freed when its worker ends.
- The model is also loaded in Slicer's process (lazily, when the module is first shown) to list its
  classes and layers and to map segment names to classes; click-to-explain runs in Slicer's
  process on one cached slice (one backward per click).

torch is imported lazily: importing this file imports no torch (Slicer starts as fast as without the
extension). When PyTorch is missing the module still opens; Apply installs it (the PyTorch
extension's ``PyTorchUtils`` with a version requirement when present, else pip) and the other
requirements from ``Resources/requirements.txt`` (``slicer.packaging.pip_ensure`` where the Slicer
version has it). Slicer 5.8 runs Python 3.9, where torch 2.1 .. 2.8 and numpy up to 2.0 exist;
newer Slicer versions (Python 3.12) can take the newest torch. This file and the package use only
Python 3.9 syntax (a test checks every file).
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
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the package lives beside this file (source tree and installed extension)
    sys.path.insert(0, _HERE)

# The registry's metadata and the menus' words need no torch: the widget exists before torch is installed.
from seghirescam.cam.method_info import METHOD_INFO, format_method_keys, parse_method_keys, registered_methods  # noqa: E402
from seghirescam.cam.vocabulary import CLICK_MODES, NORMALIZATIONS, PIXEL_SETS  # noqa: E402

DEVICE_LABELS = {"auto": "Auto (GPU if available)", "cuda": "GPU (CUDA)", "cpu": "CPU"}
# Python 3.9 (Slicer 5.8) gets torch 2.1 .. 2.8; Python >= 3.10 any torch from 2.1 on.
TORCH_REQUIREMENT = ">=2.1"
POLL_MILLISECONDS = 200
STAGE_TEXT = {"start": "Starting the worker", "load": "Loading the model", "predict": "Predicting",
              "explain": "Explaining", "write": "Writing the maps"}


def methodsHelpText() -> str:
    """Returns: one HTML line per registered method (display name, citation, description) for the help."""
    return "".join(f"<b>{m.display_name}</b> ({m.citation}): {m.description}<br>\n" for m in registered_methods())


class SegHiResCAM(ScriptedLoadableModule):
    """Module metadata; registers the sample data once the application has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegHiResCAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegHiResCAM contributors"]
        self.parent.helpText = """
Explains what a segmentation network looks at when it segments a kidney, tumor or cyst in CT.
Choose a CT, a segment (its voxels are the pixel set M and its name picks the target class, e.g.
"Left kidney" -> kidney), a model (file or nnU-Net / MONAI folder), a layer and the methods, then Apply.
One heatmap volume per method and layer is added on the CT's exact grid and shown over the CT.
The computation runs in a separate process: Slicer stays responsive and Cancel stops it at once.
<b>Click to explain:</b> tick it, then click a pixel in a slice view: that slice's map for the clicked
pixel (or a disc, or the predicted region under it) appears at once.<br>
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
Sample CT: TotalSegmentator's test case (Wasserthal et al., Apache-2.0).
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


# ---- sample data ---------------------------------------------------------------------------------------

def loadPhantomSample(source=None):
    """Sample Data's loader for the phantom: made here, nothing to download. Returns: [CT node, segmentation node]."""
    from seghirescam.mrml.sample_data import add_phantom_case

    _, ct, segmentation = add_phantom_case(slicer.mrmlScene)
    return [ct, segmentation]


def loadRealCTSample(source):
    """Sample Data's loader for the real CT: download (checked by SHA-256), load, name the kidney segments."""
    import SampleData

    from seghirescam.mrml.sample_data import TOTALSEGMENTATOR_NAMES, name_segments_by_label

    nodes = SampleData.SampleDataLogic().downloadFromSource(source)
    for node in nodes:
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            name_segments_by_label(node, TOTALSEGMENTATOR_NAMES)
    return nodes


def registerSampleData():
    """Add the phantom and the real abdominal CT (with TotalSegmentator's kidney labels) to Sample Data."""
    import SampleData

    from seghirescam.mrml.sample_data import PHANTOM_SAMPLE, REAL_CT_FILES, REAL_CT_SAMPLE

    icon = os.path.join(_HERE, "Resources", "Icons", "SegHiResCAM.png")
    SampleData.SampleDataLogic.registerCustomSampleDataCategory("SegHiResCAM", title="SegHiResCAM")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SegHiResCAM", sampleName=PHANTOM_SAMPLE, thumbnailFileName=icon,
        customDownloader=loadPhantomSample, nodeNames=["SegHiResCAM phantom CT"])
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SegHiResCAM", sampleName=REAL_CT_SAMPLE, thumbnailFileName=icon,
        uris=[url for url, _, _, _ in REAL_CT_FILES], fileNames=[name for _, name, _, _ in REAL_CT_FILES],
        nodeNames=[node for _, _, node, _ in REAL_CT_FILES],
        checksums=[f"SHA256:{digest}" for _, _, _, digest in REAL_CT_FILES],
        loadFileTypes=["VolumeFile", "SegmentationFile"], customDownloader=loadRealCTSample)


# ---- dependencies ----------------------------------------------------------------------------------------

class DependencyError(RuntimeError):
    """A requirement could not be installed or loaded; the message says what failed and what to do."""


def requirementsPath() -> str:
    """Returns: the module's ``Resources/requirements.txt`` (requirements besides PyTorch)."""
    return os.path.join(_HERE, "Resources", "requirements.txt")


def torchInstalled() -> bool:
    """Whether PyTorch is installed (found, not imported)."""
    return importlib.util.find_spec("torch") is not None


def _installTorch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        PyTorchUtils = None
    if PyTorchUtils is not None:  # the PyTorch extension picks the build for the computer's GPU
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise DependencyError("PyTorch was not installed (cancelled, or the installation failed). Click Apply "
                                  "again to retry, or install it in the 'PyTorch Utils' module.")
        return
    _pipEnsure([f"torch{TORCH_REQUIREMENT}"], "PyTorch (the CPU build from PyPI; for a GPU build install the PyTorch "
                                              "extension from the Extensions Manager first)",
               satisfied=lambda requirement: torchInstalled())


def _pipEnsure(requirements, what: str, satisfied=None) -> None:
    """Install the missing ``requirements`` with Slicer's own tools; raises DependencyError saying what to do.

    ``satisfied(requirement)`` decides what is missing on Slicer versions without ``pip_ensure``
    (default: the installed distribution's version).
    """
    satisfied = satisfied or _satisfied
    packaging = getattr(slicer, "packaging", None)
    try:
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12
            packaging.pip_ensure(requirements, requester="SegHiResCAM")
            return
        missing = [r for r in requirements if not satisfied(r)]
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(f"SegHiResCAM needs {what}: {', '.join(missing)}. Install now? "
                                                  "(This may take several minutes.)"):
            raise DependencyError(f"{what} not installed: installation was declined. Click Apply to be asked again.")
        slicer.util.pip_install(" ".join(f'"{r}"' if " " in r else r for r in missing))
    except DependencyError:
        raise
    except RuntimeError as error:  # pip_ensure: the user declined
        raise DependencyError(f"{what} not installed ({error}). Click Apply to be asked again.") from error
    except Exception as error:  # noqa: BLE001 - pip failures (CalledProcessError, network errors) are reported as one
        raise DependencyError(f"Installing {what} failed: {error}. Check the network connection and the Python "
                              "console's log, then click Apply again; if it keeps failing, install the packages in "
                              "Slicer's Python console with slicer.util.pip_install.") from error


def _satisfied(requirement: str) -> bool:
    """Whether an installed distribution meets ``requirement`` (name and version; markers honoured when possible)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # no 'packaging': check the name only
        name = requirement.split(";")[0]
        for separator in "<>=!~[ ":
            name = name.split(separator)[0]
        try:
            metadata.version(name)
            return True
        except metadata.PackageNotFoundError:
            return False
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return True
    try:
        return parsed.specifier.contains(metadata.version(parsed.name), prereleases=True)
    except metadata.PackageNotFoundError:
        return False


def readRequirements(path: str) -> list:
    """Returns: the requirement lines of a requirements file (comments, blanks and pip options skipped)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    return [line for line in lines if line and not line.startswith("-")]


def ensureDependencies() -> None:
    """Install PyTorch and the other requirements if missing, then check that torch loads.

    Raises:
        DependencyError: What failed and what to do (including whether Slicer must be restarted).
    """
    if not torchInstalled():
        _installTorch()
    _pipEnsure(readRequirements(requirementsPath()), "these Python packages")
    importlib.invalidate_caches()
    try:
        importlib.import_module("torch")
    except (ImportError, OSError) as error:  # OSError: e.g. a DLL that fails to load on Windows
        raise DependencyError(f"PyTorch is installed but fails to load ({type(error).__name__}: {error}). Restart "
                              "Slicer; if it still fails, reinstall PyTorch in the 'PyTorch Utils' module (PyTorch "
                              "extension) or with slicer.util.pip_install('--force-reinstall torch'), then restart "
                              "Slicer.") from error


# ---- the widget ------------------------------------------------------------------------------------------

class SegHiResCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: widgets <-> parameter node, progress and cancel; all work is done by the Logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._params = None
        self._updatingGUI = False
        self._run = None
        self._model = None
        self._modelKey = None
        self._modelError = ""
        self._methodCheckBoxes = {}
        self._clickExplainer = None
        self._clickPoints = None

    # ---- setup ---------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from seghirescam.mrml.logic import SegHiResCAMLogic
        from seghirescam.mrml.parameters import BATCH_SIZE_RANGE, CLICK_RADIUS_RANGE, DEVICES

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegHiResCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegHiResCAMLogic()
        for combo, choices in ((self.ui.pixelSetComboBox, PIXEL_SETS), (self.ui.normalizeComboBox, NORMALIZATIONS)):
            for key, choice in choices.items():  # the package's vocabulary: label shown, help as tooltip
                combo.addItem(choice.label, key)
                combo.setItemData(combo.count - 1, choice.help, qt.Qt.ToolTipRole)
        for key in DEVICES:
            self.ui.deviceComboBox.addItem(DEVICE_LABELS[key], key)
        self.ui.batchSizeSpinBox.minimum, self.ui.batchSizeSpinBox.maximum = BATCH_SIZE_RANGE
        self.ui.batchSizeSpinBox.specialValueText = "auto"  # shown at the minimum, 0
        self._addMethodCheckBoxes()
        self._addModelFolderRows()
        self._addClickRows(CLICK_RADIUS_RANGE)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MILLISECONDS)
        self._timer.connect("timeout()", self._onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", lambda _checked: self.onApplyButton())
        changed = self.updateParameterNodeFromGUI
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: changed())
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: changed())
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", lambda _id: changed())
        self.ui.pointSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: changed())
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", lambda _path: changed())
        self.modelFoldsLineEdit.connect("editingFinished()", changed)
        for combo in (self.ui.targetClassComboBox, self.ui.layerComboBox, self.ui.pixelSetComboBox,
                      self.ui.deviceComboBox, self.ui.normalizeComboBox, self.clickModeComboBox):
            combo.connect("currentIndexChanged(int)", lambda _index: changed())
        self.ui.batchSizeSpinBox.connect("valueChanged(int)", lambda _value: changed())
        self.clickRadiusSpinBox.connect("valueChanged(int)", lambda _value: changed())
        self.ui.outputPrefixLineEdit.connect("textChanged(QString)", lambda _text: changed())
        self.ui.keepPreviousCheckBox.connect("toggled(bool)", lambda _checked: changed())
        self.ui.resultComboBox.connect("currentIndexChanged(int)", lambda _index: self.onResultChanged())
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.initializeParameterNode()

    def _addMethodCheckBoxes(self):
        """One checkbox per registered method: display name as label, description and citation as tooltip."""
        layout = self.ui.methodsWidget.layout()
        for method in registered_methods():
            checkBox = qt.QCheckBox(method.display_name)
            checkBox.objectName = f"methodCheckBox_{method.key}"
            checkBox.toolTip = f"{method.description} ({method.citation})"
            checkBox.connect("toggled(bool)", lambda _checked: self.updateParameterNodeFromGUI())
            layout.addWidget(checkBox)
            self._methodCheckBoxes[method.key] = checkBox

    def _addModelFolderRows(self):
        """A folder picker beside the file picker (nnU-Net results folders, MONAI bundles) and nnU-Net's folds."""
        import ctk

        self.modelFolderButton = ctk.ctkDirectoryButton()
        self.modelFolderButton.caption = "Choose an nnU-Net results folder or a MONAI bundle"
        self.modelFolderButton.toolTip = ("An nnU-Net v2 results folder (DatasetXXX_Name/TRAINER__PLANS__CONFIG) or a "
                                          "MONAI bundle folder; it becomes the model path above.")
        self.modelFolderButton.connect("directoryChanged(QString)",
                                       lambda folder: setattr(self.ui.modelPathLineEdit, "currentPath", folder))
        self.modelFoldsLineEdit = qt.QLineEdit("all")
        self.modelFoldsLineEdit.toolTip = "nnU-Net folds: 'all', or fold numbers separated by commas (an ensemble)"
        form = self.ui.modelPathLineEdit.parentWidget().layout()
        form.insertRow(1, "Model folder:", self.modelFolderButton)
        form.insertRow(2, "nnU-Net folds:", self.modelFoldsLineEdit)
        self.modelStatusLabel = qt.QLabel("")
        self.modelStatusLabel.wordWrap = True
        form.insertRow(3, "Model:", self.modelStatusLabel)

    def _addClickRows(self, radiusRange):
        """Click to explain: the mode switch, what M is around the click, and the disc radius."""
        form = self.ui.modelPathLineEdit.parentWidget().layout()
        self.clickCheckBox = qt.QCheckBox("Click a pixel in a slice view to explain it")
        self.clickCheckBox.toolTip = ("The map of the clicked slice appears at once (the slice's forward pass is kept; "
                                      "a click costs one backward).")
        self.clickCheckBox.connect("toggled(bool)", self.onClickModeToggled)
        self.clickModeComboBox = qt.QComboBox()
        for key, choice in CLICK_MODES.items():
            self.clickModeComboBox.addItem(choice.label, key)
            self.clickModeComboBox.setItemData(self.clickModeComboBox.count - 1, choice.help, qt.Qt.ToolTipRole)
        self.clickRadiusSpinBox = qt.QSpinBox()
        self.clickRadiusSpinBox.minimum, self.clickRadiusSpinBox.maximum = radiusRange
        self.clickRadiusSpinBox.suffix = " px"
        form.addRow("Click to explain:", self.clickCheckBox)
        form.addRow("Clicked pixel set:", self.clickModeComboBox)
        form.addRow("Disc radius:", self.clickRadiusSpinBox)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def cleanup(self):
        """The widget is destroyed: stop the run, the clicks, the observers (each removed once)."""
        self._stopRun("the module was closed")
        self._stopClickMode()
        self.setParameterNode(None)  # removes the parameter node's observer
        self.removeObservers()  # the scene's
        if self.logic is not None:
            self.logic.close()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        """The scene closes: cancel a run (nothing of it reaches the next scene) and forget its results."""
        self._stopRun("the scene was closed")
        self._stopClickMode()
        self.setParameterNode(None)
        self._fillResults([])

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        from seghirescam.mrml.parameters import parameter_node

        self.setParameterNode(parameter_node(slicer.mrmlScene))
        if not self._params.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._params.inputVolume = first

    def setParameterNode(self, node):
        from seghirescam.mrml.parameters import ModuleParameters

        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        self._params = ModuleParameters(node) if node is not None else None
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    # ---- parameter node <-> GUI -------------------------------------------------------------------
    def updateGUIFromParameterNode(self, caller=None, event=None):
        """Show the parameter node's settings (the node is the truth: a loaded scene restores the module)."""
        if self._params is None or self._updatingGUI:
            return
        p = self._params
        self._updatingGUI = True
        try:
            widgets = (self.ui.inputVolumeSelector, self.ui.segmentSelector, self.ui.pointSelector,
                       self.ui.modelPathLineEdit, self.modelFoldsLineEdit, self.ui.targetClassComboBox,
                       self.ui.layerComboBox, self.ui.pixelSetComboBox, self.ui.deviceComboBox,
                       self.ui.normalizeComboBox, self.ui.batchSizeSpinBox, self.ui.outputPrefixLineEdit,
                       self.ui.keepPreviousCheckBox, self.clickModeComboBox, self.clickRadiusSpinBox,
                       *self._methodCheckBoxes.values())
            blocked = [widget.blockSignals(True) for widget in widgets]
            self.ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
            self.ui.segmentSelector.setCurrentNode(p.segmentationNode)
            self.ui.segmentSelector.setCurrentSegmentID(p.segmentId)
            self.ui.pointSelector.setCurrentNode(p.pointNode)
            if self.ui.modelPathLineEdit.currentPath != p.modelPath:
                self.ui.modelPathLineEdit.currentPath = p.modelPath
            self.modelFoldsLineEdit.text = p.modelFolds
            for combo, value in ((self.ui.pixelSetComboBox, p.pixelSet), (self.ui.deviceComboBox, p.device),
                                 (self.ui.normalizeComboBox, p.normalize), (self.clickModeComboBox, p.clickMode)):
                combo.setCurrentIndex(max(combo.findData(value), 0))
            self.ui.batchSizeSpinBox.value = p.batchSize
            self.clickRadiusSpinBox.value = p.clickRadius
            self.ui.outputPrefixLineEdit.text = p.outputPrefix
            self.ui.keepPreviousCheckBox.checked = p.keepPrevious
            chosen = set(parse_method_keys(p.methods))
            for key, checkBox in self._methodCheckBoxes.items():
                checkBox.checked = key in chosen
            self._updateModel()
            self._selectByData(self.ui.layerComboBox, p.layer, default=self._defaultLayer())
            self._selectByData(self.ui.targetClassComboBox, p.targetClass, default="")
            for widget, wasBlocked in zip(widgets, blocked):
                widget.blockSignals(wasBlocked)
            self._updateTargetClassText()
            self._refreshResults()
        finally:
            self._updatingGUI = False
        self.updateButtons()
        self._updateClickSettings()

    def updateParameterNodeFromGUI(self):
        """Write the widgets' values to the parameter node (one Modified event for all of them)."""
        if self._params is None or self._updatingGUI:
            return
        p = self._params
        wasModifying = self._parameterNode.StartModify()
        try:
            p.inputVolume = self.ui.inputVolumeSelector.currentNode()
            p.segmentationNode = self.ui.segmentSelector.currentNode()
            p.segmentId = self.ui.segmentSelector.currentSegmentID() or ""
            p.pointNode = self.ui.pointSelector.currentNode()
            p.modelPath = self.ui.modelPathLineEdit.currentPath or ""
            p.modelFolds = self.modelFoldsLineEdit.text.strip() or "all"
            p.targetClass = self.ui.targetClassComboBox.currentData or ""
            p.layer = self.ui.layerComboBox.currentData or ""
            p.pixelSet = self.ui.pixelSetComboBox.currentData
            p.device = self.ui.deviceComboBox.currentData
            p.normalize = self.ui.normalizeComboBox.currentData
            p.batchSize = int(self.ui.batchSizeSpinBox.value)
            p.outputPrefix = self.ui.outputPrefixLineEdit.text
            p.keepPrevious = bool(self.ui.keepPreviousCheckBox.checked)
            p.clickMode = self.clickModeComboBox.currentData
            p.clickRadius = int(self.clickRadiusSpinBox.value)
            p.methods = format_method_keys(key for key, box in self._methodCheckBoxes.items() if box.checked)
        finally:
            self._parameterNode.EndModify(wasModifying)

    @staticmethod
    def _selectByData(combo, value, default):
        index = combo.findData(value) if value else -1
        if index < 0:
            index = combo.findData(default)
        combo.setCurrentIndex(max(index, 0))

    # ---- model, classes, layers ------------------------------------------------------------------
    def _modelOptions(self, path: str) -> dict:
        """Loader options: nnU-Net folds for a folder, nothing for a file."""
        if not path or not os.path.isdir(path):
            return {}
        words = [word.strip() for word in self._params.modelFolds.split(",") if word.strip()] or ["all"]
        return {"folds": tuple(word if word == "all" else int(word) for word in words)}

    def _updateModel(self):
        """Load the parameter node's model if it changed; a model that fails is shown, never replaced."""
        path = self._params.modelPath
        try:
            options = self._modelOptions(path)
        except ValueError:
            options = None
        key = (path, repr(options))
        if key == self._modelKey and (self._model is not None or self._modelError):
            return
        self._model, self._modelError = None, ""
        if options is None:
            self._modelError = f"nnU-Net folds must be 'all' or numbers separated by commas, got {self._params.modelFolds!r}"
        elif not torchInstalled():
            self._modelKey = None  # loaded after PyTorch is installed (Apply)
            self.modelStatusLabel.text = "PyTorch is not installed: it will be installed when you click Apply."
            self._fillModelChoices()
            return
        else:
            try:
                self._model = self.logic.loadModel(path or None, **options)
            except (FileNotFoundError, ValueError) as error:  # CardError, NnUNetLoadError, BundleError: ValueErrors
                self._modelError = str(error)
            except (ImportError, OSError) as error:  # a broken torch: say what to do instead of failing
                self._modelError = (f"PyTorch fails to load ({type(error).__name__}: {error}); restart Slicer or "
                                    "reinstall PyTorch")
            except Exception as error:  # noqa: BLE001 - any other loader failure is shown, the GUI keeps working
                self._modelError = f"{type(error).__name__}: {error}"
        self._modelKey = key
        if self._model is not None:
            self.modelStatusLabel.text = f"{self._model.name} - classes: {', '.join(self._model.class_names[1:])}"
        else:
            shown = path or "the default model"
            self.modelStatusLabel.text = f"Could not load {shown}: {self._modelError}"
        self._fillModelChoices()

    def _fillModelChoices(self):
        self.ui.layerComboBox.clear()
        self.ui.targetClassComboBox.clear()
        self.ui.targetClassComboBox.addItem("Auto (from the segment name)", "")
        if self._model is None:
            return
        for layer, collapses in self.logic.layerChoices(self._model):
            self.ui.layerComboBox.addItem(f"{layer} (collapses to the segmentation)" if collapses else layer, layer)
        for name in self._model.class_names[1:]:
            self.ui.targetClassComboBox.addItem(name, name)

    def _defaultLayer(self):
        return self.logic.defaultLayer(self._model) if self._model is not None else ""

    def _updateTargetClassText(self):
        """Show which class the segment's name maps to (the user may still pick another)."""
        segmentation, segmentId = self.ui.segmentSelector.currentNode(), self.ui.segmentSelector.currentSegmentID()
        if self._model is None or segmentation is None or not segmentId:
            self.ui.targetClassComboBox.setItemText(0, "Auto (from the segment name)")
            return
        segment = segmentation.GetSegmentation().GetSegment(segmentId)
        name = segment.GetName() if segment is not None else ""
        try:
            mapped = self._model.class_names[self._model.class_for_segment(name)]
            self.ui.targetClassComboBox.setItemText(0, f"Auto: {mapped} (from \"{name}\")")
        except ValueError:
            self.ui.targetClassComboBox.setItemText(0, f"Auto: \"{name}\" names no class - choose one")

    def updateButtons(self, caller=None, event=None):
        """Apply is enabled when the inputs are complete; while a run lasts it is the Cancel button."""
        if self._run is not None:
            self.ui.applyButton.enabled = True
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the run now; the scene stays as it was"
            return
        p = self._params
        pixelSet = p.pixelSet if p is not None else "segment"
        self.ui.pointSelector.enabled = pixelSet == "point"
        missing = []
        if p is None or not p.inputVolume:
            missing.append("a CT volume")
        if pixelSet == "segment" and (p is None or not p.segmentId):
            missing.append("a segment")
        if pixelSet == "point" and (p is None or not p.pointNode):
            missing.append("a markups point")
        if p is not None and not parse_method_keys(p.methods):
            missing.append("at least one method")
        if self._modelError:
            missing.append("a model that loads (see 'Model:')")
        self.ui.applyButton.text = "Apply"
        self.ui.applyButton.enabled = not missing
        self.ui.applyButton.toolTip = ("Compute the heatmaps (in a separate process)" if not missing
                                       else "Choose " + ", ".join(missing))

    # ---- the run ---------------------------------------------------------------------------------
    def onApplyButton(self):
        if self._run is not None:
            self._stopRun("you cancelled")
            return
        if not torchInstalled() or self._model is None:
            try:
                ensureDependencies()
            except DependencyError as error:
                self.ui.statusLabel.text = f"Not started: {error}"
                slicer.util.errorDisplay(str(error), windowTitle="SegHiResCAM: requirements")
                return
            self._modelKey = None
            self.updateGUIFromParameterNode()
            if self._model is None:
                self.ui.statusLabel.text = f"Not started: {self.modelStatusLabel.text}"
                return
        try:
            self._run = self.logic.startProcess(**self._runArguments())
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
            self.ui.statusLabel.text = f"Not started: {error}"
            slicer.util.errorDisplay(f"Could not start the explanation:\n{error}", windowTitle="SegHiResCAM")
            return
        self.ui.progressBar.setRange(0, 0)  # busy until the worker reports
        self.ui.statusLabel.text = "Starting the worker..."
        self._timer.start()
        self.updateButtons()

    def _runArguments(self) -> dict:
        p = self._params
        methods = list(parse_method_keys(p.methods))
        unknown = [key for key in methods if key not in METHOD_INFO]
        if unknown:
            raise ValueError(f"The scene asks for methods that are not registered: {', '.join(unknown)}. "
                             f"Known: {', '.join(METHOD_INFO)}.")
        sliceIndex = None
        if p.pixelSet == "slice":
            redSlice = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            center = redSlice.GetSliceToRAS().MultiplyPoint((0.0, 0.0, 0.0, 1.0))[:3]
            sliceIndex = self.logic.sliceIndexAt(p.inputVolume, center)
        return dict(ctNode=p.inputVolume, segmentationNode=p.segmentationNode, segmentId=p.segmentId or None,
                    modelPath=p.modelPath, modelOptions=self._modelOptions(p.modelPath),
                    targetClass=p.targetClass or None, layers=p.layer or self._defaultLayer(), methods=methods,
                    pixelSet=p.pixelSet, pointNode=p.pointNode, sliceIndex=sliceIndex, device=p.device,
                    batchSize=p.batchSize or "auto", normalize=p.normalize, keepPrevious=p.keepPrevious,
                    outputPrefix=p.outputPrefix or None)

    def _onTimer(self):
        """Poll the worker (every POLL_MILLISECONDS): progress, status with elapsed time; finish or report."""
        run = self._run
        if run is None:
            self._timer.stop()
            return
        status = run.poll()
        stage = STAGE_TEXT.get(status.stage, status.stage)
        if status.state == "running":
            if status.total:
                self.ui.progressBar.setRange(0, status.total)
                self.ui.progressBar.value = status.done
                unit = "slices" if status.stage == "explain" else "steps"
                self.ui.statusLabel.text = f"{stage}: {status.done} of {status.total} {unit} ({status.seconds:.0f} s)"
            else:
                self.ui.progressBar.setRange(0, 0)
                self.ui.statusLabel.text = f"{stage}... ({status.seconds:.0f} s)"
            return
        self._timer.stop()
        self._run = None
        from seghirescam.cam.result import ExplanationCancelled

        try:
            nodes = run.finish()
        except ExplanationCancelled as error:
            self.ui.statusLabel.text = f"Cancelled, scene unchanged: {error}"
        except Exception as error:  # noqa: BLE001 - the worker's message, shown; the scene is unchanged
            self.ui.statusLabel.text = f"Failed after {status.seconds:.1f} s, scene unchanged: {error}"
            slicer.util.errorDisplay(f"Computing the explanation failed:\n{error}", windowTitle="SegHiResCAM")
        else:
            self._refreshResults(select=next(iter(nodes.values())).GetID())
            self.ui.resultsCollapsibleButton.collapsed = False
            self.ui.statusLabel.text = f"Done: {len(nodes)} heatmap(s) ({status.seconds:.1f} s)"
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.value = 1 if self.ui.statusLabel.text.startswith("Done") else 0
        self.updateButtons()

    def _stopRun(self, reason: str):
        """Cancel a running worker now; the scene is left exactly as it was."""
        if self._run is None:
            return
        started = time.monotonic()
        self._run.cancel()
        self._run = None
        self._timer.stop()
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = (f"Cancelled ({reason}) in {time.monotonic() - started:.2f} s: "
                                    "the scene is unchanged")
        self.updateButtons()

    # ---- results ---------------------------------------------------------------------------------
    def _refreshResults(self, select=None):
        """List the heatmaps of the current CT that are in the scene now (never stale node IDs)."""
        ct = self._params.inputVolume if self._params is not None else None
        nodes = self.logic.resultNodes(ct) if (ct is not None and self.logic is not None) else []
        self._fillResults(nodes, select)

    def _fillResults(self, nodes, select=None):
        combo = self.ui.resultComboBox
        current = select or combo.currentData
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for node in nodes:
            combo.addItem(node.GetName(), node.GetID())
        combo.setCurrentIndex(max(combo.findData(current), 0) if nodes else -1)
        combo.blockSignals(wasBlocked)
        if select is not None:
            self.onResultChanged()

    def _currentResult(self):
        """The chosen heatmap, if it is still in the scene and still a heatmap made by this module."""
        nodeId = self.ui.resultComboBox.currentData
        node = slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None
        from seghirescam.mrml.logic import ATTRIBUTE_PREFIX

        if node is None or node.GetAttribute(ATTRIBUTE_PREFIX + "Role") != "heatmap":
            return None
        return node

    def onResultChanged(self):
        node = self._currentResult()
        if node is not None:
            self.logic.showResult(node, opacity=self.ui.opacitySlider.value)
            self.onThresholdChanged(self.ui.thresholdSlider.value)

    def onOpacityChanged(self, value: float):
        node = self._currentResult()
        if node is not None:
            self.logic.showResult(node, opacity=value)

    def onThresholdChanged(self, value: float):
        from seghirescam.mrml.display import set_threshold_fraction

        node = self._currentResult()
        if node is not None:
            set_threshold_fraction(node, value)

    # ---- click to explain ---------------------------------------------------------------------------
    def onClickModeToggled(self, checked: bool):
        if checked:
            self._startClickMode()
        else:
            self._stopClickMode()

    def _startClickMode(self):
        """Explain clicks: a persistent 'place point' mode on a markups node of the module; each placed point is
        explained (``ClickExplainLogic.explainAtRAS``) and removed again."""
        p = self._params
        problem = ""
        if not torchInstalled():
            problem = "click to explain needs PyTorch: click Apply once to install it"
        elif self._model is None:
            problem = "no model is loaded (see 'Model:')"
        elif p is None or p.inputVolume is None:
            problem = "choose a CT volume first"
        clickLogic = None
        if not problem:
            from seghirescam.mrml.click import ClickExplainLogic

            try:
                clickLogic = ClickExplainLogic(slicer.mrmlScene, p.inputVolume, self._model, **self._clickSettings())
            except (ValueError, ImportError, OSError) as error:
                problem = str(error)
        if problem:
            self.ui.statusLabel.text = f"Click to explain is off: {problem}"
            wasBlocked = self.clickCheckBox.blockSignals(True)
            self.clickCheckBox.checked = False
            self.clickCheckBox.blockSignals(wasBlocked)
            return
        self._clickExplainer = clickLogic
        self._clickPoints = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SegHiResCAM click")
        self._clickPoints.SetHideFromEditors(True)
        self._clickPoints.SetSaveWithScene(False)
        from slicer import vtkMRMLMarkupsNode

        self.addObserver(self._clickPoints, vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onClickPlaced)
        self._setPlaceMode(self._clickPoints)
        self.ui.statusLabel.text = "Click to explain: click a pixel in a slice view"

    def _clickSettings(self) -> dict:
        """The click logic's settings from the parameter node (target class: chosen, else from the segment's name)."""
        p = self._params
        target = p.targetClass or None
        if target is None and p.segmentationNode is not None and p.segmentId:
            segment = p.segmentationNode.GetSegmentation().GetSegment(p.segmentId)
            target = self._model.class_for_segment(segment.GetName()) if segment is not None else None
        if target is None:
            raise ValueError("choose a target class (or a segment whose name names one)")
        methods = list(parse_method_keys(p.methods))
        gradient = [key for key in methods if key in METHOD_INFO and _isGradient(key)]
        if not gradient:
            raise ValueError("click to explain needs a gradient method (e.g. Seg-HiRes-Grad CAM) among the methods")
        return dict(targetClass=target, layers=p.layer or None, methods=gradient, normalize=p.normalize,
                    mode=p.clickMode, radius=p.clickRadius, device=p.device, outputPrefix=p.outputPrefix or None,
                    colorLogic=self.logic.colorLogic)

    def _updateClickSettings(self):
        """Settings changed while clicking: the next click uses them (a new CT or model ends the mode)."""
        click = self._clickExplainer
        if click is None:
            return
        if click.ctNode is not self._params.inputVolume or click.model is not self._model:
            self._stopClickMode()
            return
        try:
            settings = self._clickSettings()
            settings.pop("colorLogic")
            click.configure(**settings)
        except ValueError as error:
            self.ui.statusLabel.text = f"Click to explain: {error}"

    def _onClickPlaced(self, caller, event):
        """A point was placed in a slice view: explain it, then remove the point."""
        count = caller.GetNumberOfControlPoints()
        if count == 0 or self._clickExplainer is None:
            return
        ras = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(count - 1, ras)
        caller.RemoveAllControlPoints()
        try:
            self._clickExplainer.explainAtRAS(ras)
        except ValueError as error:
            self.ui.statusLabel.text = f"Click not explained: {error}"
            return
        record = self._clickExplainer.lastClick
        how = "new slice: forward + backward" if record.ranForward else "cached slice: one backward"
        self.ui.statusLabel.text = (f"Explained the click at voxel (k, j, i) {tuple(record.voxel)} in "
                                    f"{record.seconds * 1000:.0f} ms ({how})")

    def _setPlaceMode(self, markupsNode):
        """Persistent point placement into ``markupsNode`` (None: back to the normal view mode)."""
        interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selection = slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        if interaction is None or selection is None:  # no views (headless): points are added by scripts
            return
        if markupsNode is not None:
            selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
            selection.SetActivePlaceNodeID(markupsNode.GetID())
            interaction.SetPlaceModePersistence(1)
            interaction.SetCurrentInteractionMode(interaction.Place)
        else:
            interaction.SetPlaceModePersistence(0)
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def _stopClickMode(self):
        """End click to explain: normal view mode, the click point node removed; the maps stay in the scene."""
        if getattr(self, "_clickPoints", None) is not None:
            from slicer import vtkMRMLMarkupsNode

            self.removeObserver(self._clickPoints, vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onClickPlaced)
            self._setPlaceMode(None)
            if slicer.mrmlScene.GetNodeByID(self._clickPoints.GetID()) is self._clickPoints:
                slicer.mrmlScene.RemoveNode(self._clickPoints)
            self._clickPoints = None
        if self._clickExplainer is not None:
            self._clickExplainer.release()
            self._clickExplainer = None
        if hasattr(self, "clickCheckBox") and self.clickCheckBox.checked:
            wasBlocked = self.clickCheckBox.blockSignals(True)
            self.clickCheckBox.checked = False
            self.clickCheckBox.blockSignals(wasBlocked)


def _isGradient(key: str) -> bool:
    """Whether a click can afford a registered method (``cam.interactive.click_methods``: no perturbation method)."""
    from seghirescam.cam.interactive import click_methods

    try:
        click_methods([key])
        return True
    except ValueError:
        return False


# ---- self-test -------------------------------------------------------------------------------------------

class SegHiResCAMTest(ScriptedLoadableModuleTest):
    """Self-test (Slicer --testing / ctest): the phantom from Sample Data, the default model, assertions."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegHiResCAM_phantom()

    def test_SegHiResCAM_phantom(self):
        self.delayDisplay("Loading the phantom through Sample Data and running the default model")
        import SampleData

        from seghirescam.mrml.sample_data import PHANTOM_SAMPLE

        ensureDependencies()  # raises DependencyError with what to do
        registerSampleData()
        source = SampleData.SampleDataLogic().sourceForSampleName(PHANTOM_SAMPLE)
        self.assertIsNotNone(source, "the phantom is not registered with Sample Data")
        ct, segmentation = source.customDownloader(source)
        from seghirescam.mrml.selftest import run_self_test

        summary = run_self_test(slicer.mrmlScene, case=(ct, segmentation))  # raises SelfTestFailure if a check fails
        self.assertEqual(len(summary["heatmaps"]), 2)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName(summary["heatmaps"][0]))
        logging.info("SegHiResCAM self-test summary: %s", summary["heatmaps"])
        self.delayDisplay("Test passed")
