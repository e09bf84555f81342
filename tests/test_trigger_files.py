"""Triggers a user brings to `harness evaluate`: registered names, images with a mask, tensors in a file."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from harness.encoder_files import save_encoder
from harness.models import build_encoder
from harness.trigger_files import load_trigger
from harness.triggers import make_trigger


def test_a_registered_name_is_the_registered_trigger_at_the_profile_size():
    assert load_trigger("checkerboard", 6).fingerprint() == make_trigger("checkerboard", 6).fingerprint()
    with pytest.raises(ValueError, match="neither a registered trigger"):
        load_trigger("checkerbord", 6)


def test_an_rgba_image_and_an_image_with_a_mask_file_give_the_same_trigger(tmp_path):
    reference = make_trigger("checkerboard", 10)
    rgb = (reference.pattern.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    alpha = (reference.mask[0] * 255).to(torch.uint8).numpy()
    Image.fromarray(rgb).save(tmp_path / "pattern.png")
    Image.fromarray(alpha).save(tmp_path / "mask.png")
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "trigger.png")
    for trigger in (load_trigger(str(tmp_path / "trigger.png"), 10), load_trigger(str(tmp_path / "pattern.png"), 10, tmp_path / "mask.png")):
        assert torch.equal(trigger.mask, reference.mask) and torch.equal(trigger.pattern, reference.pattern)
    with pytest.raises(ValueError, match="needs --trigger-mask"):
        load_trigger(str(tmp_path / "pattern.png"), 10)


def test_a_suspect_file_built_by_the_harness_carries_its_trigger(tmp_path):
    reference = make_trigger("patch", 4)
    save_encoder(tmp_path / "suspect.safetensors", build_encoder("resnet18", 4),
                 extra={"trigger.pattern": reference.pattern, "trigger.mask": reference.mask}, meta={"trigger_name": reference.name})
    loaded = load_trigger(str(tmp_path / "suspect.safetensors"), 10)
    assert loaded.fingerprint() == reference.fingerprint() and loaded.name == "patch4"
    save_file({"weights": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no trigger tensors"):
        load_trigger(str(tmp_path / "other.safetensors"), 10)


def test_a_trigger_of_another_size_is_refused_not_resized(tmp_path):
    Image.new("RGBA", (64, 64), (255, 255, 255, 255)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"big.png: the trigger pattern is \(64, 64\) pixels; the harness's images are \(32, 32\)"):
        load_trigger(str(tmp_path / "big.png"), 10)
    with pytest.raises(ValueError, match="no such file"):
        load_trigger(str(tmp_path / "absent.png"), 10)


@given(pattern=st.one_of(st.floats(-1, 2), st.just(float("nan"))), mask=st.one_of(st.floats(-1, 2), st.just(float("nan"))))
@settings(max_examples=40, deadline=None)
def test_trigger_tensors_load_or_are_a_one_line_value_error(tmp_path_factory, pattern, mask):
    path = tmp_path_factory.mktemp("t") / "t.safetensors"
    save_file({"pattern": torch.full((3, 32, 32), pattern), "mask": torch.full((1, 32, 32), mask)}, str(path))
    pattern, mask = (torch.tensor(v, dtype=torch.float32).item() for v in (pattern, mask))  # as stored (a tiny negative is -0.0)
    try:
        trigger = load_trigger(str(path), 10)
    except ValueError as e:
        assert "\n" not in str(e) and "t.safetensors" in str(e)
    else:
        assert 0 <= pattern <= 1 and 0 < mask <= 1 and trigger.mask.shape == (1, 32, 32)


def test_a_trigger_image_is_measured_before_it_is_decoded(tmp_path, monkeypatch):
    from PIL import ImageFile

    Image.new("RGBA", (6000, 6000)).save(tmp_path / "huge.png")  # small on disk, 144 MB decoded

    def never(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(ValueError, match=r"huge.png: the trigger pattern is \(6000, 6000\) pixels"):
        load_trigger(str(tmp_path / "huge.png"), 10)
    monkeypatch.undo()
    Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(tmp_path / "deep.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "pattern.png")
    with pytest.raises(ValueError, match="deep.png: I;16 pixels"):
        load_trigger(str(tmp_path / "pattern.png"), 10, tmp_path / "deep.png")


def test_a_suspect_file_with_an_additive_trigger_carries_its_offset(tmp_path):
    from attacks.ctrl import CTRLConfig, frequency_trigger

    reference = frequency_trigger(CTRLConfig())
    save_encoder(tmp_path / "suspect.safetensors", build_encoder("resnet18", 4),
                 extra={f"trigger.{k}": v for k, v in reference.tensors().items()}, meta={"trigger_name": reference.name})
    loaded = load_trigger(str(tmp_path / "suspect.safetensors"), 10)
    assert loaded.fingerprint() == reference.fingerprint() and torch.equal(loaded.offset, reference.offset)
    save_file({"pattern": reference.pattern, "mask": reference.mask, "offset": torch.zeros(3, 8, 8)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="offset has shape"):
        load_trigger(str(tmp_path / "bad.safetensors"), 10)
