"""The Numba environment: read-only package dir, NUMBA_DISABLE_JIT, NUMBA_NUM_THREADS.

Numba reads its environment once, at import, so every check of a real
environment runs in a subprocess; `fastnn.config._ensure_writable_cache` is
also checked in-process with `os.access` patched, because the tests run as
root here and root ignores a read-only chmod.

The agreement suite under NUMBA_DISABLE_JIT=1 is `nox -s nojit`
(tests/test_agreement.py on small shapes); here the CLI and a training epoch
are driven through the jit-less kernels once.

A full MNIST epoch under NUMBA_DISABLE_JIT=1 is not run: the loops execute as
plain Python at about 400 samples/s, so `python -m fastnn.train --epochs 1
--hidden 4 --batch-size 2000 --kernel numba` would take several minutes. The
same command runs on the 64-image synthetic set instead.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import helpers
import numpy as np
import pytest

from fastnn import config, train
from fastnn.kernels import stale_cache


@pytest.fixture
def cache_env(monkeypatch, tmp_path):
    """NUMBA_CACHE_DIR unset (and restored afterwards), user cache and temp dir in tmp_path."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", "placeholder")  # so that undo() restores the original
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def package_read_only(monkeypatch):
    """os.access says the fastnn package dir (and anything in it) is not writable."""
    real = os.access
    package = str(config.PACKAGE_DIR)

    def access(path, mode, *args, **kw):
        if mode & os.W_OK and os.path.abspath(os.fspath(path)).startswith(package):
            return False
        return real(path, mode, *args, **kw)

    monkeypatch.setattr(os, "access", access)


def assert_writable_dir(path):
    path = Path(path)
    assert path.is_dir()
    (path / "probe").write_bytes(b"x")
    (path / "probe").unlink()


# ------------------------------------------------------------------ _ensure_writable_cache


def test_read_only_package_dir_sends_the_cache_to_the_user_cache_dir(cache_env, monkeypatch):
    package_read_only(monkeypatch)
    config._ensure_writable_cache()
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    assert chosen == str(cache_env / "xdg" / "fastnn" / "numba")
    assert_writable_dir(chosen)


def test_unusable_user_cache_falls_back_to_the_temp_dir(cache_env, monkeypatch):
    (cache_env / "afile").write_text("a file, so nothing can be created under it\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_env / "afile"))
    package_read_only(monkeypatch)
    config._ensure_writable_cache()
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    assert chosen == str(cache_env / "tmp" / "fastnn-numba-cache")
    assert_writable_dir(chosen)


def test_no_writable_candidate_leaves_numba_to_its_own_fallback(cache_env, monkeypatch):
    (cache_env / "afile").write_text("x\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_env / "afile"))
    monkeypatch.setattr(tempfile, "tempdir", str(cache_env / "afile" / "tmp"))
    package_read_only(monkeypatch)
    config._ensure_writable_cache()  # no exception
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_writable_package_or_explicit_cache_dir_is_left_alone(cache_env, monkeypatch):
    config._ensure_writable_cache()  # the package dir is writable here
    assert "NUMBA_CACHE_DIR" not in os.environ
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache_env / "mine"))
    package_read_only(monkeypatch)
    config._ensure_writable_cache()
    assert os.environ["NUMBA_CACHE_DIR"] == str(cache_env / "mine")


# ------------------------------------------------------------------ read-only package, for real

# Runs in a subprocess from a read-only copy of the package. As root, chmod does not
# stop writes, so os.access is also made to say "read-only" for the copy.
READ_ONLY_RUN = """
import json, os, sys
copy = sys.argv[1]
real_access = os.access
def access(path, mode, *a, **kw):
    if mode & os.W_OK and os.path.abspath(os.fspath(path)).startswith(copy):
        return False
    return real_access(path, mode, *a, **kw)
os.access = access
if sys.argv[2] == "cli":
    import fastnn.train  # what python -m fastnn.train imports first
import numpy as np
from fastnn.kernels import get_kernel
get_kernel("numba")
from fastnn.kernels import numba_layers
assert numba_layers.__file__.startswith(copy), numba_layers.__file__
Z = np.linspace(-1, 1, 12).reshape(3, 4)
A = np.empty_like(Z)
numba_layers.relu_forward(Z, A)
assert (A == np.maximum(Z, 0)).all()
print(json.dumps(dict(cache_dir=os.environ.get("NUMBA_CACHE_DIR"),
                      hits=sum(numba_layers.relu_forward.stats.cache_hits.values()))))
"""


def read_only_copy(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(config.PACKAGE_DIR, site / "fastnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    for p in sorted(site.rglob("*"), reverse=True) + [site]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    return site


def make_writable(site):
    for p in [site, *site.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("order", ["cli", "library"])
def test_read_only_package_caches_compiled_code_in_the_fallback_dir(tmp_path, order):
    """`python -m fastnn.train` imports fastnn.config before numba; library use
    (get_kernel("numba"), and so `python -m fastnn.predict/evaluate --kernel numba`)
    imports numba first. Either way the compiled code must be cached in the writable
    fallback dir that fastnn.config chose, and the second run must load it from there."""
    site = read_only_copy(tmp_path)
    env = helpers.subprocess_env(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    fallback = tmp_path / "xdg" / "fastnn" / "numba"
    try:
        runs = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", READ_ONLY_RUN, str(site), order],
                                 env=env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=300)
            assert res.returncode == 0, res.stderr
            assert "Traceback" not in res.stderr
            runs.append(json.loads(res.stdout.splitlines()[-1]))
        in_package = sorted(str(p.relative_to(site)) for p in site.rglob("*.nb[ic]"))
        in_fallback = sorted(p.name for p in fallback.rglob("*.nb[ic]"))
    finally:
        make_writable(site)
    assert runs[0]["cache_dir"] == str(fallback)
    assert in_package == [], (
        f"with the {order} import order Numba ignored NUMBA_CACHE_DIR={fallback} (set after "
        f"`import numba`) and cached into the read-only package: {in_package}")
    assert in_fallback, f"nothing cached in {fallback}"
    assert runs[1]["hits"] >= 1, "the second run compiled again instead of loading the cache"


# ------------------------------------------------------------------ NUMBA_DISABLE_JIT=1

NOJIT_EPOCH = """
import numpy as np
from fastnn.kernels import get_kernel
from fastnn.model import copy_params, init_params
from fastnn.optim import Optimizer
from fastnn.tolerances import assert_agree
import numba
assert numba.config.DISABLE_JIT
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (240, 784)).astype(np.uint8)
images[rng.random(images.shape) < 0.7] = 0
labels = rng.integers(0, 10, 240)
order = rng.permutation(240)
params = init_params([784, 4, 10], seed=1)
ref = copy_params(params)
ref_loss, ref_acc = get_kernel("numpy").train_epoch(ref, images, labels, order, 16, 0.05,
                                                    Optimizer("momentum"))
for name in ("numba:samples", "numba:rows", "numba:split", "numba:simple"):
    ours = copy_params(params)
    loss, acc = get_kernel(name).train_epoch(ours, images, labels, order, 16, 0.05,
                                             Optimizer("momentum"))
    assert_agree(loss, ref_loss, np.float32, name + " loss", trajectory=True)
    for (W, b), (Wr, br) in zip(ours, ref):
        assert_agree(W, Wr, np.float32, name + " W", trajectory=True)
        assert_agree(b, br, np.float32, name + " b", trajectory=True)
    print(name, "agrees", loss, ref_loss)
"""


def test_numba_kernels_without_jit_train_like_numpy(tmp_path):
    res = subprocess.run([sys.executable, "-c", NOJIT_EPOCH], cwd=tmp_path, text=True,
                         env=helpers.subprocess_env(NUMBA_DISABLE_JIT="1"), capture_output=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    for name in ("numba:samples", "numba:rows", "numba:split", "numba:simple"):
        assert f"{name} agrees" in res.stdout


@pytest.fixture
def synthetic(files, data_dir):
    """(files, data dir) of the synthetic data set, trusted in this process too."""
    return files, data_dir


def test_cli_with_numba_disable_jit(tmp_path, synthetic, capsys):
    """`python -m fastnn.train --epochs 1 --hidden 4 --kernel numba` with NUMBA_DISABLE_JIT=1
    runs (on the synthetic data) and ends where the NumPy kernel does."""
    files, folder = synthetic
    args = ["--data-dir", folder, "--epochs", "1", "--hidden", "4", "--batch-size", "16",
            "--no-plot"]
    res = helpers.synthetic_cli(tmp_path, files, *args, "--kernel", "numba", "--json", "nojit.json",
                           env={"NUMBA_DISABLE_JIT": "1"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "test accuracy" in res.stdout
    code, _, err = helpers.call(train.main, [*args, "--kernel", "numpy", "--json",
                                        tmp_path / "numpy.json"], capsys)
    assert code == 0, err
    nojit = json.loads((tmp_path / "nojit.json").read_text())["epochs"][0]
    ref = json.loads((tmp_path / "numpy.json").read_text())["epochs"][0]
    assert nojit["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    assert nojit["test_accuracy"] == ref["test_accuracy"]


# ------------------------------------------------------------------ NUMBA_NUM_THREADS=1


def test_threads_beyond_numba_num_threads_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastnn.train", "--threads", "2", "--no-plot"],
                         cwd=tmp_path, text=True, capture_output=True, timeout=120,
                         env=helpers.subprocess_env(NUMBA_NUM_THREADS="1"))
    helpers.assert_usage_error(res.returncode, res.stderr, r"--threads 2: .*choose 1\.\.1\b")
    assert res.stdout == "" and list(tmp_path.iterdir()) == []


def test_training_with_numba_num_threads_1(tmp_path, synthetic):
    files, folder = synthetic
    res = helpers.synthetic_cli(tmp_path, files, "--data-dir", folder, "--kernel", "numba",
                           "--epochs", "1", "--hidden", "4", "--batch-size", "16", "--no-plot",
                           "--threads", "1", "--json", "run.json",
                           env={"NUMBA_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and ", 1 thread" in res.stdout
    result = json.loads((tmp_path / "run.json").read_text())
    assert result["config"]["threads"] == 1
    assert np.isfinite(result["epochs"][0]["loss"])


# ------------------------------------------------------------------ a stale cache

STALE_RUN = """
import json, sys
import numpy as np
from fastnn.kernels import numba_layers
assert numba_layers.__file__.startswith(sys.argv[1]), numba_layers.__file__
Z = np.linspace(-1, 1, 12).reshape(3, 4)
A = np.empty_like(Z)
numba_layers.relu_forward(Z, A)
print(json.dumps(sum(numba_layers.relu_forward.stats.cache_hits.values())))
"""


def test_an_edited_kernel_source_clears_the_whole_numba_cache(tmp_path):
    """Numba would reload a function whose own file did not change even when code it
    inlines from another file did; fastnn drops its cache instead (stale_cache)."""
    site = tmp_path / "site"
    shutil.copytree(config.PACKAGE_DIR, site / "fastnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    env = helpers.subprocess_env(PYTHONPATH=str(site))
    env.pop("NUMBA_CACHE_DIR", None)  # the copy's own __pycache__
    env.pop("NUMBA_DISABLE_JIT", None)  # nothing is cached without the JIT

    def cache_hits():
        run = subprocess.run([sys.executable, "-c", STALE_RUN, str(site)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout.splitlines()[-1])

    assert cache_hits() == 0  # compiled, and cached
    assert cache_hits() == 1  # loaded from the cache
    with open(site / "fastnn" / "augment.py", "a") as f:
        f.write("\n# an edit in a file that relu_forward does not live in\n")
    assert cache_hits() == 0  # the cache was dropped: compiled afresh
    assert cache_hits() == 1


def test_clear_stale_deletes_numba_files_only_when_the_stamp_differs(tmp_path):
    for name in ("mod.f-3.py311.nbi", "mod.f-3.py311.1.nbc", "other.pyc"):
        (tmp_path / name).write_bytes(b"x")
    assert stale_cache.clear_stale(tmp_path, "digest 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale_cache.STAMP, "other.pyc"]
    (tmp_path / "mod.g-9.py311.nbi").write_bytes(b"x")
    assert not stale_cache.clear_stale(tmp_path, "digest 1")
    assert (tmp_path / "mod.g-9.py311.nbi").exists()
    assert stale_cache.clear_stale(tmp_path, "digest 2")
    assert not (tmp_path / "mod.g-9.py311.nbi").exists()
    assert (tmp_path / stale_cache.STAMP).read_text() == "digest 2"


def test_fingerprint_follows_every_source(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    before = stale_cache.fingerprint([a, b])
    assert stale_cache.fingerprint([a, b]) == before
    b.write_text("y = 3\n")
    assert stale_cache.fingerprint([a, b]) != before
    assert {p.name for p in stale_cache.SOURCES} >= {"numba_distort.py", "numba_shared.py",
                                                      "augment.py", "config.py"}


_VECTOR_WIDTH = """import os, re, sys
import llvmlite.binding as ll
import numpy as np
host = ll.get_host_cpu_features().flatten()
before = os.environ.get("NUMBA_CPU_FEATURES")
exec(sys.argv[1])  # what ran before fastnn's import
from fastnn.kernels import numba_tiles
a = np.ones((4, 784), np.float32)
numba_tiles._dots_4x4(*a, *a, 0, 784)
asm = numba_tiles._dots_4x4.inspect_asm(numba_tiles._dots_4x4.signatures[0])
after = os.environ.get("NUMBA_CPU_FEATURES")
print("+avx512f" in host.split(","), after == before, after == host)
print((after or "").endswith(",-prefer-256-bit"))
print(len(re.findall(r"zmm", asm)))
"""


def _vector_width(tmp_path, before="", **env):
    """(host has AVX-512, NUMBA_CPU_FEATURES unchanged by the import, it is the host's
    features, it asks for 512-bit vectors, zmm registers in a product's code) in a
    fresh interpreter that runs ``before`` and then imports fastnn."""
    base = {k: v for k, v in helpers.subprocess_env().items()
            if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_ENABLE_AVX")}
    res = subprocess.run([sys.executable, "-c", _VECTOR_WIDTH, before], cwd=tmp_path,
                         text=True, env=dict(base, NUMBA_CACHE_DIR=str(tmp_path / "cache"), **env),
                         capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    head, wide, zmm = res.stdout.split("\n")[:3]
    avx512, unchanged, host = (word == "True" for word in head.split())
    return avx512, unchanged, host, wide == "True", int(zmm)


@pytest.mark.parametrize("before", ["", "import numba"])
def test_avx512_loops_use_the_full_vector_width(tmp_path, before):
    """On an AVX-512 CPU fastnn asks LLVM for 512-bit vectors (its Intel tunings prefer
    256: half of each register idle), whether or not Numba was imported first, and the
    products use zmm registers; elsewhere it sets nothing."""
    avx512, unchanged, _, wide, zmm = _vector_width(tmp_path, before)
    assert wide == avx512 and unchanged == (not avx512)
    assert (zmm > 0) == avx512


def test_numba_compiling_first_keeps_the_hosts_features(tmp_path):
    """Numba that compiled before fastnn's import has its features: fastnn leaves them,
    and pins them for the processes it starts (a child must compute the same bits)."""
    avx512, unchanged, host, wide, _ = _vector_width(
        tmp_path, "import numba; numba.njit(lambda x: x + 1)(1)")
    assert not wide and (host if avx512 else unchanged)


def test_a_users_cpu_features_are_kept(tmp_path):
    """NUMBA_CPU_FEATURES set by the user is theirs: fastnn leaves it alone."""
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features().flatten()
    _, unchanged, _, wide, _ = _vector_width(tmp_path, NUMBA_CPU_FEATURES=host)
    assert unchanged and not wide


# Every array the kernels allocate is freed, and nothing is freed twice: the functions
# compiled without reference counting (config.JIT_LEAF) take and slice arrays but never
# hold one; a slip there would free a buffer early (more frees than allocations) or
# leak one. NUMBA_NRT_STATS is read at start-up: a process of its own.
NRT_BALANCE = """
import json
import numpy as np
from numba.core.runtime import rtsys
from fastnn import model
from fastnn.kernels import get_kernel
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (200, 784)).astype(np.uint8)
X[rng.random(X.shape) < 0.8] = 0
y = rng.integers(0, 10, 200)
out = {}
for name, hidden in (("numba:samples", 10), ("numba:split", 10), ("numba:rows", 10),
                     ("numba:inked", 64), ("numba:simple", 10)):
    kernel = get_kernel(name)
    params = model.init_params([784, hidden, 10], dtype=np.float32, seed=0)
    kernel.train_epoch(params, X, y, np.arange(200), 32, 0.1)  # compiled before counting
    kernel.predict(params, X)
    before = rtsys.get_allocation_stats()
    for shifts in (None, rng.integers(-2, 3, (200, 2))):
        kernel.train_epoch(params, X, y, rng.permutation(200), 32, 0.1, shifts=shifts)
    kernel.predict(params, X)
    after = rtsys.get_allocation_stats()
    out[name] = [after.alloc - before.alloc, after.free - before.free,
                 after.mi_alloc - before.mi_alloc, after.mi_free - before.mi_free]
print(json.dumps(out))
"""


def test_kernels_free_every_array_once(tmp_path):
    res = subprocess.run([sys.executable, "-c", NRT_BALANCE], cwd=tmp_path, text=True,
                         env=helpers.subprocess_env(NUMBA_NRT_STATS="1"),
                         capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(counts) == {"numba:samples", "numba:split", "numba:rows", "numba:inked",
                           "numba:simple"}
    for name, (alloc, free, mi_alloc, mi_free) in counts.items():
        assert alloc > 0, name  # the counters count: each epoch allocates its buffers
        assert (alloc, mi_alloc) == (free, mi_free), (name, counts[name])
