"""The benchmarks of `python -m fastnn.bench` (README: Benchmarks), timed by pytest-benchmark.

Every case is checked against the reference before it is timed, and fails
instead of timing a wrong kernel; ``warmup`` and one untimed call come first,
so compilation is never timed. The grid comes from $FASTNN_BENCH (JSON).
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from fastnn import blas, config, model, peers, tolerances, train
from fastnn.bench import MAX_ROUNDS, build_parser, settings
from fastnn.kernels import KERNELS, get_kernel
from fastnn.kernels.numpy_ref import to_float

SETTINGS = settings(build_parser().parse_args([]))  # the command's defaults
SETTINGS.update(json.loads(os.environ.get("FASTNN_BENCH", "{}")))
THREADS = SETTINGS["threads"] or config.max_threads()
LR = train.DEFAULTS["lr"]
SETTLE_SECONDS = 0.25
SGEMM_THEN_N = 1024  # 2 GFLOP a product: ~0.2 s in all


# Timed first for each net, one right after the other: the ratios the report and the
# README quote are then of figures measured seconds apart, not minutes (the machine's
# slow and fast phases last minutes, and moved a ratio measured across them by 1.6x)
HEADLINE = ("numba", "jax-scan", "numpy-fast")


def _cases(scaling=None):
    """(name, hidden, batch size, dtype, threads), net by net: numba, numba again at 1
    thread for scaling (``scaling``, default SETTINGS'), the other HEADLINE names, then
    the rest in registry order."""
    names = SETTINGS["names"]
    scaling = SETTINGS["scaling"] if scaling is None else scaling
    first = [n for n in HEADLINE if n in names]
    cases = []
    for d in SETTINGS["dtype"]:
        for h, b in zip(SETTINGS["hidden"], SETTINGS["batch_size"]):
            group = [(n, h, b, d, THREADS) for n in first + [n for n in names
                                                              if n not in first]]
            if scaling and THREADS > 1 and "numba" in names:
                group.insert(1, ("numba", h, b, d, 1))
            cases += group
    return cases


def _id(case):  # (name, hidden, batch size, dtype, threads)
    return "{}-784-{}-10-b{}-{}-t{}".format(*case)


def _seconds(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def load_data(source="auto"):
    """(train images, labels, test images, labels, what they are): MNIST, or synthetic
    arrays of the same shape when it is not to be had (said on stderr, and in the report
    from each case's ``data``) or source is "synthetic"."""
    what = "synthetic images of MNIST's shapes (--data synthetic)"
    if source != "synthetic":
        from fastnn.data import DataError, load_mnist

        try:
            return (*load_mnist("train"), *load_mnist("test"), "MNIST")
        except DataError as e:
            if source == "mnist":
                raise
            what = f"synthetic images of MNIST's shapes (MNIST could not be loaded: {e})"
            print(f"fastnn.bench: warning: {what}", file=sys.stderr)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70000, 784)).astype(np.uint8)
    images[rng.random(images.shape) < 0.8] = 0  # mostly background, as in MNIST
    labels = rng.integers(0, 10, 70000)
    return images[:60000], labels[:60000], images[60000:], labels[60000:], what


@pytest.fixture(scope="session")
def data():
    return load_data(SETTINGS["data"])


def backend(name):
    """A registered backend or a peer (peers.PeerUnavailable if it is not installed)."""
    return get_kernel(name) if name in KERNELS else peers.get_peer(name)


def epoch(name, kernel, params, data, batch_size):
    """(order, distortion=None) -> (loss, accuracy): one epoch the way a user of ``name``
    runs it."""
    images, labels = data[0], data[1]
    if name in KERNELS:  # the call python -m fastnn.train makes
        return lambda order, distort=None: train.train_one_epoch(
            kernel, params, images, labels, order, None, distort, batch_size, LR, None, None)
    return lambda order: kernel.train_epoch(params, images, labels, order, batch_size, LR)


_checked = {}


def checked(name, hidden, batch_size, dtype, data):
    """(backend, its params, the worst difference from the reference), checked once per case."""
    kernel = backend(name)
    params = model.init_params(model.layer_sizes([hidden]), seed=0, dtype=np.dtype(dtype))
    key = (name, hidden, batch_size, dtype)
    if key not in _checked:
        images, labels, test_images = data[:3]
        rng = np.random.default_rng(1)
        idx = rng.permutation(len(images))[:batch_size]
        rows = tolerances.check_backend(kernel, params, to_float(images[idx], dtype),
                                        labels[idx], images, labels,
                                        rng.permutation(len(images))[:4 * batch_size],
                                        batch_size, LR, test_images[:2000])
        tolerances.assert_rows(rows, f"{name} 784-{hidden}-10 {dtype}")
        _checked[key] = max(r["max_rel"] for r in rows if r["rtol"] > 0)
        # NumPy's BLAS threads spin for ~0.1 s after the reference's last product: a
        # multi-threaded run started inside that window shares its cores with them
        time.sleep(SETTLE_SECONDS)
    return kernel, params, _checked[key]


@contextlib.contextmanager
def _case(benchmark, data, name, hidden, batch_size, dtype, threads):
    """(backend, params), checked, warmed up and described in extra_info, at ``threads``
    Numba, BLAS and PyTorch threads (XLA sizes its pool when JAX starts: the JAX peers
    skip at fewer). A peer that is not installed skips, saying how to install it."""
    from threadpoolctl import threadpool_limits

    try:
        backend(name)
    except peers.PeerUnavailable as e:
        pytest.skip(str(e))
    if name.startswith("jax") and threads < config.max_threads():
        pytest.skip(f"{name}: XLA sizes its thread pool when JAX starts, so it runs on all "
                    f"{config.max_threads()} threads, not {threads}")
    numba_threads = config.set_threads(None)
    config.set_threads(threads)
    torch = sys.modules["torch"] if name.startswith("torch") else None
    if torch:
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            kernel, params, worst = checked(name, hidden, batch_size, dtype, data)
            if hasattr(kernel, "forget_pacing"):  # as a fresh `python -m fastnn.train`
                kernel.forget_pacing()
            sizes = model.sizes_of(params)
            flops = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
            benchmark.extra_info.update(
                name=name, kind="backend" if name in KERNELS else "peer", hidden=hidden,
                net="-".join(map(str, sizes)), batch_size=batch_size, dtype=dtype,
                compile_seconds=kernel.warmup(sizes, np.dtype(dtype)), worst_difference=worst,
                # forward 2 n_in n_out per layer, the weight gradient as much, the input
                # gradient as much again for every layer but the first
                train_flop=2 * (3 * flops - sizes[0] * sizes[1]),
                data=data[4], threads=threads)
            yield kernel, params
    finally:
        config.set_threads(numba_threads)
        if torch:
            torch.set_num_threads(torch_threads)


def _rounds(seconds):
    """--rounds, or more for a fast case (an untimed round took ``seconds``): enough to
    last about SETTINGS["min_seconds"]."""
    return max(SETTINGS["rounds"],
               min(MAX_ROUNDS, int(SETTINGS["min_seconds"] / max(seconds, 1e-4))))


def _time_epochs(benchmark, run, draw, samples, kernel=None, **info):
    """Two untimed epochs (the first compiles what warmup could not, XLA per shape; the
    second sizes the rounds, _rounds), then the timed rounds: an epoch each over
    ``draw()``'s arguments (a fresh shuffle, ...), drawn untimed, the params training on.
    Returns the last round's result. For a numba ``kernel``, also how long the rounds ran
    on each thread count (its Pacer's choice: all threads or one)."""
    first = _seconds(run, *draw())
    second = _seconds(run, *draw())
    benchmark.extra_info.update(samples=samples, warmup_epoch_seconds=[first, second], **info)
    paced = getattr(kernel, "seconds_on_threads", None)
    before = paced() if paced else {}
    result = benchmark.pedantic(run, setup=lambda: (draw(), {}), rounds=_rounds(second),
                                iterations=1)
    if paced:
        benchmark.extra_info["seconds_on_threads"] = {
            str(t): s - before.get(t, 0.0) for t, s in paced().items()}
    return result


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_train_epoch(benchmark, data, case):
    images, rng = data[0], np.random.default_rng(2)
    with _case(benchmark, data, *case) as (kernel, params):
        loss, _ = _time_epochs(benchmark, epoch(case[0], kernel, params, data, case[2]),
                               lambda: (rng.permutation(len(images)),), len(images), kernel)
    if case[4] == 1 and THREADS > 1:
        # The machine's own gain from its threads at this minute, beside the scaling
        # case's: on a shared machine it comes and goes in phases (a loop that never
        # left registers ran 1.7x slower per thread on 2 threads in some, 1.0x in others)
        benchmark.extra_info["sgemm_then"] = {
            str(k): v for k, v in blas.sgemm_gflops(SGEMM_THEN_N, repeats=5).items()}
    assert np.isfinite(loss)


@pytest.mark.skipif(not SETTINGS["distortion"], reason="distortion not asked for")
@pytest.mark.parametrize("case,part", [(c, p) for c in _cases() if c[0] == "numba"
                                       and c[4] == THREADS for p in ("epoch", "distorting")],
                         ids=lambda v: v if isinstance(v, str) else _id(v))
def test_train_epoch_distorted(benchmark, data, case, part):
    """test_train_epoch with the elastic and affine distortion of --preset record, drawn
    afresh every round as training draws it (part "epoch"); then, right after it in the
    same minute (the machine's speed drifts over minutes), the same distortion alone: the
    epoch's images distorted 1,024 at a time on all threads, no training ("distorting").
    Their ratio is what the distortion itself costs an epoch. The distorted batches are
    checked against the reference's first (tolerances.images_row)."""
    from fastnn.kernels import REFERENCE

    images, rng = data[0], np.random.default_rng(4)
    record = train.parse_args(["--preset", "record"])
    with _case(benchmark, data, *case) as (kernel, params):
        dtype, distort = params[0][0].dtype, train.draw_distortion(rng, record)
        idx = rng.permutation(len(images))[:case[2]]
        got, want = (k.gather(images, idx, dtype, None, distort)
                     for k in (kernel, get_kernel(REFERENCE)))
        tolerances.assert_rows([tolerances.images_row(got, want, dtype, distort)],
                               f"{case[0]}'s distorted batch")
        if part == "epoch":
            run = epoch(case[0], kernel, params, data, case[2])
        else:
            def run(order, d):
                for start in range(0, len(order), 1024):
                    kernel.gather(images, order[start:start + 1024], dtype, None, d)
        result = _time_epochs(benchmark, run, lambda: (rng.permutation(len(images)),
                                                       train.draw_distortion(rng, record)),
                              len(images), distortion=train.augmentation_text(record)[2:],
                              part=part)
    if part == "epoch":
        assert np.isfinite(result[0])  # the loss


@contextlib.contextmanager
def _busy_process():
    """Another CPU-bound process (a Python loop) running on the machine meanwhile."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # running before the timing starts
        yield
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.skipif(not SETTINGS["contention"] or THREADS < 2,
                    reason="contention not asked for (or one thread only)")
# with its own 1-thread case, --no-scaling or not: the table pairs the two
@pytest.mark.parametrize("case", [c for c in _cases(scaling=True) if c[0] == "numba"], ids=_id)
def test_train_epoch_contended(benchmark, data, case):
    """test_train_epoch while another busy process holds a core: what a user on a shared
    machine sees, at all threads (numba_epoch.Pacer's choice) and at 1."""
    images, rng = data[0], np.random.default_rng(3)
    with _case(benchmark, data, *case) as (kernel, params), _busy_process():
        loss, _ = _time_epochs(benchmark, epoch(case[0], kernel, params, data, case[2]),
                               lambda: (rng.permutation(len(images)),), len(images), kernel)
    assert np.isfinite(loss)


# one case per name, net and dtype, at the full thread count (batch 128: the check's)
@pytest.mark.parametrize("case", list(dict.fromkeys(
    (n, h, 128, d, THREADS) for n, h, _, d, t in _cases() if t == THREADS)), ids=_id)
def test_predict(benchmark, data, case):
    test_images = data[2]
    with _case(benchmark, data, *case) as (kernel, params):
        first, second = (_seconds(kernel.predict, params, test_images) for _ in range(2))
        benchmark.extra_info.update(samples=len(test_images),
                                    warmup_epoch_seconds=[first, second])
        labels = benchmark.pedantic(kernel.predict, (params, test_images),
                                    rounds=_rounds(second), iterations=1)
    assert labels.shape == data[3].shape


def cold_warmup(name, dtype):
    """(setup, statement): the code test_compile and asv's timeraw_cold_warmup run in a
    fresh interpreter, the statement numba backend ``name``'s warmup() of 784-10-10 (it
    returns the seconds it took)."""
    return ("import numpy as np\nfrom fastnn.kernels import get_kernel\n",
            f"get_kernel({name!r}).warmup([784, 10, 10], np.dtype({dtype!r}))")


@pytest.mark.skipif(not SETTINGS["compile"], reason="compile times not asked for")
@pytest.mark.parametrize("dtype", SETTINGS["dtype"])
@pytest.mark.parametrize("name", [n for n in KERNELS if n.startswith("numba")
                                  and n in SETTINGS["names"]])
def test_compile(benchmark, name, dtype):
    """warmup()'s own seconds in a fresh interpreter: with an empty Numba cache (timed
    here, a round is the whole interpreter), then with the cache that run filled."""
    with tempfile.TemporaryDirectory(prefix="fastnn-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)

        def warmup():
            setup, statement = cold_warmup(name, dtype)
            run = subprocess.run([sys.executable, "-c", f"{setup}print({statement})"], env=env,
                                 capture_output=True, text=True, timeout=900, check=True)
            return float(run.stdout.split()[-1])

        cold = benchmark.pedantic(warmup, rounds=1, iterations=1)
        benchmark.extra_info.update(name=name, dtype=dtype, cold_seconds=cold,
                                    warm_seconds=warmup())
