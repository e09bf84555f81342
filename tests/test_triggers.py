import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.registry import TRIGGERS
from harness.triggers import PatchConfig, Trigger, make_trigger, patch

images_u8 = st.integers(1, 4).flatmap(
    lambda n: st.integers(0, 2**31 - 1).map(lambda s: torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(s), dtype=torch.uint8))
)


@given(images=images_u8, size=st.integers(1, 16), margin=st.integers(0, 15))
@settings(max_examples=40, deadline=None)
def test_patch_changes_only_masked_pixels_and_is_idempotent(images, size, margin):
    if size + margin > 32:
        with pytest.raises(ValueError):
            patch(PatchConfig(size=size, margin=margin))
        return
    trig = patch(PatchConfig(size=size, margin=margin))
    out = trig.stamp(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    outside = trig.mask[0] == 0
    assert torch.equal(out[..., outside], images[..., outside])
    assert (out[..., ~outside] == 255).all()  # white
    assert torch.equal(trig.stamp(out), out)  # opaque: stamping twice = once
    assert int(trig.mask.sum()) == size * size


@given(images=images_u8, alpha=st.floats(0.0, 1.0))
@settings(max_examples=30, deadline=None)
def test_blend_is_a_convex_combination_in_float(images, alpha):
    pattern = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    trig = Trigger("blend", pattern, torch.full((1, 32, 32), alpha))
    x = images.float() / 255
    out = trig.stamp(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.allclose(out, (1 - alpha) * x + alpha * pattern, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1


def test_reference_trigger_covers_rows_and_columns_21_to_30():
    trig = make_trigger("patch", 10)
    rows, cols = torch.nonzero(trig.mask[0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (21, 30, 21, 30)
    assert trig.describe()["box"] == [21, 21, 30, 30]


def test_uint8_and_float_stamps_agree():
    trig = make_trigger("patch", 5)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal((trig.stamp(x.float() / 255) * 255).round().to(torch.uint8), trig.stamp(x))


@pytest.mark.parametrize(
    "pattern, mask, message",
    [(torch.rand(1, 32, 32), torch.ones(1, 32, 32), "pattern"), (torch.rand(3, 32, 32), torch.ones(3, 32, 32), "mask"),
     (torch.rand(3, 32, 32) + 1, torch.ones(1, 32, 32), "in \\[0, 1\\]")],
)
def test_malformed_triggers_are_refused(pattern, mask, message):
    with pytest.raises(ValueError, match=message):
        Trigger("bad", pattern, mask)


def test_stamping_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="images are"):
        make_trigger("patch", 3).stamp(torch.zeros(1, 3, 28, 28))


def test_fingerprint_tells_triggers_apart():
    assert make_trigger("patch", 3).fingerprint() != make_trigger("patch", 5).fingerprint()
    assert make_trigger("patch", 3).fingerprint() == make_trigger("patch", 3).fingerprint()


@given(images=images_u8, size=st.integers(2, 12), cell=st.integers(1, 3))
@settings(max_examples=30, deadline=None)
def test_checkerboard_is_binary_inside_the_square_and_idempotent(images, size, cell):
    from harness.triggers import CheckerboardConfig, checkerboard

    trig = checkerboard(CheckerboardConfig(size=size, cell=cell))
    out = trig.stamp(images)
    inside = trig.mask[0] == 1
    assert torch.equal(out[..., ~inside], images[..., ~inside])
    assert set(out[..., inside].unique().tolist()) <= {0, 255}
    assert 0 < int((out[..., inside] == 255).sum()) < out[..., inside].numel()  # both colours present
    assert torch.equal(trig.stamp(out), out)


def test_square_triggers_fit_the_reference_box():
    for name in ("patch", "checkerboard"):
        assert make_trigger(name, 10).describe()["box"] == [21, 21, 30, 30], name


# -- every registered family ------------------------------------------------------------

FAMILIES = TRIGGERS.names()


def test_the_issue_s_families_are_registered():
    assert {"patch", "checkerboard", "four_corners", "blend"} <= set(FAMILIES)


@given(images=images_u8, family=st.sampled_from(FAMILIES), size=st.sampled_from([3, 5, 10]))
@settings(max_examples=60, deadline=None)
def test_every_family_keeps_shape_range_and_unmasked_pixels(images, family, size):
    trig = make_trigger(family, size)
    out = trig.stamp(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    untouched = trig.mask[0] == 0
    assert torch.equal(out[..., untouched], images[..., untouched])
    x = images.float() / 255
    out_f = trig.stamp(x)
    assert out_f.min() >= 0 and out_f.max() <= 1
    assert torch.allclose(out_f, (1 - trig.mask) * x + trig.mask * trig.pattern, atol=1e-6)


@given(images=images_u8, size=st.sampled_from([3, 5, 10, 32]), alpha=st.floats(0.05, 1.0))
@settings(max_examples=30, deadline=None)
def test_blend_mixes_image_and_noise_in_the_stated_ratio(images, size, alpha):
    trig = TRIGGERS.create("blend", size=size, alpha=alpha)()
    region = trig.mask[0] > 0
    assert int(region.sum()) == size * size and torch.allclose(trig.mask[0][region], torch.tensor(alpha))
    x = images.float() / 255
    expected = (1 - alpha) * x[..., region] + alpha * trig.pattern[:, region]
    assert torch.allclose(trig.stamp(x)[..., region], expected, atol=1e-6)
    assert trig.pattern[:, region].std() > 0.2  # noise, not a flat colour


@given(size=st.integers(1, 7), margin=st.integers(0, 4))
@settings(max_examples=30, deadline=None)
def test_four_corners_puts_one_square_in_each_corner(size, margin):
    trig = TRIGGERS.create("four_corners", size=size, margin=margin)()
    mask = trig.mask[0]
    far = 32 - size - margin
    for top in (margin, far):
        for left in (margin, far):
            assert (mask[top : top + size, left : left + size] == 1).all()
    assert int(mask.sum()) == 4 * size * size


@given(family=st.sampled_from(["patch", "checkerboard"]), size=st.integers(1, 12), top=st.integers(-3, 34), left=st.integers(-3, 34))
@settings(max_examples=60, deadline=None)
def test_placed_moves_the_box_and_refuses_to_leave_the_image(family, size, top, left):
    trig = make_trigger(family, size)
    if not (0 <= top <= 32 - size and 0 <= left <= 32 - size):
        with pytest.raises(ValueError, match="does not fit"):
            trig.placed(top, left)
        return
    moved = trig.placed(top, left)
    assert moved.box() == (top, left, top + size - 1, left + size - 1)
    assert torch.equal(moved.mask.sum(), trig.mask.sum())
    t, l, _, _ = trig.box()
    assert torch.equal(moved.pattern[:, top : top + size, left : left + size], trig.pattern[:, t : t + size, l : l + size])


offsets = st.integers(0, 2**31 - 1).map(lambda s: (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) - 0.5) * 0.2)


@given(images=images_u8, offset=offsets)
@settings(max_examples=40, deadline=None)
def test_an_offset_is_added_after_the_blend_and_clamped(images, offset):
    square = make_trigger("patch", 5)
    additive = Trigger("additive", square.pattern, square.mask, offset)
    x = images.float() / 255
    expected = (square.stamp(x) + offset).clamp(0, 1)
    assert torch.allclose(additive.stamp(x), expected, atol=1e-6)
    assert (additive.stamp(images).float() - expected * 255).abs().max() <= 0.5 + 1e-3  # uint8: the same, rounded
    assert additive.fingerprint() != square.fingerprint() and additive.box() == (0, 0, 31, 31)
    back = Trigger.from_tensors("additive", additive.tensors())
    assert back.fingerprint() == additive.fingerprint()
    assert Trigger.from_tensors("patch5", square.tensors()).fingerprint() == square.fingerprint() and "offset" not in square.tensors()


def test_an_offset_is_checked():
    for bad in (torch.zeros(1, 32, 32), torch.full((3, 32, 32), 1.5), torch.full((3, 32, 32), float("nan"))):
        with pytest.raises(ValueError, match="offset"):
            Trigger("bad", torch.zeros(3, 32, 32), torch.zeros(1, 32, 32), bad)
