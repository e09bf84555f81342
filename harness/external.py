"""A user's own encoder and images: loaded safely, checked, and handed to the harness.

Encoder files nobody here trained are untrusted. They are read once, under a size
cap (what is checked, loaded and hashed are the same bytes), as safetensors or as a
weights-only PyTorch state dict (`torch.load(weights_only=True)`, which refuses any
pickle that would build an object or run code); everything else is refused. State
dicts are read only by a torch past every known bypass of that unpickler (see
pyproject.toml), only in torch.save's zip format, and only when every zip entry is
stored uncompressed (torch.save never compresses: a deflated entry is a way to make
a small file expand) and the entries claim no more bytes than the file holds. Which
tensor names (the harness's, torchvision's, BadEncoder's, MoCo's, solo-learn's)
and which ResNet those tensors hold is harness/layouts.py's business; the weights
are then checked against that architecture on the meta device (harness/artifacts.py):
a missing or unexpected tensor, a shape or kind that does not fit, or a NaN/Inf
value is a one-line error naming the file and the tensor.
Images: a folder of PNG/JPEG/BMP/WebP files, flat or one sub-folder per class
(ImageFolder), converted to RGB and resized to 32x32, in sorted path order. Each
image's size is read from its header before it is decoded (JPEGs are decoded at
the smallest of 1/8, 1/4 or 1/2 scale that still covers 32x32) and a larger one
is refused; 16-bit greyscale is scaled to 8 bits, not clipped to white.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from harness.artifacts import ArtifactError, read_file, reason, safetensors_metadata, safetensors_tensors, shown
from harness.data import IMAGE_SIZE
from harness.models import Encoder

# The first torch whose weights-only unpickler has no known bypass; pyproject.toml's floor, with the advisories.
WEIGHTS_ONLY_SAFE_TORCH = (2, 10)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded as RGB that is 48 MiB; a 12-megapixel photo fits, JPEGs shrink in draft mode first


@dataclass(frozen=True, eq=False)
class EncoderFile:
    """An encoder file's bytes, read once: the same bytes are checked, loaded and hashed."""

    path: Path
    data: bytes
    sha256: str


def read_encoder_file(path: Path) -> EncoderFile:
    data = read_file(Path(path))
    return EncoderFile(Path(path), data, hashlib.sha256(data).hexdigest())


def _torch_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _check_torch_archive(file: EncoderFile) -> None:
    """Refuse, before torch.load reads it, a file that is not what torch.save writes (see the module docstring)."""
    try:
        with zipfile.ZipFile(io.BytesIO(file.data)) as archive:
            entries = archive.infolist()
    except Exception as e:  # noqa: BLE001 - zipfile raises several kinds on crafted bytes; all mean the same
        raise ArtifactError(f"{file.path}: refused: not safetensors and not a zip-format torch.save file ({reason(e)}); "
                            "the pre-zip format sizes its storages by its own header and is refused too") from None
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArtifactError(f"{file.path}: refused: zip entry {shown(info.filename)} is compressed, which torch.save never does")
    claimed = sum(info.file_size for info in entries)
    if claimed > len(file.data):
        raise ArtifactError(f"{file.path}: refused: its zip entries claim {claimed} bytes, more than the file's {len(file.data)}")


def read_checkpoint(file: EncoderFile) -> tuple[dict[str, Tensor], bool]:
    """The tensors of a .safetensors file or of a weights-only state dict, nothing in the file run; and whether they
    were nested under "state_dict" (so purify writes them back the same way)."""
    path = file.path
    if path.suffix == ".safetensors":
        return safetensors_tensors(path, file.data), False
    if _torch_version() < WEIGHTS_ONLY_SAFE_TORCH:
        raise ArtifactError(f"{path}: refused: torch {torch.__version__}'s weights-only unpickler has known bypasses "
                            f"(CVE-2025-32434, CVE-2026-24747); state dicts need torch >= "
                            f"{'.'.join(map(str, WEIGHTS_ONLY_SAFE_TORCH))}, safetensors files do not")
    _check_torch_archive(file)
    try:
        with warnings.catch_warnings():  # torch's notes on odd files (pickle protocol, sparse checks): the verdict is ours
            warnings.simplefilter("ignore")
            loaded = torch.load(io.BytesIO(file.data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - the unpickler and zip reader raise many kinds on crafted bytes; all mean refused
        raise ArtifactError(f"{path}: refused: not safetensors and not a weights-only state dict ({reason(e)})") from None
    nested = isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict)
    if nested:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise ArtifactError(f"{path}: refused: expected a mapping of tensor names to tensors")
    return loaded, nested


def written_by_harness(file: EncoderFile) -> bool:
    """A .safetensors file whose metadata names its architecture: artifacts.load_encoder reads it."""
    if file.path.suffix != ".safetensors":
        return False
    try:
        return "arch_config" in safetensors_metadata(file.path, file.data)
    except ArtifactError:  # unreadable files are reported by read_checkpoint
        return False


def load_external_encoder(source: Path | EncoderFile, arch: str | None = None, prefix: str = "",
                          key_map: tuple[str, ...] = ()) -> Encoder:
    """The encoder in `source` (a path, or a file already read), its layout and architecture recognised
    (harness/layouts.py) and checked; `arch` overrides the recognised architecture."""
    from harness.layouts import load_checkpoint  # layouts reads files through this module

    return load_checkpoint(source, arch, prefix, key_map).encoder


def load_image_folder(root: Path, size: int = IMAGE_SIZE) -> Tensor:
    """uint8 (N, 3, size, size) images of every image file under `root` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(f"{root}: found {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}); at least 2 are needed")
    return torch.stack([_read_image(file, size) for file in files])


def _read_image(file: Path, size: int) -> Tensor:
    """One image as uint8 (3, size, size): measured from its header before anything is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)  # reads the header only
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many kinds on crafted files; all mean unreadable
        raise ValueError(f"{file}: not a readable image ({reason(e)})") from None
    with image:
        try:
            image.draft("RGB", (size, size))  # JPEG only: decode at the smallest scale that still covers `size`
        except Exception as e:  # noqa: BLE001 - as above
            raise ValueError(f"{file}: not a readable image ({reason(e)})") from None
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{file}: {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} an image may have here; "
                             "downscale it first")
        sixteen_bit = image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")  # older Pillows: "I"
        if image.mode.startswith(("I", "F")) and not sixteen_bit:
            raise ValueError(f"{file}: {image.mode} pixels (32-bit integer or float) are not read here; save it with 8 or 16 bits")
        try:
            rgb = _sixteen_to_eight_bits(image) if sixteen_bit else image.convert("RGB")
            pixels = rgb.resize((size, size), Image.Resampling.BILINEAR).tobytes()
        except Exception as e:  # noqa: BLE001 - as above
            raise ValueError(f"{file}: not a readable image ({reason(e)})") from None
    return torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def _sixteen_to_eight_bits(image):
    """16-bit greyscale as 8-bit RGB, v -> round(v * 255 / 65535); Pillow's own conversion clips at 255 (white)."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
