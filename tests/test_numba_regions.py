"""numba_regions.on_threads: a kernel run once per thread index, every thread at once
(they meet at a barrier), its compiled code called by address; a kernel that returns a
value is refused. (The epochs and predict that run this way are checked against the
reference in tests/test_agreement.py.)"""

import numba
import numpy as np
import pytest
from numba import njit

from fastnn import config
from fastnn.kernels.numba_intrinsics import SYNC_PAD, barrier
from fastnn.kernels.numba_regions import native_address, on_threads


@njit
def _meet(out, sync, nthreads, base, scale, t):
    # out[t] <- base + scale t; after the barrier, out[nthreads + t] <- what every thread
    # wrote before it (seen only if all of them ran at once and waited for each other)
    out[t] = base + scale * t
    barrier(sync, nthreads)
    total = 0.0
    for i in range(nthreads):
        total += out[i]
    out[nthreads + t] = total


@njit
def _returns(out, sync, nthreads, base, scale, t):
    return t


# both dtypes in one process: each call must find the code compiled for its own types
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nthreads", sorted({1, config.max_threads()}))
def test_every_thread_runs_once_and_all_at_once(nthreads, dtype):
    if numba.config.DISABLE_JIT:
        nthreads = 1  # one t after the other: a barrier has no one to wait for
    out = np.full(2 * nthreads, np.nan, dtype)
    sync = np.zeros(2 * SYNC_PAD, np.int64)
    for call in range(3):  # the same region again: the barrier's count has reset
        out[:] = np.nan
        on_threads(_meet, nthreads, out, sync, nthreads, 1.5 * call, 2.0)
        mine = (1.5 * call + 2.0 * np.arange(nthreads)).astype(dtype)
        assert np.array_equal(out[:nthreads], mine)
        assert np.array_equal(out[nthreads:], np.full(nthreads, mine.sum(), dtype))


def test_a_kernel_that_returns_a_value_is_refused():
    if numba.config.DISABLE_JIT:
        pytest.skip("about compiled code: without the JIT, on_threads calls the function")
    out, sync = np.zeros(2), np.zeros(2 * SYNC_PAD, np.int64)
    with pytest.raises(TypeError, match="must return nothing"):
        native_address(_returns, (out, sync, 1, 0.0, 1.0, 0))
