"""The "numba" backend: the reference network as explicit Numba-jitted loops.

Two layers of code, both checked against ``numpy_ref`` by the agreement tests:

* per-layer kernels (``linear_forward``/``linear_backward``, ``relu_*``,
  ``softmax_xent_*``, ``sgd_update``) over a whole batch, parallel over
  independent rows. ``forward`` and ``loss_and_grads`` are built from them, one
  call per layer, so each equation can be read and tested on its own.
* ``train_epoch`` and ``predict`` run one compiled call for a whole epoch (or
  data set): the register-blocked tile kernels of ``numba_tiles``. The
  straightforward one-sample-at-a-time version of the same fused epoch is
  the "numba-simple" backend (``numba_simple``).

The fused kernels work on one flat parameter vector ``theta`` (each layer's W
row-major, then its b): per-thread gradient buffers and the update become
plain loops over one array, whatever the depth of the net. When a batch is
cut into one contiguous slice of samples per thread (the "samples" strategy
and numba-simple), every thread sums its slice's gradients into its own row
of ``gbuf`` and the rows are then added in thread order, so the result
depends on the thread count (at rounding level), never on scheduling.

No np.dot/@ here: every product is a loop.
"""

import contextlib
import time

import numba
import numpy as np
from numba import njit, prange

from fastnn import config
from fastnn.kernels import numba_tiles
from fastnn.kernels.numba_shared import update_params
from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.model import init_params, sizes_of
from fastnn.optim import Optimizer

# ---------------------------------------------------------------- per layer


@njit(**config.JIT_PARALLEL)
def linear_forward(X, W, b, Z):
    # X: (m, n_in)  W: (n_out, n_in)  b: (n_out,)  ->  Z: (m, n_out)
    # Z = X W^T + b
    m, n_in = X.shape
    n_out = W.shape[0]
    for r in prange(m):
        for o in range(n_out):
            s = b[o]
            for i in range(n_in):
                s += X[r, i] * W[o, i]
            Z[r, o] = s


@njit(**config.JIT_PARALLEL)
def linear_backward(dZ, X, W, dX, dW, db, want_dX):
    # dZ: (m, n_out)  X: (m, n_in)  W: (n_out, n_in)
    # -> dW: (n_out, n_in), db: (n_out,), and dX: (m, n_in) when want_dX
    # backward of Z = X W^T + b:  dW = dZ^T X,  db = sum_r dZ,  dX = dZ W
    m, n_in = X.shape
    n_out = W.shape[0]
    zero = W.dtype.type(0)
    for o in prange(n_out):  # each thread owns whole rows of dW: no races
        sb = zero
        for i in range(n_in):
            dW[o, i] = zero
        for r in range(m):
            d = dZ[r, o]
            sb += d
            for i in range(n_in):
                dW[o, i] += d * X[r, i]
        db[o] = sb
    if want_dX:
        for r in prange(m):
            for i in range(n_in):
                dX[r, i] = zero
            for o in range(n_out):
                d = dZ[r, o]
                for i in range(n_in):
                    dX[r, i] += d * W[o, i]


@njit(**config.JIT_PARALLEL)
def relu_forward(Z, A):
    # Z, A: (m, n);  A = max(Z, 0)
    m, n = Z.shape
    zero = Z.dtype.type(0)
    for r in prange(m):
        for i in range(n):
            A[r, i] = Z[r, i] if Z[r, i] > zero else zero


@njit(**config.JIT_PARALLEL)
def relu_backward(dA, A, dZ):
    # dA, A, dZ: (m, n);  backward of A = max(Z, 0): dZ = dA * [Z > 0] ([Z > 0] == [A > 0])
    m, n = A.shape
    zero = A.dtype.type(0)
    for r in prange(m):
        for i in range(n):
            dZ[r, i] = dA[r, i] if A[r, i] > zero else zero


@njit(**config.JIT_EXACT)
def _softmax_row(z, p):
    # z, p: (k,); p = exp(z - max z) / sum; returns (log sum exp(z - max z), max z)
    k = z.shape[0]
    mx = z[0]
    for c in range(1, k):
        if z[c] > mx:
            mx = z[c]
    s = z.dtype.type(0)
    for c in range(k):
        e = np.exp(z[c] - mx)
        p[c] = e
        s += e
    inv = z.dtype.type(1) / s
    for c in range(k):
        p[c] *= inv
    return np.log(s), mx


@njit(**config.JIT_EXACT_PARALLEL)
def softmax_xent_forward(Z, y, P, losses):
    # Z: (m, k) logits, y: (m,) int64 -> P: (m, k) probabilities, losses: (m,) per sample
    # -log P[y] = log sum exp(z - max) - (z[y] - max): finite for any finite logits
    m = Z.shape[0]
    for r in prange(m):
        lse, mx = _softmax_row(Z[r], P[r])
        losses[r] = lse - (Z[r, y[r]] - mx)


@njit(**config.JIT_PARALLEL)
def softmax_xent_backward(P, y, dZ):
    # P: (m, k), y: (m,) -> dZ: (m, k);  dZ = (P - Y) / m
    m, k = P.shape
    inv_m = P.dtype.type(1) / P.dtype.type(m)
    for r in prange(m):
        for c in range(k):
            dZ[r, c] = P[r, c] * inv_m
        dZ[r, y[r]] -= inv_m


@njit(**config.JIT_PARALLEL)
def sgd_update(w, g, lr):
    # w, g: (n,) flat views of one parameter and its gradient;  w <- w - lr g
    for i in prange(w.shape[0]):
        w[i] -= lr * g[i]


# ---------------------------------------------------------------- public API (per layer)


def _check_float(params, X):
    dtype = params[0][0].dtype
    if X.dtype != dtype:
        raise TypeError(f"X is {X.dtype}, params are {dtype}: convert X first")
    return np.ascontiguousarray(X)


def _forward_all(params, X):
    acts = [X]  # [X, A1, ..., Z_last]
    for i, (W, b) in enumerate(params):
        Z = np.empty((X.shape[0], W.shape[0]), dtype=X.dtype)
        linear_forward(acts[-1], W, b, Z)
        if i < len(params) - 1:
            relu_forward(Z, Z)  # in place: backward only needs A = ReLU(Z)
        acts.append(Z)
    return acts


def activations(params, X):
    """X (m, 784) -> [A1, ..., A_{L-1}, Z_L]: each hidden layer's ReLU output, then the logits."""
    X = _check_float(params, X)
    return _forward_all(params, X)[1:]


def forward(params, X):
    """X (m, 784) -> P (m, 10) softmax probabilities."""
    X = _check_float(params, X)
    Z = _forward_all(params, X)[-1]
    P = np.empty_like(Z)
    softmax_xent_forward(Z, np.zeros(len(Z), np.int64), P, np.empty(len(Z), Z.dtype))
    return P


def loss_and_grads(params, X, y):
    """Mean cross-entropy over the batch and its gradients [(dW, db), ...]."""
    X = _check_float(params, X)
    y = np.ascontiguousarray(y, dtype=np.int64)
    acts = _forward_all(params, X)
    Z = acts[-1]
    P, losses = np.empty_like(Z), np.empty(len(Z), Z.dtype)
    softmax_xent_forward(Z, y, P, losses)
    delta = np.empty_like(P)
    softmax_xent_backward(P, y, delta)
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):
        W, b = params[i]
        dW, db, dX = np.empty_like(W), np.empty_like(b), np.empty_like(acts[i])
        linear_backward(delta, acts[i], W, dX, dW, db, i > 0)
        if i > 0:
            relu_backward(dX, acts[i], dX)
        grads[i] = (dW, db)
        delta = dX
    return float(losses.astype(np.float64).mean()), grads


def sgd_step(params, grads, lr):
    """W <- W - lr dW, b <- b - lr db, in place (per-layer kernel)."""
    lr = params[0][0].dtype.type(lr)
    for (W, b), (dW, db) in zip(params, grads):
        sgd_update(W.reshape(-1), dW.reshape(-1), lr)
        sgd_update(b, db, lr)


# ---------------------------------------------------------------- fused epoch and inference


def pack(params):
    """params -> (theta, sizes, woff, boff): one flat copy plus layer offsets."""
    sizes = np.array([params[0][0].shape[1]] + [W.shape[0] for W, _ in params], np.int64)
    woff, boff, pos = [], [], 0
    for W, b in params:
        woff.append(pos)
        boff.append(pos + W.size)
        pos += W.size + b.size
    theta = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params])
    return theta, sizes, np.array(woff, np.int64), np.array(boff, np.int64)


def unpack(theta, params, woff, boff):
    """Copy the flat theta back into the params' own arrays (in place)."""
    for (W, b), wo, bo in zip(params, woff, boff):
        W[...] = theta[wo : wo + W.size].reshape(W.shape)
        b[...] = theta[bo : bo + b.size]


def _check_images(images):
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 2:
        raise TypeError(f"images must be (n, 784) uint8, got {images.shape} {images.dtype}")
    return images


def _pack_state(opt, params, theta):
    """The optimizer's state arrays as (S, P) rows laid out like theta."""
    slots = opt.ensure_state(params)
    state = np.empty((len(slots), theta.size), theta.dtype)
    for row, slot in zip(state, slots):
        row[:] = pack(slot)[0]
    return state


def _check_shifts(shifts, order):
    if shifts is None:
        return np.zeros((0, 2), np.int64)
    shifts = np.ascontiguousarray(shifts, np.int64)
    if shifts.shape != (len(order), 2):
        raise ValueError(f"shifts must be (len(order), 2) = ({len(order)}, 2), "
                         f"got {shifts.shape}")
    return shifts


def run_epoch(fused, buffers, params, images, labels, order, batch_size, lr, opt=None,
              shifts=None):
    """Drive a fused epoch kernel.

    fused(theta, sizes, woff, boff, images, labels, order, batch_size, lr, scale,
    grad, scratch, stats, kind, hyper, state (S, P), step (1,), shifts (k, 2))
    updates theta and the optimizer state in place; ``buffers(P, width,
    batch_size, dtype)`` allocates its (grad, scratch, stats), stats being
    float64 rows whose column sums are the loss sum and the hits. Returns
    (mean loss, accuracy) over the samples seen, each measured before its
    batch's update, like numpy_ref.train_epoch.
    """
    images = _check_images(images)
    labels = np.ascontiguousarray(labels, np.int64)
    order = np.ascontiguousarray(order, np.int64)
    theta, sizes, woff, boff = pack(params)
    dtype = theta.dtype.type
    grad, scratch, stats = buffers(theta.size, int(sizes.sum()), int(batch_size), theta.dtype)
    opt = opt if opt is not None else Optimizer("sgd")
    state = _pack_state(opt, params, theta)
    step = np.array([opt.step], np.int64)
    fused(theta, sizes, woff, boff, images, labels, order, int(batch_size), dtype(lr),
          dtype(PIXEL_SCALE), grad, scratch, stats, opt.kind, opt.hyper(theta.dtype), state,
          step, _check_shifts(shifts, order), numba.get_num_threads())
    unpack(theta, params, woff, boff)
    for row, slot in zip(state, opt.state):
        unpack(row, slot, woff, boff)
    opt.step = int(step[0])
    k = len(order)
    loss_sum, hits = stats.sum(axis=0)
    return float(loss_sum / k), float(hits / k)


def run_predict(fused, rows, params, images):
    """Drive a fused inference kernel fused(theta, sizes, woff, boff, images, scale,
    scratch (T, rows * sum sizes), out (n,)); return the predicted labels."""
    images = _check_images(images)
    theta, sizes, woff, boff = pack(params)
    scratch = np.empty((numba.get_num_threads(), rows * int(sizes.sum())), theta.dtype)
    out = np.empty(len(images), np.int64)
    fused(theta, sizes, woff, boff, images, theta.dtype.type(PIXEL_SCALE), scratch, out)
    return out


def _tiled_buffers(P, width, batch_size, dtype):
    chunk = min(batch_size, numba_tiles.CHUNK)
    return (np.empty(P, dtype), np.empty(2 * chunk * width, dtype),
            np.zeros((numba_tiles.STATS_PAD * (chunk // 4 + 1) + 1, 2)))


def _split_buffers(P, width, batch_size, dtype):
    T = numba.get_num_threads()
    return (np.empty((T, P), dtype), np.empty((T, 2 * numba_tiles.TILE * width), dtype),
            np.zeros((numba_tiles.STATS_PAD * T, 2)))


def train_epoch(params, images, labels, order, batch_size, lr, opt=None, shifts=None):
    """Minibatch training over ``order``, updating params (and ``opt``) in place.

    The tiled kernels of ``numba_tiles``, split over samples (small nets) or
    over weight rows (large ones), as ``strategy`` picks; ``opt`` is a
    fastnn.optim.Optimizer (None = plain SGD); ``shifts`` (len(order), 2)
    moves each sample by (dy, dx) pixels.
    """
    if strategy(sizes_of(params), numba.get_num_threads()) == "samples":
        fused, buffers = numba_tiles.train_epoch_split, _split_buffers
    else:
        fused, buffers = numba_tiles.train_epoch_tiled, _tiled_buffers
    return run_epoch(fused, buffers, params, images, labels, order, batch_size, lr, opt, shifts)


# Per-thread gradient buffers up to this many floats in all (1 MiB of float32):
# below it, adding them up costs less than train_epoch_tiled's extra parallel
# regions and its reading of activations written by other cores (measured on
# 2 cores: "samples" faster at 784-10-10 and 784-32-10, equal at 784-128-10,
# slower at 784-800-10).
SPLIT_MAX_FLOATS = 1 << 18
STRATEGIES = ("samples", "rows")
_forced = None


def strategy(sizes, n_threads):
    """How train_epoch shares a batch between threads for a net of these layer
    sizes: "samples" (numba_tiles.train_epoch_split) or "rows"
    (numba_tiles.train_epoch_tiled)."""
    if _forced is not None:
        return _forced
    n_params = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    return "samples" if n_params * n_threads <= SPLIT_MAX_FLOATS else "rows"


@contextlib.contextmanager
def forced_strategy(name):
    """Within the block, train_epoch uses strategy ``name`` whatever the net's size
    (the agreement tests run both on every shape)."""
    global _forced
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def apply_update(params, grads, lr, opt):
    """One step of the optimizer ``opt`` given batch gradients, in place."""
    theta, _, woff, boff = pack(params)
    gbuf = pack(grads)[0][None, :]
    state = _pack_state(opt, params, theta)
    step = np.array([opt.step], np.int64)
    update_params(theta, gbuf, theta.dtype.type(lr), opt.kind, opt.hyper(theta.dtype), state,
                  step)
    unpack(theta, params, woff, boff)
    for row, slot in zip(state, opt.state):
        unpack(row, slot, woff, boff)
    opt.step = int(step[0])


def predict(params, images):
    """images (n, 784) uint8 -> predicted labels (n,) int64 (tiled fused kernel)."""
    return run_predict(numba_tiles.predict_tiled, numba_tiles.TILE, params, images)


def warmup_module(module, sizes, dtype):
    """Compile (or load from cache) what training uses; return the seconds it took."""
    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    labels = np.zeros(3, np.int64)
    module.train_epoch(params, images, labels, np.arange(3), 2, 0.0)
    module.predict(params, images)
    return time.perf_counter() - t0


def warmup(sizes, dtype):
    """Compile (or load from cache) train_epoch and predict; return the seconds it took.

    Only the train_epoch kernel that a net of these sizes will use is loaded.
    """
    import sys

    with forced_strategy(strategy(sizes, numba.get_num_threads())):
        return warmup_module(sys.modules[__name__], sizes, dtype)
