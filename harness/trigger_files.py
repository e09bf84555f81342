"""A trigger to evaluate an encoder with: a registered name, an image (plus a mask), or tensors in a file.

`harness evaluate --trigger` measures a backdoor the user knows of (their own
attack, or a published trigger). The trigger lives in the harness's image space
(32x32, harness/triggers.py) and is stamped before the encoder's input geometry
resizes the image, as with every trigger here. Accepted:

- a registered trigger name (`checkerboard`, `patch`, ...), at the profile's size;
- an image file: RGBA (the alpha channel is the mask) or RGB/grayscale with
  `mask` a grayscale image (255 replaces the pixel, 0 keeps it, between blends);
- a .safetensors file holding `pattern` (3, 32, 32) and `mask` (1, 32, 32) floats in
  [0, 1], and optionally an additive `offset` (3, 32, 32) in [-1, 1], with or without a `trigger.` or `extra.trigger.` prefix (a suspect the
  harness built stores its trigger as `extra.trigger.*`).

Images are never resized: a trigger of another size is an error, not a guess, and
it is one before anything is decoded or read (a trigger file is as untrusted as an
encoder file: its header does not decide what gets allocated).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from harness.encoder_files import reason
from harness.data import IMAGE_SIZE
from harness.images import IMAGE_SUFFIXES, open_image
from harness.reading import read_bytes
from harness.registry import TRIGGERS
from harness.triggers import Trigger, make_trigger

_TENSOR_PREFIXES = ("", "trigger.", "extra.trigger.")
_SHAPES = {"pattern": (3, IMAGE_SIZE, IMAGE_SIZE), "mask": (1, IMAGE_SIZE, IMAGE_SIZE)}


def load_trigger(spec: str, size: int, mask: Path | None = None) -> Trigger:
    """The trigger named or stored by `spec` (see the module docstring); `size` applies to registered names."""
    if spec in TRIGGERS:
        if mask is not None:
            raise ValueError(f"--trigger-mask applies to a trigger image, not to the registered trigger {spec!r}")
        return make_trigger(spec, size)
    path = Path(spec)
    if path.suffix.lower() not in (*IMAGE_SUFFIXES, ".safetensors"):
        raise ValueError(f"--trigger {spec!r} is neither a registered trigger ({', '.join(TRIGGERS.names())}) "
                         f"nor a trigger file ({', '.join(IMAGE_SUFFIXES)}, .safetensors)")
    if path.suffix == ".safetensors":
        read_bytes(path, "trigger")  # a regular file under its cap, or one line why not (an image is read so by open_image)
        if mask is not None:
            raise ValueError(f"{path}: a .safetensors trigger holds its own mask; drop --trigger-mask")
        return _from_tensors(path)
    return _from_images(path, mask)


def _from_tensors(path: Path) -> Trigger:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            prefix = next((p for p in _TENSOR_PREFIXES if {p + "pattern", p + "mask"} <= names), None)
            if prefix is None:
                raise ValueError(f"{path}: no trigger tensors (pattern and mask, optionally under trigger. or extra.trigger.)")
            for what, shape in _SHAPES.items():  # from the header, before the tensor is read
                found = tuple(f.get_slice(prefix + what).get_shape())
                if found != shape:
                    raise ValueError(f"{path}: the trigger {what} has shape {found}; it must be {shape}")
            offset = None
            if prefix + "offset" in names:
                found = tuple(f.get_slice(prefix + "offset").get_shape())
                if found != _SHAPES["pattern"]:
                    raise ValueError(f"{path}: the trigger offset has shape {found}; it must be {_SHAPES['pattern']}")
                offset = f.get_tensor(prefix + "offset")
            pattern, mask = f.get_tensor(prefix + "pattern"), f.get_tensor(prefix + "mask")
            name = _harness_trigger_name(f.metadata() or {}) or path.stem
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({reason(e)})") from None
    if not all(t.is_floating_point() for t in (pattern, mask, *([offset] if offset is not None else []))):
        raise ValueError(f"{path}: the trigger tensors must be floats (pattern and mask in [0, 1], an offset in [-1, 1])")
    return _checked(path, pattern.float(), mask.float(), name, None if offset is None else offset.float())


def _harness_trigger_name(metadata: dict[str, str]) -> str | None:
    """The trigger's name in a suspect file the harness wrote (its JSON `meta`), if it is one."""
    try:
        name = json.loads(metadata.get("meta", "{}")).get("trigger_name")
    except (ValueError, RecursionError, AttributeError):  # not JSON, or not an object
        return None
    return name if isinstance(name, str) else None


def _read_image(path: Path, mode: str, what: str) -> Tensor:
    """(C, H, W) float in [0, 1] of an image file converted to `mode` (RGBA, RGB or L); its size checked before decoding."""
    with open_image(path) as image:
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            w, h = image.size
            raise ValueError(f"{path}: the trigger {what} is {(h, w)} pixels; the harness's images are {(IMAGE_SIZE, IMAGE_SIZE)}")
        if image.mode.startswith(("I", "F")):
            raise ValueError(f"{path}: {image.mode} pixels (16 or 32 bits) are not read here; save the trigger with 8 bits")
        try:
            converted = image.convert(mode)
        except Exception as e:  # noqa: BLE001 - as in _open
            raise ValueError(f"{path}: not a readable image ({reason(e)})") from None
    channels = len(mode)
    w, h = converted.size
    return torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8).view(h, w, channels).permute(2, 0, 1).float() / 255


def _from_images(path: Path, mask_path: Path | None) -> Trigger:
    with open_image(path) as image:
        has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
    if mask_path is None:
        if not has_alpha:
            raise ValueError(f"{path}: an opaque image needs --trigger-mask (or an alpha channel as the mask)")
        rgba = _read_image(path, "RGBA", "pattern")
        return _checked(path, rgba[:3], rgba[3:])
    return _checked(path, _read_image(path, "RGB", "pattern"), _read_image(Path(mask_path), "L", "mask"))


def _checked(path: Path, pattern: Tensor, mask: Tensor, name: str | None = None, offset: Tensor | None = None) -> Trigger:
    expected = (IMAGE_SIZE, IMAGE_SIZE)
    for t, what in ((pattern, "pattern"), (mask, "mask"), *(((offset, "offset"),) if offset is not None else ())):
        if tuple(t.shape[-2:]) != expected:
            raise ValueError(f"{path}: the trigger {what} is {tuple(t.shape[-2:])} pixels; the harness's images are {expected}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: the trigger {what} holds NaN or Inf values")
    if not (mask > 0).any() and (offset is None or not offset.any()):
        raise ValueError(f"{path}: the trigger touches no pixel")
    try:
        return Trigger(name or path.stem, pattern, mask, offset)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
