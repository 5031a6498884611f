"""What the fused Numba kernels (numba_tiles, numba_simple) share.

The argument groups they take (``FlatNet`` from fastnn.model, ``Batches``,
``OptState``), views into the flat vectors, the batch gather (uint8 image
-> scaled float row, optionally shifted by a few pixels or distorted by
numba_distort), the softmax and cross-entropy of one sample, and the
optimizer update of one flat parameter vector.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from fastnn import config
from fastnn.kernels.numba_distort import distort_row
from fastnn.kernels.numba_intrinsics import exp_nonpositive, prefetch
from fastnn.kernels.numba_layers import cross_entropy

# Below this many parameters the update runs on the calling thread, outside
# any parallel region: waking the other threads costs more than the loop.
PARALLEL_MIN = 65536


class Batches(NamedTuple):
    """The samples of an epoch and how they are cut into batches."""

    images: np.ndarray  # (n, 784) uint8
    labels: np.ndarray  # (n,) int64
    order: np.ndarray  # (k,) int64 sample indices; runs of batch_size form the batches
    shifts: np.ndarray  # (k, 2) int64 (dy, dx) per order position, or (0, 2) for none
    batch_size: int
    scale: float  # of the params' dtype: 1/255, uint8 -> [0, 1]
    # How many parts (lanes) a batch is cut into for the threads, each with its own
    # gradient sum, added up in lane order: fixed for a machine (its thread count), so
    # that results do not depend on how many threads actually run.
    lanes: int
    # The epoch's elastic and affine distortion: numba_distort.Distort's fields, flat
    # here because a parallel loop cannot take a tuple of arrays nested in a tuple
    key: np.uint64  # the epoch's key
    taps: np.ndarray  # (2R + 1,) Gaussian taps, params' dtype; (0,) = no distortion
    alpha: float  # of the params' dtype
    ranges: np.ndarray  # (3,) float64: largest rotation (radians), scale change, shear
    scratch: np.ndarray  # (T, n) params' dtype, a row per Numba thread (numba_distort)


class OptState(NamedTuple):
    """An optimizer as the kernels see it (fastnn.optim.Optimizer holds the same)."""

    kind: int  # 0 sgd, 1 momentum, 2 adam
    hyper: np.ndarray  # (momentum, beta1, beta2, eps, weight_decay), params' dtype
    state: np.ndarray  # (S, P): momentum, or Adam's m and v, laid out like theta
    step: np.ndarray  # (1,) int64 updates so far; each batch adds 1


# ---------------------------------------------------------------- views into flat vectors


@njit(**config.JIT)
def layer_offsets(sizes):
    # sizes: (L+1,) -> aoff: (L+2,) with aoff[l] = sizes[0] + ... + sizes[l-1], where
    # layer l's activations start in a row of sum(sizes) values
    aoff = np.zeros(sizes.shape[0] + 1, np.int64)
    for layer in range(sizes.shape[0]):
        aoff[layer + 1] = aoff[layer] + sizes[layer]
    return aoff


@njit(**config.JIT, inline="always")
def layer_params(vec, net, layer):
    # layer's W: (n_out, n_in) and b: (n_out,) as views into the flat vec, which is
    # laid out like net.theta (the params themselves, or a gradient)
    n_in, n_out = net.sizes[layer], net.sizes[layer + 1]
    w0, b0 = net.woff[layer], net.boff[layer]
    return vec[w0 : w0 + n_out * n_in].reshape((n_out, n_in)), vec[b0 : b0 + n_out]


# ---------------------------------------------------------------- the batch gather


@njit(**config.JIT)
def nonzero_bounds(row):
    # row: (n,) -> the smallest (lo, hi) out of which row is zero ((0, 0): all of it)
    lo, hi = 0, row.shape[0]
    while lo < hi and row[lo] == 0:
        lo += 1
    while hi > lo and row[hi - 1] == 0:
        hi -= 1
    return (lo, hi) if lo < hi else (0, 0)


@njit(**config.JIT)
def ink_bounds(row):
    # row: (n,) uint8 -> (lo, hi): row is zero outside [lo, hi) ((0, 0): all of it).
    # Scans from both ends 8 pixels (a uint64 word) at a time when n allows, so lo and
    # hi may lie up to 7 pixels wider than the ink: MNIST's blank rows above and below
    # the digit cost a few dozen words, where a float scan of the row cost as much as
    # a 784-10-10 sample's whole first layer product
    if row.shape[0] % 8 == 0:
        lo, hi = nonzero_bounds(row.view(np.uint64))
        return 8 * lo, 8 * hi
    return nonzero_bounds(row)


@njit(**config.JIT_LEAF)
def gather_row(batches, s, out):
    # out: (784,) <- the image of order position s, times scale, moved down dy and
    # right dx pixels (zeros shifted in) when batches carries shifts; resampled through
    # the distortion (which includes the shift) when batches carries one. Returns
    # (lo, hi): out is zero outside [lo, hi) (ink_bounds, nonzero_bounds)
    row = batches.images[batches.order[s]]
    scale = batches.scale
    dt = out.dtype.type  # uint8 * float32 would promote to float64: convert first
    if batches.taps.shape[0] > 0:
        distort_row(batches, s, out)
        return nonzero_bounds(out)
    if batches.shifts.shape[0] == 0:
        return gather_image(batches.images, batches.order[s], scale, out)
    dy, dx = batches.shifts[s, 0], batches.shifts[s, 1]
    zero = dt(0)
    for r in range(28):
        sr = r - dy
        for c in range(28):
            sc = c - dx
            if 0 <= sr < 28 and 0 <= sc < 28:
                out[r * 28 + c] = dt(row[sr * 28 + sc]) * scale
            else:
                out[r * 28 + c] = zero
    return nonzero_bounds(out)


@njit(**config.JIT_PARALLEL)
def gather_batch(batches, out):
    # out: (k, 784) <- every order position's row, as the fused epochs gather it
    for s in prange(out.shape[0]):
        gather_row(batches, s, out[s])


@njit(**config.JIT_LEAF)
def gather_image(images, j, scale, out):
    # out: (784,) <- images[j] * scale (inference: no order, no shifts); returns
    # ink_bounds of the image
    return scaled_row(images[j], scale, out)


@njit(**config.JIT_LEAF)
def scaled_row(row, scale, out):
    # row: (n,) uint8 -> out: (n,) row * scale; returns ink_bounds(row). A loop from 0
    # over its own arguments: over a slice indexed from lo, LLVM cannot tell that the
    # index is never negative, and its wraparound checks stop vectorisation (4x slower)
    dt = out.dtype.type
    for i in range(row.shape[0]):
        out[i] = dt(row[i]) * scale
    return ink_bounds(row)


@njit(**config.JIT_LEAF)
def prefetch_samples(batches, lo, hi):
    # start loading every cache line of the images and labels of order positions
    # [lo, hi). A random training sample is in no cache: fetched on demand, its 13
    # image lines and its label's line cost about as much as the sample's whole
    # forward and backward pass.
    for s in range(lo, hi):
        prefetch_image(batches, s, 0, batches.images.shape[1])


@njit(**config.JIT_LEAF)
def prefetch_image(batches, s, lo, hi):
    # start loading the lines of columns [lo, hi) of order position s's image, and its
    # label's line
    j = batches.order[s]
    row = batches.images[j]
    for i in range(lo, hi, 64):
        prefetch(row, i)
    prefetch(row, hi - 1)
    prefetch(batches.labels, j)


@njit(**config.JIT_LEAF)
def relu_rows(Z, ns):
    # Z: (>= ns, n) -> its first ns rows ReLU(Z), in place (a serial loop: the tile
    # kernels call it inside their own parallel loops; numba_layers.relu_forward is the
    # parallel one)
    zero = Z.dtype.type(0)
    for s in range(ns):
        for o in range(Z.shape[1]):
            if Z[s, o] < zero:
                Z[s, o] = zero


# ---------------------------------------------------------------- softmax and cross-entropy


@njit(**config.JIT)
def argmax(z):
    # z: (k,) -> the index of its largest value (the first, on ties)
    best = 0
    for c in range(1, z.shape[0]):
        if z[c] > z[best]:
            best = c
    return best


@njit(**config.JIT_EXACT)
def softmax_xent_row(z, y, inv_m, d):
    # z: (k,) one sample's logits, y its label -> d: (k,) its deltas (P - Y) / m;
    # returns (-log P[y], 1 if argmax z == y else 0)
    k = z.shape[0]
    best = argmax(z)
    mx = z[best]
    for c in range(k):  # no reduction in this loop: it vectorises
        d[c] = exp_nonpositive(z[c] - mx)
    tot = z.dtype.type(0)
    for c in range(k):
        tot += d[c]
    inv = inv_m / tot
    for c in range(k):
        d[c] *= inv
    loss = cross_entropy(np.log(tot), z[y], mx)
    d[y] -= inv_m
    return loss, best == y


# ---------------------------------------------------------------- the optimizer update


@njit(**config.JIT_LEAF)
def apply_rule(theta, g, lo, hi, lr, opt, t):
    # theta, g: (P,) params and their gradient; elements [lo, hi) change, and
    # opt.state's with them; t: this update's number (1-based), for Adam's bias correction
    # Each step is its own flat loop, so LLVM vectorises all of them.
    dt = theta.dtype.type
    w, g = theta[lo:hi], g[lo:hi]
    hyper = opt.hyper
    mu, b1, b2, eps, wd = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    if wd != 0:
        for p in range(hi - lo):
            g[p] += wd * w[p]  # L2 weight decay
    if opt.kind == 0:
        for p in range(hi - lo):
            w[p] -= lr * g[p]
    elif opt.kind == 1:
        v = opt.state[0, lo:hi]
        for p in range(hi - lo):
            v[p] = mu * v[p] + g[p]
            w[p] -= lr * v[p]
    else:
        # Adam's bias corrections 1 - beta^t, in float64 from the dtype's beta
        c1 = dt(1.0 - np.float64(b1) ** t)
        c2 = dt(1.0 - np.float64(b2) ** t)
        m, v = opt.state[0, lo:hi], opt.state[1, lo:hi]
        one = dt(1)
        for p in range(hi - lo):
            m[p] = b1 * m[p] + (one - b1) * g[p]
            v[p] = b2 * v[p] + (one - b2) * g[p] * g[p]
            w[p] -= lr * (m[p] / c1) / (np.sqrt(v[p] / c2) + eps)


@njit(**config.JIT_LEAF)
def sum_and_apply(theta, gbuf, lo, hi, lr, opt, t):
    # the update rule on [lo, hi) with the sum of gbuf's rows there, taken in row order
    # into row 0 (gbuf[0] is scratch afterwards). Plain SGD adds the last row within the
    # step instead, the sum unstored (the same bits): one write stream less, and on two
    # cores no writing into row 0's lines, which the other core filled and must fetch
    # back for its next batch
    g = gbuf[0, lo:hi]
    last = gbuf.shape[0] - 1
    fused = opt.kind == 0 and opt.hyper[4] == 0 and last > 0
    for row in range(1, last if fused else gbuf.shape[0]):
        gt = gbuf[row, lo:hi]
        for p in range(hi - lo):
            g[p] += gt[p]
    if fused:
        w, gl = theta[lo:hi], gbuf[last, lo:hi]
        for p in range(hi - lo):
            w[p] -= lr * (g[p] + gl[p])
        return
    apply_rule(theta, gbuf[0], lo, hi, lr, opt, t)


@njit(**config.JIT_PARALLEL)
def update_params(theta, gbuf, lr, opt):
    # theta: (P,) updated in place; gbuf: (lanes, P) per-lane gradient sums, added up
    # in lane order (sum_and_apply: scratch afterwards); opt.step += 1
    opt.step[0] += 1
    P = theta.shape[0]
    if P < PARALLEL_MIN:
        sum_and_apply(theta, gbuf, 0, P, lr, opt, opt.step[0])
        return
    blocks = 64
    for k in prange(blocks):
        sum_and_apply(theta, gbuf, (P * k) // blocks, (P * (k + 1)) // blocks, lr, opt,
                       opt.step[0])
