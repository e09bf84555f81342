"""A user's own encoder file: read safely, checked, and handed to harness/layouts.py.

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
are then checked against that architecture on the meta device (harness/encoder_files.py):
a missing or unexpected tensor, a shape or kind that does not fit, or a NaN/Inf
value is a one-line error naming the file and the tensor.
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

from harness.encoder_files import ArtifactError, read_file, reason, safetensors_metadata, safetensors_tensors, shown

# The first torch whose weights-only unpickler has no known bypass; pyproject.toml's floor, with the advisories.
WEIGHTS_ONLY_SAFE_TORCH = (2, 10)


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
    """A .safetensors file whose metadata names its architecture: encoder_files.load_encoder reads it."""
    if file.path.suffix != ".safetensors":
        return False
    try:
        return "arch_config" in safetensors_metadata(file.path, file.data)
    except ArtifactError:  # unreadable files are reported by read_checkpoint
        return False
