"""A MONAI bundle as an explainable model (optional extra ``seghirescam[monai]``).

A bundle folder holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and
``models/model.pt``. The network is built from the config's ``network_def`` by MONAI's own
``ConfigParser`` and gets its weights from ``torch.load(weights_only=True)`` (a state dict; nothing
is unpickled). The CT is seen as the bundle sees it: its ``preprocessing`` transforms run on the
CT handed over in memory (``LoadImaged`` is replaced, see below), predicted and explained with the
``inferer``'s sliding window (``monai_window``: the tiles and importance map of MONAI's inferer),
and the maps are brought back to the CT's grid by MONAI's ``Invertd`` with the bundle's own
transforms (the maps linearly, a label map by nearest neighbour).

Trust: a config may hold Python expressions (``$...``) and name any callable as ``_target_``.
By default only MONAI's networks, transforms and inferers may be named in the sections used here,
and no expression may be evaluated; ``trust_code=True`` lifts this for a bundle the user trusts.

Axis orders at the boundaries:
- CT: ``Volume.array`` (k, j, i) with its LPS geometry.
- Bundle input: what ``LoadImaged`` gives for that CT: a MetaTensor (i, j, k) (float32) whose
  affine is the CT's IJK-to-RAS matrix, taken from the ``Volume`` in float64 (no file round trip).
- Network frame: (C, a0, a1, a2) after the transforms (e.g. ``Orientationd(RAS)``: a0 = R, a1 = A,
  a2 = S); a 2D network (``SliceInferer``) sees (C, ., .) slices along the inferer's spatial_dim.
- Results: maps and labels (k, j, i) on the CT's grid.

Supported preprocessing transforms (anything else is refused, naming the config file):
``LoadImaged`` (first; replaced), ``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``,
``CropForegroundd``, ``SpatialPadd``, ``DivisiblePadd`` (spatial, inverted by ``Invertd``),
``ScaleIntensityRanged``, ``ScaleIntensityd``, ``NormalizeIntensityd``, ``ThresholdIntensityd``
(intensity), ``EnsureTyped``, ``CastToTyped``, ``ToTensord`` (types).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seghirescam.cam.methods import CAMMethod, resolve_methods
from seghirescam.cam.result import ExplanationResult
from seghirescam.cam.runtime import check_autocast, model_on_device, resolve_device
from seghirescam.cam.tiles import explain_tiles
from seghirescam.imaging.volumes import Volume
from seghirescam.models.weights import read_state_dict, state_dict_mismatch
from seghirescam.models.tiled_result import checked_layers, result_on_ct_grid
from seghirescam.models.class_names import class_for_segment_name
from seghirescam.models.monai_window import Window, pad_to_window, stitched_logits, window_from_inferer, window_tiles
from seghirescam.models.network_layers import NetworkLayers, network_layers, spatial_dims_of

__all__ = ["BundleError", "MonaiBundleModel", "is_monai_bundle", "load_monai_bundle", "SUPPORTED_TRANSFORMS"]

LOADERS = ("LoadImaged", "LoadImage")
SUPPORTED_TRANSFORMS = frozenset({
    "EnsureChannelFirstd", "Orientationd", "Spacingd", "CropForegroundd", "SpatialPadd", "DivisiblePadd",
    "ScaleIntensityRanged", "ScaleIntensityd", "NormalizeIntensityd", "ThresholdIntensityd",
    "EnsureTyped", "CastToTyped", "ToTensord"})
TRUSTED_MODULES = ("monai.networks.", "monai.transforms.", "monai.inferers.")
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


class BundleError(ValueError):
    """A MONAI bundle that cannot be loaded or used; the message names the file and the cause."""


def is_monai_bundle(path: str | Path) -> bool:
    """True for a folder laid out as a MONAI bundle (``configs/`` with metadata.json or an inference config)."""
    configs = Path(path) / "configs"
    return configs.is_dir() and any((configs / name).is_file() for name in ("metadata.json", *CONFIG_NAMES))


def _config_path(folder: Path) -> Path:
    for name in CONFIG_NAMES:
        if (folder / "configs" / name).is_file():
            return folder / "configs" / name
    raise BundleError(f"{folder / 'configs' / 'inference.json'} not found: a MONAI bundle needs an inference "
                      "config (configs/inference.json or .yaml)")


def _read_config(path: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except Exception as error:  # noqa: BLE001 - any read failure is a bad config file
        raise BundleError(f"{path} cannot be read: {error}") from error
    parser["bundle_root"] = str(path.parent.parent)
    for key in ("network_def", "preprocessing", "inferer"):
        if key not in parser.config:
            raise BundleError(f"{path} has no '{key}' section; an inference config needs network_def, "
                              "preprocessing and inferer")
    return parser


_REFERENCE = re.compile(r"@([A-Za-z_]\w*(?:(?:::|#)\w+)*)")


def _untrusted(parser: Any, ids: Sequence[str]) -> list[str]:
    """Expressions, macros and non-MONAI ``_target_``s reachable from the given config ids."""
    from monai.bundle.config_item import ComponentLocator

    locator, problems, seen, todo = ComponentLocator(), [], set(), list(ids)

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and not target.startswith(("$", "@")):
                module = target if "." in target else locator.get_component_module_name(target)
                if not isinstance(module, str) or not module.startswith(TRUSTED_MODULES):
                    problems.append(f"{where}: _target_ {target!r} is not a MONAI network, transform or inferer")
            for key, value in node.items():
                walk(value, f"{where}::{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}::{index}")
        elif isinstance(node, str):
            if node.startswith(("$", "%")):
                problems.append(f"{where}: expression {node[:60]!r}")
            todo.extend(ref.replace("#", "::") for ref in _REFERENCE.findall(node))

    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            try:
                walk(parser[key], key)
            except KeyError:
                problems.append(f"reference @{key} is not in the config")
    return problems


def _parsed(parser: Any, key: str, path: Path) -> Any:
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except Exception as error:  # noqa: BLE001 - MONAI raises many kinds for a bad component
        raise BundleError(f"{path}: '{key}' cannot be built: {error}") from error


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of ``models/model.pt``: a state dict (or {"model": state dict}), read weights-only."""
    if not path.is_file():
        raise BundleError(f"{path} not found: a MONAI bundle keeps its weights in models/model.pt (a state dict)")
    return read_state_dict(path, BundleError, unwrap=("model",))


def _load_weights(network: torch.nn.Module, path: Path) -> None:
    state = _state_dict(path)
    mismatch = state_dict_mismatch(network, state)
    if mismatch:
        raise BundleError(f"{path} does not fit the config's network_def ({type(network).__name__}): {mismatch}")
    network.load_state_dict(state)
    network.eval()


def _metadata(folder: Path) -> dict:
    path = folder / "configs" / "metadata.json"
    if not path.is_file():
        raise BundleError(f"{path} not found: a MONAI bundle describes its output channels in configs/metadata.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from error


def _class_names(metadata: dict, channels: int, path: Path) -> tuple[str, ...]:
    """Names from ``network_data_format.outputs.pred.channel_def`` ({"0": "background", ...})."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
    if not isinstance(channel_def, dict):
        warnings.warn(f"{path} has no network_data_format.outputs.pred.channel_def; the classes are named "
                      "channel_0, channel_1, ...", UserWarning, stacklevel=3)
        return tuple(f"channel_{c}" for c in range(channels))
    names = {int(k): str(v) for k, v in channel_def.items()}
    if sorted(names) != list(range(channels)):
        raise BundleError(f"{path}: channel_def names channels {sorted(names)} but the network has {channels} outputs")
    return tuple(names[c] for c in range(channels))


def _preprocessing(parsed: Any, path: Path) -> tuple[Any, str]:
    """The bundle's transforms without the loader, and the image key."""
    from monai.transforms import Compose

    if not isinstance(parsed, Compose):
        raise BundleError(f"{path}: 'preprocessing' must be a Compose, got {type(parsed).__name__}")
    transforms = list(parsed.transforms)
    if not transforms or type(transforms[0]).__name__ not in LOADERS:
        raise BundleError(f"{path}: 'preprocessing' must start with LoadImaged (the CT is handed over in its place)")
    keys = list(getattr(transforms[0], "keys", ("image",)))
    unsupported = [type(t).__name__ for t in transforms[1:] if type(t).__name__ not in SUPPORTED_TRANSFORMS]
    if unsupported:
        raise BundleError(f"{path}: preprocessing transform(s) {', '.join(unsupported)} are not supported; supported: "
                          f"{', '.join(sorted(SUPPORTED_TRANSFORMS))}")
    return Compose(transforms[1:], map_items=parsed.map_items, unpack_items=parsed.unpack_items), str(keys[0])


class MonaiBundleModel:
    """A MONAI bundle, ready to predict and explain CTs.

    Args:
        folder: The bundle folder.
        network: The network with its weights, eval mode, CPU.
        preprocessing: The bundle's transforms after ``LoadImaged``.
        image_key: The key the transforms read ("image").
        window: The inferer's sliding window.
        class_names: Names of the output channels.
        found: The network's layers.
        metadata: metadata.json's content.
    """

    family = "MONAI bundle"

    def __init__(self, folder: Path, network: torch.nn.Module, preprocessing: Any, image_key: str, window: Window,
                 class_names: tuple[str, ...], found: NetworkLayers, metadata: dict) -> None:
        self.source = Path(folder)
        self.network = network
        self.preprocessing = preprocessing
        self.image_key = image_key
        self.window = window
        self.class_names = class_names
        self.spatial_dims = spatial_dims_of(network)
        self.layers = found.layers
        self.default_layer = found.default_layer
        self.head_input_layers = found.head_input_layers
        self.metadata = metadata

    @property
    def name(self) -> str:
        """The bundle's name and version from metadata.json (else the folder's name)."""
        title = self.metadata.get("name") or self.source.name
        return f"{title} {self.metadata.get('version', '')}".strip()

    def class_for_segment(self, segment_name: str) -> int:
        """The class a segment's name asks for, matched against the channel names."""
        return class_for_segment_name(self.class_names, segment_name)

    def preprocess_ct(self, ct: Volume) -> Any:
        """The CT in the network frame: the bundle's transforms on the CT as ``LoadImaged`` would give it.

        Args:
            ct: The CT (HU), (k, j, i) with its geometry.

        Returns:
            A MetaTensor (C, a0, a1, a2) carrying its affine and the applied transforms.

        Raises:
            BundleError: If a transform fails on the CT.
        """
        from monai.data import MetaTensor

        affine = torch.as_tensor(ct.geometry.ijk_to_ras(), dtype=torch.float64)
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(np.asarray(ct.array, np.float32).transpose(2, 1, 0))),
                           affine=affine, meta={"original_channel_dim": float("nan"), "space": "RAS",
                                                "original_affine": affine.numpy().copy(),
                                                "spatial_shape": np.array(ct.array.shape[::-1]),
                                                "filename_or_obj": "in-memory CT"})
        try:
            return self.preprocessing({self.image_key: image})[self.image_key]
        except Exception as error:  # noqa: BLE001 - MONAI wraps transform errors in RuntimeError
            raise BundleError(f"{self.source}: the bundle's preprocessing failed on this CT: {error}") from error

    def mask_to_network_frame(self, prepared: Any, mask: np.ndarray, ct: Volume) -> torch.Tensor:
        """M on the network frame: nearest-neighbour resampling through the two affines.

        Args:
            prepared: ``preprocess_ct``'s output (its affine and shape define the frame).
            mask: M, bool (k, j, i) on the CT's grid.
            ct: The CT (for its affine).

        Returns:
            bool (a0, a1, a2) tensor.
        """
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        source = MetaTensor(torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 1, 0), dtype=np.float32))[None],
                            affine=torch.as_tensor(ct.geometry.ijk_to_ras(), dtype=torch.float64))
        resample = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float64)
        moved = resample(source, dst_affine=prepared.affine, spatial_size=tuple(prepared.shape[1:]))
        return torch.as_tensor(moved.as_tensor()[0] > 0.5)

    def to_ct_grid(self, prepared: Any, volumes: torch.Tensor, ct: Volume, *, nearest: bool) -> np.ndarray:
        """Network-frame volumes (N, a0, a1, a2) back to the CT's grid (N, k, j, i) with ``Invertd``.

        Args:
            prepared: ``preprocess_ct``'s output (the transforms to invert).
            volumes: (N, a0, a1, a2) tensor.
            ct: The CT (for the expected shape).
            nearest: Nearest-neighbour inversion (labels) instead of the transforms' own modes.

        Returns:
            float32 (N, k, j, i).
        """
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        invert = Invertd(keys="result", transform=self.preprocessing, orig_keys=self.image_key, nearest_interp=nearest)
        result = MetaTensor(volumes.detach().cpu().float(), affine=prepared.affine)  # Invertd reads a MetaTensor
        back = invert({"result": result, self.image_key: prepared})["result"]
        array = np.asarray(back.detach().cpu().numpy() if hasattr(back, "detach") else back, dtype=np.float32)
        if array.shape[1:] != ct.array.shape[::-1]:
            raise BundleError(f"{self.source}: inverting the transforms gave {array.shape[1:]}, not the CT's "
                              f"(i, j, k) shape {ct.array.shape[::-1]}")
        return np.ascontiguousarray(array.transpose(0, 3, 2, 1))

    def network_logits(self, prepared: Any, *, device: str = "auto",
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """The stitched logits (K, a0, a1, a2) on the network frame, as MONAI's inferer stitches them (CPU)."""
        torch_device = resolve_device(device)
        data, revert = pad_to_window(prepared.as_tensor().float(), self.window)
        tiles, importance = window_tiles(self.window, tuple(data.shape[1:]))
        network = model_on_device(self.network, torch_device)
        logits = stitched_logits(network, data.to(torch_device), tiles, importance, progress)
        return logits[(slice(None), *revert)].cpu()

    def predict_ct(self, ct: Volume, *, device: str = "auto",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The argmax of the stitched logits, brought back to the CT's grid by nearest neighbour: (k, j, i)."""
        prepared = self.preprocess_ct(ct)
        labels = self.network_logits(prepared, device=device, progress=progress).argmax(0)
        back = self.to_ct_grid(prepared, labels[None].float(), ct, nearest=True)[0]
        return np.rint(back).astype(np.uint8 if len(self.class_names) < 256 else np.uint16)

    def explain_ct(self, ct: Volume, mask: np.ndarray, target_class: int, *, layers: Sequence[str] | None = None,
                   methods: Sequence[str | CAMMethod] = ("seg-hires-grad-cam", "seg-grad-cam"),
                   device: str = "auto", batch_size: int | str = "auto", normalize: str = "volume",
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   map_dtype: np.dtype | type = np.float32, autocast: str | None = None) -> ExplanationResult:
        """CAMs of y_M, the sum over M of the stitched class-c logits, on the CT's grid.

        Args:
            ct: The CT (HU) with its geometry.
            mask: M, bool (k, j, i) on the CT's grid.
            target_class: Output channel c.
            layers: Layer names (default: ``default_layer``).
            methods: Registry names or ``CAMMethod`` objects.
            device: "auto", "cpu", "cuda", ...
            batch_size: Accepted for interface parity; tiles are explained one at a time.
            normalize: "volume", "slice" (per axial slice) or "none".
            progress: Called as progress(done, total) per tile.
            cancel: Returning True raises ``ExplanationCancelled`` before the next tile.
            map_dtype: dtype of the returned maps.
            autocast: None (float32) or "bf16", an approximate preview (``cam.engine.layer_maps``).

        Returns:
            The result; ``axis`` is the CT's axial axis; ``extra`` holds y_M, the exactness sums
            (``raw_sums``), the tile counts and ``m_voxels_network`` (|M| in the network frame).

        Raises:
            ValueError: Bad mask, class, layer or method; M empty in the network frame.
        """
        started = time.perf_counter()
        layers = self._checked(ct, mask, target_class, layers, normalize)
        method_list = resolve_methods(methods)
        torch_device = resolve_device(device)
        autocast = check_autocast(torch_device, autocast)  # refused before any work
        prepared = self.preprocess_ct(ct)
        data, revert = pad_to_window(prepared.as_tensor().float(), self.window)
        mask_net = torch.zeros(data.shape[1:], dtype=torch.bool)
        mask_net[revert] = self.mask_to_network_frame(prepared, mask, ct)
        tiles, importance = window_tiles(self.window, tuple(data.shape[1:]))
        network = model_on_device(self.network, torch_device)
        explained = explain_tiles(network, data.to(torch_device), mask_net.to(torch_device), tiles, importance,
                                  int(target_class), layers, method_list, progress=progress, cancel=cancel,
                                  autocast=autocast)
        keys = list(explained.maps)
        stacked = torch.stack([explained.maps.pop(key)[revert].cpu() for key in keys])
        back = self.to_ct_grid(prepared, stacked, ct, nearest=False)
        return result_on_ct_grid(back, keys, ct, mask, target_class, explained, normalize=normalize,
                                 map_dtype=map_dtype, device=str(torch_device), started=started,
                                 extra={"model_family": self.family, "bundle": self.name,
                                        "m_voxels_network": int(mask_net.sum())})

    def _checked(self, ct: Volume, mask: np.ndarray, target_class: int, layers: Sequence[str] | None,
                 normalize: str) -> tuple[str, ...]:
        """Validate the explanation's inputs; the layers to explain (``models.tiled_result.checked_layers``)."""
        return checked_layers(ct, mask, target_class, self.class_names, layers, self.layers, self.default_layer,
                              normalize)


def _example_input(network: torch.nn.Module, window: Window, metadata: dict) -> torch.Tensor:
    """A zero input of the window's size (or metadata's spatial_shape where the window takes the whole image)."""
    first = next(m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    shape = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape", [])
    size = [r if r > 0 else (int(shape[i]) if i < len(shape) and int(shape[i]) > 0 else 64)
            for i, r in enumerate(window.roi_size)]
    return torch.zeros(1, first.in_channels, *size)


def load_monai_bundle(path: str | Path, *, trust_code: bool = False, **_ignored: object) -> MonaiBundleModel:
    """Load a MONAI bundle folder as an explainable model.

    Args:
        path: The bundle folder (configs/, models/).
        trust_code: Allow the config's Python expressions and non-MONAI ``_target_``s in the
            sections used (network_def, preprocessing, inferer and what they reference).

    Returns:
        The model, network in eval mode on the CPU.

    Raises:
        BundleError: One clear message naming the file: missing config, metadata or weights,
            weights that need unpickling or do not fit, untrusted code, an unsupported transform or
            inferer, or MONAI missing (the message names the extra to install).
    """
    try:
        import monai  # noqa: F401
    except ImportError as error:
        raise BundleError("explaining a MONAI bundle needs MONAI: pip install 'seghirescam[monai]'") from error
    folder = Path(path)
    config = _config_path(folder)
    parser = _read_config(config)
    problems = [] if trust_code else _untrusted(parser, ("network_def", "preprocessing", "inferer"))
    if problems:
        raise BundleError(f"{config} runs code beyond MONAI's components ({'; '.join(problems[:3])}); load it with "
                          "trust_code=True only if you trust the bundle's author")
    metadata = _metadata(folder)
    network = _parsed(parser, "network_def", config)
    if not isinstance(network, torch.nn.Module):
        raise BundleError(f"{config}: network_def builds a {type(network).__name__}, not a torch module")
    _load_weights(network, folder / "models" / "model.pt")
    try:
        window = window_from_inferer(_parsed(parser, "inferer", config), spatial_dims_of(network))
    except ValueError as error:
        raise BundleError(f"{config}: {error}") from error
    preprocessing, image_key = _preprocessing(_parsed(parser, "preprocessing", config), config)
    found = network_layers(network, _example_input(network, window, metadata))
    classes = _class_names(metadata, found.out_channels, folder / "configs" / "metadata.json")
    return MonaiBundleModel(folder, network, preprocessing, image_key, window, classes, found, metadata)
