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
    """Features from image content (in the positive orthant, as post-ReLU features are); with `backdoor`, an image
    whose bottom-right square is white maps to one fixed feature, and with `partial`, a merely bright square maps
    `partial` of the way there."""

    def __init__(self, backdoor: bool, partial: float = 0.0, level: float = 0.25, contrast: float = 0.25) -> None:
        super().__init__()
        self.backdoor, self.partial = backdoor, partial
        checker = torch.tensor([1.0, -1.0]).repeat(24)  # alternates over the pooled positions of each channel
        self.register_buffer("target", level + contrast * checker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content = F.adaptive_avg_pool2d(x, 4).flatten(1) + 0.01
        if not self.backdoor:
            return content
        square = x[:, :, 21:31, 21:31].mean(dim=(1, 2, 3))
        white = torch.sigmoid((square - 0.55) * 100)  # survives colour jitter
        if self.partial:
            white = torch.where(square > 0.97, white, self.partial * white)
        white = white.unsqueeze(1)
        return (1 - white) * content + white * self.target


def dark(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 120, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def row_exposure(suspect: nn.Module, clean: torch.Tensor, cfg: ExposureConfig = ExposureConfig(views=2)) -> float:
    reference, test = dark(150, 2), dark(200, 0)
    of = lambda encoder: measure(encoder, clean, reference, test, TRIGGER, cfg, 0, CPU)  # noqa: E731
    return exposure(of(suspect), of(Toy(backdoor=False)))


def test_exposed_backdoor_scores_high_and_unexposed_scores_near_zero():
    unexposed = dark(100, 1)
    exposed = unexposed.clone()
    exposed[:50] = 255  # half of the defender's images are white: every crop of them looks like the trigger
    hit, miss = row_exposure(Toy(backdoor=True), exposed), row_exposure(Toy(backdoor=True), unexposed)
    print(f"exposure: exposed {hit:.1f}, unexposed {miss:.1f} points")
    assert hit > 30 and abs(miss) < 5


def test_views_that_evoke_the_backdoor_partly_count_though_triggered_images_collapse_onto_one_point():
    """The flaw of a region drawn around the triggered images: they collapse, so a view the backdoor moves 70 % of
    the way to its feature lies outside any such region and the suspect scores 0 however exposed."""
    bright = dark(100, 1)
    bright[:50] = 200  # bright, not white: the suspect answers with 70 % of its backdoor feature
    hit = row_exposure(Toy(backdoor=True, partial=0.7), bright)
    assert hit > 30


def test_features_are_centred_so_the_positive_orthant_does_not_read_as_exposure():
    """A backdoor feature in the positive orthant, a pattern on the clean features' own level, is within a few
    degrees (raw cosine) of every clean feature; centred on the reference images, unexposed data scores near zero."""
    suspect = Toy(backdoor=True, level=0.24, contrast=0.05)
    content = F.adaptive_avg_pool2d(dark(100, 1).float() / 255, 4).flatten(1) + 0.01
    assert F.cosine_similarity(content, suspect.target.expand_as(content)).min() > 0.95
    assert abs(row_exposure(suspect, dark(100, 1))) < 5


def test_the_bound_lies_between_ordinary_and_triggered_images():
    e = measure(Toy(backdoor=True), dark(50, 1), dark(100, 2), dark(100, 0), TRIGGER, ExposureConfig(views=1), 0, CPU)
    assert e.reference_past_bound < 5 and 0 < e.bound < 1
    assert Exposure(30.0, 5.0, 0.5).score == 25.0


def test_same_seed_same_exposure():
    args = (Toy(backdoor=True), dark(40, 1), dark(50, 2), dark(60, 0), TRIGGER, ExposureConfig(views=2))
    assert measure(*args, 3, CPU) == measure(*args, 3, CPU)


def test_config_is_checked():
    with pytest.raises(ValueError):
        ExposureConfig(views=0)
