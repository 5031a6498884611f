"""numpy_ref's equations as explicit Numba loops, one kernel per equation, same names.

Each kernel works on a whole batch, parallel over independent rows (or, for
the weight gradient, over weight rows, so no two threads write one value),
and writes into arrays its caller allocates. ``forward``,
``loss_and_grads``, ``activations`` and ``sgd_step`` chain them one call per
layer, so each equation can be read and tested on its own. They are the
numba backend's per-batch API; training runs the fused epochs instead
(numba_epoch). No np.dot/@ here: every product is a loop.
"""

import numpy as np
from numba import njit, prange

from fastnn import config
from fastnn.kernels import stale_cache

stale_cache.check()  # before any cached kernel is loaded

# ---------------------------------------------------------------- one kernel per equation


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
def relu_forward(Z, A):
    # Z, A: (m, n) (may be the same array);  A = ReLU(Z) = max(Z, 0)
    m, n = Z.shape
    zero = Z.dtype.type(0)
    for r in prange(m):
        for i in range(n):
            A[r, i] = Z[r, i] if Z[r, i] > zero else zero


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


@njit(**config.JIT_EXACT)
def cross_entropy(lse, zy, mx):
    # -log P[y] = log sum exp(z - max) - (z[y] - max), from lse = log sum exp(z - max):
    # finite for any finite logits. Exact (config.JIT_EXACT): reassociated into
    # (lse + max) - z[y], it cancels catastrophically for a confident sample.
    return lse - (zy - mx)


@njit(**config.JIT_EXACT_PARALLEL)
def softmax_xent_forward(Z, y, P, losses):
    # Z: (m, k) logits, y: (m,) int64 -> P: (m, k) probabilities, losses: (m,) -log P[y]
    m = Z.shape[0]
    for r in prange(m):
        lse, mx = _softmax_row(Z[r], P[r])
        losses[r] = cross_entropy(lse, Z[r, y[r]], mx)


@njit(**config.JIT_PARALLEL)
def softmax_xent_backward(P, y, dZ):
    # P: (m, k), y: (m,) -> dZ: (m, k)
    # backward of L = -(1/m) sum log P[y]:  d_last = (P - Y) / m
    m, k = P.shape
    inv_m = P.dtype.type(1) / P.dtype.type(m)
    for r in prange(m):
        for c in range(k):
            dZ[r, c] = P[r, c] * inv_m
        dZ[r, y[r]] -= inv_m


@njit(**config.JIT_PARALLEL)
def linear_backward(dZ, X, W, dW, db, dX, want_dX):
    # dZ: (m, n_out)  X: (m, n_in)  W: (n_out, n_in)
    # -> dW: (n_out, n_in), db: (n_out,), and dX: (m, n_in) when want_dX
    # backward of Z = X W^T + b:  dW = dZ^T X,  db = sum over rows of dZ,  dX = dZ W
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
def relu_backward(dA, A, dZ):
    # dA, A, dZ: (m, n) (dZ may be dA)
    # backward of A = ReLU(Z):  dZ = dA * [Z > 0]  ([Z > 0] == [A > 0])
    m, n = A.shape
    zero = A.dtype.type(0)
    for r in prange(m):
        for i in range(n):
            dZ[r, i] = dA[r, i] if A[r, i] > zero else zero


@njit(**config.JIT_PARALLEL)
def sgd_update(w, g, lr):
    # w, g: (n,) flat views of one parameter array and its gradient;  w <- w - lr g
    for i in prange(w.shape[0]):
        w[i] -= lr * g[i]


# ---------------------------------------------------------------- the network, layer by layer


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
    """X (m, 784) -> [A1, ..., A_{L-1}, Z_L]: every hidden layer's ReLU output, then the
    logits."""
    return _forward_all(params, _check_float(params, X))[1:]


def forward(params, X):
    """X (m, 784) -> P (m, 10) softmax probabilities."""
    Z = activations(params, X)[-1]
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
        linear_backward(delta, acts[i], W, dW, db, dX, i > 0)
        if i > 0:
            relu_backward(dX, acts[i], dX)
        grads[i] = (dW, db)
        delta = dX
    return float(losses.astype(np.float64).mean()), grads


def sgd_step(params, grads, lr):
    """W <- W - lr dW, b <- b - lr db, in place (one sgd_update per array)."""
    lr = params[0][0].dtype.type(lr)
    for (W, b), (dW, db) in zip(params, grads):
        sgd_update(W.reshape(-1), dW.reshape(-1), lr)
        sgd_update(b, db, lr)
