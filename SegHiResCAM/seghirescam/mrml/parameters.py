"""Every user setting of the Slicer module, kept in the scene's parameter node (no qt, no torch).

The parameter node is the module's singleton ``vtkMRMLScriptedModuleNode`` (singleton tag and
module name "SegHiResCAM"), the node Slicer's ``ScriptedLoadableModuleLogic.getParameterNode``
makes: it is saved with the scene (``.mrb``, ``.mrml``) and read back with it, so a reloaded
scene restores the module exactly. Values are stored the way Slicer's ``parameterNodeWrapper``
stores them (text parameters; node settings as node references whose role is the setting's
name), so scenes saved by earlier versions of the module (which used the wrapper for
``inputVolume``, ``pointNode``, ``methods``, ``batchSize``, ``outputPrefix``, ``keepPrevious``)
still load.

One table, ``SETTINGS``, says each setting's type, default and allowed values; the widget builds
its ranges and menus from it and writes every change through ``ModuleParameters``, which refuses
values outside them (e.g. a batch size outside 0..1024, 0 meaning "auto").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import slicer

from seghirescam.cam.method_info import DEFAULT_METHOD_KEYS, format_method_keys
from seghirescam.cam.vocabulary import (CLICK_MODES, DEFAULT_CLICK_MODE, DEFAULT_NORMALIZATION, DEFAULT_POINT_RADIUS,
                                        NORMALIZATIONS, PIXEL_SETS)

__all__ = ["MODULE_NAME", "Setting", "SETTINGS", "BATCH_SIZE_RANGE", "CLICK_RADIUS_RANGE", "DEVICES", "ModuleParameters",
           "parameter_node"]

MODULE_NAME = "SegHiResCAM"
BATCH_SIZE_RANGE = (0, 1024)  # slices per pass; 0 is shown as "auto" (fits the free memory)
CLICK_RADIUS_RANGE = (0, 64)  # pixels of the disc around a clicked pixel
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class Setting:
    """One user setting.

    Attributes:
        name: Parameter name in the node (the node-reference role for node settings).
        kind: "node", "str", "int" or "bool".
        default: Value when the node has none (None for node settings).
        node_class: For node settings: the MRML class the node must be.
        choices: For "str" settings with a closed vocabulary: the allowed values.
        value_range: For "int" settings: (minimum, maximum), both allowed.
    """

    name: str
    kind: str
    default: object = None
    node_class: str | None = None
    choices: tuple[str, ...] | None = None
    value_range: tuple[int, int] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("inputVolume", "node", node_class="vtkMRMLScalarVolumeNode"),
    Setting("segmentationNode", "node", node_class="vtkMRMLSegmentationNode"),
    Setting("segmentId", "str", ""),
    Setting("modelPath", "str", ""),  # "" = the shipped default model; a file or a folder
    Setting("modelFolds", "str", "all"),  # nnU-Net folds, "all" or "0,1,2"
    Setting("targetClass", "str", ""),  # a class name of the model; "" = from the segment's name
    Setting("layer", "str", ""),  # "" = the model's default layer
    Setting("methods", "str", format_method_keys(DEFAULT_METHOD_KEYS)),
    Setting("device", "str", "auto", choices=DEVICES),
    Setting("normalize", "str", DEFAULT_NORMALIZATION, choices=tuple(NORMALIZATIONS)),
    Setting("pixelSet", "str", "segment", choices=tuple(PIXEL_SETS)),
    Setting("pointNode", "node", node_class="vtkMRMLMarkupsFiducialNode"),
    Setting("batchSize", "int", 0, value_range=BATCH_SIZE_RANGE),
    Setting("outputPrefix", "str", ""),
    Setting("keepPrevious", "bool", False),
    Setting("clickMode", "str", DEFAULT_CLICK_MODE, choices=tuple(CLICK_MODES)),
    Setting("clickRadius", "int", DEFAULT_POINT_RADIUS, value_range=CLICK_RADIUS_RANGE),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def parameter_node(scene: slicer.vtkMRMLScene, module_name: str = MODULE_NAME) -> slicer.vtkMRMLScriptedModuleNode:
    """The module's parameter node in ``scene``, created (once per scene) when missing.

    Args:
        scene: The MRML scene.
        module_name: Singleton tag and module name of the node.

    Returns:
        The ``vtkMRMLScriptedModuleNode``; the same node Slicer's scripted-module logic would return.
    """
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is not None:
        return node
    node = slicer.vtkMRMLScriptedModuleNode()
    node.SetSingletonTag(module_name)
    node.SetModuleName(module_name)
    node.SetName(scene.GenerateUniqueName(module_name))
    return scene.AddNode(node)


class ModuleParameters:
    """Typed access to the settings in a parameter node: ``params.batchSize = 8``, ``params.inputVolume``.

    Reading a setting the node lacks gives its default; a stored value that is not valid (e.g. a
    negative batch size written by an old version) reads as the nearest valid value (ints are
    clamped into their range, unknown choices give the default). Writing refuses invalid values.

    Args:
        node: The parameter node (``parameter_node(scene)``).
    """

    def __init__(self, node: slicer.vtkMRMLScriptedModuleNode) -> None:
        object.__setattr__(self, "node", node)

    def __getattr__(self, name: str) -> object:
        setting = _BY_NAME.get(name)
        if setting is None:
            raise AttributeError(f"no setting named {name!r}; settings: {', '.join(_BY_NAME)}")
        if setting.kind == "node":
            return self.node.GetNodeReference(name)
        text = self.node.GetParameter(name)
        if text == "":
            return setting.default
        if setting.kind == "int":
            try:
                value = int(float(text))
            except ValueError:
                return setting.default
            low, high = setting.value_range
            return min(max(value, low), high)
        if setting.kind == "bool":
            return text.lower() in ("true", "1")
        if setting.choices is not None and text not in setting.choices:
            return setting.default
        return text

    def __setattr__(self, name: str, value: object) -> None:
        setting = _BY_NAME.get(name)
        if setting is None:
            raise AttributeError(f"no setting named {name!r}; settings: {', '.join(_BY_NAME)}")
        if setting.kind == "node":
            if value is not None and not value.IsA(setting.node_class):
                raise ValueError(f"{name} must be a {setting.node_class}, got a {value.GetClassName()}")
            self.node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            return
        if setting.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            low, high = setting.value_range
            if not low <= value <= high:
                raise ValueError(f"{name} must be {low}..{high}, got {value}")
            text = str(value)
        elif setting.kind == "bool":
            text = "True" if bool(value) else "False"
        else:
            text = "" if value is None else str(value)
            if setting.choices is not None and text not in setting.choices:
                raise ValueError(f"{name} must be one of {', '.join(setting.choices)}, got {text!r}")
        if self.node.GetParameter(name) != text:
            self.node.SetParameter(name, text)

    def values(self) -> dict[str, object]:
        """Returns: every setting's current value (node settings as node IDs or None), e.g. to compare scenes."""
        found = {}
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            found[setting.name] = (value.GetID() if value is not None else None) if setting.kind == "node" else value
        return found

    def __iter__(self) -> Iterator[Setting]:
        return iter(SETTINGS)
