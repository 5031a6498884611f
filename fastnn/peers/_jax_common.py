"""What the two JAX peers share: the pure functions of the net, the data on the device.

The net is a pytree, the list of (W (out, in), b (out,)) pairs; its
functions are pure and jitted by the peers. ``sgd_step`` is one whole batch:
gather the uint8 rows, scale them, forward, mean cross-entropy
(``jax.nn.log_softmax``), backward (``jax.value_and_grad``) and the update
p - lr dp. ReLU is ``jax.nn.relu``, whose derivative at 0 is 0 like
numpy_ref's mask [Z > 0] (``jnp.maximum(Z, 0)`` would give 1/2 there).

Data: the images (uint8) and labels (int32) are put on the device once per
data set (fastnn.peers._data.PerArray, keyed by the arrays' identity); sample
indices are int32, JAX's default integer.

float64: JAX computes in float32 unless its x64 mode is on, and turning that
on for the whole process changes every other JAX user's defaults. So
``precision(dtype)`` enables x64 only for float64 calls, as a context
(``jax.enable_x64(True)``: thread-local, restored on exit); float32 calls run
in JAX's default mode, traced and compiled exactly as without it (jit keys
its cache on the x64 flag, so the two never share compiled code).

Compilation: jit compiles per input shape and dtype (and net structure):
the first call with new shapes compiles, later ones reuse the code.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.peers._data import PerArray, checked_order

_on_device = PerArray()  # images or labels array -> its device copy


def version() -> str:
    return jax.__version__


def precision(dtype):
    """Context for a call computing in ``dtype``: x64 on for float64 only (see above)."""
    if np.dtype(dtype) == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def device_images(images):
    """images (n, 784) uint8 on the device, once per data set."""
    return _on_device.get(images, "images", lambda: jax.device_put(images))


def device_data(images, labels):
    """(images (n, 784) uint8, labels (n,) int32) on the device, once per data set."""
    return device_images(images), _on_device.get(
        labels, "labels", lambda: jax.device_put(labels.astype(np.int32)))


def device_order(order, n):
    """order (k,) -> int32 NumPy indices, checked (a JAX gather clamps, never raises)."""
    return checked_order(order, n, np.int32)


def to_device(params):
    """params as a pytree of fresh device arrays (copies: donating them never touches
    the NumPy arrays)."""
    return [(jnp.array(W, copy=True), jnp.array(b, copy=True)) for W, b in params]


def store(device_params, params):
    """Copy device params back into the NumPy arrays, in place."""
    for (W, b), (dW, db) in zip(params, jax.device_get(device_params)):
        W[...] = dW
        b[...] = db


def scaled(U, dtype):
    """U (m, 784) uint8 -> float of dtype in [0, 1] (numpy_ref.to_float)."""
    return U.astype(dtype) * jnp.asarray(PIXEL_SCALE, dtype)


def logits(params, X):
    """X (m, 784) -> Z (m, 10)."""
    A = X
    for i, (W, b) in enumerate(params):
        A = A @ W.T + b  # Z = A W^T + b
        if i < len(params) - 1:
            A = jax.nn.relu(A)
    return A


def loss_logits(params, X, y):
    """X (m, 784), y (m,) int -> (mean cross-entropy, logits (m, 10))."""
    Z = logits(params, X)
    logp = jax.nn.log_softmax(Z)  # shifted - log sum exp(shifted)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), Z


def sgd_step(params, images, labels, idx, lr):
    """One batch idx (m,) of the device data: -> (new params, its loss, its correct count),
    loss and count measured before the update."""
    X = scaled(images[idx], params[0][0].dtype)
    y = labels[idx]
    (loss, Z), grads = jax.value_and_grad(loss_logits, has_aux=True)(params, X, y)
    new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return new, loss, jnp.sum(jnp.argmax(Z, axis=1) == y)


@jax.jit
def _probs(params, X):
    return jax.nn.softmax(logits(params, X), axis=1)


@jax.jit
def _loss_and_grads(params, X, y):
    return jax.value_and_grad(lambda p: loss_logits(p, X, y)[0])(params)


@functools.partial(jax.jit, static_argnames="chunk")
def _labels(params, images, chunk):
    """images (n, 784) uint8 -> (n,) int32, ``chunk`` images at a time (lax.map batches
    them, the remainder last), so the float copy never exceeds one chunk."""
    dtype = params[0][0].dtype
    return jax.lax.map(lambda u: jnp.argmax(logits(params, scaled(u, dtype))), images,
                       batch_size=chunk)


def forward(params, X):
    """X (m, 784) float -> softmax probabilities (m, 10), as NumPy."""
    with precision(X.dtype):
        return np.array(_probs(to_device(params), X))


def loss_and_grads(params, X, y):
    """X (m, 784) float, y (m,) int64 -> (mean cross-entropy, [(dW, db), ...] NumPy)."""
    with precision(X.dtype):
        loss, grads = _loss_and_grads(to_device(params), X, y.astype(np.int32))
        return float(loss), [(np.array(dW), np.array(db)) for dW, db in grads]


def predict(params, images, chunk=4096):
    """images (n, 784) uint8 -> predicted labels (n,) int64, in chunks like numpy_ref."""
    if len(images) == 0:
        return np.empty(0, np.int64)
    with precision(params[0][0].dtype):
        labels = _labels(to_device(params), device_images(images), min(chunk, len(images)))
        return np.asarray(labels).astype(np.int64)


def epoch_result(losses, corrects, batch_sizes, n):
    """(mean loss, accuracy) over n samples from per-batch losses and correct counts
    (device arrays, fetched here, once), summed in float64 like numpy_ref."""
    losses, corrects = jax.device_get((losses, corrects))
    losses = np.concatenate([np.ravel(x) for x in losses]).astype(np.float64)
    corrects = np.concatenate([np.ravel(x) for x in corrects])
    return float(np.dot(losses, batch_sizes)) / n, int(corrects.sum()) / n
