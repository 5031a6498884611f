"""The "jax-step" peer: one jitted SGD step per batch, the loop over batches in Python.

How most JAX training loops are written: ``_step`` (fastnn.peers._jax_common.
sgd_step under ``jax.jit``) takes the params pytree, the device data and one
batch's indices, and returns the updated params; the params' buffers are
donated (``donate_argnums=0``), so XLA updates them in place instead of
allocating new ones each step. The images (uint8) and labels go to the
device once per data set; each step gathers its rows and scales them inside
the jitted function. Each step's loss and correct count stay on the device
(dispatch is asynchronous, no step waits for the previous one) and are
fetched once, after the last batch.

Compilation: jit compiles ``_step`` for each new batch shape, net structure
and dtype: the first epoch at a batch size compiles it, and a last, shorter
batch compiles a second version for its size (once). ``warmup`` compiles
for a tiny net; callers make one untimed call with the exact shapes first.
float64 runs in JAX's x64 mode, enabled for that call only (_jax_common).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastnn.peers import _jax_common as jc
from fastnn.peers._jax_common import forward, loss_and_grads, predict, version  # noqa: F401

_step = functools.partial(jax.jit, donate_argnums=0)(jc.sgd_step)


def train_epoch(params, images, labels, order, batch_size, lr):
    """Plain SGD over the batches of ``order``, params updated in place (numpy_ref's
    contract); returns (mean loss, accuracy), each batch measured before its update."""
    dtype = params[0][0].dtype
    with jc.precision(dtype):
        images_d, labels_d = jc.device_data(images, labels)
        order = jc.device_order(order, len(images))
        p, lr = jc.to_device(params), jnp.asarray(lr, dtype)
        losses, corrects = [], []
        for start in range(0, len(order), batch_size):
            p, loss, correct = _step(p, images_d, labels_d, order[start : start + batch_size], lr)
            losses.append(loss)
            corrects.append(correct)
        jc.store(p, params)
        sizes = np.diff(np.r_[0:len(order):batch_size, len(order)])
        return jc.epoch_result(losses, corrects, sizes, len(order))


def warmup(sizes, dtype):
    """Compile the step (batch 2, then a last batch of 1) and predict for a tiny net
    (784-2-10). Seconds. Other shapes compile on their first call."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
