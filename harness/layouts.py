"""Checkpoint layouts: whose tensor names a file uses, which ResNet they describe, and the way back.

A published encoder arrives in its authors' layout. Recognised from the tensor
names alone (after an optional `--key-map`):

    layout       its encoder's tensors             stem conv         input geometry (default)
    harness      stem.0.*, layerN.*, shortcut      stem.0.weight     32x32, none (or what the file records)
    torchvision  conv1, bn1, layerN, downsample    conv1.weight      7x7: 224, ImageNet; 3x3: 32, CIFAR-10
    badencoder   f.f.<index> (SimCLRBase), g.*     f.f.0.weight      32, BadEncoder's CIFAR-10 statistics
    moco         module.encoder_q.<torchvision>    ...conv1.weight   224, ImageNet
    solo-learn   backbone.<torchvision>            ...conv1.weight   3x3 (padding 2!): 32, solo-learn's CIFAR

plus a leading `module.` (DataParallel) on any of them and harness names under
`encoder.`. Everything else in the file (a classifier `fc`, BadEncoder's
projection head `g`, MoCo's key encoder `encoder_k` and queue, solo-learn's
projector) is not the encoder: it is left out of the scan and written back
unchanged. The architecture comes from the shapes: the stem's kernel (3x3 CIFAR,
7x7 ImageNet), bottleneck blocks (a `conv3` in the blocks), blocks per stage and
the width (the stem's output channels); `arch` overrides it. The file is read
once, bounded and checked as every user's file is (harness/external.py), and the
encoder is built as every encoder is (encoder_files.arch_config, build_checked): its
width and depth bounded, built on the meta device, the tensors checked against it
(a missing, unexpected, misshapen or non-finite tensor is a one-line error naming
it as the file does) before any real memory is allocated. A harness file names
its own architecture and goes through encoder_files.load_encoder's checks.

`--key-map REGEX=REPLACEMENT` rewrites the names first (`re.sub`, rules in order;
a name rewritten to "" is left out of the encoder), for any layout not listed.
A file that fits no layout is a one-line error naming the closest one.

The way back: `write_in_layout` puts purified weights under the file's own names,
in its own format (safetensors, or a torch state dict nested under "state_dict"
if it was), with the rest of the file as it was, so it loads into the user's
model class with `strict=True`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from harness.atomic import atomic_write
from harness.encoder_files import ArtifactError, MAX_BLOCKS, arch_config, build_checked, load_encoder, shown
from harness.external import EncoderFile, read_checkpoint, read_encoder_file, written_by_harness
from harness.geometry import IMAGENET_MEAN, IMAGENET_STD, InputGeometry, unwrap
from harness.models import STAGES, ArchConfig, Encoder
from harness.registry import ARCHS
from harness.resnets import ResNetConfig, build_resnet

_BLOCK_INDEX = re.compile(r"[0-9]{1,9}")  # a block's index in a tensor name; int() of anything else could raise
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
IDENTITY = InputGeometry()
IMAGENET = InputGeometry(224, IMAGENET_MEAN, IMAGENET_STD)
CIFAR10 = InputGeometry(32, CIFAR10_MEAN, (0.2470, 0.2435, 0.2616))  # CIFAR-10's per-channel statistics
BADENCODER_CIFAR10 = InputGeometry(32, CIFAR10_MEAN, (0.2023, 0.1994, 0.2010))  # BadEncoder's test_transform_cifar10
SOLO_CIFAR = InputGeometry(32, CIFAR10_MEAN, (0.247, 0.243, 0.261))  # solo-learn's cifar pipeline

# The names that mark an encoder's stem in each naming, relative to the layout's prefix.
STEM_NAMES = {
    "harness": ("stem.0.weight",),
    "torchvision": ("conv1.weight", "layer1.0.conv1.weight"),
    "simclr": ("0.weight", "3.0.conv1.weight"),  # BadEncoder's SimCLRBase: Sequential(conv1, bn1, relu, layer1..4, avgpool)
}
_SIMCLR_INDEX = {"0": "stem.0", "1": "stem.1", "3": "layer1", "4": "layer2", "5": "layer3", "6": "layer4"}


@dataclass(frozen=True)
class Layout:
    name: str
    naming: str  # "harness", "torchvision" or "simclr": the names below the prefix
    prefixes: tuple[str, ...]  # the encoder's tensors start with one of these
    cifar: InputGeometry  # default input geometry with a 3x3 stem
    imagenet: InputGeometry  # with a 7x7 stem
    stem_padding: int = 1  # of a 3x3 stem
    released: tuple[str, bool] = ("", False)  # how its authors' files hold the encoder: (prefix, nested under "state_dict")

    def harness_name(self, name: str) -> str | None:
        """`name` (prefix removed) in the harness's Encoder names; None for a classifier head."""
        if self.naming == "harness":
            return None if name.startswith("fc.") else name
        if self.naming == "simclr":
            index, _, rest = name.partition(".")
            return f"{_SIMCLR_INDEX[index]}.{rest}".replace(".downsample.", ".shortcut.") if index in _SIMCLR_INDEX else name
        if name.startswith("fc."):
            return None  # torchvision's classifier (MoCo v2: its MLP head), not part of an encoder
        for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
            if name.startswith(old):
                return new + name[len(old) :]
        return name.replace(".downsample.", ".shortcut.")

    def file_name(self, harness: str) -> str:
        """The inverse of `harness_name` (prefix not added): how this layout names the harness's tensor."""
        if self.naming == "harness":
            return harness
        stems = {v: k for k, v in _SIMCLR_INDEX.items()} if self.naming == "simclr" else {"stem.0": "conv1", "stem.1": "bn1"}
        for new, old in stems.items():
            if harness.startswith(new + "."):
                harness = old + harness[len(new) :]
                break
        return harness.replace(".shortcut.", ".downsample.")


def _with_dataparallel(*prefixes: str) -> tuple[str, ...]:
    return tuple(p for prefix in prefixes for p in (prefix, f"module.{prefix}"))


LAYOUTS: tuple[Layout, ...] = (
    Layout("harness", "harness", _with_dataparallel("", "encoder."), IDENTITY, IDENTITY),
    Layout("torchvision", "torchvision", _with_dataparallel(""), CIFAR10, IMAGENET),
    Layout("badencoder", "simclr", _with_dataparallel("f.f."), BADENCODER_CIFAR10, IMAGENET, released=("f.f.", True)),
    Layout("moco", "torchvision", _with_dataparallel("encoder_q."), CIFAR10, IMAGENET, released=("module.encoder_q.", True)),
    Layout("solo-learn", "torchvision", _with_dataparallel("backbone."), SOLO_CIFAR, IMAGENET, stem_padding=2, released=("backbone.", True)),
)
HARNESS_FILE = "harness file"  # a .safetensors written by the harness: it records its architecture and geometry


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """An encoder read from a user's file, and what is needed to write purified weights back into it."""

    path: Path
    encoder: Encoder  # bare (no geometry), eval mode
    layout: str  # a LAYOUTS name, or HARNESS_FILE
    prefix: str  # stripped from the encoder's tensor names
    architecture: str  # e.g. "resnet50 (bottleneck blocks 3-4-6-3, width 64, ImageNet stem (7x7, max-pool))"
    geometry: InputGeometry  # the layout's default (or the harness file's record)
    names: dict[str, str] = field(default_factory=dict)  # the file's name -> harness name, for every encoder tensor
    tensors: dict[str, Tensor] = field(default_factory=dict)  # every tensor of the file, as read
    nested: bool = False  # the file held them under "state_dict"
    key_mapped: bool = False
    sha256: str = ""  # of the bytes that were loaded (read once: what was checked is what is hashed)

    @property
    def kept(self) -> list[str]:
        """The file's tensors that are not the encoder's (heads, key encoders, ...): written back unchanged."""
        return sorted(set(self.tensors) - set(self.names))

    def describe(self) -> str:
        if self.layout == HARNESS_FILE:
            return f"{self.architecture}, a harness file"
        where = f" under {shown(repr(self.prefix))}" if self.prefix else ""
        mapped = " after --key-map" if self.key_mapped else ""
        kept = f"; {len(self.kept)} other tensors ({_groups(self.kept, set(self.names))}) not part of the encoder" if self.kept else ""
        return f"{self.architecture}, {self.layout} layout{where}{mapped}{kept}"


def _groups(kept: list[str], encoder: set[str], limit: int = 3) -> str:
    """'g.*, module.encoder_k.*': each kept tensor under the shortest name prefix that holds no encoder tensor."""
    heads = set()
    for name in kept:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            head = ".".join(parts[:i])
            if not any(e == head or e.startswith(head + ".") for e in encoder):
                heads.add(head)
                break
    shown_heads = [h if h in kept else f"{h}.*" for h in sorted(heads)]
    return ", ".join(shown(h) for h in shown_heads[:limit]) + (", ..." if len(shown_heads) > limit else "")


def parse_key_map(rules: list[str] | tuple[str, ...]) -> tuple[tuple[re.Pattern, str], ...]:
    """`REGEX=REPLACEMENT` rules (split at the last '=', since tensor names never hold one), compiled."""
    parsed = []
    for rule in rules:
        pattern, sep, replacement = rule.rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"--key-map takes REGEX=REPLACEMENT, got {rule!r}")
        try:
            compiled = re.compile(pattern)
            compiled.sub(replacement, "")  # a bad group reference in the replacement fails here, not mid-file
        except re.error as e:
            raise ValueError(f"--key-map {rule!r}: {e}") from None
        parsed.append((compiled, replacement))
    return tuple(parsed)


def apply_key_map(names: list[str], rules: tuple[tuple[re.Pattern, str], ...], path: Path) -> dict[str, str]:
    """The file's name -> rewritten name; names rewritten to "" are left out."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        new = name
        for pattern, replacement in rules:
            new = pattern.sub(replacement, new)
        if not new:
            continue
        if new in seen:
            raise ArtifactError(f"{path}: --key-map maps both {shown(seen[new])} and {shown(name)} to {shown(new)}")
        seen[new] = name
        out[name] = new
    return out


def recognise(names: set[str], path: Path, key_prefix: str = "") -> tuple[Layout, str]:
    """The layout and prefix of the encoder in a file with tensor `names`; one-line errors otherwise."""
    candidates = [(layout, p) for layout in LAYOUTS for p in layout.prefixes]
    if key_prefix:  # the user says where the encoder is: a layout of that prefix, else harness or torchvision names below it
        given = _with_dataparallel(key_prefix)
        candidates = [(layout, p) for layout, p in candidates if p in given]
        named = {layout.naming for layout, _ in candidates}
        candidates += [(layout, p) for layout in LAYOUTS[:2] if layout.naming not in named for p in given]
    matches = [(layout, p) for layout, p in candidates if all(p + stem in names for stem in STEM_NAMES[layout.naming])]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        found = ", ".join(f"{layout.name} under {shown(repr(p))}" for layout, p in matches)
        raise ArtifactError(f"{path}: more than one encoder in the file ({found}); choose one with --key-prefix or --key-map")
    raise ArtifactError(f"{path}: not a known encoder layout; {closest_layout(names, key_prefix)}; "
                        "name its tensors with --key-map REGEX=REPLACEMENT (or --key-prefix)")


def closest_layout(names: set[str], key_prefix: str = "") -> str:
    """Which layout's resnet18 tensor names the file holds most of, and where, as a phrase for an error."""
    best = (-1.0, "", "")
    for layout in LAYOUTS:
        reference = _reference_names(layout)
        if layout.prefixes[0]:  # a fixed prefix: the names must sit right below it
            found = max(sum(p + r in names for r in reference) for p in layout.prefixes)
            prefix = ""
        else:  # the harness's and torchvision's names may sit under any prefix
            found = sum(any(n.endswith(r) for n in names) for r in reference)
            stem = STEM_NAMES[layout.naming][0]
            prefix = next((n[: -len(stem)] for n in sorted(names) if n.endswith(stem) and (n == stem or n[: -len(stem)].endswith("."))), "")
        share = found / len(reference)
        if share > best[0]:
            best = (share, layout.name, prefix)
    share, name, prefix = best
    where = f" under the prefix {shown(repr(prefix))}" if prefix and prefix != key_prefix else ""
    return f"closest: {name}, {share:.0%} of its resnet18 tensor names found{where}"


def _reference_names(layout: Layout) -> list[str]:
    """A resnet18's tensor names in `layout`'s naming, prefix not added."""
    with torch.device("meta"):
        names = list(build_resnet(ArchConfig(width=1)).state_dict())
    return [layout.file_name(n) for n in names]


def infer_config(state: dict[str, Tensor], path: Path, stem_padding: int) -> ResNetConfig:
    """The ResNet that harness-named `state` describes: stem kind, block kind, blocks per stage, width (bounded later,
    by encoder_files.arch_config)."""
    stem = state["stem.0.weight"]
    if tuple(stem.shape[1:]) not in ((3, 3, 3), (3, 7, 7)):
        raise ArtifactError(f"{path}: the stem convolution has shape {tuple(stem.shape)}; a ResNet's is (width, 3, 3, 3) or (width, 3, 7, 7)")
    blocks = []
    for stage in STAGES:
        indices = {int(k.split(".")[1]) for k in state if k.startswith(f"{stage}.") and _BLOCK_INDEX.fullmatch(k.split(".")[1])}
        if not indices:
            raise ArtifactError(f"{path}: no tensors of {stage}; not a four-stage ResNet")
        if max(indices) >= MAX_BLOCKS:
            raise ArtifactError(f"{path}: {stage} has {max(indices) + 1} blocks; at most {MAX_BLOCKS} are built")
        blocks.append(max(indices) + 1)
    imagenet = stem.shape[2] == 7
    return ResNetConfig(
        width=int(stem.shape[0]), blocks=tuple(blocks), stem="imagenet" if imagenet else "cifar",
        block="bottleneck" if "layer1.0.conv3.weight" in state else "basic", stem_padding=1 if imagenet else stem_padding,
    )


def _override(arch: str, width: int, stem_padding: int) -> ResNetConfig:
    """The registered architecture `arch` at the file's width (a CIFAR stem keeps the layout's padding)."""
    default = ARCHS.get(arch).default_config()
    if not isinstance(default, ArchConfig):
        raise ValueError(f"--arch {arch} is not a ResNet; the layouts read here hold ResNets")
    return ResNetConfig(width=width, blocks=default.blocks, stem=default.stem, block=getattr(default, "block", "basic"),
                        stem_padding=stem_padding if default.stem == "cifar" else 1)


def _describe(config: ArchConfig) -> str:
    if isinstance(config, ResNetConfig):
        return config.describe()
    return ResNetConfig(width=config.width, blocks=config.blocks, stem=config.stem).describe()


def _build(path: Path, state: dict[str, Tensor], arch: str | None, layout: Layout, prefix: str, owner: dict[str, str]) -> Encoder:
    """The encoder `state` fits, its width and depth bounded and the tensors checked on the meta device first
    (encoder_files.build_checked): a file cannot make the harness allocate a model it does not hold."""
    stem = state["stem.0.weight"]
    if stem.dim() != 4:
        raise ArtifactError(f"{path}: {shown(owner['stem.0.weight'])} is not the 4-d weight of a convolution")
    config = infer_config(state, path, layout.stem_padding) if arch is None else _override(arch, int(stem.shape[0]), layout.stem_padding)
    checked = arch_config(path, "resnet", dataclasses.asdict(config))
    try:
        return build_checked(path, "resnet", checked, state, arch or checked.describe().split(" ")[0])
    except ArtifactError as e:  # name the tensor as the file does
        def as_in_file(match: re.Match) -> str:
            return f"tensor {shown(owner.get(match.group(1)) or prefix + layout.file_name(match.group(1)))}"

        raise ArtifactError(re.sub(r"tensor (\S+)", as_in_file, str(e), count=1)) from None


def _check_same_architecture(path: Path, config: ArchConfig, arch: str) -> None:
    """A harness file names its own architecture; `arch`, when given, must be it, not be ignored."""
    def shape(c: ArchConfig) -> tuple:
        return c.stem, tuple(c.blocks), getattr(c, "block", "basic")

    if shape(config) != shape(ARCHS.get(arch).default_config()):
        fits = [name for name in ARCHS.names()
                if type(ARCHS.get(name).default_config()) is not ResNetConfig and shape(ARCHS.get(name).default_config()) == shape(config)]
        raise ArtifactError(f"{path}: holds a {_describe(config)}, not a {arch}; "
                            f"{'use --arch ' + ' or '.join(fits) if fits else 'leave --arch out'}")


def _recorded_geometry(path: Path, meta: dict) -> InputGeometry:
    """The input geometry a harness file records (purify writes it), checked like the rest of the file."""
    if "geometry" not in meta:
        return IDENTITY
    try:
        return InputGeometry.from_dict(meta["geometry"])
    except ValueError as e:
        raise ArtifactError(f"{path}: metadata geometry is not an input geometry ({e})") from None


def load_checkpoint(source: Path | EncoderFile, arch: str | None = None, key_prefix: str = "",
                    key_map: tuple[str, ...] | list[str] = ()) -> Checkpoint:
    """The encoder in a user's file (a path, or a file already read), recognised, built and checked; see the module docstring."""
    if arch is not None:
        ARCHS.get(arch)  # an unknown --arch is the first thing to hear about
    rules = parse_key_map(key_map)
    file = source if isinstance(source, EncoderFile) else read_encoder_file(Path(source))
    path = file.path
    if written_by_harness(file):
        if key_prefix or rules:
            raise ArtifactError(f"{path}: a harness file names its own tensors; drop --key-prefix and --key-map")
        encoder, _, meta = load_encoder(path, file.data)  # it names its own architecture, and is checked the same way
        if arch is not None:
            _check_same_architecture(path, encoder.config, arch)
        return Checkpoint(path, encoder, HARNESS_FILE, "", _describe(encoder.config), _recorded_geometry(path, meta), sha256=file.sha256)
    tensors, nested = read_checkpoint(file)
    rewritten = apply_key_map(list(tensors), rules, path) if rules else {n: n for n in tensors}
    layout, prefix = recognise(set(rewritten.values()), path, key_prefix)
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for original, name in rewritten.items():
        if not name.startswith(prefix):
            continue
        harness = layout.harness_name(name[len(prefix) :])
        if harness is None:
            continue
        if harness in owner:
            raise ArtifactError(f"{path}: both {shown(owner[harness])} and {shown(original)} would be the encoder's {shown(harness)}")
        owner[harness] = original
        names[original] = harness
    state = {harness: tensors[original] for original, harness in names.items()}
    encoder = _build(path, state, arch, layout, prefix, owner)
    geometry = layout.imagenet if encoder.config.stem == "imagenet" else layout.cifar
    return Checkpoint(path, encoder, layout.name, prefix, _describe(encoder.config), geometry, names, tensors, nested, bool(rules),
                      file.sha256)


def layout_path(checkpoint: Checkpoint, out: Path) -> Path | None:
    """Where `purify --out OUT` writes the weights in the input's layout: OUT.<layout><input suffix>; None for harness files."""
    if checkpoint.layout == HARNESS_FILE:
        return None  # OUT itself is in the input's layout
    return out.with_name(f"{out.stem}.{checkpoint.layout}{checkpoint.path.suffix}")


def write_in_layout(checkpoint: Checkpoint, purified: Encoder, out: Path, exclusive: bool = False) -> None:
    """The input file with its encoder's tensors replaced by `purified`'s, under the file's names and in its format
    (written atomically, exclusively: harness/atomic.py)."""
    if checkpoint.layout == HARNESS_FILE:
        raise ValueError("a harness file's layout is the harness's own: save it with encoder_files.save_encoder")
    if Path(out).resolve() == checkpoint.path.resolve():
        raise ArtifactError(f"{out}: refusing to overwrite the input encoder")
    state = unwrap(purified).state_dict()
    if set(state) != set(checkpoint.names.values()):
        raise ArtifactError(f"{out}: the purified encoder's tensors differ from the input's ({len(state)} vs {len(checkpoint.names)})")
    tensors = dict(checkpoint.tensors)
    for original, harness in checkpoint.names.items():
        tensors[original] = state[harness].detach().cpu().to(checkpoint.tensors[original].dtype).contiguous()
    _write_tensors(Path(out), tensors, checkpoint.nested, exclusive, safetensors=checkpoint.path.suffix == ".safetensors")


def _write_tensors(out: Path, tensors: dict[str, Tensor], nested: bool, exclusive: bool, safetensors: bool) -> None:
    """A safetensors file, or a torch state dict (under "state_dict" when `nested`), atomically."""
    if safetensors:
        atomic_write(out, lambda tmp: save_file(tensors, str(tmp)), exclusive)
    else:
        atomic_write(out, lambda tmp: torch.save({"state_dict": tensors} if nested else tensors, tmp), exclusive)


def get_layout(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise ValueError(f"unknown layout {name!r}; layouts: {', '.join(layout.name for layout in LAYOUTS)}")


def state_in_layout(encoder: Encoder, name: str) -> tuple[dict[str, Tensor], bool]:
    """`encoder`'s tensors under layout `name`'s names as its authors release them, and whether they nest under "state_dict".

    Only the encoder: no classifier or projection head. A CIFAR stem whose padding differs from the layout's
    (solo-learn pads by 2) is refused, since the layout's readers would compute something else.
    """
    layout = get_layout(name)
    encoder = unwrap(encoder)
    config = encoder.config
    if getattr(config, "stem", "cifar") == "cifar" and getattr(config, "stem_padding", 1) != layout.stem_padding:
        raise ValueError(f"the {name} layout means a CIFAR stem padded by {layout.stem_padding}; this encoder's is padded by "
                         f"{getattr(config, 'stem_padding', 1)}")
    prefix, nested = layout.released
    return {prefix + layout.file_name(k): v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, nested


def save_in_layout(encoder: Encoder, name: str, out: Path, exclusive: bool = False) -> InputGeometry:
    """Write `encoder` in layout `name` (safetensors or a torch state dict, by `out`'s suffix; exclusively:
    harness/atomic.py); returns the geometry the layout's readers assume for it, which the caller compares with the
    encoder's own."""
    tensors, nested = state_in_layout(encoder, name)
    out = Path(out)
    _write_tensors(out, tensors, nested, exclusive, safetensors=out.suffix == ".safetensors")
    layout = get_layout(name)
    return layout.imagenet if getattr(unwrap(encoder).config, "stem", "cifar") == "imagenet" else layout.cifar


def load_external_encoder(source: Path | EncoderFile, arch: str | None = None, prefix: str = "",
                          key_map: tuple[str, ...] = ()) -> Encoder:
    """The encoder in `source` (a path, or a file already read), its layout and architecture recognised
    (harness/layouts.py) and checked; `arch` overrides the recognised architecture."""
    return load_checkpoint(source, arch, prefix, key_map).encoder
