"""What both fused Numba epochs share: the batch gather and the update.

``gather_row`` scales one uint8 image into a float row, optionally shifted
by a few pixels (data augmentation). ``update_params`` applies every
optimizer rule of fastnn.optim to one flat parameter vector, summing the
per-thread gradient buffers in thread order on the way.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastnn import config

# Below this many parameters the update runs on the calling thread, outside
# any parallel region: waking the other threads costs more than the loop.
PARALLEL_MIN = 65536


@njit(**config.JIT)
def apply_rule(theta, g, lo, hi, lr, kind, hyper, state, t):
    # theta, g: (P,) params and their gradient; state: (S, P); elements [lo, hi) change
    # hyper: (momentum, beta1, beta2, eps, weight_decay); kind: 0 sgd, 1 momentum, 2 adam
    # t: this update's number (1-based), for Adam's bias correction
    # Each step is its own flat loop, so LLVM vectorises all of them.
    dt = theta.dtype.type
    w, g = theta[lo:hi], g[lo:hi]
    mu, b1, b2, eps, wd = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    if wd != 0:
        for p in range(hi - lo):
            g[p] += wd * w[p]  # L2 weight decay
    if kind == 0:
        for p in range(hi - lo):
            w[p] -= lr * g[p]
    elif kind == 1:
        v = state[0, lo:hi]
        for p in range(hi - lo):
            v[p] = mu * v[p] + g[p]
            w[p] -= lr * v[p]
    else:
        # Adam's bias corrections 1 - beta^t, in float64 from the dtype's beta
        c1 = dt(1.0 - np.float64(b1) ** t)
        c2 = dt(1.0 - np.float64(b2) ** t)
        m, v = state[0, lo:hi], state[1, lo:hi]
        one = dt(1)
        for p in range(hi - lo):
            m[p] = b1 * m[p] + (one - b1) * g[p]
            v[p] = b2 * v[p] + (one - b2) * g[p] * g[p]
            w[p] -= lr * (m[p] / c1) / (np.sqrt(v[p] / c2) + eps)


@njit(**config.JIT_PARALLEL)
def update_params(theta, gbuf, lr, kind, hyper, state, step):
    # theta: (P,) updated in place; gbuf: (T, P) per-thread gradient sums, added up in
    # thread order into row 0; state: (S, P); step: (1,) int64 updates so far, += 1
    step[0] += 1
    P = theta.shape[0]
    if P < PARALLEL_MIN:
        _sum_and_apply(theta, gbuf, 0, P, lr, kind, hyper, state, step[0])
        return
    blocks = 64
    for k in prange(blocks):
        _sum_and_apply(theta, gbuf, (P * k) // blocks, (P * (k + 1)) // blocks, lr, kind,
                       hyper, state, step[0])


@njit(**config.JIT)
def _sum_and_apply(theta, gbuf, lo, hi, lr, kind, hyper, state, t):
    # gbuf[0, lo:hi] += gbuf[1:, lo:hi] in row order, then the update rule on [lo, hi)
    g = gbuf[0, lo:hi]
    for row in range(1, gbuf.shape[0]):
        gt = gbuf[row, lo:hi]
        for p in range(hi - lo):
            g[p] += gt[p]
    apply_rule(theta, gbuf[0], lo, hi, lr, kind, hyper, state, t)


@intrinsic
def prefetch(typingctx, arr, i):
    """prefetch(arr, i): ask the CPU to start loading arr[i]'s cache line (1-D arr)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, i), codegen


if numba.config.DISABLE_JIT:  # plain Python (the nojit test session): nothing to hint

    def prefetch(arr, i):  # noqa: F811
        pass


@njit(**config.JIT)
def prefetch_samples(images, labels, order, lo, hi):
    # images: (n, 784) uint8; labels: (n,) int64; start loading every cache line of
    # images[order[lo:hi]] and their labels. A random training sample is in no cache:
    # fetched on demand, its 13 image lines and its label's line cost about as much
    # as the sample's whole forward and backward pass.
    for s in range(lo, hi):
        j = order[s]
        row = images[j]
        for i in range(0, row.shape[0], 64):
            prefetch(row, i)
        prefetch(row, row.shape[0] - 1)
        prefetch(labels, j)


@njit(**config.JIT)
def layer_offsets(sizes):
    # sizes: (L+1,) -> aoff: (L+2,) with aoff[l] = sizes[0] + ... + sizes[l-1], where
    # layer l's activations start in a row of sum(sizes) values
    aoff = np.zeros(sizes.shape[0] + 1, np.int64)
    for layer in range(sizes.shape[0]):
        aoff[layer + 1] = aoff[layer] + sizes[layer]
    return aoff


@njit(**config.JIT)
def gather_row(images, j, shifts, s, scale, out):
    # images: (n, 784) uint8; shifts: (k, 2) int64 (dy, dx) per order position, or (0, 2)
    # out: (784,) <- images[j] * scale, moved down dy and right dx (zeros shifted in)
    row = images[j]
    dt = out.dtype.type  # uint8 * float32 would promote to float64: convert first
    if shifts.shape[0] == 0:
        for i in range(row.shape[0]):
            out[i] = dt(row[i]) * scale
        return
    dy, dx = shifts[s, 0], shifts[s, 1]
    zero = out.dtype.type(0)
    for r in range(28):
        sr = r - dy
        for c in range(28):
            sc = c - dx
            if 0 <= sr < 28 and 0 <= sc < 28:
                out[r * 28 + c] = dt(row[sr * 28 + sc]) * scale
            else:
                out[r * 28 + c] = zero
