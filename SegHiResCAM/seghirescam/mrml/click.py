"""Click to explain in Slicer, without qt: a click's RAS point becomes M, its slice's maps a heatmap layer.

``ClickExplainLogic.explainAtRAS(ras)`` finds the CT voxel under a world RAS point (parent transforms
undone, ``mrml.nodes.voxel_at_world``), takes the CT's axial slice through it in the model's slice
convention (``imaging.volumes.SliceOrientation``, as ``models.slicewise`` explains whole CTs), and
explains M = the clicked pixel, a disc around it, or the predicted region under it
(``cam.vocabulary.CLICK_MODES``) with a ``cam.interactive.SliceExplainer``. The explainer of the
last slice is kept, so a further click on that slice costs one backward pass; another slice, another
CT content or geometry, or other model, class, layers, methods or device build a new one (one
forward). The slice's maps are written into one heatmap volume per (method, layer) on the CT's exact
grid and parent transform (``mrml.nodes.add_heatmap_node``); every other slice of it is zero.

Arrays: numpy (k, j, i) on the CT's grid; the model's slices (r, c). Everything is computed before
any node is touched, so a failing click leaves the scene as it was.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import torch

from seghirescam.cam.engine import DEFAULT_METHODS, MapKey
from seghirescam.cam.interactive import SliceExplainer, SliceExplanation, gradient_methods
from seghirescam.cam.method_info import display_name
from seghirescam.cam.normalization import check_normalize
from seghirescam.cam.vocabulary import CLICK_MODES, DEFAULT_CLICK_MODE, DEFAULT_NORMALIZATION, DEFAULT_POINT_RADIUS
from seghirescam.imaging.geometry import Geometry
from seghirescam.imaging.volumes import SliceOrientation
from seghirescam.models.class_names import resolve_target_class
from seghirescam.models.explainable import ExplainableModel
from seghirescam.models.loading import LoadedModel
from seghirescam.mrml.display import heatmap_color_node, setup_heatmap_display, show_in_slice_views
from seghirescam.mrml.logic import ATTRIBUTE_PREFIX
from seghirescam.mrml.nodes import add_heatmap_node, ijk_to_ras_of, remove_with_dependents, voxel_at_world

__all__ = ["ClickExplainLogic", "ClickRecord", "CLICK_ROLE"]

CLICK_ROLE = "click"
"""The ``SegHiResCAM.Role`` attribute of click heatmaps (``SegHiResCAMLogic.resultNodes(ct, CLICK_ROLE)``)."""


@dataclass
class ClickRecord:
    """What the last click explained.

    Attributes:
        voxel: The clicked CT voxel (k, j, i).
        sliceIndex: Its index along the CT's axial array axis (``axis``).
        axis: The CT's axial numpy axis (0, 1 or 2).
        pixel: The voxel in the model's slice, (row, column).
        explanation: The maps of the slice (r, c), M, y_M, scales.
        ranForward: Whether this click ran a forward pass (a new slice or new settings).
        seconds: Wall time of the click, nodes included.
    """

    voxel: tuple[int, int, int]
    sliceIndex: int
    axis: int
    pixel: tuple[int, int]
    explanation: SliceExplanation
    ranForward: bool
    seconds: float


class ClickExplainLogic:
    """Click-to-explain on one CT node: settings, the cached slice, and the heatmap nodes it writes.

    Args:
        scene: The MRML scene holding the CT.
        ctNode: The CT scalar volume (HU). Only read.
        model: A 2D model that sees whole slices (``SegHiResCAMLogic.loadModel``: a model file with its
            card, or a factory network).
        targetClass: Class index or name (e.g. "kidney").
        layers: Layer name(s); None: the model's ``default_layer``.
        methods: Gradient method keys (``cam.interactive.gradient_methods``).
        normalize: A key of ``cam.vocabulary.NORMALIZATIONS`` (on one slice "volume" = "slice").
        mode: A key of ``cam.vocabulary.CLICK_MODES``: "pixel", "disc" or "component".
        radius: Disc radius in pixels for mode "disc".
        device: "auto", "cpu", "cuda".
        outputPrefix: Heatmap node name prefix (default: the CT's name).
        colorLogic: A ``vtkSlicerColorLogic`` for the colour legend (default: the app's, if any).

    Raises:
        ValueError: A 3D model or one explained by sliding windows, a CT that is no scalar volume, an
            unknown class, layer, method, mode or normalisation, a perturbation method.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, ctNode: slicer.vtkMRMLScalarVolumeNode, model: ExplainableModel,
                 targetClass: int | str, *, layers: str | Sequence[str] | None = None,
                 methods: Sequence[str] = DEFAULT_METHODS, normalize: str = DEFAULT_NORMALIZATION,
                 mode: str = DEFAULT_CLICK_MODE, radius: int = DEFAULT_POINT_RADIUS, device: str = "auto",
                 outputPrefix: str | None = None, colorLogic: object | None = None) -> None:
        if ctNode is None or not ctNode.IsA("vtkMRMLScalarVolumeNode") or ctNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("click to explain needs a CT scalar volume: choose one as input")
        if getattr(model, "spatial_dims", 2) != 2:
            raise ValueError(f"click to explain explains one 2D slice per click; {model.name} is a "
                             f"{model.spatial_dims}D model (its CAMs need whole volumes): use Apply instead")
        if not isinstance(model, LoadedModel):
            raise ValueError(f"click to explain needs a 2D model that sees whole slices (a model file with its card, "
                             f"or a factory network); {model.name} runs on patches: use Apply instead")
        self.scene, self.ctNode, self.model, self.colorLogic = scene, ctNode, model, colorLogic
        self.outputPrefix = outputPrefix
        self.targetClass = self.layers = self.methods = None
        self.normalize, self.mode, self.radius, self.device = DEFAULT_NORMALIZATION, DEFAULT_CLICK_MODE, 0, device
        self.configure(targetClass=targetClass, layers=layers, methods=methods, normalize=normalize, mode=mode,
                       radius=radius, device=device)
        self.lastClick: ClickRecord | None = None
        self._explainer: SliceExplainer | None = None
        self._cacheKey: tuple | None = None
        self._nodes: dict[MapKey, slicer.vtkMRMLScalarVolumeNode] = {}
        self._written: dict[str, tuple] = {}  # node ID -> (orientation, slice index) holding non-zero values

    # ---- settings ----------------------------------------------------------------------------
    def configure(self, **settings: object) -> None:
        """Change settings (the constructor's keywords: targetClass, layers, methods, normalize, mode,
        radius, device, outputPrefix); the next click uses them. Settings that change the forward pass
        (class, layers, methods, device) make the next click build a new slice cache.

        Raises:
            ValueError: For an unknown setting or value; nothing is changed then.
        """
        known = {"targetClass", "layers", "methods", "normalize", "mode", "radius", "device", "outputPrefix"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown click setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        model = self.model
        values = {"targetClass": self.targetClass, "layers": self.layers, "methods": self.methods,
                  "normalize": self.normalize, "mode": self.mode, "radius": self.radius, "device": self.device,
                  "outputPrefix": self.outputPrefix}
        values.update(settings)
        if "targetClass" in settings:
            values["targetClass"] = resolve_target_class(model.class_names, settings["targetClass"],
                                                         match=model.class_for_segment)
        if "layers" in settings:
            layers = settings["layers"]
            layers = [layers] if isinstance(layers, str) else list(layers or [model.default_layer])
            unknown_layers = [layer for layer in layers if layer not in model.layers]
            if unknown_layers:
                raise ValueError(f"unknown layer(s) {', '.join(map(repr, unknown_layers))}; "
                                 f"{model.name} has: {', '.join(model.layers)}")
            values["layers"] = tuple(layers)
        if "methods" in settings:
            values["methods"] = tuple(method.key for method in gradient_methods(settings["methods"]))
        check_normalize(values["normalize"])
        if values["mode"] not in CLICK_MODES:
            raise ValueError(f"click mode must be one of {', '.join(CLICK_MODES)}, got {values['mode']!r}")
        radius = values["radius"]
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"the disc radius must be an int >= 0 (pixels), got {radius!r}")
        for name, value in values.items():
            setattr(self, name, value)

    # ---- clicks ------------------------------------------------------------------------------
    def explainAtRAS(self, ras: Sequence[float]) -> dict[MapKey, slicer.vtkMRMLScalarVolumeNode]:
        """Explain M = the click (pixel, disc or predicted region) on the CT slice under a world RAS point.

        Args:
            ras: The clicked position, world RAS mm (as a slice view reports it).

        Returns:
            ``{(method, layer): heatmap node}``: the slice's maps on the CT's grid, other slices zero.

        Raises:
            ValueError: If the point lies outside the CT, or (mode "component") the model does not
                predict the target class at the clicked voxel. The scene is then unchanged.
        """
        started = time.perf_counter()
        voxel = voxel_at_world(self.ctNode, ras)
        matrix = ijk_to_ras_of(self.ctNode)
        orientation = SliceOrientation.from_geometry(Geometry.from_ijk_to_ras(matrix))
        shape = tuple(self.ctNode.GetImageData().GetDimensions()[::-1])
        s, row, column = _slice_position(voxel, orientation, shape)
        explainer, ranForward = self._explainerFor(s, orientation, matrix)
        explainer.normalize = self.normalize
        if self.mode == "component":
            if explainer.prediction[row, column] != self.targetClass:
                name = self.model.class_names[self.targetClass]
                predicted = self.model.class_names[int(explainer.prediction[row, column])]
                raise ValueError(f"the model does not predict {name!r} at the clicked voxel (k, j, i = {voxel}; it "
                                 f"predicts {predicted!r}): click inside the predicted {name}, or explain the pixel "
                                 "or a disc around it")
            explanation = explainer.explain_component(row, column)
        else:
            explanation = explainer.explain_pixel(row, column, self.radius if self.mode == "disc" else 0)
        nodes = self._writeNodes(explanation, orientation, s, shape, voxel)
        axis = orientation.permutation[0]
        self.lastClick = ClickRecord(voxel=voxel, sliceIndex=int(voxel[axis]), axis=axis, pixel=(row, column),
                                     explanation=explanation, ranForward=ranForward,
                                     seconds=time.perf_counter() - started)
        show_in_slice_views(self.scene, self.ctNode, next(iter(nodes.values())), opacity=0.5,
                            color_logic=self.colorLogic)
        return nodes

    def heatmapNodes(self) -> dict[MapKey, slicer.vtkMRMLScalarVolumeNode]:
        """Returns: the click heatmap nodes of this CT still in the scene, by (method, layer)."""
        return {key: node for key, node in self._nodes.items() if self.scene.GetNodeByID(node.GetID()) is node}

    def clear(self) -> None:
        """Remove the click heatmaps from the scene and free the cached slice."""
        for node in self.heatmapNodes().values():
            remove_with_dependents(self.scene, node)
        self._nodes.clear()
        self._written.clear()
        self.release()

    def release(self) -> None:
        """Free the cached slice (its kept graph and activations); the next click runs a forward pass."""
        self._explainer, self._cacheKey = None, None

    # ---- the cached slice --------------------------------------------------------------------
    def _explainerFor(self, s: int, orientation: SliceOrientation,
                      matrix: np.ndarray) -> tuple[SliceExplainer, bool]:
        """The explainer of slice s (model order), kept from the last click when nothing it depends on changed."""
        imageData = self.ctNode.GetImageData()
        key = (self.ctNode.GetID(), imageData.GetMTime(), matrix.tobytes(), orientation, s, id(self.model),
               self.targetClass, self.layers, self.methods, self.device)
        if self._explainer is not None and key == self._cacheKey:
            return self._explainer, False
        self.release()  # the old slice's graph is freed before the new one is built
        voxels = orientation.to_slices(slicer.util.arrayFromVolume(self.ctNode))[s]  # a view of one slice
        raw = torch.from_numpy(np.array(voxels, dtype=np.float32, copy=True))[None]  # (1, H, W) HU
        card = self.model.card
        explainer = SliceExplainer(self.model.model, card.preprocess(raw)[0], self.targetClass, layers=self.layers,
                                   methods=self.methods, device=self.device, pad_to_multiple=card.size_multiple,
                                   normalize=self.normalize)
        explainer.prepare()
        self._explainer, self._cacheKey = explainer, key
        return explainer, True

    # ---- heatmap nodes -----------------------------------------------------------------------
    def _writeNodes(self, explanation: SliceExplanation, orientation: SliceOrientation, s: int,
                    shape: tuple[int, int, int], voxel: tuple[int, int, int]) -> dict[MapKey, slicer.vtkMRMLScalarVolumeNode]:
        """Put the slice's maps in one node per (method, layer); nodes of keys no longer asked for are removed."""
        matrix, transformID = ijk_to_ras_of(self.ctNode), self.ctNode.GetTransformNodeID()
        nodes = self.heatmapNodes()
        for key, node in list(nodes.items()):
            onGrid = slicer.util.arrayFromVolume(node).shape == shape and np.array_equal(ijk_to_ras_of(node), matrix) \
                and node.GetTransformNodeID() == transformID
            if key not in explanation.maps or not onGrid:
                remove_with_dependents(self.scene, nodes.pop(key))
        attributes = self._attributes(explanation, s, voxel, orientation)
        missing = [key for key in explanation.maps if key not in nodes]
        if missing:
            colorNode = heatmap_color_node(self.scene)
            className = self.model.class_names[self.targetClass]
            prefix = self.outputPrefix or self.ctNode.GetName()
            for key in missing:
                method, layer = key
                node = add_heatmap_node(self.scene, self.ctNode, np.zeros(shape, np.float32),
                                        f"{prefix} click {display_name(method)} {layer} ({className})",
                                        {ATTRIBUTE_PREFIX + "Method": method, ATTRIBUTE_PREFIX + "Layer": layer})
                setup_heatmap_display(node, colorNode)
                nodes[key] = node
                self._written[node.GetID()] = (orientation, None)
        for key, node in nodes.items():
            array = slicer.util.arrayFromVolume(node)  # the node's own voxels, (k, j, i)
            previous = self._written.get(node.GetID())
            if previous is None or previous[0] != orientation:
                array[:] = 0
            elif previous[1] is not None and previous[1] != s:
                orientation.to_slices(array)[previous[1]] = 0
            orientation.to_slices(array)[s] = explanation[key]
            slicer.util.arrayFromVolumeModified(node)
            self._written[node.GetID()] = (orientation, s)
            for name, value in attributes.items():
                node.SetAttribute(ATTRIBUTE_PREFIX + name, str(value))
        self._nodes = {key: nodes[key] for key in explanation.maps}
        return dict(self._nodes)

    def _attributes(self, explanation: SliceExplanation, s: int, voxel: tuple[int, int, int],
                    orientation: SliceOrientation) -> dict[str, object]:
        model = self.model
        return {"Role": CLICK_ROLE, "SourceVolumeID": self.ctNode.GetID(), "Model": model.name,
                "ModelPath": str(model.source), "TargetClass": model.class_names[self.targetClass],
                "TargetClassIndex": self.targetClass, "Normalize": explanation.normalize, "ClickMode": self.mode,
                "ClickRadius": self.radius if self.mode == "disc" else 0, "ClickVoxel": ",".join(map(str, voxel)),
                "SliceIndex": int(voxel[orientation.permutation[0]]), "PixelsInM": int(explanation.mask.sum()),
                "Device": str(self._explainer.device) if self._explainer is not None else self.device}


def _slice_position(voxel: tuple[int, int, int], orientation: SliceOrientation,
                    shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """A (k, j, i) voxel's index (s, r, c) in ``orientation.to_slices`` of a (k, j, i) array of ``shape``."""
    position = []
    for axis, flipped in zip(orientation.permutation, orientation.flips):
        index = int(voxel[axis])
        position.append(shape[axis] - 1 - index if flipped else index)
    return tuple(position)
