"""The numba backends: the fused epochs driven from Python, as named variants.

Six registry names, one ``Backend`` each, differing only in how a batch is
shared between threads when training:

* "numba:samples" - numba_tiles.train_epoch_samples: each thread takes
  lanes (slices) of the batch's samples, summing each lane's gradient into
  its own buffer, in one parallel region for the whole epoch;
* "numba:rows" - numba_tiles.train_epoch_rows: parallel over samples for
  the forward pass and the deltas, then over weight rows for the gradient
  and the update (no per-lane gradient copies);
* "numba:inked" - "rows" with the first layer computed from each sample's
  inked pixels alone (numba_inked: ~5x fewer products on MNIST);
* "numba:split" - numba_split.train_epoch_split: each thread takes lanes of
  the first layer's input columns (the images', W0's), then lanes of the
  batch's samples through the layers above: W0 and its gradient never leave
  their core;
* "numba:simple" - numba_simple.train_epoch_simple: lanes like "samples",
  one sample at a time (the readable baseline);
* "numba" - whichever of "split", "samples", "rows" and "inked" ``choose``
  picks for the net's size, the batch size, the machine's thread count and how
  much of the images is ink.

A batch is cut into as many lanes as the machine has threads, however many
actually run, and every sum is taken in lane order: results depend on the
machine, never on ``--threads`` or on scheduling. So the thread count can
change between pieces of an epoch (``Pacer``: one thread when another busy
process makes waiting threads slow) and the numbers stay the same.

Every fused epoch takes ``(net, opt, batches, work, lr, nthreads)``:
``net`` the params' ``model.FlatNet`` (the flat vector itself, updated in
place: no copies in or out), ``opt`` a ``numba_shared.OptState`` (the
optimizer's own flat state, also in place), ``batches`` a
``numba_shared.Batches``, ``work`` the strategy's buffers, ``lr`` of the
params' dtype and ``nthreads`` the threads to run on. ``forward``,
``loss_and_grads``, ``activations`` and ``sgd_step`` are numba_layers'
per-layer kernels, the same functions under every name; so is ``gather``
(numba_shared.gather_batch: the batches as every fused epoch sees them).
"""

import contextlib
import time
from typing import NamedTuple

import numba
import numpy as np

from fastnn import config, model
from fastnn.kernels import numba_distort, numba_layers, numba_simple, numba_split, numba_tiles
from fastnn.kernels.numba_shared import Batches, OptState, gather_batch, update_params
from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.optim import Optimizer


class Strategy(NamedTuple):
    train: object  # the fused epoch kernel
    work: object  # (sizes, batch_size, nthreads, lanes, dtype) -> its buffers
    predict: object  # the fused inference kernel
    predict_work: object  # (sizes, nthreads, dtype, inked) -> its buffers
    plain: object = None  # work -> the work for batches neither shifted nor distorted


STRATEGIES = {
    "samples": Strategy(numba_tiles.train_epoch_samples, numba_tiles.samples_work,
                        numba_tiles.predict_tiles, numba_tiles.predict_work, numba_tiles.plain),
    "rows": Strategy(numba_tiles.train_epoch_rows, numba_tiles.rows_work,
                     numba_tiles.predict_tiles, numba_tiles.predict_work, numba_tiles.plain),
    "inked": Strategy(numba_tiles.train_epoch_rows, numba_tiles.inked_work,
                      numba_tiles.predict_tiles, numba_tiles.predict_work, numba_tiles.plain),
    "split": Strategy(numba_split.train_epoch_split, numba_split.split_work,
                      numba_tiles.predict_tiles, numba_tiles.predict_work, numba_split.plain),
    "simple": Strategy(numba_simple.train_epoch_simple, numba_simple.work,
                       numba_simple.predict_simple, numba_simple.predict_work),
}

# the kernels whose threads meet at numba_intrinsics.barrier
BARRIER_KERNELS = (numba_tiles.train_epoch_samples, numba_tiles.train_epoch_rows,
                   numba_split.train_epoch_split)

# Per-lane gradient buffers up to this many floats in all (1 MiB of float32):
# below it, adding them up costs less than train_epoch_rows's extra parallel
# regions and its reading of activations written by other cores (measured on
# 2 cores, Zen 4: "samples" faster from 784-10-10 to 784-64-10, about equal at
# 784-128-10, slower at 784-800-10).
SPLIT_MAX_FLOATS = 1 << 18


# "split" (numba_split) for first layers narrower than INKED_MIN_UNITS and batches up
# to this size, on 2 threads or more (measured on 2 cores, Intel Xeon AVX-512, MNIST,
# full epochs, 2 threads, best of five, "split" against "samples" samples/s, both with
# numba_narrow's layers above: 784-10-10 batch 64 3.61M against 2.88M, 128 3.95M
# against 3.31M, 256 4.01M against 3.57M, 512 4.03M against 4.17M (medians 3.94M,
# 3.73M), 1024 2.90M against 4.26M; 784-32-10 batch 128 1.79M against 1.44M). Below it
# a batch's cross-core exchange costs more than its work; above, "split"'s whole-batch
# panels outgrow the caches.
SPLIT_MAX_BATCH = 256
DEFAULT_BATCH = 32  # the training command's
# Not for shifted or distorted batches: every lane of "split" moves (or distorts) the
# whole image to take its columns, so each image is moved once per lane, and a
# thread's share of the work does not shrink (measured on 2 cores, Zen 4, MNIST,
# 784-10-10, full epochs, best of three, "split" against "samples" samples/s: batch 32
# on 2 threads, --shift 1 837k against 1.48M, --preset record's distortion 206k
# against 427k; on 1 thread 468k against 958k and 114k against 232k; batch 128 on 2
# threads 937k against 1.92M and 216k against 440k; 784-32-10 batch 32 599k against
# 750k and 201k against 331k; plain, "split" was the faster: 2.45M against 2.10M).

# The inked first layer from this many units on (measured on 2 cores, Zen 4, MNIST,
# full epochs, best of two, "samples" against "inked" samples/s, 1 and 2 threads: batch
# 128 784-32-10 0.72M, 1.17M against 0.53M, 0.86M; 784-48-10 0.54M, 0.76M against
# 0.53M, 0.76M; 784-64-10 0.42M, 0.62M against 0.52M, 0.82M; batch 32 784-48-10 0.45M,
# 0.45M against 0.39M, 0.55M; 784-64-10 0.37M, 0.45M against 0.43M, 0.55M; earlier
# 784-128-10 0.37M against 0.43-0.48M, 784-800-10 66k against 98-107k), for images
# whose pixels are at most INKED_MAX_INK ink (nonzero). It pays for sparse ink only:
# MNIST inks 19% of its pixels; random bytes inked at 50% trained 784-800-10 at 49k
# against "rows"' 59k.
INKED_MIN_UNITS = 64
INKED_MAX_INK = 0.35
# ... and inference from the inked pixels from this many first-layer units on (10,000
# MNIST test images, 2 threads: 784-64-10 9.1 ms against 10.8 for the tiles, 784-800-10
# 29-35 against 60)
INKED_PREDICT_MIN_UNITS = 64


def ink_fraction(images, rows=1024):
    """The share of nonzero pixels in up to ``rows`` images spread over ``images``."""
    sample = images[:: max(1, len(images) // rows)][:rows]
    return np.count_nonzero(sample) / sample.size if sample.size else 0.0


def choose(sizes, lanes, ink=0.0, batch_size=None, moved=False):
    """The strategy "numba" trains a net of these layer sizes with, "split", "samples",
    "rows" or "inked", for batches of ``batch_size`` (None: the training command's
    default) cut into ``lanes`` (the machine's thread count: numba_shared.Batches) from
    images whose ink_fraction is ``ink``, ``moved`` (shifted or distorted) or not."""
    if sizes[1] >= INKED_MIN_UNITS and ink <= INKED_MAX_INK:
        return "inked"
    if (lanes > 1 and sizes[1] < INKED_MIN_UNITS and not moved
            and (batch_size or DEFAULT_BATCH) <= SPLIT_MAX_BATCH):
        return "split"
    return "samples" if model.n_params(sizes) * lanes <= SPLIT_MAX_FLOATS else "rows"


class Pacer:
    """How many threads the next piece of an epoch runs on: all of them, or one.

    Results do not depend on it (every sum is taken in lane order), only speed does:
    when another busy process shares the cores, threads that wait for each other
    every batch lose most of their time to it (measured on 2 cores with one busy
    process: 784-10-10 at batch 32 ran at 0.56M samples/s on 2 threads, 1.05M on 1).
    So an epoch runs in pieces of about PIECE_SECONDS; the first two pieces try all
    threads and one, then the faster is kept and the other tried again after
    PROBE_FIRST seconds of training, twice as long each time it loses again (up to
    PROBE_MAX): in a quiet run of a minute, about 17 pieces of 25 ms run on one thread.
    A count's rate is the better of its last two pieces (see ``record``).
    """

    PIECE_SECONDS = 0.025
    # A try of the count not in use: shorter, since it mostly runs at the slower rate.
    # With another busy process, 25-ms tries of all threads took 2-3% of a bench case's
    # time at a fraction of one thread's speed (784-10-10 batch 32: 140-180k samples/s
    # against 1.1-1.4M), and the default ran at 0.96-0.98x --threads 1
    PROBE_SECONDS = 0.01
    FIRST_PIECE = 2048  # samples, before any rate is known
    # A piece shorter than this says more about threads waking up than about the work
    # (a call with a few batches, an epoch's last piece): not taken into account, and
    # before a count's rate is known the next piece is four times larger, until one is
    # long enough. Unless it beats the count's rate (its own can only be too low): a
    # try sized by a rate from a busy spell that has passed takes a few ms, and left
    # out, it left the pacer trying the same count again and again, learning nothing.
    MIN_SECONDS = 0.005
    # seconds of training between two tries: soon at first (a first try may have met a
    # passing slow spell: NumPy's BLAS threads spin for ~0.1 s after its last product),
    # and never more than a few seconds apart, so that a choice made while another
    # process was busy (or on one noisy try) is undone soon after: with 60 s, a run
    # went on at one thread's speed for up to a minute after the other process ended
    # (the bench's distorted 784-800-10 epochs at half speed); a try costs at most
    # PROBE_SECONDS at the slower count every PROBE_MAX seconds, < 0.3%
    PROBE_FIRST, PROBE_MAX = 0.5, 4.0

    def __init__(self, nthreads):
        self.nthreads = nthreads
        self.rate = {}  # threads -> samples/s: the better of its last two pieces
        self._last = {}  # threads -> samples/s of its latest piece
        self.piece = self.FIRST_PIECE  # samples in the next piece
        self.clock, self.next_probe, self.interval = 0.0, 0.0, self.PROBE_FIRST
        self.seconds = {}  # threads -> seconds its pieces ran (what the bench reports)

    def _best(self):
        if len(self.rate) < 2:
            return None
        # No margin in favour of all threads: with one, one thread had to be 10% faster,
        # and with another busy process, where the two counts are about as fast, the
        # default ran at 0.75-1.10x --threads 1 (784-10-10, batch 32, eight reports);
        # without, at 1.01-1.15x, eight reports interleaved with those
        return 1 if self.rate[1] > self.rate[self.nthreads] else self.nthreads

    def threads(self):
        """The thread count for the next piece."""
        untried = [n for n in (self.nthreads, 1) if n not in self.rate]
        if untried:
            return untried[0]
        best = self._best()
        if self.clock >= self.next_probe:
            return 1 if best != 1 else self.nthreads  # try the other again
        return best

    def samples(self, batch_size, threads):
        """How many samples (whole batches) the next piece, on ``threads``, takes: about
        PIECE_SECONDS at that thread count's last rate (PROBE_SECONDS for a try of the
        other count: it must not last longer), FIRST_PIECE growing until one lasts
        MIN_SECONDS."""
        rate = self.rate.get(threads)
        best = self._best()
        seconds = self.PIECE_SECONDS if best in (None, threads) else self.PROBE_SECONDS
        want = self.piece if rate is None else int(seconds * rate)
        return batch_size * max(1, want // batch_size)

    def record(self, threads, samples, seconds, compiled=False):
        """A piece ran ``samples`` on ``threads`` in ``seconds`` (``compiled``: its time
        includes compiling the kernel, so it tells nothing)."""
        if compiled:
            return
        self.seconds[threads] = self.seconds.get(threads, 0.0) + seconds
        if seconds < self.MIN_SECONDS:
            if threads not in self.rate:
                self.piece = max(self.piece, 4 * samples)
                return
            if samples / seconds <= self.rate[threads]:
                return
        before = self._best()
        # A count is judged by the better of its last two pieces: one piece slowed by a
        # passing hiccup (a thread descheduled for a few ms) does not switch the count,
        # two in a row (another busy process) do. Judged by its latest piece alone, one
        # two-thread piece at 0.95M samples/s among others at 1.73-1.77M put 784-10-10
        # batch 32 on one thread for the next 0.5 s (1.52M against 2.23M on two)
        rate = samples / seconds
        self.rate[threads] = max(rate, self._last.get(threads, 0.0))
        self._last[threads] = rate
        self.piece = int(self.PIECE_SECONDS * max(self.rate.values()))
        self.clock += seconds
        if before is None:  # both tried now (or not yet): the first probe in a while
            self.next_probe = self.clock + self.interval
        elif threads != before:  # that was a probe
            kept = self._best() == before
            self.interval = min(2 * self.interval, self.PROBE_MAX) if kept else self.PROBE_FIRST
            self.next_probe = self.clock + self.interval


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


def _batches(images, labels, order, batch_size, dtype, shifts, distort, lanes):
    """The fused kernels' Batches; order: (k,) int64, dtype: the params' float type."""
    dt = np.dtype(dtype).type
    images = _images(images)
    if distort is not None and images.shape[1] != numba_distort.N_PIXELS:
        raise ValueError(f"distortion needs 28x28 images, (n, 784); got {images.shape}")
    return Batches(images, np.ascontiguousarray(labels, np.int64), order,
                   _shifts(shifts, order), int(batch_size), dt(PIXEL_SCALE), int(lanes),
                   *numba_distort.kernel_args(distort, dt))


def _piece(batches, start, end):
    """batches cut to order positions [start, end): a piece of the epoch (the distortion
    depends on the sample, not on its position, so it needs no cutting)."""
    shifts = batches.shifts[start:end] if len(batches.shifts) else batches.shifts
    return batches._replace(order=batches.order[start:end], shifts=shifts)


def _opt_state(opt, params):
    """opt as the kernels' OptState: its own flat state, a fresh step counter."""
    dtype = params[0][0].dtype
    opt.ensure_state(params)
    return OptState(opt.kind, opt.hyper(dtype), opt.buffer, np.array([opt.step], np.int64))


def _compiled(kernel):
    """How many signatures the jitted kernel (a launcher's: its ``jitted``) has compiled
    (0 without the JIT)."""
    return len(getattr(getattr(kernel, "jitted", kernel), "signatures", ()))


@contextlib.contextmanager
def _threads(n):
    """Numba's thread count is n inside the block (this Python thread's setting)."""
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _barriers_safe():
    """Whether every iteration of a prange runs at once, as BARRIER_KERNELS' barriers
    need: not under TBB (see config.THREADING_LAYERS), nor without the JIT,
    where a prange is a plain loop."""
    return not numba.config.DISABLE_JIT and str(numba.config.THREADING_LAYER).lower() != "tbb"


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
        self._pacers = {}  # (kernel, threads, sizes, batch) -> Pacer: it learns across calls

    def __repr__(self):
        return f"numba_epoch.Backend({self.strategy!r})"

    def forget_pacing(self):
        """Drop what the pacers have learned, as a fresh process starts (the bench does
        this before each case: a case must not inherit another's thread choice)."""
        self._pacers.clear()

    def seconds_on_threads(self):
        """{thread count: seconds its pieces of training ran} since forget_pacing (or
        since this backend was made), pieces that compiled a kernel left out."""
        total = {}
        for pacer in self._pacers.values():
            for threads, seconds in pacer.seconds.items():
                total[threads] = total.get(threads, 0.0) + seconds
        return total

    def _strategy(self, sizes, ink, batch_size=None, moved=False):
        # the strategy's name; ink: the images' ink_fraction (1.0 where it does not matter)
        return self.strategy or choose(sizes, config.max_threads(), ink, batch_size, moved)

    def strategy_for(self, sizes, images, batch_size, moved=False):
        """The strategy's name ("split", ...) train_epoch trains a net of these layer sizes
        with, on these images at this batch size, ``moved`` (shifted or distorted) or not."""
        # the images' ink only for a first layer wide enough to use it
        ink = ink_fraction(images) if sizes[1] >= INKED_MIN_UNITS else 1.0
        return self._strategy(sizes, ink, batch_size, moved)

    def implementation(self, attr):
        """The kernel behind ``attr``: what tells two registry names' code apart."""
        if attr in ("train_epoch", "predict"):
            if self.strategy is None:
                return None  # one of the named strategies, chosen per call
            kernels = STRATEGIES[self.strategy]  # "rows" and "inked" share a kernel
            return kernels if attr == "train_epoch" else kernels.predict
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
        dtype, bs, lanes = net.theta.dtype.type, int(batch_size), config.max_threads()
        batches = _batches(images, labels, order, bs, dtype, shifts, distort, lanes)
        opt = opt if opt is not None else Optimizer("sgd")
        state = _opt_state(opt, params)
        nthreads = numba.get_num_threads()
        kernels = STRATEGIES[self.strategy_for(net.sizes, images, bs,
                                               shifts is not None or distort is not None)]
        if kernels.train in BARRIER_KERNELS and not _barriers_safe():
            nthreads = 1
        work = kernels.work(net.sizes, bs, nthreads, lanes, net.theta.dtype)
        if kernels.plain and shifts is None and distort is None:
            work = kernels.plain(work)
        pacer = self._pacers.setdefault((kernels.train, nthreads, tuple(net.sizes), bs),
                                        Pacer(nthreads))
        done = 0
        while done < len(order):  # in pieces, each on the threads the pacer picks
            threads = pacer.threads() if nthreads > 1 else 1
            end = min(len(order), done + pacer.samples(bs, threads))
            compiled = _compiled(kernels.train)
            t0 = time.perf_counter()
            with _threads(threads):
                kernels.train(net, state, _piece(batches, done, end), work, dtype(lr), threads)
            pacer.record(threads, end - done, time.perf_counter() - t0,
                         compiled=_compiled(kernels.train) != compiled)
            done = end
        opt.step = int(state.step[0])
        loss_sum, hits = work.stats.sum(axis=0)
        return float(loss_sum / len(order)), float(hits / len(order))

    @staticmethod
    def gather(images, order, dtype, shifts=None, distort=None):
        """images[order] as train_epoch's kernels see them: (len(order), 784) of dtype,
        scaled to [0, 1], shifted and distorted as asked (numpy_ref.gather's twin)."""
        order = np.ascontiguousarray(order, np.int64)
        out = np.empty((len(order), _images(images).shape[1]), dtype)
        gather_batch(_batches(images, np.zeros(0, np.int64), order, 1, dtype, shifts, distort,
                              config.max_threads()), out)
        return out

    def predict(self, params, images):
        """images (n, 784) uint8 -> predicted labels (n,) int64."""
        params = params if isinstance(params, model.Params) else model.flat_params(params)
        net, nthreads, images = params.flat, numba.get_num_threads(), _images(images)
        ink = ink_fraction(images) if net.sizes[1] >= INKED_PREDICT_MIN_UNITS else 1.0
        kernels = STRATEGIES[self._strategy(net.sizes, ink)]
        inked = ink <= INKED_MAX_INK
        out = np.empty(len(images), np.int64)
        kernels.predict(net, images, net.theta.dtype.type(PIXEL_SCALE),
                        kernels.predict_work(net.sizes, nthreads, net.theta.dtype, inked),
                        out)
        return out

    def apply_update(self, params, grads, lr, opt):
        """One step of the optimizer ``opt`` given one batch's gradients, in place."""
        net, grads = _flat(params), model.flat_params(grads)
        state = _opt_state(opt, params)
        update_params(net.theta, grads.theta[None, :], net.theta.dtype.type(lr), state)
        opt.step = int(state.step[0])

    def warmup(self, sizes, dtype, batch_size=None, moved=False):
        """Compile (or load from Numba's cache) what training at ``batch_size`` (None:
        the training command's default) on batches ``moved`` (shifted or distorted) or
        not, and predict, use for a net of these sizes (at any thread count: the
        strategy depends on the machine's, see choose); return the seconds it took."""
        t0 = time.perf_counter()
        params = model.init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
        images = np.zeros((3, sizes[0]), np.uint8)
        backend = Backend(self.strategy or choose(sizes, config.max_threads(), 0.0,
                                                  batch_size, moved))
        # zero shifts take the path a distortion takes too (numba_shared.gather_row)
        backend.train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0,
                            None, np.zeros((3, 2), np.int64) if moved else None)
        backend.predict(params, images)
        if sizes[1] >= INKED_PREDICT_MIN_UNITS:  # predict's inked path (blank images: no ink)
            backend.predict(model.init_params([sizes[0], INKED_PREDICT_MIN_UNITS, sizes[-1]],
                                              dtype=dtype), images)
        return time.perf_counter() - t0
