"""The "numpy-fast" peer: the strongest plain-NumPy training loop, not the readable one.

What a performance-minded NumPy user writes for this net, with numpy_ref's
semantics (same equations, same order of rounding where it matters):

* the images are converted to the params' dtype and scaled to [0, 1] once
  per data set, not per batch: ``as_float`` caches the converted copy per
  images array (keyed by identity, see fastnn.peers._data; (60000, 784)
  float32 is 188 MB), and each batch is a ``np.take`` of rows into a
  preallocated buffer;
* every product is one BLAS call (``np.matmul`` into a preallocated
  ``out=`` buffer, transposes passed as views, never copied);
* activations, softmax, deltas and updates are computed in place in
  buffers allocated once per call (sized for the largest batch; the last,
  shorter batch uses their first rows), so a batch allocates only a few
  (m,)-sized temporaries;
* each layer is updated as soon as its gradient and the delta it sends
  back (computed from its weights before the update) are known.

No per-sample Python loop; the Python loop is over batches and layers.
"""

from __future__ import annotations

import time

import numpy as np

from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.peers._data import PerArray, checked_order

_floats = PerArray()  # images array -> its float copy, per dtype


def version() -> str:
    return np.__version__


def as_float(images, dtype):
    """images (n, 784) uint8 -> (n, 784) dtype in [0, 1]: numpy_ref.to_float's values,
    computed once per images array and dtype (cached while the array lives)."""
    dtype = np.dtype(dtype)

    def convert():
        out = np.empty(images.shape, dtype)
        return np.multiply(images, dtype.type(PIXEL_SCALE), out=out, dtype=dtype)

    return _floats.get(images, dtype, convert)


class _Buffers:
    """Work arrays for batches of up to ``rows`` samples; ``view(m)`` uses the first m rows."""

    def __init__(self, params, rows):
        dt = params[0][0].dtype
        self.X = np.empty((rows, params[0][0].shape[1]), dt)  # the gathered batch
        self.acts = [np.empty((rows, W.shape[0]), dt) for W, _ in params]  # Z, then ReLU(Z)
        self.deltas = [np.empty((rows, W.shape[1]), dt) for W, _ in params[1:]]
        self.masks = [np.empty((rows, W.shape[1]), bool) for W, _ in params[1:]]
        self.dW = [np.empty_like(W) for W, _ in params]
        self.db = [np.empty_like(b) for _, b in params]
        self.row_max = np.empty((rows, 1), dt)
        self.row_sum = np.empty((rows, 1), dt)
        self.rows = np.arange(rows)


def _forward(params, X, buf):
    """X (m, 784) -> the last layer's logits (m, 10), a view of buf.acts[-1];
    buf.acts[i] holds layer i's activation ReLU(Z) (the logits for the last)."""
    m, A = len(X), X
    for i, (W, b) in enumerate(params):
        Z = buf.acts[i][:m]
        np.matmul(A, W.T, out=Z)  # Z = A W^T + b
        Z += b
        if i < len(params) - 1:
            np.maximum(Z, 0, out=Z)  # A = ReLU(Z), in place
        A = Z
    return A


def _softmax_loss(Z, y, buf):
    """Z (m, 10) logits -> P in place; returns the mean cross-entropy (numpy_ref's formula)."""
    m = len(Z)
    row_max, row_sum = buf.row_max[:m], buf.row_sum[:m]
    np.max(Z, axis=1, keepdims=True, out=row_max)
    Z -= row_max  # shifted: exp never overflows
    picked = Z[buf.rows[:m], y]  # shifted[y], (m,)
    np.exp(Z, out=Z)
    np.sum(Z, axis=1, keepdims=True, out=row_sum)
    loss = float(np.mean(np.log(row_sum[:, 0]) - picked))  # log sum exp - z[y]
    Z /= row_sum
    return loss


def _backward(params, X, y, P, buf, lr=None):
    """P (m, 10) -> grads in buf.dW/buf.db, P overwritten by the last delta.

    lr given: each layer is updated in place (W -= lr dW) right after its
    gradient and the delta it sends back are computed, from its old weights.
    """
    m = len(X)
    P[buf.rows[:m], y] -= 1
    P /= P.dtype.type(m)  # d_last = (P - Y) / m
    delta = P
    for i in range(len(params) - 1, -1, -1):
        W, b = params[i]
        A_prev = X if i == 0 else buf.acts[i - 1][:m]
        np.matmul(delta.T, A_prev, out=buf.dW[i])  # dW = d^T A_prev
        np.sum(delta, axis=0, out=buf.db[i])  # db = sum d
        if i > 0:
            back, mask = buf.deltas[i - 1][:m], buf.masks[i - 1][:m]
            np.matmul(delta, W, out=back)  # d_prev = (d W) * [Z_prev > 0]
            np.greater(A_prev, 0, out=mask)
            np.multiply(back, mask, out=back)
            delta = back
        if lr is not None:
            buf.dW[i] *= lr  # W -= lr dW, as numpy_ref.sgd_step rounds it
            W -= buf.dW[i]
            buf.db[i] *= lr
            b -= buf.db[i]


def forward(params, X):
    """X (m, 784) float -> softmax probabilities P (m, 10)."""
    buf = _Buffers(params, len(X))
    Z = _forward(params, X, buf)
    np.max(Z, axis=1, keepdims=True, out=buf.row_max)
    Z -= buf.row_max
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z.copy()


def loss_and_grads(params, X, y):
    """X (m, 784) float, y (m,) int64 -> (mean cross-entropy, [(dW, db), ...])."""
    buf = _Buffers(params, len(X))
    P = _forward(params, X, buf)
    loss = _softmax_loss(P, y, buf)
    _backward(params, X, y, P, buf)
    return loss, [(dW.copy(), db.copy()) for dW, db in zip(buf.dW, buf.db)]


def train_epoch(params, images, labels, order, batch_size, lr):
    """Plain SGD over the batches of ``order``, params updated in place (numpy_ref's
    contract); returns (mean loss, accuracy), each batch measured before its update."""
    dt = params[0][0].dtype
    data = as_float(images, dt)  # (n, 784), converted once per data set
    order = checked_order(order, len(images))
    buf = _Buffers(params, min(batch_size, len(order)))
    lr = dt.type(lr)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        m = len(idx)
        # mode="wrap": indices already checked; "raise" would buffer the copy
        X = np.take(data, idx, axis=0, out=buf.X[:m], mode="wrap")
        y = labels[idx]
        P = _forward(params, X, buf)
        loss_sum += _softmax_loss(P, y, buf) * m
        correct += int(np.count_nonzero(P.argmax(axis=1) == y))
        _backward(params, X, y, P, buf, lr)
    return loss_sum / len(order), correct / len(order)


def predict(params, images, chunk=4096):
    """images (n, 784) uint8 -> predicted labels (n,) int64, chunk by chunk of the
    cached float copy (contiguous row slices: nothing gathered)."""
    data = as_float(images, params[0][0].dtype)
    out = np.empty(len(images), np.int64)
    buf = _Buffers(params, min(chunk, len(images)))
    for start in range(0, len(images), chunk):
        X = data[start : start + chunk]
        np.argmax(_forward(params, X, buf), axis=1, out=out[start : start + len(X)])
    return out


def warmup(sizes, dtype):
    """Nothing to compile: one tiny step and prediction (BLAS threads start). Seconds."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
