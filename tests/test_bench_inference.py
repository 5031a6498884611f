"""pytest-benchmark: predict over 10000 images (the test set's size) with every backend.

Untimed with --benchmark-disable, timed by `nox -s bench`. Each test first
checks the predicted labels against the reference (strict; near-ties
excepted) and compiles the backend. Synthetic images: independent of MNIST.
"""

import numpy as np
import pytest

from fastnn import benchkit, model
from fastnn.kernels import KERNELS, get_kernel


@pytest.fixture(scope="module")
def test_images():
    return benchkit.synthetic(10000, seed=4)[0]


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize(("hidden", "dtype"), [(10, "float32"), (128, "float32")])
def test_predict(benchmark, test_images, kernel, hidden, dtype):
    params = benchkit.make_params(hidden, dtype)
    benchkit.check_predict(kernel, params, test_images)
    backend = get_kernel(kernel)
    backend.warmup(model.sizes_of(params), np.dtype(dtype))
    benchmark.group = f"predict h={hidden} n={len(test_images)} {dtype}"
    benchmark.extra_info["samples"] = len(test_images)
    labels = benchmark(backend.predict, params, test_images)
    assert labels.shape == (len(test_images),)
