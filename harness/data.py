"""Datasets as uint8 tensors in memory, one loader per dataset behind the registry.

Every loader returns `LabeledImages` with images of shape (N, 3, 32, 32), dtype
uint8: grayscale sets are lifted to three channels and padded or resized to
32x32, so every profile runs the same architecture.

- `fmnist`: Fashion-MNIST from IDX files, looked for under `--data-root` in
  torchvision's layout (ROOT/FashionMNIST/raw), under ROOT itself, then in
  Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist);
  downloaded through torchvision only when asked to.
- `digits`: scikit-learn's bundled 8x8 digits, upsampled: a second downstream
  task with a domain shift from Fashion-MNIST, available offline everywhere.
- `cifar10`, `stl10`, `gtsrb`, `svhn`: through torchvision from `--data-root`.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness.registry import DATASETS

IMAGE_SIZE = 32
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFound(FileNotFoundError):
    """A dataset missing from disk; the message says where it was looked for and how to get it."""


@dataclass(frozen=True, eq=False)
class LabeledImages:
    name: str
    images: Tensor  # (N, 3, 32, 32) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]
    default_target: int  # the class the reference attacks aim at on this task

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1:] != (3, 32, 32):
            raise ValueError(f"{self.name}: images must be uint8 (N, 3, 32, 32), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor) -> "LabeledImages":
        return LabeledImages(self.name, self.images[index], self.labels[index], self.classes, self.default_target)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def fingerprint(*tensors: Tensor) -> str:
    """Content hash of tensors, the data identity that goes into cache keys."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.contiguous().cpu()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def lift_gray(images: Tensor) -> Tensor:
    """(N, H, W) uint8 grayscale, H, W <= 32 -> (N, 3, 32, 32), centred on a black border."""
    n, h, w = images.shape
    top, left = (IMAGE_SIZE - h) // 2, (IMAGE_SIZE - w) // 2
    padded = F.pad(images, (left, IMAGE_SIZE - w - left, top, IMAGE_SIZE - h - top))
    return padded.unsqueeze(1).expand(n, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous()


def resize_uint8(images: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8, antialiased bilinear."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def hwc_to_tensor(array: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise ValueError(f"{name} has no split {split!r}; splits: {', '.join(splits)}")


# -- Fashion-MNIST ------------------------------------------------------------------

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; unsigned-byte data only. The file and what it inflates to are
    both bounded (harness/reading.py's cap for a dataset file)."""
    from harness.reading import MAX_BYTES, read_bytes

    raw = read_bytes(path, "dataset")
    if path.suffix == ".gz":
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # the gzip container
        try:
            raw = inflate.decompress(raw, MAX_BYTES["dataset"] + 1)
        except zlib.error as e:
            raise ValueError(f"{path}: not a gzip file ({e})") from None
        if len(raw) > MAX_BYTES["dataset"] or inflate.unconsumed_tail:
            raise ValueError(f"{path}: inflates to more than a dataset file may be")
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} bytes (truncated or corrupt)")
    return data.reshape(shape)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for suffix in ("", ".gz"):
            if (p := d / f"{stem}{suffix}").is_file():
                return p
    return None


@DATASETS.register("fmnist")
def fashion_mnist(root: Path | None, split: str, download: bool = False) -> LabeledImages:
    _check_split("fmnist", split, ("train", "test"))
    prefix = "train" if split == "train" else "t10k"
    dirs = [root / "FashionMNIST" / "raw", root] if root is not None else []
    dirs.append(DEBIAN_FASHION_MNIST)
    images_path = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
    if images_path is None and download:
        if root is None:
            raise DatasetNotFound("fmnist: --download needs --data-root to say where to put it")
        import torchvision

        torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        images_path = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        looked = ", ".join(str(d) for d in dirs)
        raise DatasetNotFound(
            f"fmnist: {prefix}-images/labels IDX files not found in {looked}; "
            "install Debian's dataset-fashion-mnist, or pass --data-root with --download on a machine that is online"
        )
    images = torch.from_numpy(read_idx(images_path).copy())
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"fmnist: {images_path} and {labels_path} do not match ({tuple(images.shape)}, {tuple(labels.shape)})")
    return LabeledImages("fmnist", lift_gray(images), labels, FASHION_CLASSES, default_target=9)


# -- scikit-learn digits ------------------------------------------------------------

DIGITS_TEST_SIZE = 597  # a third of the 1,797 images, fixed so the split is the same everywhere


@DATASETS.register("digits")
def digits(root: Path | None, split: str, download: bool = False) -> LabeledImages:
    _check_split("digits", split, ("train", "test"))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float() * (255.0 / 16.0)  # (1797, 8, 8), values 0..16
    images = F.interpolate(images.unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False)
    images = images.squeeze(1).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    index = order[DIGITS_TEST_SIZE:] if split == "train" else order[:DIGITS_TEST_SIZE]
    classes = tuple(str(d) for d in range(10))
    return LabeledImages("digits", lift_gray(images[index]), labels[index], classes, default_target=1)


# -- torchvision-backed sets --------------------------------------------------------


def _require_root(name: str, root: Path | None, expected: str) -> Path:
    if root is None:
        raise DatasetNotFound(f"{name}: pass --data-root, a folder holding {expected} (or add --download where online)")
    return root


def _torchvision(name: str, expected: str, build, root: Path | None, download: bool):
    root = _require_root(name, root, expected)
    try:
        return build(str(root), download)
    except (RuntimeError, FileNotFoundError) as e:  # "Dataset not found or corrupted"; a GTSRB folder without images or CSV
        raise DatasetNotFound(
            f"{name}: not found or corrupt under {root} (expected {expected}); add --download where online ({e})"
        ) from None


@DATASETS.register("cifar10")
def cifar10(root: Path | None, split: str, download: bool = False) -> LabeledImages:
    _check_split("cifar10", split, ("train", "test"))
    from torchvision.datasets import CIFAR10

    ds = _torchvision("cifar10", "cifar-10-batches-py/", lambda r, d: CIFAR10(r, train=split == "train", download=d), root, download)
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return LabeledImages("cifar10", hwc_to_tensor(ds.data), labels, tuple(ds.classes), default_target=0)


STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


@DATASETS.register("stl10")
def stl10(root: Path | None, split: str, download: bool = False) -> LabeledImages:
    _check_split("stl10", split, ("train", "test", "unlabeled"))
    from torchvision.datasets import STL10

    ds = _torchvision("stl10", "stl10_binary/", lambda r, d: STL10(r, split=split, download=d), root, download)
    images = resize_uint8(torch.from_numpy(ds.data))  # stored (N, 3, 96, 96)
    labels = torch.from_numpy(ds.labels.astype(np.int64))  # -1 for the unlabeled split
    return LabeledImages("stl10", images, labels, STL10_CLASSES, default_target=9)


@DATASETS.register("svhn")
def svhn(root: Path | None, split: str, download: bool = False) -> LabeledImages:
    _check_split("svhn", split, ("train", "test"))
    from torchvision.datasets import SVHN

    ds = _torchvision("svhn", f"{split}_32x32.mat", lambda r, d: SVHN(r, split=split, download=d), root, download)
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    return LabeledImages("svhn", torch.from_numpy(ds.data), labels, tuple(str(d) for d in range(10)), default_target=1)


@DATASETS.register("gtsrb")
def gtsrb(root: Path | None, split: str, download: bool = False) -> LabeledImages:
    _check_split("gtsrb", split, ("train", "test"))
    from torchvision.datasets import GTSRB

    ds = _torchvision("gtsrb", "gtsrb/GTSRB/", lambda r, d: GTSRB(r, split=split, download=d), root, download)
    images, labels = [], []
    for i in range(len(ds)):  # PIL images of varying size
        im, label = ds[i]
        images.append(resize_uint8(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).unsqueeze(0)))
        labels.append(label)
    if not images:
        raise DatasetNotFound(f"gtsrb: no images under {root}/gtsrb for split {split!r}")
    return LabeledImages("gtsrb", torch.cat(images), torch.tensor(labels), tuple(str(c) for c in range(43)), default_target=12)


def load_dataset(name: str, split: str, root: Path | None = None, download: bool = False) -> LabeledImages:
    """A registered dataset's split, read afresh on every call.

    Not cached: the workbench keeps only the subsets a run uses, and a whole
    split held for the session would stay resident (Fashion-MNIST's train and
    test splits as 32x32 RGB: 215 MB) through every training stage.
    """
    return DATASETS.get(name).fn(root, split, download)
