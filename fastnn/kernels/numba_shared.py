"""What both fused Numba epochs share: the batch gather and the update.

``gather_row`` scales one uint8 image into a float row, optionally shifted
by a few pixels (data augmentation). ``update_params`` applies every
optimizer rule of fastnn.optim to one flat parameter vector, summing the
per-thread gradient buffers in thread order on the way.
"""

import numpy as np
from numba import njit, prange

from fastnn import config

# Below this many parameters the update runs on one thread: a second
# fork/join per batch costs more than the loop itself.
PARALLEL_MIN = 65536


@njit(**config.JIT)
def _update_range(theta, gbuf, lo, hi, lr, kind, hyper, state, c1, c2):
    # theta: (P,) params; gbuf: (T, P) per-thread gradient sums; state: (S, P)
    # hyper: (momentum, beta1, beta2, eps, weight_decay); kind: 0 sgd, 1 momentum, 2 adam
    T = gbuf.shape[0]
    mu, b1, b2, eps, wd = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    one = theta.dtype.type(1)
    for p in range(lo, hi):
        g = gbuf[0, p]
        for t in range(1, T):
            g += gbuf[t, p]
        if wd != 0:
            g += wd * theta[p]  # L2 weight decay
        if kind == 0:
            theta[p] -= lr * g
        elif kind == 1:
            v = mu * state[0, p] + g
            state[0, p] = v
            theta[p] -= lr * v
        else:
            m = b1 * state[0, p] + (one - b1) * g
            v = b2 * state[1, p] + (one - b2) * g * g
            state[0, p] = m
            state[1, p] = v
            theta[p] -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


@njit(**config.JIT_PARALLEL)
def update_params(theta, gbuf, lr, kind, hyper, state, step):
    # theta: (P,) updated in place; gbuf: (T, P); state: (S, P); step: (1,) int64, += 1
    step[0] += 1
    dt = theta.dtype.type
    # Adam's bias corrections 1 - beta^t, in float64 from the dtype's beta
    c1 = dt(1.0 - np.float64(hyper[1]) ** step[0])
    c2 = dt(1.0 - np.float64(hyper[2]) ** step[0])
    P = theta.shape[0]
    if P < PARALLEL_MIN:
        _update_range(theta, gbuf, 0, P, lr, kind, hyper, state, c1, c2)
    else:
        blocks = 64
        for k in prange(blocks):
            _update_range(theta, gbuf, (P * k) // blocks, (P * (k + 1)) // blocks, lr, kind,
                          hyper, state, c1, c2)


@njit(**config.JIT)
def gather_row(images, j, shifts, s, scale, out):
    # images: (n, 784) uint8; shifts: (k, 2) int64 (dy, dx) per order position, or (0, 2)
    # out: (784,) <- images[j] * scale, moved down dy and right dx (zeros shifted in)
    row = images[j]
    if shifts.shape[0] == 0:
        for i in range(row.shape[0]):
            out[i] = row[i] * scale
        return
    dy, dx = shifts[s, 0], shifts[s, 1]
    zero = out.dtype.type(0)
    for r in range(28):
        sr = r - dy
        for c in range(28):
            sc = c - dx
            if 0 <= sr < 28 and 0 <= sc < 28:
                out[r * 28 + c] = row[sr * 28 + sc] * scale
            else:
                out[r * 28 + c] = zero
