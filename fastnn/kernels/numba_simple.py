"""The "numba-simple" backend: the fused epoch one sample at a time.

The same computation as the "numba" backend's tiled kernels, written the
straightforward way: each sample runs forward and backward on its own as
matrix-vector loops, adding its gradient into its thread's buffer. Easy to
read beside ``numpy_ref``, and the baseline the tiled version is measured
against: for wide layers it re-reads every weight row once per sample, where
the tiles reuse each row across several samples.

``forward``, ``activations``, ``loss_and_grads`` and ``sgd_step`` are the
numba backend's own per-layer kernels.
"""

import numba
import numpy as np
from numba import njit, prange

from fastnn import config
from fastnn.kernels.numba_loops import (  # noqa: F401  (the backend's public API)
    _softmax_row,
    activations,
    apply_update,
    forward,
    loss_and_grads,
    run_epoch,
    run_predict,
    sgd_step,
    warmup_module,
)
from fastnn.kernels.numba_shared import gather_row, layer_offsets, update_params


@njit(**config.JIT_EXACT)
def _xent(lse, zy, mx):
    # -log P[y] = lse - (z_y - max z), kept exact (see config.JIT_EXACT)
    return lse - (zy - mx)


@njit(**config.JIT)
def _forward_sample(theta, sizes, woff, boff, x, a, aoff):
    # theta: (P,) flat params; sizes: (L+1,); woff, boff: (L,) offsets into theta
    # x: (784,) input row; a: (sum sizes,) activations, layer l at aoff[l]
    # leaves ReLU(Z) of every hidden layer and the last layer's logits in a
    n_layers = sizes.shape[0] - 1
    zero = theta.dtype.type(0)
    for i in range(sizes[0]):
        a[i] = x[i]
    for layer in range(n_layers):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        a_in = a[aoff[layer] : aoff[layer] + n_in]
        for o in range(n_out):
            w = theta[woff[layer] + o * n_in : woff[layer] + (o + 1) * n_in]
            s = theta[boff[layer] + o]
            for i in range(n_in):  # z[o] = W[o, :] . a_in + b[o]
                s += w[i] * a_in[i]
            if layer < n_layers - 1 and s < zero:
                s = zero  # hidden layers: A = ReLU(Z)
            a[aoff[layer + 1] + o] = s


@njit(**config.JIT_PARALLEL)
def train_epoch_per_sample(theta, sizes, woff, boff, images, labels, order, batch_size, lr,
                           scale, gbuf, scratch, stats, kind, hyper, state, step, shifts, nthreads):
    # theta: (P,) flat params, updated in place; sizes: (L+1,); woff, boff: (L,)
    # images: (n, 784) uint8; labels: (n,) int64; order: (k,) int64 sample indices
    # gbuf: (T, P) per-thread grads; scratch: (T, 2 * sum sizes) activations, then deltas
    # stats: (T, 2) float64 per-thread loss sum and correct count
    # kind, hyper, state (S, P), step (1,): the optimizer, see numba_shared.update_params
    # shifts: (k, 2) int64 per-sample pixel shifts, or (0, 2) for none
    # nthreads: Numba's thread count = rows of gbuf and scratch
    T = nthreads
    k = order.shape[0]
    n_layers = sizes.shape[0] - 1
    n_in0, n_cls = sizes[0], sizes[n_layers]
    aoff = layer_offsets(sizes)
    width = aoff[n_layers + 1]
    zero = theta.dtype.type(0)
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        inv_m = theta.dtype.type(1) / theta.dtype.type(m)
        for t in prange(T):
            g, a, d = gbuf[t], scratch[t, :width], scratch[t, width:]
            g[:] = zero
            for s in range(start + (m * t) // T, start + (m * (t + 1)) // T):
                j = order[s]
                gather_row(images, j, shifts, s, scale, a[:n_in0])
                _forward_sample(theta, sizes, woff, boff, a, a, aoff)
                # softmax + cross-entropy on the logits, in place in a
                z = a[aoff[n_layers] : aoff[n_layers] + n_cls]
                yj = labels[j]
                best = 0
                for c in range(1, n_cls):
                    if z[c] > z[best]:
                        best = c
                zy = z[yj]
                lse, mx = _softmax_row(z, z)  # z now holds P
                stats[t, 0] += _xent(lse, zy, mx)
                stats[t, 1] += best == yj
                # d_last = (P - Y) / m, stored at d[aoff[L]:]
                dl = d[aoff[n_layers] : aoff[n_layers] + n_cls]
                for c in range(n_cls):
                    dl[c] = z[c] * inv_m
                dl[yj] -= inv_m
                for layer in range(n_layers - 1, -1, -1):
                    n_in, n_out = sizes[layer], sizes[layer + 1]
                    a_in = a[aoff[layer] : aoff[layer] + n_in]
                    d_out = d[aoff[layer + 1] : aoff[layer + 1] + n_out]
                    d_in = d[aoff[layer] : aoff[layer] + n_in]
                    if layer > 0:
                        d_in[:] = zero
                    for o in range(n_out):
                        do = d_out[o]
                        w0 = woff[layer] + o * n_in
                        gw = g[w0 : w0 + n_in]
                        for i in range(n_in):  # dW[o, :] += d[o] * a_in
                            gw[i] += do * a_in[i]
                        g[boff[layer] + o] += do  # db[o] += d[o]
                        if layer > 0:
                            w = theta[w0 : w0 + n_in]
                            for i in range(n_in):  # d_in += d[o] * W[o, :]
                                d_in[i] += do * w[i]
                    if layer > 0:
                        for i in range(n_in):  # d_in *= [Z > 0]
                            if a_in[i] <= zero:
                                d_in[i] = zero
        update_params(theta, gbuf, lr, kind, hyper, state, step)


@njit(**config.JIT_PARALLEL)
def predict_per_sample(theta, sizes, woff, boff, images, scale, abuf, out):
    # images: (n, 784) uint8 -> out: (n,) int64 argmax of the logits
    # abuf: (T, sum sizes) per-thread activations
    T = abuf.shape[0]
    n = images.shape[0]
    n_layers = sizes.shape[0] - 1
    aoff = layer_offsets(sizes)
    no_shifts = np.zeros((0, 2), np.int64)
    for t in prange(T):
        a = abuf[t]
        for j in range((n * t) // T, (n * (t + 1)) // T):
            gather_row(images, j, no_shifts, 0, scale, a[: sizes[0]])
            _forward_sample(theta, sizes, woff, boff, a, a, aoff)
            z = a[aoff[n_layers] :]
            best = 0
            for c in range(1, sizes[n_layers]):
                if z[c] > z[best]:
                    best = c
            out[j] = best


def _buffers(P, width, batch_size, dtype):
    T = numba.get_num_threads()  # one gradient buffer and scratch row per thread
    return np.empty((T, P), dtype), np.empty((T, 2 * width), dtype), np.zeros((T, 2))


def train_epoch(params, images, labels, order, batch_size, lr, opt=None, shifts=None):
    """Minibatch training over ``order``, updating params in place, one sample at a time."""
    return run_epoch(train_epoch_per_sample, _buffers, params, images, labels, order,
                     batch_size, lr, opt, shifts)


def predict(params, images):
    """images (n, 784) uint8 -> predicted labels (n,) int64."""
    return run_predict(predict_per_sample, 1, params, images)


def warmup(sizes, dtype):
    """Compile (or load from cache) train_epoch and predict; return the seconds it took."""
    import sys

    return warmup_module(sys.modules[__name__], sizes, dtype)
