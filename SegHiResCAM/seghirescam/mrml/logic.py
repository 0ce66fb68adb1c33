"""The Slicer Logic: explain a CT node's segment and put the heatmaps in the scene. No qt here.

Runs in the Slicer application (default scene ``slicer.mrmlScene``) and headless with the
PyPI ``slicer-core`` (pass the scene). All computation happens before any node is created;
nodes are created at the end, and an error or a cancel removes whatever was added, so the
scene is left exactly as before. Input nodes are only read. Arrays are numpy (k, j, i).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import slicer

from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cam.method_info import MethodInfo, display_name, registered_methods
from seghirescam.imaging.geometry import Geometry
from seghirescam.models.class_names import resolve_target_class
from seghirescam.models.explainable import ExplainableModel, load_explainable_model
from seghirescam.mrml.display import heatmap_color_node, setup_heatmap_display, show_in_slice_views
from seghirescam.mrml.nodes import (add_heatmap_node, add_prediction_segmentation, ct_array_and_geometry, ijk_to_ras_of, node_ids,
                      remove_nodes, remove_with_dependents, segment_mask, voxel_at_world)
from seghirescam.mrml.render import renderSliceView
from seghirescam.ct.pipeline import explain_ct, predict_ct
from seghirescam.cam.pixel_sets import DEFAULT_POINT_RADIUS, PIXEL_SETS, pixel_set_from_points, pixel_set_whole_slices
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION
from seghirescam.cam.result import ExplanationCancelled, ExplanationResult
from seghirescam.imaging.volumes import SliceOrientation, Volume

__all__ = ["SegHiResCAMLogic", "renderSliceView", "PIXEL_SETS", "ATTRIBUTE_PREFIX"]

logger = logging.getLogger(__name__)

ATTRIBUTE_PREFIX = "SegHiResCAM."


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
            batchSize: Slices per batch or "auto".
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
        started = time.perf_counter()
        if pixelSet not in PIXEL_SETS:
            raise ValueError(f"pixelSet must be one of {', '.join(PIXEL_SETS)}, got {pixelSet!r}")
        if ctNode is None or not ctNode.IsA("vtkMRMLScalarVolumeNode") or ctNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("choose a CT scalar volume as input")
        model = model or self.loadModel()
        segmentName = self._segmentName(segmentationNode, segmentId)
        target = resolve_target_class(model.class_names, targetClass, segmentName, match=model.class_for_segment)
        layerList = [layers] if isinstance(layers, str) else list(layers or [self.defaultLayer(model)])
        ct, geometry = ct_array_and_geometry(ctNode)
        axialAxis = SliceOrientation.from_geometry(geometry).permutation[0]
        predicted = None
        if pixelSet == "segment":
            mask = segment_mask(self.scene, segmentationNode, segmentId, ctNode)
        elif pixelSet == "prediction":
            predicted = predict_ct(Volume(ct, geometry), model, device=device)
            if cancel is not None and cancel():
                raise ExplanationCancelled("cancelled after the prediction")
            mask = predicted == target
            if not mask.any():
                raise ValueError(f"the model predicts no {model.class_names[target]!r} voxel in this CT: "
                                 "choose another pixel set or class")
        elif pixelSet == "point":
            mask = self._pointMask(ctNode, pointNode, ct.shape, axialAxis)
        else:
            if sliceIndex is None or not 0 <= int(sliceIndex) < ct.shape[axialAxis]:
                raise ValueError(f"sliceIndex must be 0..{ct.shape[axialAxis] - 1} (along the CT's axial axis), "
                                 f"got {sliceIndex!r}")
            mask = pixel_set_whole_slices(ct.shape, [int(sliceIndex)], axis=axialAxis)
        if not mask.any():
            raise ValueError(f"the segment {segmentName!r} does not overlap this CT: nothing to explain")
        result = explain_ct(Volume(ct, geometry), mask, model, target, layers=layerList, methods=methods,
                            batch_size=batchSize, device=device, normalize=normalize, progress=progress, cancel=cancel)
        if onResult is not None:
            onResult(result)
        maps = result.maps
        settings = {"SourceVolumeID": ctNode.GetID(), "TargetClass": model.class_names[target], "TargetClassIndex": target,
                    "PixelSet": pixelSet, "Segment": segmentName or "", "Model": model.name,
                    "ModelPath": str(model.source),
                    "Normalize": normalize, "Device": result.device, "BatchSize": result.batch_size,
                    "SlicesExplained": len(result.slices_explained), "RunID": uuid.uuid4().hex,
                    "Seconds": f"{time.perf_counter() - started:.2f}"}
        nodes = self._createNodes(ctNode, maps, predicted, model, settings, outputPrefix or ctNode.GetName(),
                                  keepPrevious, inputs=(ctNode, segmentationNode, pointNode))
        logger.info("SegHiResCAM: %d heatmap(s) for %s in %.1f s", len(nodes), ctNode.GetName(),
                    time.perf_counter() - started)
        return nodes

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
                setup_heatmap_display(node, colorNode)
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
