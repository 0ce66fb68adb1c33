"""Model cards and safe loading: every loader, every refusal, and the shipped model's quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import seghirescam as shc
from seghirescam.models.card import CardError, ModelCard
from seghirescam.models.loading import card_path_for, default_model_path, load_default_model, load_model, save_model, unet_card
from seghirescam.models.unet import UNet2D
from seghirescam.synthetic.train import CLASS_SYNONYMS, PREFERRED_CLASSES

CLASSES = ("background", "kidney", "tumor", "cyst")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = UNet2D(1, 4, (4, 8, 16, 32)).eval()
    return model, unet_card(model, "tiny", CLASSES, hu_clip=(-200, 300), mean=40, std=120,
                            synonyms=CLASS_SYNONYMS, preferred_classes=PREFERRED_CLASSES)


def _same_outputs(a, b):
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_safetensors_round_trip_with_card(tmp_path, tiny):
    model, card = tiny
    path = save_model(model, card, tmp_path / "m.safetensors")
    assert card_path_for(path).name == "m.card.json"
    loaded = load_model(path)
    assert loaded.card == card and isinstance(loaded.model, UNet2D) and not loaded.model.training
    _same_outputs(model, loaded.model)


def test_state_dict_is_read_weights_only(tmp_path, tiny):
    model, card = tiny
    torch.save(model.state_dict(), tmp_path / "m.pt")
    _same_outputs(model, load_model(tmp_path / "m.pt", card).model)


def test_pickled_whole_model_is_refused(tmp_path, tiny):
    model, card = tiny
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CardError, match="arbitrary code"):
        load_model(tmp_path / "whole.pt", card)


def test_torchscript_unet_is_rebuilt_so_it_can_be_explained(tmp_path, tiny):
    model, card = tiny
    torch.jit.trace(model, torch.zeros(1, 1, 32, 32), check_trace=False).save(str(tmp_path / "m.ts"))
    loaded = load_model(tmp_path / "m.ts", card)
    assert isinstance(loaded.model, UNet2D)
    _same_outputs(model, loaded.model)


def test_foreign_torchscript_segments_but_cannot_be_hooked(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1)).eval()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    card = ModelCard("foreign", {"type": "torchscript", "in_channels": 1, "num_classes": 3}, ("bg", "kidney", "tumor"))
    loaded = load_model(tmp_path / "net.ts", card)
    assert loaded.model(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="TorchScript"):
        shc.explain_slices(loaded.model, torch.zeros(1, 1, 16, 16), torch.ones(1, 16, 16, dtype=torch.bool), 1,
                           layers=("0",))


@pytest.mark.parametrize("change, message", [
    (dict(widths=[8, 16, 32, 64]), "does not match"),
    (dict(num_classes=3), "does not match"),
    (dict(in_channels=2), "does not accept|does not match"),
])
def test_weights_that_disagree_with_the_card_are_refused(tmp_path, tiny, change, message):
    model, card = tiny
    path = save_model(model, card, tmp_path / "m.safetensors")
    arch = {**card.architecture, **change}
    classes = CLASSES[: arch["num_classes"]]
    wrong = ModelCard(card.name, arch, classes)
    with pytest.raises(CardError, match=message):
        load_model(path, wrong)


def test_torchscript_with_wrong_channel_count_is_refused_before_work(tmp_path):
    net = torch.nn.Conv2d(1, 5, 1).eval()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    card = ModelCard("x", {"type": "torchscript", "in_channels": 1, "num_classes": 4}, CLASSES)
    with pytest.raises(CardError, match="outputs .*4 classes"):
        load_model(tmp_path / "net.ts", card)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other/1"), "not a SegHiResCAM model card"),
    (lambda d: d.update(classes=["a", "b"]), "lists 2 classes"),
    (lambda d: d.pop("architecture"), "missing fields"),
    (lambda d: d.update(colour="red"), "unknown fields"),
    (lambda d: d.update(std=0), "std > 0"),
])
def test_malformed_cards_are_refused(tmp_path, tiny, edit, message):
    _, card = tiny
    data = json.loads(card.to_json())
    edit(data)
    (tmp_path / "c.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CardError, match=message):
        ModelCard.load(tmp_path / "c.json")


def test_missing_files_are_named(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_model(tmp_path / "nothing.safetensors")
    model, card = tiny
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="m.card.json"):
        load_model(tmp_path / "m.pt")


@pytest.mark.parametrize("name, expected", [
    ("kidney", 1), ("Left kidney", 1), ("kidney_right", 1), ("Tumour 1", 2), ("renal mass", 2), ("Kidney tumor", 2), ("Cyst", 3),
])
def test_class_from_segment_name(tiny, name, expected):
    assert tiny[1].class_for_segment(name) == expected


@pytest.mark.parametrize("name", ["liver", "tumor or cyst"])
def test_unclear_segment_names_are_refused(tiny, name):
    with pytest.raises(ValueError, match="choose the target class"):
        tiny[1].class_for_segment(name)


def test_segment_words_come_from_the_card_not_the_code(tiny):
    model, card = tiny
    bare = unet_card(model, "bare", CLASSES)  # no synonyms: "renal" means nothing to this card
    with pytest.raises(ValueError, match="matches no class"):
        bare.class_for_segment("renal mass")
    organ = unet_card(model, "organ", ("background", "liver", "lesion", "vessel"), synonyms={"liver": ["hepatic"]},
                      preferred_classes=("lesion",))
    assert organ.class_for_segment("hepatic lesion") == 2 and organ.class_for_segment("Hepatic") == 1
    with pytest.raises(CardError, match="unknown classes"):
        unet_card(model, "wrong", CLASSES, synonyms={"spleen": ["splenic"]})


def test_the_shipped_card_carries_the_kidney_vocabulary():
    card = load_default_model().card
    assert card.class_for_segment("renal mass") == card.classes.index("tumor")
    assert card.class_for_segment("Left kidney") == card.classes.index("kidney")


def test_preprocess_clips_and_scales(tiny):
    _, card = tiny
    x = card.preprocess(torch.tensor([[[-1000.0, 40.0, 1000.0]]]))
    torch.testing.assert_close(x, torch.tensor([[[[(-200 - 40) / 120, 0.0, (300 - 40) / 120]]]]))


def test_shipped_model_card_is_honest_and_dice_holds_on_a_fresh_phantom():
    loaded = load_default_model()
    card = loaded.card
    assert default_model_path().stat().st_size < 10 * 2**20
    assert card.classes == CLASSES and "bottleneck" in card.layers and card.head_input_layers == ("dec1",)
    assert {"data", "steps", "seed"} <= set(card.training)
    from seghirescam.synthetic.train import VALIDATION_SEEDS, evaluate_cases
    from seghirescam.synthetic.training_data import phantom_case

    # The card's claim is reproduced exactly from the held-out phantoms it names (deterministic seeds).
    assert tuple(card.metrics["held_out_phantom_seeds"]) == VALIDATION_SEEDS
    cases = [phantom_case(seed, np.random.default_rng(seed)) for seed in VALIDATION_SEEDS]
    dice = evaluate_cases(loaded.model, card, cases)
    claimed = card.metrics["dice_held_out_phantoms"]
    for name in ("kidney", "tumor", "cyst"):
        assert abs(dice[name] - claimed[name]) <= 0.002, (name, dice, claimed)
    prediction = shc.predict_volume(loaded.model, cases[0].ct, preprocess=card.preprocess, device="cpu")
    assert np.isin(prediction, [0, 1, 2, 3]).all()
