"""The methods' probe (evaluation/plan.py) and what the evaluation does with it: refusals shown as "n/a",
expensive methods on a seeded subsample, every registered method evaluated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet

from seghirescam.cam.method_info import COSTS, PlotStyle
from seghirescam.cam.methods import CAMMethod, register_method, unregister_method
from seghirescam.evaluation.cases import EvalTarget
from seghirescam.evaluation.config import EvaluationConfig
from seghirescam.evaluation.plan import explain_planned, plan_methods
from seghirescam.evaluation.report import markdown_report, summarise
from seghirescam.evaluation.runner import evaluate_target
from seghirescam.models.loading import unet_card

PICKY = "test-picky-cam"


def _picky(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    if activations.shape[1] != 4:
        raise ValueError(f"{PICKY} is defined only where the layer has 4 channels, not {activations.shape[1]}")
    return (gradients * activations).sum(1)


@pytest.fixture
def picky():
    register_method(CAMMethod(key=PICKY, display_name="Picky CAM", short_title="Picky", style=PlotStyle("tab:cyan"),
                              citation="test", description="refuses layers without 4 channels", combine=_picky))
    try:
        yield PICKY
    finally:
        unregister_method(PICKY)


def _target(slices: int = 3) -> EvalTarget:
    rng = np.random.default_rng(0)
    ct = rng.normal(20, 30, (slices, 32, 32)).astype(np.float32)
    ct[:, 8:20, 10:22] += 200
    m = np.zeros(ct.shape, bool)
    m[:, 10:18, 12:20] = True
    return EvalTarget("constructed/kidney", "kidney (constructed)", "kidney", ct, m, np.zeros_like(m),
                      np.ones_like(m))


def test_refused_pairs_are_kept_with_their_reason_and_never_run(picky):
    model = make_unet((4, 8, 16), num_classes=2)
    x, m = torch.randn(2, 1, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool)
    m[:, 10:16, 10:16] = True
    methods = ("seg-hires-grad-cam", PICKY)
    plan = plan_methods(model, x, m, 1, layers=("bottleneck", "dec1"), methods=methods, expensive_costs=())
    assert set(plan.refused) == {(PICKY, "bottleneck")} and "4 channels" in plan.refused[(PICKY, "bottleneck")]
    assert plan.accepted_layers(PICKY) == ("dec1",) and plan.expensive == ()
    maps = explain_planned(model, x, m, 1, plan, methods)
    assert set(maps) == {("seg-hires-grad-cam", "bottleneck"), ("seg-hires-grad-cam", "dec1"), (PICKY, "dec1")}
    everything = plan_methods(model, x, m, 1, layers=("dec1",), methods=methods, expensive_costs=COSTS)
    assert everything.expensive == methods and everything.cheap() == ()


def test_the_default_subsamples_exactly_the_perturbation_methods_whatever_the_timing():
    # A timing threshold made the subsampled set change from run to run (on a busy machine even Seg-HiRes
    # crossed 0.2 s per slice), so two runs with the same settings could give different tables.
    model = make_unet((4, 8, 16), num_classes=2)
    x, m = torch.randn(1, 1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.bool)
    m[:, 10:16, 10:16] = True
    config = EvaluationConfig(layers=("dec1",))
    plan = plan_methods(model, x, m, 1, layers=config.layers, methods=config.methods,
                        expensive_costs=config.expensive_costs)
    assert plan.expensive == ("seg-ablation-cam", "seg-score-cam")
    assert "seg-hires-grad-cam" in plan.cheap() and "seg-fullgrad" in plan.cheap()


def test_the_evaluation_shows_refusals_as_na_and_subsamples_expensive_methods(picky):
    model = make_unet((4, 8, 16), num_classes=2)
    card = unet_card(model, "tiny", ("background", "kidney"), hu_clip=(-200, 300), mean=40, std=120)
    target = _target(4)
    config = EvaluationConfig(layers=("bottleneck", "dec1"), methods=("seg-grad-cam", PICKY), slices_per_target=4,
                              steps=2, fills=("blur",), sanity_seeds=2, sanity_slices=2, expensive_slices=1,
                              pixel_sets=("label",), sanity_expensive=True)
    x = card.preprocess(torch.from_numpy(target.ct[:2]))
    plan = plan_methods(model, x, torch.from_numpy(target.reference[:2]), 1, layers=config.layers,
                        methods=config.methods, expensive_costs=COSTS)  # every method "expensive"
    result = evaluate_target(model, card, target, config, plan=plan)
    slices_of = {}
    for row in result.rows:
        if row["metric"] == "mass_in_m":
            slices_of.setdefault((row["method"], row["layer"]), set()).add(row["slice"])
    assert len(slices_of[("seg-grad-cam", "bottleneck")]) == 1 and len(slices_of[(PICKY, "dec1")]) == 1
    assert len(slices_of[("centre-distance", "-")]) == 4 and (PICKY, "bottleneck") not in slices_of
    assert result.counts["expensive_slices"] == 1
    rho = [r for r in result.rows if r["metric"] == "abs_rho_layer" and r["method"] == "seg-grad-cam"]
    assert rho and all(0 <= r["value"] <= 1 for r in rho)
    report = markdown_report(summarise(result.rows), [], collapsed=["dec1"], header=["# test"], dilation=3,
                             refused=plan.refused)
    assert "| Picky | bottleneck | n/a: test-picky-cam is defined only where the layer has 4 channels" in report
