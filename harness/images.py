"""A user's images: a folder of PNG, JPEG, BMP or WebP files (flat, or one sub-folder per class), or a trigger image.

Only these four formats are decoded, each recognised by its signature and checked
against its file's suffix, so a file named `.png` is a PNG or is refused: Pillow,
left to itself, decodes whatever its plugins know by content, and some (EPS, PDF)
run external programs. Each file is read whole and bounded (harness/reading.py),
never opened by path (a FIFO would block). An image's size is read from its header
before it is decoded (JPEGs are decoded at the smallest of 1/8, 1/4 or 1/2 scale that
still covers 32x32) and a larger one is refused; so is a JPEG whose bytes could not
hold the pixels its header claims (libjpeg fills what is missing with grey, silently).
Folder images are converted to RGB and resized to 32x32, in sorted path order;
16-bit greyscale is scaled to 8 bits, not clipped to white.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import Tensor

from harness.data import IMAGE_SIZE
from harness.encoder_files import reason
from harness.reading import read_bytes

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}  # suffix: the only format read
IMAGE_SUFFIXES = tuple(FORMATS)
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded as RGB that is 48 MiB; a 12-megapixel photo fits, JPEGs shrink in draft mode first
# A JPEG carries at least a few bits per 8x8 block of every channel, even of one flat colour: Pillow's encoder at its
# lowest quality writes 64 pixels per byte of a flat 4096x4096 image. Fewer than one byte per this many pixels of
# the header's size means the data is not there.
JPEG_MAX_PIXELS_PER_BYTE = 1024


def format_of(data: bytes) -> str | None:
    """The format a file's first bytes say it is: PNG, JPEG, BMP or WEBP; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def open_image(file: Path):
    """The image of `file` opened (its header read, nothing decoded) by the one decoder its suffix names, after its
    signature was checked against that suffix; ValueError (one line) for anything else."""
    from PIL import Image

    wanted = FORMATS.get(file.suffix.lower())
    if wanted is None:
        raise ValueError(f"{file}: not a {', '.join(sorted(set(FORMATS.values())))} file by its name")
    data = read_bytes(file, "image")
    found = format_of(data)
    if found != wanted:
        raise ValueError(f"{file}: named as {wanted} but its bytes are {found or 'no image format read here'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[wanted])  # reads the header only
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many kinds on crafted files; all mean unreadable
        raise ValueError(f"{file}: not a readable image ({reason(e)})") from None
    width, height = image.size
    if wanted == "JPEG" and width * height > JPEG_MAX_PIXELS_PER_BYTE * len(data):
        image.close()
        raise ValueError(f"{file}: its header claims {width}x{height} pixels, more than its {len(data)} bytes can hold; "
                         "a truncated or crafted JPEG")
    return image


def load_image_folder(root: Path, size: int = IMAGE_SIZE) -> Tensor:
    """uint8 (N, 3, size, size) images of every image file under `root` (recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of images")
    files = image_files(root)
    if len(files) < 2:
        raise ValueError(f"{root}: found {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}); at least 2 are needed")
    return torch.stack([_read_image(file, size) for file in files])


def image_files(root: Path) -> list[Path]:
    """The image files of a folder (recursively), by the suffixes read here, sorted by path."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_image(file: Path, size: int) -> Tensor:
    """One image as uint8 (3, size, size): measured from its header before anything is decoded."""
    from PIL import Image

    image = open_image(file)
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
