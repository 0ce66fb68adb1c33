"""What a CAM method that needs the network itself is given: the model, the batch and one layer's A and G.

Gradient methods are functions of (A, G) alone (``CAMMethod.combine``). Methods that run the network
again (Ablation-CAM, Score-CAM, FullGrad, LIFT-CAM, CAM's head lookup) get a ``LayerContext`` instead
(``CAMMethod.model_pass``): the engine builds one per explained layer after its shared forward and
backward, so these methods reuse A, G and y_M and only add their own passes.

Arrays: x (B, C, *S), weights (B, *S), activations and gradients (B, K, *s), scores (B,); S and s are
2D or 3D spatial shapes (S padded to the model's size multiple).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from seghirescam.cam.result import ExplanationCancelled

__all__ = ["LayerContext", "target_scores"]


def target_scores(logits: torch.Tensor, weights: torch.Tensor, target_class: int) -> torch.Tensor:
    """y per batch element: the class-c logits weighted by M (or a tile's share of M) and summed.

    Args:
        logits: (N, classes, *S).
        weights: (N, *S) bool or float.
        target_class: Class c.

    Returns:
        (N,) float32.
    """
    return (logits[:, target_class].float() * weights).flatten(1).sum(1)


@dataclass(frozen=True)
class LayerContext:
    """One explained layer of one batch, for methods that run the network again.

    Attributes:
        model: The network, in eval mode, on x's device (leave it as found: hooks removed, no flags changed).
        x: The model input (B, C, *S), padded.
        weights: Each logit's weight in y (B, *S): M, or a tile's share of M.
        target_class: Class c.
        layer: The explained layer's name in ``model.named_modules()``.
        activations: A (B, K, *s) float32, detached.
        gradients: G = dy/dA (B, K, *s) float32 (zeros where y does not depend on A).
        scores: y per batch element (B,) float32: sum of weights x class-c logits.
        cancel: The run's cancel callback (or None); long methods call ``check_cancel`` between chunks.
    """

    model: nn.Module
    x: torch.Tensor
    weights: torch.Tensor
    target_class: int
    layer: str
    activations: torch.Tensor
    gradients: torch.Tensor
    scores: torch.Tensor
    cancel: Callable[[], bool] | None = None

    def check_cancel(self, done: int, total: int) -> None:
        """Raise ``ExplanationCancelled`` if the run's cancel callback says so.

        Args:
            done, total: Progress of the method's own passes, for the message.
        """
        if self.cancel is not None and self.cancel():
            raise ExplanationCancelled(f"cancelled during {self.layer!r} after {done} of {total} extra forward passes")
