"""The numba backends: the fused epochs driven from Python, as named variants.

Four registry names, one ``Backend`` each, differing only in how a batch is
shared between threads when training:

* "numba:samples" - numba_tiles.train_epoch_samples: each thread takes a
  slice of the batch's samples and sums its gradient into its own buffer;
* "numba:rows" - numba_tiles.train_epoch_rows: parallel over samples for
  the forward pass and the deltas, then over weight rows for the gradient
  and the update (no per-thread gradient copies);
* "numba:simple" - numba_simple.train_epoch_simple: the same split as
  "samples", one sample at a time (the readable baseline);
* "numba" - whichever of "samples" and "rows" ``choose`` picks for the net's
  size and the thread count.

Every fused epoch takes ``(net, opt, batches, work, lr, nthreads)``:
``net`` the params' ``model.FlatNet`` (the flat vector itself, updated in
place: no copies in or out), ``opt`` a ``numba_shared.OptState`` (the
optimizer's own flat state, also in place), ``batches`` a
``numba_shared.Batches``, ``work`` the strategy's buffers, ``lr`` of the
params' dtype and ``nthreads`` Numba's thread count. ``forward``,
``loss_and_grads``, ``activations`` and ``sgd_step`` are numba_layers'
per-layer kernels, the same functions under every name; so is ``gather``
(numba_shared.gather_batch: the batches as every fused epoch sees them).
"""

import time
from typing import NamedTuple

import numba
import numpy as np

from fastnn import model
from fastnn.kernels import numba_distort, numba_layers, numba_simple, numba_tiles
from fastnn.kernels.numba_shared import Batches, OptState, gather_batch, update_params
from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.optim import Optimizer


class Strategy(NamedTuple):
    train: object  # the fused epoch kernel
    work: object  # (P, width, batch_size, nthreads, dtype) -> its buffers
    predict: object  # the fused inference kernel
    predict_work: object  # (width, nthreads, dtype) -> its buffers


STRATEGIES = {
    "samples": Strategy(numba_tiles.train_epoch_samples, numba_tiles.samples_work,
                        numba_tiles.predict_tiles, numba_tiles.predict_work),
    "rows": Strategy(numba_tiles.train_epoch_rows, numba_tiles.rows_work,
                     numba_tiles.predict_tiles, numba_tiles.predict_work),
    "simple": Strategy(numba_simple.train_epoch_simple, numba_simple.work,
                       numba_simple.predict_simple, numba_simple.predict_work),
}

# Per-thread gradient buffers up to this many floats in all (1 MiB of float32):
# below it, adding them up costs less than train_epoch_rows's extra parallel
# regions and its reading of activations written by other cores (measured on
# 2 cores: "samples" faster at 784-10-10 and 784-32-10, equal at 784-128-10,
# slower at 784-800-10).
SPLIT_MAX_FLOATS = 1 << 18


def choose(sizes, n_threads):
    """The strategy "numba" trains a net of these layer sizes with: "samples" or "rows"."""
    return "samples" if model.n_params(sizes) * n_threads <= SPLIT_MAX_FLOATS else "rows"


def _flat(params):
    """The params' FlatNet; the fused kernels update it in place, so params must be flat."""
    if not isinstance(params, model.Params):
        raise TypeError("the numba kernels train fastnn.model.Params in place (made by "
                        "init_params, copy_params, flat_params or load); got a plain "
                        f"{type(params).__name__}: wrap it with model.flat_params first")
    return params.flat


def _images(images):
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 2:
        raise TypeError(f"images must be (n, 784) uint8, got {images.shape} {images.dtype}")
    return images


def _shifts(shifts, order):
    if shifts is None:
        return np.zeros((0, 2), np.int64)
    shifts = np.ascontiguousarray(shifts, np.int64)
    if shifts.shape != (len(order), 2):
        raise ValueError(f"shifts must be (len(order), 2) = ({len(order)}, 2), "
                         f"got {shifts.shape}")
    return shifts


def _batches(images, labels, order, batch_size, dtype, shifts, distort):
    """The fused kernels' Batches; order: (k,) int64, dtype: the params' float type."""
    dt = np.dtype(dtype).type
    images = _images(images)
    if distort is not None and images.shape[1] != numba_distort.N_PIXELS:
        raise ValueError(f"distortion needs 28x28 images, (n, 784); got {images.shape}")
    return Batches(images, np.ascontiguousarray(labels, np.int64), order,
                   _shifts(shifts, order), int(batch_size), dt(PIXEL_SCALE),
                   *numba_distort.kernel_args(distort, dt))


def _opt_state(opt, params):
    """opt as the kernels' OptState: its own flat state, a fresh step counter."""
    dtype = params[0][0].dtype
    opt.ensure_state(params)
    return OptState(opt.kind, opt.hyper(dtype), opt.buffer, np.array([opt.step], np.int64))


class Backend:
    """The numba backend with train_epoch's strategy fixed (None: ``choose`` per call)."""

    forward = staticmethod(numba_layers.forward)
    loss_and_grads = staticmethod(numba_layers.loss_and_grads)
    activations = staticmethod(numba_layers.activations)
    sgd_step = staticmethod(numba_layers.sgd_step)

    def __init__(self, strategy=None):
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of "
                             f"{', '.join(STRATEGIES)}")
        self.strategy = strategy

    def __repr__(self):
        return f"numba_epoch.Backend({self.strategy!r})"

    def _strategy(self, sizes, n_threads):
        return STRATEGIES[self.strategy or choose(sizes, n_threads)]

    def implementation(self, attr):
        """The kernel behind ``attr``: what tells two registry names' code apart."""
        if attr in ("train_epoch", "predict"):
            if self.strategy is None:
                return None  # one of the named strategies, chosen per call
            kernels = STRATEGIES[self.strategy]
            return kernels.train if attr == "train_epoch" else kernels.predict
        return getattr(Backend, attr)

    def train_epoch(self, params, images, labels, order, batch_size, lr, opt=None,
                    shifts=None, distort=None):
        """Minibatch training over ``order``, updating params (and ``opt``) in place.

        Same semantics as numpy_ref.train_epoch: ``opt`` a fastnn.optim.Optimizer (None
        = plain SGD), ``shifts`` (len(order), 2) moves each sample by (dy, dx) pixels,
        ``distort`` a fastnn.augment.Distortion; returns (mean loss, accuracy), each
        sample measured before its batch's update.
        """
        net = _flat(params)
        order = np.ascontiguousarray(order, np.int64)
        dtype = net.theta.dtype.type
        batches = _batches(images, labels, order, batch_size, dtype, shifts, distort)
        opt = opt if opt is not None else Optimizer("sgd")
        state = _opt_state(opt, params)
        nthreads = numba.get_num_threads()
        kernels = self._strategy(net.sizes, nthreads)
        work = kernels.work(net.theta.size, int(net.sizes.sum()), int(batch_size), nthreads,
                            net.theta.dtype)
        kernels.train(net, state, batches, work, dtype(lr), nthreads)
        opt.step = int(state.step[0])
        loss_sum, hits = work.stats.sum(axis=0)
        return float(loss_sum / len(order)), float(hits / len(order))

    @staticmethod
    def gather(images, order, dtype, shifts=None, distort=None):
        """images[order] as train_epoch's kernels see them: (len(order), 784) of dtype,
        scaled to [0, 1], shifted and distorted as asked (numpy_ref.gather's twin)."""
        order = np.ascontiguousarray(order, np.int64)
        out = np.empty((len(order), _images(images).shape[1]), dtype)
        gather_batch(_batches(images, np.zeros(0, np.int64), order, 1, dtype, shifts, distort),
                     out)
        return out

    def predict(self, params, images):
        """images (n, 784) uint8 -> predicted labels (n,) int64."""
        params = params if isinstance(params, model.Params) else model.flat_params(params)
        net, nthreads = params.flat, numba.get_num_threads()
        kernels = self._strategy(net.sizes, nthreads)
        out = np.empty(len(images), np.int64)
        kernels.predict(net, _images(images), net.theta.dtype.type(PIXEL_SCALE),
                        kernels.predict_work(int(net.sizes.sum()), nthreads, net.theta.dtype),
                        out)
        return out

    def apply_update(self, params, grads, lr, opt):
        """One step of the optimizer ``opt`` given one batch's gradients, in place."""
        net, grads = _flat(params), model.flat_params(grads)
        state = _opt_state(opt, params)
        update_params(net.theta, grads.theta[None, :], net.theta.dtype.type(lr), state)
        opt.step = int(state.step[0])

    def warmup(self, sizes, dtype):
        """Compile (or load from Numba's cache) what training and predict use for a net
        of these sizes at any thread count; return the seconds it took."""
        t0 = time.perf_counter()
        strategies = ({self.strategy} if self.strategy else
                      {choose(sizes, n) for n in range(1, numba.config.NUMBA_NUM_THREADS + 1)})
        params = model.init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
        images = np.zeros((3, sizes[0]), np.uint8)
        for name in sorted(strategies):
            Backend(name).train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2,
                                      0.0)
            Backend(name).predict(params, images)
        return time.perf_counter() - t0
