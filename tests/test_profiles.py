import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.profiles import PROFILES, Profile, get_profile, with_overrides


@pytest.mark.parametrize("name", PROFILES.names())
def test_every_profile_builds_and_is_frozen(name):
    p = get_profile(name)
    assert p.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.width = 1  # type: ignore[misc]


def test_paper_profile_has_the_papers_setting():
    p = get_profile("paper")
    assert (p.width, p.pretrain, p.clean_ratio, p.probe) == (64, "cifar10", 0.04, "mlp")
    assert p.clean_size == 2000


def test_overrides_parse_by_field_type():
    p = with_overrides(get_profile("tiny"), ["ssl_epochs=3", "clean_ratio=0.05", "downstream=digits", "crop_scale=0.5,1", "shadow_with_downstream=false"])
    assert p.ssl_epochs == 3 and p.clean_ratio == 0.05 and p.downstream == ("digits",)
    assert p.crop_scale == (0.5, 1.0) and p.shadow_with_downstream is False


@pytest.mark.parametrize(
    "item, message",
    [("epochs", "field=value"), ("nope=1", "unknown profile field 'nope'"), ("ssl_epochs=two", "takes a int"),
     ("crop_scale=1", "2 comma-separated"), ("shadow_with_downstream=maybe", "true or false"), ("clean_ratio=0", "clean_ratio")],
)
def test_bad_overrides_are_clear_errors(item, message):
    with pytest.raises(ValueError, match=message):
        with_overrides(get_profile("tiny"), [item])


def test_validation_rejects_nonsense():
    with pytest.raises(ValueError, match="trigger_size"):
        Profile(name="x", trigger_size=40)
    with pytest.raises(ValueError, match="probe"):
        Profile(name="x", probe="svm")


@given(field=st.sampled_from([f.name for f in dataclasses.fields(Profile)] + ["nosuch", ""]), text=st.text(max_size=12))
@settings(max_examples=200, deadline=None)
def test_any_set_assignment_is_a_profile_or_a_value_error(field, text):
    try:
        profile = with_overrides(get_profile("tiny"), [f"{field}={text}"])
    except ValueError:
        return  # the plugin turns it into a usage error naming the field
    assert isinstance(profile, Profile) and 0 < profile.clean_ratio <= 1 and 1 <= profile.trigger_size <= 32


def test_gpu_profile_is_the_papers_encoder_and_defender_on_data_that_needs_no_download():
    p = get_profile("gpu")
    assert (p.width, p.pretrain, p.clean_size, p.probe, p.downstream) == (64, "fmnist", 2000, "mlp", ("fmnist", "digits"))
    assert p.pretrain_size + p.downstream_train_size <= 60_000  # Fashion-MNIST's train split holds both, disjoint
    assert p.budget_fraction >= 0.25
