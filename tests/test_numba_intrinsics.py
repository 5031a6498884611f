"""numba_intrinsics: exp_nonpositive (the softmax's vectorisable exp, against float64
np.exp), copy_pair (against slice assignment), transpose16 (against .T) and madd_rows
(against the scalar loop it replaces)."""

import numpy as np
import pytest
from numba import njit

from fastnn import config
from fastnn.kernels.numba_intrinsics import (
    copy_pair,
    exp_nonpositive,
    madd_rows,
    madd_width,
    transpose16,
)


@njit(fastmath=False)
def exp_all(t, out):
    for i in range(t.shape[0]):
        out[i] = exp_nonpositive(t[i])


def exp_of(t):
    out = np.empty_like(t)
    exp_all(t, out)
    return out


def test_float32_is_within_one_ulp_over_the_whole_normal_range():
    """Every t from 0 down to -87 in steps of ~4e-5, and 10^6 random ones."""
    rng = np.random.default_rng(0)
    t = -np.concatenate([np.linspace(0.0, 87.0, 2_000_001), rng.exponential(3.0, 10**6),
                         rng.uniform(0.0, 1e-6, 10**4)]).astype(np.float32)
    t = t[t > -87.0]
    want = np.exp(t.astype(np.float64))
    got = exp_of(t).astype(np.float64)
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.0, f"worst {ulps.max():.2f} ulp at t = {t[ulps.argmax()]}"


def test_float32_special_values():
    t = np.array([0.0, -0.0, -1e-30, -86.99, -87.0, -100.0, -1e30, -np.inf, np.nan],
                 np.float32)
    got = exp_of(t)
    assert got[0] == got[1] == got[2] == 1.0
    assert 0 < got[3] < 2e-38  # still a normal float32
    assert got[4] == got[5] == got[6] == got[7] == 0.0  # flushed, like an underflow
    assert np.isnan(got[8])  # a NaN logit must stay visible to the divergence check


def test_float64_is_within_one_ulp_of_numpy_exp():
    """float64 is libm's exp; NumPy's may be its own SIMD exp (AVX-512 builds), and
    the two round differently in a few percent of elements: allow 1 ulp, no more."""
    t = -np.random.default_rng(1).exponential(50.0, 10**5)
    got, want = exp_of(t), np.exp(t)
    ulps = np.abs(got - want) / np.spacing(want)
    assert ulps.max() <= 1.0, f"worst {ulps.max():.2f} ulp at t = {t[ulps.argmax()]}"
    special = np.array([0.0, -745.2, -np.inf, np.nan])
    np.testing.assert_array_equal(exp_of(special), np.exp(special))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_fallback_is_numpy_exp(dtype):
    """NUMBA_DISABLE_JIT runs the plain function: np.exp."""
    t = dtype(-3.5)
    assert exp_nonpositive(t) == np.exp(t)


@njit
def copy_pairs(dst, src, to, frm):
    for k in range(to.shape[0]):
        copy_pair(dst, to[k], src, frm[k])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_copy_pair_is_a_slice_assignment_at_any_offset(dtype):
    """Odd offsets too (a pair straddling the item alignment of two items), into a
    view of another array's bytes as the distortion does, and the last pair."""
    rng = np.random.default_rng(1)
    src = (rng.uniform(0, 255, 101)).astype(dtype)
    to, frm = rng.integers(0, 199, 300), rng.integers(0, 100, 300)
    to[-1], frm[-1] = 198, 99  # the last two items of each
    want, dst = np.zeros(200, dtype), np.zeros(200 * np.dtype(dtype).itemsize, np.uint8)
    for t, f in zip(to, frm):
        want[t : t + 2] = src[f : f + 2]
    copy_pairs(dst.view(dtype), src, to, frm)
    assert np.array_equal(dst.view(dtype), want)


@njit
def transpose_block(src, i, sstride, dst, j, dstride, rows):
    transpose16(src, i, sstride, dst, j, dstride, rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("stride, dstride, i, j, rows", [
    (16, 16, 0, 0, 16), (32, 32, 16, 512, 12), (21, 21, 5, 3, 1), (40, 40, 7, 0, 15),
    (784, 64, 3, 5, 16), (20, 33, 0, 2, 9)])
def test_transpose16_is_a_block_transpose(dtype, stride, dstride, i, j, rows):
    """Source rows stride apart, results dstride apart, any offsets; only the first
    ``rows`` rows of the result are written, everything else in dst is left alone."""
    src = np.random.default_rng(stride).permutation(16 * stride + i + 16).astype(dtype)
    dst = np.full(16 * dstride + j + 16, -1, dtype)
    transpose_block(src, i, stride, dst, j, dstride, rows)
    block = np.lib.stride_tricks.as_strided(src[i:], (16, 16), (stride * src.itemsize,
                                                                src.itemsize))
    want = np.full_like(dst, -1)
    for c in range(rows):
        want[j + dstride * c : j + dstride * c + 16] = block[:, c]
    assert np.array_equal(dst, want)


@njit(**config.JIT)
def madd_forward(out, W, src, c, four):
    # out[o, c:c+V] += W[o] src[:, c:c+V], four rows of W a call (four) or one
    n_out, n = W.shape
    step = 4 if four else 1
    for o in range(0, n_out - n_out % step, step):
        if four:
            madd_rows(out, o, 4, c, W, o, 0, 1, 0, 0, 1, src, 0, n)
        else:
            madd_rows(out, o, 1, c, W, o, 0, 1, 0, 0, 1, src, 0, n)


@njit(**config.JIT)
def madd_transposed(out, W, src, c):
    # out[i, c:c+V] += W[:, i] src[:, c:c+V] for i in blocks of four: W's columns
    n, n_in = W.shape
    for i in range(0, n_in - n_in % 4, 4):
        madd_rows(out, i, 4, c, W, 0, i, 0, 1, 1, 0, src, 0, n)


@njit(**config.JIT)
def scalar_madd(out, W, src, c, V, transposed, rows):
    # the loops madd_rows replaces for the first rows rows: each sum in k order, a fused
    # multiply-add a term
    n = W.shape[0] if transposed else W.shape[1]
    for r in range(rows):
        for k in range(n):
            w = W[k, r] if transposed else W[r, k]
            for s in range(V):
                out[r, c + s] += src[k, c + s] * w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("four", [True, False])
def test_madd_rows_is_the_scalar_loop(dtype, four):
    """Rows of W (or, transposed, its columns) times a block of V columns of src, added
    to out's block: the same bits as the scalar loop (fused multiply-adds in k order),
    within rounding of float64 products; nothing outside the block is touched."""
    V = madd_width(dtype)
    rng = np.random.default_rng(V + four)
    for n_out, n, c in [(10, 10, 0), (12, 7, V), (8, 32, 2 * V)]:
        W = rng.standard_normal((n_out, n)).astype(dtype)
        src = rng.standard_normal((max(n, n_out), 3 * V + 5)).astype(dtype)
        start = rng.standard_normal((max(n, n_out), 3 * V + 5)).astype(dtype)
        rows = n_out - n_out % (4 if four else 1)
        got, want = start.copy(), start.copy()
        madd_forward(got, W, src, c, four)
        scalar_madd(want, W, src, c, V, False, rows)
        assert np.array_equal(got, want)
        exact = start[:rows, c:c + V] + W[:rows].astype(np.float64) @ src[:n, c:c + V]
        np.testing.assert_allclose(got[:rows, c:c + V], exact,
                                   rtol=0, atol=n * 8 * np.finfo(dtype).eps)
        outside = np.ones(got.shape, bool)
        outside[:rows, c:c + V] = False
        assert np.array_equal(got[outside], start[outside])
        got, want = start.copy(), start.copy()
        madd_transposed(got, W, src, c)
        scalar_madd(want, W, src, c, V, True, n - n % 4)
        assert np.array_equal(got, want)
