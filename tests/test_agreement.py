"""Every backend against the reference: kernels, training, gradients, edge cases.

Backends come from the registry (fastnn.kernels.KERNELS), so a new backend is
tested by adding its registry line; each test runs once per distinct
implementation of what it checks (tests/backends.py). Backend-vs-reference comparisons use
fastnn.tolerances only. The finite-difference check and the naive per-sample
trainer (tests/naive.py) check the reference itself, so agreement with it
means something.

FASTNN_SMALL=1 caps shapes, sample counts and example counts so the module
also runs in minutes with NUMBA_DISABLE_JIT=1 (pure-Python loops).
"""

import contextlib
import itertools
import math
import os
import time

import naive
import numba
import numpy as np
import pytest
from backends import LAYERS, PREDICTORS, TRAINERS, near_ties
from helpers import mnist_like_images, python_lines
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from fastnn import config
from fastnn.kernels import KERNELS, REFERENCE, get_kernel, numba_epoch, numba_narrow, numba_tiles
from fastnn.kernels.numpy_ref import to_float
from fastnn.model import INITS, copy_params, init_params
from fastnn.tolerances import (
    assert_agree,
    assert_rows,
    away_from_kinks,
    batch_rows,
    gradient_magnitudes,
    rtol_for,
)

SMALL = os.environ.get("FASTNN_SMALL") == "1"

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]

# hypothesis: batch and hidden widths up to these, this many examples per backend
MAX_BATCH, MAX_WIDTH, EXAMPLES = (20, 20, 8) if SMALL else (300, 300, 40)
# a first layer of 67 units: the tile kernels' 4-unit blocks with a tail of 3, and
# numba's inked predict (from numba_epoch.INKED_PREDICT_MIN_UNITS = 64 units)
WIDE = [] if SMALL else [[784, 67, 10]]
N_SYNTHETIC = 60 if SMALL else 500  # images in the train_epoch agreement tests
MNIST_STEPS = 20 if SMALL else 200  # steps in the real-data trajectory test


def thread_counts():
    """1, 2 and all threads, as far as this machine has them."""
    n = numba.config.NUMBA_NUM_THREADS
    return sorted({1, min(2, n), n})


@contextlib.contextmanager
def numba_threads(n):
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def warm_kernels():
    """Compile (or load from Numba's cache) every backend's kernels once, up front."""
    rng = np.random.default_rng(0)
    for name in KERNELS:
        kernel = get_kernel(name)
        for dtype in DTYPES:
            kernel.warmup([784, 2, 10], dtype)
            params = init_params([784, 2, 10], 0, dtype)
            X = rng.random((3, 784)).astype(dtype)
            kernel.forward(params, X)
            kernel.loss_and_grads(params, X, np.zeros(3, np.int64))


def random_batch(sizes, m, dtype, init, seed):
    """params from init_params, X in [0, 1) of the params' dtype, int64 labels 0..9."""
    rng = np.random.default_rng(seed)
    params = init_params(sizes, seed, dtype, init)
    X = rng.random((m, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], m)
    return params, X, y


def param_names(params):
    return [f"{w}{i + 1}" for i in range(len(params)) for w in ("W", "b")]


def flat(pairs):
    return [a for pair in pairs for a in pair]


def assert_params_agree(params, ref_params, dtype, what, trajectory=False):
    for name, a, r in zip(param_names(ref_params), flat(params), flat(ref_params)):
        assert a.shape == r.shape and a.dtype == r.dtype, f"{what} {name}: shape/dtype"
        assert_agree(a, r, dtype, f"{what} {name}", trajectory=trajectory)


def assert_batch_agrees(name, params, X, y):
    """forward P, loss and every dW/db of backend `name` against the reference
    (tolerances.batch_rows, every sample judged), of the right shapes and dtype, the
    params left as they were."""
    dtype = params[0][0].dtype
    kernel = get_kernel(name)
    before = copy_params(params)
    P = kernel.forward(params, X)
    assert P.shape == (len(X), params[-1][0].shape[0]) and P.dtype == dtype
    _, grads = kernel.loss_and_grads(params, X, y)
    assert len(grads) == len(params)
    for gname, g, p in zip(param_names(params), flat(grads), flat(params)):
        assert g.shape == p.shape and g.dtype == dtype, f"{name} d{gname}: {g.shape} {g.dtype}"
    assert_rows(batch_rows(kernel, params, X, y, keep_kinks=True), name)
    for a, b in zip(flat(params), flat(before)):
        assert np.array_equal(a, b), f"{name}: forward/loss_and_grads modified the params"


# ---------------------------------------------------------------- 1. kernels, hypothesis


@st.composite
def batches(draw):
    return dict(
        dtype=draw(st.sampled_from(DTYPE_IDS)),
        init=draw(st.sampled_from(INITS)),
        hidden=draw(st.lists(st.integers(1, MAX_WIDTH), min_size=1, max_size=2)),
        m=draw(st.integers(1, MAX_BATCH)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _with_examples(test):
    """Pinned examples on top of the random ones (full-size runs only)."""
    if SMALL:
        return test
    pinned = [
        # the widest, deepest net at the largest batch
        dict(dtype="float32", init="he", hidden=[300, 300], m=300, seed=1),
        dict(dtype="float64", init="uniform", hidden=[300, 300], m=300, seed=1),
        # float32, uniform init, two wide layers: logits of ~150, where softmax
        # turns the logits' float32 rounding (~1e-5 absolute) into P errors of
        # ~3e-5: why P's tolerance scales with max|Z| (tolerances.logit_scale)
        dict(dtype="float32", init="uniform", hidden=[280, 280], m=250, seed=1),
        # one confidently classified sample: loss 0.0061 from logits up to 37;
        # see test_loss_of_a_confident_sample
        dict(dtype="float32", init="uniform", hidden=[198], m=1, seed=0),
        # one sample, confidently right: a float64 loss of 8.6e-12, which the reference
        # and numba round an ulp of 1.0 apart (tolerances.LOSS_MAGNITUDE)
        dict(dtype="float64", init="uniform", hidden=[272], m=1, seed=272),
        # one hidden unit, every sample whose unit is on confidently right: dW1's terms
        # (P_y - 1 ~ 1e-9, from P_y rounded near 1) cancel to 3.5e-10, and two correct
        # float32 computations differ by 4.7e-11: why gradients are judged against their
        # terms' magnitudes (tolerances.gradient_magnitudes)
        dict(dtype="float32", init="uniform", hidden=[1], m=189, seed=189),
    ]
    for case in pinned:
        test = example(case=case)(test)
    return test


@pytest.mark.parametrize("name", LAYERS)
@settings(max_examples=EXAMPLES, deadline=None)
@_with_examples
@given(case=batches())
def test_forward_loss_grads_agree(name, case):
    sizes = [784, *case["hidden"], 10]
    params, X, y = random_batch(sizes, case["m"], case["dtype"], case["init"], case["seed"])
    if case["dtype"] == "float32":  # a draw near a ReLU kink: tolerances.KINK_MARGIN
        assume(away_from_kinks(params, X).all())
    assert_batch_agrees(name, params, X, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradient_bound_is_a_few_rtol_of_the_terms(dtype):
    """The gradients' bound adds rtol times each element's sum of |terms|
    (tolerances.gradient_magnitudes), which is at least |gradient| and, without
    cancellation, of its size: a 0.1% error in the largest element still fails."""
    params, X, y = random_batch([784, 13, 10], 50, dtype, "he", 7)
    _, grads = get_kernel(REFERENCE).loss_and_grads(params, X, y)
    for g, size in zip(flat(grads), flat(gradient_magnitudes(params, X, y))):
        assert (size >= np.abs(g) * (1 - rtol_for(dtype))).all()  # within rounding
        wrong = g.astype(np.float64)
        wrong.flat[np.argmax(np.abs(g))] *= 1.001
        assert_agree(g, g, dtype, magnitude=size)
        with pytest.raises(AssertionError):
            assert_agree(wrong, g, dtype, magnitude=size)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", LAYERS)
def test_sgd_step_agrees(name, dtype):
    params, X, y = random_batch([784, 13, 6, 10], 9, dtype, "uniform", 5)
    _, grads = get_kernel(REFERENCE).loss_and_grads(params, X, y)
    ours, ref = copy_params(params), copy_params(params)
    get_kernel(name).sgd_step(ours, grads, 0.3)
    get_kernel(REFERENCE).sgd_step(ref, grads, 0.3)
    assert_params_agree(ours, ref, dtype, f"{name} sgd_step")
    assert not np.array_equal(ref[0][0], params[0][0])  # the step did move W1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("name", "entry"), [(n, "loss_and_grads") for n in LAYERS]
                         + [(n, "train_epoch") for n in TRAINERS])
def test_loss_of_a_confident_sample(name, entry, dtype):
    """-log P[y] when y is the argmax by a margin of 5: small, and it must stay accurate.

    The net copies chosen logits through (W1 = 0, b1 = logits, W2 = I), so
    the loss is log(1 + sum_c exp(z_c - z_y)) = 0.0061 with z_y = 37.4, and
    the reference gets it to ~0.3x the tolerance. Computed as log-sum-exp
    minus (z_y - max z), the subtraction is exact; letting z_y cancel
    against max z after adding it to log-sum-exp (what fast-math
    reassociation may do) costs half an ulp of 37.4, 2e-6 in float32.
    """
    logits = np.array([37.373264, 32.283756, 19.698233, 11.456707, 25.131477, 15.063572,
                       7.558215, 5.0, 1.0, 2.0])
    params = [(np.zeros((10, 784), dtype), logits.astype(dtype)),
              (np.eye(10, dtype=dtype), np.zeros(10, dtype))]
    X, y = np.zeros((1, 784), dtype), np.array([0])
    loss_ref, _ = get_kernel(REFERENCE).loss_and_grads(params, X, y)
    assert_agree(loss_ref, naive.cross_entropy_loss(params, X, y), dtype,
                 "reference loss vs naive")
    if entry == "loss_and_grads":
        loss, _ = get_kernel(name).loss_and_grads(params, X, y)
    else:  # the same image as uint8 zeros, one batch of one, lr 0
        loss, _ = get_kernel(name).train_epoch(copy_params(params), np.zeros((1, 784), np.uint8),
                                            y, np.arange(1), 1, 0.0)
    assert_agree(loss, loss_ref, dtype, f"{name} {entry} loss of a confident sample",
                 trajectory=entry == "train_epoch")


# ------------------------------------------------------- 2. training through identical batches


@st.composite
def epochs(draw):
    init = draw(st.sampled_from(INITS))
    # uniform init only on narrow nets, like the seed's 784-10-10: wide
    # uniform-init nets start with logits ~150 and losses ~20, and their
    # training is chaotic enough that even float64 rounding grows past the
    # trajectory tolerance within ~50 steps
    width = MAX_WIDTH if init == "he" else min(MAX_WIDTH, 32)
    n = draw(st.integers(1, MAX_BATCH))
    batch_size = draw(st.integers(1, n + 5))
    return dict(
        init=init,
        hidden=draw(st.lists(st.integers(1, width), min_size=1, max_size=2)),
        n=n,
        batch_size=batch_size,
        k=draw(st.integers(1, min(n, 8 * batch_size))),  # samples seen: at most 8 batches
        threads=draw(st.sampled_from(thread_counts())),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@pytest.mark.parametrize("name", TRAINERS)
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(case=epochs())
def test_train_epoch_agrees_on_random_shapes(name, case):
    """A few float64 batches of random size and shape: every tile and thread tail.

    float64 only: in float32 a hidden pre-activation lands within rounding
    (~1e-7) of zero somewhere in about one random wide epoch in thirty; the
    backend and the reference then take opposite sides of the ReLU and both
    trajectories are right, yet far apart (seen: Z = +3.8e-8 in float32
    against -7.9e-8 in float64, then 1e3x the tolerance). The shapes, tails
    and thread splits are the same code in both dtypes; float32 training is
    checked on the fixed cases below.
    """
    dtype, n = np.dtype(np.float64), case["n"]
    images, labels = mnist_like_images(n, case["seed"])
    order = np.random.default_rng(case["seed"]).permutation(n)[: case["k"]]
    params0 = init_params([784, *case["hidden"], 10], case["seed"], dtype, case["init"])
    ours, ref = copy_params(params0), copy_params(params0)
    with numba_threads(case["threads"]):
        loss, acc = get_kernel(name).train_epoch(ours, images, labels, order,
                                              case["batch_size"], 0.05)
    loss_ref, acc_ref = get_kernel(REFERENCE).train_epoch(ref, images, labels, order,
                                                          case["batch_size"], 0.05)
    assert_params_agree(ours, ref, dtype, f"{name} train_epoch", trajectory=True)
    assert_agree(loss, loss_ref, dtype, f"{name} train_epoch mean loss", trajectory=True)
    ties = near_ties(params0, images, labels, order, case["batch_size"], 0.05)
    assert abs(round(acc * case["k"]) - round(acc_ref * case["k"])) <= ties, (acc, acc_ref)


@pytest.mark.parametrize("batch_size", [1, 7, 32, 128, N_SYNTHETIC])
@pytest.mark.parametrize("sizes", [[784, 10, 10], [784, 13, 7, 10]] + WIDE,
                         ids=["784-10-10", "784-13-7-10"] + [f"784-{w[1]}-10" for w in WIDE])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", TRAINERS)
def test_train_epoch_agrees(name, dtype, sizes, batch_size):
    images, labels = mnist_like_images(N_SYNTHETIC, seed=11)
    order = np.random.default_rng(12).permutation(N_SYNTHETIC)
    params0 = init_params(sizes, 13, dtype, "he")
    ours, ref = copy_params(params0), copy_params(params0)

    loss, acc = get_kernel(name).train_epoch(ours, images, labels, order, batch_size, 0.1)
    loss_ref, acc_ref = get_kernel(REFERENCE).train_epoch(ref, images, labels, order,
                                                          batch_size, 0.1)

    assert_params_agree(ours, ref, dtype, f"{name} train_epoch(batch {batch_size})",
                        trajectory=True)
    assert_agree(loss, loss_ref, dtype, f"{name} train_epoch mean loss", trajectory=True)
    # accuracy is a count of argmaxes: equal unless a logit pair is within rounding
    assert round(acc * N_SYNTHETIC) == round(acc_ref * N_SYNTHETIC), (acc, acc_ref)
    assert not np.array_equal(ref[0][0], params0[0][0])


@pytest.mark.parametrize("n", [784, 20, 13])
def test_ink_bounds_hold_every_nonzero_pixel(n):
    """ink_bounds (a uint64 word at a time where the row allows) and nonzero_bounds: no
    ink outside [lo, hi), at most 7 pixels of blank inside at either end (exact for
    nonzero_bounds and rows that are not whole words), (0, 0) for a blank row."""
    from fastnn.kernels.numba_shared import ink_bounds, nonzero_bounds

    rng = np.random.default_rng(n)
    rows = [np.zeros(n, np.uint8), np.full(n, 7, np.uint8)]
    for _ in range(40):
        row = np.zeros(n, np.uint8)
        lo = int(rng.integers(0, n))
        hi = int(rng.integers(lo + 1, n + 1))
        row[[lo, hi - 1]] = rng.integers(1, 256, 2)
        rows.append(row)
    slack = 7 if n % 8 == 0 else 0
    for row in rows:
        ink = np.flatnonzero(row)
        for bounds, most in ((ink_bounds, slack), (nonzero_bounds, 0)):
            lo, hi = bounds(row)
            if ink.size == 0:
                assert (lo, hi) == (0, 0)
            else:
                assert 0 <= lo <= ink[0] and ink[-1] < hi <= n
                assert ink[0] - lo <= most and hi - 1 - ink[-1] <= most


@pytest.mark.parametrize("ns", [1, 4, 6, 13])
def test_spans_cover_every_nonzero_input(ns):
    """Each group of four rows gets the smallest [lo, hi), widened to whole vectors, out of
    which all four rows are zero, whatever bounds of a row's ink widen_span is given
    (exact or a few pixels wider): ink at the very first and last input, blank rows and
    groups, a partial last group."""
    from fastnn.kernels.numba_shared import ink_bounds, nonzero_bounds

    rng = np.random.default_rng(ns)
    X = np.zeros((ns, 784), np.uint8)
    for r in range(ns):
        if r % 5 != 3:  # some blank rows
            lo = int(rng.integers(0, 400))
            hi = int(rng.integers(lo + 1, 785))
            X[r, [lo, hi - 1]] = rng.integers(1, 256, 2)
    X[0, 0] = X[min(2, ns - 1), 783] = 1
    align = numba_tiles.SPAN_ALIGN
    for bounds in (ink_bounds, nonzero_bounds):
        spans = np.full((ns // 4 + 2, 2), -1, np.int64)
        for r in range(ns):
            numba_tiles.widen_span(spans[: (ns + 3) // 4], r, *bounds(X[r]), 784)
        for g in range((ns + 3) // 4):
            ink = np.flatnonzero(X[4 * g: min(4 * g + 4, ns)].any(axis=0))
            lo, hi = spans[g]
            if ink.size == 0:
                assert (lo, hi) == (0, 0)
            else:
                assert lo == ink[0] // align * align
                assert hi == min(784, -(-(ink[-1] + 1) // align) * align)
        assert (spans[(ns + 3) // 4:] == -1).all()  # nothing written past the groups


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("ns", [1, 7, numba_tiles.TILE])
def test_softmax_tile_is_the_row_softmax(dtype, ns):
    """The tile kernels' softmax and cross-entropy (the samples in the vector lanes) take
    numba_shared.softmax_xent_row's steps in its order for each sample: float32 gives the
    same bits (both use numba_intrinsics.exp_nonpositive); float64's np.exp may come from
    a vector library in a vectorised loop, hence 2 ulps. Ties for the largest logit,
    logits far apart, a tile shorter than TILE."""
    from fastnn.kernels.numba_shared import softmax_xent_row

    rng = np.random.default_rng(ns)
    k = 10
    Z = np.zeros((numba_tiles.TILE, k), dtype)
    Z[:ns] = rng.normal(0, 8, (ns, k))
    Z[0, 3] = Z[0, 7] = Z[0].max() + 1  # a tie: the first one is the prediction
    Z[ns - 1, 2] = -200.0  # its exp is no normal float32: 0
    labels = rng.integers(0, k, 50)
    order = rng.permutation(50)[: ns + 3]
    labels[order[3]] = 3  # sample 0's label: its first largest logit
    batches = numba_epoch._batches(np.zeros((50, 784), np.uint8), labels, order, ns, dtype,
                                   None, None, 1)
    inv_m = dtype(1) / dtype(ns)
    D, stats = np.full_like(Z, np.nan), np.zeros(2)
    E = np.full((k + numba_narrow.SOFTMAX_ROWS, ns), np.nan, dtype)  # its scratch
    numba_tiles._softmax_xent_tile(Z, ns, batches, 3, inv_m, D, stats, E)
    want_d, loss, hits = np.full_like(Z, np.nan), 0.0, 0
    for s in range(ns):
        row_loss, hit = softmax_xent_row(Z[s], labels[order[3 + s]], inv_m, want_d[s])
        loss, hits = loss + float(row_loss), hits + hit  # as stats: float64 sums
    ulps = 0 if dtype == np.float32 else 2
    assert_ulps(D[:ns], want_d[:ns], ulps)
    assert np.isnan(D[ns:]).all()  # nothing written past the tile's samples
    assert hits == stats[1]
    assert stats[0] == pytest.approx(loss, rel=float(ulps * ns * np.finfo(dtype).eps), abs=0)


def assert_ulps(got, want, ulps):
    """got and want (float arrays) at most ``ulps`` units in the last place apart."""
    spacing = np.spacing(np.maximum(np.abs(got), np.abs(want)).astype(got.dtype))
    assert (np.abs(got - want) <= ulps * spacing).all(), np.abs(got - want).max()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(dict.fromkeys([*TRAINERS, *PREDICTORS])))
@pytest.mark.parametrize("hidden", [10, numba_epoch.INKED_PREDICT_MIN_UNITS])
def test_blank_rows_and_images(name, dtype, hidden):
    """Images with blank rows (the tile kernels' input spans skip them) and blank images,
    in batches and tiles of every remainder mod 4; at 64 units predict takes the inked
    path (small: the JIT-less session runs it too)."""
    images, labels = mnist_like_images(23, seed=141)
    params0 = init_params([784, hidden, 10], 142, dtype, "he")
    order = np.random.default_rng(143).permutation(23)
    for batch_size in (5, 6, 23):
        assert_training_agrees(name, params0, images, labels, order, batch_size)
    assert_predict_agrees(name, params0, images)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reference_train_epoch_matches_naive(dtype):
    """The oracle itself against minibatch SGD written one sample at a time."""
    images, labels = mnist_like_images(40, seed=21)
    order = np.random.default_rng(22).permutation(40)
    params0 = init_params([784, 6, 5, 10], 23, dtype, "uniform")
    ref = copy_params(params0)
    slow = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params0]
    loss_ref, acc_ref = get_kernel(REFERENCE).train_epoch(ref, images, labels, order, 7, 0.05)
    loss, acc = naive.train_epoch_one_sample_at_a_time(slow, images, labels, order, 7, 0.05)
    assert_params_agree(ref, [(W.astype(dtype), b.astype(dtype)) for W, b in slow], dtype,
                        "reference train_epoch vs naive", trajectory=True)
    assert_agree(loss_ref, loss, dtype, "reference train_epoch loss vs naive", trajectory=True)
    assert acc_ref == acc


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [[784, 10, 10], [784, 32, 16, 10]],
                         ids=["784-10-10", "784-32-16-10"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", TRAINERS)
def test_mnist_trajectory_agrees(mnist, name, dtype, sizes):
    """MNIST_STEPS steps of batch 32 through identical batches of real MNIST."""
    images, labels = mnist["train"]
    batch = 32
    order = np.random.default_rng(31).permutation(len(images))[: MNIST_STEPS * batch]
    params0 = init_params(sizes, 32, dtype, "he")
    ours, ref = copy_params(params0), copy_params(params0)

    loss, acc = get_kernel(name).train_epoch(ours, images, labels, order, batch, 0.1)
    loss_ref, acc_ref = get_kernel(REFERENCE).train_epoch(ref, images, labels, order, batch, 0.1)

    assert_params_agree(ours, ref, dtype, f"{name} after {MNIST_STEPS} MNIST steps",
                        trajectory=True)
    assert_agree(loss, loss_ref, dtype, f"{name} mean loss over the run", trajectory=True)
    assert round(acc * len(order)) == round(acc_ref * len(order)), (acc, acc_ref)
    assert loss_ref < math.log(10), "the reference did not learn: the comparison is vacuous"


# ------------------------------------------------------- 3. gradients by finite differences


# Central differences in float64: the truncation error is ~eps^2 |L'''| / 6
# and the rounding error ~1e-16 |L| / eps, so eps = 1e-5 (near the optimum,
# cbrt(1e-16)) keeps both around 1e-10, four decades below the gradients
# checked. A step moves a pre-activation by at most eps * max|input| (~1e-4
# here), so a batch is used only when every hidden |Z| >= 1e-3: no step can
# cross a ReLU kink, where a central difference would average two slopes.
FD_EPS = 1e-5
FD_MIN_KINK_DISTANCE = 1e-3


def _kink_free_batch(sizes, m, init, seed):
    """float64 params and a batch far from every ReLU kink (redrawn until so)."""
    for attempt in range(100):
        params, X, y = random_batch(sizes, m, np.float64, init, seed + 1000 * attempt)
        if naive.min_distance_to_relu_kink(params, X) >= FD_MIN_KINK_DISTANCE:
            return params, X, y
    raise AssertionError("could not draw a batch away from the ReLU kinks")


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("sizes", [[784, 5, 10], [784, 4, 3, 10]], ids=["784-5-10", "784-4-3-10"])
@pytest.mark.parametrize("name", [REFERENCE, *LAYERS])
def test_gradients_match_finite_differences(name, sizes, init):
    kernel = get_kernel(name)
    params, X, y = _kink_free_batch(sizes, 6, init, seed=41)
    loss, grads = kernel.loss_and_grads(params, X, y)
    # the loss being differentiated is the right one
    assert_agree(loss, naive.cross_entropy_loss(params, X, y), np.float64, f"{name} loss vs naive")

    # every bias and every weight of the small layers; 40 random weights of W1
    rng = np.random.default_rng(42)
    entries = {}
    for i, (W, b) in enumerate(params):
        entries[(i, "W")] = (rng.choice(W.size, size=40, replace=False) if W.size > 200
                             else np.arange(W.size))
        entries[(i, "b")] = np.arange(b.size)
    numeric = naive.finite_difference_grads(
        lambda p: kernel.loss_and_grads(p, X, y)[0], params, FD_EPS, entries)

    for (i, which), idx in entries.items():
        analytic = grads[i][0 if which == "W" else 1].reshape(-1)[idx]
        err = naive.relative_error(analytic, numeric[(i, which)])
        assert err <= 1e-6, f"{name} d{which}{i + 1}: relative error {err:.3g} vs finite diffs"
    # not vacuous: the last layer's bias gradient is mean(P - Y), never all zero
    assert np.max(np.abs(numeric[(len(params) - 1, "b")])) > 1e-3


# ---------------------------------------------------------------- 4. edge cases


def assert_probabilities(P, dtype):
    assert np.all(np.isfinite(P)) and np.all(P >= 0) and np.all(P <= 1)
    sums = P.astype(np.float64).sum(axis=1)
    # ten roundings in the exponentials and the normalisation: a few ulp
    assert np.max(np.abs(sums - 1)) <= 16 * np.finfo(dtype).eps, sums


# The edge-case tests below run every name that implements something of its own
# and check, under each, what it implements: the per-layer functions, training,
# predict (tests/backends.py).
EDGE = list(dict.fromkeys([REFERENCE, *LAYERS, *TRAINERS, *PREDICTORS]))


def assert_edge_case(name, params, X, y):
    """Finite, normalised, and the same as the reference."""
    if name not in (REFERENCE, *LAYERS):
        return
    dtype = params[0][0].dtype
    kernel = get_kernel(name)
    assert_probabilities(kernel.forward(params, X), dtype)
    loss, grads = kernel.loss_and_grads(params, X, y)
    assert np.isfinite(loss)
    for g in flat(grads):
        assert np.all(np.isfinite(g))
    if name != REFERENCE:
        assert_batch_agrees(name, params, X, y)


def assert_training_agrees(name, params0, images, labels, order, batch_size, lr=0.1):
    if name not in (REFERENCE, *TRAINERS):
        return
    dtype = params0[0][0].dtype
    ours, ref = copy_params(params0), copy_params(params0)
    loss, acc = get_kernel(name).train_epoch(ours, images, labels, order, batch_size, lr)
    loss_ref, acc_ref = get_kernel(REFERENCE).train_epoch(ref, images, labels, order,
                                                          batch_size, lr)
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0
    for a in flat(ours):
        assert np.all(np.isfinite(a))
    assert_params_agree(ours, ref, dtype, f"{name} train_epoch", trajectory=True)
    assert_agree(loss, loss_ref, dtype, f"{name} train_epoch loss", trajectory=True)
    assert acc == acc_ref


def assert_predict_agrees(name, params, images):
    if name not in (REFERENCE, *PREDICTORS):
        return
    dtype = params[0][0].dtype
    got = get_kernel(name).predict(params, images)
    want = get_kernel(REFERENCE).forward(params, to_float(images, dtype)).argmax(axis=1)
    assert got.dtype == np.int64 and got.shape == (len(images),)
    assert np.array_equal(got, want), f"{name} predict differs at {np.flatnonzero(got != want)}"


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(dict.fromkeys([REFERENCE, *LAYERS, *TRAINERS])))
def test_batch_of_one(name, dtype, init):
    params, X, y = random_batch([784, 9, 10], 1, dtype, init, 51)
    assert_edge_case(name, params, X, y)
    images, labels = mnist_like_images(5, seed=52)
    assert_training_agrees(name, params, images, labels, np.array([3]), 1)
    assert_training_agrees(name, params, images, labels, np.arange(5), 1)


@pytest.mark.parametrize("threads", thread_counts())
@pytest.mark.parametrize("m", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", EDGE)
def test_batch_not_a_multiple_of_threads(name, dtype, m, threads):
    params, X, y = random_batch([784, 8, 6, 10], m, dtype, "he", 61)
    images, labels = mnist_like_images(2 * m + 1, seed=62)
    with numba_threads(threads):
        assert_edge_case(name, params, X, y)
        # batches of m, then a last batch of 1; and a batch larger than the data
        assert_training_agrees(name, params, images, labels, np.arange(2 * m + 1), m)
        assert_training_agrees(name, params, images, labels, np.arange(2 * m + 1), 4 * m)
        assert_predict_agrees(name, params, images)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", EDGE)
def test_all_zero_images(name, dtype, init):
    # with "he" (b = 0) every logit is exactly 0: a 10-way tie everywhere
    params = init_params([784, 7, 10], 71, dtype, init)
    y = np.arange(6) % 10
    assert_edge_case(name, params, np.zeros((6, 784), dtype), y)
    images = np.zeros((6, 784), np.uint8)
    assert_training_agrees(name, params, images, y, np.arange(6), 4)
    assert_predict_agrees(name, params, images)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", EDGE)
def test_saturated_images(name, dtype, init):
    params = init_params([784, 7, 5, 10], 81, dtype, init)
    y = np.arange(6) % 10
    assert_edge_case(name, params, np.ones((6, 784), dtype), y)
    images = np.full((6, 784), 255, np.uint8)
    assert_training_agrees(name, params, images, y, np.arange(6), 4, lr=0.01)
    assert_predict_agrees(name, params, images)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(dict.fromkeys([REFERENCE, *LAYERS, *PREDICTORS])))
def test_huge_logits(name, dtype, init):
    params, X, y = random_batch([784, 12, 10], 16, dtype, init, 91)
    W, _ = params[-1]
    W *= dtype(1e4)
    Z = naive.logits(params, X)
    assert 1e4 <= np.max(np.abs(Z)) <= 1e7, np.max(np.abs(Z))  # the regime under test
    assert_edge_case(name, params, X, y)
    loss, _ = get_kernel(name).loss_and_grads(params, X, y)
    assert loss > 100  # the labels are random: most are far from the argmax
    images, _ = mnist_like_images(16, seed=92)
    assert_predict_agrees(name, params, images)


# ---------------------------------------------------------------- 5. determinism


@pytest.mark.parametrize("threads", thread_counts())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", [REFERENCE, *TRAINERS])
def test_train_epoch_is_deterministic(name, dtype, threads):
    images, labels = mnist_like_images(N_SYNTHETIC, seed=101)
    order = np.random.default_rng(102).permutation(N_SYNTHETIC)
    runs = []
    with numba_threads(threads):
        for _ in range(2):
            params = init_params([784, 16, 10], 103, dtype, "he")
            stats = get_kernel(name).train_epoch(params, images, labels, order, 32, 0.1)
            runs.append((params, stats))
    (p1, s1), (p2, s2) = runs
    assert s1 == s2
    for a, b in zip(flat(p1), flat(p2)):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------- 6. predict


@pytest.mark.parametrize("ink", ["dense", "digits"])
@pytest.mark.parametrize("sizes", [[784, 10, 10], [784, 20, 9, 10], [784, 300, 10]],
                         ids=["784-10-10", "784-20-9-10", "784-300-10"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", [REFERENCE, *PREDICTORS])
def test_predict_is_argmax_of_reference_forward(name, dtype, sizes, ink):
    """784-300-10: a first layer wide enough for the inked path (numba_epoch's
    INKED_PREDICT_MIN_UNITS), taken on digit-like images with blank pixels, not on
    random bytes (too much ink: the tiles)."""
    n = 5000 if not SMALL else 300 if sizes[1] < 100 else 60  # 5000: > numpy_ref's chunk
    rng = np.random.default_rng(111)
    images = (rng.integers(0, 256, (n, 784)).astype(np.uint8) if ink == "dense"
              else mnist_like_images(n, 111)[0])
    if sizes[1] == 300:  # else this case tests nothing new
        assert numba_epoch.INKED_PREDICT_MIN_UNITS <= 300
        assert (numba_epoch.ink_fraction(images) <= numba_epoch.INKED_MAX_INK) == (
            ink == "digits")
    params = init_params(sizes, 112, dtype, "uniform")
    # keep the images whose logits are distinct: rounding cannot flip their argmax
    Z = naive.logits(params, to_float(images, dtype))
    images = images[naive.logit_margin(Z) > 1e-3 * np.abs(Z).max()]
    assert len(images) > 0.9 * n
    assert_predict_agrees(name, params, images)
    assert len(np.unique(get_kernel(name).predict(params, images))) > 1


# ---------------------------------------------------------------- 7. registry


def test_reference_is_registered():
    assert REFERENCE in KERNELS


def test_unknown_kernel_lists_known_names():
    for bad in ("nope", None, ["numba"]):
        with pytest.raises(ValueError) as excinfo:
            get_kernel(bad)
        for known in KERNELS:
            assert known in str(excinfo.value)


@pytest.mark.parametrize("name", list(KERNELS))
def test_backend_exposes_the_contract(name):
    kernel = get_kernel(name)
    for attr in ("forward", "loss_and_grads", "activations", "train_epoch", "gather",
                 "predict", "sgd_step", "apply_update", "warmup"):
        assert callable(getattr(kernel, attr, None)), f"{name} lacks {attr}"
    assert kernel.warmup([784, 3, 10], np.float32) >= 0.0


def test_each_implementation_is_tested_once():
    """The numba names share their per-layer functions; training and predict differ."""
    assert LAYERS == ["numba"]
    assert TRAINERS == ["numba:samples", "numba:rows", "numba:inked", "numba:split",
                        "numba:simple"]
    assert PREDICTORS == ["numba:samples", "numba:simple"]  # "rows" predicts with tiles too


@pytest.mark.parametrize("hidden", [10, 400])
def test_numba_picks_its_strategy(hidden):
    """"numba" trains and predicts exactly (bit for bit) like the strategy choose() picks:
    "split" for a small net at a small batch on a machine of several threads ("samples"
    on one, or for shifted batches), "inked" for a wide first layer on sparse ink
    (digits), at any thread count."""
    from fastnn.kernels.numba_epoch import choose, ink_fraction

    if SMALL and hidden == 400:
        pytest.skip("a 318k-parameter net in pure-Python loops takes minutes; the JIT "
                    "session runs this case")
    sizes = [784, hidden, 10]
    images, labels = mnist_like_images(64, seed=121)
    order = np.random.default_rng(122).permutation(64)
    shifts = np.random.default_rng(124).integers(-1, 2, (64, 2))
    for threads, moved in itertools.product(thread_counts(), (None, shifts)):
        with numba_threads(threads):
            # the lanes are the machine's threads, however many run
            picked = choose(sizes, config.max_threads(), ink_fraction(images), 16,
                            moved is not None)
            small = "split" if config.max_threads() > 1 and moved is None else "samples"
            assert picked == (small if hidden == 10 else "inked")
            runs = []
            for name in ("numba", f"numba:{picked}"):
                params = init_params(sizes, 123)
                stats = get_kernel(name).train_epoch(params, images, labels, order, 16, 0.1,
                                                     None, moved)
                runs.append((stats, params, get_kernel(name).predict(params, images)))
            (s1, p1, l1), (s2, p2, l2) = runs
            assert s1 == s2 and np.array_equal(l1, l2)
            for a, b in zip(flat(p1), flat(p2)):
                assert np.array_equal(a, b)


def test_choose_split_for_narrow_nets_at_small_batches():
    """choose's thresholds: "split" from 2 lanes for a first layer narrower than the
    inked one at batches up to SPLIT_MAX_BATCH (None: the training command's default),
    neither shifted nor distorted."""
    from fastnn import train

    choose = numba_epoch.choose
    assert numba_epoch.DEFAULT_BATCH == train.DEFAULTS["batch_size"]
    for bs in (1, 32, numba_epoch.SPLIT_MAX_BATCH, None):
        assert choose([784, 10, 10], 2, 0.2, bs) == "split"
        assert choose([784, 63, 10], 4, 0.2, bs) == "split"
        assert choose([784, 10, 10], 1, 0.2, bs) == "samples"
        assert choose([784, 10, 10], 2, 0.2, bs, moved=True) == "samples"
    assert choose([784, 10, 10], 2, 0.2, numba_epoch.SPLIT_MAX_BATCH + 1) == "samples"
    assert choose([784, 64, 10], 2, 0.2, 32) == "inked"
    assert choose([784, 64, 10], 2, 0.5, 32) == "samples"


_WARM_THEN_RUN = """import numpy as np
from fastnn.kernels import get_kernel, numba_regions, numba_tiles
from fastnn.model import init_params
kernels = (numba_tiles.train_epoch_rows.jitted, numba_tiles.predict_tiles.jitted,
           numba_regions._region5, numba_regions._region6)
get_kernel("numba").warmup([784, 300, 10], np.float32)
warm = [len(k.signatures) for k in kernels]
rng = np.random.default_rng(151)
images = rng.integers(0, 256, (64, 784)).astype(np.uint8)
images[rng.random(images.shape) < 0.8] = 0  # sparse ink: the inked paths
params = init_params([784, 300, 10], 152)
get_kernel("numba").train_epoch(params, images, rng.integers(0, 10, 64), np.arange(64), 16, 0.1)
get_kernel("numba").predict(params, images)
print(warm)
print([len(k.signatures) for k in kernels])"""


def test_warmup_compiles_what_a_wide_net_runs():
    """In a fresh process, warmup loads (or compiles) every kernel a wide net's training
    and predict then run on sparse ink: their first call compiles nothing more (which
    the training command would count as training time)."""
    if SMALL or numba.config.DISABLE_JIT:
        pytest.skip("about the JIT's compiled signatures")
    warm, used = python_lines(_WARM_THEN_RUN)[:2]  # signatures of each kernel
    assert warm == used


_WARM_MOVED_THEN_RUN = """import numpy as np
from fastnn import config
from fastnn.augment import Distortion
from fastnn.kernels import get_kernel, numba_epoch, numba_regions, numba_split, numba_tiles
from fastnn.model import init_params
kernels = (numba_tiles._samples_thread, numba_split._epoch_thread, numba_regions._region6)
get_kernel("numba").warmup([784, 10, 10], np.float32, 32, moved=True)
warm = [len(k.signatures) for k in kernels]
rng = np.random.default_rng(153)
images = rng.integers(0, 256, (64, 784)).astype(np.uint8)
params, labels = init_params([784, 10, 10], 154), rng.integers(0, 10, 64)
numba_kernel = get_kernel("numba")
numba_kernel.train_epoch(params, images, labels, np.arange(64), 32, 0.1, None,
                         rng.integers(-1, 2, (64, 2)))
numba_kernel.train_epoch(params, images, labels, np.arange(64), 32, 0.1, None, None,
                         Distortion(155, 34.0, 4.0, 10.0, 0.1, 0.2))
print(numba_epoch.choose([784, 10, 10], config.max_threads(), 0.2, 32, True))
print(warm)
print([len(k.signatures) for k in kernels])"""


def test_warmup_compiles_what_moved_batches_run():
    """In a fresh process, warmup(moved=True) compiles (or loads) the kernel that
    shifted and distorted training then runs, and not the plain one that would go
    unused (numba:split's at 784-10-10): the training command's --shift and
    distortions."""
    if SMALL or numba.config.DISABLE_JIT:
        pytest.skip("about the JIT's compiled signatures")
    import json

    strategy, warm, used = python_lines(_WARM_MOVED_THEN_RUN)[:3]
    assert strategy == "samples"
    assert warm == used
    samples, split, _ = json.loads(warm)
    assert samples == 1 and split == 0


def test_numba_trains_params_in_place_only_when_flat():
    """The fused kernels update the flat vector itself: a plain list is refused, not
    silently left unchanged."""
    params = init_params([784, 5, 10], 131)
    plain = [(W.copy(), b.copy()) for W, b in params]
    images, labels = mnist_like_images(8, seed=132)
    with pytest.raises(TypeError, match="flat_params"):
        get_kernel("numba").train_epoch(plain, images, labels, np.arange(8), 4, 0.1)
    before = params.theta.copy()
    get_kernel("numba").train_epoch(params, images, labels, np.arange(8), 4, 0.1)
    assert not np.array_equal(params.theta, before)
    assert np.shares_memory(params[0][0], params.theta)


@pytest.mark.parametrize("name", TRAINERS)
def test_results_do_not_depend_on_the_thread_count(name):
    """A batch is cut into as many lanes as the machine has threads, whatever runs:
    1 thread, all threads, and a run whose pieces switch between them (the Pacer's
    probes) train bit for bit alike."""
    from fastnn.kernels.numba_epoch import Pacer

    images, labels = mnist_like_images(N_SYNTHETIC, seed=141)
    order = np.random.default_rng(142).permutation(N_SYNTHETIC)
    runs = []
    for threads, piece in [(1, None), (numba.config.NUMBA_NUM_THREADS, None),
                           (numba.config.NUMBA_NUM_THREADS, 3)]:
        backend = get_kernel(name)
        backend._pacers.clear()
        if piece:  # pieces of 3 batches: the pacer tries both thread counts in turn
            Pacer.PIECE_SECONDS, before = 0.0, Pacer.PIECE_SECONDS
        with numba_threads(threads):
            params = init_params([784, 12, 7, 10], 143)
            stats = backend.train_epoch(params, images, labels, order, 17, 0.1)
        if piece:
            Pacer.PIECE_SECONDS = before
        runs.append((stats, params))
    (s1, p1), *others = runs
    for s, p in others:
        assert s == s1
        for a, b in zip(flat(p), flat(p1)):
            assert np.array_equal(a, b)


def test_backend_tells_how_long_each_thread_count_trained():
    """seconds_on_threads, the pacer's choice as the bench reports it: each piece's time
    under its thread count, since forget_pacing."""
    images, labels = mnist_like_images(N_SYNTHETIC, seed=144)
    backend = get_kernel("numba")
    backend.forget_pacing()
    assert backend.seconds_on_threads() == {}
    params = init_params([784, 12, 10], 145)
    order = np.arange(N_SYNTHETIC)
    backend.train_epoch(params, images, labels, order, 17, 0.1)  # may compile: not counted
    before = backend.seconds_on_threads()
    t0 = time.perf_counter()
    backend.train_epoch(params, images, labels, order, 17, 0.1)
    elapsed = time.perf_counter() - t0
    after = backend.seconds_on_threads()
    assert set(after) <= {1, numba.get_num_threads()}
    assert 0 < sum(after.values()) - sum(before.values()) <= elapsed
    backend.forget_pacing()
    assert backend.seconds_on_threads() == {}


def test_pacer_does_not_switch_on_one_slow_piece():
    from fastnn.kernels.numba_epoch import Pacer

    def piece(threads, rate, seconds=0.01):
        pacer.record(threads, int(rate * seconds), seconds)

    pacer = Pacer(2)
    piece(2, 500e3)
    piece(1, 200e3)
    assert pacer.threads() == 2
    piece(2, 150e3)  # a hiccup (a thread descheduled a few ms): all threads are kept
    assert pacer.threads() == 2
    piece(2, 150e3)  # slow again (another busy process): one thread
    assert pacer.threads() == 1
    piece(1, 200e3, Pacer.PROBE_FIRST)
    assert pacer.threads() == 2  # the probe...
    piece(2, 500e3)  # ...finds the other process gone
    assert pacer.threads() == 2


def test_pacer_learns_from_a_short_try_once_the_rate_is_known():
    """A try sized by a rate measured while another process was busy runs in a few ms
    once it has gone: it still counts (its rate can only be too low), or the pacer
    would try the same count again and again and never learn."""
    from fastnn.kernels.numba_epoch import Pacer

    pacer = Pacer(2)
    pacer.record(2, 5000, 0.01)  # 500k/s
    pacer.record(1, 2000, 0.01)  # 200k/s
    pacer.record(2, 200, 0.01)  # another process: 20k/s twice in a row...
    pacer.record(2, 200, 0.01)
    assert pacer.threads() == 1  # ...one thread
    while pacer.threads() == 1:
        pacer.record(1, 2000, 0.01)
    n = pacer.samples(1, 2)  # the try, sized by the busy spell's 20k/s: 200 samples...
    assert n == int(Pacer.PROBE_SECONDS * 20e3)
    pacer.record(2, n, n / 500e3)  # ...run in 0.4 ms: the other process has gone
    assert pacer.threads() == 2 and pacer.rate[2] == pytest.approx(500e3)
    for _ in range(3):  # short and slower (an epoch's last batch, threads waking): no news
        pacer.record(2, 100, 0.001)
    assert pacer.threads() == 2 and pacer.rate[2] == pytest.approx(500e3)


def test_pacer_tries_both_and_keeps_the_faster():
    from fastnn.kernels.numba_epoch import Pacer

    def piece(threads, rate, seconds=0.01, compiled=False):
        pacer.record(threads, int(rate * seconds), seconds, compiled)

    pacer = Pacer(2)
    assert pacer.threads() == 2 and pacer.samples(100, 2) == 2000
    piece(2, 1e3, 30.0, compiled=True)  # compiling: tells nothing
    pacer.record(2, 2000, 0.001)  # too short to tell anything: not counted...
    assert pacer.threads() == 2 and pacer.samples(100, 2) == 8000  # ...a longer piece next
    assert pacer.seconds == {2: 0.001}  # (it ran, though: its time is kept)
    piece(2, 100e3)
    assert pacer.threads() == 1
    piece(1, 95e3)  # slower: all threads are kept
    assert pacer.threads() == 2
    piece(1, 105e3)  # faster, if only just: neither count is favoured
    assert pacer.threads() == 1
    piece(1, 200e3)  # one thread is faster (another busy process)
    assert pacer.threads() == 1
    piece(1, 200e3, Pacer.PROBE_FIRST)  # after PROBE_FIRST seconds of training...
    assert pacer.threads() == 2  # ...all threads are tried again
    piece(2, 500e3)  # the other process is gone
    assert pacer.threads() == 2
    assert pacer.samples(100, 2) == 100 * int(Pacer.PIECE_SECONDS * 500e3 // 100)
    # a try of the other count is shorter: it mostly runs at the slower rate
    assert pacer.samples(100, 1) == 100 * int(Pacer.PROBE_SECONDS * 200e3 // 100)
    piece(2, 500e3, Pacer.PROBE_FIRST)
    assert pacer.threads() == 1  # tried again after PROBE_FIRST...
    piece(1, 200e3)  # ...one thread still loses: wait twice as long
    piece(2, 500e3, Pacer.PROBE_FIRST)
    assert pacer.threads() == 2
    piece(2, 500e3, Pacer.PROBE_FIRST)
    assert pacer.threads() == 1
    for _ in range(20):  # it keeps losing: the wait doubles, up to PROBE_MAX
        piece(1, 200e3)
        assert pacer.interval <= Pacer.PROBE_MAX
        waited = 0.0
        while pacer.threads() == 2:
            piece(2, 500e3, 0.1)
            waited += 0.1
        assert waited <= Pacer.PROBE_MAX + 0.2
    assert pacer.interval == Pacer.PROBE_MAX
    assert sum(pacer.seconds.values()) == pytest.approx(pacer.clock + 0.001)
