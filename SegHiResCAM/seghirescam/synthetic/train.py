"""Training the default kidney/tumor/cyst U-Net on the CPU, seeded, in a fixed time budget.

Data: phantoms (``phantom.py``) and the shared real CT with synthetic lesions
(``training_data.py``), as 2D axial slices in the model's display convention.
Reports Dice per class on held-out phantoms and on a held-out slab of the real CT.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seghirescam.models.card import ModelCard
from seghirescam.cam.inference import predict_volume
from seghirescam.models.loading import save_model, unet_card
from seghirescam.synthetic.training_data import Case, phantom_case, real_ct_cases
from seghirescam.models.unet import UNet2D

__all__ = ["train_default_model", "dice_per_class", "evaluate_cases", "CLASSES", "DEFAULT_WIDTHS"]

log = logging.getLogger(__name__)
CLASSES = ("background", "kidney", "tumor", "cyst")
# How segment names ask for these classes (written into the model card): "renal mass" -> tumor.
CLASS_SYNONYMS = {"tumor": ["tumour", "mass", "lesion", "cancer", "carcinoma"], "kidney": ["renal"]}
PREFERRED_CLASSES = ("tumor", "cyst")
DEFAULT_WIDTHS = (16, 32, 64, 128)
HU_CLIP, MEAN, STD = (-200.0, 300.0), 40.0, 120.0
HELD_OUT_SLAB = (92, 112)
VALIDATION_SEEDS = (9001, 9002, 9003, 9004)


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, classes: int = 4) -> dict[str, float | None]:
    """3D Dice of each foreground class; None where the class is absent from both."""
    scores: dict[str, float | None] = {}
    for c in range(1, classes):
        p, t = prediction == c, truth == c
        total = int(p.sum() + t.sum())
        scores[CLASSES[c]] = None if total == 0 else round(2.0 * float((p & t).sum()) / total, 4)
    return scores


def evaluate_cases(model: torch.nn.Module, card: ModelCard, cases: list[Case]) -> dict[str, float | None]:
    """Mean Dice per class over cases (classes absent everywhere give None)."""
    per_case = [dice_per_class(predict_volume(model, case.ct, preprocess=card.preprocess, device="cpu"), case.labels)
                for case in cases]
    means = {}
    for name in CLASSES[1:]:
        values = [d[name] for d in per_case if d[name] is not None]
        means[name] = round(float(np.mean(values)), 4) if values else None
    return means


def _sample_batch(cases: list[Case], card: ModelCard, rng: np.random.Generator, batch: int, crop: int):
    """Random crops of random slices; 3 in 4 slices hold kidney."""
    xs, ys = [], []
    for _ in range(batch):
        case = cases[rng.integers(len(cases))]
        with_kidney = np.flatnonzero(case.labels.reshape(case.labels.shape[0], -1).any(1))
        s = rng.choice(with_kidney) if with_kidney.size and rng.random() < 0.75 else rng.integers(case.ct.shape[0])
        image, label = case.ct[s], case.labels[s]
        pad = [(0, max(0, crop - n)) for n in image.shape]
        image, label = np.pad(image, pad, mode="edge"), np.pad(label, pad)
        r, c = (int(rng.integers(0, n - crop + 1)) for n in image.shape)
        scale = rng.uniform(0.95, 1.05)
        xs.append(image[r:r + crop, c:c + crop] * scale + rng.normal(scale=5))
        ys.append(label[r:r + crop, c:c + crop])
    x = card.preprocess(torch.from_numpy(np.stack(xs).astype(np.float32)))
    return x, torch.from_numpy(np.stack(ys).astype(np.int64))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes."""
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum((0, 2, 3))
    dice = (2 * inter + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return ce + (1 - dice.mean())


def train_default_model(out: str | os.PathLike, data_dir: str | os.PathLike | None, *, steps: int = 1600,
                        max_minutes: float = 20.0, seed: int = 0, widths: tuple[int, ...] = DEFAULT_WIDTHS,
                        phantoms: int = 48, batch: int = 12, crop: int = 112, lr: float = 2e-3) -> Path:
    """Train the U-Net, evaluate it and write ``out`` (safetensors) with its card.

    Args:
        out: Path of the .safetensors file to write (the card goes beside it).
        data_dir: Folder of the shared real CT, or None to train on phantoms only.
        steps: Optimiser steps (the same seed and steps give the same model).
        max_minutes: A safety stop: training ends early, and the card says so, past this.
        seed: Seeds torch and numpy; the same seed gives the same data.
        widths: U-Net widths; phantoms, batch, crop, lr: training settings.

    Returns:
        The path written.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = UNet2D(1, len(CLASSES), widths)
    card = unet_card(model, "seghirescam-kidney-unet", CLASSES, hu_clip=HU_CLIP, mean=MEAN, std=STD,
                     synonyms=CLASS_SYNONYMS, preferred_classes=PREFERRED_CLASSES)
    cases = [phantom_case(1000 + i, rng) for i in range(phantoms)]
    validation = [phantom_case(s, np.random.default_rng(s)) for s in VALIDATION_SEEDS]
    held_out = None
    if data_dir is not None:
        real_train, held_out = real_ct_cases(data_dir, HELD_OUT_SLAB, rng)
        cases += real_train
    log.info("training on %d cases (%d slices)", len(cases), sum(c.ct.shape[0] for c in cases))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    deadline, step, started = time.monotonic() + 60 * max_minutes, 0, time.monotonic()
    model.train()
    while step < steps and time.monotonic() < deadline:
        x, y = _sample_batch(cases, card, rng, batch, crop)
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = _loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            log.info("step %d  loss %.4f  %.1f min", step, loss.item(), (time.monotonic() - started) / 60)
    model.eval()
    metrics = {"dice_held_out_phantoms": evaluate_cases(model, card, validation),
               "held_out_phantom_seeds": list(VALIDATION_SEEDS)}
    if held_out is not None:
        metrics["dice_held_out_real_ct_slab"] = evaluate_cases(model, card, [held_out])
        metrics["real_ct_slab"] = f"axial slices {HELD_OUT_SLAB[0]}..{HELD_OUT_SLAB[1] - 1} of example_ct (display order)"
    training = {
        "data": (f"{phantoms} procedural phantoms (seghirescam.synthetic.phantom, seeds 1000..{999 + phantoms}, in-plane 2.2-3.4 mm)"
                 + ("; the shared real non-contrast CT (TotalSegmentator example, kidneys from its labels 2 and 3) in "
                    "6 copies with synthetic tumors/cysts inserted, slices outside the held-out slab" if held_out else "")),
        "steps": step, "steps_planned": steps, "batch": batch, "crop": crop, "optimiser": f"AdamW lr {lr} cosine", "seed": seed,
        "minutes": round((time.monotonic() - started) / 60, 1), "device": f"cpu, {torch.get_num_threads()} threads",
        "command": f"seghirescam train --out {Path(out).name} --seed {seed} --steps {steps}",
        "loss": "cross-entropy + soft Dice", "note": ("no real tumors or cysts were seen in training: lesions are "
                                                      "synthetic; the model is a demonstration model, not for clinical use"),
    }
    card = ModelCard(**{**card.__dict__, "training": training, "metrics": metrics})
    path = save_model(model, card, out)
    log.info("wrote %s; metrics %s", path, metrics)
    return path
