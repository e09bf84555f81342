"""The Python API (harness/__init__.py, harness/api.py) and `harness run` without pytest."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import harness
from harness.api import settings_from
from harness.encoder_files import save_encoder
from harness.store import ArtifactStore
from harness.models import build_encoder
from harness.options import OptionError
from harness.pipeline import Workbench
from harness.profiles import get_profile
from harness.registry import UnknownNameError
from tests.test_plugin import MICRO_FIELDS

ROOT = Path(__file__).resolve().parents[1]
SLICE = ["--attack=badencoder", "--defense=ft", "--downstream=fmnist", *(a for f in MICRO_FIELDS for a in ("--set", f)),
         "--set", "budget_fraction=0.001", "--device=cpu"]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_import_harness_is_cheap_and_names_the_api(tmp_path):
    done = _python("import sys, harness; print(sorted(m for m in ('torch', 'pandas', 'pytest') if m in sys.modules)); "
                   "print(sorted(set(harness.__all__) & set(dir(harness))))", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "['evaluate_encoder', 'progress_to', 'purify', 'run', 'scan']"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        harness.nope  # noqa: B018


def test_harness_run_needs_no_pytest_and_the_api_returns_its_rows(tmp_path):
    cache, results = tmp_path / "cache", tmp_path / "results"
    code = (f"import sys; from harness.cli import main; rc = main(['run', *{SLICE!r}, '--cache-dir', {str(cache)!r}, "
            f"'--results-dir', {str(results)!r}]); print('pytest imported:', 'pytest' in sys.modules); sys.exit(rc)")
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pytest imported: False" in done.stdout and "badencoder" in done.stdout
    assert "[ft] epoch 5/5" in done.stderr  # progress on stderr
    written = pd.read_csv(results / "results.csv")
    scenarios = get_profile("tiny").scenarios  # each scenario's controls (clean, random), suspect and defense
    assert sorted(set(zip(written["attack"], written["defense"]))) == [("badencoder", "ft"), ("badencoder", "none"), ("clean", "none"),
                                                                       ("random", "none")]
    assert len(written) == 4 * len(scenarios) and written["scenario"].nunique() == len(scenarios)

    # The library call with the same options reads the same rows from the cache.
    frame = harness.run(attack="badencoder", defense=["ft"], downstream="fmnist", overrides=[*MICRO_FIELDS, "budget_fraction=0.001"],
                        device="cpu", cache_dir=cache)
    assert isinstance(frame, pd.DataFrame)
    columns = ["attack", "defense", "scenario", "downstream", "seed", "acc", "asr_all", "asr_nontarget"]
    assert frame[columns].sort_values(columns).values.tolist() == written[columns].sort_values(columns).values.tolist()

    # Evaluating the clean encoder in one call gives the clean control's numbers: the same split, probe, trigger, target.
    settings = settings_from(overrides=[*MICRO_FIELDS, "budget_fraction=0.001"], device="cpu", cache_dir=cache)
    bench = Workbench(settings.resolved_profile, ArtifactStore(cache), torch.device("cpu"))
    metrics = harness.evaluate_encoder(bench.clean_encoder(0).encoder, "fmnist", overrides=[*MICRO_FIELDS, "budget_fraction=0.001"],
                                       device="cpu")
    clean = frame[(frame["attack"] == "clean") & (frame["scenario"] == bench.trigger().name)].iloc[0]  # the profile's trigger
    assert (round(metrics.acc, 4), round(metrics.asr_nontarget, 4)) == (clean["acc"], clean["asr_nontarget"])


def test_api_options_are_the_tables():
    with pytest.raises(TypeError, match="unknown option gate; options: attack, cache_dir"):
        settings_from(gate="acc>1")  # a pytest-only option
    with pytest.raises(OptionError, match="^--harness-seeds: expected a number >= 1"):
        harness.run(seeds=0)
    assert settings_from(attack=["bassl", "badencoder"], seeds=2, download=True).attack == ("bassl", "badencoder")


@pytest.fixture
def encoder_and_images(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 4)
    save_encoder(tmp_path / "suspect.safetensors", encoder)
    return encoder, torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), tmp_path / "suspect.safetensors"


def test_scan_in_one_call_from_an_encoder_or_its_file(encoder_and_images):
    encoder, images, path = encoder_and_images
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    found = harness.scan(encoder, images, steps=4, device="cpu")
    assert found.detector == "decree" and found.statistic == "l1_share" and found.length == 4
    assert isinstance(found.flagged, bool) and 0 < found.value <= 1 and found.flagged == (found.value < 0.05)
    assert len(found.record["mask_rows"]) in (0, 2) and found.value == found.record["l1_share"]
    assert harness.scan(path, images, steps=4, device="cpu").value == found.value
    cleanse = harness.scan(encoder, images, detector="ssl_cleanse", steps=1, device="cpu")
    assert cleanse.statistic == "anomaly_index" and cleanse.flagged == (cleanse.value > 2)
    assert len(cleanse.record["mask_l1_shares"]) == len(cleanse.record["cluster_sizes"]) == len(images)  # a cluster an image
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the caller's encoder is untouched,
    assert all(p.requires_grad for p in encoder.parameters())  # and keeps its gradients
    with pytest.raises(ValueError, match="unknown detector 'decre'; did you mean 'decree'"):
        harness.scan(encoder, images, detector="decre")


def test_purify_in_one_call_with_defense_settings(encoder_and_images):
    encoder, images, _ = encoder_and_images
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = harness.purify(encoder, images, "ft", overrides=["budget_fraction=0.001", "defense_batch=4"], device="cpu")
    assert result.meta["steps"] == {"finetune_epochs": 5}  # the budget rule's floor: 0.001 of 100 epochs
    assert any(not torch.equal(before[k], v) for k, v in result.encoder.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the caller's encoder is untouched
    with pytest.raises(UnknownNameError, match="unknown defense 'mimick'"):
        harness.purify(encoder, images, "mimick")
    with pytest.raises(TypeError, match="has no setting"):
        harness.purify(encoder, images, "mimic", lambda9=1.0)
    with pytest.raises(ValueError, match="purifies nothing"):
        harness.purify(encoder, images, "dede")  # a test-time input detector


def test_the_api_reads_any_recognised_layout_behind_its_geometry(tmp_path, encoder_and_images):
    import torchvision

    from harness.api import load_user_encoder
    from harness.scanning import scan_encoder
    from harness.geometry import GeometryEncoder

    encoder, images, _ = encoder_and_images
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    checkpoint, wrapped, geometry = load_user_encoder(tmp_path / "tv.pth", image_size=32)
    assert checkpoint.layout == "torchvision" and geometry.size == 32 and geometry.mean == (0.485, 0.456, 0.406)
    assert isinstance(wrapped, GeometryEncoder) and len(checkpoint.sha256) == 64
    found = harness.scan(tmp_path / "tv.pth", images, steps=2, device="cpu", image_size=32)
    expected = scan_encoder(wrapped, images, "decree", 2, 0, torch.device("cpu"))
    assert found.value == expected.value
    result = harness.purify(tmp_path / "tv.pth", images, "ft", overrides=["budget_fraction=0.001", "defense_batch=4"], device="cpu",
                            image_size=32)
    assert isinstance(result.encoder, GeometryEncoder) and result.encoder.config.geometry == geometry
    with pytest.raises(ValueError, match="describe a file"):
        harness.scan(encoder, images, steps=2, device="cpu", image_size=32)
