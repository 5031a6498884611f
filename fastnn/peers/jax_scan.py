"""The "jax-scan" peer: a whole epoch in one jitted call, the batches under lax.scan.

The strongest JAX formulation on a CPU: ``_epoch`` runs
fastnn.peers._jax_common.sgd_step over the rows of a (n_batches, batch_size)
int32 index array with ``jax.lax.scan``, the params pytree as the carry, all
in one jitted call with the params' buffers donated (``donate_argnums=0``).
The images (uint8) and labels go to the device once per data set; the
gather and uint8 scaling happen inside the scanned step; the per-batch
losses and correct counts come back as the scan's outputs, fetched once at
the end. Nothing returns to Python inside the epoch.

A last, shorter batch cannot be a row of the index array: it runs as a
second, one-row call of the same ``_epoch`` ((1, remainder) indices) on the
params the first call left, which is exactly numpy_ref's last batch (no
padding, no masking).

Compilation: jit compiles ``_epoch`` for each new (n_batches, batch_size),
net structure and dtype: the first epoch of a shape compiles it (the scan
body once, whatever n_batches), the one-row call for the remainder compiles
once per remainder size. ``warmup`` compiles for a tiny net; callers make
one untimed call with the exact shapes first. float64 runs in JAX's x64
mode, enabled for that call only (_jax_common).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastnn.peers import _jax_common as jc
from fastnn.peers._jax_common import forward, loss_and_grads, predict, version  # noqa: F401


@functools.partial(jax.jit, donate_argnums=0)
def _epoch(params, images, labels, batches, lr):
    """batches (n_batches, m) int32 -> (params after them, (losses (n_batches,),
    correct counts (n_batches,)))."""

    def body(p, idx):
        p, loss, correct = jc.sgd_step(p, images, labels, idx, lr)
        return p, (loss, correct)

    return jax.lax.scan(body, params, batches)


def train_epoch(params, images, labels, order, batch_size, lr):
    """Plain SGD over the batches of ``order``, params updated in place (numpy_ref's
    contract); returns (mean loss, accuracy), each batch measured before its update."""
    dtype = params[0][0].dtype
    with jc.precision(dtype):
        images_d, labels_d = jc.device_data(images, labels)
        order = jc.device_order(order, len(images))
        p, lr = jc.to_device(params), jnp.asarray(lr, dtype)
        n_full = len(order) // batch_size * batch_size
        parts = [order[:n_full].reshape(-1, batch_size), order[n_full:].reshape(1, -1)]
        losses, corrects, sizes = [], [], []
        for batches in parts:
            if batches.size:
                p, (loss, correct) = _epoch(p, images_d, labels_d, batches, lr)
                losses.append(loss)
                corrects.append(correct)
                sizes += [batches.shape[1]] * len(batches)
        jc.store(p, params)
        return jc.epoch_result(losses, corrects, np.array(sizes), len(order))


def warmup(sizes, dtype):
    """Compile the epoch (one batch of 2, then a last batch of 1) and predict for a tiny
    net (784-2-10). Seconds. Other shapes compile on their first call."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
