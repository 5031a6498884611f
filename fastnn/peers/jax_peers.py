"""The "jax-step" and "jax-scan" peers: the net as pure functions of a pytree, jitted.

``_sgd_step`` is one batch: gather the uint8 rows, scale them, forward, mean
cross-entropy (``jax.nn.log_softmax``), ``jax.value_and_grad`` and p - lr dp.
``jax.nn.relu``'s derivative at 0 is 0, like numpy_ref's [Z > 0]
(``jnp.maximum(Z, 0)`` would give 1/2). The images and labels go to the device
once per data set; the params' buffers are donated, so XLA updates them in
place; losses and correct counts stay on the device until the epoch ends.
jax-step jits one step per batch, the loop in Python, as most JAX training
loops are written. jax-scan runs the epoch in one jitted ``lax.scan`` over the
rows of a (n_batches, batch_size) index array, the gather inside the scanned
step; a last, shorter batch cannot be a row, so it is a second, one-row call
on the params the first left: numpy_ref's last batch, no padding. jit compiles
per input shape, dtype and net: a new batch size, a last shorter batch, a new
n_batches each compile once (``warmup`` only covers a tiny net).

float64: JAX computes in float32 unless x64 is on, and turning it on for the
process would change every other JAX user's defaults. So float64 calls run
under ``jax.enable_x64(True)`` (thread-local, restored on exit), float32 calls
in the default mode, traced and compiled as without it (jit keys its cache on
the flag: the two never share compiled code).
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.peers import checked_order, per_data_set, warmup_run


def _precision(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def _on_device(array, dtype=None):
    return per_data_set(array, ("jax", dtype and np.dtype(dtype).str),
                        lambda: jax.device_put(array if dtype is None else array.astype(dtype)))


def _to_device(params):
    """Fresh device copies: donating them never touches the NumPy arrays."""
    return [(jnp.array(W, copy=True), jnp.array(b, copy=True)) for W, b in params]


def _scaled(U, dtype):
    return U.astype(dtype) * jnp.asarray(PIXEL_SCALE, dtype)


def _logits(params, A):
    for i, (W, b) in enumerate(params):
        A = A @ W.T + b
        if i < len(params) - 1:
            A = jax.nn.relu(A)
    return A


def _loss_logits(params, X, y):
    Z = _logits(params, X)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(Z), y[:, None], axis=1)), Z


def _sgd_step(params, images, labels, idx, lr):
    """-> (new params, (loss, correct count)), the two measured before the update."""
    X, y = _scaled(images[idx], params[0][0].dtype), labels[idx]
    (loss, Z), grads = jax.value_and_grad(_loss_logits, has_aux=True)(params, X, y)
    new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return new, (loss, jnp.sum(jnp.argmax(Z, axis=1) == y))


_step = jax.jit(_sgd_step, donate_argnums=0)


@functools.partial(jax.jit, donate_argnums=0)
def _scan(params, images, labels, batches, lr):
    return jax.lax.scan(lambda p, idx: _sgd_step(p, images, labels, idx, lr), params, batches)


_probs = jax.jit(lambda params, X: jax.nn.softmax(_logits(params, X), axis=1))
_loss_and_grads = jax.jit(
    lambda params, X, y: jax.value_and_grad(lambda p: _loss_logits(p, X, y)[0])(params))


@functools.partial(jax.jit, static_argnames="chunk")
def _labels(params, images, chunk):
    """lax.map over chunks of images (the remainder last): one chunk's floats at a time."""
    dtype = params[0][0].dtype
    return jax.lax.map(lambda u: jnp.argmax(_logits(params, _scaled(u, dtype))), images,
                       batch_size=chunk)


class JaxStep:
    def calls(self, order, batch_size):
        """[(jitted function, the indices it takes)] for an epoch: a step per batch."""
        return [(_step, order[s : s + batch_size]) for s in range(0, len(order), batch_size)]

    def version(self):
        return jax.__version__

    def warmup(self, sizes, dtype, batch_size=None):
        return warmup_run(self.train_epoch, self.predict, sizes, dtype)

    def forward(self, params, X):
        with _precision(X.dtype):
            return np.array(_probs(_to_device(params), X))

    def loss_and_grads(self, params, X, y):
        with _precision(X.dtype):
            loss, grads = _loss_and_grads(_to_device(params), X, y.astype(np.int32))
            return float(loss), [(np.array(dW), np.array(db)) for dW, db in grads]

    def predict(self, params, images, chunk=4096):
        if len(images) == 0:
            return np.empty(0, np.int64)
        with _precision(params[0][0].dtype):
            labels = _labels(_to_device(params), _on_device(images), min(chunk, len(images)))
            return np.asarray(labels).astype(np.int64)

    def train_epoch(self, params, images, labels, order, batch_size, lr):
        dtype = params[0][0].dtype
        with _precision(dtype):
            data = _on_device(images), _on_device(labels, np.int32)
            # int32, JAX's default integer; checked, as a JAX gather clamps, never raises
            order = checked_order(order, len(images), np.int32)
            p, lr, out = _to_device(params), jnp.asarray(lr, dtype), []
            for fn, idx in self.calls(order, batch_size):
                p, results = fn(p, *data, idx, lr)
                out.append(results)
            p, out = jax.device_get((p, out))  # the epoch's only wait for the device
            for (W, b), (new_W, new_b) in zip(params, p):
                W[...], b[...] = new_W, new_b
            losses = np.concatenate([np.ravel(loss) for loss, _ in out]).astype(np.float64)
            sizes = np.diff(np.r_[0 : len(order) : batch_size, len(order)])
            correct = sum(int(np.sum(c)) for _, c in out)
            return float(np.dot(losses, sizes)) / len(order), correct / len(order)


class JaxScan(JaxStep):
    def calls(self, order, batch_size):
        """The full batches in one scan, then the last, shorter one (if any) in another."""
        whole = len(order) // batch_size * batch_size
        return [(_scan, rows) for rows in (order[:whole].reshape(-1, batch_size),
                                           order[whole:].reshape(1, -1)) if rows.size]


step, scan = JaxStep(), JaxScan()
