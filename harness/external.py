"""A user's own encoder and images: loaded safely, checked, and handed to the harness.

Encoder files nobody here trained are untrusted. They are read as safetensors
or as a weights-only PyTorch state dict (`torch.load(weights_only=True)`, which
refuses any pickle that would build an object or run code); everything else is
refused. The weights are then checked against a registered architecture: a
missing or unexpected tensor, a shape that does not fit, or a NaN/Inf value is a
one-line error naming the file and the tensor.

Which tensor names (the harness's, torchvision's, BadEncoder's, MoCo's,
solo-learn's) and which ResNet a file holds is harness/layouts.py's business.
Images: a folder of PNG/JPEG/BMP/WebP files, flat or one sub-folder per class
(ImageFolder), converted to RGB and resized to 32x32, in sorted path order.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from harness.artifacts import ArtifactError
from harness.data import IMAGE_SIZE
from harness.models import Encoder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], bool]:
    """The tensors of a .safetensors file or of a weights-only state dict, nothing in the file run; and whether they
    were nested under "state_dict" (so purify writes them back the same way)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), False
        except Exception as e:  # noqa: BLE001 - whatever the parser says, the answer is the same
            raise ArtifactError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = str(e).strip().split(".")[0] or type(e).__name__  # torch's message runs on for lines
        raise ArtifactError(f"{path}: refused: not safetensors and not a weights-only state dict ({reason})") from None
    nested = isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict)
    if nested:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise ArtifactError(f"{path}: refused: expected a mapping of tensor names to tensors")
    return loaded, nested


def load_external_encoder(path: Path, arch: str | None = None, prefix: str = "", key_map: tuple[str, ...] = ()) -> Encoder:
    """The encoder in `path`, its layout and architecture recognised (harness/layouts.py), checked; `arch` overrides."""
    from harness.layouts import load_checkpoint  # layouts reads files through this module

    return load_checkpoint(Path(path), arch, prefix, key_map).encoder


def load_image_folder(root: Path, size: int = IMAGE_SIZE) -> Tensor:
    """uint8 (N, 3, size, size) images of every image file under `root` (recursively), sorted by path."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(f"{root}: found {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}); at least 2 are needed")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{file}: not a readable image ({e})") from None
        images.append(torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1))
    return torch.stack(images)
