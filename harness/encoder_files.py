"""The encoder file: one safetensors file, read the same bounded, checked way whoever wrote it.

Encoders are written as safetensors (never pickles), with their architecture and
metadata as JSON in the header beside the tensors. Every encoder file, the store's
or a user's, is loaded the same way: its bytes are read under a size cap, the
architecture it claims is checked (a known config, a width in [1, MAX_WIDTH],
exactly the architecture's blocks, or for the generic "resnet" of
harness/resnets.py four stages of at most MAX_BLOCKS), the encoder is built on the
meta device and the tensors are checked against it (names, kind, dtype, shape,
finite values, non-negative variances); only then is real memory allocated for it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from harness.atomic import atomic_write_bytes
from harness.cache_keys import FORMAT_VERSION
from harness.models import ArchConfig, Encoder
from harness.reading import UnreadableFile, read_bytes
from harness.registry import ARCHS
from harness.resnets import ResNetConfig  # importing it registers the deeper ResNets that files may name

MAX_WIDTH = 128  # twice the paper's ResNet-18: 45M parameters; a file claiming more is refused, not allocated
MAX_BLOCKS = 36  # blocks per stage of a ResNet whose file states its depth; ResNet-152's third stage has 36
MAX_STEM_PADDING = 3  # of a CIFAR stem's 3x3 convolution (solo-learn pads by 2); more only inflates what forward allocates
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class ArtifactError(ValueError):
    """An artifact or encoder file that cannot be used; the message names the file."""


def shown(text: object, limit: int = 60) -> str:
    """Text from a file, fit for a one-line message: cut short, and escaped unless every character is printable."""
    text = str(text)[:limit]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def reason(error: BaseException) -> str:
    """`Type: first line` of an exception from a parser, short enough for a one-line error."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {shown(text, 200)}" if text else type(error).__name__


def encoder_tensors(encoder: Encoder, extra: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The tensors of an encoder file: `encoder.`-prefixed weights, `extra.`-prefixed extras (e.g. a trigger)."""
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    return tensors


def arch_name(encoder: Encoder) -> str:
    """The registered name a harness file records for `encoder`: resnet18 for the harness's own network (either stem),
    "resnet" for every other ResNet (harness/resnets.py), whose file then states its depth in arch_config."""
    config = encoder.config
    if not isinstance(config, ResNetConfig) and tuple(config.blocks) == ArchConfig().blocks:
        return "resnet18"
    return "resnet"


def file_header(encoder: Encoder, meta: dict | None) -> dict[str, str]:
    return {
        "format": str(FORMAT_VERSION),
        "arch": arch_name(encoder),
        "arch_config": json.dumps(dataclasses.asdict(encoder.config)),
        "meta": json.dumps(meta or {}),
    }


def encoder_bytes(encoder: Encoder, extra: dict[str, Tensor] | None = None, meta: dict | None = None) -> bytes:
    """An encoder (and optional extra tensors) as the bytes of one safetensors file."""
    return safetensors.torch.save(encoder_tensors(encoder, extra), metadata=file_header(encoder, meta))


def save_encoder(path: Path, encoder: Encoder, extra: dict[str, Tensor] | None = None, meta: dict | None = None,
                 exclusive: bool = False) -> None:
    """Write an encoder (and optional extra tensors, e.g. a trigger) as one safetensors file, atomically (exclusively:
    harness/atomic.py)."""
    atomic_write_bytes(path, encoder_bytes(encoder, extra, meta), exclusive)


def read_file(path: Path) -> bytes:
    """The bytes of an encoder file, refused in one line when it is missing, not a regular file, or over its cap
    (harness/reading.py)."""
    try:
        return read_bytes(Path(path), "encoder")
    except UnreadableFile as e:
        raise ArtifactError(str(e)) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")  # parsers disagree on which one wins; refuse rather than pick
    return dict(pairs)


def safetensors_metadata(path: Path, data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header, its length checked against the file's before it is read."""
    if len(data) < 8:
        raise ArtifactError(f"{path}: not a safetensors file (shorter than the 8 bytes of its header's length)")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ArtifactError(f"{path}: not a safetensors file (a {length}-byte header in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8 : 8 + length], object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtifactError(f"{path}: not a safetensors file (its header is not JSON: {reason(e)})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ArtifactError(f"{path}: not a safetensors file (its __metadata__ is not a mapping of strings)")
    return meta


def safetensors_tensors(path: Path, data: bytes) -> dict[str, Tensor]:
    """The tensors of a safetensors file's bytes; the parser checks every offset and size against the bytes."""
    try:
        return safetensors.torch.load(data)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the parser says, the answer is the same
        raise ArtifactError(f"{path}: not a readable safetensors file ({reason(e)})") from None


_KINDS = {int: "a whole number", str: "a string"}


def arch_config(path: Path, arch: str, fields: Any) -> ArchConfig:
    """Registered architecture `arch`'s config with `fields` (read from a file) in place of its defaults, checked.

    Only the architecture's own fields, each of its default's type; a whole-number width in [1, MAX_WIDTH];
    blocks: exactly the architecture's when its name fixes the depth (resnet18 is (2, 2, 2, 2): a file naming
    fewer stages is another network, whose forward pass would fail later), four stages of 1 to MAX_BLOCKS
    for the generic "resnet", whose files state their depth; a CIFAR stem's padding in [0, MAX_STEM_PADDING].
    """
    default = ARCHS.get(arch).default_config()
    if not isinstance(fields, dict):
        raise ArtifactError(f"{path}: arch_config must be a JSON object, got {type(fields).__name__}")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(default)})
    if unknown:
        raise ArtifactError(f"{path}: arch_config has no field {shown(unknown[0])} for {arch}")
    width, blocks, stem = fields.get("width", default.width), fields.get("blocks", default.blocks), fields.get("stem", default.stem)
    if type(width) is not int or not 1 <= width <= MAX_WIDTH:
        raise ArtifactError(f"{path}: width {shown(width)} is not a whole number in [1, {MAX_WIDTH}]")
    if type(default) is ResNetConfig:  # the generic ResNet: any depth of four stages
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 4 or not all(type(b) is int and 1 <= b <= MAX_BLOCKS for b in blocks):
            raise ArtifactError(f"{path}: blocks {shown(blocks)} are not four whole numbers in [1, {MAX_BLOCKS}]")
    elif not isinstance(blocks, (list, tuple)) or tuple(blocks) != tuple(default.blocks):
        raise ArtifactError(f"{path}: blocks {shown(blocks)} are not {arch}'s {list(default.blocks)}")
    if not isinstance(stem, str):
        raise ArtifactError(f"{path}: stem must be a string, got {type(stem).__name__}")
    others = {k: v for k, v in fields.items() if k not in ("width", "blocks", "stem")}  # ResNetConfig's block, stem_padding
    for key, value in others.items():
        kind = type(getattr(default, key))
        if type(value) is not kind:
            raise ArtifactError(f"{path}: {key} {shown(value)} is not {_KINDS.get(kind, 'a ' + kind.__name__)}")
    padding = others.get("stem_padding", 1)
    if not 0 <= padding <= MAX_STEM_PADDING:
        raise ArtifactError(f"{path}: stem_padding {padding} is not in [0, {MAX_STEM_PADDING}]")
    try:
        return dataclasses.replace(default, width=width, blocks=tuple(blocks), stem=stem, **others)
    except ValueError as e:
        raise ArtifactError(f"{path}: {e}") from None


def build_checked(path: Path, arch: str, config: ArchConfig, state: dict[str, Tensor], described: str | None = None) -> Encoder:
    """An encoder of `arch` holding `state`, built on the meta device and allocated only once `state` fits it;
    `described` names the architecture in errors (default: `arch` and `config`)."""
    with torch.device("meta"):
        encoder: Encoder = ARCHS.create(arch, **dataclasses.asdict(config))()
    check_weights(path, state, encoder, described or f"{arch} {config}")
    encoder = encoder.to_empty(device="cpu")
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def _metadata_json(path: Path, meta: dict[str, str], field: str, default: str | None = None) -> Any:
    if field not in meta and default is None:
        raise ArtifactError(f"{path}: not a harness encoder file (no {field} in its metadata)")
    try:
        return json.loads(meta.get(field, default))
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{path}: metadata {field} is not JSON ({reason(e)})") from None


def load_encoder(path: Path, data: bytes | None = None) -> tuple[Encoder, dict[str, Tensor], dict]:
    """Read a file written by `save_encoder` (or its `data`, already read); no code in the file is ever executed."""
    path = Path(path)
    data = read_file(path) if data is None else data
    meta = safetensors_metadata(path, data)
    arch = meta.get("arch")
    if arch not in ARCHS:
        raise ArtifactError(f"{path}: not a harness encoder file (architecture {shown(arch)} is not registered)")
    config = arch_config(path, arch, _metadata_json(path, meta, "arch_config"))
    extra_meta = _metadata_json(path, meta, "meta", "{}")
    if not isinstance(extra_meta, dict):
        raise ArtifactError(f"{path}: metadata meta must be a JSON object, got {type(extra_meta).__name__}")
    tensors = safetensors_tensors(path, data)
    state = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    encoder = build_checked(path, arch, config, state)
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    for key, value in extra.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ArtifactError(f"{path}: extra tensor {key} holds NaN or Inf values")
    return encoder, extra, extra_meta


def check_weights(path: Path, state: dict[str, Tensor], encoder: Encoder, arch: str) -> None:
    """One-line errors naming the file and the tensor: missing, unexpected, or unfit weights.

    Unfit: not a dense tensor with values (sparse, nested, on the meta device), not of a real dtype of the
    kind the encoder holds (complex, quantized, integer weights), misshapen, non-finite, or a negative
    BatchNorm variance. `encoder` may live on the meta device: only its names, shapes and dtypes are read.
    """
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ArtifactError(f"{path}: missing tensor {missing[0]} for {arch} ({len(missing)} missing)")
    if unexpected:
        raise ArtifactError(f"{path}: unexpected tensor {shown(unexpected[0])} for {arch} ({len(unexpected)} unexpected)")
    for key, want in expected.items():  # in the network's order: the first unfit tensor is the one named
        value = state[key]
        if not isinstance(value, Tensor):
            raise ArtifactError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_nested:
            raise ArtifactError(f"{path}: tensor {key} is {value.layout} (sparse or nested); weights are dense tensors")
        if value.device.type != "cpu":
            raise ArtifactError(f"{path}: tensor {key} is on the {value.device.type} device and holds no values")
        kinds = FLOAT_DTYPES if want.is_floating_point() else INTEGER_DTYPES
        if value.dtype not in kinds:
            kind = "a real floating-point" if want.is_floating_point() else "an integer"
            raise ArtifactError(f"{path}: tensor {key} has dtype {value.dtype}; {arch} needs {kind} dtype")
        if value.shape != want.shape:
            raise ArtifactError(f"{path}: tensor {key} has shape {tuple(value.shape)}, {arch} needs {tuple(want.shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ArtifactError(f"{path}: tensor {key} holds NaN or Inf values")
        if key.endswith("running_var") and (value < 0).any():
            raise ArtifactError(f"{path}: tensor {key} holds negative variances")


