import torch

from harness.augment import AugmentConfig, grayscale, random_resized_crop_flip, simclr_view


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_view_keeps_shape_dtype_and_range():
    x = torch.rand(16, 3, 32, 32)
    v = simclr_view(x, AugmentConfig(), _gen())
    assert v.shape == x.shape and v.dtype == x.dtype
    assert v.min() >= 0 and v.max() <= 1


def test_same_seed_same_views_and_different_seed_differs():
    x = torch.rand(8, 3, 32, 32)
    a, b, c = (simclr_view(x, AugmentConfig(), _gen(s)) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_crop_without_flip_is_identity():
    x = torch.rand(4, 3, 32, 32)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(random_resized_crop_flip(x, cfg, _gen()), x, atol=1e-5)


def test_full_crop_with_flip_mirrors():
    x = torch.rand(4, 3, 32, 32)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(random_resized_crop_flip(x, cfg, _gen()), x.flip(-1), atol=1e-5)


def test_no_jitter_no_gray_no_crop_is_identity():
    x = torch.rand(4, 3, 32, 32)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(simclr_view(x, cfg, _gen()), x, atol=1e-5)


def test_grayscale_always_gives_equal_channels():
    x = torch.rand(4, 3, 32, 32)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=1.0)
    v = simclr_view(x, cfg, _gen())
    assert torch.allclose(v[:, 0], v[:, 1]) and torch.allclose(v[:, 1], v[:, 2])
    assert torch.allclose(v[:, :1], grayscale(x), atol=1e-6)


def test_hue_rotation_keeps_gray_images_gray():
    x = torch.rand(4, 1, 32, 32).expand(4, 3, 32, 32).contiguous()
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter=(0.0, 0.0, 0.0, 0.5), jitter_p=1.0, gray_p=0.0)
    assert torch.allclose(simclr_view(x, cfg, _gen()), x, atol=1e-4)
