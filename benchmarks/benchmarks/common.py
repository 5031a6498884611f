"""Shared pieces of the asv suite: the parameter grid, memoised inputs, one-time checks.

asv (asv_runner >= 0.3) re-runs ``setup`` before every timed sample, so the
expensive parts of a setup (loading MNIST, initialising a wide net, checking
a backend against the reference, compiling) are memoised per process here;
``setup`` itself only copies what the timed call mutates.

The grid comes from ``fastnn.benchkit.grid()``: short by default, the full
grid with FASTNN_BENCH_GRID=full. Inputs are real MNIST when it loads,
synthetic arrays of the same shape otherwise (``Inputs.track_real_mnist``
records which; FASTNN_BENCH_DATA=synthetic forces synthetic).
"""

import sys

import numpy as np

from fastnn import benchkit, model
from fastnn.kernels import KERNELS, REFERENCE, get_kernel

GRID = benchkit.grid()
KERNEL_NAMES = list(KERNELS)
OTHER_KERNELS = [name for name in KERNELS if name != REFERENCE]  # compared to REFERENCE
HIDDEN = GRID["hidden"]
BATCH_SIZES = GRID["batch_size"]
DTYPES = GRID["dtype"]

_memo = {}


def once(key, make):
    """make() the first time key is seen in this process, the stored value after."""
    if key not in _memo:
        _memo[key] = make()
    return _memo[key]


def data():
    """benchkit.Data (real MNIST or synthetic), loaded once per process."""
    def load():
        d = benchkit.load_data()
        print(f"fastnn benchmarks: inputs are {d.source}", file=sys.stderr)
        return d

    return once("data", load)


def fresh_params(hidden, dtype):
    """A private copy of the seeded params of 784-hidden-10 (callers may mutate it)."""
    return model.copy_params(once(("params", hidden, dtype),
                                  lambda: benchkit.make_params(hidden, dtype)))


def train_batch(batch_size, dtype):
    """One seeded batch (X, y) of the training images."""
    d = data()
    return once(("batch", batch_size, dtype),
                lambda: benchkit.batch(d.train_images, d.train_labels, batch_size, dtype))


def warm(kernel_name, hidden, dtype):
    """Compile (or load from the cache) the backend's training kernels, once."""
    kernel = get_kernel(kernel_name)
    once(("warmup", kernel_name, hidden, dtype),
         lambda: kernel.warmup(model.layer_sizes([hidden]), np.dtype(dtype)))
    return kernel


def verify(check, kernel_name, hidden, dtype, *args, key=()):
    """Run benchkit.check_*(kernel_name, params, *args) strictly, once per configuration.

    Strict: a disagreement raises AssertionError (via tolerances.assert_agree),
    so the benchmark fails instead of timing a wrong kernel. ``key`` holds
    what else tells configurations apart (e.g. the batch size). The reference
    is not checked against itself. Returns the check's rows ([] for it).
    """
    if kernel_name == REFERENCE:
        return []
    return once((check.__name__, kernel_name, hidden, dtype, *key),
                lambda: check(kernel_name, fresh_params(hidden, dtype), *args))
