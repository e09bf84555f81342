"""Crafted encoder files and image folders: refused in one line, before they decide what gets allocated or decoded.

Every file here is made by the test: small headers that lie about sizes, compressed
zip entries, tensors of the wrong kind, and images whose header promises far more
pixels than their bytes. None carries a payload beyond what the test writes itself.
"""

import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.encoder_files import ArtifactError, load_encoder, save_encoder
from harness import external
from harness.images import load_image_folder
from harness.layouts import load_external_encoder
from harness.models import ArchConfig, Encoder, build_encoder
from tests.peak import peak_memory

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def _rewrite_metadata(path: Path, **changes: str) -> None:
    """Replace fields of a safetensors file's `__metadata__`, keeping its tensors' bytes as they are."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    path.write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + n :])


def _harness_file(tmp_path: Path, name: str = "e.safetensors", **changes: str) -> Path:
    path = tmp_path / name
    save_encoder(path, build_encoder("resnet18", 4))
    if changes:
        _rewrite_metadata(path, **changes)
    return path


def _one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert path.name in message and "\n" not in message, message
    return message


# 1. the torch floor -----------------------------------------------------------------------------------------------


def test_the_torch_floor_is_past_every_known_weights_only_bypass_and_enforced_at_runtime():
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert floor and tuple(map(int, floor.groups())) == external.WEIGHTS_ONLY_SAFE_TORCH
    assert external.WEIGHTS_ONLY_SAFE_TORCH >= (2, 10)  # CVE-2026-24747 (GHSA-63cw-57p8-fm3p) was fixed in 2.10.0
    for advisory in ("CVE-2025-32434", "CVE-2026-24747"):
        assert advisory in text, f"pyproject.toml's comment should name {advisory}"


def test_state_dicts_are_refused_under_a_torch_with_a_known_weights_only_bypass(tmp_path, monkeypatch):
    torch.save(build_encoder("resnet18", 4).state_dict(), tmp_path / "e.pt")
    save_encoder(tmp_path / "e.safetensors", build_encoder("resnet18", 4))
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ArtifactError, match=r"torch 2\.5\.1.*2\.10") as error:
        load_external_encoder(tmp_path / "e.pt", "resnet18")
    _one_line_naming(error, tmp_path / "e.pt")
    load_external_encoder(tmp_path / "e.safetensors", "resnet18")  # safetensors never reach the unpickler


# 2. what a small file can make the loader allocate ------------------------------------------------------------------


def test_a_616_byte_header_claiming_width_256_allocates_nothing_before_it_is_refused(tmp_path):
    path = _harness_file(tmp_path, arch_config=json.dumps({"width": 256, "blocks": [2, 2, 2, 2], "stem": "cifar"}))
    with peak_memory() as peak, pytest.raises(ArtifactError) as error:
        load_encoder(path)
    _one_line_naming(error, path)
    assert peak.bytes < 64 * MB, f"refusing the file took {peak.bytes / MB:.0f} MB"


@pytest.mark.parametrize("arch_config", [
    {"width": 2**20}, {"width": 0}, {"width": -4}, {"width": True}, {"width": 4.0}, {"width": "4"}, {"width": [4]},
    {"width": {"nested": 4}}, {"width": 4, "blocks": [2, 2]}, {"width": 4, "blocks": [2, 2, 2, 2, 2]},
    {"width": 4, "blocks": [1, 1, 1, 1]}, {"width": 4, "blocks": "2222"}, {"width": 4, "stem": ["cifar"]},
    {"width": 4, "extra": 1}, [4], None, "not json",
], ids=repr)
def test_an_arch_config_that_is_not_the_architecture_is_one_line(tmp_path, arch_config):
    path = _harness_file(tmp_path, arch_config=arch_config if isinstance(arch_config, str) else json.dumps(arch_config))
    with peak_memory() as peak, pytest.raises(ArtifactError) as error:
        load_encoder(path)
    _one_line_naming(error, path)
    assert peak.bytes < 64 * MB


@pytest.mark.parametrize("arch_config", [
    {"width": 4, "blocks": [2, 2, 2]}, {"width": 4, "blocks": [37, 1, 1, 1]}, {"width": 4, "blocks": [0, 2, 2, 2]},
    {"width": 4, "blocks": [2, 2, 2, True]}, {"width": 4, "block": "wide"}, {"width": 4, "block": ["basic"]},
    {"width": 4, "stem_padding": 10**6}, {"width": 4, "stem_padding": -1}, {"width": 4, "stem_padding": True},
    {"width": 4, "stem": "imagenet", "stem_padding": 2}, {"width": 2**20, "blocks": [3, 4, 6, 3]},
], ids=repr)
def test_the_generic_resnet_states_its_depth_within_bounds(tmp_path, arch_config):
    """The deeper ResNets' files ("resnet", harness/resnets.py) may state four stages of 1 to MAX_BLOCKS blocks, and nothing
    unbounded: a stem padding is what every forward pass pads by, so a file may not choose a huge one."""
    path = _harness_file(tmp_path, arch="resnet", arch_config=json.dumps(arch_config))
    with peak_memory() as peak, pytest.raises(ArtifactError) as error:
        load_encoder(path)
    _one_line_naming(error, path)
    assert peak.bytes < 64 * MB


def test_the_generic_resnet_loads_the_depth_it_states(tmp_path):
    from harness.encoder_files import safetensors_metadata
    from harness.resnets import ResNetConfig, build_resnet

    for config in (ResNetConfig(width=4, blocks=(3, 4, 6, 3)), ResNetConfig(width=4, blocks=(1, 1, 2, 1), block="bottleneck", stem_padding=2)):
        save_encoder(tmp_path / "deep.safetensors", build_resnet(config))
        assert safetensors_metadata(tmp_path / "deep.safetensors", (tmp_path / "deep.safetensors").read_bytes())["arch"] == "resnet"
        assert load_encoder(tmp_path / "deep.safetensors")[0].config == build_resnet(config).config


def test_a_self_consistent_file_of_another_depth_is_not_resnet18(tmp_path):
    path = tmp_path / "short.safetensors"
    save_encoder(path, Encoder(ArchConfig(width=4, blocks=(2, 2))))  # only layer1 and layer2, and all of their tensors
    with pytest.raises(ArtifactError, match="blocks") as error:
        load_encoder(path)
    _one_line_naming(error, path)


def test_a_state_dict_whose_stem_claims_a_huge_width_is_refused_without_allocating_it(tmp_path):
    state = build_encoder("resnet18", 4).state_dict()
    state["stem.0.weight"] = torch.zeros(1).expand(2**20, 3, 3, 3)  # one float of storage, 2**20 channels of shape
    torch.save(state, tmp_path / "wide.pt")
    with peak_memory() as peak, pytest.raises(ArtifactError, match="width") as error:
        load_external_encoder(tmp_path / "wide.pt", "resnet18")
    _one_line_naming(error, tmp_path / "wide.pt")
    assert peak.bytes < 64 * MB


def _deflated(pt: bytes) -> bytes:
    """The same torch.save archive with every entry deflate-compressed (torch.save never compresses)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pt)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def test_a_compressed_pt_is_refused_before_torch_load_expands_it(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    torch.save({**build_encoder("resnet18", 4).state_dict(), "pad": torch.zeros(50 * MB // 4)}, buffer)
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(_deflated(buffer.getvalue()))
    assert bomb.stat().st_size < MB  # 50 MB of tensor in well under 1 MB of file
    del buffer

    def never(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", never)
    with peak_memory() as peak, pytest.raises(ArtifactError, match="compressed") as error:
        load_external_encoder(bomb, "resnet18")
    _one_line_naming(error, bomb)
    assert peak.bytes < 16 * MB


def test_a_legacy_format_pt_is_refused(tmp_path):
    """The pre-zip torch.save format sizes its storages from a header the file writes itself: nothing bounds them."""
    torch.save(build_encoder("resnet18", 4).state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ArtifactError, match="zip") as error:
        load_external_encoder(tmp_path / "old.pt", "resnet18")
    _one_line_naming(error, tmp_path / "old.pt")


# 3 and 12. tensors of the wrong kind ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, make, message", [
    ("layer1.0.conv1.weight", lambda v: v.to_sparse(), "sparse|layout"),
    ("layer2.0.bn1.weight", lambda v: torch.empty_like(v, device="meta"), "meta|device"),
    ("layer3.1.bn2.weight", lambda v: v.to(torch.complex64), "complex"),
    ("layer1.1.bn1.running_var", lambda v: v - 2.0, "negative"),
    ("layer4.0.conv2.weight", lambda v: v.to(torch.int32), "int32"),
], ids=["sparse", "meta", "complex", "negative running_var", "integer weight"])
def test_tensors_of_the_wrong_kind_are_named(tmp_path, key, make, message):
    state = {k: v.clone() for k, v in build_encoder("resnet18", 4).state_dict().items()}
    state[key] = make(state[key])
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ArtifactError, match=message) as error:
        load_external_encoder(tmp_path / "odd.pt", "resnet18")
    assert key in _one_line_naming(error, tmp_path / "odd.pt")


def test_arch_is_checked_for_harness_files_too(tmp_path):
    path = _harness_file(tmp_path)
    with pytest.raises(ArtifactError, match="resnet18_imagenet") as error:
        load_external_encoder(path, "resnet18_imagenet")
    _one_line_naming(error, path)
    assert load_external_encoder(path, "resnet18").config.stem == "cifar"


def test_bad_meta_json_names_the_file(tmp_path):
    path = _harness_file(tmp_path, meta="{not json")
    with pytest.raises(ArtifactError, match="meta") as error:
        load_encoder(path)
    _one_line_naming(error, path)


def test_a_directory_given_as_the_encoder_is_called_a_directory(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(ArtifactError, match="is a directory") as error:
        load_external_encoder(tmp_path / "model.pt", "resnet18")
    _one_line_naming(error, tmp_path / "model.pt")


def test_the_digest_is_of_the_bytes_that_were_loaded(tmp_path):
    import hashlib

    path = _harness_file(tmp_path)
    original = path.read_bytes()
    file = external.read_encoder_file(path)
    _harness_file(tmp_path)  # the file changes on disk after it was read: a new random encoder
    assert file.sha256 == hashlib.sha256(original).hexdigest() != hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_external_encoder(file, "resnet18")
    reference = load_encoder(tmp_path / "e.safetensors")[0]
    assert not torch.equal(loaded.stem[0].weight, reference.stem[0].weight)  # what was read, not what is there now


# 6 and 7. images ------------------------------------------------------------------------------------------------------


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
    for i, value in enumerate((1000, 32768, 65535)):
        Image.fromarray(np.full((40, 40), value, np.uint16)).save(tmp_path / f"{i}.png")
    assert Image.open(tmp_path / "0.png").mode == "I;16"
    images = load_image_folder(tmp_path)
    assert [int(images[i].unique().item()) for i in range(3)] == [4, 128, 255]  # round(v * 255 / 65535)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A grayscale PNG of `width` x `height` zero pixels, compressed row by row: its bytes stay small."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_image_is_measured_before_it_is_decoded(tmp_path):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "a.png")
    _png_header_only(tmp_path / "big.png", 9000, 9000)
    assert (tmp_path / "big.png").stat().st_size < 200_000
    with peak_memory() as peak, pytest.raises(ValueError, match=r"big\.png: 9000x9000") as error:
        load_image_folder(tmp_path)
    assert "\n" not in str(error.value)
    assert peak.bytes < 32 * MB, f"refusing the image took {peak.bytes / MB:.0f} MB"


def test_a_decompression_bomb_is_a_one_line_error(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # past Pillow's own limit: it raises at open
    with pytest.raises(ValueError, match=r"bomb\.png") as error:
        load_image_folder(tmp_path)
    assert "\n" not in str(error.value)


def test_a_large_jpeg_is_decoded_in_draft_mode(tmp_path):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (4800, 4800), (200, 10, 10)).save(tmp_path / "b.jpg", quality=90)
    with peak_memory() as peak:
        images = load_image_folder(tmp_path)
    assert images.shape == (2, 3, 32, 32)
    assert (images[1].float() - torch.tensor([200.0, 10.0, 10.0]).view(3, 1, 1)).abs().max() <= 4
    assert peak.bytes < 32 * MB, f"a 4800x4800 JPEG took {peak.bytes / MB:.0f} MB to become 32x32"
