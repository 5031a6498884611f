"""The layers above the first with the samples in the vector lanes.

Row-major (a row per sample), a layer of 10 units has rows too short for a
vector: its products are scalar dot products of 10 terms and its gradient sums
read the samples with a stride. Transposed (a row per unit, the tile's samples
along it), every step is a loop over the samples, which vectorises:

* forward: z[o] = b[o] + sum over i of W[o, i] a[i], a multiply-add of whole
  rows per weight, in i order (``forward_t``), a vector of samples (16 float32)
  of four rows o at a time in registers (numba_intrinsics.madd_rows: the same
  sums; 784-10-10's forward of a tile of 16 on Zen 4 282 -> 103 ns, of 32 301 ->
  175);
* softmax and cross-entropy across the classes' rows (``softmax_xent_t``);
* the deltas below, da[i] = sum over o of W[o, i] d[o], masked by the ReLU
  (madd_rows again; with the weight gradients, 468 -> 343 ns for 16 samples), and
  each weight's gradient, the dot product of a delta row and an input row
  (``backward_t``).

``narrow_above`` runs them all for a tile when every layer above the first is
at most NARROW_UNITS wide (784-10-10, 784-32-10): it takes the first layer's
output row-major and gives back its deltas row-major, for the first layer's
products (numba_tiles' 4x4 blocks), which need rows of 784 inputs. Each
sample's sums are taken in the same order as the row-major tile's (the same
bits); a weight's gradient sums the tile's samples as a vector reduction.
The kernels take the choice as a type (narrow_flag), so that Numba compiles
one of the two paths. Measured on 2 cores, Intel Xeon (AVX-512), 784-10-10,
MNIST, full epochs, interleaved with the row-major layers, best of five, 1 / 2
threads: "split" at batch 32 1.83 -> 2.03M and 2.92 -> 3.28M samples/s,
"samples" at batch 128 1.81 -> 2.42M and 3.12 -> 3.75M.
"""

import numpy as np
from numba import njit

from fastnn import config
from fastnn.kernels.numba_intrinsics import MADD_BYTES, exp_nonpositive, madd_rows
from fastnn.kernels.numba_layers import cross_entropy
from fastnn.kernels.numba_shared import layer_params

NARROW_UNITS = 32  # every layer above the first at most this wide: narrow_above
SOFTMAX_ROWS = 4  # softmax_xent_t's scratch: max, sum, best class, the label's logit


@njit(**config.JIT)
def is_narrow(sizes):
    """Are all the layers above the first (sizes[1:]) at most NARROW_UNITS wide?"""
    for n in sizes[1:]:
        if n > NARROW_UNITS:
            return False
    return True


def narrow_flag(sizes, dtype):
    """(narrow, wide), what the kernels take to run the layers above the first
    transposed or row-major: (an empty array, None) for a net whose layers above the
    first are narrow (is_narrow), else (None, an empty array). Types, not values: a
    kernel guards each path with ``if narrow is not None`` or ``if wide is not None``,
    and Numba drops a branch only where the argument it tests is None (an array
    argument compiles the branch; a runtime test compiled both paths, 20 -> 24 s cold
    for 784-10-10)."""
    flag = np.zeros(0, dtype)
    return (flag, None) if is_narrow(np.asarray(sizes, np.int64)) else (None, flag)


@njit(**config.JIT)
def scratch_rows(sizes):
    """Rows (of a tile's samples each) of scratch a tile of a net of these layer sizes
    needs: narrow_above's (the transposed activations and deltas of every layer from the
    first's output on, and the softmax's), or the row-major softmax's."""
    k = sizes[sizes.shape[0] - 1]
    if is_narrow(sizes):
        return 2 * (sizes[1:].sum()) + SOFTMAX_ROWS
    return k + SOFTMAX_ROWS


@njit(**config.JIT_EXACT_LEAF)
def softmax_xent_t(E, ns, batches, first, inv_m, Dt, stats_row, aux):
    # E: (k, >= ns) the logits of order positions first..first+ns, a row per class
    # (overwritten); aux: (SOFTMAX_ROWS, >= ns) scratch -> Dt: (k, >= ns) (P - Y) / m, a
    # row per class (may be E itself); adds their loss sum and hits to stats_row: (2,).
    # numba_shared.softmax_xent_row's steps, in its order for each sample (the same
    # bits), with the samples in the vector lanes (784-10-10: 31 ns a sample against 64
    # a row at a time). Exact arithmetic: config.JIT_EXACT.
    k = E.shape[0]
    mx, tot, best, zy = aux[0], aux[1], aux[2], aux[3]  # best: a float, exact
    for s in range(ns):
        mx[s] = E[0, s]
        best[s] = 0
        zy[s] = E[batches.labels[batches.order[first + s]], s]
    for c in range(1, k):
        e = E[c]
        for s in range(ns):
            if e[s] > mx[s]:
                mx[s] = e[s]
                best[s] = c
    zero = E.dtype.type(0)
    for s in range(ns):
        tot[s] = zero
    for c in range(k):
        e = E[c]
        for s in range(ns):
            e[s] = exp_nonpositive(e[s] - mx[s])
            tot[s] += e[s]
    for s in range(ns):
        y = batches.labels[batches.order[first + s]]
        stats_row[0] += cross_entropy(np.log(tot[s]), zy[s], mx[s])
        stats_row[1] += best[s] == y
        tot[s] = inv_m / tot[s]
    for c in range(k):
        e, d = E[c], Dt[c]
        for s in range(ns):
            d[s] = e[s] * tot[s]
    for s in range(ns):
        Dt[batches.labels[batches.order[first + s]], s] -= inv_m


@njit(**config.JIT_LEAF)
def _add_products(out, W, transposed, src, ns):
    # out: (rows, >= ns) += W src (transposed: W^T src) over the first ns columns; src:
    # (n, >= ns); each sum in the order of src's rows, a fused multiply-add a term: a
    # vector of columns of four rows at a time in registers (madd_rows), the columns
    # past the last whole vector one by one
    rows = out.shape[0]
    n = W.shape[0] if transposed else W.shape[1]
    V = MADD_BYTES // out.itemsize
    whole = ns - ns % V
    four = rows - rows % 4
    # W[r + j, k] (rows of W) or W[k, r + j] (its columns)
    er, ec, dr, dc = (0, 1, 1, 0) if transposed else (1, 0, 0, 1)
    for c in range(0, whole, V):
        for r in range(0, four, 4):
            madd_rows(out, r, 4, c, W, r * er, r * ec, er, ec, dr, dc, src, 0, n)
        for r in range(four, rows):
            madd_rows(out, r, 1, c, W, r * er, r * ec, er, ec, dr, dc, src, 0, n)
    tail = ns - whole
    for r in range(rows):
        o = out[r, whole:]  # indexed from 0: from whole, wraparound checks stop vectorising
        for k in range(n):
            w, x = W[k, r] if transposed else W[r, k], src[k, whole:]
            for s in range(tail):
                o[s] += x[s] * w


@njit(**config.JIT_LEAF)
def forward_t(W, b, A, ns, Z, relu):
    # A: (n_in, >= ns) a layer's input, a row per input; W: (n_out, n_in); b: (n_out,)
    # -> Z: (n_out, >= ns) = W A + b (+ ReLU), each sum in i order
    n_out, n_in = W.shape
    zero = Z.dtype.type(0)
    for o in range(n_out):
        z = Z[o]
        bo = b[o]
        for s in range(ns):
            z[s] = bo
    _add_products(Z, W, False, A, ns)
    if relu:  # as numba_shared.relu_rows: NaN stays
        for o in range(n_out):
            z = Z[o]
            for s in range(ns):
                z[s] = zero if z[s] < zero else z[s]


@njit(**config.JIT_LEAF)
def backward_t(W, Dt, A, ns, gW, gb, accumulate, DA):
    # Dt: (n_out, >= ns) the deltas of a layer's output; A: (n_in, >= ns) its input
    # (after a ReLU); W: (n_out, n_in) -> gW: (n_out, n_in), gb: (n_out,) get (or,
    # accumulating, add) Dt A^T and Dt's row sums; DA: (n_in, >= ns) = (W^T Dt) * [A > 0]
    # (each sum in o order), unless DA has no rows (the first layer's input)
    n_out, n_in = W.shape
    zero = W.dtype.type(0)
    for o in range(n_out):
        d = Dt[o]
        for i in range(n_in):
            a = A[i]
            acc = zero
            for s in range(ns):
                acc += d[s] * a[s]
            gW[o, i] = gW[o, i] + acc if accumulate else acc
        acc = zero
        for s in range(ns):
            acc += d[s]
        gb[o] = gb[o] + acc if accumulate else acc
    for i in range(DA.shape[0]):
        da = DA[i]
        for s in range(ns):
            da[s] = zero
    _add_products(DA, W, True, Dt, ns)
    for i in range(DA.shape[0]):
        da, a = DA[i], A[i]
        for s in range(ns):  # as the row-major tile's: NaN passes
            da[s] = zero if a[s] <= zero else da[s]


@njit(**config.JIT_LEAF)
def narrow_above(net, A1, ns, batches, first, inv_m, stats_row, D1, grad, accumulate, T):
    # The layers above the first for order positions first..first+ns: A1: (>= ns, n1)
    # the first layer's output (after its ReLU when there are layers above; else the
    # logits); T: (scratch_rows, >= ns) scratch -> D1: (>= ns, n1) the deltas of the
    # first layer's output (before its ReLU); grad: (P,) laid out like net.theta gets (or,
    # accumulating, adds) the gradients of the layers above; stats_row += (loss sum,
    # hits). In T, the output of layer l - 1 (l = 1..L) takes rows from off(l) =
    # sizes[1] + ... + sizes[l - 1], its deltas the same rows from S = off(L + 1) on,
    # the softmax's scratch the last SOFTMAX_ROWS.
    sizes = net.sizes
    L = sizes.shape[0] - 1
    S = sizes[1:].sum()
    n1 = sizes[1]
    for i in range(n1):
        t = T[i]
        for s in range(ns):
            t[s] = A1[s, i]
    off = 0
    for layer in range(1, L):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        W, b = layer_params(net.theta, net, layer)
        forward_t(W, b, T[off: off + n_in], ns, T[off + n_in: off + n_in + n_out],
                  layer < L - 1)
        off += n_in
    k = sizes[L]  # the logits' rows: off .. off + k; their deltas: S + off ..
    softmax_xent_t(T[off: off + k], ns, batches, first, inv_m, T[S + off: S + off + k],
                   stats_row, T[2 * S: 2 * S + SOFTMAX_ROWS])
    for layer in range(L - 1, 0, -1):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        off -= n_in
        W = layer_params(net.theta, net, layer)[0]
        gW, gb = layer_params(grad, net, layer)
        backward_t(W, T[S + off + n_in: S + off + n_in + n_out], T[off: off + n_in], ns, gW,
                   gb, accumulate, T[S + off: S + off + n_in])
    for s in range(ns):
        for i in range(n1):
            D1[s, i] = T[S + i, s]
