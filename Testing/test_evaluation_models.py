"""``seghirescam evaluate`` on models that prepare their own input: a MONAI bundle and an nnU-Net results folder,
loaded once and evaluated on the same phantom cases as the shipped U-Net."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("monai")

import monai_bundles as mb  # noqa: E402
from nnunet_folders import ensure_tiny_results, replanned_copy  # noqa: E402

from seghirescam.cli import main  # noqa: E402


def _evaluate(model_args: list[str], out) -> dict:
    argv = ["evaluate", "--out", str(out), *model_args, "--no-real-ct", "--phantoms", "1", "--slices", "1",
            "--steps", "2", "--pixel-set", "label", "--method", "seg-hires-grad-cam", "--method", "seg-grad-cam"]
    assert main(argv) == 0
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def _metrics(out) -> set[tuple[str, str]]:
    import csv

    with (out / "summary.csv").open(encoding="utf-8") as handle:
        return {(row["method"], row["metric"]) for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_a_monai_bundle_is_evaluated_on_the_phantoms(tmp_path):
    # Spacingd at the phantoms' own in-plane spacing (3 mm): every perturbed CT runs through the bundle's
    # transforms and window, and at the bundle's usual 0.7 mm that upsamples 4x (150 s instead of a few)
    bundle = mb.make_bundle(tmp_path / "bundle", "2d", pixdim=[3.0, 3.0, -1.0])
    record = _evaluate(["--model", str(bundle)], tmp_path / "eval")
    assert set(record["counts"]) == {"phantom-7001/tumor", "phantom-7001/kidney"}  # the bundle has both classes
    found = _metrics(tmp_path / "eval")
    for method in ("seg-hires-grad-cam", "seg-grad-cam", "centre-distance", "random", "M"):
        assert (method, "mass_in_m_dilated") in found and (method, "deletion_dice_auc_road") in found
    report = (tmp_path / "eval" / "evaluation.md").read_text(encoding="utf-8")
    assert "through its own preprocessing and prediction" in report and "Dice MoRF, ROAD" in report


def _at_phantom_spacing(folder, work):
    """A copy of a tiny 2d results folder whose plans ask for the phantoms' 3 mm and one 112^2 tile per slice.

    The tiny network is fully convolutional (the same weights run at any spacing and patch size divisible by
    its strides); at its own 1.5 mm every perturbed phantom would be upsampled 4x and cut into ~25 tiles.
    """
    return replanned_copy(folder, work / folder.parent.name / folder.name, "2d", (3.0, 3.0), (112, 112))


@pytest.mark.slow
def test_an_nnunet_folder_is_evaluated_with_its_fold(tmp_path_factory, tiny_nnunet_root):
    folder = _at_phantom_spacing(ensure_tiny_results(tiny_nnunet_root)["2d"], tmp_path_factory.mktemp("respaced"))
    out = tmp_path_factory.mktemp("eval")
    record = _evaluate(["--model", str(folder), "--fold", "all"], out)
    assert list(record["counts"]) == ["phantom-7001/kidney"]  # the tiny dataset has no tumor class
    assert "no class 'tumor'" in (out / "evaluation.md").read_text(encoding="utf-8")
    assert ("seg-hires-grad-cam", "deletion_dice_auc_road") in _metrics(out)
    assert main(["evaluate", "--out", str(out), "--model", str(folder), "--fold", "7", "--no-real-ct"]) == 2
