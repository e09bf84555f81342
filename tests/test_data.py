import gzip
import struct

import numpy as np
import pytest
import torch

from harness.data import DatasetNotFound, LabeledImages, fingerprint, lift_gray, read_idx, resize_uint8
from harness.registry import DATASETS


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.fixture
def fake_fmnist(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_fmnist_reads_torchvision_layout(fake_fmnist):
    train = DATASETS.get("fmnist").fn(fake_fmnist, "train")
    test = DATASETS.get("fmnist").fn(fake_fmnist, "test")
    assert train.images.shape == (12, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == [0, 1, 2, 3, 4]
    assert train.num_classes == 10 and 0 <= train.default_target < 10


def test_fmnist_prefers_the_given_root_over_debians_copy(fake_fmnist):
    assert len(DATASETS.get("fmnist").fn(fake_fmnist, "test")) == 5


def test_fmnist_missing_is_a_one_line_error_saying_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.data.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DatasetNotFound, match="dataset-fashion-mnist") as e:
        DATASETS.get("fmnist").fn(tmp_path, "train")
    assert "\n" not in str(e.value)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)


def test_idx_of_another_type_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(path)


def test_digits_split_is_fixed_disjoint_and_lifted():
    train, test = DATASETS.get("digits").fn(None, "train"), DATASETS.get("digits").fn(None, "test")
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (3, 32, 32)
    assert fingerprint(train.images) == fingerprint(DATASETS.get("digits").fn(None, "train").images)
    flat_train = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in flat_train for x in test.images[:50])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="splits: train, test"):
        DATASETS.get("digits").fn(None, "validation")


def test_lift_gray_centres_and_repeats():
    x = torch.full((2, 28, 28), 7, dtype=torch.uint8)
    out = lift_gray(x)
    assert out.shape == (2, 3, 32, 32)
    assert out[:, :, 2:30, 2:30].eq(7).all() and out[:, :, :2].eq(0).all() and out[:, :, :, 30:].eq(0).all()


def test_resize_keeps_uniform_colour():
    x = torch.full((1, 3, 96, 96), 200, dtype=torch.uint8)
    assert resize_uint8(x).eq(200).all() and resize_uint8(x).shape == (1, 3, 32, 32)


def test_labeled_images_checks_shapes():
    with pytest.raises(ValueError, match="uint8"):
        LabeledImages("x", torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), ("a",), 0)
    with pytest.raises(ValueError, match="labels"):
        LabeledImages("x", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ("a",), 0)
