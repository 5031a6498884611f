"""pytest-benchmark: what the elastic and affine distortion costs inside a training epoch.

"train" is the fused epoch over 8 batches of 128 at 784-800-10 (the record
net), without distortion, with elastic distortion (Simard's alpha 34, sigma
4) and with elastic + affine; the group puts them side by side, so the
distortion's share of an epoch is (distorted - plain) / distorted. "gather"
times the distortion alone: the 1024 images of those batches, gathered and
distorted as the epoch gathers them. Untimed with --benchmark-disable, timed by
`nox -s bench`; first, each test checks the distorted batch against the
reference (tolerances.distortion_atol) and a few training steps (strict).
Synthetic inputs: the cost does not depend on the pixels.
"""

import numpy as np
import pytest

from fastnn import benchkit, model
from fastnn.augment import Distortion
from fastnn.kernels import REFERENCE, get_kernel
from fastnn.tolerances import distortion_atol

HIDDEN, BATCH, DTYPE = 800, 128, "float32"
SAMPLES = 8 * BATCH
DISTORTIONS = {
    "plain": None,
    "elastic": Distortion(12345, alpha=34.0, sigma=4.0),
    "elastic+affine": Distortion(12345, alpha=34.0, sigma=4.0, rotate=10.0, scale=0.1,
                                 shear=0.2),
}


@pytest.fixture(scope="module")
def train_set():
    return benchkit.synthetic(4096, seed=4)


def _checked(kernel, distort, train_set):
    """The backend, after its distorted batch agrees with the reference's."""
    images = train_set[0]
    order = benchkit.sample_order(len(images), SAMPLES)
    backend = get_kernel(kernel)
    if distort is not None:
        got = backend.gather(images, order, np.float32, None, distort)
        want = get_kernel(REFERENCE).gather(images, order, np.float32, None, distort)
        diff = float(np.max(np.abs(got - want)))
        assert diff <= distortion_atol(np.float32, distort.alpha, distort.sigma), diff
    return backend, order


@pytest.mark.parametrize("distortion", list(DISTORTIONS))
def test_train_distorted(benchmark, train_set, distortion):
    distort = DISTORTIONS[distortion]
    backend, order = _checked("numba", distort, train_set)
    params = benchkit.make_params(HIDDEN, DTYPE)
    benchkit.check_train("numba", params, *train_set, BATCH)
    backend.warmup(model.sizes_of(params), np.dtype(DTYPE))
    benchmark.group = f"train with distortion h={HIDDEN} batch={BATCH} {DTYPE}"
    benchmark.extra_info["samples"] = SAMPLES
    loss, _ = benchmark(backend.train_epoch, params, *train_set, order, BATCH, benchkit.LR,
                        None, None, distort)
    assert np.isfinite(loss)


@pytest.mark.parametrize("distortion", list(DISTORTIONS))
def test_gather_distorted(benchmark, train_set, distortion):
    distort = DISTORTIONS[distortion]
    backend, order = _checked("numba", distort, train_set)
    benchmark.group = f"gather {SAMPLES} images {DTYPE}"
    benchmark.extra_info["samples"] = SAMPLES
    X = benchmark(backend.gather, train_set[0], order, np.float32, None, distort)
    assert X.shape == (SAMPLES, 784)
