"""What every benchmark shares: the grid, the inputs, the agreement checks, the timers.

The asv suite (``benchmarks/``), the pytest-benchmark tests and
``python -m fastnn.bench`` all build their inputs, check a backend against the
reference and measure throughput through this module, so the three agree on
what they measure:

* ``grid()``: the parameter grid, short by default, full with
  ``FASTNN_BENCH_GRID=full``;
* ``load_data()``: real MNIST when it can be loaded, synthetic arrays of the
  same shape otherwise (``FASTNN_BENCH_DATA=synthetic`` forces them), with a
  ``source`` string that says which;
* ``check_*``: one backend against ``REFERENCE`` on the same inputs, rows of
  (quantity, max difference, tolerance, ok); ``strict=True`` raises through
  ``fastnn.tolerances.assert_agree`` on the first disagreement (a float32
  array off only at a ReLU kink is accepted, see ``_compare``);
* ``train_rates`` / ``predict_rates``: samples/s of each repeat (callers take
  the median), a repeat lasting at least ``min_seconds``;
* ``compile_seconds``: first-call compile time in fresh interpreters with an
  empty (cold), then filled (warm) Numba cache.

Nothing here times JIT compilation: callers warm a backend up before timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np

from fastnn import model, tolerances
from fastnn.kernels import REFERENCE, get_kernel
from fastnn.kernels.numpy_ref import to_float

GRID_ENV = "FASTNN_BENCH_GRID"  # "short" (default) or "full"
DATA_ENV = "FASTNN_BENCH_DATA"  # "auto" (default), "mnist" (required) or "synthetic"
GRIDS = {
    # CI-sized: a few minutes of asv --quick on two cores.
    "short": dict(hidden=[10, 128], batch_size=[32, 128], dtype=["float32"]),
    "full": dict(hidden=[10, 128, 800], batch_size=[1, 32, 128, 1024],
                 dtype=["float32", "float64"]),
}
N_TRAIN, N_TEST = 60000, 10000
LR = 0.01  # small enough that repeated timing calls never diverge
# Shortest timed run for the report and asv: calls repeat until a run has lasted
# this long. One predict over the test set takes ~3 ms in numba against ~20 ms in
# NumPy; timed alone, the start of a run after an idle pause (threads waking, the
# clock ramping up) weighed far more on the shorter one (measured, 784-10-10
# inference, 9 rounds: single calls 2.50M vs 533k samples/s, runs of >= 0.1 s
# 3.34M vs 620k).
MIN_RUN_SECONDS = 0.1


def grid(name: str | None = None) -> dict:
    """The grid named by ``name`` or $FASTNN_BENCH_GRID (default "short")."""
    name = name or os.environ.get(GRID_ENV, "short") or "short"
    if name not in GRIDS:
        raise ValueError(f"{GRID_ENV}={name!r}: choose one of {', '.join(GRIDS)}")
    return GRIDS[name]


# ---------------------------------------------------------------- inputs


class Data(NamedTuple):
    train_images: np.ndarray  # (60000, 784) uint8
    train_labels: np.ndarray  # (60000,) int64
    test_images: np.ndarray  # (10000, 784) uint8
    test_labels: np.ndarray  # (10000,) int64
    source: str  # "MNIST" or "synthetic (<why>)"

    @property
    def is_mnist(self) -> bool:
        return self.source == "MNIST"


def synthetic(n: int, seed: int = 0):
    """(images uint8 (n, 784), labels int64 (n,)): MNIST's shape, ~80% black pixels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, model.N_INPUTS), dtype=np.uint8)
    images *= rng.integers(0, 5, images.shape, dtype=np.uint8) == 0  # uint8 temporaries only
    return images, rng.integers(0, model.N_CLASSES, n, dtype=np.int64)


_data: dict[str, Data] = {}


def load_data() -> Data:
    """Real MNIST if it loads, else synthetic data of the same shape (memoised).

    FASTNN_BENCH_DATA=synthetic skips loading; =mnist, or FASTNN_REQUIRE_MNIST=1
    (CI), makes a failed load an error instead of a fallback.
    """
    if "data" in _data:
        return _data["data"]
    mode = os.environ.get(DATA_ENV, "auto") or "auto"
    if mode not in ("auto", "mnist", "synthetic"):
        raise ValueError(f"{DATA_ENV}={mode!r}: choose auto, mnist or synthetic")
    why = f"{DATA_ENV}=synthetic"
    if mode != "synthetic":
        from fastnn.data import DataError, load_mnist

        try:
            train, test = load_mnist("train"), load_mnist("test")
            _data["data"] = Data(*train, *test, "MNIST")
            return _data["data"]
        except DataError as e:
            if mode == "mnist" or os.environ.get("FASTNN_REQUIRE_MNIST") == "1":
                raise
            why = f"MNIST not available: {str(e).splitlines()[0]}"
    _data["data"] = Data(*synthetic(N_TRAIN, 1), *synthetic(N_TEST, 2), f"synthetic ({why})")
    return _data["data"]


def make_params(hidden, dtype, seed: int = 0):
    """He-initialised params of a 784-hidden-10 net (hidden: int or list of widths)."""
    hidden = [hidden] if np.ndim(hidden) == 0 else list(hidden)
    return model.init_params(model.layer_sizes(hidden), seed=seed, dtype=np.dtype(dtype))


def net_name(params) -> str:
    return "-".join(map(str, model.sizes_of(params)))


def sample_order(n_images: int, n_samples: int, seed: int = 0) -> np.ndarray:
    """n_samples int64 indices: seeded permutations of range(n_images), concatenated."""
    rng = np.random.default_rng(seed)
    reps = -(-n_samples // n_images)
    return np.concatenate([rng.permutation(n_images) for _ in range(reps)])[:n_samples]


def batch(images, labels, batch_size, dtype, seed: int = 0):
    """One seeded batch: X (b, 784) float in [0, 1], y (b,) int64."""
    idx = sample_order(len(images), batch_size, seed)
    return to_float(images[idx], np.dtype(dtype)), np.ascontiguousarray(labels[idx])


# ---------------------------------------------------------------- agreement


def _backend(name):
    """A registered backend by name, or any object with the same functions (a peer)."""
    return get_kernel(name) if isinstance(name, str) else name


def _label(name, params):
    if not isinstance(name, str):
        name = getattr(name, "__name__", repr(name))
    return f"{name} {net_name(params)} {params[0][0].dtype}: "


def _as64(params):
    return [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]


def _compare(pairs, dtype, strict, what, trajectory=False, exact=None):
    """One row per (quantity, a, r): max differences, the rtol, ok.

    strict: the first disagreement raises, through tolerances.assert_agree.
    exact (float32 only): a function returning, for every pair, the reference
    computed in float64 from the same float32 inputs. An array that fails the
    tolerance is accepted when the backend is no further from exact than the
    float32 reference is (at most 2x): a pre-activation within rounding of
    zero sends the two float32 computations to opposite sides of a ReLU, and
    both are right (tests/test_agreement.py meets the same thing). A real
    error is far from exact while the reference is not, and still fails.
    """
    rows, exact_values = [], None
    for k, (quantity, a, r) in enumerate(pairs):
        rtol = tolerances.rtol_for(dtype, trajectory)
        max_abs, max_rel = tolerances.differences(a, r)
        row = dict(quantity=quantity, max_abs=max_abs, max_rel=max_rel, rtol=rtol,
                   ok=bool(tolerances.worst_ratio(a, r, rtol) <= 1.0))
        if not row["ok"] and exact is not None and np.dtype(dtype) == np.float32:
            exact_values = exact_values or exact()
            e = np.asarray(exact_values[k], np.float64)
            mine = float(np.max(np.abs(np.asarray(a, np.float64) - e)))
            theirs = float(np.max(np.abs(np.asarray(r, np.float64) - e)))
            if mine <= 2 * theirs:
                row.update(ok=True, note=f"ReLU kink: {mine:.2g} from float64, "
                           f"reference {theirs:.2g}")
        if strict and not row["ok"]:
            tolerances.assert_agree(a, r, dtype, f"{what}{quantity}", trajectory)
        rows.append(row)
    return rows


def check_forward(name, params, X, strict=True):
    """forward(params, X) of backend ``name`` (or a peer module) against the reference's."""
    ref = get_kernel(REFERENCE)
    pairs = [("forward", _backend(name).forward(params, X), ref.forward(params, X))]
    return _compare(pairs, params[0][0].dtype, strict, _label(name, params),
                    exact=lambda: [ref.forward(_as64(params), X.astype(np.float64))])


def _loss_grad_list(loss, grads):
    return [np.array(loss)] + [g for pair in grads for g in pair]


def check_loss_and_grads(name, params, X, y, strict=True):
    """loss_and_grads(params, X, y): the loss and every dW, db against the reference's."""
    ref = get_kernel(REFERENCE)
    mine = _loss_grad_list(*_backend(name).loss_and_grads(params, X, y))
    theirs = _loss_grad_list(*ref.loss_and_grads(params, X, y))
    names = ["loss"] + [f"d{w}{i}" for i in range(1, len(params) + 1) for w in ("W", "b")]
    return _compare(list(zip(names, mine, theirs)), params[0][0].dtype, strict,
                    _label(name, params), exact=lambda: _loss_grad_list(
                        *ref.loss_and_grads(_as64(params), X.astype(np.float64), y)))


def check_train(name, params, images, labels, batch_size, steps=4, strict=True, tail=0):
    """``steps`` batches of train_epoch from the same params, then (tail > 0) a last,
    shorter batch of ``tail`` samples: the mean loss and the params after."""
    order = sample_order(len(images), steps * batch_size + tail, seed=1)
    steps += tail > 0
    ref = get_kernel(REFERENCE)

    def run(kernel, start):
        p = model.copy_params(start)
        loss, _ = kernel.train_epoch(p, images, labels, order, batch_size, LR)
        return [np.array(loss)] + [a for pair in p for a in pair]

    names = ["train loss"] + [f"{w}{i} after {steps} steps"
                              for i in range(1, len(params) + 1) for w in ("W", "b")]
    pairs = list(zip(names, run(_backend(name), params), run(ref, params)))
    return _compare(pairs, params[0][0].dtype, strict, _label(name, params), trajectory=True,
                    exact=lambda: run(ref, _as64(params)))


def check_predict(name, params, images, strict=True):
    """predict(params, images): labels must match the reference's except at near-ties.

    A near-tie is a row whose two largest reference log-probabilities (= the
    logits' gap) differ by less than 100x the dtype's kernel rtol times
    max(1, the row's largest |log p|): there the summation order may
    legitimately pick the other class. max_rel holds the fraction of labels
    that differ.
    """
    dtype = params[0][0].dtype
    labels = _backend(name).predict(params, images)
    ref_labels = get_kernel(REFERENCE).predict(params, images)
    differ = np.flatnonzero(labels != ref_labels)
    ok = True
    if differ.size:
        P = get_kernel(REFERENCE).forward(params, to_float(images[differ], dtype))
        logp = np.log(np.maximum(P.astype(np.float64), 1e-300))
        top2 = np.sort(logp, axis=1)[:, -2:]
        ok = bool(np.all(top2[:, 1] - top2[:, 0] <= 100 * tolerances.rtol_for(dtype)
                         * np.maximum(1.0, np.abs(logp).max(axis=1))))
    if strict and not ok:
        raise AssertionError(f"{_label(name, params)}predict: {differ.size} of {len(images)} "
                             "labels differ from the reference away from any near-tie")
    frac = differ.size / max(len(images), 1)
    return [dict(quantity="predict labels", max_abs=float(differ.size), max_rel=frac,
                 rtol=0.0, ok=ok)]


def worst(rows) -> float:
    """Largest max_rel over rows (the headline difference)."""
    return max((r["max_rel"] for r in rows), default=0.0)


# ---------------------------------------------------------------- timing


def _timed(call, samples, min_seconds):
    """samples/s of call() (which handles ``samples`` samples), called again and again
    until min_seconds have passed: a run of a few milliseconds measures how fast the
    threads wake and the clock ramps up as much as the kernel."""
    done, t0 = 0, time.perf_counter()
    while True:
        call()
        done += samples
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def train_rates(kernel, params, images, labels, batch_size, n_samples, repeats, seed=0,
                min_seconds=0.0):
    """samples/s of ``repeats`` timed runs. A run starts from a fresh copy of params
    (copy not timed) and calls train_epoch over the same n_samples (rounded up to
    whole batches), again on the same copy until it has lasted min_seconds."""
    n = -(-n_samples // batch_size) * batch_size
    order = sample_order(len(images), n, seed)
    rates = []
    for _ in range(repeats):
        p = model.copy_params(params)
        rates.append(_timed(lambda p=p: kernel.train_epoch(p, images, labels, order, batch_size,
                                                           LR), n, min_seconds))
    return rates


def predict_rates(kernel, params, images, repeats, min_seconds=0.0):
    """samples/s of ``repeats`` timed runs, each of predict over all of images, called
    again until the run has lasted min_seconds."""
    return [_timed(lambda: kernel.predict(params, images), len(images), min_seconds)
            for _ in range(repeats)]


_COMPILE_CODE = """\
import sys
import numpy as np
from fastnn.kernels import get_kernel
print(repr(get_kernel(sys.argv[1]).warmup([784, 10, 10], np.dtype(sys.argv[2]))))
"""


def warmup_in_fresh_interpreter(name, dtype, cache_dir=None, timeout=600):
    """backend.warmup's own seconds in a new interpreter (imports not included).

    cache_dir: the NUMBA_CACHE_DIR it gets; None = this process's environment
    (by default the package's own cache).
    """
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    run = subprocess.run([sys.executable, "-c", _COMPILE_CODE, name, np.dtype(dtype).name],
                         env=env, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"warmup of {name} {dtype} in a subprocess failed:\n{run.stderr}")
    return float(run.stdout.strip().splitlines()[-1])


def compile_seconds(name, dtype, timeout=600):
    """{"cold": s, "warm": s}: warmup in two fresh interpreters sharing one new, empty
    NUMBA_CACHE_DIR: the first compiles everything, the second loads what it cached."""
    with tempfile.TemporaryDirectory(prefix="fastnn-numba-cache-") as cache_dir:
        cold = warmup_in_fresh_interpreter(name, dtype, cache_dir, timeout)
        warm = warmup_in_fresh_interpreter(name, dtype, cache_dir, timeout)
    return {"cold": cold, "warm": warm}
