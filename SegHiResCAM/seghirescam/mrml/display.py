"""Display of heatmap nodes: the perceptual colour table, window, threshold, slice-view layers.

No qt here. Inside the Slicer application (``slicer.app`` exists) heatmaps are also put in the
slice views and given a colour legend; headless, only the MRML display nodes are set up.
"""

from __future__ import annotations

import logging

import slicer

__all__ = ["INFERNO_TABLE_NAME", "inferno_rgb", "heatmap_color_node", "setup_heatmap_display", "show_in_slice_views",
           "DISPLAY_THRESHOLD", "display_maximum", "set_threshold_fraction", "add_legend"]

logger = logging.getLogger(__name__)

INFERNO_TABLE_NAME = "SegHiResCAM Inferno"
APP_INFERNO_ID = "vtkMRMLColorTableNodeFileInferno.txt"  # the application's file-based table, when present
DISPLAY_THRESHOLD = 0.05  # normalized values below this are transparent
# matplotlib's "inferno" (van der Walt & Smith, CC0), 256 RGB entries as hex.
_INFERNO_HEX = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
    "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
    "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
    "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
    "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
    "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
    "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
    "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
    "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
    "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
    "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
    "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
    "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
    "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)


def inferno_rgb() -> list[tuple[float, float, float]]:
    """Returns: the 256 colours of the inferno colormap, RGB in 0..1, dark to bright."""
    values = bytes.fromhex(_INFERNO_HEX)
    return [(values[n] / 255.0, values[n + 1] / 255.0, values[n + 2] / 255.0) for n in range(0, len(values), 3)]


def heatmap_color_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorNode:
    """The colour table for heatmaps: the app's Inferno table if loaded, else our own (created once per scene).

    Args:
        scene: The scene to look in and add to.

    Returns:
        A colour node of the scene.
    """
    app_table = scene.GetNodeByID(APP_INFERNO_ID)
    if app_table is not None:
        return app_table
    existing = scene.GetNodesByClassByName("vtkMRMLColorTableNode", INFERNO_TABLE_NAME)
    if existing.GetNumberOfItems():
        return existing.GetItemAsObject(0)
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(INFERNO_TABLE_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for index, (red, green, blue) in enumerate(inferno_rgb()):
        table.SetColor(index, f"{index / 255:.3f}", red, green, blue, 1.0)
    table.SetAttribute("Category", "SegHiResCAM")
    return scene.AddNode(table)


def setup_heatmap_display(node: slicer.vtkMRMLScalarVolumeNode, color_node: slicer.vtkMRMLColorNode, *,
                          threshold: float = DISPLAY_THRESHOLD, opacity: float = 1.0,
                          raw: bool = False) -> slicer.vtkMRMLScalarVolumeDisplayNode:
    """Colour a heatmap: window 0..1 for normalized maps, 0..max for raw values; low values transparent.

    Args:
        node: The heatmap volume (its display node is created if missing).
        color_node: From ``heatmap_color_node``.
        threshold: Lower display threshold as a fraction of the window's top (0..1).
        opacity: Display node opacity; the slice-view foreground opacity is set separately.
        raw: The map holds raw CAM values (normalisation "none"): the window spans 0..its maximum
            instead of a fixed 0..1 (which would saturate every value above 1).

    Returns:
        The display node.
    """
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    top = display_maximum(node) if raw else 1.0
    with_modify = display.StartModify()
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.AutoThresholdOff()
    display.ApplyThresholdOn()
    display.SetThreshold(float(threshold) * top, 1.0e30)
    display.SetOpacity(float(opacity))
    display.SetInterpolate(True)
    display.EndModify(with_modify)
    return display


def display_maximum(node: slicer.vtkMRMLScalarVolumeNode) -> float:
    """Returns: the largest value of a heatmap (1.0 for an all-zero or empty map, so a window is never empty)."""
    image = node.GetImageData()
    top = image.GetScalarRange()[1] if image is not None else 0.0
    return float(top) if top > 0 else 1.0


def set_threshold_fraction(node: slicer.vtkMRMLScalarVolumeNode, fraction: float) -> None:
    """Hide values below ``fraction`` (0..1) of the displayed window's top, for normalized and raw maps alike."""
    display = node.GetDisplayNode()
    if display is not None:
        display.SetThreshold(float(fraction) * display.GetWindowLevelMax(), 1.0e30)


def show_in_slice_views(scene: slicer.vtkMRMLScene, background: slicer.vtkMRMLVolumeNode,
                        foreground: slicer.vtkMRMLVolumeNode, *, opacity: float = 0.5, color_logic=None) -> bool:
    """Put the heatmap over the CT in every slice view and add a colour legend (application only).

    Args:
        scene: The scene holding both nodes; views are changed only if it is ``slicer.mrmlScene``.
        background: The CT.
        foreground: The heatmap.
        opacity: Foreground opacity.
        color_logic: A colour logic with ``AddDefaultColorLegendDisplayNode`` (default: the app's).

    Returns:
        True if the views were changed (inside the application), else False.
    """
    if not hasattr(slicer, "app") or getattr(slicer, "mrmlScene", None) is not scene:
        return False
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID())
        composite.SetForegroundOpacity(float(opacity))
    add_legend(foreground, color_logic)
    return True


def add_legend(node: slicer.vtkMRMLDisplayableNode, color_logic=None) -> object | None:
    """Add a colour legend for ``node`` if a colour logic offers one and the node has none yet.

    Args:
        node: A displayable node with a colour table.
        color_logic: A ``vtkSlicerColorLogic``; default: ``slicer.modules.colors.logic()`` when it exists.

    Returns:
        The legend display node, or None when no colour logic could make one.
    """
    if color_logic is None and hasattr(slicer, "modules") and hasattr(slicer.modules, "colors"):
        color_logic = slicer.modules.colors.logic()
    if color_logic is None or not hasattr(color_logic, "AddDefaultColorLegendDisplayNode"):
        return None
    legend = color_logic.AddDefaultColorLegendDisplayNode(node)
    if legend is not None:
        raw = node.GetAttribute("SegHiResCAM.Normalize") == "none"
        legend.SetTitleText("CAM (raw values)" if raw else "CAM (normalized)")
        legend.SetVisibility(True)
    return legend
