"""Register-blocked tile kernels: the fast fused epoch and inference of "numba".

Each thread walks its slice of the batch in tiles of ``TILE`` samples. For
one tile, every layer is a small matrix product written as loops that keep
several accumulators in registers: the forward pass computes 4 samples x 2
units per sweep over the input (each loaded value feeds several
multiply-adds), the weight gradient updates 4 rows of dW from 4 samples per
sweep. Weight rows are then read once per tile instead of once per sample,
which is what makes wide layers fast (compare ``numba_simple``).

Tails (fewer than 4 samples or units left) clamp their indices to the last
valid one: the duplicate recomputes and rewrites an identical value in the
forward pass, and carries a zero coefficient in the gradient sums.
"""

import numpy as np
from numba import njit, prange

from fastnn import config
from fastnn.kernels.numba_shared import gather_row, update_params

TILE = 32  # samples per tile: a tile's activations stay in L2 while a layer runs


@njit(**config.JIT)
def _tile_forward(A, ns, W, b, Z, relu):
    # A: (TILE, n_in) rows [0, ns) valid; W: (n_out, n_in); b: (n_out,) -> Z: (TILE, n_out)
    # Z = A W^T + b (+ ReLU), 4 samples x 2 units per sweep over n_in
    n_out, n_in = W.shape
    zero = W.dtype.type(0)
    for o in range(0, n_out, 2):
        o1 = min(o + 1, n_out - 1)
        w0, w1 = W[o], W[o1]
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = zero
            for i in range(n_in):
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
            b0, b1 = b[o], b[o1]
            Z[s, o], Z[s, o1] = c00 + b0, c01 + b1
            Z[s1, o], Z[s1, o1] = c10 + b0, c11 + b1
            Z[s2, o], Z[s2, o1] = c20 + b0, c21 + b1
            Z[s3, o], Z[s3, o1] = c30 + b0, c31 + b1
    if relu:  # A = ReLU(Z), in place
        for s in range(ns):
            for o in range(n_out):
                if Z[s, o] < zero:
                    Z[s, o] = zero


@njit(**config.JIT)
def _column4(D, s, o, ns):
    # D[s:s+4, o] as four scalars; rows >= ns give 0, so a clamped duplicate
    # sample adds nothing to the gradient sums
    zero = D.dtype.type(0)
    return (D[s, o], D[s + 1, o] if s + 1 < ns else zero,
            D[s + 2, o] if s + 2 < ns else zero, D[s + 3, o] if s + 3 < ns else zero)


@njit(**config.JIT)
def _tile_grad_w(D, A, ns, gW, gb):
    # D: (TILE, n_out) deltas; A: (TILE, n_in) layer input; rows [0, ns) valid
    # gW: (n_out, n_in) += D^T A;  gb: (n_out,) += sum_s D
    # 4 units x 4 samples per sweep over n_in. Units are not clamped like
    # samples: two aliased rows of gW would stop LLVM vectorising the sweep,
    # so the last n_out % 4 units take a one-row loop instead.
    n_out, n_in = gW.shape
    zero = gW.dtype.type(0)
    n_quads = n_out - n_out % 4
    for o in range(0, n_quads, 4):  # units outer: 4 rows of gW stay in L1 for the tile
        g0, g1, g2, g3 = gW[o], gW[o + 1], gW[o + 2], gW[o + 3]
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            d00, d10, d20, d30 = _column4(D, s, o, ns)
            d01, d11, d21, d31 = _column4(D, s, o + 1, ns)
            d02, d12, d22, d32 = _column4(D, s, o + 2, ns)
            d03, d13, d23, d33 = _column4(D, s, o + 3, ns)
            for i in range(n_in):
                x0, x1, x2, x3 = a0[i], a1[i], a2[i], a3[i]
                g0[i] += d00 * x0 + d10 * x1 + d20 * x2 + d30 * x3
                g1[i] += d01 * x0 + d11 * x1 + d21 * x2 + d31 * x3
                g2[i] += d02 * x0 + d12 * x1 + d22 * x2 + d32 * x3
                g3[i] += d03 * x0 + d13 * x1 + d23 * x2 + d33 * x3
    for o in range(n_quads, n_out):
        g0 = gW[o]
        for s in range(0, ns, 4):
            s1, s2, s3 = min(s + 1, ns - 1), min(s + 2, ns - 1), min(s + 3, ns - 1)
            a0, a1, a2, a3 = A[s], A[s1], A[s2], A[s3]
            d00, d10, d20, d30 = _column4(D, s, o, ns)
            for i in range(n_in):
                g0[i] += d00 * a0[i] + d10 * a1[i] + d20 * a2[i] + d30 * a3[i]
    for o in range(n_out):
        acc = zero
        for s in range(ns):
            acc += D[s, o]
        gb[o] += acc


@njit(**config.JIT)
def _tile_grad_input(D, W, A, ns, DA):
    # D: (TILE, n_out); W: (n_out, n_in); A: (TILE, n_in) post-ReLU input
    # -> DA: (TILE, n_in) = (D W) * [A > 0]
    n_out, n_in = W.shape
    zero = W.dtype.type(0)
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


@njit(**config.JIT_EXACT)
def _softmax_xent_tile(Z, ns, labels, order, first, inv_m, D, stats_row):
    # Z: (TILE, k) logits -> D: (TILE, k) = (P - Y) / m; adds loss and hits to stats_row
    k = Z.shape[1]
    for s in range(ns):
        z = Z[s]
        y = labels[order[first + s]]
        mx = z[0]
        best = 0
        for c in range(1, k):
            if z[c] > mx:
                mx = z[c]
                best = c
        tot = z.dtype.type(0)
        for c in range(k):
            e = np.exp(z[c] - mx)
            D[s, c] = e
            tot += e
        inv = inv_m / tot
        for c in range(k):
            D[s, c] *= inv
        D[s, y] -= inv_m
        stats_row[0] += np.log(tot) - (z[y] - mx)
        stats_row[1] += best == y


@njit(**config.JIT_PARALLEL)
def train_epoch_tiled(theta, sizes, woff, boff, images, labels, order, batch_size, lr, scale,
                      gbuf, tbuf, stats, kind, hyper, state, step, shifts):
    # theta: (P,) flat params; sizes: (L+1,); woff, boff: (L,); images: (n, 784) uint8
    # labels: (n,) int64; order: (k,) int64; gbuf: (T, P) per-thread grads
    # tbuf: (T, 2 * TILE * sum sizes) per-thread tile activations and deltas
    # stats: (T, 2) float64 loss sum and correct count
    # kind, hyper, state (S, P), step (1,): the optimizer, see numba_shared.update_params
    # shifts: (k, 2) int64 per-sample pixel shifts, or (0, 2) for none
    T = gbuf.shape[0]
    k = order.shape[0]
    L = sizes.shape[0] - 1
    width = 0
    for layer in range(L + 1):
        width += sizes[layer]
    zero = theta.dtype.type(0)
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        inv_m = theta.dtype.type(1) / theta.dtype.type(m)
        for t in prange(T):
            g = gbuf[t]
            g[:] = zero
            buf = tbuf[t]
            hi = start + (m * (t + 1)) // T
            for first in range(start + (m * t) // T, hi, TILE):
                ns = min(TILE, hi - first)
                # first half of buf: each layer's (TILE, width) activations, in order;
                # second half: the deltas, laid out the same way
                X = buf[: TILE * sizes[0]].reshape((TILE, sizes[0]))
                for s in range(ns):
                    gather_row(images, order[first + s], shifts, first + s, scale, X[s])
                pos = 0
                for layer in range(L):
                    n_in, n_out = sizes[layer], sizes[layer + 1]
                    A = buf[pos : pos + TILE * n_in].reshape((TILE, n_in))
                    Z = buf[pos + TILE * n_in : pos + TILE * (n_in + n_out)]
                    Z = Z.reshape((TILE, n_out))
                    W = theta[woff[layer] : woff[layer] + n_out * n_in].reshape((n_out, n_in))
                    b = theta[boff[layer] : boff[layer] + n_out]
                    _tile_forward(A, ns, W, b, Z, layer < L - 1)
                    pos += TILE * n_in
                # pos now points at the logits; deltas live in the second half of buf
                dpos = TILE * width + pos
                n_cls = sizes[L]
                Zl = buf[pos : pos + TILE * n_cls].reshape((TILE, n_cls))
                Dl = buf[dpos : dpos + TILE * n_cls].reshape((TILE, n_cls))
                _softmax_xent_tile(Zl, ns, labels, order, first, inv_m, Dl, stats[t])
                for layer in range(L - 1, -1, -1):
                    n_in, n_out = sizes[layer], sizes[layer + 1]
                    pos -= TILE * n_in
                    dpos -= TILE * n_in
                    A = buf[pos : pos + TILE * n_in].reshape((TILE, n_in))
                    D = buf[dpos + TILE * n_in : dpos + TILE * (n_in + n_out)]
                    D = D.reshape((TILE, n_out))
                    gW = g[woff[layer] : woff[layer] + n_out * n_in].reshape((n_out, n_in))
                    _tile_grad_w(D, A, ns, gW, g[boff[layer] : boff[layer] + n_out])
                    if layer > 0:
                        W = theta[woff[layer] : woff[layer] + n_out * n_in].reshape((n_out, n_in))
                        DA = buf[dpos : dpos + TILE * n_in].reshape((TILE, n_in))
                        _tile_grad_input(D, W, A, ns, DA)
        update_params(theta, gbuf, lr, kind, hyper, state, step)


@njit(**config.JIT_PARALLEL)
def predict_tiled(theta, sizes, woff, boff, images, scale, tbuf, out):
    # images: (n, 784) uint8 -> out: (n,) int64 argmax of the logits
    # tbuf: (T, TILE * sum sizes) per-thread tile activations
    T = tbuf.shape[0]
    n = images.shape[0]
    L = sizes.shape[0] - 1
    for t in prange(T):
        buf = tbuf[t]
        hi = (n * (t + 1)) // T
        for first in range((n * t) // T, hi, TILE):
            ns = min(TILE, hi - first)
            X = buf[: TILE * sizes[0]].reshape((TILE, sizes[0]))
            for s in range(ns):
                for i in range(sizes[0]):
                    X[s, i] = images[first + s, i] * scale
            pos = 0
            for layer in range(L):
                n_in, n_out = sizes[layer], sizes[layer + 1]
                A = buf[pos : pos + TILE * n_in].reshape((TILE, n_in))
                Z = buf[pos + TILE * n_in : pos + TILE * (n_in + n_out)].reshape((TILE, n_out))
                W = theta[woff[layer] : woff[layer] + n_out * n_in].reshape((n_out, n_in))
                _tile_forward(A, ns, W, theta[boff[layer] : boff[layer] + n_out], Z, layer < L - 1)
                pos += TILE * n_in
            for s in range(ns):
                z = buf[pos + s * sizes[L] : pos + (s + 1) * sizes[L]]
                best = 0
                for c in range(1, sizes[L]):
                    if z[c] > z[best]:
                        best = c
                out[first + s] = best
