"""Fuzzing the loaders: whatever the bytes, the answer is a checked encoder, image or row, or one line naming the file.

Encoders, three generators: harness safetensors files whose JSON header is mutated (sizes,
offsets, dtypes, the architecture's config, the metadata), PyTorch state dicts of every
kind of tensor and value the weights-only unpickler lets through (then, sometimes, their
zip bytes damaged or recompressed), and raw bytes under either name. Each input must give
an `Encoder` or an `ArtifactError` whose message is one line naming the file; any other
exception fails, and so does a peak of resident memory above `MEMORY_BOUND` (the inputs
are small, so that bound is what "a small file cannot decide what is allocated" means).

Images: files of many formats (EPS among them), damaged, with their sizes rewritten, or
raw bytes, under every image suffix, read as a data folder and as a trigger: a uint8
image or a one-line ValueError naming the file, within the memory bound, and a stand-in
`gs` on PATH never run. Rows files: rows, rows glued after a killed writer's part of
one, rows of another shape, any JSON and any text, one per line: every row is read back,
everything else is counted as a misfit or a torn part, nothing raises.

CI runs `HARNESS_FUZZ_EXAMPLES` examples per generator (default 120, well under a minute
in all); `HARNESS_FUZZ_EXAMPLES=10000` is the long run.
"""

import dataclasses
import io
import json
import math
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.encoder_files import ArtifactError, encoder_bytes, load_encoder
from harness.images import load_image_folder
from harness.layouts import load_external_encoder
from harness.models import Encoder, build_encoder
from harness.rows import ResultsStore, Row
from harness.trigger_files import load_trigger
from tests.peak import peak_memory
from tests.test_hostile_inputs import EPS, _with_jpeg_size
from tests.test_tables import row

MB = 2**20
MEMORY_BOUND = 96 * MB
FUZZ = settings(max_examples=int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "120")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])

torch.manual_seed(0)
_BASE = build_encoder("resnet18", 2)
_STATE = {k: v.clone() for k, v in _BASE.state_dict().items()}
_KEYS = sorted(_STATE)


_SAFETENSORS = encoder_bytes(_BASE, {"trigger.mask": torch.ones(1, 4, 4)}, {"target": 3})
_HEADER_LEN = int.from_bytes(_SAFETENSORS[:8], "little")
_HEADER = json.loads(_SAFETENSORS[8 : 8 + _HEADER_LEN])
_BODY = _SAFETENSORS[8 + _HEADER_LEN :]


def _answer(path: Path, load) -> None:
    """The property: an encoder or one line naming the file, and a bounded peak of memory on the way."""
    with peak_memory(required=False) as peak:
        try:
            result = load(path)
        except ArtifactError as e:
            message = str(e)
            assert "\n" not in message and path.name in message, message
            event(re.sub(r"[0-9]+|\(.*", "N", message.split(": ", 1)[1])[:50])  # what refused it, for --hypothesis-show-statistics
        else:
            event("loaded")
            encoder = result[0] if isinstance(result, tuple) else result
            assert isinstance(encoder, Encoder)
            assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in encoder.state_dict().values()
                       if t.is_floating_point())
    assert peak.bytes < MEMORY_BOUND, f"{peak.bytes / MB:.0f} MB for a {path.stat().st_size}-byte file"


# safetensors: the JSON header -----------------------------------------------------------------------------------------

BIG = st.sampled_from([0, 1, -1, 2, 3, 4, 8, 255, 256, 2**20, 2**31, 2**32 + 1, 2**53, 2**63 - 1, 2**64, -(2**63)])
INTS = st.one_of(st.integers(-5, 300), BIG)
JSON = st.recursive(st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
ARCH_CONFIG = st.one_of(
    st.fixed_dictionaries({"width": st.one_of(INTS, JSON)}, optional={
        "blocks": st.one_of(st.lists(INTS, max_size=6), JSON), "stem": st.one_of(st.sampled_from(["cifar", "imagenet"]), JSON)}),
    JSON)
DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "C64", "F8_E4M3", "F8_E5M2",
                          "U64", "x", ""])


@st.composite
def safetensors_files(draw) -> bytes:
    header = json.loads(json.dumps(_HEADER))
    meta = header["__metadata__"]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["arch_config", "arch", "meta", "format", "drop_meta", "metadata", "dtype", "shape",
                                   "offsets", "entry", "drop_tensor", "add_tensor"]))
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__") or ["x"]))
        if op == "arch_config":
            meta["arch_config"] = draw(st.one_of(ARCH_CONFIG.map(json.dumps), st.text(max_size=20)))
        elif op in ("arch", "meta", "format"):
            meta[op] = draw(st.one_of(st.sampled_from(["resnet18", "resnet18_imagenet", "{}", "[]", "null"]), st.text(max_size=20),
                                      JSON.map(json.dumps)))
        elif op == "drop_meta":
            meta.pop(draw(st.sampled_from(["arch", "arch_config", "meta", "format"])), None)
        elif op == "metadata":
            header["__metadata__"] = draw(JSON)
        elif op == "dtype" and isinstance(header.get(name), dict):
            header[name]["dtype"] = draw(DTYPES)
        elif op == "shape" and isinstance(header.get(name), dict):
            header[name]["shape"] = draw(st.one_of(st.lists(INTS, max_size=5), JSON))
        elif op == "offsets" and isinstance(header.get(name), dict):
            header[name]["data_offsets"] = draw(st.one_of(st.lists(INTS, min_size=2, max_size=2), JSON))
        elif op == "entry":
            header[name] = draw(JSON)
        elif op == "drop_tensor":
            header.pop(name, None)
        elif op == "add_tensor":
            header[draw(st.text(max_size=20))] = {"dtype": draw(DTYPES), "shape": draw(st.lists(INTS, max_size=4)),
                                                  "data_offsets": draw(st.lists(INTS, min_size=2, max_size=2))}
    blob = json.dumps(header).encode()
    length = draw(st.one_of(st.just(len(blob)), INTS.map(lambda n: n % 2**64)))
    body = _BODY
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    if cut is not None:
        body = body[:cut] + draw(st.binary(max_size=64))
    return length.to_bytes(8, "little") + blob + body


# the user's loader with --arch, and without it: the layout and the ResNet recognised from the tensors (harness/layouts.py)
ARCHS_GIVEN = st.sampled_from(["resnet18", None])


@FUZZ
@given(blob=safetensors_files(), loader=st.sampled_from(["external", "store"]), arch=ARCHS_GIVEN)
def test_any_safetensors_header_gives_an_encoder_or_one_line(tmp_path, blob, loader, arch):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    _answer(path, load_encoder if loader == "store" else lambda p: load_external_encoder(p, arch))


# state dicts: what the weights-only unpickler lets through ---------------------------------------------------------------

TENSOR_DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                                 torch.uint8, torch.bool, torch.complex64])
SMALL_SHAPES = st.lists(st.integers(0, 6), max_size=4)


@st.composite
def tensors(draw, like: torch.Tensor | None = None) -> torch.Tensor:
    kind = draw(st.sampled_from(["same", "dtype", "shape", "nonfinite", "negative", "sparse", "meta", "expanded", "noncontiguous"]))
    base = like if like is not None else torch.zeros(draw(SMALL_SHAPES))
    if kind == "dtype":
        return base.to(draw(TENSOR_DTYPES))
    if kind == "shape":
        return torch.zeros(draw(SMALL_SHAPES), dtype=draw(TENSOR_DTYPES))
    if kind == "nonfinite" and base.is_floating_point() and base.numel():
        out = base.clone()
        out.view(-1)[draw(st.integers(0, base.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        return out
    if kind == "negative" and base.is_floating_point():
        return base - 10.0
    if kind == "sparse" and base.dim() and base.layout == torch.strided:
        return base.to_sparse()
    if kind == "meta":
        return torch.empty_like(base, device="meta")
    if kind == "expanded":
        return torch.zeros(1).expand(*draw(st.lists(st.sampled_from([1, 3, 2**10, 2**20]), min_size=1, max_size=3)))
    if kind == "noncontiguous" and base.dim() >= 2:
        return base.transpose(0, 1)
    return base


VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers(), max_size=3))


def _flipped(draw, data: bytes) -> bytes:
    """`data` with one to eight bytes overwritten at drawn places."""
    mutable = bytearray(data)
    for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8)):
        mutable[position] = value
    return bytes(mutable)


@st.composite
def state_dict_files(draw) -> bytes:
    state: dict = {k: v for k, v in _STATE.items()}
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["tensor", "tensor", "tensor", "drop", "rename", "add", "value"]))
        key = draw(st.sampled_from(_KEYS))
        if op == "tensor":
            state[key] = draw(tensors(like=_STATE[key]))
        elif op == "drop":
            state.pop(key, None)
        elif op == "rename" and key in state:
            state[draw(st.sampled_from(["module.", "encoder.", "backbone.", "fc.", ""])) + key + draw(st.sampled_from(["", "x"]))] = state.pop(key)
        elif op == "add":
            state[draw(st.text(max_size=16))] = draw(tensors())
        elif op == "value":
            state[key] = draw(VALUES)
    wrapped = draw(st.sampled_from(["plain", "plain", "plain", "state_dict", "list", "tensor"]))
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "list": list(state.values()),
           "tensor": next(iter(state.values()), None)}[wrapped]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "flip", "truncate", "deflate", "append"]))
    if damage == "flip" and data:
        data = _flipped(draw, data)
    elif damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "deflate":
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info.filename))
        data = out.getvalue()
    elif damage == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    return data


@FUZZ
@given(blob=state_dict_files(), suffix=st.sampled_from([".pt", ".pth"]), arch=ARCHS_GIVEN)
def test_any_state_dict_gives_an_encoder_or_one_line(tmp_path, blob, suffix, arch):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(blob)
    _answer(path, lambda p: load_external_encoder(p, arch))


# raw bytes, including prefixes of real files --------------------------------------------------------------------------------

_PT = io.BytesIO()
torch.save(_STATE, _PT)


@FUZZ
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", _PT.getvalue()[:200], _SAFETENSORS[:200], (2**63).to_bytes(8, "little")]),
       rest=st.binary(max_size=2048), suffix=st.sampled_from([".pt", ".safetensors", ".bin"]))
def test_any_bytes_give_one_line(tmp_path, prefix, rest, suffix):
    path = tmp_path / f"raw{suffix}"
    path.write_bytes(prefix + rest)
    _answer(path, lambda p: load_external_encoder(p, "resnet18"))
    _answer(path, load_external_encoder)
    if suffix == ".safetensors":
        _answer(path, load_encoder)


# images: any bytes under an image suffix ------------------------------------------------------------------------------


def _image(fmt: str, size=(32, 32), mode="RGB", **kwargs) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


from PIL import Image  # noqa: E402 - beside the image generators that use it

IMAGE_SEEDS = [("x.png", _image("PNG")), ("x.png", _image("PNG", mode="RGBA")), ("x.PNG", _image("PNG", (300, 20), mode="L")),
               ("x.jpg", _image("JPEG")), ("x.jpeg", _image("JPEG", (64, 64), progressive=True)), ("x.bmp", _image("BMP")),
               ("x.webp", _image("WEBP")), ("x.png", _image("GIF")), ("x.png", _image("TIFF")), ("x.png", EPS)]
IMAGE_NAMES = ["x.png", "x.jpg", "x.jpeg", "x.bmp", "x.webp"]


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """A file name and its bytes: under its own format's suffix half the time, under any image suffix otherwise."""
    own, blob = draw(st.sampled_from(IMAGE_SEEDS))
    name = draw(st.sampled_from([own, own, *IMAGE_NAMES]))
    damage = draw(st.sampled_from(["none", "flip", "truncate", "append", "size", "raw"]))
    if damage == "flip":
        blob = _flipped(draw, blob)
    elif damage == "truncate":
        blob = blob[: draw(st.integers(0, len(blob)))]
    elif damage == "append":
        blob += draw(st.binary(min_size=1, max_size=256))
    elif damage == "size":  # the header claims another size than its data holds
        h, w = draw(st.sampled_from([0, 1, 31, 33, 4096, 4097, 65500, 2**31 - 1])), draw(st.sampled_from([0, 1, 32, 4096, 65535]))
        if blob.startswith(b"\x89PNG"):
            blob = blob[:16] + w.to_bytes(4, "big") + h.to_bytes(4, "big") + blob[24:]
        elif b"\xff\xc0" in blob:
            blob = _with_jpeg_size(blob, min(h, 65535), w)
    elif damage == "raw":
        blob = draw(st.binary(max_size=512))
    return name, blob


@FUZZ
@given(file=image_files())
def test_any_bytes_named_as_an_image_give_an_image_or_one_line(tmp_path, stand_in_gs, file):
    name, blob = file
    folder = tmp_path / "images"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "good.png")
    (folder / name).write_bytes(blob)
    with peak_memory(required=False) as peak:
        for load in (lambda: load_image_folder(folder), lambda: load_trigger(str(folder / name), 6)):
            try:
                loaded = load()
            except ValueError as e:
                assert "\n" not in str(e) and name in str(e), str(e)
                event(f"refused: {re.sub(r'[0-9]+', 'N', str(e).split(': ', 1)[1])[:40]}")
            else:
                event("loaded")
                if isinstance(loaded, torch.Tensor):
                    assert loaded.dtype == torch.uint8 and loaded.shape == (2, 3, 32, 32)
    assert peak.bytes < MEMORY_BOUND, f"{peak.bytes / MB:.0f} MB for a {len(blob)}-byte image"
    assert not stand_in_gs.exists(), "Ghostscript ran"


# rows files: every row read back, everything else counted ---------------------------------------------------------------

REQUIRED = [f.name for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
METRIC_VALUES = st.one_of(st.floats(0, 100), st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def rows_files(draw) -> tuple[str, list[Row]]:
    """A rows file's text and the rows a reader must find in it."""
    lines, expected = [], []
    for _ in range(draw(st.integers(0, 8))):
        r = row(seed=draw(st.integers(0, 99)), acc=draw(METRIC_VALUES), asr=draw(METRIC_VALUES))
        text = r.to_json()
        kind = draw(st.sampled_from(["row", "torn+row", "torn", "drop", "add", "retype", "json", "text", "blank"]))
        cut = draw(st.integers(1, len(text) - 1))
        if kind in ("row", "torn+row"):
            lines.append(text if kind == "row" else text[:cut] + text)
            expected.append(r)
        elif kind == "torn":
            lines.append(text[:cut])
        elif kind in ("drop", "add", "retype"):
            record = json.loads(text)
            field = draw(st.sampled_from(REQUIRED))
            if kind == "drop":
                del record[field]
            elif kind == "add":
                record[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in record))] = draw(JSON)
            else:
                record[field] = [1]  # no field of a row is a list
            lines.append(json.dumps(record, sort_keys=True))
        elif kind == "json":
            lines.append(json.dumps(draw(JSON)))
        elif kind == "text":
            lines.append(draw(st.text(max_size=200).map(lambda t: t.replace("\n", " ").replace("\r", " "))))
        else:
            lines.append("")
    return "\n".join(lines) + ("\n" if lines else ""), expected


def _same_row(a: Row, b: Row) -> bool:
    same = lambda x, y: x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))  # noqa: E731
    return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(Row) if f.name != "seconds")


@FUZZ
@given(file=rows_files())
def test_any_rows_file_gives_back_every_row_and_counts_the_rest(tmp_path, file):
    text, expected = file
    (tmp_path / "rows.jsonl").write_text(text, encoding="utf-8")
    read = ResultsStore(tmp_path).read()
    assert len(read.rows) == len(expected) and all(map(_same_row, read.rows, expected))
    for line in read.misfits:
        json.loads(line)  # a misfit is JSON; what is not is a torn part
    event(f"{len(read.rows)} rows, {len(read.misfits)} misfits, {read.torn} torn")
