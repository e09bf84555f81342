"""The user's own encoder files in the suites: a suspect in place of the attack, a clean encoder in place of pre-training."""

import pytest
import torch
import torchvision
from torch import nn

from harness.encoder_files import save_encoder
from harness.store import ArtifactStore
from harness.contract import AttackNotApplicable, CleanSubset, DefenseResult
from harness.geometry import GeometryEncoder, unwrap
from harness.models import Encoder
from harness.options import OptionError, resolve
from harness.planner import chosen_attacks
from harness.pipeline import CLEAN, UNDEFENDED, Workbench, brings_own_trigger
from harness.profiles import get_profile, with_overrides
from harness.registry import DEFENSES, Entry
from harness.rowspec import RowSpec
from harness.triggers import make_trigger
from harness.user_encoders import SUSPECT_FILE, UserEncoders
from tests.test_plugin import MICRO_FIELDS

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def micro_profile():
    return with_overrides(get_profile("tiny"), MICRO_FIELDS)


@pytest.fixture
def spy(monkeypatch):
    """A defense that records what it was handed and returns the suspect unchanged."""
    calls = []

    def spy_defense(suspect, clean, budget, seed, config=None):
        calls.append({"suspect": suspect, "clean": clean, "budget": budget, "seed": seed})
        return DefenseResult(suspect, {})

    monkeypatch.setitem(DEFENSES._entries, "spy", Entry("spy", spy_defense, None, __name__))
    return calls


@pytest.fixture
def attacked(micro_profile, tmp_path):
    """The micro profile's BadEncoder suspect, written to a file as a user would hold it."""
    bench = Workbench(micro_profile, ArtifactStore(tmp_path / "cache"), CPU)
    suspect = bench.suspect("badencoder", "fmnist", 0)
    path = tmp_path / "downloaded.safetensors"
    save_encoder(path, suspect.built.encoder)
    return bench, suspect, path


def cifar_resnet18() -> nn.Module:
    """A torchvision ResNet-18 with the CIFAR stem: its layout takes CIFAR-normalised 32x32 input."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def test_a_suspect_file_is_evaluated_as_the_attack_it_came_from_and_a_defense_sees_only_a_fresh_copy(attacked, spy, tmp_path):
    bench, suspect, path = attacked
    users = Workbench(bench.profile, bench.store, CPU, user=UserEncoders(path, suspect.trigger, suspect.target))
    row = users.row(RowSpec("t", SUSPECT_FILE, UNDEFENDED, "fmnist", 0))
    attack_row = bench.row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0))
    assert row.attack == SUSPECT_FILE and (row.acc, row.asr_all, row.asr_nontarget) == (attack_row.acc, attack_row.asr_all, attack_row.asr_nontarget)
    assert row.implanted == attack_row.implanted and row.exposure == pytest.approx(attack_row.exposure)

    defended = users.row(RowSpec("t", SUSPECT_FILE, "spy", "fmnist", 0))
    (call,) = spy
    assert isinstance(call["suspect"], Encoder) and not hasattr(call["suspect"], "trigger") and not hasattr(call["suspect"], "target")
    assert isinstance(call["clean"], CleanSubset) and set(vars(call["clean"])) == {"images"}
    assert set(vars(call["budget"])) == {"fraction", "batch_size", "lr", "device", "precision"}
    n = len(call["clean"])
    assert torch.equal(call["clean"].images, bench.pretrain_images[:n])  # the defender's clean share, nothing of the trigger
    for name, weight in suspect.built.encoder.state_dict().items():
        assert torch.equal(call["suspect"].state_dict()[name], weight)
    assert defended.asr_all == row.asr_all  # the spy returned the encoder unchanged


def test_a_clean_file_replaces_pre_training_behind_its_layouts_geometry(micro_profile, spy, tmp_path):
    path = tmp_path / "clean.pth"
    model = cifar_resnet18().eval()
    torch.save(model.state_dict(), path)
    bench = Workbench(micro_profile, ArtifactStore(tmp_path / "cache"), CPU, user=UserEncoders(clean=path))
    clean = bench.clean_encoder(0)
    assert clean.key == bench.clean_encoder(1).key  # one file for every seed
    assert isinstance(clean.encoder, GeometryEncoder) and clean.encoder.config.geometry.size == 32
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1), torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(clean.encoder.eval()(x), model((x - mean) / std), atol=1e-5)
    fresh = bench.random_encoder(0).encoder
    assert isinstance(fresh, GeometryEncoder) and type(unwrap(fresh)) is type(unwrap(clean.encoder))
    assert not torch.equal(unwrap(fresh).stem[0].weight, unwrap(clean.encoder).stem[0].weight)
    # A control row, and a defense's output stored and read back behind the same geometry.
    users = Workbench(micro_profile, bench.store, CPU, user=UserEncoders(path, bench.trigger(), 0, path))
    assert users.row(RowSpec("t", CLEAN, UNDEFENDED, "fmnist", 0)).acc > 0
    users.row(RowSpec("t", SUSPECT_FILE, "spy", "fmnist", 0))
    stored = users.defend("spy", users.suspect(SUSPECT_FILE, "fmnist", 0).built, 0).encoder
    assert isinstance(stored, GeometryEncoder)
    with torch.no_grad():
        assert torch.allclose(stored.eval()(x), model((x - mean) / std), atol=1e-5)
    # The geometry options replace the layout's, as `harness scan --image-size --mean --std` do.
    raw = UserEncoders(clean=path, image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    given = Workbench(micro_profile, bench.store, CPU, user=raw).clean_encoder(0)
    assert given.key != clean.key and given.encoder.config.geometry == raw.read(path).geometry
    with torch.no_grad():
        small = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
        assert torch.allclose(given.encoder.eval()(x), model(small), atol=1e-5)


def test_a_suspect_file_has_one_trigger_so_an_attack_side_sweep_is_not_applicable(attacked):
    bench, suspect, path = attacked
    users = Workbench(bench.profile, bench.store, CPU, user=UserEncoders(path, suspect.trigger, suspect.target))
    with pytest.raises(AttackNotApplicable, match="one trigger"):
        users.row(RowSpec("t", SUSPECT_FILE, UNDEFENDED, "fmnist", 0, profile_changes=(("trigger_size", 3),)))
    beyond = Workbench(bench.profile, bench.store, CPU, user=UserEncoders(path, suspect.trigger, 10))
    with pytest.raises(ValueError, match="not a class of fmnist"):
        beyond.suspect(SUSPECT_FILE, "fmnist", 0)


@pytest.mark.parametrize("values, message", [
    ({"suspect": "FILE"}, "needs its trigger and its target"),
    ({"trigger": "patch", "target": "3"}, "--harness-trigger describes a suspect file"),
    ({"target": "3"}, "--harness-target describes a suspect file"),
    ({"suspect": "FILE", "trigger": "patch", "target": "3", "attack": "badencoder"}, "takes the place of the attacks"),
    ({"suspect": "missing.pth", "trigger": "patch", "target": "3"}, "no such file"),
    ({"suspect": "FILE", "trigger": "no-such-trigger", "target": "3"}, "neither a registered trigger"),
    ({"clean_encoder": "missing.pth"}, "no such file"),
    ({"image_size": "64"}, "--harness-image-size describes your encoder files"),
    ({"clean_encoder": "FILE", "image_size": "4"}, "--harness-image-size: image size must be in"),
    ({"clean_encoder": "FILE", "std": "1,0,1"}, "--harness-std: std must be positive"),
    ({"clean_encoder": "FILE", "mean": "1,2"}, "--harness-mean: takes three"),
])
def test_the_options_are_checked_together_in_one_line(values, message, tmp_path):
    present = tmp_path / "suspect.pth"
    present.write_bytes(b"")
    values = {k: str(present) if v == "FILE" else v for k, v in values.items()}
    with pytest.raises(OptionError, match=message):
        resolve(values)


def test_with_a_suspect_file_the_grid_has_one_attack_with_its_own_trigger(attacked):
    _, _, path = attacked
    settings = resolve({"suspect": str(path), "trigger": "patch", "target": "3"})
    assert chosen_attacks(settings) == [SUSPECT_FILE] and chosen_attacks(settings, supervised=True) == []
    assert brings_own_trigger(SUSPECT_FILE) and settings.user_encoders().target == 3
    assert torch.equal(settings.user_encoders().trigger.mask, make_trigger("patch", get_profile("tiny").trigger_size).mask)


def test_a_suspect_files_control_with_another_target_is_another_row(attacked, tmp_path):
    """The clean control read with the user's trigger and target 3 is not the profile's control (target 9) of the same
    trigger: a row's identity names its target where it is not the task's default, so the two are never merged."""
    bench, suspect, path = attacked
    users = Workbench(bench.profile, bench.store, CPU, user=UserEncoders(path, suspect.trigger, 3))
    profiles = users.row(RowSpec("t", CLEAN, UNDEFENDED, "fmnist", 0))
    theirs = users.row(RowSpec("t", CLEAN, UNDEFENDED, "fmnist", 0, trigger_of=SUSPECT_FILE))
    suspects = users.row(RowSpec("t", SUSPECT_FILE, UNDEFENDED, "fmnist", 0))
    assert (profiles.settings.target, theirs.settings.target, suspects.settings.target) == (9, 3, 3)
    assert profiles.identity != theirs.identity and theirs.scenario == suspects.scenario  # the finding pairs them
    assert profiles.scenario == suspect.trigger.name == "patch10"
