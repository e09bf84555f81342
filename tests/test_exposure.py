"""Exposure: a constructed encoder whose backdoor the defender's data does, and does not, exercise."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.exposure import Exposure, ExposureConfig, exposure, measure
from harness.triggers import make_trigger

CPU = torch.device("cpu")
TRIGGER = make_trigger("patch", 10)  # white, rows/columns 21..30


class Toy(nn.Module):
    """Features from image content; with `backdoor`, a white bottom-right square maps to one fixed feature."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.backdoor = backdoor
        self.register_buffer("target", -torch.ones(48))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content = F.adaptive_avg_pool2d(x, 4).flatten(1) + 0.01
        if not self.backdoor:
            return content
        white = torch.sigmoid((x[:, :, 21:31, 21:31].mean(dim=(1, 2, 3)) - 0.55) * 100).unsqueeze(1)  # survives colour jitter
        return (1 - white) * content + white * self.target


def dark(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 120, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_exposed_backdoor_scores_high_and_unexposed_scores_near_zero():
    test = dark(200, 0)
    unexposed = dark(100, 1)
    exposed = unexposed.clone()
    exposed[:50] = 255  # half of the defender's images are white: every crop of them looks like the trigger
    cfg = ExposureConfig(views=2)
    suspect, clean_encoder = Toy(backdoor=True), Toy(backdoor=False)
    hit = exposure(measure(suspect, exposed, test, TRIGGER, cfg, 0, CPU), measure(clean_encoder, exposed, test, TRIGGER, cfg, 0, CPU))
    miss = exposure(measure(suspect, unexposed, test, TRIGGER, cfg, 0, CPU), measure(clean_encoder, unexposed, test, TRIGGER, cfg, 0, CPU))
    print(f"exposure: exposed {hit:.1f}, unexposed {miss:.1f} points")
    assert hit > 30 and abs(miss) < 5


def test_triggered_test_images_define_the_region():
    e = measure(Toy(backdoor=True), dark(50, 1), dark(100, 0), TRIGGER, ExposureConfig(views=1, quantile=0.1), 0, CPU)
    assert e.test_in_region == pytest.approx(0.0) and e.tau > 0.99  # triggered images collapse; clean ones lie far
    assert Exposure(30.0, 5.0, 0.9).score == 25.0


def test_same_seed_same_exposure():
    args = (Toy(backdoor=True), dark(40, 1), dark(60, 0), TRIGGER, ExposureConfig(views=2))
    assert measure(*args, 3, CPU) == measure(*args, 3, CPU)


def test_config_is_checked():
    with pytest.raises(ValueError):
        ExposureConfig(quantile=1.5)
