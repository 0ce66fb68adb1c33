"""The method registry is the one list of CAM methods: metadata, README, and a new method showing up everywhere.

A throwaway method ("test-abs-cam": sum_k |G| * A) is registered for the end-to-end tests and
unregistered afterwards; each test checks it in what users see: the explain command's files and
summary, the evaluation's tables and plot legends, and the Slicer Logic's method list and nodes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.colors import is_color_like
from matplotlib.lines import Line2D

import seghirescam.evaluation.plots as evaluation_plots
from seghirescam import UNet2D
from seghirescam.cam.method_info import COSTS, METHOD_INFO, PlotStyle, display_name, method_keys, registered_methods
from seghirescam.cam.methods import METHODS, CAMMethod, register_method, seg_xres_cam, unregister_method
from seghirescam.cli import main
from seghirescam.imaging.volumes import Volume, write_volume
from seghirescam.models.loading import LoadedModel, save_model, unet_card
from seghirescam.synthetic.phantom import make_phantom

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "SegHiResCAM"
TEST_KEY = "test-abs-cam"


def _absolute_gradient_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients.abs() * activations).sum(dim=1)


def _test_method() -> CAMMethod:
    return CAMMethod(key=TEST_KEY, display_name="Test Abs-Grad CAM", short_title="Test-Abs",
                     style=PlotStyle("tab:orange", "--"), citation="nobody, a test",
                     description="sum_k |G| * A, registered by a test.", combine=_absolute_gradient_cam)


@pytest.fixture
def abs_cam():
    """The throwaway method, registered for one test and always unregistered after it."""
    method = register_method(_test_method())
    try:
        yield method
    finally:
        unregister_method(TEST_KEY)
    assert TEST_KEY not in METHODS and TEST_KEY not in METHOD_INFO


def _tiny_model_file(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    card = unet_card(model, "tiny", ("background", "kidney", "tumor", "cyst"), hu_clip=(-200, 300), mean=40, std=120)
    return save_model(model, card, folder / "tiny.safetensors")


# ---- the registry itself ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(METHODS))
def test_every_registered_method_carries_complete_metadata(key):
    method = METHODS[key]
    assert method.key == method.name == key and METHOD_INFO[key].display_name == method.display_name
    assert method.display_name and method.short_title and method.citation and method.description
    assert is_color_like(method.style.colour) and method.style.line_style in Line2D.lineStyles
    assert callable(method.combine) != callable(method.model_pass), "exactly one of combine and model_pass"
    assert method.cost in COSTS


def test_the_torch_free_metadata_lists_exactly_the_runnable_methods():
    assert method_keys() == tuple(METHODS)
    assert [m.display_name for m in registered_methods()] == [m.display_name for m in METHODS.values()]


def test_register_refuses_a_duplicate_and_unregister_an_unknown_key(abs_cam):
    with pytest.raises(ValueError, match=f"{TEST_KEY!r} is already registered"):
        register_method(_test_method())
    with pytest.raises(ValueError, match="already registered"):
        register_method(seg_xres_cam())
    with pytest.raises(TypeError, match="CAMMethod"):
        register_method(METHOD_INFO["seg-grad-cam"])
    with pytest.raises(ValueError, match="no CAM method 'not-a-method'"):
        unregister_method("not-a-method")
    assert list(METHODS)[-1] == TEST_KEY and display_name(TEST_KEY) == "Test Abs-Grad CAM"


def test_configured_seg_xres_variants_get_derived_titles_and_the_default_is_the_registered_one():
    default = seg_xres_cam()
    assert default.key == "seg-xres-cam" and default.display_name == METHODS["seg-xres-cam"].display_name
    variant = seg_xres_cam(pool=3, reduce="mean")
    assert variant.key == variant.name == "seg-xres-cam-p3-mean"
    assert variant.display_name == "Seg-XRes CAM (p=3, mean)" and variant.short_title == "Seg-XRes p3 mean"
    assert variant.key not in METHODS  # a configured variant is usable without being registered


def test_readme_method_table_lists_exactly_the_registered_methods():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = re.search(r"^\| method \| key \| map \| cost \|\n\|---\|---\|---\|---\|\n((?:\|.*\|\n)+)", text, re.M)
    assert table, "README.md has no '| method | key | map | cost |' table"
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table.group(1).splitlines()]
    assert sorted(row[0] for row in rows) == sorted(m.display_name for m in registered_methods()), \
        "the README's method table must have one row per registered method (its display name)"
    by_name = {m.display_name: m for m in registered_methods()}
    for name, key, _formula, cost in rows:
        assert (key, cost) == (f"`{by_name[name].key}`", by_name[name].cost), f"{name}: wrong key or cost class"


def test_readme_table_check_fails_for_a_method_without_a_row(abs_cam):
    with pytest.raises(AssertionError, match="one row per registered method"):
        test_readme_method_table_lists_exactly_the_registered_methods()


# ---- no torch, no global matplotlib backend for the metadata, figures, plots and reports ------------------
_IMPORT_CHECK = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import matplotlib
assert matplotlib.rcParams._get_backend_or_none() is None, "backend chosen before the imports"
import seghirescam.cam.method_info, seghirescam.ct.figures, seghirescam.evaluation.plots
import seghirescam.evaluation.report, seghirescam.evaluation.labels
assert matplotlib.rcParams._get_backend_or_none() is None, "importing chose a matplotlib backend"
assert "matplotlib.pyplot" not in sys.modules, "importing loaded pyplot"
print(",".join(seghirescam.cam.method_info.method_keys()))
"""


def test_metadata_figures_and_reports_import_without_torch_or_a_matplotlib_backend():
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env["PYTHONPATH"] = str(PACKAGE_DIR)
    done = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, encoding="utf-8", errors="replace", env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(",") == list(METHODS)


def test_slicer_ui_has_no_hard_coded_method_checkboxes():
    ui = ElementTree.parse(PACKAGE_DIR / "Resources" / "UI" / "SegHiResCAM.ui")
    container = [w for w in ui.iter("widget") if w.get("name") == "methodsWidget"]
    assert container and not list(container[0].iter("item")), "methodsWidget must be empty: filled from the registry"
    texts = {s.text for s in ui.iter("string")}
    assert not texts & {m.display_name for m in registered_methods()}
    module = (PACKAGE_DIR / "SegHiResCAM.py").read_text(encoding="utf-8")
    assert "registered_methods()" in module and not re.search(r"use\w*CAM\s*:\s*bool", module)


# ---- a new method shows up everywhere ------------------------------------------------------------------------
@pytest.fixture
def phantom_case(tmp_path):
    phantom = make_phantom(3, shape=(20, 64, 64), spacing=(4.0, 4.0, 6.0), tumor=True)
    write_volume(Volume(phantom.ct, phantom.geometry), tmp_path / "ct.nii.gz")
    write_volume(Volume(phantom.labels, phantom.geometry), tmp_path / "labels.nii.gz")
    return tmp_path


def test_a_registered_method_is_written_by_explain(abs_cam, phantom_case, monkeypatch):
    import seghirescam.ct.outputs as outputs

    panels = []
    real_write_panel = outputs.write_panel

    def spy(path, ct, segment, mask, maps, slices, **kwargs):
        panels.append(list(maps))
        return real_write_panel(path, ct, segment, mask, maps, slices, **kwargs)

    monkeypatch.setattr(outputs, "write_panel", spy)
    out = phantom_case / "out"
    assert main(["explain", "--ct", str(phantom_case / "ct.nii.gz"), "--seg", str(phantom_case / "labels.nii.gz"),
                 "--label", "1", "--target-class", "kidney", "--out", str(out), "--device", "cpu", "--method", TEST_KEY,
                 "--method", "seg-hires-grad-cam"]) == 0
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"kidney__M-label_1_{TEST_KEY}_bottleneck.nrrd")))
    assert heat.max() == pytest.approx(1.0)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    record = summary["targets"][0]
    assert f"{TEST_KEY}@bottleneck" in record["files"] and f"{TEST_KEY}@bottleneck" in record["map_statistics"]
    assert "Test Abs-Grad CAM\nbottleneck" in panels[0]  # the panel's column title is the display name


def test_a_registered_method_is_in_the_evaluation_tables_and_plot_legends(abs_cam, tmp_path, monkeypatch):
    legends = {}
    real_save = evaluation_plots._save

    def spy(fig, path):
        legends[Path(path).name] = evaluation_plots.legend_texts(fig)
        return real_save(fig, path)

    monkeypatch.setattr(evaluation_plots, "_save", spy)
    out = tmp_path / "eval"
    # seed 2: the random tiny model scores the phantom's tumour above its fully filled slice (y_0 > y_100%),
    # so deletion/insertion curves exist and are drawn
    # Every registered method but seg-cam, which applies only at the layer feeding the head (dec1) and refuses
    # the bottleneck, and the perturbation methods (a forward per channel, minutes here): evaluating every
    # method where it applies is issue 11 part 3.
    evaluated = [key for key, method in METHODS.items() if key != "seg-cam" and method.cost != "perturbation"]
    assert main(["evaluate", "--out", str(out), "--model", str(_tiny_model_file(tmp_path, 2)), "--no-real-ct",
                 "--phantoms", "1", "--slices", "1", "--steps", "2", "--layer", "bottleneck",
                 *(word for key in evaluated for word in ("--method", key))]) == 0
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert record["config"]["methods"] == evaluated  # every registered method asked for, the new one too

    def csv_rows(name):
        with (out / name).open(encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    assert TEST_KEY in {r["method"] for r in csv_rows("per_slice.csv")}
    assert TEST_KEY in {r["method"] for r in csv_rows("summary.csv")}
    compared = {r["other"] for r in csv_rows("comparisons.csv")}
    assert compared == set(evaluated) - {"seg-hires-grad-cam"}  # nothing silently dropped
    report = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "Test Abs-Grad CAM" in report.splitlines()[0]
    assert re.search(r"^\| [^|]+ \| Test-Abs \| bottleneck \|", report, re.M)  # a table row
    assert "| vs Test-Abs |" in report  # a comparison column
    assert record["counts"]["phantom-7001/tumor"]["span_le_0_blur"] == 0, "no curve to draw: pick another seed"
    assert {METHODS[key].display_name for key in evaluated} <= set(legends["curves_bottleneck.png"])
    assert any(text.startswith("Test Abs-Grad CAM, ") for text in legends["sanity.png"])


def test_curves_and_sanity_figures_draw_every_method_present_with_its_registered_style(abs_cam):
    fractions = np.linspace(0, 1, 3)
    stack = np.array([[1.0, 0.5, 0.0]])
    present = [*METHODS, "seg-xres-cam-p3-mean"]  # the last is a configured variant nobody registered
    curves = {("g", method, "bottleneck", "blur", "deletion"): stack for method in present}
    curves[("g", "random", "-", "blur", "deletion")] = stack
    fig = evaluation_plots.curves_figure(curves, fractions, "bottleneck", ["g"])
    assert evaluation_plots.legend_texts(fig) == [*(m.display_name for m in METHODS.values()),
                                                  "seg-xres-cam-p3-mean", "random map"]
    drawn = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert drawn["Test Abs-Grad CAM"].get_color() == "tab:orange" and drawn["Test Abs-Grad CAM"].get_linestyle() == "--"
    colours = [line.get_color() for line in fig.axes[0].get_lines()]
    assert len(set(colours)) == len(colours)  # the unregistered variant gets a colour of its own
    sanity = {(method, "bottleneck", pixels): {"head": [0.5]} for method in present for pixels in ("support", "all")}
    labels = evaluation_plots.legend_texts(evaluation_plots.sanity_figure(sanity, ["head"], ["bottleneck"]))
    assert "Test Abs-Grad CAM, on support" in labels and "seg-xres-cam-p3-mean, all pixels" in labels


def test_a_registered_method_is_offered_and_run_by_the_slicer_logic(abs_cam):
    slicer = pytest.importorskip("slicer")
    from slicer_scene import make_headless_slicer, segmentation_from_labels, volume_from_array

    from seghirescam.mrml.logic import ATTRIBUTE_PREFIX, SegHiResCAMLogic

    assert [m.key for m in SegHiResCAMLogic.methodChoices()] == list(METHODS)
    offered = {m.key: m for m in SegHiResCAMLogic.methodChoices()}[TEST_KEY]
    assert (offered.display_name, offered.description) == (abs_cam.display_name, abs_cam.description)
    phantom = make_phantom(seed=0, shape=(8, 64, 64), spacing=(5.0, 5.0, 10.0))
    app = make_headless_slicer()
    ct = volume_from_array(app.scene, phantom.ct, phantom.geometry.ijk_to_ras(), "CT")
    seg = segmentation_from_labels(app.scene, phantom.labels, phantom.geometry.ijk_to_ras(), {1: "kidney"})
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    loaded = LoadedModel(model, unet_card(model, "tiny", ("background", "kidney", "tumor", "cyst"),
                                          hu_clip=(-200, 300), mean=40, std=120), Path("tiny"))
    logic = SegHiResCAMLogic(app.scene)
    nodes = logic.process(ct, seg, seg.GetSegmentation().GetSegmentIdBySegmentName("kidney"), model=loaded,
                          methods=(TEST_KEY,), device="cpu", batchSize=4)
    (key, node), = nodes.items()
    assert key == (TEST_KEY, "bottleneck") and node.GetAttribute(ATTRIBUTE_PREFIX + "Method") == TEST_KEY
    assert "Test Abs-Grad CAM" in node.GetName()
    assert np.asarray(slicer.util.arrayFromVolume(node)).max() > 0
