"""The flow end to end at micro size: caching, determinism, and the defense boundary."""

import inspect
import json

import pytest
import torch

from harness.store import ArtifactStore
from harness.contract import AttackNotApplicable, CleanSubset, DefenseResult
from harness.models import Encoder
from harness.pipeline import CLEAN, RANDOM, SUSPECT_FILE, UNDEFENDED, Workbench, scenarios_of
from harness.profiles import get_profile, with_overrides
from harness.registry import DEFENSES, Entry
from harness.rowspec import RowSpec
from tests.test_plugin import MICRO_FIELDS

FORBIDDEN = {"trigger", "target", "labels", "label", "poisoned", "attack", "downstream"}


def test_scenarios_apply_to_attacks_on_the_profiles_trigger_only():
    scenarios = ("patch", "checkerboard")
    assert scenarios_of("badencoder", scenarios) == scenarios
    assert scenarios_of("adaptive", scenarios) == scenarios
    assert scenarios_of("bassl", scenarios) == ("",)  # BASSL pastes its own colour patch
    assert scenarios_of(SUSPECT_FILE, scenarios) == ("",)  # a user's suspect comes with its trigger


@pytest.fixture(scope="module")
def micro_profile():
    return with_overrides(get_profile("tiny"), MICRO_FIELDS)


@pytest.fixture
def bench(micro_profile, tmp_path):
    return Workbench(micro_profile, ArtifactStore(tmp_path / "cache"), torch.device("cpu"))


@pytest.fixture
def spy(monkeypatch):
    """A defense that records what it was handed and returns the suspect unchanged."""
    calls = []

    def spy_defense(suspect, clean, budget, seed, config=None):
        calls.append({"suspect": suspect, "clean": clean, "budget": budget, "seed": seed})
        return DefenseResult(suspect, {"seen": len(clean)})

    monkeypatch.setitem(DEFENSES._entries, "spy", Entry("spy", spy_defense, None, __name__))
    return calls


def test_defense_receives_only_a_fresh_suspect_clean_images_and_budget(bench, spy):
    suspect = bench.suspect("badencoder", "fmnist", 0)
    row = bench.row(RowSpec("t", "badencoder", "spy", "fmnist", 0))
    (call,) = spy
    assert isinstance(call["suspect"], Encoder) and call["suspect"] is not suspect.built.encoder
    assert not hasattr(call["suspect"], "trigger") and not hasattr(call["suspect"], "target")
    assert isinstance(call["clean"], CleanSubset) and set(vars(call["clean"])) == {"images"}
    assert set(vars(call["budget"])) == {"fraction", "batch_size", "lr", "device", "precision"}
    # The clean subset is a share of the pre-training images: no triggered or downstream image reaches it.
    n = len(call["clean"])
    assert n == bench.profile.clean_size and torch.equal(call["clean"].images, bench.pretrain_images[:n])
    assert not (suspect.trigger.stamp(call["clean"].images) == call["clean"].images).all(dim=(1, 2, 3)).any()
    assert row.defense == "spy" and row.settings.defense_meta["seen"] == n


@pytest.mark.parametrize("name", DEFENSES.names() or [pytest.param(None, marks=pytest.mark.skip(reason="no defense registered yet"))])
def test_no_defense_signature_can_carry_attack_knowledge(name):
    params = set(inspect.signature(DEFENSES.get(name).fn).parameters)
    assert params == {"suspect", "clean", "budget", "seed", "config"}
    assert not params & FORBIDDEN


def test_same_seed_same_rows_and_cache_is_reused(micro_profile, tmp_path):
    first = Workbench(micro_profile, ArtifactStore(tmp_path / "a"), torch.device("cpu")).row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0))
    again_store = ArtifactStore(tmp_path / "a")
    again = Workbench(micro_profile, again_store, torch.device("cpu")).row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0))
    fresh = Workbench(micro_profile, ArtifactStore(tmp_path / "b"), torch.device("cpu")).row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0))
    assert first == again == fresh  # seconds are not compared
    assert again_store.builds == 0 and again_store.hits >= 3


def test_another_seed_gives_another_encoder(bench):
    a, b = bench.clean_encoder(0), bench.clean_encoder(1)
    assert a.key != b.key
    assert not torch.equal(a.encoder.stem[0].weight, b.encoder.stem[0].weight)


def test_an_attack_row_carries_its_positive_control_and_exposure_and_the_controls_do_not(bench):
    row = bench.row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0))
    settings = row.settings
    assert row.implanted == (row.asr_all >= bench.profile.implant_asr_all)
    assert settings.control["undefended_asr_all"] == pytest.approx(row.asr_all, abs=1e-3)
    assert row.exposure == pytest.approx(settings.exposure["exposure"], abs=1e-3)
    assert set(settings.exposure) == {"suspect", "clean_encoder", "exposure"} and row.scenario == bench.trigger().name
    random = bench.row(RowSpec("t", RANDOM, UNDEFENDED, "fmnist", 0))
    clean = bench.row(RowSpec("t", CLEAN, UNDEFENDED, "fmnist", 0))
    assert random.implanted is None and random.exposure is None and clean.implanted is None
    assert bench.random_encoder(0).key != bench.clean_encoder(0).key


def test_a_scenario_is_the_trigger_the_attack_and_its_controls_use(bench):
    row = bench.row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0, scenario="checkerboard"))
    control = bench.row(RowSpec("t", CLEAN, UNDEFENDED, "fmnist", 0, scenario="checkerboard"))
    assert row.scenario == control.scenario == bench.trigger("checkerboard").name != bench.trigger().name
    assert row.identity != bench.row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0)).identity


def test_rows_record_the_resolved_profile(micro_profile, tmp_path):
    from harness.profiles import changed_fields, resolved_id

    bench = Workbench(micro_profile, ArtifactStore(tmp_path / "c"), torch.device("cpu"))
    row = bench.row(RowSpec("t", CLEAN, UNDEFENDED, "fmnist", 0))
    assert row.profile == resolved_id(micro_profile) != "tiny" and row.profile.startswith("tiny+")
    assert row.settings.profile_changes == json.loads(json.dumps(changed_fields(micro_profile), default=str))


def test_clean_control_uses_the_profile_trigger_and_dataset_target(bench):
    row = bench.row(RowSpec("t", CLEAN, UNDEFENDED, "digits", 0))
    assert row.attack == CLEAN and row.settings.target == 1 and row.settings.trigger["name"] == bench.trigger().name


def test_downstream_split_is_disjoint_from_pretraining(bench):
    train, _ = bench.downstream("fmnist")
    pre = {bytes(x.numpy()) for x in bench.pretrain_images}
    assert sum(bytes(x.numpy()) in pre for x in train.images) <= 2  # Fashion-MNIST holds a few duplicate images


def test_clean_ratio_is_checked(bench):
    with pytest.raises(ValueError, match="clean ratio"):
        bench.clean_subset(1.5)


def test_a_supervised_attack_is_read_as_a_classifier(bench, spy):
    quick = {"epochs": 1}
    undefended = bench.row(RowSpec("t", "badnets", UNDEFENDED, "fmnist", 0, attack_overrides=quick))
    assert undefended.settings.classifier == "the attack's head" and undefended.settings.trigger["name"] == "checkerboard3"
    defended = bench.row(RowSpec("t", "badnets", "spy", "fmnist", 0, attack_overrides=quick))
    (call,) = spy
    assert isinstance(call["clean"], CleanSubset) and set(vars(call["clean"])) == {"images"}  # no labels reach the defense
    assert defended.settings.classifier == "head refitted on the labelled clean subset"
    assert undefended.n_test == defended.n_test == bench.downstream("fmnist")[1].images.shape[0]
    control = bench.row(RowSpec("t", "badnets", UNDEFENDED, "fmnist", 0, attack_overrides=quick, refit_head=True))
    assert control.settings.classifier == "head refitted on the labelled clean subset" and control.settings.defense_meta == {}
    with pytest.raises(ValueError, match="refit_head"):
        bench.row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0, refit_head=True))
    with pytest.raises(AttackNotApplicable):
        bench.row(RowSpec("t", "badnets", UNDEFENDED, "digits", 0, attack_overrides=quick))


def test_poisoned_clean_subset_stamps_exactly_the_share(bench):
    trigger = bench.trigger()
    plain = bench.clean_subset()
    poisoned = bench.clean_subset(poisoned=(trigger, 0.25))
    stamped = (poisoned.images != plain.images).flatten(1).any(1)
    assert int(stamped.sum()) == round(0.25 * len(plain)) and torch.equal(poisoned.images[stamped], trigger.stamp(plain.images[stamped]))
    assert torch.equal(bench.clean_subset(poisoned=(trigger, 0.0)).images, plain.images)
    with pytest.raises(ValueError, match="poisoned share"):
        bench.clean_subset(poisoned=(trigger, 1.5))


def test_a_changed_profile_shares_the_store_and_data(bench):
    other = bench.with_profile(trigger_size=3)
    assert other.store is bench.store and other.profile.trigger_size == 3 and other.trigger().describe()["pixels"] == 9
    assert torch.equal(other.pretrain_images, bench.pretrain_images)
    assert other.clean_encoder(0).key == bench.clean_encoder(0).key  # the trigger does not touch pre-training
