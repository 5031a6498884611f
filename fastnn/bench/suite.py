"""The benchmarks behind `python -m fastnn.bench`, timed by pytest-benchmark alone.

Every case checks its backend (or peer) against the reference
(fastnn.tolerances.check_backend) before timing it, and fails instead of
timing a wrong kernel. Compilation is never timed: ``warmup`` and one
untimed warm-up call come first (their seconds go into extra_info).

* test_train_epoch: a round is one full epoch over the 60,000 shuffled
  training images, through the call `python -m fastnn.train` makes
  (fastnn.train.train_one_epoch; a peer's own train_epoch), plain SGD at the
  default learning rate, a fresh shuffle per round drawn untimed; the
  params keep training from round to round, as a user's epochs do.
* test_predict: a round is ``predict`` over the 10,000 test images.
* test_compile: the numba backends' ``warmup`` in fresh interpreters, with
  an empty and then a filled Numba cache.

The grid comes from $FASTNN_BENCH (JSON, written by fastnn.bench.main):
hidden widths, batch sizes, dtypes, names, rounds, data, whether to time
thread scaling (numba at 1 thread too) and compilation.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from fastnn import config, model, peers, tolerances, train
from fastnn.kernels import KERNELS, get_kernel
from fastnn.kernels.numpy_ref import to_float

SETTINGS = dict(hidden=[10, 10, 128, 800], batch_size=[32, 128, 128, 128], dtype=["float32"],
                names=[*KERNELS, *peers.PEERS], rounds=5, data="auto", scaling=True,
                compile=True, threads=None)
SETTINGS.update(json.loads(os.environ.get("FASTNN_BENCH", "{}")))
THREADS = SETTINGS["threads"] or config.max_threads()
LR = train.DEFAULTS["lr"]
SETTLE_SECONDS = 0.25
# XLA's thread pool is sized when JAX starts: its cases run at the full count only
FIXED_THREADS = ("jax-step", "jax-scan")


def _cases():
    nets = list(zip(SETTINGS["hidden"], SETTINGS["batch_size"]))
    cases = [(name, h, b, d, THREADS) for d in SETTINGS["dtype"] for h, b in nets
             for name in SETTINGS["names"]]
    if SETTINGS["scaling"] and THREADS > 1 and "numba" in SETTINGS["names"]:
        cases += [("numba", h, b, d, 1) for d in SETTINGS["dtype"] for h, b in nets]
    return cases


def _id(case):
    name, hidden, batch, dtype, threads = case
    return f"{name}-784-{hidden}-10-b{batch}-{dtype}-t{threads}"


def _seconds(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def load_data(source="auto"):
    """(train images, train labels, test images, test labels, source): real MNIST, or
    synthetic arrays of the same shape when MNIST is not to be had (or source is
    "synthetic")."""
    if source != "synthetic":
        from fastnn.data import DataError, load_mnist

        try:
            return (*load_mnist("train"), *load_mnist("test"), "MNIST")
        except DataError:
            if source == "mnist":
                raise
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70000, 784)).astype(np.uint8)
    images[rng.random(images.shape) < 0.8] = 0  # mostly background, as in MNIST
    labels = rng.integers(0, 10, 70000)
    return images[:60000], labels[:60000], images[60000:], labels[60000:], "synthetic"


@pytest.fixture(scope="session")
def data():
    return load_data(SETTINGS["data"])


def backend(name):
    """A registered backend or a peer (peers.PeerUnavailable if it is not installed)."""
    return get_kernel(name) if name in KERNELS else peers.get_peer(name)


def epoch(name, kernel, params, data, batch_size):
    """order -> (loss, accuracy): one epoch the way a user of ``name`` runs it."""
    images, labels = data[0], data[1]
    if name in KERNELS:  # the call python -m fastnn.train makes
        return lambda order: train.train_one_epoch(kernel, params, images, labels, order, None,
                                                   batch_size, LR, None, None)
    return lambda order: kernel.train_epoch(params, images, labels, order, batch_size, LR)


class _Threads:
    """Run a case at n threads: Numba's, BLAS's (threadpoolctl) or PyTorch's count."""

    def __init__(self, name, n):
        self.name, self.n = name, n

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        self.numba = config.set_threads(None)
        config.set_threads(self.n)
        self.blas = threadpool_limits(self.n)
        if self.name.startswith("torch"):
            import torch

            self.torch = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        config.set_threads(self.numba)
        self.blas.unregister()
        if self.name.startswith("torch"):
            import torch

            torch.set_num_threads(self.torch)


_checked = {}


def checked(name, hidden, batch_size, dtype, data):
    """(backend, its params, the worst difference from the reference): the backend
    checked against the reference once per case, and compiled."""
    images, labels, test_images = data[0], data[1], data[2]
    kernel = backend(name)
    params = model.init_params(model.layer_sizes([hidden]), seed=0, dtype=np.dtype(dtype))
    key = (name, hidden, batch_size, dtype)
    if key not in _checked:
        rng = np.random.default_rng(1)
        idx = rng.permutation(len(images))[:batch_size]
        rows = tolerances.check_backend(kernel, params, to_float(images[idx], dtype),
                                        labels[idx], images, labels,
                                        rng.permutation(len(images))[:4 * batch_size],
                                        batch_size, LR, test_images[:2000])
        tolerances.assert_rows(rows, f"{name} 784-{hidden}-10 {dtype}")
        _checked[key] = max(r["max_rel"] for r in rows if r["rtol"] > 0)
        # NumPy's BLAS threads spin for ~0.1 s after the reference's last product: a
        # multi-threaded run started inside that window shares its cores with them
        time.sleep(SETTLE_SECONDS)
    return kernel, params, _checked[key]


def _prepared(name, hidden, batch_size, dtype, data, benchmark):
    """checked(...) (a peer that is not installed: skipped, saying how to install it),
    its compile time and the case's description in extra_info."""
    try:
        kernel, params, worst = checked(name, hidden, batch_size, dtype, data)
    except peers.PeerUnavailable as e:
        pytest.skip(str(e))
    sizes = model.sizes_of(params)
    flops = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    benchmark.extra_info.update(
        name=name, kind="backend" if name in KERNELS else "peer", hidden=hidden,
        net="-".join(map(str, sizes)), batch_size=batch_size, dtype=dtype,
        compile_seconds=kernel.warmup(sizes, np.dtype(dtype)), worst_difference=worst,
        # forward 2 n_in n_out per layer, the weight gradient as much, the input gradient
        # as much again for every layer but the first
        train_flop=2 * (3 * flops - sizes[0] * sizes[1]), predict_flop=2 * flops,
        data=data[4])
    return kernel, params


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_train_epoch(benchmark, data, case):
    name, hidden, batch_size, dtype, threads = case
    images = data[0]
    rng = np.random.default_rng(2)
    with _Threads(name, threads):
        run = epoch(name, *_prepared(name, hidden, batch_size, dtype, data, benchmark), data,
                    batch_size)
        benchmark.extra_info.update(threads=threads, samples=len(images))
        # the first epoch compiles what warmup could not (XLA: per shape): untimed
        benchmark.extra_info["warmup_epoch_seconds"] = _seconds(run, rng.permutation(len(images)))
        loss, _ = benchmark.pedantic(run, setup=lambda: ((rng.permutation(len(images)),), {}),
                                     rounds=SETTINGS["rounds"], iterations=1)
    assert np.isfinite(loss)


def _predict_cases():
    """One per name, net and dtype, at the full thread count (batch: the check's)."""
    return list(dict.fromkeys((name, h, 128, d, THREADS) for name, h, _, d, t in _cases()
                              if t == THREADS))


@pytest.mark.parametrize("case", _predict_cases(), ids=_id)
def test_predict(benchmark, data, case):
    name, hidden, batch_size, dtype, threads = case
    test_images, test_labels = data[2], data[3]
    with _Threads(name, threads):
        backend, params = _prepared(name, hidden, batch_size, dtype, data, benchmark)
        first = _seconds(backend.predict, params, test_images)
        # rounds of a few ms: enough of them to last about a second
        rounds = max(SETTINGS["rounds"], min(1000, int(1.0 / max(first, 1e-4))))
        benchmark.extra_info.update(threads=threads, samples=len(test_images),
                                    warmup_epoch_seconds=first)
        labels = benchmark.pedantic(backend.predict, (params, test_images), rounds=rounds,
                                    iterations=1)
    assert labels.shape == test_labels.shape


_WARMUP = """import sys, numpy as np
from fastnn.kernels import get_kernel
print(get_kernel(sys.argv[1]).warmup([784, 10, 10], np.dtype(sys.argv[2])))"""


@pytest.mark.skipif(not SETTINGS["compile"], reason="compile times not asked for")
@pytest.mark.parametrize("dtype", SETTINGS["dtype"])
@pytest.mark.parametrize("name", [n for n in KERNELS if n.startswith("numba")
                                  and n in SETTINGS["names"]])
def test_compile(benchmark, name, dtype):
    """warmup()'s own seconds in a fresh interpreter: with an empty Numba cache (timed
    here, a round is the whole interpreter), then with the cache that run filled."""
    with tempfile.TemporaryDirectory(prefix="fastnn-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)

        def warmup():
            run = subprocess.run([sys.executable, "-c", _WARMUP, name, dtype], env=env,
                                 capture_output=True, text=True, timeout=900, check=True)
            return float(run.stdout.split()[-1])

        cold = benchmark.pedantic(warmup, rounds=1, iterations=1)
        benchmark.extra_info.update(name=name, dtype=dtype, cold_seconds=cold,
                                    warm_seconds=warmup())
