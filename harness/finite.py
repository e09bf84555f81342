"""Non-finite values caught where they are made: an encoder's weights, and its forward pass on real images.

A file's weights can all be finite and still overflow in the forward pass (a BatchNorm
scale of 3e38); a defense can diverge (a learning rate of 1e30). Either way every
feature is NaN or infinite, and whatever reads them next answers nonsense without
failing: a cosine of NaN "finds no trigger", argmax of NaN predicts class 0 for every
image. So an encoder a user gives is checked on a probe batch of its images before
anything uses it (NonFiniteEncoder: bad input), and a defense's result before anything
stores or writes it (NonFiniteDefense: the defense failed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.models import Encoder
from harness.training import to_float

PROBE_IMAGES = 64  # enough for a BatchNorm in eval mode to show what it does to real images; a forward pass costs little


class NonFiniteEncoder(ValueError):
    """An encoder given as input whose weights or features are not finite (the message names where)."""


class NonFiniteDefense(RuntimeError):
    """A defense whose purified encoder has non-finite weights or features: nothing of it is kept."""


@torch.no_grad()
def first_non_finite(encoder: Encoder, images: Tensor) -> str | None:
    """Where `encoder` first stops being finite: a weight's name, or the stage (layer1..layer4, then the pooled feature)
    of its eval-mode forward pass on the first PROBE_IMAGES of `images` (uint8); None when all is finite."""
    device = next(encoder.parameters()).device
    if device.type == "meta":
        return None  # shapes without values (tests' stand-in for a GPU): nothing to check
    for name, tensor in (*encoder.named_parameters(), *encoder.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"the weight {name}"
    was_training = encoder.training
    encoder.eval()
    try:
        stages, pooled = encoder.forward_stages(to_float(images[:PROBE_IMAGES], device))
    finally:
        encoder.train(was_training)
    for name, value in (*stages.items(), ("pooled feature", pooled)):
        if not torch.isfinite(value).all():
            return f"the forward pass at {name}"
    return None


def check_input_encoder(encoder: Encoder, images: Tensor, what: str) -> None:
    """NonFiniteEncoder (one line) when the encoder read from `what` is not finite on `images`."""
    place = first_non_finite(encoder, images)
    if place is not None:
        raise NonFiniteEncoder(f"{what}: non-finite values in {place} on {min(len(images), PROBE_IMAGES)} of the images; "
                               "the encoder is unusable as given (overflowing weights, or a wrong --mean/--std)")


def check_defense_result(defense: str, encoder: Encoder, images: Tensor) -> None:
    """NonFiniteDefense (one line) when the encoder `defense` returned is not finite on `images`."""
    place = first_non_finite(encoder, images)
    if place is not None:
        raise NonFiniteDefense(f"the defense {defense} diverged: non-finite values in {place} of the encoder it returned "
                               f"(on {min(len(images), PROBE_IMAGES)} clean images); nothing of it was kept")
