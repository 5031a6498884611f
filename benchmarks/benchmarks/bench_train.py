"""Training: one fused step, a full epoch, its peak memory, throughput and speed-up.

Every class checks the backend against the reference (a few train_epoch
batches from the same params) in setup before anything is timed.
"""

import itertools

import numpy as np

from fastnn import benchkit
from fastnn.kernels import REFERENCE

from .common import (
    BATCH_SIZES,
    DTYPES,
    HIDDEN,
    KERNEL_NAMES,
    data,
    fresh_params,
    verify,
    warm,
)

THROUGHPUT_REPEATS = 3  # the track_ values are medians of this many timed runs


def _setup_training(self, kernel, hidden, batch_size, dtype):
    d = data()
    self.images, self.labels = d.train_images, d.train_labels
    verify(benchkit.check_train, kernel, hidden, dtype, self.images, self.labels, batch_size,
           key=(batch_size,))
    self.kernel = warm(kernel, hidden, dtype)
    self.net = fresh_params(hidden, dtype)


class TrainStep:
    """One fused SGD step: train_epoch over a single batch (gather, scale, fwd, bwd, update)."""

    params = [KERNEL_NAMES, HIDDEN, BATCH_SIZES, DTYPES]
    param_names = ["kernel", "hidden", "batch_size", "dtype"]

    def setup(self, kernel, hidden, batch_size, dtype):
        _setup_training(self, kernel, hidden, batch_size, dtype)
        self.order = benchkit.sample_order(len(self.images), batch_size)
        self.batch_size = batch_size

    def time_train_step(self, kernel, hidden, batch_size, dtype):
        self.kernel.train_epoch(self.net, self.images, self.labels, self.order,
                                self.batch_size, benchkit.LR)


class TrainEpoch:
    """One epoch over all 60000 training images in a seeded order.

    Batch size 1 is skipped: 60000 single-sample steps take 10 s to 80 s
    per call here (numpy at 784-800-10 is the slowest); TrainStep and
    TrainThroughput cover batch 1.
    """

    params = [KERNEL_NAMES, HIDDEN, BATCH_SIZES, DTYPES]
    param_names = ["kernel", "hidden", "batch_size", "dtype"]
    rounds = 1
    repeat = (1, 3, 20.0)
    warmup_time = 0.0  # compiled in setup; an untimed extra epoch would only cost time
    timeout = 600.0

    def setup(self, kernel, hidden, batch_size, dtype):
        if batch_size == 1:
            raise NotImplementedError("full epoch at batch 1 skipped (minutes); see TrainStep")
        _setup_training(self, kernel, hidden, batch_size, dtype)
        self.order = benchkit.sample_order(len(self.images), len(self.images))
        self.batch_size = batch_size

    def time_train_epoch(self, kernel, hidden, batch_size, dtype):
        self.kernel.train_epoch(self.net, self.images, self.labels, self.order,
                                self.batch_size, benchkit.LR)


class TrainEpochMemory:
    """Peak resident memory of a process running one full epoch at batch 128
    (includes the loaded data set and the compiled code, as a user would see)."""

    params = [KERNEL_NAMES, HIDDEN, DTYPES]
    param_names = ["kernel", "hidden", "dtype"]
    timeout = 600.0

    def setup(self, kernel, hidden, dtype):
        _setup_training(self, kernel, hidden, 128, dtype)
        self.order = benchkit.sample_order(len(self.images), len(self.images))

    def peakmem_train_epoch(self, kernel, hidden, dtype):
        self.kernel.train_epoch(self.net, self.images, self.labels, self.order, 128,
                                benchkit.LR)


def _n_samples(batch_size):
    return max(8 * batch_size, 2048)  # at least 8 batches, at least 2048 samples


class TrainThroughput:
    """Training samples/s and its ratio to the reference (numba/numpy), both from the
    same runs: train_epoch over max(8 batches, 2048 samples), called again until a
    run has lasted 0.1 s, median of 3 runs.

    The whole grid is measured once, in one process, by setup_cache (every
    backend checked against the reference before it is timed); the track_
    methods read their value from it. The reference's own ratio is 1.
    """

    params = [KERNEL_NAMES, HIDDEN, BATCH_SIZES, DTYPES]
    param_names = ["kernel", "hidden", "batch_size", "dtype"]

    def setup_cache(self):
        rates = {}
        for kernel, hidden, batch_size, dtype in itertools.product(*self.params):
            _setup_training(self, kernel, hidden, batch_size, dtype)
            runs = benchkit.train_rates(self.kernel, self.net, self.images, self.labels,
                                        batch_size, _n_samples(batch_size), THROUGHPUT_REPEATS,
                                        min_seconds=benchkit.MIN_RUN_SECONDS)
            rates[kernel, hidden, batch_size, dtype] = float(np.median(runs))
        return rates

    setup_cache.timeout = 1800.0

    def track_train_samples_per_second(self, rates, kernel, hidden, batch_size, dtype):
        return rates[kernel, hidden, batch_size, dtype]

    track_train_samples_per_second.unit = "samples/s"

    def track_train_speedup(self, rates, kernel, hidden, batch_size, dtype):
        return rates[kernel, hidden, batch_size, dtype] / rates[REFERENCE, hidden, batch_size,
                                                                dtype]

    track_train_speedup.unit = "x reference"
