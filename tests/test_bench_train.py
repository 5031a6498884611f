"""pytest-benchmark: training with every registered backend (train_epoch, in place).

"train step" is one fused step (train_epoch over a single batch); "train" is
train_epoch over 8 batches, so the per-batch overhead is amortised. Untimed
with --benchmark-disable, timed by `nox -s bench`; each test first checks a
few training steps against the reference (strict) and compiles the backend.
extra_info["samples"] turns a timing into samples/s. Synthetic inputs.
"""

import numpy as np
import pytest

from fastnn import benchkit, model
from fastnn.kernels import KERNELS, get_kernel

CASES = [(h, b, "float32") for h in (10, 128) for b in (32, 128)]  # (hidden, batch, dtype)


@pytest.fixture(scope="module")
def train_set():
    return benchkit.synthetic(4096, seed=3)


def _prepared(kernel, hidden, batch_size, dtype, train_set):
    params = benchkit.make_params(hidden, dtype)
    benchkit.check_train(kernel, params, *train_set, batch_size)
    backend = get_kernel(kernel)
    backend.warmup(model.sizes_of(params), np.dtype(dtype))
    return backend, params


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize(("hidden", "batch_size", "dtype"), CASES)
def test_train_step(benchmark, train_set, kernel, hidden, batch_size, dtype):
    backend, params = _prepared(kernel, hidden, batch_size, dtype, train_set)
    order = benchkit.sample_order(len(train_set[0]), batch_size)
    benchmark.group = f"train step h={hidden} batch={batch_size} {dtype}"
    benchmark.extra_info["samples"] = batch_size
    loss, _ = benchmark(backend.train_epoch, params, *train_set, order, batch_size, benchkit.LR)
    assert np.isfinite(loss)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize(("hidden", "batch_size", "dtype"), CASES)
def test_train(benchmark, train_set, kernel, hidden, batch_size, dtype):
    backend, params = _prepared(kernel, hidden, batch_size, dtype, train_set)
    order = benchkit.sample_order(len(train_set[0]), 8 * batch_size)
    benchmark.group = f"train h={hidden} batch={batch_size} {dtype}"
    benchmark.extra_info["samples"] = len(order)
    loss, _ = benchmark(backend.train_epoch, params, *train_set, order, batch_size, benchkit.LR)
    assert np.isfinite(loss)
