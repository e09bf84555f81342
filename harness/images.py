"""A user's folder of images: PNG/JPEG/BMP/WebP files, flat or one sub-folder per class (ImageFolder).

They are converted to RGB and resized to 32x32, in sorted path order. Each
image's size is read from its header before it is decoded (JPEGs are decoded at
the smallest of 1/8, 1/4 or 1/2 scale that still covers 32x32) and a larger one
is refused; 16-bit greyscale is scaled to 8 bits, not clipped to white.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from harness.data import IMAGE_SIZE
from harness.encoder_files import reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded as RGB that is 48 MiB; a 12-megapixel photo fits, JPEGs shrink in draft mode first


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
