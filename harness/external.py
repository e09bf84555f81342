"""A user's own encoder and images: loaded safely, checked, and handed to the harness.

Encoder files nobody here trained are untrusted. They are read as safetensors
or as a weights-only PyTorch state dict (`torch.load(weights_only=True)`, which
refuses any pickle that would build an object or run code); everything else is
refused. The weights are then checked against a registered architecture: a
missing or unexpected tensor, a shape that does not fit, or a NaN/Inf value is a
one-line error naming the file and the tensor.

Key layouts understood: the harness's own files, its state dicts, and
torchvision's ResNet-18 (`conv1`, `bn1`, `downsample`, `fc`), with a leading
`module.` (DataParallel) or a prefix given by the caller stripped first.
Images: a folder of PNG/JPEG/BMP/WebP files, flat or one sub-folder per class
(ImageFolder), converted to RGB and resized to 32x32, in sorted path order.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from harness.artifacts import ArtifactError, check_weights, load_encoder
from harness.data import IMAGE_SIZE
from harness.models import Encoder
from harness.registry import ARCHS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_TORCHVISION_NAMES = (("conv1.", "stem.0."), ("bn1.", "stem.1."))


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a .safetensors file or of a weights-only state dict; nothing in the file is run."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - whatever the parser says, the answer is the same
            raise ArtifactError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = str(e).strip().split(".")[0] or type(e).__name__  # torch's message runs on for lines
        raise ArtifactError(f"{path}: refused: not safetensors and not a weights-only state dict ({reason})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise ArtifactError(f"{path}: refused: expected a mapping of tensor names to tensors")
    return loaded


def _harness_names(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys renamed to the harness's Encoder: prefixes stripped, torchvision's names mapped, the classifier dropped."""
    out = {}
    for key, value in state.items():
        for strip in ("module.", prefix, "encoder."):
            if strip and key.startswith(strip):
                key = key[len(strip) :]
        if key.startswith("fc."):
            continue  # torchvision's classifier: not part of an encoder
        for old, new in _TORCHVISION_NAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key.replace(".downsample.", ".shortcut.")] = value
    return out


def _written_by_harness(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "arch_config" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable files are reported by _read_tensors
        return False


def load_external_encoder(path: Path, arch: str, prefix: str = "") -> Encoder:
    """An encoder of registered architecture `arch` with the weights in `path`, checked; see the module docstring."""
    path = Path(path)
    if path.suffix == ".safetensors" and _written_by_harness(path):
        return load_encoder(path)[0]  # it names its own architecture, and is checked the same way
    state = _harness_names(_read_tensors(path), prefix)
    stem = state.get("stem.0.weight")
    if stem is None:
        raise ArtifactError(f"{path}: missing tensor stem.0.weight (conv1.weight in torchvision's names); is --arch {arch} right?")
    encoder: Encoder = ARCHS.create(arch, width=int(stem.shape[0]))()
    check_weights(path, state, encoder, arch)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


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
