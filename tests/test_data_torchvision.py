"""The torchvision-backed loaders (cifar10, stl10, svhn, gtsrb) on tiny fake datasets.

Each fixture writes a few images under tmp_path in the dataset's real on-disk
layout, the one torchvision reads, and returns what the loader should give back.
Images that reach the harness at 32x32 (CIFAR-10, SVHN) are random and must
survive exactly; images that get resized (STL-10 at 96x96, GTSRB at assorted
sizes) are two-tone, a top half and a bottom half of different colours, so the
resize keeps the colours away from the seam while a transposed or channel-swapped
read still shows.

torchvision checks CIFAR-10, STL-10 and SVHN files against the md5 sums of the
real release. The `md5_skipped` fixture swaps that check, in these tests only,
for a check that the file exists; `test_fake_files_fail_the_real_md5_check`
shows the loaders still verify checksums without it.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.stl10
import torchvision.datasets.svhn
from PIL import Image

from harness.data import DatasetNotFound, LabeledImages
from harness.registry import DATASETS

TORCHVISION_SETS = ("cifar10", "stl10", "svhn", "gtsrb")
CHECKSUMMED_SETS = ("cifar10", "stl10", "svhn")
QUARTER = 8  # rows of a 32x32 output safely clear of a two-tone image's seam


@dataclass(frozen=True)
class Split:
    """What a loader should return for one split of a fake dataset."""

    labels: np.ndarray  # (N,) int64, after torchvision's relabelling
    images: np.ndarray | None = None  # (N, 3, 32, 32) uint8, for sets stored at 32x32
    top: np.ndarray | None = None  # (N, 3) uint8 top-half colours, for resized two-tone sets
    bottom: np.ndarray | None = None  # (N, 3) uint8 bottom-half colours


@dataclass(frozen=True)
class FakeSet:
    root: Path
    splits: dict[str, Split]


def load(name: str, root: Path | None, split: str) -> LabeledImages:
    """A registered dataset's split, straight from its loader."""
    return DATASETS.get(name).fn(root, split, False)


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3), dtype=np.uint8)


def two_tone(top: np.ndarray, bottom: np.ndarray, height: int, width: int) -> np.ndarray:
    """(3, height, width) uint8: colour `top` above row height // 2, `bottom` from there down."""
    image = np.empty((3, height, width), dtype=np.uint8)
    image[:, : height // 2] = top[:, None, None]
    image[:, height // 2 :] = bottom[:, None, None]
    return image


@pytest.fixture
def md5_skipped(monkeypatch):
    """Accept any existing file where torchvision would compare it with the real release's md5."""

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", exists)


def assert_loaded(data: LabeledImages, name: str, split: Split) -> None:
    """The loader's contract: uint8 (N, 3, 32, 32), the written labels as int64, the written pixels."""
    n = len(split.labels)
    assert isinstance(data, LabeledImages) and data.name == name
    assert data.images.dtype == torch.uint8 and data.images.shape == (n, 3, 32, 32)
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == split.labels.tolist()
    assert 0 <= data.default_target < data.num_classes
    if split.images is not None:
        assert torch.equal(data.images, torch.from_numpy(split.images))
    else:
        top = torch.from_numpy(split.top)[:, :, None, None].expand(n, 3, QUARTER, 32)
        bottom = torch.from_numpy(split.bottom)[:, :, None, None].expand(n, 3, QUARTER, 32)
        assert torch.equal(data.images[:, :, :QUARTER], top)
        assert torch.equal(data.images[:, :, -QUARTER:], bottom)


# -- CIFAR-10 -------------------------------------------------------------------------

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A CIFAR-10 python batch: a pickled dict whose "data" is uint8 (N, 3072), each row
    an image's red, green, then blue 32x32 plane in row-major order, and "labels" a list
    of ints. The real files are Python 2 pickles; torchvision's latin1 unpickling turns
    their byte-string keys into the str keys written here."""
    write_pickle(path, {"batch_label": path.name, "data": images.reshape(len(images), 3072), "labels": labels.tolist()})


@pytest.fixture
def fake_cifar10(tmp_path) -> FakeSet:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_pickle(folder / "batches.meta", {"label_names": CIFAR_CLASSES, "num_cases_per_batch": 2, "num_vis": 3072})
    train_images, train_labels = random_images(rng, 10), rng.integers(0, 10, 10)
    for batch in range(5):  # two images in each of data_batch_1..5, read in that order
        rows = slice(2 * batch, 2 * batch + 2)
        write_cifar_batch(folder / f"data_batch_{batch + 1}", train_images[rows], train_labels[rows])
    test_images, test_labels = random_images(rng, 3), np.array([9, 0, 4])
    write_cifar_batch(folder / "test_batch", test_images, test_labels)
    return FakeSet(tmp_path, {"train": Split(train_labels, train_images), "test": Split(test_labels, test_images)})


@pytest.mark.usefixtures("md5_skipped")
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_reads_pickled_batches(fake_cifar10, split):
    data = load("cifar10", fake_cifar10.root, split)
    assert_loaded(data, "cifar10", fake_cifar10.splits[split])
    assert data.classes == tuple(CIFAR_CLASSES)


# -- STL-10 ---------------------------------------------------------------------------

STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10_images(path: Path, images: np.ndarray) -> None:
    """STL-10's *_X.bin: raw uint8, no header, each image 3 x 96 x 96 with every channel
    stored column by column (column-major), hence the swap of the last two axes."""
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def write_stl10_labels(path: Path, labels: np.ndarray) -> None:
    """STL-10's *_y.bin: one uint8 per image, classes numbered from 1."""
    path.write_bytes((labels + 1).astype(np.uint8).tobytes())


def stl10_split(rng: np.random.Generator, n: int, labels: np.ndarray) -> tuple[np.ndarray, Split]:
    top, bottom = random_colours(rng, n), random_colours(rng, n)
    images = np.stack([two_tone(t, b, 96, 96) for t, b in zip(top, bottom)])
    return images, Split(labels, top=top, bottom=bottom)


@pytest.fixture
def fake_stl10(tmp_path) -> FakeSet:
    rng = np.random.default_rng(1)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    (folder / "fold_indices.txt").write_text("0 1 2 3 4\n" * 10)  # ten folds of train indices; read only with folds=
    splits = {}
    for split, labels in {"train": np.array([0, 9, 3, 3, 7]), "test": np.array([1, 0, 9])}.items():
        images, splits[split] = stl10_split(rng, len(labels), labels)
        write_stl10_images(folder / f"{split}_X.bin", images)
        write_stl10_labels(folder / f"{split}_y.bin", labels)
    images, splits["unlabeled"] = stl10_split(rng, 2, np.array([-1, -1]))  # torchvision labels them -1
    write_stl10_images(folder / "unlabeled_X.bin", images)
    return FakeSet(tmp_path, splits)


@pytest.mark.usefixtures("md5_skipped")
@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_stl10_reads_binary_files(fake_stl10, split):
    assert_loaded(load("stl10", fake_stl10.root, split), "stl10", fake_stl10.splits[split])


# -- SVHN -----------------------------------------------------------------------------


def write_svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    """SVHN's {split}_32x32.mat: "X" uint8 (32, 32, 3, N), indexed row, column, channel,
    image; "y" (N, 1) uint8 with the digit 0 stored as label 10."""
    labels = np.where(digits == 0, 10, digits).astype(np.uint8)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": labels[:, None]})


@pytest.fixture
def fake_svhn(tmp_path) -> FakeSet:
    rng = np.random.default_rng(2)
    splits = {
        "train": Split(np.array([0, 1, 2, 9, 0, 5]), random_images(rng, 6)),
        "test": Split(np.array([3, 0, 8, 0]), random_images(rng, 4)),
    }
    for split, expected in splits.items():
        write_svhn_mat(tmp_path / f"{split}_32x32.mat", expected.images, expected.labels)
    return FakeSet(tmp_path, splits)


@pytest.mark.usefixtures("md5_skipped")
@pytest.mark.parametrize("split", ["train", "test"])
def test_svhn_reads_mat_files(fake_svhn, split):
    assert_loaded(load("svhn", fake_svhn.root, split), "svhn", fake_svhn.splits[split])


# -- GTSRB ----------------------------------------------------------------------------

GTSRB_CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
GTSRB_SIZES = [(30, 35), (41, 29), (32, 32), (64, 50), (29, 40)]  # (width, height), as in the real set


def write_ppm(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image.transpose(1, 2, 0)).save(path)


def gtsrb_images(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    top, bottom = random_colours(rng, n), random_colours(rng, n)
    sizes = [GTSRB_SIZES[i % len(GTSRB_SIZES)] for i in range(n)]
    return [two_tone(t, b, h, w) for t, b, (w, h) in zip(top, bottom, sizes)], top, bottom


def write_gtsrb_csv(path: Path, rows: list[tuple[str, np.ndarray, int]]) -> None:
    """GTSRB's ground-truth CSV: ";"-separated, one row per image with its size, region
    of interest and ClassId; torchvision reads only Filename and ClassId."""
    lines = [GTSRB_CSV_HEADER]
    for filename, image, class_id in rows:
        h, w = image.shape[1:]
        lines.append(f"{filename};{w};{h};1;1;{w - 2};{h - 2};{class_id}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_gtsrb(tmp_path) -> FakeSet:
    """torchvision's GTSRB layout: training images in one folder per class,
    gtsrb/GTSRB/Training/000NN/, each with its own GT-000NN.csv (ignored), and test
    images in gtsrb/GTSRB/Final_Test/Images/ labelled by gtsrb/GT-final_test.csv.
    torchvision numbers training classes by their folder's rank in sorted order,
    which is the folder's number when all 43 exist, so these use 00000..00002."""
    rng = np.random.default_rng(3)
    base = tmp_path / "gtsrb"
    train_labels = np.array([0, 0, 1, 2, 2])  # make_dataset walks class folders, then files, in sorted order
    images, top, bottom = gtsrb_images(rng, len(train_labels))
    for i, (image, label) in enumerate(zip(images, train_labels)):
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_ppm(folder / f"00000_{i:05d}.ppm", image)
        write_gtsrb_csv(folder / f"GT-{label:05d}.csv", [(f"00000_{i:05d}.ppm", image, label)])
    train = Split(train_labels, top=top, bottom=bottom)

    test_labels = np.array([16, 1, 38])
    images, top, bottom = gtsrb_images(rng, len(test_labels))
    folder = base / "GTSRB" / "Final_Test" / "Images"
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        write_ppm(folder / f"{i:05d}.ppm", image)
    rows = [(f"{i:05d}.ppm", image, label) for i, (image, label) in enumerate(zip(images, test_labels))]
    write_gtsrb_csv(base / "GT-final_test.csv", rows)
    return FakeSet(tmp_path, {"train": train, "test": Split(test_labels, top=top, bottom=bottom)})


@pytest.mark.parametrize("split", ["train", "test"])
def test_gtsrb_reads_ppm_folders_and_csv(fake_gtsrb, split):
    assert_loaded(load("gtsrb", fake_gtsrb.root, split), "gtsrb", fake_gtsrb.splits[split])


@pytest.mark.parametrize(
    "leave",
    ["gtsrb/GTSRB/Training", "gtsrb/GTSRB/Training/00000", "gtsrb/GTSRB/Final_Test/Images"],
    ids=["no-class-folders", "no-images", "no-ground-truth-csv"],
)
def test_gtsrb_partial_extraction_raises_dataset_not_found(tmp_path, leave):
    (tmp_path / leave).mkdir(parents=True)
    split = "test" if "Final_Test" in leave else "train"
    with pytest.raises(DatasetNotFound, match=r"^gtsrb:"):
        load("gtsrb", tmp_path, split)


# -- all four ---------------------------------------------------------------------------


@pytest.mark.usefixtures("md5_skipped")
@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_train_and_test_are_different_files(request, name):
    fake = request.getfixturevalue(f"fake_{name}")
    train, test = load(name, fake.root, "train"), load(name, fake.root, "test")
    assert (len(train), len(test)) == (len(fake.splits["train"].labels), len(fake.splits["test"].labels))
    assert len(train) != len(test)


@pytest.mark.parametrize("name", CHECKSUMMED_SETS)
def test_fake_files_fail_the_real_md5_check(request, name):
    fake = request.getfixturevalue(f"fake_{name}")
    with pytest.raises(DatasetNotFound, match=rf"^{name}: not found or corrupt"):
        load(name, fake.root, "train")


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_no_root_raises_dataset_not_found(name):
    with pytest.raises(DatasetNotFound, match=rf"^{name}: pass --data-root"):
        load(name, None, "train")


@pytest.mark.parametrize("name", TORCHVISION_SETS)
@pytest.mark.parametrize("missing", ["absent", "empty"])
def test_missing_files_raise_dataset_not_found(tmp_path, name, missing):
    root = tmp_path / "absent" if missing == "absent" else tmp_path
    for split in ("train", "test"):
        with pytest.raises(DatasetNotFound, match=rf"^{name}:"):
            load(name, root, split)


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_unknown_split_raises_value_error(tmp_path, name):
    with pytest.raises(ValueError, match="no split 'validation'"):
        load(name, tmp_path, "validation")
