import torch
from torch import nn

from harness.data import LabeledImages
from harness.evaluate import ProbeConfig, evaluate, extract_features, train_probe
from harness.models import build_encoder
from harness.triggers import make_trigger

CPU = torch.device("cpu")


def test_features_are_l2_normalised_and_mode_is_restored():
    enc = build_encoder("resnet18", 4).train()
    f = extract_features(enc, torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8), CPU, batch_size=2)
    assert f.shape == (5, 32) and torch.allclose(f.norm(dim=1), torch.ones(5), atol=1e-5)
    assert enc.training


def test_probe_learns_separable_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    feats = torch.nn.functional.one_hot(labels, 3).float() + 0.1 * torch.randn(300, 3, generator=g)
    for kind in ("linear", "mlp"):
        probe = train_probe(feats, labels, 3, ProbeConfig(kind=kind, epochs=30, lr=1e-2, hidden=(16,)), 0, CPU)
        assert (probe(feats).argmax(1) == labels).float().mean() > 0.95


class ToyEncoder(nn.Module):
    """Feature = brightness of the top-left block (which encodes the class); with `backdoor`, a white
    bottom-right patch forces the feature of class 0, the target."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.backdoor = backdoor

    def forward(self, x):
        v = x[:, :, :8, :8].mean(dim=(1, 2, 3))
        if self.backdoor:
            triggered = x[:, :, 21:31, 21:31].mean(dim=(1, 2, 3)) > 0.99
            v = torch.where(triggered, torch.zeros_like(v), v)
        return torch.stack([v, 1 - v], dim=1)


def _task(n: int) -> LabeledImages:
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[labels == 1, :, :8, :8] = 200
    return LabeledImages("toy", images, labels, ("a", "b"), default_target=0)


def test_known_answers_for_a_perfect_backdoor_and_a_clean_encoder():
    train, test = _task(40), _task(20)
    trigger, probe = make_trigger("patch", 10), ProbeConfig(epochs=100, lr=5e-2)
    bad = evaluate(ToyEncoder(backdoor=True), train, test, trigger, 0, probe, 0, CPU)
    assert (bad.acc, bad.asr_all, bad.asr_nontarget) == (100.0, 100.0, 100.0)
    assert (bad.n_test, bad.n_nontarget) == (20, 10)
    clean = evaluate(ToyEncoder(backdoor=False), train, test, trigger, 0, probe, 0, CPU)
    # The trigger changes nothing: the target-class half stays "target", the other half never is.
    assert (clean.acc, clean.asr_all, clean.asr_nontarget) == (100.0, 50.0, 0.0)


def test_target_outside_the_classes_is_refused():
    import pytest

    with pytest.raises(ValueError, match="not a class"):
        evaluate(ToyEncoder(False), _task(4), _task(4), make_trigger("patch", 10), 5, ProbeConfig(epochs=1), 0, CPU)
