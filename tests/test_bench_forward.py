"""pytest-benchmark: forward and loss_and_grads of every registered backend on one batch.

Untimed (each runs once) in the normal session with --benchmark-disable;
timed by `nox -s bench`. Before timing, each test checks the backend against
the reference (fastnn.benchkit, strict: raises on disagreement) and calls it
once so JIT compilation is never timed. Groups put the backends side by side
per size. Synthetic inputs: independent of MNIST.
"""

import pytest

from fastnn import benchkit
from fastnn.kernels import KERNELS, get_kernel

CASES = [(h, b, "float32") for h in (10, 128) for b in (32, 128)]  # (hidden, batch, dtype)


@pytest.fixture(scope="module")
def train_set():
    return benchkit.synthetic(2048, seed=3)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize(("hidden", "batch_size", "dtype"), CASES)
def test_forward(benchmark, train_set, kernel, hidden, batch_size, dtype):
    params = benchkit.make_params(hidden, dtype)
    X, _ = benchkit.batch(*train_set, batch_size, dtype)
    benchkit.check_forward(kernel, params, X)
    backend = get_kernel(kernel)
    backend.forward(params, X)  # compiled before timing
    benchmark.group = f"forward h={hidden} batch={batch_size} {dtype}"
    benchmark.extra_info["samples"] = batch_size
    P = benchmark(backend.forward, params, X)
    assert P.shape == (batch_size, 10)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize(("hidden", "batch_size", "dtype"), CASES)
def test_loss_and_grads(benchmark, train_set, kernel, hidden, batch_size, dtype):
    params = benchkit.make_params(hidden, dtype)
    X, y = benchkit.batch(*train_set, batch_size, dtype)
    benchkit.check_loss_and_grads(kernel, params, X, y)
    backend = get_kernel(kernel)
    backend.loss_and_grads(params, X, y)
    benchmark.group = f"loss_and_grads h={hidden} batch={batch_size} {dtype}"
    benchmark.extra_info["samples"] = batch_size
    loss, grads = benchmark(backend.loss_and_grads, params, X, y)
    assert len(grads) == len(params)
