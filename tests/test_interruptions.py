"""Killed runs and concurrent workers: no corrupt file is ever left, and an artifact is built once.

Real subprocesses, real SIGKILLs: a writer loops over the store's and the results' write
paths and is killed at random moments; afterwards every file must be complete, the next
run rebuilds only what is missing, and a partial results line is never read as a row.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.artifacts import ArtifactStore, load_encoder
from harness.models import build_encoder
from harness.results import ResultsStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

WRITER = textwrap.dedent("""
    import sys, time, torch
    from harness.artifacts import ArtifactStore
    from harness.models import build_encoder
    from harness.results import ResultsStore
    from tests.test_results import row
    store, results = ArtifactStore(sys.argv[1]), ResultsStore(sys.argv[2])
    torch.manual_seed(0)
    i = 0
    while True:  # until killed
        store.encoder(f"defense-{i % 7}", lambda: (build_encoder("resnet18", 8), {"big": torch.rand(300_000)}, {"i": i}))
        store.record(f"eval-{i % 11}", lambda: {"acc": float(i), "pad": "x" * 200_000})
        results.append(row(seed=i, acc=float(i % 100)))
        i += 1
""")

BUILDER = textwrap.dedent("""
    import sys, time
    from harness.artifacts import ArtifactStore
    from harness.models import build_encoder
    def build():
        with open(sys.argv[2], "a") as f:
            f.write("built\\n")
        time.sleep(1.0)  # long enough for the other worker to arrive and wait on the lock
        return build_encoder("resnet18", 4), {}, {"by": sys.argv[3]}
    _, _, meta = ArtifactStore(sys.argv[1]).encoder("pretrain-shared", build)
    print(meta["cached"])
""")


def _env() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_write_never_leaves_a_corrupt_file(tmp_path):
    cache, results = tmp_path / "cache", tmp_path / "results"
    rng = random.Random(0)
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cache), str(results)], env=_env())
        time.sleep(1.5 + rng.random() * 1.5)  # past start-up, somewhere in the write loop
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    encoders = sorted(cache.rglob("*.safetensors"))
    records = sorted(cache.rglob("*.json"))
    assert encoders and records, "the writer never got to write; raise the sleep"
    for path in encoders:
        load_encoder(path)  # raises on a torn file
    store = ArtifactStore(cache)
    for path in records:
        assert store.record(path.stem, lambda: pytest.fail(f"{path} was rebuilt: it is complete"))["acc"] >= 0
    assert not [p for p in cache.rglob("*.tmp")], "temporary files are removed or never renamed into place"
    lines = (results / "rows.jsonl").read_text().splitlines()
    rows = ResultsStore(results).rows()
    assert len(rows) >= len(lines) - 6  # at most one partial line per kill, and it is skipped
    missing = [f"defense-{i}" for i in range(7) if not (cache / "defense" / f"defense-{i}.safetensors").exists()]
    for key in missing:  # the next run builds only what is missing
        store.encoder(key, lambda: (build_encoder("resnet18", 4), {}, {}))
    assert store.builds == len(missing)


def test_two_workers_build_a_shared_artifact_once_and_read_the_same_bytes(tmp_path):
    log = tmp_path / "builds.log"
    workers = [
        subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path / "cache"), str(log), name], env=_env(), stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    outputs = sorted(w.communicate(timeout=120)[0].strip() for w in workers)
    assert all(w.returncode == 0 for w in workers)
    assert log.read_text().count("built") == 1  # a lock, not hope
    assert outputs == ["False", "True"]  # one built it, the other waited and read it
    (path,) = (tmp_path / "cache").rglob("*.safetensors")
    first, _, _ = load_encoder(path)
    second, _, _ = ArtifactStore(tmp_path / "cache").encoder("pretrain-shared", lambda: pytest.fail("rebuilt"))
    assert all((a == b).all() for a, b in zip(first.state_dict().values(), second.state_dict().values()))
