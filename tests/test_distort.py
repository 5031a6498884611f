"""Elastic and affine distortions: the reference against the definition, every backend
against the reference, and training with distortion on.

The reference (fastnn/augment.py) is checked against tests/naive.py's
one-pixel-at-a-time version of the README's equations (Python-int hashes,
a direct 2-D Gaussian sum) and against SplitMix64's published outputs. Every
backend's distorted batches must match the reference's within
tolerances.distortion_atol (its docstring derives the bound), on random
batch shapes, and train through them like the reference does.
"""

import contextlib
import math
import os

import naive
import numba
import numpy as np
import pytest
from backends import TRAINERS, near_ties
from helpers import python_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnn import augment
from fastnn.augment import Distortion
from fastnn.kernels import REFERENCE, get_kernel
from fastnn.kernels.numpy_ref import shift_images, to_float
from fastnn.model import copy_params, init_params
from fastnn.tolerances import assert_agree, distortion_atol

SMALL = os.environ.get("FASTNN_SMALL") == "1"
EXAMPLES = 6 if SMALL else 30
N_TRAIN = 48 if SMALL else 200  # images in the two-epoch training test

# With NUMBA_DISABLE_JIT=1 (nox's nojit session) the kernels' uint64 hash arithmetic runs
# on NumPy scalars, which wrap as intended but warn on every overflow
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")
SIMARD = dict(alpha=34.0, sigma=4.0)
AFFINE = dict(rotate=12.0, scale=0.15, shear=0.3)


def digits(n, seed):
    """uint8 (n, 784): a bright blob per image (a smooth 'digit' with large gradients,
    like MNIST's strokes), plus random labels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:28, 0:28]
    cy, cx = rng.uniform(9, 19, (2, n, 1, 1))
    r2 = (y - cy) ** 2 / rng.uniform(4, 30, (n, 1, 1)) + (x - cx) ** 2 / rng.uniform(4, 30,
                                                                                      (n, 1, 1))
    images = np.clip(255 * np.exp(-r2) * 1.3, 0, 255).astype(np.uint8).reshape(n, 784)
    return images, rng.integers(0, 10, n)


@contextlib.contextmanager
def numba_threads(n):
    """Run with n Numba threads (at most as many as the machine has)."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


# ---------------------------------------------------------------- 1. the reference


def test_hash_is_splitmix64():
    """mix(seed + n G) is SplitMix64's n-th output: the first outputs for seed 0 are
    published (e.g. in the reference C code's test vectors)."""
    first = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    n = np.arange(1, 4, dtype=np.uint64)
    assert [int(v) for v in augment.mix(n * augment.GOLDEN)] == first
    assert [naive.splitmix64_mix((int(i) * 0x9E3779B97F4A7C15) % 2**64) for i in n] == first


def test_uniform_noise_is_exact_and_uniform():
    h = augment.hashes(2**64 - 1, np.arange(200))
    for bits in (augment.hi24(h), augment.lo24(h)):
        assert bits.max() < 2**24
        u32, u64 = augment.uniform(bits, np.float32), augment.uniform(bits, np.float64)
        assert np.array_equal(u32.astype(np.float64), u64)  # exact in both dtypes
        assert -1 <= u64.min() and u64.max() < 1
        # 157,200 draws: mean 0 +- 0.0015 (1 sigma), variance 1/3
        assert abs(u64.mean()) < 0.01 and abs(u64.var() - 1 / 3) < 0.01
    # distinct samples and keys give different noise
    assert not np.array_equal(h[0], h[1])
    assert not np.array_equal(augment.hashes(1, [0]), augment.hashes(2, [0]))


def test_gaussian_taps():
    for sigma in (0.3, 1.0, 4.0, 6.5, 9.0):
        g = augment.gaussian_taps(sigma)
        R = augment.radius(sigma)
        assert len(g) == 2 * R + 1 and R == min(math.ceil(3 * sigma), 27)
        assert np.array_equal(g, g[::-1])  # symmetric: the kernels pair g_k with g_-k
        assert abs(g.sum() - 1) < 1e-15 and np.argmax(g) == R


def test_smoothing_is_the_2d_gaussian():
    rng = np.random.default_rng(1)
    U = rng.uniform(-1, 1, (2, 28, 28))
    sigma = 2.5
    got = augment.smooth(U, augment.gaussian_taps(sigma))
    g = augment.gaussian_taps(sigma)
    R = len(g) // 2
    for m in range(2):
        for y, x in [(0, 0), (13, 14), (27, 3), (5, 27)]:
            want = math.fsum(g[a + R] * g[b + R] * U[m, y + a, x + b]
                             for a in range(-R, R + 1) for b in range(-R, R + 1)
                             if 0 <= y + a < 28 and 0 <= x + b < 28)
            assert abs(got[m, y, x] - want) < 1e-15


def test_displacements_have_the_expected_size():
    """Away from the frame, alpha G * U has standard deviation alpha sqrt(1/3) sum g^2."""
    d = Distortion(7, **SIMARD)
    h = augment.hashes(d.key, np.arange(400))
    taps = augment.gaussian_taps(d.sigma)
    U = augment.uniform(augment.hi24(h[:, :784]), np.float64).reshape(-1, 28, 28)
    dx = d.alpha * augment.smooth(U, taps)[:, 12:16, 12:16]
    want = d.alpha * math.sqrt(1 / 3) * np.sum(taps**2)
    assert abs(dx.std() / want - 1) < 0.05, (dx.std(), want)  # 1.38 px for Simard's setting


def test_reference_matches_the_equations_pixel_by_pixel():
    images, _ = digits(3, seed=2)
    samples = np.array([5, 0, 123456])
    shifts = np.array([[0, 0], [1, -2], [-1, 0]])
    for settings_ in (SIMARD, dict(SIMARD, **AFFINE), dict(alpha=8.0, sigma=1.5, rotate=30.0)):
        d = Distortion(2**63 + 12345, **settings_)
        got = augment.distort(to_float(images, np.float64), samples, d, shifts)
        for i in range(3):
            want = naive.distort_one(to_float(images[i], np.float64), d.key, samples[i],
                                     shift=shifts[i], **settings_)
            np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-12)


def test_identity_and_shifts_are_exact():
    """No distortion at all is the image itself; with shifts, exactly shift_images."""
    images, _ = digits(6, seed=3)
    shifts = np.random.default_rng(3).integers(-3, 4, (6, 2))
    d = Distortion(9, alpha=0.0)
    for dtype in (np.float32, np.float64):
        for name in (REFERENCE, *TRAINERS):
            gather = get_kernel(name).gather
            assert np.array_equal(gather(images, np.arange(6), dtype, None, d),
                                  to_float(images, dtype))
            assert np.array_equal(gather(images, np.arange(6), dtype, shifts, d),
                                  to_float(shift_images(images, shifts), dtype))


def test_affine_parts():
    h = augment.hashes(3, np.arange(50))
    rot = augment.affine_maps(h[:, -2], h[:, -1], Distortion(0, rotate=20.0), np.float64)
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(2), atol=1e-15)  # orthogonal
    angles = np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    assert np.abs(angles).max() <= 20 and np.abs(angles).max() > 15
    sc = augment.affine_maps(h[:, -2], h[:, -1], Distortion(0, scale=0.2), np.float64)
    s = sc[:, 0, 0]
    assert np.allclose(sc[:, 1, 1], s) and np.all(sc[:, 0, 1] == 0) and np.all(sc[:, 1, 0] == 0)
    assert 0.8 <= s.min() < 0.85 and 1.15 < s.max() <= 1.2
    sh = augment.affine_maps(h[:, -2], h[:, -1], Distortion(0, shear=0.5), np.float64)
    assert np.all(sh[:, 0, 0] == 1) and np.all(sh[:, 1, 1] == 1) and np.all(sh[:, 1, 0] == 0)
    assert np.abs(sh[:, 0, 1]).max() <= 0.5


def test_bilinear_sampling():
    X = np.arange(784, dtype=np.float64).reshape(1, 28, 28) / 783
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    assert np.array_equal(augment.bilinear(X, y[None], x[None]), X)  # integer positions
    half = augment.bilinear(X, y[None] + 0.5, x[None])[0]
    assert np.allclose(half[:27], (X[0, :27] + X[0, 1:]) / 2)
    assert np.allclose(half[27], X[0, 27] / 2)  # half of the last row: zeros below
    far = augment.bilinear(X, y[None] + 40, x[None] - 1e9)
    assert np.all(far == 0)


def test_distortion_checks_its_settings():
    for bad in (dict(sigma=0.0), dict(alpha=-1.0), dict(alpha=np.nan), dict(scale=1.0),
                dict(rotate=181.0), dict(shear=np.inf)):
        with pytest.raises(ValueError, match="must be in"):
            augment.check(Distortion(0, **bad))
    with pytest.raises(ValueError, match="key"):
        augment.check(Distortion(2**64))
    with pytest.raises(TypeError, match="Distortion"):
        augment.check((0, 34.0, 4.0))


# ---------------------------------------------------------------- 2. backends agree


@st.composite
def distortions(draw):
    n = draw(st.integers(1, 40))
    return dict(
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        n=n,
        k=draw(st.integers(1, 80)),  # order positions: samples may repeat
        key=draw(st.integers(0, 2**64 - 1)),
        alpha=draw(st.sampled_from([0.0, 5.0, 34.0, 80.0])),
        sigma=draw(st.sampled_from([0.5, 2.0, 4.0, 6.0])),
        affine=draw(st.booleans()),
        shift=draw(st.sampled_from([0, 1, 3])),
        threads=draw(st.sampled_from([1, 2])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@pytest.mark.parametrize("name", TRAINERS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(case=distortions())
def test_distorted_batches_agree(name, case):
    """Random batches: sizes, samples (repeated too), keys, settings, shifts, threads."""
    rng = np.random.default_rng(case["seed"])
    images, _ = digits(case["n"], case["seed"])
    order = rng.integers(0, case["n"], case["k"])
    shifts = (rng.integers(-case["shift"], case["shift"] + 1, (case["k"], 2))
              if case["shift"] else None)
    d = Distortion(case["key"], case["alpha"], case["sigma"],
                   **(AFFINE if case["affine"] else {}))
    dtype = case["dtype"]
    with numba_threads(case["threads"]):
        got = get_kernel(name).gather(images, order, dtype, shifts, d)
    want = get_kernel(REFERENCE).gather(images, order, dtype, shifts, d)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == (case["k"], 784)
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    atol = distortion_atol(dtype, d.alpha, d.sigma)
    assert diff <= atol, f"{name}: distorted images differ by {diff:.3g} > {atol:.3g}"
    # the same sample gets the same distortion wherever it sits in the order
    first = {}
    for s, j in enumerate(order):
        if shifts is None and j in first:
            assert np.array_equal(got[s], got[first[j]])
        first.setdefault(j, s)


def edge_images(copies):
    """uint8 (13 copies, 784): blank, white, one pixel at each corner and edge's middle
    and at the centre, a full row and a full column at the frame's edge: where the Numba
    kernels' neighbours clamped inside the frame and their tent weights must still give
    the reference's zeros outside it."""
    patterns = np.zeros((13, 28, 28), np.uint8)
    patterns[1] = 255
    for i, (y, x) in enumerate([(0, 0), (0, 27), (27, 0), (27, 27), (0, 13), (27, 13),
                                (13, 0), (13, 27), (13, 14)]):
        patterns[2 + i, y, x] = 200
    patterns[11, 27, :] = 90
    patterns[12, :, 0] = 90
    return np.repeat(patterns.reshape(13, 784), copies, axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", TRAINERS)
def test_blank_images_and_ink_at_the_frame_edge_agree(name, dtype):
    copies = 4 if SMALL else 20
    images = edge_images(copies)
    order = np.arange(len(images))  # every copy its own field
    shifts = np.random.default_rng(9).integers(-2, 3, (len(images), 2))
    for d in (Distortion(11, 34.0, 4.0, **AFFINE), Distortion(12, 80.0, 2.0)):
        got = get_kernel(name).gather(images, order, dtype, shifts, d)
        want = get_kernel(REFERENCE).gather(images, order, dtype, shifts, d)
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        atol = distortion_atol(dtype, d.alpha, d.sigma)
        assert diff <= atol, f"{name}: distorted images differ by {diff:.3g} > {atol:.3g}"
        assert not got[:copies].any()  # the blank image stays blank


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", TRAINERS)
def test_distortion_changes_images_and_depends_on_key_and_sample(name, dtype):
    images, _ = digits(8, seed=5)
    gather = get_kernel(name).gather
    a = gather(images, np.arange(8), dtype, None, Distortion(1, **SIMARD))
    b = gather(images, np.arange(8), dtype, None, Distortion(2, **SIMARD))
    plain = to_float(images, dtype)
    moved = np.abs(a - plain).max(axis=1)
    assert np.all(moved > 0.1), moved  # every image visibly distorted
    assert np.all(np.abs(a - b).max(axis=1) > 0.1)  # another epoch, other fields
    # the order does not matter: sample j keeps its field
    perm = np.random.default_rng(5).permutation(8)
    assert np.array_equal(gather(images, perm, dtype, None, Distortion(1, **SIMARD)), a[perm])


@pytest.mark.parametrize("name", TRAINERS)
def test_distorted_batches_do_not_depend_on_the_thread_count(name):
    images, _ = digits(50, seed=6)
    order = np.random.default_rng(6).permutation(50)
    d = Distortion(11, **SIMARD, **AFFINE)
    runs = []
    for threads in (1, 2):
        with numba_threads(threads):
            runs.append(get_kernel(name).gather(images, order, np.float32, None, d))
    assert np.array_equal(runs[0], runs[1])


# ---------------------------------------------------------------- 3. training with distortion


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", TRAINERS)
def test_training_with_distortion_agrees(name, dtype):
    """Two epochs of batches of 8 with elastic + affine distortion and shifts: each variant
    gathers the same distorted batches as the reference inside its fused epoch."""
    x, y = digits(N_TRAIN, seed=7)
    rng = np.random.default_rng(7)
    params = init_params([784, 20, 10], seed=7, dtype=dtype)
    ours, ref, plain = copy_params(params), copy_params(params), copy_params(params)
    for epoch in range(2):
        order, shifts = rng.permutation(N_TRAIN), rng.integers(-1, 2, (N_TRAIN, 2))
        d = Distortion(100 + epoch, **SIMARD, **AFFINE)
        get_kernel(name).train_epoch(ours, x, y, order, 8, 0.05, None, shifts, d)
        get_kernel(REFERENCE).train_epoch(ref, x, y, order, 8, 0.05, None, shifts, d)
        get_kernel(REFERENCE).train_epoch(plain, x, y, order, 8, 0.05, None, shifts)
    for a, r in zip(ours, ref):
        assert_agree(a[0], r[0], dtype, f"{name} distorted W", trajectory=True)
        assert_agree(a[1], r[1], dtype, f"{name} distorted b", trajectory=True)
    assert not np.allclose(plain[0][0], ref[0][0])  # the distortion changed the training


@st.composite
def epochs(draw):
    n = draw(st.integers(1, 60))
    batch_size = draw(st.integers(1, n + 5))
    return dict(n=n, batch_size=batch_size, k=draw(st.integers(1, min(n, 6 * batch_size))),
                hidden=draw(st.lists(st.integers(1, 40), min_size=1, max_size=2)),
                threads=draw(st.sampled_from([1, 2])), key=draw(st.integers(0, 2**64 - 1)),
                seed=draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("name", TRAINERS)
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(case=epochs())
def test_train_epoch_with_distortion_agrees_on_random_shapes(name, case):
    """float64 (see test_agreement's test of the same name: float32 ReLU ties make
    random wide float32 trajectories diverge legitimately)."""
    images, labels = digits(case["n"], case["seed"])
    order = np.random.default_rng(case["seed"]).permutation(case["n"])[: case["k"]]
    params0 = init_params([784, *case["hidden"], 10], case["seed"], np.float64)
    ours, ref = copy_params(params0), copy_params(params0)
    d = Distortion(case["key"], **SIMARD, **AFFINE)
    with numba_threads(case["threads"]):
        loss, acc = get_kernel(name).train_epoch(ours, images, labels, order,
                                                 case["batch_size"], 0.05, None, None, d)
    loss_ref, acc_ref = get_kernel(REFERENCE).train_epoch(ref, images, labels, order,
                                                          case["batch_size"], 0.05, None, None, d)
    for a, r in zip(ours, ref):
        assert_agree(a[0], r[0], np.float64, f"{name} W", trajectory=True)
        assert_agree(a[1], r[1], np.float64, f"{name} b", trajectory=True)
    assert_agree(loss, loss_ref, np.float64, f"{name} loss", trajectory=True)
    ties = near_ties(params0, images, labels, order, case["batch_size"], 0.05, d)
    assert abs(round(acc * case["k"]) - round(acc_ref * case["k"])) <= ties, (acc, acc_ref)


@pytest.mark.parametrize("name", TRAINERS)
def test_fused_step_with_distortion_is_the_gradient(name):
    """One plain-SGD batch of distorted images through the fused epoch: the step it takes,
    (theta_before - theta_after) / lr, is the gradient of the loss on the reference's
    distorted batch, checked by central differences (float64, away from ReLU kinks;
    see test_agreement's finite-difference test for eps and the kink distance)."""
    images, labels = digits(6, seed=8)
    order = np.arange(6)
    for attempt in range(50):
        d = Distortion(1000 + attempt, **SIMARD, **AFFINE)
        params = init_params([784, 5, 10], seed=8 + attempt, dtype=np.float64)
        X = get_kernel(REFERENCE).gather(images, order, np.float64, None, d)
        if naive.min_distance_to_relu_kink(params, X) >= 1e-3:
            break
    else:
        raise AssertionError("could not draw a batch away from the ReLU kinks")
    stepped = copy_params(params)
    lr = 1.0
    get_kernel(name).train_epoch(stepped, images, labels, order, 6, lr, None, None, d)
    rng = np.random.default_rng(8)
    entries = {(0, "W"): rng.choice(params[0][0].size, 40, replace=False),
               (0, "b"): np.arange(5), (1, "W"): np.arange(50), (1, "b"): np.arange(10)}
    numeric = naive.finite_difference_grads(lambda p: naive.cross_entropy_loss(p, X, labels),
                                            params, 1e-5, entries)
    for (i, which), idx in entries.items():
        j = 0 if which == "W" else 1
        step = ((params[i][j] - stepped[i][j]) / lr).reshape(-1)[idx]
        err = naive.relative_error(step, numeric[(i, which)])
        assert err <= 1e-6, f"{name} d{which}{i + 1}: relative error {err:.3g}"
    assert np.max(np.abs(numeric[(0, "W")])) > 1e-4  # the distorted inputs reach W1


def test_train_epoch_refuses_a_bad_distortion():
    params = init_params([784, 3, 10])
    x, y = digits(4, seed=9)
    for name in (REFERENCE, *TRAINERS):
        with pytest.raises(ValueError, match="sigma"):
            get_kernel(name).train_epoch(params, x, y, np.arange(4), 2, 0.1, None, None,
                                         Distortion(0, 34.0, 0.0))


_DISTORT_DIGITS = """import hashlib, sys
import numpy as np
from fastnn.augment import Distortion
from fastnn.kernels import get_kernel
images = np.random.default_rng(61).integers(0, 256, (200, 784)).astype(np.uint8)
for dtype in (np.float32, np.float64):
    out = get_kernel("numba").gather(images, np.arange(200), dtype, None,
                                     Distortion(62, 34.0, 4.0, 10.0, 0.1, 0.2))
    print(hashlib.sha256(out.tobytes()).hexdigest())"""


def test_cold_and_warm_cache_distort_alike(tmp_path):
    """A process that compiles the distortion and one that loads it from Numba's cache
    give the same bits (with fast-math they did not: a run's first training, on a cold
    cache, differed from the same run repeated)."""
    if numba.config.DISABLE_JIT:
        pytest.skip("about compiled code")
    cold, warm = (python_lines(_DISTORT_DIGITS, NUMBA_CACHE_DIR=str(tmp_path))
                  for _ in range(2))
    assert cold == warm
