"""numba_inked, the first layer from inked pixels: row_combination (the register-held
sparse-times-dense kernel), the ink lists and their regrouping by pixel, the panel
layout (padding included), and the forward pass and weight gradient built on them,
each against NumPy.

Sums are compared with the bound of a sum of n products computed in any order:
|got - want| <= 2 n eps (|X| |W|^T), eps of the dtype (forward rounding error
analysis); a wrong term or a term left out misses it by orders of magnitude.
Also run JIT-less (nox -s nojit), where the intrinsic is its Python fallback.
"""

import numpy as np
import pytest
from numba import njit

from fastnn.kernels.numba_inked import (
    from_panels,
    ink_columns,
    ink_list,
    ink_lists,
    ink_split,
    ink_work,
    inked_forward,
    inked_grad_rows,
    panel_width,
    panels_size,
    rows_to_panels,
    to_panels,
)
from fastnn.kernels.numba_intrinsics import (
    PERMUTE8,
    combination_width,
    ink_chunks,
    row_combination,
)

DTYPES = [np.float32, np.float64]


def assert_sum_close(got, want, bound_terms, n, dtype):
    """got within 2 n eps of the sum of |terms| (bound_terms) around want."""
    eps = np.finfo(dtype).eps
    err = np.abs(got.astype(np.float64) - want)
    bound = 2 * n * eps * bound_terms + np.finfo(dtype).tiny
    assert np.all(err <= bound), f"worst {np.max(err / bound):.1f}x the bound"


def sparse_rows(rng, m, n, dtype, ink=0.3):
    """(m, n) of dtype in (0, 1], about ``ink`` of it nonzero, one row all zero."""
    X = rng.uniform(0.01, 1, (m, n)).astype(dtype)
    X[rng.random((m, n)) > ink] = 0
    X[m // 2] = 0
    return X


@njit
def combine(acc, a, rows, r0, stride, idx, vals, lo, hi):
    row_combination(acc, a, rows, r0, stride, idx, vals, lo, hi)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a, r0, stride, lo, hi", [(0, 0, 64, 0, 40), (7, 5, 70, 3, 37),
                                                   (3, 1, 101, 10, 10)])
def test_row_combination_adds_the_chosen_rows(dtype, a, r0, stride, lo, hi):
    """acc[a : a + V] += sum vals[k] rows[idx[k]] over k in [lo, hi); the rest of acc
    untouched; an empty range changes nothing."""
    rng = np.random.default_rng(stride)
    V = combination_width(dtype)
    M = rng.standard_normal(r0 + 50 * stride).astype(dtype)
    idx = rng.integers(0, 50, 40).astype(np.int32)
    vals = rng.standard_normal(40).astype(dtype)
    acc = rng.standard_normal(a + V + 9).astype(dtype)
    before = acc.copy()
    combine(acc, a, M, r0, stride, idx, vals, lo, hi)
    picked = np.array([M[r0 + i * stride: r0 + i * stride + V] for i in idx[lo:hi]],
                      np.float64).reshape(-1, V)
    terms = vals[lo:hi, None].astype(np.float64) * picked
    want = before[a: a + V] + terms.sum(axis=0)
    assert_sum_close(acc[a: a + V], want, np.abs(before[a: a + V]) + np.abs(terms).sum(0),
                     hi - lo + 1, dtype)
    assert np.array_equal(acc[:a], before[:a]) and np.array_equal(acc[a + V:], before[a + V:])
    if lo == hi:
        assert np.array_equal(acc, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ink_lists_and_columns_hold_every_nonzero_in_order(dtype):
    rng = np.random.default_rng(1)
    X = sparse_rows(rng, 9, 50, dtype)
    ink = ink_work(9, 50, dtype, columns=True)
    ink_lists(X, 9, ink.idx, ink.vals, ink.counts)
    for s in range(9):
        (where,) = np.nonzero(X[s])
        n = ink.counts[s]
        assert n == len(where)
        assert np.array_equal(ink.idx[s, :n], where) and np.array_equal(ink.vals[s, :n],
                                                                        X[s, where])
    ink_columns(ink.idx[4:], ink.vals[4:], ink.counts[4:], 5, 4, ink.colptr[0], ink.rows,
                ink.cvals, 200)  # rows 4..8, numbered from 4, the entries from 200 on
    assert ink.colptr[0, 0] == 200 and ink.colptr[0, -1] == 200 + ink.counts[4:9].sum()
    for p in range(50):  # the rows inking pixel p, in row order, with their values
        (where,) = np.nonzero(X[4:, p])
        lo, hi = ink.colptr[0, p], ink.colptr[0, p + 1]
        assert np.array_equal(ink.rows[lo:hi], 4 + where)
        assert np.array_equal(ink.cvals[lo:hi], X[4 + where, p])


@njit
def chunks_of(x, idx, vals):
    return ink_chunks(x, idx, vals)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in", [784, 17, 16, 13, 8, 7, 1, 0])
def test_ink_list_is_the_nonzeros_in_order(dtype, n_in):
    """ink_list (eight inputs at a time with AVX2, float32) gives np.flatnonzero(x != 0)
    and those values, bit for bit: NaN and inf count as ink, -0.0 does not; rows whose
    length is not a multiple of 8, from all ink to none. The chunked part alone covers
    every whole chunk where the machine allows (``PERMUTE8``), and nothing otherwise."""
    rng = np.random.default_rng(n_in)
    for ink in (0.0, 0.05, 0.3, 0.9, 1.0):
        x = rng.uniform(-1, 1, n_in).astype(dtype)
        x[rng.random(n_in) >= ink] = 0
        x[: min(n_in, 4)] = [np.nan, -0.0, np.inf, 0.0][: min(n_in, 4)]
        idx = np.full(n_in, -1, np.int32)
        vals = np.full(n_in, 7, dtype)
        n = ink_list(x, idx, vals)
        (want,) = np.nonzero(x != 0)
        assert n == len(want) and np.array_equal(idx[:n], want)
        assert np.array_equal(vals[:n], x[want], equal_nan=True)
        n, end = chunks_of(x, idx, vals)
        chunked = PERMUTE8 and dtype == np.float32
        assert end == (n_in // 8 * 8 if chunked else 0)
        assert n == np.count_nonzero(x[:end]) and np.array_equal(idx[:n], want[:n])
    if PERMUTE8 and dtype == np.float32 and n_in >= 8:
        with pytest.raises(ValueError, match="as long as x"):
            chunks_of(x, idx[: n_in - 8], vals)


def panels_of(A, width):
    """The panel layout (numba_inked) of a (rows, n) matrix, built the slow way: blocks
    of ``width`` columns, the last padded with zeros."""
    padded = np.zeros((A.shape[0], -(-A.shape[1] // width) * width), A.dtype)
    padded[:, : A.shape[1]] = A
    return np.concatenate([padded[:, o: o + width].ravel()
                           for o in range(0, padded.shape[1], width)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out", [10, 64, 150])
def test_panels_round_trip(dtype, n_out):
    """to_panels of W's transpose, rows_to_panels of W itself (a group of rows at a
    time); from_panels undoes the first."""
    rng = np.random.default_rng(n_out)
    W = rng.standard_normal((n_out, 40)).astype(dtype)
    flat = np.concatenate([np.zeros(3, dtype), W.ravel()])  # at an offset, as in theta
    P = np.full(panels_size(40, n_out, dtype), np.nan, dtype)
    to_panels(flat, 3, n_out, 40, P)
    assert np.array_equal(P, panels_of(W.T, panel_width(P)))
    back = np.full_like(flat, 7)
    from_panels(P, 40, n_out, back, 3)
    assert np.array_equal(back[3:], flat[3:]) and np.all(back[:3] == 7)
    R = np.full(panels_size(n_out, 40, dtype), np.nan, dtype)  # in two groups of rows
    rows_to_panels(W[: n_out // 3], 0, n_out, R)
    rows_to_panels(W[n_out // 3:], n_out // 3, n_out, R)
    assert np.array_equal(R, panels_of(W, panel_width(R)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out", [10, 64, 71, 150])  # a tail panel only, whole, both
@pytest.mark.parametrize("relu", [False, True])
def test_inked_forward_is_the_dense_product(dtype, n_out, relu):
    rng = np.random.default_rng(n_out)
    m, n_in = 13, 60
    X = sparse_rows(rng, m, n_in, dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    ink = ink_work(m, n_in, dtype)
    ink_lists(X, m, ink.idx, ink.vals, ink.counts)
    WP = panels_of(np.ascontiguousarray(W.T), panel_width(W))
    Z = np.full((m + 2, n_out), 5, dtype)  # rows past m: not ours
    inked_forward(ink.idx, ink.vals, ink.counts, m, WP, b, Z, relu)
    X64, W64 = X.astype(np.float64), W.astype(np.float64)
    want = X64 @ W64.T + b
    bound = np.abs(X64) @ np.abs(W64).T + np.abs(b)
    if relu:
        want, bound = np.maximum(want, 0), bound  # ReLU moves no value further away
    assert_sum_close(Z[:m], want, bound, n_in + 1, dtype)
    assert np.all(Z[m:] == 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out", [10, 71, 150])
@pytest.mark.parametrize("parts", [1, 3])
def test_inked_grad_rows_is_x_transposed_times_d(dtype, n_out, parts):
    """The rows' ink by pixel in three groups (as the tiles of a chunk); pixels split by
    ink_split (every pixel in exactly one part); set, then added to."""
    rng = np.random.default_rng(n_out + parts)
    m, n_in = 21, 50
    X = sparse_rows(rng, m, n_in, dtype)
    D = rng.standard_normal((m, n_out)).astype(dtype)
    ink = ink_work(m, n_in, dtype, columns=True)
    ink_lists(X, m, ink.idx, ink.vals, ink.counts)
    groups = [(0, 8), (8, 12), (12, m)]
    for t, (a, b) in enumerate(groups):
        ink_columns(ink.idx[a:], ink.vals[a:], ink.counts[a:], b - a, a, ink.colptr[t],
                    ink.rows, ink.cvals, a * n_in)
    colptr, total = ink.colptr[:3], np.zeros(n_in + 1, np.int64)
    for t in range(3):
        total += colptr[t] - colptr[t, 0]
    width = panel_width(D)
    DP = panels_of(D, width)
    g = np.full(panels_size(n_in, n_out, dtype), np.nan, dtype)
    cuts = [ink_split(total, parts, part) for part in range(parts)]
    assert cuts[0][0] == 0 and cuts[-1][1] == n_in
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    for lo, hi in cuts:
        inked_grad_rows(colptr, ink.rows, ink.cvals, DP, g, lo, hi, False)
    X64, D64 = X.astype(np.float64), D.astype(np.float64)
    want, bound = X64.T @ D64, np.abs(X64).T @ np.abs(D64)
    assert_sum_close(g, panels_of(want, width), panels_of(bound, width), m, dtype)
    for lo, hi in cuts:  # accumulating: the same sums again on top
        inked_grad_rows(colptr, ink.rows, ink.cvals, DP, g, lo, hi, True)
    assert_sum_close(g, panels_of(2 * want, width), panels_of(2 * bound, width), m + 1,
                     dtype)
