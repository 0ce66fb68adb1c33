"""Click to explain: one slice's forward pass kept, so each new pixel set M costs one backward.

``SliceExplainer`` holds one preprocessed 2D slice. Its first use runs ONE forward pass that keeps
the autograd graph from the earliest explained layer to the logits (``engine.forward_with_graph``);
every click then runs ONE backward of y_M = sum over M of the class-c logits through that graph
(``engine.gradient_maps`` with ``retain_graph=True``) and gives every requested method at every
requested layer, ReLU'd, upsampled and cropped exactly as ``explain_slices`` does
(``engine.upsample_maps``), then normalised (``cam.normalization``). So the maps equal
``explain_slices(model, image[None], M[None], c)`` for the same M.

Arrays crossing this boundary: image (C, H, W) tensor (model input, already preprocessed); M,
prediction and maps (H, W) numpy, row i, column j. Gradient methods (a formula of A and G) cost
nothing beyond the backward; methods with a few passes of their own (CAM, FullGrad, LIFT-CAM) add
them to each click; perturbation methods (one forward per channel of the layer) are refused.

Example:
    >>> from seghirescam.models.loading import load_default_model
    >>> loaded = load_default_model()
    >>> image = loaded.card.preprocess(torch.zeros(1, 64, 64))[0]          # (C, H, W)
    >>> explainer = SliceExplainer(loaded.model, image, 1, layers=("bottleneck",),
    ...                            pad_to_multiple=loaded.card.size_multiple)
    >>> explainer.explain_pixel(32, 40, radius=2)["seg-hires-grad-cam", "bottleneck"].shape
    (64, 64)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from seghirescam.cam.capture import evaluation_mode, resolve_layers
from seghirescam.cam.engine import (DEFAULT_METHODS, MapKey, autograd_tensor, forward_with_graph, gradient_maps,
                                    upsample_maps)
from seghirescam.cam.layers import default_layers, explainable_layers
from seghirescam.cam.methods import CAMMethod, resolve_methods
from seghirescam.cam.normalization import check_normalize, normalize_maps
from seghirescam.cam.padding import pad_slices, size_multiple
from seghirescam.cam.pixel_sets import pixel_set_from_points
from seghirescam.cam.runtime import model_on_device, resolve_device
from seghirescam.cam.validation import check_target_class
from seghirescam.cam.vocabulary import DEFAULT_NORMALIZATION

__all__ = ["SliceExplainer", "SliceExplanation", "click_methods"]


@dataclass
class SliceExplanation:
    """The maps of one click.

    Attributes:
        maps: ``{(method, layer): (H, W) float32}`` numpy maps, ReLU'd, upsampled and normalised.
        scales: Per map, what it was divided by (1.0 where nothing was): ``map * scale`` is the raw map.
        mask: The pixel set M, (H, W) bool.
        score: y_M, the sum over M of the class-c logits.
        normalize: The normalisation used ("volume" and "slice" agree on one slice: its max).
        seconds: Wall time of this click (including the forward pass when it ran).
        ran_forward: Whether this click ran the slice's forward pass (the first use of the explainer).
    """

    maps: dict[MapKey, np.ndarray]
    scales: dict[MapKey, float]
    mask: np.ndarray
    score: float
    normalize: str
    seconds: float
    ran_forward: bool

    def __getitem__(self, key: MapKey) -> np.ndarray:
        try:
            return self.maps[key]
        except KeyError:
            raise KeyError(f"no map for {key!r}; available: {sorted(self.maps)}") from None

    def __iter__(self) -> Iterator[MapKey]:
        return iter(self.maps)

    def keys(self) -> list[MapKey]:
        """The (method, layer) pairs, in the order they were asked for."""
        return list(self.maps)


def click_methods(methods: Sequence[str | CAMMethod] | str | CAMMethod) -> list[CAMMethod]:
    """The registry's methods that a click can afford, refusing perturbation methods.

    Gradient methods (a formula of A and G) come from the click's one backward; methods with a few
    passes of their own (registry cost "forward": CAM's head lookup, FullGrad, LIFT-CAM) add those
    passes to the click; perturbation methods (cost "perturbation": one forward per channel of the
    layer) are refused.

    Args:
        methods: Method keys and/or ``CAMMethod`` objects (a single one is accepted too).

    Returns:
        The methods, one per key.

    Raises:
        ValueError: For an unknown key or a perturbation method (the message says what to run instead).
    """
    resolved = resolve_methods((methods,) if isinstance(methods, (str, CAMMethod)) else methods)
    perturbation = [method.key for method in resolved if getattr(method, "cost", None) == "perturbation"]
    if perturbation:
        raise ValueError(f"click to explain answers each click with one backward pass; {', '.join(perturbation)} "
                         "needs many forward passes per map (one per channel of the layer): run it on the whole "
                         "pixel set instead (explain_slices / explain_volume, or Apply in Slicer)")
    return resolved


class SliceExplainer:
    """A stateful explainer of one 2D slice: one forward on first use, then one backward per click.

    Not thread-safe: one click at a time (clicks share the kept autograd graph).

    Args:
        model: Maps (B, C, H, W) to logits (B, classes, H, W). Never moved nor left in another mode:
            the forward runs in eval mode; a model on another device is copied there.
        image: The preprocessed model input of one slice, (C, H, W) tensor (or array), finite.
        target_class: Class c; y_M = sum over M of its logits.
        layers: Names from ``model.named_modules()``; None: ``default_layers(explainable_layers(model))``.
        methods: Method keys or ``CAMMethod`` objects, perturbation methods excepted (``click_methods``).
        device: None: the device the model's parameters live on; else "auto", "cpu", "cuda", ...
        pad_to_multiple: Pad H, W to this multiple (default: ``model.size_multiple`` or 1).
        normalize: A key of ``cam.vocabulary.NORMALIZATIONS``; on one slice "volume" and "slice" both
            divide each map by its max (where > 0), "none" keeps raw values (equal to ``explain_slices``).
        autocast: None, "bf16" or "fp16" (GPU only).

    Raises:
        ValueError: Bad image shape, NaN/Inf, unknown layer or method, a perturbation method, c out of range.
        TypeError: A non-int class, a bare string as layers.
    """

    def __init__(self, model: nn.Module, image: torch.Tensor | np.ndarray, target_class: int, *,
                 layers: Sequence[str] | None = None, methods: Sequence[str | CAMMethod] = DEFAULT_METHODS,
                 device: str | torch.device | None = None, pad_to_multiple: int | None = None,
                 normalize: str = DEFAULT_NORMALIZATION, autocast: str | None = None) -> None:
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ValueError(f"image must be one preprocessed slice (C, H, W), got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            image = image.float()
        if not torch.isfinite(image).all():
            raise ValueError("image holds NaN or Inf values")
        check_target_class(target_class, getattr(model, "num_classes", None))
        self.methods = click_methods(methods)
        self.layers = tuple(default_layers(explainable_layers(model)) if layers is None else layers)
        resolve_layers(model, self.layers)  # a bad name fails now, not at the first click
        self.normalize = check_normalize(normalize)
        if device is None:
            parameter = next(iter(model.parameters()), None)
            self.device = parameter.device if parameter is not None else torch.device("cpu")
        else:
            self.device = resolve_device(device)
        self.model = model_on_device(model, self.device)
        self.image = image.to(self.device)
        self.target_class = int(target_class)
        self.multiple = size_multiple(self.model, pad_to_multiple)
        self.autocast = autocast
        self.height, self.width = int(image.shape[1]), int(image.shape[2])
        self.forward_passes = 0
        self._logits: torch.Tensor | None = None
        self._activations: dict[str, torch.Tensor] | None = None
        self._prediction: np.ndarray | None = None
        self._padded: torch.Tensor | None = None  # the padded input (1, C, H', W'), for methods with a model pass
        self._padded_size: tuple[int, int] = (self.height, self.width)

    # ---- the kept forward pass ---------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the slice's forward pass has run (clicks now cost one backward each)."""
        return self._logits is not None

    def prepare(self) -> SliceExplainer:
        """Run the slice's forward pass now (otherwise the first click or ``prediction`` runs it).

        Returns:
            The explainer itself.
        """
        if self._logits is None:
            with torch.inference_mode(False):  # inside torch.inference_mode() the kept graph is built outside it
                padded, _ = pad_slices(autograd_tensor(self.image)[None], self.multiple)
                with evaluation_mode(self.model):
                    logits, activations = forward_with_graph(self.model, padded, self.layers, self.autocast)
            check_target_class(self.target_class, logits.shape[1])
            self._logits, self._activations, self._padded = logits, activations, padded
            self._padded_size = (int(padded.shape[-2]), int(padded.shape[-1]))
            self.forward_passes += 1
        return self

    def release(self) -> None:
        """Free the kept graph and activations (the next click runs the forward pass again)."""
        self._logits, self._activations, self._padded, self._prediction = None, None, None, None

    @property
    def prediction(self) -> np.ndarray:
        """The model's label of every pixel (argmax of the logits), (H, W) int64 numpy (a read-only view)."""
        self.prepare()
        if self._prediction is None:
            self._prediction = self._logits[0, :, :self.height, :self.width].detach().argmax(0).cpu().numpy()
            self._prediction.flags.writeable = False
        return self._prediction

    # ---- clicks ------------------------------------------------------------------------------
    def explain_mask(self, m: np.ndarray | torch.Tensor) -> SliceExplanation:
        """The maps for y_M = sum over M of the class-c logits: one backward (plus the forward on first use).

        Args:
            m: The pixel set M, (H, W) bool, not empty.

        Returns:
            The maps of every (method, layer), (H, W) each.

        Raises:
            TypeError: If m is not boolean.
            ValueError: If m has another shape than the slice or is empty.
        """
        started = time.perf_counter()
        mask = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        if mask.dtype != np.bool_:
            raise TypeError(f"M must be a bool (H, W) array, got dtype {mask.dtype}")
        if mask.shape != (self.height, self.width):
            raise ValueError(f"M must have the slice's shape (H, W) = {(self.height, self.width)}, got {mask.shape}")
        if not mask.any():
            raise ValueError("M is empty: give at least one pixel to explain")
        ran_forward = not self.ready
        self.prepare()
        with torch.inference_mode(False):  # the backward through the kept graph runs outside inference mode
            weights = torch.zeros(1, *self._padded_size, dtype=torch.bool, device=self.device)
            weights[0, :self.height, :self.width] = torch.from_numpy(mask).to(self.device)
            raw, score = gradient_maps(self._logits, self._activations, weights, self.target_class, self.methods,
                                       model=self.model, x=self._padded, retain_graph=True)
        upsampled = upsample_maps(raw, self._padded_size, self.height, self.width)
        maps = {key: value[0].cpu().numpy() for key, value in upsampled.items()}
        scales = {key: float(normalize_maps(value[None], self.normalize)[0]) for key, value in maps.items()}
        return SliceExplanation(maps=maps, scales=scales, mask=mask.copy(), score=score, normalize=self.normalize,
                                seconds=time.perf_counter() - started, ran_forward=ran_forward)

    def disc(self, i: int, j: int, radius: int = 0) -> np.ndarray:
        """M for a click: the pixel (i, j) (row, column), grown to a disc of ``radius`` pixels.

        Returns:
            (H, W) bool.

        Raises:
            ValueError: If (i, j) lies outside the slice or the radius is negative.
        """
        self._check_pixel(i, j)
        if isinstance(radius, bool) or int(radius) != radius or radius < 0:
            raise ValueError(f"radius must be an int >= 0 (pixels), got {radius!r}")
        return pixel_set_from_points((1, self.height, self.width), [(0, int(i), int(j))], radius=int(radius))[0]

    def component(self, i: int, j: int) -> np.ndarray:
        """M for a click: the predicted connected component of class c under (i, j) (4-connected in-plane).

        Returns:
            (H, W) bool.

        Raises:
            ValueError: If (i, j) lies outside the slice, or the model does not predict class c there.
        """
        self._check_pixel(i, j)
        predicted = self.prediction
        if predicted[i, j] != self.target_class:
            raise ValueError(f"the click (row {i}, column {j}) lies outside the model's prediction of class "
                             f"{self.target_class} (it predicts class {int(predicted[i, j])} there): click inside the "
                             "predicted region, or explain the pixel or a disc around it")
        components, _count = ndimage.label(predicted == self.target_class)
        return components == components[i, j]

    def explain_pixel(self, i: int, j: int, radius: int = 0) -> SliceExplanation:
        """The maps for M = the pixel (row i, column j), or the disc of ``radius`` pixels around it.

        Raises:
            ValueError: If (i, j) lies outside the slice or the radius is negative.
        """
        return self.explain_mask(self.disc(i, j, radius))

    def explain_component(self, i: int, j: int) -> SliceExplanation:
        """The maps for M = the predicted connected component of class c under the click (row i, column j).

        Raises:
            ValueError: If (i, j) lies outside the slice, or the model does not predict class c there.
        """
        return self.explain_mask(self.component(i, j))

    def _check_pixel(self, i: int, j: int) -> None:
        for name, value, size in (("row i", i, self.height), ("column j", j, self.width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < size:
                raise ValueError(f"the click lies outside the slice: {name} = {value!r}, valid 0..{size - 1}")
