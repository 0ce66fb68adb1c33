"""The Slicer Logic: explain a CT node's segment and put the heatmaps in the scene. No qt here.

Runs in the Slicer application (default scene ``slicer.mrmlScene``) and headless with the
PyPI ``slicer-core`` (pass the scene). A run has three steps: ``prepare`` reads the nodes
(main thread), the computation (prediction, explanation) runs either here (``process``, for
scripts) or in a worker process (``startProcess``, for the GUI: never frozen, cancelled at
once), and ``finish`` creates the nodes (main thread). Nodes are created only at the end; an
error or a cancel removes whatever was added, so the scene is left exactly as before. Input
nodes are only read. Arrays are numpy (k, j, i).

torch is imported only when a model is loaded or a computation runs here: importing this
module (and the Slicer module file) imports no torch.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import slicer

from seghirescam.cam.method_info import DEFAULT_METHOD_KEYS, MethodInfo, display_name, registered_methods
from seghirescam.cam.pixel_sets import DEFAULT_POINT_RADIUS, PIXEL_SETS, pixel_set_from_points, pixel_set_whole_slices
from seghirescam.cam.result import ExplanationCancelled
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION
from seghirescam.ct.background import BackgroundJob, JobRequest, JobStatus
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import SliceOrientation, Volume
from seghirescam.models.class_names import resolve_target_class
from seghirescam.mrml.display import heatmap_color_node, setup_heatmap_display, show_in_slice_views
from seghirescam.mrml.nodes import (add_heatmap_node, add_prediction_segmentation, ct_array_and_geometry, ijk_to_ras_of,
                                    node_ids, remove_nodes, remove_with_dependents, segment_mask, voxel_at_world)
from seghirescam.mrml.parameters import BATCH_SIZE_RANGE
from seghirescam.mrml.render import renderSliceView

if TYPE_CHECKING:
    from seghirescam.cam.result import ExplanationResult
    from seghirescam.models.explainable import ExplainableModel

__all__ = ["SegHiResCAMLogic", "BackgroundProcess", "renderSliceView", "PIXEL_SETS", "ATTRIBUTE_PREFIX"]

logger = logging.getLogger(__name__)

ATTRIBUTE_PREFIX = "SegHiResCAM."
DEFAULT_METHODS = DEFAULT_METHOD_KEYS


def check_batch_size(batchSize: int | str) -> int | str:
    """Returns: ``batchSize`` if it is "auto" or 1..1024 (0 means "auto").

    Raises:
        ValueError: For anything else (a negative or huge number, a word).
    """
    if batchSize == "auto" or batchSize == 0:
        return "auto"
    if isinstance(batchSize, bool) or not isinstance(batchSize, (int, np.integer)) \
            or not 1 <= int(batchSize) <= BATCH_SIZE_RANGE[1]:
        raise ValueError(f"batchSize must be \"auto\" (or 0) or 1..{BATCH_SIZE_RANGE[1]}, got {batchSize!r}")
    return int(batchSize)


@dataclass
class PreparedRun:
    """What ``prepare`` read from the scene: everything the computation and ``finish`` need."""

    ctNode: slicer.vtkMRMLScalarVolumeNode
    ct: np.ndarray
    geometry: Geometry
    mask: np.ndarray | None
    model: ExplainableModel
    target: int
    layers: list[str]
    methods: list[str]
    pixelSet: str
    device: str
    batchSize: int | str
    normalize: str
    prefix: str
    keepPrevious: bool
    inputs: tuple
    settings: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


class SegHiResCAMLogic:
    """Explain segmentation U-Nets on MRML nodes.

    Args:
        scene: The MRML scene (default: ``slicer.mrmlScene`` inside the application).
        colorLogic: A ``vtkSlicerColorLogic`` for colour legends (default: the app's, if any).

    Raises:
        ValueError: If no scene is given outside the application.
    """

    def __init__(self, scene: slicer.vtkMRMLScene | None = None, colorLogic: object | None = None) -> None:
        self.scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            raise ValueError("no MRML scene: pass scene= when running outside the Slicer application")
        self.colorLogic = colorLogic
        self._models: dict[tuple, ExplainableModel] = {}
        self.lastPredictionNode: slicer.vtkMRMLSegmentationNode | None = None
        self._runs: list[BackgroundProcess] = []  # background runs to cancel when the scene closes
        self._closeObserver = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                     _cancel_on_close(weakref.ref(self)))

    # ---- models and layers -------------------------------------------------------------------
    def loadModel(self, path: str | None = None, **options: object) -> ExplainableModel:
        """The model at ``path``, loaded once and kept until another is loaded: a model file with its card or an nnU-Net v2
        results folder (None or "": the shipped default U-Net). A model that fails to load raises; it
        is never replaced by another model.

        Args:
            path: File or folder.
            **options: ``card``, or nnU-Net's ``folds``, ``checkpoint``, ``use_mirroring``
                (``models.explainable.load_explainable_model``).

        Raises:
            FileNotFoundError, ValueError: One clear message naming the path and the cause.
        """
        from seghirescam.models.explainable import load_explainable_model  # torch: only when a model is needed

        key = (str(path or ""), tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in self._models:  # one model kept: a switch frees the previous one's memory
            self._models = {key: load_explainable_model(path or None, **options)}
        return self._models[key]

    @staticmethod
    def defaultLayer(model: ExplainableModel) -> str:
        """Returns: the layer explained when none is chosen (the U-Net's bottleneck, nnU-Net's deepest
        encoder stage): the model's ``default_layer``."""
        return model.default_layer

    @staticmethod
    def methodChoices() -> list[MethodInfo]:
        """Returns: every registered CAM method (key, display_name, description, ...), in registration
        order: what the widget offers and ``process(methods=...)`` accepts."""
        return list(registered_methods())

    @staticmethod
    def layerChoices(model: ExplainableModel) -> list[tuple[str, bool]]:
        """Returns: [(layer, collapses)] in forward order; collapses=True for layers feeding the head
        directly, where both CAMs reduce to the logit map (they explain nothing beyond the segmentation)."""
        return [(layer, layer in model.head_input_layers) for layer in model.layers]

    # ---- results in the scene ----------------------------------------------------------------
    def resultNodes(self, ctNode: slicer.vtkMRMLVolumeNode, role: str = "heatmap") -> list[slicer.vtkMRMLNode]:
        """Returns: the nodes a run made for this CT ("heatmap" volumes or "prediction" segmentations)."""
        found = []
        for index in range(self.scene.GetNumberOfNodes()):
            node = self.scene.GetNthNode(index)
            if node.GetAttribute(ATTRIBUTE_PREFIX + "Role") == role \
                    and node.GetAttribute(ATTRIBUTE_PREFIX + "SourceVolumeID") == ctNode.GetID():
                found.append(node)
        return found

    def removeResults(self, ctNode: slicer.vtkMRMLVolumeNode, keep: Sequence[slicer.vtkMRMLNode] = ()) -> int:
        """Remove the heatmaps and prediction segmentations made for this CT, except ``keep``.

        Returns:
            How many nodes were removed.
        """
        keep_ids = {node.GetID() for node in keep if node is not None}
        old = [node for role in ("heatmap", "prediction") for node in self.resultNodes(ctNode, role)
               if node.GetID() not in keep_ids]
        for node in old:
            remove_with_dependents(self.scene, node)
        return len(old)

    def showResult(self, heatmapNode: slicer.vtkMRMLScalarVolumeNode, opacity: float = 0.5) -> bool:
        """Show a heatmap over its own CT in every slice view (inside the application).

        Only a heatmap made by this module for a CT that is in the scene is shown: the CT comes from
        the heatmap's ``SourceVolumeID`` attribute, never from what the views showed before.

        Returns:
            True if the views were changed.
        """
        if heatmapNode is None or heatmapNode.GetAttribute(ATTRIBUTE_PREFIX + "Role") != "heatmap" \
                or self.scene.GetNodeByID(heatmapNode.GetID()) is not heatmapNode:
            return False
        ctNode = self.scene.GetNodeByID(heatmapNode.GetAttribute(ATTRIBUTE_PREFIX + "SourceVolumeID") or "")
        if ctNode is None:
            return False
        return show_in_slice_views(self.scene, ctNode, heatmapNode, opacity=opacity, color_logic=self.colorLogic)

    # ---- the run -----------------------------------------------------------------------------
    def process(self, ctNode: slicer.vtkMRMLScalarVolumeNode, segmentationNode: slicer.vtkMRMLSegmentationNode | None,
                segmentId: str | None, *, model: ExplainableModel | None = None, targetClass: int | str | None = None,
                layers: str | Sequence[str] | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                pixelSet: str = "segment", pointNode: slicer.vtkMRMLMarkupsNode | None = None,
                sliceIndex: int | None = None, device: str = "auto", batchSize: int | str = "auto",
                normalize: str = DEFAULT_NORMALIZATION, progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None, keepPrevious: bool = False,
                outputPrefix: str | None = None,
                onResult: Callable[[ExplanationResult], None] | None = None) -> dict[tuple[str, str], slicer.vtkMRMLScalarVolumeNode]:
        """Explain the model's decision for one class on a CT; add one heatmap node per (method, layer).

        Runs in the calling thread (scripts, tests, the cohort script). The module's GUI uses
        ``startProcess`` instead, which computes in a worker process.

        Args:
            ctNode: The CT (HU). Any direction matrix; slices are taken along its axial axis.
            segmentationNode, segmentId: The segment: the pixel set M (pixelSet "segment") and,
                via its name, the target class (e.g. "Left kidney" -> kidney).
            model: Any explainable model (``loadModel``): the U-Net with its card, an nnU-Net folder; default:
                the shipped default model.
            targetClass: Class index or name; None: from the segment's name (``ModelCard.resolve_target_class``).
            layers: Layer name(s); None: the deepest ("bottleneck"), see ``defaultLayer``.
            methods: CAM method names, e.g. ("seg-hires-grad-cam", "seg-grad-cam", "seg-xres-cam").
            pixelSet: A key of ``cam.vocabulary.PIXEL_SETS``: "segment"; "prediction" (voxels the model
                labels as the class; also adds the prediction as a segmentation node); "point" (the
                markups control points, each grown to an in-plane disc of ``DEFAULT_POINT_RADIUS``
                pixels); "slice" (the whole axial slice ``sliceIndex``).
            pointNode: Markups node for pixelSet "point".
            sliceIndex: For pixelSet "slice": index along the CT's axial array axis (its own k, j or i).
            device: "auto", "cpu", "cuda".
            batchSize: Slices per batch (1..1024), or "auto" (or 0).
            normalize: A key of ``cam.vocabulary.NORMALIZATIONS``: "volume", "slice" or "none".
            progress: Called as progress(done, total) after each batch.
            cancel: Called before each batch; True stops the run and leaves the scene as it was.
            keepPrevious: Keep the heatmaps of earlier runs on this CT (default: replace them).
            outputPrefix: Node name prefix (default: the CT's name).
            onResult: Called with the ``ExplanationResult`` (maps on the CT's grid) before the nodes are
                made, e.g. to write the maps as files with ``ct.outputs.write_case_outputs`` as the
                command line does (the cohort script).

        Returns:
            ``{(method, layer): heatmap node}``, each on the CT's exact grid and parent transform.

        Raises:
            ValueError: For missing or inconsistent inputs (the message says what to choose).
            seghirescam.ExplanationCancelled: If ``cancel()`` returned True.
            FileNotFoundError: If no model is given and the default model is missing.
        """
        run = self.prepare(ctNode, segmentationNode, segmentId, model=model or self.loadModel(),
                           targetClass=targetClass, layers=layers, methods=methods, pixelSet=pixelSet,
                           pointNode=pointNode, sliceIndex=sliceIndex, device=device, batchSize=batchSize,
                           normalize=normalize, keepPrevious=keepPrevious, outputPrefix=outputPrefix)
        from seghirescam.ct.pipeline import explain_ct, predict_ct

        volume = Volume(run.ct, run.geometry)
        predicted, mask = None, run.mask
        if run.pixelSet == "prediction":
            predicted = predict_ct(volume, run.model, device=run.device)
            if cancel is not None and cancel():
                raise ExplanationCancelled("cancelled after the prediction")
            mask = predicted == run.target
            if not mask.any():
                raise ValueError(f"the model predicts no {run.model.class_names[run.target]!r} voxel in this CT: "
                                 "choose another pixel set or class")
        result = explain_ct(volume, mask, run.model, run.target, layers=run.layers, methods=run.methods,
                            batch_size=run.batchSize, device=run.device, normalize=run.normalize, progress=progress,
                            cancel=cancel)
        if onResult is not None:
            onResult(result)
        return self.finish(run, result.maps, predicted, {"Device": result.device, "BatchSize": result.batch_size,
                                                           "SlicesExplained": len(result.slices_explained)})

    def prepare(self, ctNode: slicer.vtkMRMLScalarVolumeNode, segmentationNode: slicer.vtkMRMLSegmentationNode | None,
                segmentId: str | None, *, model: ExplainableModel, targetClass: int | str | None = None,
                layers: str | Sequence[str] | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                pixelSet: str = "segment", pointNode: slicer.vtkMRMLMarkupsNode | None = None,
                sliceIndex: int | None = None, device: str = "auto", batchSize: int | str = "auto",
                normalize: str = DEFAULT_NORMALIZATION, keepPrevious: bool = False,
                outputPrefix: str | None = None) -> PreparedRun:
        """Read and check a run's inputs (main thread; arguments as for ``process``). The scene is not changed.

        Returns:
            The prepared run (the CT array, M unless pixelSet is "prediction", the target class, ...).

        Raises:
            ValueError: For missing or inconsistent inputs (the message says what to choose).
        """
        if pixelSet not in PIXEL_SETS:
            raise ValueError(f"pixelSet must be one of {', '.join(PIXEL_SETS)}, got {pixelSet!r}")
        if ctNode is None or not ctNode.IsA("vtkMRMLScalarVolumeNode") or ctNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("choose a CT scalar volume as input")
        if model is None:
            raise ValueError("no model: load one with loadModel (a model that failed to load is never replaced)")
        batchSize = check_batch_size(batchSize)
        methods = list(methods)
        if not methods:
            raise ValueError("choose at least one method")
        segmentName = self._segmentName(segmentationNode, segmentId)
        target = resolve_target_class(model.class_names, targetClass, segmentName, match=model.class_for_segment)
        layerList = [layers] if isinstance(layers, str) else list(layers or [self.defaultLayer(model)])
        unknown = [layer for layer in layerList if layer not in model.layers]
        if unknown:
            raise ValueError(f"the model {model.name!r} has no layer {', '.join(unknown)}; its layers: "
                             f"{', '.join(model.layers)}")
        ct, geometry = ct_array_and_geometry(ctNode)
        axialAxis = SliceOrientation.from_geometry(geometry).permutation[0]
        mask = None
        if pixelSet == "segment":
            mask = segment_mask(self.scene, segmentationNode, segmentId, ctNode)
        elif pixelSet == "point":
            mask = self._pointMask(ctNode, pointNode, ct.shape, axialAxis)
        elif pixelSet == "slice":
            if sliceIndex is None or not 0 <= int(sliceIndex) < ct.shape[axialAxis]:
                raise ValueError(f"sliceIndex must be 0..{ct.shape[axialAxis] - 1} (along the CT's axial axis), "
                                 f"got {sliceIndex!r}")
            mask = pixel_set_whole_slices(ct.shape, [int(sliceIndex)], axis=axialAxis)
        if mask is not None and not mask.any():
            raise ValueError(f"the segment {segmentName!r} does not overlap this CT: nothing to explain")
        settings = {"SourceVolumeID": ctNode.GetID(), "TargetClass": model.class_names[target],
                    "TargetClassIndex": target, "PixelSet": pixelSet, "Segment": segmentName or "",
                    "Model": model.name, "ModelPath": str(model.source), "Normalize": normalize}
        return PreparedRun(ctNode, ct, geometry, mask, model, target, layerList, methods, pixelSet, device, batchSize,
                           normalize, outputPrefix or ctNode.GetName(), keepPrevious,
                           (ctNode, segmentationNode, pointNode), settings)

    def finish(self, run: PreparedRun, maps: dict[tuple[str, str], np.ndarray], predicted: np.ndarray | None,
               computed: dict) -> dict[tuple[str, str], slicer.vtkMRMLScalarVolumeNode]:
        """Add the run's nodes to the scene (main thread).

        Args:
            run: From ``prepare``.
            maps: {(method, layer): float32 (k, j, i) on the CT's grid}.
            predicted: The model's labels (k, j, i) for pixelSet "prediction", else None.
            computed: How it was computed: "Device", "BatchSize", "SlicesExplained".

        Returns:
            ``{(method, layer): heatmap node}``.

        Raises:
            ExplanationCancelled: If the CT left the scene meanwhile (e.g. the scene was closed):
                nothing is added.
        """
        if self.scene.GetNodeByID(run.ctNode.GetID()) is not run.ctNode:
            raise ExplanationCancelled("the CT is no longer in the scene (was the scene closed?): nothing was added")
        settings = {**run.settings, **computed, "RunID": uuid.uuid4().hex,
                    "Seconds": f"{time.perf_counter() - run.started:.2f}"}
        nodes = self._createNodes(run.ctNode, maps, predicted, run.model, settings, run.prefix, run.keepPrevious,
                                  inputs=run.inputs)
        logger.info("SegHiResCAM: %d heatmap(s) for %s in %.1f s", len(nodes), run.ctNode.GetName(),
                    time.perf_counter() - run.started)
        return nodes

    def startProcess(self, ctNode: slicer.vtkMRMLScalarVolumeNode, segmentationNode: slicer.vtkMRMLSegmentationNode | None,
                     segmentId: str | None, *, modelPath: str | None = None, modelOptions: dict | None = None,
                     python: str | None = None, **arguments: object) -> BackgroundProcess:
        """Start a run whose computation happens in a worker process (the GUI's way: never frozen).

        The inputs are read now (``prepare``); poll the returned run from the main thread (e.g. a
        timer, once a second or more often) and call its ``finish`` when ``poll`` says "finished".
        ``cancel`` kills the worker at once; the scene is then exactly as before. Closing the scene
        cancels every running run.

        Args:
            ctNode, segmentationNode, segmentId: As for ``process``.
            modelPath: The model file or folder ("" or None: the shipped default model); loaded here
                (classes, layers, target class) and again in the worker.
            modelOptions: Loader options (e.g. {"folds": ("all",)}).
            python: The worker's interpreter (default: ``PythonSlicer`` inside Slicer, else this one).
            **arguments: ``targetClass``, ``layers``, ``methods``, ``pixelSet``, ``pointNode``,
                ``sliceIndex``, ``device``, ``batchSize``, ``normalize``, ``keepPrevious``, ``outputPrefix``.

        Returns:
            The running ``BackgroundProcess``.

        Raises:
            ValueError, FileNotFoundError: For bad inputs or a model that fails to load (nothing is started).
        """
        options = dict(modelOptions or {})
        model = self.loadModel(modelPath or None, **options)
        run = self.prepare(ctNode, segmentationNode, segmentId, model=model, **arguments)
        request = JobRequest(model_path=str(modelPath or ""),
                             model_options={k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                             target_class=run.target, layers=run.layers, methods=run.methods, device=run.device,
                             batch_size=run.batchSize, normalize=run.normalize, pixel_set=run.pixelSet,
                             ijk_to_ras=ijk_to_ras_of(ctNode).tolist())
        job = BackgroundJob.start(request, run.ct, run.mask, python=python)
        background = BackgroundProcess(self, run, job)
        self._runs.append(background)
        return background

    def cancelRuns(self) -> int:
        """Cancel every background run of this Logic. Returns: how many were running."""
        running = [run for run in self._runs if run.poll().state == "running"]
        for run in list(self._runs):
            run.cancel()
        return len(running)

    def close(self) -> None:
        """Cancel the runs and stop observing the scene (e.g. from the widget's ``cleanup``)."""
        self.cancelRuns()
        if self._closeObserver is not None:
            self.scene.RemoveObserver(self._closeObserver)
            self._closeObserver = None

    def _createNodes(self, ctNode, maps, predicted, model, settings, prefix, keepPrevious, inputs):
        """Add the nodes at the end of a run; on any error remove everything added."""
        before = node_ids(self.scene)
        className = settings["TargetClass"]
        self.scene.StartState(slicer.vtkMRMLScene.BatchProcessState)
        try:
            colorNode = heatmap_color_node(self.scene)
            nodes = {}
            for (method, layer), array in maps.items():
                name = f"{prefix} {display_name(method)} {layer} ({className})"
                attributes = {ATTRIBUTE_PREFIX + k: v for k, v in {**settings, "Role": "heatmap", "Method": method,
                                                                    "Layer": layer}.items()}
                node = add_heatmap_node(self.scene, ctNode, array, name, attributes)
                setup_heatmap_display(node, colorNode, raw=settings.get("Normalize") == "none")
                nodes[(method, layer)] = node
            prediction = None
            if predicted is not None:
                attributes = {ATTRIBUTE_PREFIX + k: v for k, v in {**settings, "Role": "prediction"}.items()}
                prediction = add_prediction_segmentation(self.scene, ctNode, predicted, model.class_names,
                                                         f"{prefix} prediction ({model.name})", attributes)
            if not keepPrevious:
                keep = [*nodes.values(), prediction, *inputs]
                self.removeResults(ctNode, keep=keep)
        except BaseException:
            self.scene.EndState(slicer.vtkMRMLScene.BatchProcessState)
            remove_nodes(self.scene, node_ids(self.scene) - before)
            raise
        self.scene.EndState(slicer.vtkMRMLScene.BatchProcessState)
        self.lastPredictionNode = prediction
        first = next(iter(nodes.values()))
        show_in_slice_views(self.scene, ctNode, first, opacity=0.5, color_logic=self.colorLogic)
        return nodes

    # ---- inputs ------------------------------------------------------------------------------
    @staticmethod
    def _segmentName(segmentationNode, segmentId) -> str | None:
        if segmentationNode is None or not segmentId:
            return None
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        return segment.GetName() if segment is not None else None

    @staticmethod
    def _pointMask(ctNode, pointNode, shape, axialAxis) -> np.ndarray:
        if pointNode is None or pointNode.GetNumberOfControlPoints() == 0:
            raise ValueError("pixel set 'point' needs a markups point: place one on the CT")
        points = []
        for index in range(pointNode.GetNumberOfControlPoints()):
            world = [0.0, 0.0, 0.0]
            pointNode.GetNthControlPointPositionWorld(index, world)
            points.append(voxel_at_world(ctNode, world))
        return pixel_set_from_points(shape, points, radius=DEFAULT_POINT_RADIUS, axis=axialAxis)

    def sliceIndexAt(self, ctNode: slicer.vtkMRMLVolumeNode, rasWorld: Sequence[float]) -> int:
        """Returns: the index along the CT's axial array axis of the slice through a world RAS point
        (for pixelSet "slice", e.g. from the Red view's centre).

        Raises:
            ValueError: If the point lies outside the CT.
        """
        axis = SliceOrientation.from_geometry(Geometry.from_ijk_to_ras(ijk_to_ras_of(ctNode))).permutation[0]
        return int(voxel_at_world(ctNode, rasWorld)[axis])


def _cancel_on_close(logic_ref: weakref.ref) -> Callable:
    """The scene observer that cancels a Logic's runs when the scene closes; holds the Logic weakly, so an
    observer left on the scene neither keeps a Logic alive nor calls a half-destroyed one."""

    def on_close(caller, event) -> None:
        logic = logic_ref()
        if logic is not None and "_runs" in vars(logic):
            logic.cancelRuns()

    return on_close


class BackgroundProcess:
    """A run of ``SegHiResCAMLogic.startProcess``: poll it from the main thread, then ``finish`` or ``cancel``.

    Attributes:
        run: The prepared inputs.
        job: The worker process (``seghirescam.ct.background.BackgroundJob``).
    """

    def __init__(self, logic: SegHiResCAMLogic, run: PreparedRun, job: BackgroundJob) -> None:
        self.logic, self.run, self.job = logic, run, job

    def poll(self) -> JobStatus:
        """Returns: the worker's state now (non-blocking): "running", "finished", "failed" or "cancelled"."""
        return self.job.poll()

    def finish(self) -> dict[tuple[str, str], slicer.vtkMRMLScalarVolumeNode]:
        """Create the nodes of a finished run (main thread) and remove the worker's files.

        Returns:
            ``{(method, layer): heatmap node}``.

        Raises:
            RuntimeError: With the worker's message, if it failed.
            ExplanationCancelled: If the run was cancelled or its CT left the scene.
        """
        try:
            status = self.poll()
            if status.state == "cancelled":
                raise ExplanationCancelled("the run was cancelled")
            if status.state == "failed":
                raise RuntimeError(status.error)
            if status.state != "finished":
                raise RuntimeError("the run has not finished: poll until it has")
            result = self.job.result()
            return self.logic.finish(self.run, result.maps, result.predicted,
                                     {"Device": result.info["device"], "BatchSize": result.info["batch_size"],
                                      "SlicesExplained": result.info["slices_explained"]})
        finally:
            self._forget()

    def cancel(self) -> None:
        """Kill the worker now; the scene is left as it was. Idempotent."""
        self.job.cancel()
        self._forget()

    def _forget(self) -> None:
        self.job.close()
        if self in self.logic._runs:
            self.logic._runs.remove(self)
