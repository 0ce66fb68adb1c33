"""Make Resources/Screenshots/slice_view_heatmap.png: the module's heatmaps over a real CT, as Slicer draws them.

Headless (PyPI slicer-core): the real CT and its left-kidney segment are loaded into a scene, the
Logic explains the kidney with the default model (a small random U-Net if the default model is
not there yet; the caption says which), and one axial slice view per method is rendered with
Slicer's own slice pipeline. Usage: ``python Testing/make_screenshot.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import vtk
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seghirescam import UNet2D  # noqa: E402
from seghirescam.models.loading import LoadedModel, default_model_path, load_default_model, unet_card  # noqa: E402
from seghirescam.cam.method_info import display_name  # noqa: E402
from seghirescam.mrml.logic import SegHiResCAMLogic, renderSliceView  # noqa: E402
from seghirescam.mrml.nodes import ijk_to_ras_of  # noqa: E402
from slicer_scene import make_headless_slicer, rename_segments  # noqa: E402

import slicer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ct-abdomen-totalseg"
OUT = ROOT / "Resources" / "Screenshots" / "slice_view_heatmap.png"
logger = logging.getLogger("make_screenshot")


def _model() -> tuple[LoadedModel, str]:
    if default_model_path().exists():
        return load_default_model(), "default model"
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    card = unet_card(model, "untrained-test", ("background", "kidney", "tumor", "cyst"), hu_clip=(-200, 300), mean=50,
                     std=100)
    logger.warning("the default model is missing: using an UNTRAINED test model")
    return LoadedModel(model, card, Path("untrained")), "UNTRAINED test model"


def main(argv: list[str] | None = None) -> Path:
    """Args: argv: command line. Returns: the PNG written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    app = make_headless_slicer()
    ct = app.volumes.AddArchetypeVolume(str(DATA / "example_ct.nii.gz"), "CT", 0, vtk.vtkStringArray())
    ct.GetDisplayNode().AutoWindowLevelOff()
    ct.GetDisplayNode().SetWindowLevel(400, 40)  # the usual abdominal soft-tissue window
    labelmap = app.volumes.AddArchetypeVolume(str(DATA / "example_seg_fast_force_split.nii.gz"), "labels", 1,
                                              vtk.vtkStringArray())
    seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    rename_segments(seg, {3: "Left kidney"})
    model, which = _model()
    logic = SegHiResCAMLogic(app.scene)
    nodes = logic.process(ct, seg, seg.GetSegmentation().GetSegmentIdBySegmentName("Left kidney"), model=model,
                          device="cpu")
    kidney = slicer.util.arrayFromVolume(labelmap) == 3
    heat = slicer.util.arrayFromVolume(nodes[("seg-hires-grad-cam", logic.defaultLayer(model))])
    k = int(np.argmax(np.where(kidney, heat, 0).sum(axis=(1, 2))))  # the axial slice where the kidney is hottest
    j, i = np.argwhere(kidney[k]).mean(axis=0)
    centre = (ijk_to_ras_of(ct) @ [i, j, k, 1.0])[:3]
    panels = []
    for (method, layer), node in nodes.items():
        rgba = renderSliceView(app.scene, ct, node, None, sliceOffsetRAS=centre).pixels
        picture = Image.fromarray((rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8))  # on black, as in Slicer
        ImageDraw.Draw(picture).text((8, 8), f"{display_name(method)} @ {layer}, class kidney ({which})",
                                     fill=(255, 255, 255))
        panels.append(picture)
    sheet = Image.new("RGB", (sum(p.width for p in panels), panels[0].height))
    for index, panel in enumerate(panels):
        sheet.paste(panel, (index * panel.width, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    logger.info("wrote %s (slice k=%d, %s)", args.out, k, which)
    return args.out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
