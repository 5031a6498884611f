"""The "numpy-fast" peer: the strongest plain-NumPy training loop, not the readable one.

numpy_ref's equations and rounding, as a performance-minded NumPy user writes
them: the images converted to float once per data set ((60000, 784) float32 is
188 MB); each batch ``np.take`` into a buffer; every product one BLAS call into
an ``out=`` buffer (transposes as views); everything else in place, in buffers
allocated once per call for the largest batch, so a batch allocates only a few
(m,)-sized temporaries; each layer updated as soon as its gradient and the
delta it sends back (from its old weights) are known.
"""

import numpy as np

from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.peers import checked_order, per_data_set, warmup_run


def version():
    return np.__version__


def as_float(images, dtype):
    """numpy_ref.to_float(images, dtype), once per images array and dtype."""
    dtype = np.dtype(dtype)
    return per_data_set(images, dtype,
                        lambda: np.multiply(images, dtype.type(PIXEL_SCALE), dtype=dtype))


class _Buffers:
    """Work arrays for batches of up to ``rows`` samples; a batch of m uses the first m rows."""

    def __init__(self, params, rows):
        dt = params[0][0].dtype
        self.X = np.empty((rows, params[0][0].shape[1]), dt)  # the gathered batch
        self.acts = [np.empty((rows, W.shape[0]), dt) for W, _ in params]  # ReLU(Z), logits
        self.deltas = [np.empty((rows, W.shape[1]), dt) for W, _ in params[1:]]
        self.masks = [np.empty((rows, W.shape[1]), bool) for W, _ in params[1:]]
        self.dW = [np.empty_like(W) for W, _ in params]
        self.db = [np.empty_like(b) for _, b in params]


def _forward(params, X, buf):
    """-> the logits (m, 10); buf.acts[i][:m] holds hidden layer i's ReLU(Z)."""
    A = X
    for i, (W, b) in enumerate(params):
        A = np.matmul(A, W.T, out=buf.acts[i][: len(X)])  # Z = A W^T + b
        A += b
        if i < len(params) - 1:
            np.maximum(A, 0, out=A)
    return A


def _softmax(Z, y=None):
    """Z -> P in place; with labels y, returns the mean cross-entropy, numpy_ref's
    log sum exp(z - max) - (z_y - max)."""
    Z -= Z.max(axis=1, keepdims=True)  # exp never overflows
    picked = None if y is None else Z[np.arange(len(Z)), y]
    np.exp(Z, out=Z)
    total = Z.sum(axis=1, keepdims=True)
    Z /= total
    return None if y is None else float(np.mean(np.log(total[:, 0]) - picked))


def _backward(params, X, y, P, buf, lr=None):
    """P -> the gradients in buf.dW, buf.db (P becomes the last delta); with lr, each
    layer updated in place once its gradient and the delta it sends back are computed."""
    m = len(X)
    P[np.arange(m), y] -= 1
    P /= P.dtype.type(m)  # d = (P - Y) / m
    delta = P
    for i in reversed(range(len(params))):
        W, b = params[i]
        A = X if i == 0 else buf.acts[i - 1][:m]
        np.matmul(delta.T, A, out=buf.dW[i])  # dW = d^T A
        np.sum(delta, axis=0, out=buf.db[i])  # db = sum d
        if i > 0:  # d = (d W) * [Z > 0]
            delta = np.matmul(delta, W, out=buf.deltas[i - 1][:m])
            delta *= np.greater(A, 0, out=buf.masks[i - 1][:m])
        if lr is not None:  # W -= lr dW, rounded as numpy_ref.sgd_step rounds it
            buf.dW[i] *= lr
            W -= buf.dW[i]
            buf.db[i] *= lr
            b -= buf.db[i]


def forward(params, X):
    P = _forward(params, X, _Buffers(params, len(X)))
    _softmax(P)
    return P


def loss_and_grads(params, X, y):
    buf = _Buffers(params, len(X))
    P = _forward(params, X, buf)
    loss = _softmax(P, y)
    _backward(params, X, y, P, buf)
    return loss, list(zip(buf.dW, buf.db))


def train_epoch(params, images, labels, order, batch_size, lr):
    dt = params[0][0].dtype
    data = as_float(images, dt)
    order = checked_order(order, len(images))
    buf = _Buffers(params, min(batch_size, len(order)))
    lr = dt.type(lr)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        # mode="wrap": the indices are checked; "raise" would buffer the copy
        X = np.take(data, idx, axis=0, out=buf.X[: len(idx)], mode="wrap")
        y = labels[idx]
        P = _forward(params, X, buf)
        loss_sum += _softmax(P, y) * len(idx)
        correct += int(np.count_nonzero(P.argmax(axis=1) == y))
        _backward(params, X, y, P, buf, lr)
    return loss_sum / len(order), correct / len(order)


def predict(params, images, chunk=4096):
    """Chunk by chunk of the float copy (contiguous row slices: nothing gathered)."""
    data = as_float(images, params[0][0].dtype)
    out = np.empty(len(images), np.int64)
    buf = _Buffers(params, min(chunk, len(images)))
    for s in range(0, len(images), chunk):
        np.argmax(_forward(params, data[s : s + chunk], buf), axis=1, out=out[s : s + chunk])
    return out


def warmup(sizes, dtype, batch_size=None):
    return warmup_run(train_epoch, predict, sizes, dtype)
