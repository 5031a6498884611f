"""The fused epoch one sample at a time: the "numba:simple" backend's kernels.

The same computation as numba_tiles, written the straightforward way: each
sample runs forward and backward on its own as matrix-vector loops, adding
its gradient into its thread's buffer. Easy to read beside ``numpy_ref``,
and the baseline the tiled version is measured against: for wide layers it
re-reads every weight row once per sample, where the tiles reuse each row
across several samples. Takes (net, opt, batches, work, lr, nthreads): see
numba_epoch.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from fastnn import config, model
from fastnn.kernels.numba_shared import (
    argmax,
    gather_image,
    gather_row,
    layer_offsets,
    layer_params,
    softmax_xent_row,
    update_params,
)


class Work(NamedTuple):
    grad: np.ndarray  # (lanes, P) per-lane gradient sums
    buf: np.ndarray  # (T, 2 * sum sizes): one sample's activations, then its deltas
    stats: np.ndarray  # (lanes, 2) float64 per-lane loss sum and hits


def work(sizes, batch_size, nthreads, lanes, dtype):
    return Work(np.empty((lanes, model.n_params(sizes)), dtype),
                np.empty((nthreads, 2 * int(sum(sizes))), dtype),
                np.zeros((lanes, 2)))


@njit(**config.JIT)
def _forward_sample(net, a, aoff):
    # a: (sum sizes,) activations, layer l's at aoff[l], the input already in place;
    # leaves ReLU(Z) of every hidden layer and the last layer's logits in a
    n_layers = net.sizes.shape[0] - 1
    zero = net.theta.dtype.type(0)
    for layer in range(n_layers):
        W, b = layer_params(net.theta, net, layer)
        n_out, n_in = W.shape
        a_in = a[aoff[layer] : aoff[layer] + n_in]
        for o in range(n_out):
            w = W[o]
            s = b[o]
            for i in range(n_in):  # z[o] = W[o, :] . a_in + b[o]
                s += w[i] * a_in[i]
            if layer < n_layers - 1 and s < zero:
                s = zero  # hidden layers: A = ReLU(Z)
            a[aoff[layer + 1] + o] = s


@njit(**config.JIT)
def _backward_sample(net, a, d, aoff, g):
    # a: (sum sizes,) one sample's activations; d: (sum sizes,) its deltas, the last
    # layer's (P - Y) / m already at d[aoff[L]:]; g: (P,) += this sample's gradient
    n_layers = net.sizes.shape[0] - 1
    zero = net.theta.dtype.type(0)
    for layer in range(n_layers - 1, -1, -1):
        W, _ = layer_params(net.theta, net, layer)
        gW, gb = layer_params(g, net, layer)
        n_out, n_in = W.shape
        a_in = a[aoff[layer] : aoff[layer] + n_in]
        d_out = d[aoff[layer + 1] : aoff[layer + 1] + n_out]
        d_in = d[aoff[layer] : aoff[layer] + n_in]
        if layer > 0:
            d_in[:] = zero
        for o in range(n_out):
            do = d_out[o]
            gw = gW[o]
            for i in range(n_in):  # dW[o, :] += d[o] * a_in
                gw[i] += do * a_in[i]
            gb[o] += do  # db[o] += d[o]
            if layer > 0:
                w = W[o]
                for i in range(n_in):  # d_in += d[o] * W[o, :]
                    d_in[i] += do * w[i]
        if layer > 0:
            for i in range(n_in):  # d_in *= [Z > 0]
                if a_in[i] <= zero:
                    d_in[i] = zero


@njit(**config.JIT_PARALLEL)
def train_epoch_simple(net, opt, batches, work, lr, nthreads):
    # Each batch cut into batches.lanes contiguous lanes (see numba_shared.Batches);
    # thread t runs lanes t, t + nthreads, ..., one sample at a time, summing each
    # lane's gradient into its own work.grad row; update_params adds the rows up in
    # lane order and applies the optimizer.
    gbuf, scratch, stats = work
    lanes = batches.lanes
    k, batch_size = batches.order.shape[0], batches.batch_size
    n_layers = net.sizes.shape[0] - 1
    n_in0, n_cls = net.sizes[0], net.sizes[n_layers]
    aoff = layer_offsets(net.sizes)
    width = aoff[n_layers + 1]
    zero = net.theta.dtype.type(0)
    for start in range(0, k, batch_size):
        m = min(batch_size, k - start)
        inv_m = net.theta.dtype.type(1) / net.theta.dtype.type(m)
        for t in prange(nthreads):
            a, d = scratch[t, :width], scratch[t, width:]
            for lane in range(t, lanes, nthreads):
                g = gbuf[lane]
                g[:] = zero
                for s in range(start + (m * lane) // lanes, start + (m * (lane + 1)) // lanes):
                    gather_row(batches, s, a[:n_in0])
                    _forward_sample(net, a, aoff)
                    z = a[aoff[n_layers] : aoff[n_layers] + n_cls]
                    loss, hit = softmax_xent_row(z, batches.labels[batches.order[s]], inv_m,
                                                 d[aoff[n_layers] : aoff[n_layers] + n_cls])
                    stats[lane, 0] += loss
                    stats[lane, 1] += hit
                    _backward_sample(net, a, d, aoff, g)
        update_params(net.theta, gbuf, lr, opt)


def predict_work(sizes, nthreads, dtype, inked=False):  # one sample at a time: no ink
    return np.empty((nthreads, int(sum(sizes))), dtype)


@njit(**config.JIT_PARALLEL)
def predict_simple(net, images, scale, abuf, out):
    # images: (n, 784) uint8 -> out: (n,) int64 argmax of the logits
    # abuf: (T, sum sizes) per-thread activations (predict_work)
    T = abuf.shape[0]
    n = images.shape[0]
    n_layers = net.sizes.shape[0] - 1
    aoff = layer_offsets(net.sizes)
    for t in prange(T):
        a = abuf[t]
        for j in range((n * t) // T, (n * (t + 1)) // T):
            gather_image(images, j, scale, a[: net.sizes[0]])
            _forward_sample(net, a, aoff)
            out[j] = argmax(a[aoff[n_layers] :])
