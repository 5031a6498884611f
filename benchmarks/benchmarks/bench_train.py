"""asv: fastnn's speed across commits, timed by asv itself.

The cases of `python -m fastnn.bench` (fastnn.bench.suite), each backend or
peer checked against the reference before anything is timed (a disagreement
raises, failing the benchmark). Short grid by default, FASTNN_BENCH_GRID=full
for all of it; peers that are not installed are skipped.
"""

import functools
import os

import numpy as np

from fastnn import peers
from fastnn.bench import suite
from fastnn.kernels import KERNELS

FULL = os.environ.get("FASTNN_BENCH_GRID") == "full"
NAMES = [*KERNELS, *peers.PEERS]
HIDDEN = [10, 128, 800] if FULL else [10, 128]
BATCH_SIZES = [32, 128] if FULL else [128]
data = functools.cache(suite.load_data)


def _setup(self, name, hidden, batch_size, dtype):
    try:
        self.kernel, self.params, _ = suite.checked(name, hidden, batch_size, dtype, data())
    except peers.PeerUnavailable as e:
        raise NotImplementedError(str(e)) from None  # asv: skipped
    self.kernel.warmup([784, hidden, 10], np.dtype(dtype))
    self.order = np.random.default_rng(2).permutation(60000)
    self.epoch = suite.epoch(name, self.kernel, self.params, data(), batch_size)


class TrainEpoch:
    params = [NAMES, HIDDEN, BATCH_SIZES, ["float32"]]
    param_names = ["name", "hidden", "batch_size", "dtype"]
    number, repeat, warmup_time, timeout = 1, (2, 5, 30.0), 0.0, 900.0

    def setup(self, name, hidden, batch_size, dtype):
        _setup(self, name, hidden, batch_size, dtype)
        self.epoch(self.order)  # compiles what warmup cannot (XLA: per shape)

    def time_train_epoch(self, name, hidden, batch_size, dtype):
        self.epoch(self.order)

    def peakmem_train_epoch(self, name, hidden, batch_size, dtype):
        self.epoch(self.order)


class Predict:
    params = [NAMES, HIDDEN, ["float32"]]
    param_names = ["name", "hidden", "dtype"]

    def setup(self, name, hidden, dtype):
        _setup(self, name, hidden, 128, dtype)
        self.kernel.predict(self.params, data()[2])

    def time_predict(self, name, hidden, dtype):
        self.kernel.predict(self.params, data()[2])


class Compile:
    """warmup() of a numba backend in a fresh interpreter with an empty Numba cache."""

    params = [[n for n in KERNELS if n.startswith("numba")], ["float32"]]
    param_names = ["name", "dtype"]
    number, repeat, warmup_time, timeout = 1, 1, 0.0, 900.0

    def timeraw_cold_warmup(self, name, dtype):
        setup, statement = suite.cold_warmup(name, dtype)
        empty_cache = ("import atexit, os, shutil, tempfile\ncache = tempfile.mkdtemp()\n"
                       "atexit.register(shutil.rmtree, cache, True)\n"
                       "os.environ['NUMBA_CACHE_DIR'] = cache\n")
        return statement, empty_cache + setup


class LoadMnist:
    def setup(self):
        if data()[4] != "MNIST":
            raise NotImplementedError("MNIST not available")

    def time_load_mnist(self):
        from fastnn.data import load_mnist

        load_mnist("train")
