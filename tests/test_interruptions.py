"""Killed runs and concurrent workers: no corrupt file is ever left, and an artifact is built once.

Real subprocesses, real SIGKILLs. The writer goes through the store's and the results' write
paths, and at a write chosen by the test it stops half-way and says so on its stdout; only
then is it killed. The moment of the kill is set by the writer's own signal, never by a clock,
so a loaded machine changes how long the test takes, not what it tests. Afterwards every file
is complete, no temporary file survives the next open of the store, no complete results row is
lost, and the next run rebuilds exactly what was never stored.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from harness.encoder_files import load_encoder
from harness.store import STALE_TEMP_SECONDS, ArtifactStore
from harness.models import build_encoder
from harness.rows import ResultsStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# Every write of an artifact file goes through `atomic.atomic_write`, every results row through the file that
# `harness.rows` opens: the writer wraps both, counts the writes, and stalls half-way through the
# `stall_at`-th one. It prints what it finished, so the test knows what must have survived.
WRITER = textwrap.dedent("""
    import sys, time, torch
    import harness.atomic as atomic, harness.rows as rows_module
    from harness.store import ArtifactStore
    from harness.models import build_encoder
    from harness.rows import ResultsStore
    from tests.test_tables import row

    cache, out, run, stall_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    writes = 0

    def stall_here() -> bool:
        global writes
        writes += 1
        return writes == stall_at

    def stall(what):
        print(f"stalled {what}", flush=True)
        time.sleep(3600)  # the test kills the writer here

    real_atomic_write = atomic.atomic_write

    def slow_atomic_write(path, write, exclusive=False):
        def half(tmp):
            write(tmp)
            if stall_here():
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
                stall(path.name)
        real_atomic_write(path, half, exclusive)

    class SlowRows:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            if stall_here():
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                stall("rows.jsonl")
            return self.f.write(data)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    atomic.atomic_write = slow_atomic_write
    rows_module.open = lambda *args, **kwargs: SlowRows(open(*args, **kwargs))
    store, results = ArtifactStore(cache), ResultsStore(out)
    torch.manual_seed(run)
    for i in range(50):
        key = f"defense-{run}-{i}"
        store.encoder(key, lambda: (build_encoder("resnet18", 8), {"big": torch.rand(300_000)}, {"i": i}))
        print(f"stored {key}", flush=True)
        key = f"eval-{run}-{i}"
        store.record(key, lambda: {"acc": float(i), "pad": "x" * 200_000})
        print(f"stored {key}", flush=True)
        results.append(row(seed=1000 * run + i, acc=float(i % 100)))
        print(f"appended {1000 * run + i}", flush=True)
    sys.exit(f"the writer never reached write {stall_at}")
""")

BUILDER = textwrap.dedent("""
    import sys, time
    from harness.store import ArtifactStore
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


def _run_until_it_stalls(cache, results, run: int, stall_at: int) -> list[str]:
    """Start a writer, read what it reports until it says it stalled mid-write, then SIGKILL it."""
    log = open(cache.parent / f"writer-{run}.log", "w+")  # a file, not a pipe: a full pipe would block the writer
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cache), str(results), str(run), str(stall_at)], env=_env(),
                              stdout=subprocess.PIPE, stderr=log, text=True)
    guard = threading.Timer(900, writer.kill)  # a hung writer fails the test instead of hanging it; not a schedule
    guard.start()
    try:
        lines = []
        for line in writer.stdout:
            lines.append(line.strip())
            if line.startswith("stalled"):
                break
        else:
            log.seek(0)
            pytest.fail(f"writer {run} ended (exit {writer.wait()}) without stalling: {lines[-3:]} {log.read()[-2000:]}")
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        return lines
    finally:
        guard.cancel()
        writer.stdout.close()
        log.close()


# Each writer does 5 writes per round (encoder and its digest, record and its digest, one row); the runs
# stall in each of them after a round or two of complete writes: two torn rows in a row first, an encoder last.
STALLS = (10, 15, 6, 7, 8, 9, 11)


def test_sigkill_mid_write_never_leaves_a_corrupt_file_or_loses_a_row(tmp_path):
    cache, results = tmp_path / "cache", tmp_path / "results"
    stored, appended, attempted, stalled_in = set(), [], set(), []
    for run, stall_at in enumerate(STALLS):
        lines = _run_until_it_stalls(cache, results, run, stall_at)
        stored |= {line.split()[1] for line in lines if line.startswith("stored")}
        appended += [int(line.split()[1]) for line in lines if line.startswith("appended")]
        stalled_in.append(lines[-1].split()[1])
        if stalled_in[-1] != "rows.jsonl":  # the next writer's store sweeps it when it opens
            assert [p.name for p in cache.rglob(f".{stalled_in[-1]}.*.tmp")], f"run {run} was not killed mid-write"
        rounds = len([line for line in lines if line.startswith("appended")]) + 1
        attempted |= {f"{kind}-{run}-{i}" for kind in ("defense", "eval") for i in range(rounds)}
    assert any(".safetensors" in s for s in stalled_in) and any(".json" in s for s in stalled_in), stalled_in
    assert "rows.jsonl" in stalled_in, stalled_in
    left = sorted(cache.rglob("*.tmp"))
    ArtifactStore(cache)
    assert left and sorted(cache.rglob("*.tmp")) == left  # too young to be a dead writer's (it may be another machine's): kept
    for tmp in left:  # an hour later, the writers' locks free
        os.utime(tmp, (tmp.stat().st_atime - 2 * STALE_TEMP_SECONDS, tmp.stat().st_mtime - 2 * STALE_TEMP_SECONDS))
    store = ArtifactStore(cache)  # opening the store sweeps what killed writers left
    assert not list(cache.rglob("*.tmp"))
    for path in cache.rglob("*.safetensors"):
        load_encoder(path)  # raises on a torn file
    for key in sorted(k for k in stored if k.startswith("eval")):
        assert store.record(key, lambda: pytest.fail(f"{key} was rebuilt: it was stored"))["acc"] >= 0
    for key in sorted(k for k in stored if k.startswith("defense")):
        store.encoder(key, lambda: pytest.fail(f"{key} was rebuilt: it was stored"))
    assert [r.seed for r in ResultsStore(results).rows()] == appended  # every complete row, and no torn one

    missing = sorted(attempted - stored)
    for key in missing:  # the next run builds only what is missing
        if key.startswith("defense"):
            store.encoder(key, lambda: (build_encoder("resnet18", 4), {}, {}))
        else:
            store.record(key, lambda: {"acc": 0.0})
    assert missing and store.builds == len(missing)


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


# Two machines sharing a store on a filesystem whose locks they do not share: each process's FileLock does nothing.
UNLOCKED_BUILDER = textwrap.dedent("""
    import sys, torch
    import harness.store as store_module

    class NoSharedLock:
        def __init__(self, *args, **kwargs): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def acquire(self, timeout=None): return self
        def release(self): pass

    store_module.FileLock = NoSharedLock
    from harness.models import build_encoder
    from harness.store import ArtifactStore

    store, name = ArtifactStore(sys.argv[1]), sys.argv[2]
    torch.manual_seed(ord(name))  # the two machines build different bytes for the same keys
    for i in range(12):
        store.record(f"eval-k{i}", lambda: {"by": name, "pad": "x" * 200_000})
        store.encoder(f"defense-k{i}", lambda: (build_encoder("resnet18", 4), {}, {"by": name}))
    print("done", flush=True)
""")


def test_two_machines_without_shared_locks_never_leave_a_file_that_is_served_wrong(tmp_path):
    cache = tmp_path / "shared"
    builders = [subprocess.Popen([sys.executable, "-c", UNLOCKED_BUILDER, str(cache), name], env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for name in "ab"]
    results = [b.communicate(timeout=300) for b in builders]
    assert [b.returncode for b in builders] == [0, 0], [err[-500:] for _, err in results]
    store = ArtifactStore(cache)
    for i in range(12):
        record = store.record(f"eval-k{i}", lambda: {"by": "rebuilt"})
        assert record["by"] in ("a", "b", "rebuilt")  # a consistent pair, or a logged miss: never a mixed file
        _, _, meta = store.encoder(f"defense-k{i}", lambda: (build_encoder("resnet18", 4), {}, {"by": "rebuilt"}))
        assert meta["by"] in ("a", "b", "rebuilt")
    assert not list(cache.rglob("*.tmp"))
