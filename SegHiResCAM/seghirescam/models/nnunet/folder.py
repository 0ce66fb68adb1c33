"""nnU-Net v2 results folders: the network built from the plans, weights loaded without unpickling code.

A results folder is ``DatasetXXX_Name/TRAINER__PLANS__CONFIG/`` with ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth`` (or ``checkpoint_best.pth``). The network
comes from the plans' ``architecture`` block through nnunetv2's ``get_network_from_plans``, as
nnU-Net's default trainer builds it (no deep supervision); nnU-Net's trainer-class lookup is
never used (it imports every trainer module, some of which import timm and torchvision).
Several folds form an ensemble whose logits are averaged, as ``nnUNetPredictor`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ["NnUNetLoadError", "NnUNetNetwork", "load_nnunet_folder", "load_checkpoint_safely", "is_nnunet_folder"]


def _require_nnunetv2() -> None:
    """Raise a clear error when the optional nnunetv2 package is missing."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError as error:
        raise NnUNetLoadError("explaining an nnU-Net model needs the nnunetv2 package: "
                              "pip install 'seghirescam[nnunet]' (or pip install nnunetv2)") from error


def is_nnunet_folder(path: Union[str, Path]) -> bool:
    """True for a folder that holds an nnU-Net results folder's ``plans.json``."""
    return Path(path).is_dir() and (Path(path) / "plans.json").is_file()


class NnUNetLoadError(ValueError):
    """A results folder or checkpoint that cannot be loaded (one-line message)."""



def _checkpoint_safe_globals() -> List[Any]:
    """The only non-default globals allowed when unpickling nnU-Net checkpoints.

    nnU-Net's ``nnUNetTrainer.save_checkpoint`` stores numpy scalars (``_best_ema`` and
    the ``logging`` lists hold ``np.float32``/``np.float64``). Unpickling those needs
    ``numpy._core.multiarray.scalar`` (``numpy.core.multiarray.scalar`` in files written
    with numpy 1.x), ``numpy.dtype`` and the dtype classes of numeric scalar types.
    ``torch.device`` (in ``init_args``) is allowed by torch by default.

    Returns:
        A list for ``torch.serialization.safe_globals``.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore
    allowed: List[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"),
                          (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType",
                     "Int32DType", "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType",
                     "UInt64DType", "BoolDType"):
            if hasattr(dtypes_mod, name):
                allowed.append(getattr(dtypes_mod, name))
    return allowed


def load_checkpoint_safely(path: Path) -> dict:
    """Load an nnU-Net checkpoint without executing arbitrary pickled code.

    Tries ``torch.load(weights_only=True)``; if that refuses a global, retries with only
    the numpy scalar globals of :func:`_checkpoint_safe_globals` allowed.

    Args:
        path: the ``.pth`` file.

    Returns:
        The checkpoint dict.

    Raises:
        NnUNetLoadError: if the file needs any other global (arbitrary objects), or is
            not a dict with ``network_weights``.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            with torch.serialization.safe_globals(_checkpoint_safe_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
            detail = detail[0] if detail else type(e).__name__
            if "global" not in detail.lower():  # not a forbidden object: the bytes are no readable checkpoint
                raise NnUNetLoadError(f"checkpoint {path} cannot be read (corrupt, truncated or not a PyTorch "
                                      f"file): {detail}") from None
            raise NnUNetLoadError(
                f"refusing to load checkpoint {path}: it needs unpickling objects beyond tensors "
                f"and numpy scalars ({detail})") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise NnUNetLoadError(f"checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights')")
    return ckpt


def build_network(plans_manager: Any, configuration_manager: Any, num_input_channels: int,
                  num_output_channels: int) -> nn.Module:
    """Build the network from the plans' architecture block, like nnU-Net's default trainer.

    Calls ``nnunetv2.utilities.get_network_from_plans.get_network_from_plans`` (which
    uses ``pydoc.locate`` on ``network_class_name`` and ``_kw_requires_import``), exactly
    as ``nnUNetTrainer.build_network_architecture`` does, with deep_supervision=False.
    No trainer-class lookup is done, so custom trainers with custom architectures are
    not supported.

    Args:
        plans_manager: nnunetv2 PlansManager.
        configuration_manager: nnunetv2 ConfigurationManager.
        num_input_channels: input channels.
        num_output_channels: segmentation heads.

    Returns:
        The network (eval mode, CPU).
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    net = get_network_from_plans(configuration_manager.network_arch_class_name,
                                 configuration_manager.network_arch_init_kwargs,
                                 configuration_manager.network_arch_init_kwargs_req_import,
                                 num_input_channels, num_output_channels,
                                 allow_init=True, deep_supervision=False)
    return net.eval()


def _adapt_state_dict(weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                      source: Path) -> Dict[str, torch.Tensor]:
    """Strip ``module.`` / ``_orig_mod.`` prefixes and check keys and shapes.

    nnU-Net saves ``_orig_mod``'s state dict for compiled models and strips ``module.``
    (DDP) when loading (``nnUNetTrainer.load_checkpoint``); we accept both prefixes.

    Args:
        weights: the checkpoint's ``network_weights``.
        expected: the freshly built network's state dict.
        source: checkpoint path (for messages).

    Returns:
        A state dict with the network's key names.

    Raises:
        NnUNetLoadError: on missing/unexpected keys or shape mismatch.
    """
    out: Dict[str, torch.Tensor] = {}
    for k, v in weights.items():
        key = k
        for prefix in ("module.", "_orig_mod."):
            if key not in expected and key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = v
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        raise NnUNetLoadError(
            f"state dict of {source} does not match the network built from plans.json: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in out.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise NnUNetLoadError(
                f"state dict of {source} does not match the network built from plans.json: "
                f"{k} has shape {tuple(v.shape)}, plans give {tuple(expected[k].shape)}")
    return out


def _explainable_layers(network: nn.Module) -> List[str]:
    """Names of the encoder and decoder stages in nnU-Net's naming.

    Args:
        network: a dynamic_network_architectures U-Net.

    Returns:
        ``['encoder.stages.0', ..., 'encoder.stages.N', 'decoder.stages.0', ...]``
        (empty if the network has no such attributes).
    """
    names: List[str] = []
    for part in ("encoder", "decoder"):
        stages = getattr(getattr(network, part, None), "stages", None)
        if stages is not None:
            names += [f"{part}.stages.{i}" for i in range(len(stages))]
    return names


@dataclass
class NnUNetNetwork:
    """An nnU-Net v2 model ready for prediction and explanation.

    Attributes:
        network: the nn.Module (eval mode, CPU), holding the first fold's weights.
        folder: results folder.
        configuration_name: e.g. '2d', '3d_fullres'.
        spatial_dims: 2 for '2d' configurations, 3 otherwise.
        input_channels: number of input channels.
        class_names: output channel index -> label name (from dataset.json).
        patch_size: the configuration's patch size (network-frame axes).
        layer_names: explainable layer names (encoder/decoder stages).
        default_layer: deepest encoder stage.
        state_dicts: one state dict per fold (ensemble members).
        folds: the loaded folds.
        trainer_name: from the checkpoint.
        inference_allowed_mirroring_axes: from the checkpoint (may be None).
        plans_manager, configuration_manager, label_manager, dataset_json: nnunetv2 objects.
    """
    network: nn.Module
    folder: Path
    configuration_name: str
    spatial_dims: int
    input_channels: int
    class_names: List[str]
    patch_size: Tuple[int, ...]
    layer_names: List[str]
    default_layer: str
    state_dicts: List[Dict[str, torch.Tensor]]
    folds: List[Union[int, str]]
    trainer_name: str
    inference_allowed_mirroring_axes: Optional[Tuple[int, ...]]
    plans_manager: Any
    configuration_manager: Any
    label_manager: Any
    dataset_json: dict

    def class_index(self, target: Union[int, str]) -> int:
        """Output channel of a class given by index or name.

        Args:
            target: class index or name from dataset.json.

        Returns:
            Output channel index.

        Raises:
            ValueError: unknown class.
        """
        if isinstance(target, str):
            if target not in self.class_names:
                raise ValueError(f"unknown class {target!r}; classes: {self.class_names}")
            return self.class_names.index(target)
        if not 0 <= int(target) < len(self.class_names):
            raise ValueError(f"class index {target} out of range 0..{len(self.class_names) - 1}")
        return int(target)


def _fold_dir_name(fold: Union[int, str]) -> str:
    """'fold_all' / 'fold_3' for a fold given as 'all' / 3 / '3'."""
    return "fold_all" if str(fold) == "all" else f"fold_{int(fold)}"


def _class_names(label_manager: Any, dataset_json: dict) -> List[str]:
    """Output channel -> label name, refusing region-based training.

    Raises:
        NnUNetLoadError: region-based training (sigmoid outputs over label regions).
    """
    if label_manager.has_regions:
        raise NnUNetLoadError("region-based nnU-Net models (labels given as regions in dataset.json) "
                              "are not supported: their outputs are sigmoid regions, not classes")
    by_value = {int(v): k for k, v in dataset_json["labels"].items()}
    return [by_value[v] for v in label_manager.all_labels
            if v != label_manager.ignore_label][:label_manager.num_segmentation_heads]


def _read_json_object(path: Path, required: Sequence[str]) -> dict:
    """A JSON object file with the keys nnU-Net needs from it.

    Raises:
        NnUNetLoadError: Unreadable or invalid JSON, not an object, or a required key missing (names the file).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NnUNetLoadError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise NnUNetLoadError(f"{path} is not an nnU-Net {path.name}: it needs a JSON object with "
                              f"{', '.join(repr(k) for k in required)}")
    return data


def load_nnunet_folder(folder: Union[str, Path], folds: Sequence[Union[int, str]] = ("all",),
                       checkpoint: str = "checkpoint_final.pth") -> NnUNetNetwork:
    """Load an nnU-Net v2 results folder ``DatasetXXX_Name/TRAINER__PLANS__CONFIG/``.

    Mirrors ``nnUNetPredictor.initialize_from_trained_model_folder`` minus the trainer
    class lookup: the configuration and trainer name come from the first fold's
    checkpoint, the network from the plans' architecture block. Several folds form an
    ensemble (logits averaged, as nnUNetPredictor does).

    Args:
        folder: results folder with plans.json, dataset.json and fold_*/.
        folds: folds to use, ints or 'all'.
        checkpoint: checkpoint file name inside each fold folder.

    Returns:
        The loaded model.

    Raises:
        NnUNetLoadError: missing folder/plans/dataset.json/fold/checkpoint, a checkpoint
            needing arbitrary unpickling, region-based labels, or weights that do not fit
            the plans.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    _require_nnunetv2()
    folder = Path(folder)
    if not folder.is_dir():
        raise NnUNetLoadError(f"nnU-Net results folder {folder} does not exist")
    for fname in ("plans.json", "dataset.json"):
        if not (folder / fname).is_file():
            raise NnUNetLoadError(f"{fname} missing in nnU-Net results folder {folder}")
    if isinstance(folds, (str, int)):
        folds = [folds]
    if len(folds) == 0:
        raise NnUNetLoadError("no folds requested")
    available = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    paths = []
    for f in folds:
        fdir = folder / _fold_dir_name(f)
        if not fdir.is_dir():
            raise NnUNetLoadError(f"fold folder {fdir.name} missing in {folder}; available: {available}")
        if not (fdir / checkpoint).is_file():
            present = sorted(p.name for p in fdir.glob("*.pth"))
            raise NnUNetLoadError(f"checkpoint {fdir / checkpoint} missing; present: {present}")
        paths.append(fdir / checkpoint)

    dataset_json = _read_json_object(folder / "dataset.json", ("labels",))
    plans_manager = PlansManager(_read_json_object(folder / "plans.json", ("configurations",)))
    ckpts = [load_checkpoint_safely(p) for p in paths]
    first = ckpts[0]
    config_name = first.get("init_args", {}).get("configuration") or folder.name.split("__")[-1]
    if config_name not in plans_manager.available_configurations:
        raise NnUNetLoadError(f"configuration {config_name!r} of {paths[0]} not in plans.json "
                              f"({plans_manager.available_configurations})")
    cm = plans_manager.get_configuration(config_name)
    label_manager = plans_manager.get_label_manager(dataset_json)
    class_names = _class_names(label_manager, dataset_json)
    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    network = build_network(plans_manager, cm, n_in, label_manager.num_segmentation_heads)
    expected = network.state_dict()
    state_dicts = [_adapt_state_dict(c["network_weights"], expected, p) for c, p in zip(ckpts, paths)]
    network.load_state_dict(state_dicts[0])
    mirror = first.get("inference_allowed_mirroring_axes")
    layers = _explainable_layers(network)
    enc = [n for n in layers if n.startswith("encoder.")]
    return NnUNetNetwork(
        network=network, folder=folder, configuration_name=config_name,
        spatial_dims=len(cm.patch_size), input_channels=n_in, class_names=class_names,
        patch_size=tuple(int(i) for i in cm.patch_size), layer_names=layers,
        default_layer=enc[-1] if enc else (layers[-1] if layers else ""),
        state_dicts=state_dicts, folds=list(folds), trainer_name=first.get("trainer_name", ""),
        inference_allowed_mirroring_axes=tuple(mirror) if mirror is not None else None,
        plans_manager=plans_manager, configuration_manager=cm, label_manager=label_manager,
        dataset_json=dataset_json)
