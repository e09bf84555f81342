import json
from dataclasses import dataclass

import pytest
import torch

from harness.cache_keys import artifact_key, canonical, code_version
from harness.encoder_files import ArtifactError, load_encoder, save_encoder
from harness.store import ArtifactStore
from harness.models import build_encoder
from harness.triggers import make_trigger


@dataclass(frozen=True)
class Cfg:
    a: int = 1
    b: tuple = (1, 2)


def test_key_depends_on_every_part_and_not_on_order():
    k = artifact_key("s", config=Cfg(), seed=0, data="abc")
    assert k == artifact_key("s", data="abc", seed=0, config=Cfg())
    assert k != artifact_key("s", config=Cfg(a=2), seed=0, data="abc")
    assert k != artifact_key("s", config=Cfg(), seed=1, data="abc")
    assert k != artifact_key("s", config=Cfg(), seed=0, data="abd")
    assert k.startswith("s-")


def test_key_uses_trigger_fingerprints_and_ignores_device():
    a = artifact_key("s", trigger=make_trigger("patch", 3), device=torch.device("cpu"))
    assert a == artifact_key("s", trigger=make_trigger("patch", 3), device=torch.device("meta"))
    assert a != artifact_key("s", trigger=make_trigger("patch", 5), device=torch.device("cpu"))


def test_canonical_refuses_unhashable_values():
    with pytest.raises(TypeError, match="Tensor"):
        canonical({"x": torch.zeros(1)})


def test_code_version_changes_with_the_source_in_a_new_process_only(tmp_path, monkeypatch):
    from harness.cache_keys import clear_source_caches

    (tmp_path / "mod_v.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    v1 = code_version("mod_v")
    (tmp_path / "mod_v.py").write_text("X = 2\n")
    assert code_version("mod_v") == v1  # this process ran the old source
    clear_source_caches()  # as a new process would
    assert code_version("mod_v") != v1


def test_code_version_follows_in_project_imports_transitively(tmp_path, monkeypatch):
    from harness.cache_keys import clear_source_caches

    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "attack.py").write_text("from proj.loop import tamper\nimport json\n")
    (pkg / "loop.py").write_text("def tamper():\n    from proj import losses\n    return losses\n")
    (pkg / "losses.py").write_text("W = 1\n")
    (pkg / "other.py").write_text("Z = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_source_caches()
    before = code_version("proj.attack", packages=("proj",))
    (pkg / "other.py").write_text("Z = 2\n")  # not imported: the key stays
    clear_source_caches()
    assert code_version("proj.attack", packages=("proj",)) == before
    (pkg / "losses.py").write_text("W = 2\n")  # imported lazily, two hops away
    clear_source_caches()
    assert code_version("proj.attack", packages=("proj",)) != before


def test_an_attack_key_hashes_the_loop_it_borrows():
    from harness.cache_keys import code_version
    from harness.registry import ATTACKS

    borrowed = code_version(ATTACKS.get("adaptive").module)
    assert code_version("attacks.adaptive", "attacks.badencoder") == borrowed  # badencoder is in adaptive's closure already


def test_encoder_round_trip_with_extras_and_meta(tmp_path):
    enc = build_encoder("resnet18", 4)
    path = tmp_path / "e.safetensors"
    save_encoder(path, enc, {"trigger.mask": torch.ones(1, 32, 32)}, {"target": 3})
    loaded, extra, meta = load_encoder(path)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), loaded.state_dict().values()))
    assert extra["trigger.mask"].shape == (1, 32, 32) and meta == {"target": 3}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_corrupt_encoder_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ArtifactError, match="bad.safetensors"):
        load_encoder(path)


def test_wrong_shapes_are_a_clear_error(tmp_path):
    path = tmp_path / "e.safetensors"
    save_encoder(path, build_encoder("resnet18", 4))
    blob = path.read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    header["__metadata__"]["arch_config"] = json.dumps({"width": 8, "blocks": [2, 2, 2, 2]})
    new = json.dumps(header).encode()
    path.write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + header_len :])
    with pytest.raises(ArtifactError, match=r"e.safetensors: tensor \S+ has shape \(4,.*\), resnet18 ArchConfig\(width=8.* needs \(8,"):
        load_encoder(path)


def test_non_finite_weights_in_a_harness_file_are_named(tmp_path):
    encoder = build_encoder("resnet18", 4)
    with torch.no_grad():
        encoder.layer2[0].bn1.weight[1] = float("inf")
    save_encoder(tmp_path / "inf.safetensors", encoder)
    with pytest.raises(ArtifactError, match="inf.safetensors: tensor layer2.0.bn1.weight holds NaN or Inf"):
        load_encoder(tmp_path / "inf.safetensors")


def test_store_builds_once_then_serves_from_disk(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return build_encoder("resnet18", 4), {}, {"note": "x"}

    store = ArtifactStore(tmp_path)
    _, _, m1 = store.encoder("pretrain-abc", build)
    _, _, m2 = ArtifactStore(tmp_path).encoder("pretrain-abc", build)
    assert calls == [1] and m1["cached"] is False and m2["cached"] is True
    assert m1["seconds"] == m2["seconds"] and m2["note"] == "x"


def test_store_records_round_trip(tmp_path):
    store = ArtifactStore(tmp_path)
    r1 = store.record("eval-1", lambda: {"acc": 1.5})
    r2 = store.record("eval-1", lambda: pytest.fail("rebuilt"))
    assert r1["acc"] == r2["acc"] == 1.5 and r2["cached"]


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        store.record("eval-2", boom)
    assert not list(tmp_path.rglob("*.json"))
