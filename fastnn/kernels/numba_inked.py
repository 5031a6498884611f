"""The first layer from inked pixels alone: a sparse input times dense weights.

An MNIST digit inks ~150 of its 784 pixels, and the first layer's products
with the blank ones are exact zeros. Here a sample's input is the list of
its inked pixels (``ink_list``) and the first layer's weights are read
transposed, a row of W^T (one weight per unit) per pixel:

* forward: z_s = b + sum over the pixels p that s inks of x_sp W^T[p], in
  pixel order (``inked_forward``);
* weight gradient: dW^T[p] = sum over the samples s that ink p of
  x_sp d_s, in sample order (``inked_grad_rows``), from the batch's lists
  regrouped by pixel (``ink_columns``).

Both are numba_intrinsics.row_combination: a block of units whose sums stay
in vector registers while the list streams past, so each multiply-add costs
a load of the weights (or deltas) and no store. Against the dense products
(which skip only the blank rows of four digits at once: ~80% of the inputs
remain) this is ~5x fewer multiply-adds.
"""

from typing import NamedTuple

import numpy as np
from numba import njit

from fastnn import config
from fastnn.kernels.numba_intrinsics import (
    COMBINATION_BYTES,
    combination_width,
    ink_chunks,
    row_combination,
    transpose16,
)
from fastnn.kernels.numba_shared import relu_rows


class Ink(NamedTuple):
    """Ink lists of up to R rows of n_in inputs, and the same regrouped by input."""

    idx: np.ndarray  # (R, n_in) int32: row s's inked inputs in idx[s, :counts[s]]
    vals: np.ndarray  # (R, n_in) their values
    counts: np.ndarray  # (R,) int64
    colptr: np.ndarray  # (T, n_in + 1) int64: T groups' ink_columns
    rows: np.ndarray  # (R * n_in,) int32 ...
    cvals: np.ndarray  # (R * n_in,) ...


def ink_work(R, n_in, dtype, columns=False):
    """Ink for R rows (``columns``: with room for the ink_columns of groups of at least
    4 rows)."""
    c = R * n_in if columns else 0
    return Ink(np.empty((R, n_in), np.int32), np.empty((R, n_in), dtype),
               np.zeros(R, np.int64), np.zeros((R // 4 + 1, n_in + 1) if columns else (0, 0),
                                               np.int64),
               np.empty(c, np.int32), np.empty(c, dtype))


@njit(**config.JIT)
def ink_lists(X, ns, idx, vals, counts):
    # X: (>= ns, n_in) input rows -> the first ns rows of idx, vals, counts (Ink's):
    # their ink_lists
    for s in range(ns):
        counts[s] = ink_list(X[s], idx[s], vals[s])


@njit(**config.JIT)
def ink_list(x, idx, vals):
    # x: (n_in,) one input row -> idx[:n] (int32) the positions of its nonzeros in
    # order, vals[:n] their values; returns n. idx, vals: (>= n_in,). Eight inputs at a
    # time where ink_chunks can (float32, AVX2: 3x faster), the rest branch-free:
    # every position is written, the count grows only past a nonzero (ink edges would
    # mispredict a branch).
    zero = x.dtype.type(0)
    n, start = ink_chunks(x, idx, vals)
    for p in range(start, x.shape[0]):
        idx[n] = p
        vals[n] = x[p]
        n += x[p] != zero
    return n


# Panels: a (rows, n) matrix stored as blocks of ``width`` columns (row_combination's
# width), each (rows, width) row-major, the block of columns o0.. at o0 * rows; the
# last block padded with zero columns (panels_size). The weights a sample's ink
# selects, or the deltas a pixel's samples select, then lie in one block of a few
# hundred KB (a few dozen pages) rather than strewn over the whole matrix (twice as
# fast as a row-major W^T), and every block is a whole row_combination.


@njit(**config.JIT)
def panel_width(dtype_like):
    return COMBINATION_BYTES // dtype_like.itemsize


@njit(**config.JIT)
def padded(n, width):
    # n columns rounded up to whole panels of ``width``
    return -(-n // width) * width


def panels_size(rows, n, dtype):
    """Elements of the panels of a (rows, n) matrix of ``dtype``."""
    return rows * padded(n, combination_width(dtype))


@njit(**config.JIT)
def inked_forward(idx, vals, counts, ns, WP, b, Z, relu):
    # idx, vals, counts: the ns input rows' ink lists (Ink's); WP: the layer's weights
    # transposed, (n_in, n_out), as panels; b: (n_out,)
    # -> Z: (>= ns, n_out) rows [0, ns) = X W^T + b (+ ReLU). A panel at a time: its
    # weights (200 KB for 64 units of 784 inputs) stay in L2 while the samples pass.
    n_out = Z.shape[1]
    width = panel_width(Z)
    n_in = WP.shape[0] // padded(n_out, width)
    tail = np.empty(width, Z.dtype)  # the last panel's sums: Z's row ends before them
    for s in range(ns):
        for o in range(n_out):
            Z[s, o] = b[o]
    for o0 in range(0, n_out, width):
        w = min(width, n_out - o0)
        for s in range(ns):
            if w == width:
                row_combination(Z[s], o0, WP, o0 * n_in, width, idx[s], vals[s], 0,
                                counts[s])
                continue
            tail[:w] = Z[s, o0:]
            row_combination(tail, 0, WP, o0 * n_in, width, idx[s], vals[s], 0, counts[s])
            Z[s, o0:] = tail[:w]
    if relu:
        relu_rows(Z, ns)


@njit(**config.JIT)
def rows_to_panels(A, f, m, dst):
    # A: (ns, n) rows f..f+ns of an (m, n) matrix -> those rows of dst, its panels
    ns, n = A.shape
    width = panel_width(dst)
    for o0 in range(0, n, width):
        w = min(width, n - o0)
        for s in range(ns):
            d = o0 * m + (f + s) * width
            dst[d: d + w] = A[s, o0: o0 + w]
            dst[d + w: d + width] = 0


@njit(**config.JIT)
def to_panels(src, s0, rows, cols, dst):
    # the (rows, cols) matrix at s0 of the flat src -> dst: panels of its transpose,
    # (cols, rows), padding included (rows_to_panels: of a matrix itself)
    width = panel_width(dst)
    for o0 in range(0, rows, width):
        w = min(width, rows - o0)
        transpose_into(src, s0 + o0 * cols, w, cols, dst, o0 * cols, width)
        if w < width:
            for r in range(cols):
                dst[o0 * cols + r * width + w: o0 * cols + (r + 1) * width] = 0


@njit(**config.JIT)
def from_panels(src, rows, cols, dst, d0):
    # to_panels(dst, d0, cols, rows, src) undone: the panels of a (rows, cols)
    # matrix -> its transpose, (cols, rows), at d0 of the flat dst
    width = panel_width(src)
    for o0 in range(0, cols, width):
        w = min(width, cols - o0)
        transpose_into(src, o0 * rows, rows, w, dst, d0 + o0 * rows, rows, width)


@njit(**config.JIT)
def ink_columns(idx, vals, counts, m, row0, colptr, rows, cvals, base):
    # The ink lists (Ink's idx, vals, counts) of rows [0, m) regrouped by pixel
    # (compressed columns): the rows that ink pixel p, numbered from row0, in order, are
    # rows[colptr[p] : colptr[p + 1]] with values cvals[...], from rows[base] on.
    # colptr: (n_in + 1,) int64
    n_in = colptr.shape[0] - 1
    colptr[:] = 0
    colptr[0] = base
    for s in range(m):
        for k in range(counts[s]):
            colptr[idx[s, k] + 1] += 1
    for p in range(n_in):
        colptr[p + 1] += colptr[p]
    for s in range(m):  # colptr[p] moves past each entry written, ...
        for k in range(counts[s]):
            p = idx[s, k]
            rows[colptr[p]] = row0 + s
            cvals[colptr[p]] = vals[s, k]
            colptr[p] += 1
    for p in range(n_in, 0, -1):  # ... so it ends at its pixel's end: shift back
        colptr[p] = colptr[p - 1]
    colptr[0] = base


@njit(**config.JIT)
def inked_grad_rows(colptr, rows, cvals, DP, gP, p_lo, p_hi, accumulate):
    # DP: the layer's deltas (m, n_out) as panels; colptr: (T, n_in + 1) the ink_columns
    # of its input rows in T groups, in row order, into rows and cvals
    # -> rows p_lo..p_hi of gP, the weight gradient transposed (n_in, n_out) as panels,
    # get (or, accumulating, add) sum over the rows s that ink p, in order, of x_sp D[s]
    # (zero in the padding, as DP's)
    n_in = colptr.shape[1] - 1
    width = panel_width(gP)
    m = DP.shape[0] * n_in // gP.shape[0]
    zero = gP.dtype.type(0)
    for o0 in range(0, gP.shape[0] // n_in, width):  # a panel's deltas stay in L1
        if not accumulate:
            gP[o0 * n_in + p_lo * width: o0 * n_in + p_hi * width] = zero
        for p in range(p_lo, p_hi):
            for t in range(colptr.shape[0]):
                row_combination(gP, o0 * n_in + p * width, DP, o0 * m, width, rows, cvals,
                                colptr[t, p], colptr[t, p + 1])


@njit(**config.JIT)
def ink_split(colptr, parts, part):
    # pixels [lo, hi) of part ``part`` of ``parts``, cut where the entries (the gradient's
    # multiply-adds) are shared equally: the ink sits in the middle of the image
    total = colptr[colptr.shape[0] - 1]
    n_in = colptr.shape[0] - 1
    lo = np.searchsorted(colptr[:n_in], (total * part) // parts) if part > 0 else 0
    hi = np.searchsorted(colptr[:n_in], (total * (part + 1)) // parts) if part < parts - 1 \
        else n_in
    return lo, hi


@njit(**config.JIT)
def transpose_into(src, s0, rows, cols, dst, d0, dst_stride, src_stride=0):
    # dst[d0 + c * dst_stride + r] = src[s0 + r * src_stride + c]: the (rows, cols)
    # matrix at s0 of the flat src (rows src_stride apart, default cols) written
    # transposed at d0 of the flat dst (rows dst_stride apart): whole 16x16 blocks in
    # registers (transpose16), the edges element by element. Serial: a cached function
    # calling a cached parallel one crashed after its cache was reloaded (a segfault,
    # gone with an empty cache), and 784-800-10's weights take ~0.1 ms this way.
    step = src_stride if src_stride else cols
    whole = rows - rows % 16
    for k in range((cols + 15) // 16):
        c0 = 16 * k
        if c0 + 16 <= cols:
            for r in range(0, whole, 16):
                transpose16(src, s0 + r * step + c0, step, dst, d0 + c0 * dst_stride + r,
                            dst_stride, 16)
        for r in range(whole if c0 + 16 <= cols else 0, rows):
            for c in range(c0, min(c0 + 16, cols)):
                dst[d0 + c * dst_stride + r] = src[s0 + r * step + c]
