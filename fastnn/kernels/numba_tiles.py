"""Register-blocked tile kernels: the fast fused epoch and inference of "numba".

Every layer of a tile of samples is a small matrix product written as loops
that keep several accumulators in registers (4 units x 4 samples per sweep
over the inputs, forward and for the weight gradient), so each loaded value
feeds several multiply-adds; a layer of up to NARROW_INPUTS inputs runs forward
as plain dot products (too short for the blocks' vectors). A batch is cut into
lanes (numba_shared.Batches), each summed on its own and added in lane order.
Two ways to share the lanes between threads, the "numba:samples" and
"numba:rows" (and "numba:inked") backends ("numba" picks one per net:
numba_epoch.choose):

* ``train_epoch_samples`` (small nets): the whole epoch on all threads at
  once (numba_regions). Each thread gathers, runs forward and backward and
  sums the gradient of each of its lanes into the lane's buffer; at a barrier the
  threads meet, add the buffers up in lane order, each over its share of
  the parameters, and apply the optimizer. Activations and weights stay in
  the cache of the core that uses them.
* ``train_epoch_rows`` (large nets), in chunks of up to CHUNK samples:
  1. forward and backward *deltas*, parallel over one tile per lane;
  2. weight gradients and the update, parallel over blocks of weight rows:
     the thread that owns rows o..o+k sums D[:, o]^T A over the whole batch
     and applies the optimizer to four rows at a time while they are in L1.
     No gradient copies to add up: each gradient row is one thread's sum in
     sample order.
  With work.ink ("numba:inked", inked_work), the first layer runs from the
  samples' ink lists instead (numba_inked): forward in phase 1, and in
  phase 2 its gradient over pixels, each thread taking the pixels that hold
  its share of the batch's ink. For the call, its weights (and optimizer
  state) are kept transposed as panels, and put back at the end.

While one tile computes, the images and labels of the next are prefetched
(a random training sample is in no cache). Compare ``numba_simple``, the
same computation one sample at a time. Both epochs take (net, opt, batches,
work, lr, nthreads): see numba_epoch.

The first layer's products skip, for each group of four samples, the inputs
before the first and after the last that holds ink in any of the four
(``widen_span``: MNIST's blank rows above and below the digit, about a fifth
of the pixels once four digits are combined), known from the gather, which
finds each image's first and last inked word (numba_shared.ink_bounds);
skipped terms are exact zeros.

Tails (fewer than 4 samples or units left) clamp their indices to the last
valid one: the duplicate recomputes and rewrites an identical value in the
forward pass, and carries a zero coefficient in the gradient sums.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from fastnn import config, model
from fastnn.kernels.numba_inked import (
    from_panels,
    ink_columns,
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
from fastnn.kernels.numba_intrinsics import SYNC_PAD, barrier
from fastnn.kernels.numba_narrow import (
    SOFTMAX_ROWS,
    narrow_above,
    narrow_flag,
    scratch_rows,
    softmax_xent_t,
)
from fastnn.kernels.numba_regions import on_threads
from fastnn.kernels.numba_shared import (
    OptState,
    apply_rule,
    argmax,
    gather_image,
    gather_row,
    layer_offsets,
    layer_params,
    prefetch_samples,
    relu_rows,
    sum_and_apply,
)

TILE = 32  # samples per tile: a tile's activations stay in L2 while a layer runs
# the rows strategy's tiles, up to this many samples: its layers are wide, and each
# tile streams every weight row through the core that runs it
ROWS_TILE = 64
CHUNK = 1024  # samples whose activations and deltas are kept at once
STATS_PAD = 8  # rows of 16 bytes between two threads' stats: one cache line


@njit(**config.JIT)
def _dots_4x4(a0, a1, a2, a3, w0, w1, w2, w3, lo, hi):
    # a*, w*: (n,) rows -> the 16 dot products a_s . w_u over [lo, hi), s-major (an
    # unsigned index: no negative-index checks, so the loop vectorises). Sixteen accumulators:
    # each loaded value feeds four multiply-adds (8 loads per 16 FMAs once vectorised
    # along n), enough independent sums to keep both FMA pipes busy.
    zero = a0.dtype.type(0)
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
    for i in range(np.uint64(lo), np.uint64(hi)):
        x0, x1, x2, x3 = a0[i], a1[i], a2[i], a3[i]
        u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
        c00 += x0 * u0
        c01 += x0 * u1
        c02 += x0 * u2
        c03 += x0 * u3
        c10 += x1 * u0
        c11 += x1 * u1
        c12 += x1 * u2
        c13 += x1 * u3
        c20 += x2 * u0
        c21 += x2 * u1
        c22 += x2 * u2
        c23 += x2 * u3
        c30 += x3 * u0
        c31 += x3 * u1
        c32 += x3 * u2
        c33 += x3 * u3
    return (c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33)


@njit(**config.JIT)
def _dots_4x2(a0, a1, a2, a3, w0, w1, lo, hi):
    # the two-unit tail of _dots_4x4: a*, w*: (n,) -> the 8 dot products, s-major
    zero = a0.dtype.type(0)
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = zero
    for i in range(np.uint64(lo), np.uint64(hi)):
        x0, x1, x2, x3 = a0[i], a1[i], a2[i], a3[i]
        u, v = w0[i], w1[i]
        c00 += x0 * u
        c01 += x0 * v
        c10 += x1 * u
        c11 += x1 * v
        c20 += x2 * u
        c21 += x2 * v
        c30 += x3 * u
        c31 += x3 * v
    return c00, c01, c10, c11, c20, c21, c30, c31


SPAN_ALIGN = 16  # span ends are rounded to this many inputs: whole vectors


@njit(**config.JIT_LEAF)
def widen_span(spans, s, lo, hi, n_in):
    # row s of a tile of n_in inputs is zero outside [lo, hi) ((0, 0): a blank row);
    # spans: (>= s // 4 + 1, 2) int64, for each group of four rows 4g..4g+3 (as the tile
    # loops group them) the [lo, hi) outside which all four are zero, widened to
    # multiples of SPAN_ALIGN ((0, 0): all zero), grown here by row s (its group's
    # first row starts it); spans (0, 2): no spans, nothing to do.
    # The first layer's products skip the rest: the blank rows above and below the ink
    # (on MNIST ~640 of the 784 inputs remain for a group of four digits) cost nothing,
    # and the sums lose only exact zeros (0 * w).
    if spans.shape[0] == 0:
        return
    g = s // 4
    if lo < hi:
        lo, hi = lo // SPAN_ALIGN * SPAN_ALIGN, min(n_in, -(-hi // SPAN_ALIGN) * SPAN_ALIGN)
    if s % 4 == 0 or spans[g, 0] >= spans[g, 1]:
        spans[g, 0], spans[g, 1] = lo, hi
    elif lo < hi:
        spans[g, 0], spans[g, 1] = min(spans[g, 0], lo), max(spans[g, 1], hi)


@njit(**config.JIT, inline="always")
def spans_of(spans, ns, dense):
    # spans: (>= (ns + 3) // 4, 2) int64 buffer -> the view that holds (or will hold) the
    # spans of ns rows feeding a ``dense`` first layer; spans[:0] (none) for an inked
    # one, which has no use for them. Since the gather finds the rows' ink
    # (numba_shared.ink_bounds), spans pay from the narrowest layers on (784-10-10 on 2
    # cores, Zen 4: +7-9% samples/s on 1 thread, +4-6% on 2 at batch 32, +11% at batch
    # 128; 784-32-10 +8-10%)
    return spans[: (ns + 3) // 4] if dense else spans[:0]


@njit(**config.JIT, inline="always")
def _layer_spans(spans, layer):
    # the spans a layer's products skip by: the input rows' for the first, none (every
    # input counts) for the others
    return spans if layer == 0 else spans[:0]


@njit(**config.JIT)
def _span(spans, s, n_in):
    # the inputs [lo, hi) that the group of rows starting at s needs: all of them
    # for a layer without spans (spans: (0, 2))
    if spans.shape[0] == 0:
        return 0, n_in
    return spans[s // 4, 0], spans[s // 4, 1]


# Layers with this many inputs or fewer run one dot product per (sample, unit): too few
# inputs for the 4x4 blocks' vectors to pay for their sums across lanes (measured on Zen
# 4, a tile of 32, 10 units: 10 inputs 41 -> 23 ns a sample, 16: 46 -> 20, 32: 51 -> 31,
# 64: 55 -> 29, 128: 68 -> 65; 64 and up left to the blocks, which reuse every load)
NARROW_INPUTS = 32


@njit(**config.JIT)
def _narrow_forward(A, ns, W, b, Z):
    # A: (>= ns, n_in), W: (n_out, n_in), b: (n_out,) -> Z[:ns] = A W^T + b
    n_out, n_in = W.shape
    for s in range(ns):
        a, z = A[s], Z[s]
        for o in range(n_out):
            w = W[o]
            acc = b[o]
            for i in range(n_in):
                acc += a[i] * w[i]
            z[o] = acc


@njit(**config.JIT_LEAF)
def _tile_forward(A, ns, W, b, Z, relu, spans):
    # A: (TILE, n_in) rows [0, ns) valid; W: (n_out, n_in); b: (n_out,) -> Z: (TILE, n_out)
    # Z = A W^T + b (+ ReLU); spans: widen_span's for A (the first layer), or (0, 2):
    # every input counts
    if W.shape[1] <= NARROW_INPUTS and spans.shape[0] == 0:
        _narrow_forward(A, ns, W, b, Z)
    else:
        _blocked_forward(A, ns, W, b, Z, spans)
    if relu:
        relu_rows(Z, ns)


@njit(**config.JIT_LEAF)
def _blocked_forward(A, ns, W, b, Z, spans):
    # _tile_forward's product: blocks of 4 units x 4 samples, then 2 units x 4 samples for
    # the units left (a last odd unit is computed twice: same value). Sample indices
    # past ns are clamped to ns - 1: recomputed, rewritten, identical. Units outside:
    # a block's weight rows stay in L1 while the tile's rows stream past them.
    n_out, n_in = W.shape
    o = 0
    while o < n_out:
        four = o + 4 <= n_out
        o1, o2, o3 = min(o + 1, n_out - 1), min(o + 2, n_out - 1), min(o + 3, n_out - 1)
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            lo, hi = _span(spans, s, n_in)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            if four:
                c = _dots_4x4(a0, a1, a2, a3, W[o], W[o1], W[o2], W[o3], lo, hi)
                for u, ou in enumerate((o, o1, o2, o3)):
                    Z[s, ou] = c[u] + b[ou]
                    Z[s1, ou] = c[4 + u] + b[ou]
                    Z[s2, ou] = c[8 + u] + b[ou]
                    Z[s3, ou] = c[12 + u] + b[ou]
            else:
                c = _dots_4x2(a0, a1, a2, a3, W[o], W[o1], lo, hi)
                Z[s, o], Z[s, o1], Z[s1, o], Z[s1, o1] = (c[0] + b[o], c[1] + b[o1],
                                                          c[2] + b[o], c[3] + b[o1])
                Z[s2, o], Z[s2, o1], Z[s3, o], Z[s3, o1] = (c[4] + b[o], c[5] + b[o1],
                                                            c[6] + b[o], c[7] + b[o1])
        o += 4 if four else 2


@njit(**config.JIT)
def _column4(D, s, o, ns):
    # D[s:s+4, o] as four scalars; rows >= ns give 0, so a clamped duplicate
    # sample adds nothing to the gradient sums
    zero = D.dtype.type(0)
    return (D[s, o], D[s + 1, o] if s + 1 < ns else zero,
            D[s + 2, o] if s + 2 < ns else zero, D[s + 3, o] if s + 3 < ns else zero)


@njit(**config.JIT_LEAF)
def _grad_rows(D, A, ns, gW, gb, o_lo, o_hi, accumulate, spans):
    # D: (>=ns, n_out) deltas; A: (>=ns, n_in) layer input; rows o_lo..o_hi of
    # gW: (n_out, n_in) and gb: (n_out,) get (or, accumulating, add) D^T A and sum D
    # for the first ns samples, 4 units x 4 samples per sweep over n_in (then 2, then 1);
    # a sweep covers only its four samples' span (spans: as _tile_forward's; an
    # unsigned index, as in _dots_4x4)
    n_in = gW.shape[1]
    zero = gW.dtype.type(0)
    o = o_lo
    while o + 4 <= o_hi:
        g0, g1, g2, g3 = gW[o], gW[o + 1], gW[o + 2], gW[o + 3]
        if not accumulate:  # zeroed here, just before use, while the rows are in cache
            gW[o: o + 4, :] = zero
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            d00, d10, d20, d30 = _column4(D, s, o, ns)
            d01, d11, d21, d31 = _column4(D, s, o + 1, ns)
            d02, d12, d22, d32 = _column4(D, s, o + 2, ns)
            d03, d13, d23, d33 = _column4(D, s, o + 3, ns)
            lo, hi = _span(spans, s, n_in)
            for i in range(np.uint64(lo), np.uint64(hi)):
                x0, x1, x2, x3 = a0[i], a1[i], a2[i], a3[i]
                g0[i] += d00 * x0 + d10 * x1 + d20 * x2 + d30 * x3
                g1[i] += d01 * x0 + d11 * x1 + d21 * x2 + d31 * x3
                g2[i] += d02 * x0 + d12 * x1 + d22 * x2 + d32 * x3
                g3[i] += d03 * x0 + d13 * x1 + d23 * x2 + d33 * x3
        o += 4
    if o + 2 <= o_hi:  # two rows left (or three): one sweep for both
        g0, g1 = gW[o], gW[o + 1]
        if not accumulate:
            gW[o: o + 2, :] = zero
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            d00, d10, d20, d30 = _column4(D, s, o, ns)
            d01, d11, d21, d31 = _column4(D, s, o + 1, ns)
            lo, hi = _span(spans, s, n_in)
            for i in range(np.uint64(lo), np.uint64(hi)):
                x0, x1, x2, x3 = a0[i], a1[i], a2[i], a3[i]
                g0[i] += d00 * x0 + d10 * x1 + d20 * x2 + d30 * x3
                g1[i] += d01 * x0 + d11 * x1 + d21 * x2 + d31 * x3
        o += 2
    while o < o_hi:
        g0 = gW[o]
        if not accumulate:
            g0[:] = zero
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            d00, d10, d20, d30 = _column4(D, s, o, ns)
            lo, hi = _span(spans, s, n_in)
            for i in range(np.uint64(lo), np.uint64(hi)):
                g0[i] += d00 * a0[i] + d10 * a1[i] + d20 * a2[i] + d30 * a3[i]
        o += 1
    for o in range(o_lo, o_hi):
        acc = zero
        for s in range(ns):
            acc += D[s, o]
        gb[o] = gb[o] + acc if accumulate else acc


@njit(**config.JIT_LEAF)
def _tile_grad_input(D, W, A, ns, DA):
    # D: (TILE, n_out); W: (n_out, n_in); A: (TILE, n_in) post-ReLU input
    # -> DA: (TILE, n_in) = (D W) * [A > 0]
    n_out, n_in = W.shape
    zero = W.dtype.type(0)
    if n_in <= NARROW_INPUTS:
        # one dot product per input the ReLU passed: too few inputs for the loop below
        # to vectorise (784-10-10: 26 ns a sample against 43)
        for s in range(ns):
            for i in range(n_in):
                acc = zero
                if not A[s, i] <= zero:
                    for o in range(n_out):
                        acc += D[s, o] * W[o, i]
                DA[s, i] = acc
        return
    for s in range(ns):
        da = DA[s]
        for i in range(n_in):
            da[i] = zero
        for o in range(0, n_out, 4):
            o1, o2, o3 = min(o + 1, n_out - 1), min(o + 2, n_out - 1), min(o + 3, n_out - 1)
            d0 = D[s, o]
            d1 = D[s, o1] if o + 1 < n_out else zero
            d2 = D[s, o2] if o + 2 < n_out else zero
            d3 = D[s, o3] if o + 3 < n_out else zero
            w0, w1, w2, w3 = W[o], W[o1], W[o2], W[o3]
            for i in range(n_in):
                da[i] += d0 * w0[i] + d1 * w1[i] + d2 * w2[i] + d3 * w3[i]
        a = A[s]
        for i in range(n_in):
            if a[i] <= zero:
                da[i] = zero


# Work's and RowsWork's ``moved``: MOVED where batches may be shifted or distorted, None
# where they never are (plain: a kernel of its own, without the moved gather, whose
# distortion is most of its cold compile)
MOVED = np.zeros(0, np.int8)


def plain(work):
    """work for batches that are neither shifted nor distorted."""
    return work._replace(moved=None)


class Work(NamedTuple):
    """Buffers of train_epoch_samples (samples_work)."""

    grad: np.ndarray  # (lanes, P) one gradient per lane
    buf: np.ndarray  # (T, tile_buffer_size(TILE)) activations, deltas, softmax scratch
    stats: np.ndarray  # float64 (STATS_PAD * lanes, 2): lane l's (loss sum, hits) in row
    #                    STATS_PAD * l
    sync: np.ndarray  # int64 (2 * SYNC_PAD,) the barrier
    spans: np.ndarray  # int64 (T, TILE // 4, 2) widen_span's
    # numba_narrow.narrow_flag's pair (_samples_tile)
    narrow: object
    wide: object
    moved: object


def samples_work(sizes, batch_size, nthreads, lanes, dtype):
    return Work(np.empty((lanes, model.n_params(sizes)), dtype),
                np.empty((nthreads, tile_buffer_size(TILE, sizes)), dtype),
                np.zeros((STATS_PAD * lanes, 2)), np.zeros(2 * SYNC_PAD, np.int64),
                np.empty((nthreads, TILE // 4, 2), np.int64), *narrow_flag(sizes, dtype),
                MOVED)


class RowsWork(NamedTuple):
    """Buffers of train_epoch_rows (rows_work, inked_work): arrays side by side, no
    named tuple inside (numba_regions)."""

    grad: np.ndarray  # (P,) the batch gradient, each row written by the thread that owns it
    buf: np.ndarray  # (tile_buffer_size(chunk),) activations, deltas, softmax scratch
    stats: np.ndarray  # float64 (STATS_PAD * (chunk // 4 + 1) + 1, 2): tile t's (loss sum,
    #                    hits) in row STATS_PAD * t, folded into the last row after a chunk
    sync: np.ndarray  # int64 (2 * SYNC_PAD,) the barrier
    spans: np.ndarray  # int64 (chunk // 4 + 1, 2) widen_span's
    # With the inked first layer: numba_inked.Ink's fields for a chunk (else 0 rows), ...
    ink_idx: np.ndarray
    ink_vals: np.ndarray
    ink_counts: np.ndarray
    ink_colptr: np.ndarray
    ink_rows: np.ndarray
    ink_cvals: np.ndarray
    totals: np.ndarray  # int64 (T, n_in + 1): each thread's sums of the tiles' colptr
    # ... the first layer's weights transposed as panels, (n_in * n_pad,) with n_hid
    # padded to whole panels, their gradient, a chunk's first-layer deltas as panels
    # (chunk * n_pad,), and the optimizer's state for WT (2, n_in * n_pad), Adam's
    # two rows: train_epoch_rows passes on as many as opt has. (0,) each without.
    WT: np.ndarray
    gWT: np.ndarray
    DP: np.ndarray
    state_t: np.ndarray
    moved: object


def rows_work(sizes, batch_size, nthreads, lanes, dtype, inked=False):
    chunk = min(batch_size, CHUNK)
    n_px = sizes[0]
    panels = panels_size(n_px, sizes[1], dtype) if inked else 0
    # the panels start a cache line: a 64-byte row of them that straddles two lines
    # costs two loads
    zeros = model.aligned_zeros
    return RowsWork(np.empty(model.n_params(sizes), dtype),
                    np.empty(tile_buffer_size(chunk, sizes), dtype),
                    np.zeros((STATS_PAD * (chunk // 4 + 1) + 1, 2)),
                    np.zeros(2 * SYNC_PAD, np.int64), np.empty((chunk // 4 + 1, 2), np.int64),
                    *ink_work(chunk if inked else 0, n_px, dtype, columns=inked),
                    np.zeros((nthreads, n_px + 1), np.int64), zeros(panels, dtype),
                    zeros(panels, dtype), zeros(panels_size(chunk, sizes[1], dtype)
                                                if inked else 0, dtype),
                    zeros((2, panels), dtype), MOVED)


def inked_work(sizes, batch_size, nthreads, lanes, dtype):
    return rows_work(sizes, batch_size, nthreads, lanes, dtype, inked=True)


@njit(**config.JIT_EXACT_LEAF)
def _softmax_xent_tile(Z, ns, batches, first, inv_m, D, stats_row, T):
    # Z: (TILE, k) logits of order positions first.. -> D: (TILE, k) = (P - Y) / m;
    # adds their loss sum and hits to stats_row: (2,); T: (k + SOFTMAX_ROWS, >= ns)
    # scratch (_scratch). numba_narrow.softmax_xent_t on the logits transposed: a row of
    # 10 classes is too short to vectorise, a class across the tile is not.
    k = Z.shape[1]
    for s in range(ns):
        for c in range(k):
            T[c, s] = Z[s, c]
    softmax_xent_t(T[:k], ns, batches, first, inv_m, T[:k], stats_row,
                   T[k: k + SOFTMAX_ROWS])
    for s in range(ns):
        for c in range(k):
            D[s, c] = T[c, s]


@njit(**config.JIT, inline="always")
def _scratch(buf, cap, aoff, f, ns, rows):
    # the scratch of rows f..f+ns: (rows, ns) of the (cap, rows) block after the
    # activations' and the deltas' (tile_buffer_size)
    base = 2 * cap * aoff[-1] + f * rows
    return buf[base: base + rows * ns].reshape((rows, ns))


def tile_buffer_size(cap, sizes):
    """Elements of a buffer of activations, deltas and scratch (numba_narrow.scratch_rows)
    for ``cap`` samples of a net of these layer sizes."""
    return cap * (2 * int(sum(sizes)) + int(scratch_rows(np.asarray(sizes, np.int64))))


@njit(**config.JIT, inline="always")
def _rows(buf, cap, off, f, ns, width):
    # rows f..f+ns, as (ns, width), of the (cap, width) block at cap * off in the flat buf
    base = cap * off
    return buf[base + f * width: base + (f + ns) * width].reshape((ns, width))


@njit(**config.JIT, inline="always")
def _input_and_deltas(buf, cap, aoff, sizes, layer, f, ns):
    # rows f..f+ns of layer's input activations A: (ns, n_in) and of its output's
    # deltas D: (ns, n_out); the deltas' blocks follow all the activations (aoff[-1])
    return (_rows(buf, cap, aoff[layer], f, ns, sizes[layer]),
            _rows(buf, cap, aoff[-1] + aoff[layer + 1], f, ns, sizes[layer + 1]))


@njit(**config.JIT)
def _inked_first_layer(WP, X, ns, idx, vals, counts, b, Z, relu):
    # X: (>= ns, n_in) -> Z: (>= ns, n_out), the first layer from X's ink lists (written
    # to idx, vals, counts) when its weights are given as panels WP; True if done. With
    # WP None (a kernel compiled for the dense path: "samples", "rows", predict on
    # dense images) Numba drops the branch: none of numba_inked is compiled for it.
    if WP is None:
        return False
    ink_lists(X, ns, idx, vals, counts)
    inked_forward(idx, vals, counts, ns, WP, b, Z, relu)
    return True


@njit(**config.JIT)
def _tile_first(net, aoff, buf, cap, f, ns, batches, first, pf_lo, pf_hi, spans, ink_idx,
                ink_vals, ink_counts, WT, moved):
    # The gather and the first layer's output (after its ReLU when layers follow) of
    # order positions first..first+ns, kept as rows f..f+ns of buf's blocks (_tile_pass)
    # pf_lo, pf_hi: order positions of the tile that comes next, prefetched here (one
    # row per row gathered) so that their images arrive while this tile computes.
    # spans: (>= (ns + 3) // 4, 2) int64 <- the input rows' spans (widen_span; none for an
    # inked first layer)
    # WT: the first layer's weights as panels (numba_inked), or None: with them, the
    # first layer runs from the rows' ink lists, written to ink_* (numba_inked.Ink's
    # first fields)
    # moved: Work's; None: the images are neither shifted nor distorted
    sizes = net.sizes
    L = sizes.shape[0] - 1
    X = _rows(buf, cap, 0, f, ns, sizes[0])
    spans = spans_of(spans, ns, WT is None)
    for s in range(ns):
        if moved is None:
            ink_lo, ink_hi = gather_image(batches.images, batches.order[first + s],
                                          batches.scale, X[s])
        else:
            ink_lo, ink_hi = gather_row(batches, first + s, X[s])
        widen_span(spans, s, ink_lo, ink_hi, sizes[0])
        prefetch_samples(batches, min(pf_lo + s, pf_hi), min(pf_lo + s + 1, pf_hi))
    prefetch_samples(batches, min(pf_lo + ns, pf_hi), pf_hi)
    W, b = layer_params(net.theta, net, 0)
    Z = _rows(buf, cap, aoff[1], f, ns, sizes[1])
    if not _inked_first_layer(WT, X, ns, ink_idx, ink_vals, ink_counts, b, Z, L > 1):
        _tile_forward(X, ns, W, b, Z, L > 1, spans)


@njit(**config.JIT)
def _tile_pass(net, aoff, buf, cap, f, ns, batches, first, inv_m, stats_row, pf_lo, pf_hi,
               spans, ink_idx, ink_vals, ink_counts, WT, moved):
    # Forward and backward deltas of order positions first..first+ns, kept as rows
    # f..f+ns of buf's blocks: layer l's activations (cap, n_l) start at cap * aoff[l],
    # its deltas at cap * (aoff[L+1] + aoff[l]); aoff: (L+2,) prefix sums of sizes.
    # stats_row: (2,) float64 += (loss sum, hits) of these samples; the rest as
    # _tile_first's
    sizes = net.sizes
    L = sizes.shape[0] - 1
    _tile_first(net, aoff, buf, cap, f, ns, batches, first, pf_lo, pf_hi, spans, ink_idx,
                ink_vals, ink_counts, WT, moved)
    for layer in range(1, L):
        W, b = layer_params(net.theta, net, layer)
        _tile_forward(_rows(buf, cap, aoff[layer], f, ns, sizes[layer]), ns, W, b,
                      _rows(buf, cap, aoff[layer + 1], f, ns, sizes[layer + 1]), layer < L - 1,
                      spans[:0])
    _softmax_xent_tile(_rows(buf, cap, aoff[L], f, ns, sizes[L]), ns, batches, first, inv_m,
                       _input_and_deltas(buf, cap, aoff, sizes, L - 1, f, ns)[1], stats_row,
                       _scratch(buf, cap, aoff, f, ns, sizes[L] + SOFTMAX_ROWS))
    for layer in range(L - 1, 0, -1):  # deltas of the hidden layers
        A, D = _input_and_deltas(buf, cap, aoff, sizes, layer, f, ns)
        DA = _input_and_deltas(buf, cap, aoff, sizes, layer - 1, f, ns)[1]
        _tile_grad_input(D, layer_params(net.theta, net, layer)[0], A, ns, DA)


@njit(**config.JIT_LEAF)
def _samples_tile(net, aoff, buf, ns, batches, first, inv_m, stats_row, pf_lo, pf_hi,
                  spans, g, accumulate, narrow, wide, moved):
    # train_epoch_samples' tile (a dense first layer) at row 0 of buf, with every
    # layer's gradient for it into g: (P,) (accumulating: added). narrow, wide: Work's,
    # the layers above the first transposed (numba_narrow) or row-major (Numba compiles
    # one of the two); moved: Work's (_tile_first)
    sizes = net.sizes
    below = sizes.shape[0] - 1  # the layers whose gradient is left for _grad_rows
    if narrow is not None:
        _tile_first(net, aoff, buf, TILE, 0, ns, batches, first, pf_lo, pf_hi, spans,
                    None, None, None, None, moved)
        narrow_above(net, _rows(buf, TILE, aoff[1], 0, ns, sizes[1]), ns, batches, first,
                     inv_m, stats_row, _input_and_deltas(buf, TILE, aoff, sizes, 0, 0, ns)[1],
                     g, accumulate, _scratch(buf, TILE, aoff, 0, ns, scratch_rows(sizes)))
        below = 1
    if wide is not None:
        _tile_pass(net, aoff, buf, TILE, 0, ns, batches, first, inv_m, stats_row, pf_lo,
                   pf_hi, spans, None, None, None, None, moved)
    spans = spans_of(spans, ns, True)
    for layer in range(below):
        A, D = _input_and_deltas(buf, TILE, aoff, sizes, layer, 0, ns)
        gW, gb = layer_params(g, net, layer)
        _grad_rows(D, A, ns, gW, gb, 0, sizes[layer + 1], accumulate,
                   _layer_spans(spans, layer))


def train_epoch_rows(net, opt, batches, work, lr, nthreads):
    # The epoch in chunks of up to CHUNK samples, two phases per chunk on nthreads
    # threads at once (numba_regions), a barrier after each. The inked first layer
    # (work.WT not empty) trains its weights transposed, as panels (numba_inked), with
    # the optimizer's state laid out alike, for this call.
    inked = work.WT.shape[0] > 0
    if inked:
        work = work._replace(state_t=work.state_t[: opt.state.shape[0]])
        _panels(net, opt, work.WT, work.state_t, True)
    on_threads(_rows_thread, nthreads, net, opt, batches, work, lr, nthreads)
    if inked:  # the first layer's weights and state back in place
        _panels(net, opt, work.WT, work.state_t, False)
    k, batch_size = batches.order.shape[0], batches.batch_size
    opt.step[0] += (k + batch_size - 1) // batch_size


@njit(**config.JIT)
def _panels(net, opt, WT, state_t, into):
    # theta's W0 and opt.state's part for it -> (into) or <- WT, state_t: their panels
    n_px, n_hid, w0 = net.sizes[0], net.sizes[1], net.woff[0]
    if into:
        to_panels(net.theta, w0, n_hid, n_px, WT)
        for j in range(opt.state.shape[0]):
            to_panels(opt.state[j], w0, n_hid, n_px, state_t[j])
    else:
        from_panels(WT, n_px, n_hid, net.theta, w0)
        for j in range(opt.state.shape[0]):
            from_panels(state_t[j], n_px, n_hid, opt.state[j], w0)


@njit(**config.JIT)
def _rows_thread(net, opt, batches, work, lr, nthreads, t):
    # Thread t of train_epoch_rows, for each chunk: (1) tiles t, t + nthreads, ...;
    # a barrier; (2) its block of each layer's weight rows (inked: and of the first
    # layer's pixels); a barrier.
    theta, sizes, woff, boff = net
    (grad, buf, stats, sync, sbuf, ink_idx, ink_vals, ink_counts, ink_colptr, ink_rows,
     ink_cvals, totals, WT, gWT, DP, state_t, moved) = work
    k, batch_size = batches.order.shape[0], batches.batch_size
    L = sizes.shape[0] - 1
    aoff = layer_offsets(sizes)
    chunk = buf.shape[0] // (2 * aoff[L + 1] + scratch_rows(sizes))
    total = stats.shape[0] - 1
    inked = WT.shape[0] > 0
    n_px = sizes[0]
    opt_t = OptState(opt.kind, opt.hyper, state_t, opt.step)
    step0 = opt.step[0]
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        inv_m = theta.dtype.type(1) / theta.dtype.type(m)
        step = step0 + start // batch_size + 1
        for c0 in range(start, start + m, chunk):
            cn = min(chunk, start + m - c0)
            # one tile per lane (so per thread), of at most ROWS_TILE samples: each
            # thread streams the weights once per batch; cut by lanes, not threads, so
            # that the sums' order stays put; a multiple of 4, so that the tiles' spans
            # are the chunk's (sbuf, grouped from row 0)
            tsize = min(ROWS_TILE, 4 * max(1, -(-cn // (4 * batches.lanes))))
            n_tiles = (cn + tsize - 1) // tsize
            # phase 1: forward and deltas of every tile (independent samples); each
            # prefetches the same tile of the next chunk, which its thread runs next
            # (inked: and the tile's ink by pixel, its first-layer deltas as panels)
            DPc = DP[: cn * (DP.shape[0] // chunk)]
            for tile in range(t, n_tiles, nthreads):
                f = tile * tsize
                ns = min(tsize, cn - f)
                pf_lo, pf_hi = min(c0 + cn + f, k), min(c0 + cn + f + tsize, k)
                # WT or None (never both in one call): with None, _tile_pass's inked
                # branch is not compiled, and "samples" calls it only so
                if not inked:
                    _tile_pass(net, aoff, buf, chunk, f, ns, batches, c0 + f, inv_m,
                               stats[STATS_PAD * tile], pf_lo, pf_hi, sbuf[f // 4:],
                               ink_idx, ink_vals, ink_counts, None, moved)
                else:
                    _tile_pass(net, aoff, buf, chunk, f, ns, batches, c0 + f, inv_m,
                               stats[STATS_PAD * tile], pf_lo, pf_hi, sbuf[f // 4:],
                               ink_idx[f:], ink_vals[f:], ink_counts[f:], WT, moved)
                    ink_columns(ink_idx[f:], ink_vals[f:], ink_counts[f:], ns, f,
                                ink_colptr[tile], ink_rows, ink_cvals, f * n_px)
                    rows_to_panels(_input_and_deltas(buf, chunk, aoff, sizes, 0, f, ns)[1], f,
                                   cn, DPc)
            barrier(sync, nthreads)
            # phase 2: each block of weight rows is owned by one thread
            last = c0 + cn >= start + m
            spans = spans_of(sbuf, cn, not inked)  # as phase 1's tiles wrote them
            if inked:
                _inked_first_grad(net, grad, buf, chunk, aoff, ink_colptr[:n_tiles], ink_rows,
                                  ink_cvals, totals[t], cn, WT, gWT, DPc, c0 > start, last,
                                  lr, opt, opt_t, step, nthreads, t)
            for layer in range(1 if inked else 0, L):
                n_in, n_out = sizes[layer], sizes[layer + 1]
                A, D = _input_and_deltas(buf, chunk, aoff, sizes, layer, 0, cn)
                gW, gb = layer_params(grad, net, layer)
                lspans = _layer_spans(spans, layer)
                blocks = min(n_out, nthreads)
                o_lo = (n_out * min(t, blocks)) // blocks
                o_end = (n_out * min(t + 1, blocks)) // blocks
                # four rows at a time, each updated right after its gradient, while
                # both are in L1 (a thread's whole block of rows is not even in L2)
                for o in range(o_lo, o_end, 4):
                    o_hi = min(o + 4, o_end)
                    _grad_rows(D, A, cn, gW, gb, o, o_hi, c0 > start, lspans)
                    if last:
                        apply_rule(theta, grad, woff[layer] + o * n_in,
                                   woff[layer] + o_hi * n_in, lr, opt, step)
                        apply_rule(theta, grad, boff[layer] + o, boff[layer] + o_hi, lr,
                                   opt, step)
            if t == 0:  # fold the tiles' stats in, in tile order
                for tile in range(n_tiles):
                    row = STATS_PAD * tile
                    stats[total, 0] += stats[row, 0]
                    stats[total, 1] += stats[row, 1]
                    stats[row, 0] = stats[row, 1] = 0.0
            barrier(sync, nthreads)


train_epoch_rows.jitted = _rows_thread  # what compiles (numba_epoch._compiled)


@njit(**config.JIT)
def _inked_first_grad(net, grad, buf, chunk, aoff, colptr, rows, cvals, total, cn, WT, gWT,
                      DP, accumulate, last, lr, opt, opt_t, step, nthreads, part):
    # Part ``part`` of nthreads of the first layer's gradient from a chunk of cn samples
    # (colptr: (tiles, n_in + 1) each tile's ink by pixel in rows, cvals; their deltas in
    # buf as _rows_thread keeps them, and in DP as panels): gWT transposed, as panels,
    # over the pixels holding the part's share of the ink, and the bias's, in grad, over
    # its share of the units; on the batch's last chunk, the update: WT with opt_t (the
    # state transposed), the bias in net.theta with opt. Each pixel's row and each
    # unit's bias: one thread's sum in sample order. total: (n_in + 1,) scratch <- the
    # entries before each pixel, over all tiles.
    n_px, n_hid = net.sizes[0], net.sizes[1]
    base = chunk * (aoff[-1] + aoff[1])  # the first layer's deltas (cn, n_hid), flat
    D = buf[base: base + cn * n_hid]
    total[:] = 0
    for t in range(colptr.shape[0]):
        for p in range(n_px + 1):
            total[p] += colptr[t, p] - colptr[t, 0]
    width = panel_width(WT)
    gb = layer_params(grad, net, 0)[1]
    zero = gWT.dtype.type(0)
    p_lo, p_hi = ink_split(total, nthreads, part)
    for q in range(p_lo, p_hi, 16):  # 16 pixels' rows at a time, updated while in cache
        q_hi = min(q + 16, p_hi)
        inked_grad_rows(colptr, rows, cvals, DP, gWT, q, q_hi, accumulate)
        if last:  # (the padding's weights and gradients are zeros: they stay so)
            for o0 in range(0, n_hid, width):
                apply_rule(WT, gWT, o0 * n_px + q * width, o0 * n_px + q_hi * width, lr,
                           opt_t, step)
    u_lo, u_hi = (n_hid * part) // nthreads, (n_hid * (part + 1)) // nthreads
    if not accumulate:
        gb[u_lo:u_hi] = zero
    for s in range(cn):
        for o in range(u_lo, u_hi):
            gb[o] += D[s * n_hid + o]
    if last:
        apply_rule(net.theta, grad, net.boff[0] + u_lo, net.boff[0] + u_hi, lr, opt, step)


@njit(**config.JIT)
def _lane(start, k, batch_size, lanes, lane):
    # order positions [lo, hi) of lane ``lane`` of the batch at ``start``, and how many
    # lanes that batch has: at most ``lanes``, at least 4 samples each
    m = min(batch_size, k - start)
    n = min(lanes, (m + 3) // 4)
    return start + (m * lane) // n, start + (m * (lane + 1)) // n, n


@njit(**config.JIT)
def _next_tile(after, hi, lane, t, start, k, batch_size, lanes, nthreads):
    # order positions of the tile thread t runs after the one ending at ``after`` in its
    # lane (which ends at hi): the rest of the lane, else its next lane of this batch,
    # else its first lane of the next batch; (0, 0) at the end of the epoch
    if after < hi:
        return after, min(after + TILE, hi)
    lo, hi, n = _lane(start, k, batch_size, lanes, lane + nthreads)
    if lane + nthreads < n:
        return lo, min(lo + TILE, hi)
    if start + batch_size < k:
        lo, hi, n = _lane(start + batch_size, k, batch_size, lanes, t)
        if t < n:
            return lo, min(lo + TILE, hi)
    return 0, 0


def train_epoch_samples(net, opt, batches, work, lr, nthreads):
    # The same epoch, parallel over samples only, on nthreads threads at once
    # (numba_regions: _samples_thread and what it calls compile once, not three times as
    # a prange's body). A batch is cut into batches.lanes contiguous lanes (fewer for a
    # small batch), whatever the number of threads: thread t runs lanes t, t + nthreads,
    # ..., TILE samples at a time, through _samples_tile, which sums each lane's
    # gradient into that lane's work.grad row. Then the threads meet (a spin barrier,
    # ~0.1 us, where a fork and join costs ~1.2 us), each adds the rows up, in lane
    # order, over its own share of the parameters and applies the optimizer to it, and
    # they meet again before the next batch reads the weights. Every sum has the same
    # order for any thread count. For small layers this beats train_epoch_rows: no
    # thread reads activations another core wrote.
    on_threads(_samples_thread, nthreads, net, opt, batches, work, lr, nthreads)
    k, batch_size = batches.order.shape[0], batches.batch_size
    opt.step[0] += (k + batch_size - 1) // batch_size


@njit(**config.JIT)
def _samples_thread(net, opt, batches, work, lr, nthreads, t):
    # Thread t of train_epoch_samples; work: samples_work's Work (its fields' shapes)
    gbuf, tbuf, stats, sync, sbuf, narrow, wide, moved = work
    k, batch_size, lanes = batches.order.shape[0], batches.batch_size, batches.lanes
    P = net.theta.shape[0]
    aoff = layer_offsets(net.sizes)
    step0 = opt.step[0]
    buf = tbuf[t]
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        inv_m = net.theta.dtype.type(1) / net.theta.dtype.type(m)
        n = _lane(start, k, batch_size, lanes, 0)[2]
        for lane in range(t, n, nthreads):
            lo, hi, _ = _lane(start, k, batch_size, lanes, lane)
            if start == 0 and lane == t:
                prefetch_samples(batches, lo, min(lo + TILE, hi))
            for first in range(lo, hi, TILE):
                ns = min(TILE, hi - first)
                pf_lo, pf_hi = _next_tile(first + ns, hi, lane, t, start, k, batch_size,
                                          lanes, nthreads)
                # the lane's first tile overwrites its gradient, the others add
                _samples_tile(net, aoff, buf, ns, batches, first, inv_m,
                              stats[STATS_PAD * lane], pf_lo, pf_hi, sbuf[t], gbuf[lane],
                              first > lo, narrow, wide, moved)
        barrier(sync, nthreads)
        sum_and_apply(net.theta, gbuf[:n], (P * t) // nthreads, (P * (t + 1)) // nthreads,
                      lr, opt, step0 + start // batch_size + 1)
        barrier(sync, nthreads)


train_epoch_samples.jitted = _samples_thread  # what compiles (numba_epoch._compiled)


# Inference has no batches: tiles this large stream each weight row through a core
# once per 128 images (measured on 2 cores, Zen 4: 2-4% faster than 32 at every width)
PREDICT_TILE = 128


class PredictWork(NamedTuple):
    """Per-thread buffers of predict_tiles, for tiles of ``tile`` samples."""

    buf: np.ndarray  # (T, tile * sum sizes) activations
    spans: np.ndarray  # (T, tile // 4, 2) int64 widen_span's
    ink_idx: np.ndarray  # (T * tile) rows of ink lists (numba_inked.Ink's first fields):
    ink_vals: np.ndarray  # thread t's from row t * tile; 0 rows without panels
    ink_counts: np.ndarray
    panels: object  # the first layer's weights as panels, to be filled; or None (dense)


def predict_work(sizes, nthreads, dtype, inked, tile=PREDICT_TILE):
    """``inked``: the first layer from the images' ink lists (numba_inked)."""
    # The panels start a cache line (model.aligned_zeros): at NumPy's 16 bytes every
    # 64-byte row of weights the inked forward loads straddled two lines, and inference
    # ran at either of two speeds by where an allocation fell (784-800-10, 10,000 test
    # images, 2 threads, Intel Xeon: 295k or 467k samples/s from one process to another)
    ink = ink_work(nthreads * tile if inked else 0, sizes[0], dtype)
    return PredictWork(model.aligned_zeros((nthreads, tile * int(sum(sizes))), dtype),
                       np.empty((nthreads, -(-tile // 4), 2), np.int64), ink.idx, ink.vals,
                       ink.counts,
                       model.aligned_zeros(panels_size(sizes[0], sizes[1], dtype), dtype)
                       if inked else None)


@njit(**config.JIT)
def _fill_panels(WP, net):
    # WP <- the first layer's weights as panels (nothing if WP is None)
    if WP is None:
        return
    to_panels(net.theta, net.woff[0], net.sizes[1], net.sizes[0], WP)


def predict_tiles(net, images, scale, work, out):
    # images: (n, 784) uint8 -> out: (n,) int64 argmax of the logits
    # work: PredictWork. With panels in it (predict_work's ``inked``), the first layer
    # from the images' ink lists (numba_inked.inked_forward); compiled apart from the
    # dense kernel (panels None), which holds none of that code.
    _fill_panels(work.panels, net)
    on_threads(_predict_thread, work.buf.shape[0], net, images, scale, work, out)


@njit(**config.JIT)
def _predict_thread(net, images, scale, work, out, t):
    # Thread t of predict_tiles: the t-th of T equal runs of images
    tbuf, sbuf, ink_idx, ink_vals, ink_counts, WP = work
    sizes = net.sizes
    T = tbuf.shape[0]
    n = images.shape[0]
    L = sizes.shape[0] - 1
    aoff = layer_offsets(sizes)  # layer l's (tile, sizes[l]) block starts at tile * aoff[l]
    tile = tbuf.shape[1] // aoff[L + 1]
    b0 = layer_params(net.theta, net, 0)[1]
    buf = tbuf[t]
    hi = (n * (t + 1)) // T
    r = t * tile  # the thread's rows of ink lists
    for first in range((n * t) // T, hi, tile):
        ns = min(tile, hi - first)
        X = _rows(buf, tile, 0, 0, tile, sizes[0])
        spans = spans_of(sbuf[t], ns, WP is None)
        for s in range(ns):
            ink_lo, ink_hi = gather_image(images, first + s, scale, X[s])
            widen_span(spans, s, ink_lo, ink_hi, sizes[0])
        inked = _inked_first_layer(WP, X, ns, ink_idx[r:], ink_vals[r:], ink_counts[r:],
                                   b0, _rows(buf, tile, aoff[1], 0, tile, sizes[1]), L > 1)
        for layer in range(1 if inked else 0, L):
            W, b = layer_params(net.theta, net, layer)
            _tile_forward(_rows(buf, tile, aoff[layer], 0, tile, sizes[layer]), ns, W, b,
                          _rows(buf, tile, aoff[layer + 1], 0, tile, sizes[layer + 1]),
                          layer < L - 1, _layer_spans(spans, layer))
        Z = _rows(buf, tile, aoff[L], 0, tile, sizes[L])
        for s in range(ns):
            out[first + s] = argmax(Z[s])


predict_tiles.jitted = _predict_thread  # what compiles (numba_epoch._compiled)
