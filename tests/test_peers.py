"""Every peer (fastnn.peers) against the reference, through fastnn.tolerances.check_backend.

The peers are what the benchmark report times next to fastnn's kernels, so
each must compute what numpy_ref computes, to fastnn.tolerances, before its
speed means anything: forward, loss and gradients, several train_epoch steps
(trajectory tolerance) including a last, shorter batch, and predict, in
float32 and float64, for nets of one and two hidden layers.

PyTorch and JAX are optional: a peer whose library is missing skips with the
install command, except under FASTNN_REQUIRE_PEERS=1, where it fails (an
environment meant to have the peers must not pass by skipping them). The
wrong peers at the end show that the checker catches the usual mistakes.
"""

import gc
import os
import sys
import types

import numpy as np
import pytest

from fastnn import model, peers, tolerances
from fastnn.kernels import numpy_ref as ref
from fastnn.peers import numpy_fast

REQUIRE_ENV = "FASTNN_REQUIRE_PEERS"
DTYPES = ["float32", "float64"]
# (layer sizes, batch size, full batches, samples in a last, shorter batch)
CASES = [
    ([784, 16, 10], 32, 3, 7),
    ([784, 23, 11, 10], 17, 4, 5),
    ([784, 9, 10], 64, 0, 20),  # one batch, shorter than batch_size
]
CASE_IDS = ["784-16-10-b32", "784-23-11-10-b17", "784-9-10-b64"]
N_IMAGES, N_TEST = 400, 600


def load_peer(name):
    """The peer's module; a missing library skips (fails under FASTNN_REQUIRE_PEERS=1)."""
    try:
        return peers.get_peer(name)
    except peers.PeerUnavailable as e:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(params=list(peers.PEERS))
def peer(request):
    return load_peer(request.param)


@pytest.fixture(scope="module")
def data():
    """Synthetic MNIST-like data: train images (400, 784) uint8 (70% zeros), labels
    (400,) int64, test images (600, 784) uint8."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (N_IMAGES + N_TEST, 784)).astype(np.uint8)
    images[rng.random(images.shape) < 0.7] = 0
    return images[:N_IMAGES], rng.integers(0, 10, N_IMAGES), images[N_IMAGES:]


def _params(sizes, dtype, seed=0):
    return model.init_params(sizes, seed=seed, dtype=np.dtype(dtype))


def _rows(backend, params, data, batch_size, n_order):
    images, labels, test_images = data
    X = ref.to_float(images[:batch_size], params[0][0].dtype)
    order = np.random.default_rng(2).permutation(N_IMAGES)[:n_order]
    return tolerances.check_backend(backend, params, X, labels[:batch_size], images, labels,
                                    order, batch_size, 0.05, test_images)


# ---------------------------------------------------------------- agreement


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes, batch_size, steps, tail", CASES, ids=CASE_IDS)
def test_agrees_with_reference(peer, data, dtype, sizes, batch_size, steps, tail):
    rows = _rows(peer, _params(sizes, dtype), data, batch_size, steps * batch_size + tail)
    tolerances.assert_rows(rows, peer.__name__)


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_epoch_contract(peer, data, dtype):
    """Params updated in place (same arrays, same dtype), the return value a float mean
    loss and the accuracy of the samples seen (within one sample of the reference's: a
    near-tie may flip), the inputs untouched."""
    images, labels, _ = data
    order = np.random.default_rng(2).permutation(N_IMAGES)[:3 * 32 + 9]  # last batch of 9
    params, ref_params = _params([784, 12, 10], dtype), _params([784, 12, 10], dtype)
    arrays = [a for pair in params for a in pair]
    before = (images.copy(), labels.copy(), order.copy())
    loss, accuracy = peer.train_epoch(params, images, labels, order, 32, 0.05)
    ref_loss, ref_accuracy = ref.train_epoch(ref_params, images, labels, order, 32, 0.05)
    assert [a for pair in params for a in pair] == arrays  # the same objects
    assert all(a.dtype == np.dtype(dtype) and a.flags.c_contiguous for a in arrays)
    assert isinstance(loss, float) and isinstance(accuracy, float)
    assert abs(accuracy - ref_accuracy) <= 1 / len(order) + 1e-12
    assert loss == pytest.approx(ref_loss, rel=1e-3)  # the trajectory test is the tight one
    for new, old in zip((images, labels, order), before):
        np.testing.assert_array_equal(new, old)
    assert not np.array_equal(params[0][0], _params([784, 12, 10], dtype)[0][0])


def test_predict_returns_int64_labels(peer, data):
    _, _, test_images = data
    labels = peer.predict(_params([784, 7, 10], "float32"), test_images)
    assert labels.dtype == np.int64 and labels.shape == (N_TEST,)
    assert labels.min() >= 0 and labels.max() < 10


def test_out_of_range_index_raises(peer, data):
    """A sample index past the data raises like numpy_ref (a JAX gather would clamp)."""
    images, labels, _ = data
    order = np.array([0, 1, N_IMAGES], np.int64)
    with pytest.raises(IndexError):
        peer.train_epoch(_params([784, 4, 10], "float32"), images, labels, order, 2, 0.1)


def test_warmup_and_version(peer):
    assert peer.warmup([784, 10, 10], np.float32) >= 0.0
    assert isinstance(peer.version(), str) and peer.version()


# ---------------------------------------------------------------- JAX's x64 mode


@pytest.mark.parametrize("name", ["jax-step", "jax-scan"])
def test_jax_float64_leaves_float32_alone(name, data):
    """float64 calls turn x64 on only inside themselves: the flag is off after them and
    float32 results are bit-identical before and after."""
    peer = load_peer(name)
    import jax

    images, labels, test_images = data
    X = ref.to_float(images[:16], np.float32)
    p32 = _params([784, 8, 10], "float32")
    before = peer.forward(p32, X)
    peer.train_epoch(_params([784, 8, 10], "float64"), images, labels, np.arange(40), 16, 0.1)
    assert peer.forward(_params([784, 8, 10], "float64"), X.astype(np.float64)).dtype == np.float64
    assert jax.config.jax_enable_x64 is False
    after = peer.forward(p32, X)
    assert after.dtype == np.float32
    np.testing.assert_array_equal(after, before)


# ---------------------------------------------------------------- registry


def test_registry_names_and_lookup():
    assert list(peers.PEERS) == ["numpy-fast", "torch", "torch-compile", "jax-step", "jax-scan"]
    assert peers.get_peer("numpy-fast") is numpy_fast  # NumPy is always there
    with pytest.raises(ValueError, match="unknown peer 'tensorflow'.*numpy-fast"):
        peers.get_peer("tensorflow")
    status = peers.available()
    assert list(status) == list(peers.PEERS) and status["numpy-fast"] is None
    assert all(v is None or "pip install" in v for v in status.values())


@pytest.mark.parametrize("name, library, hint", [
    ("torch", "torch", "pip install torch==2.13.0"),
    ("torch-compile", "torch", "pip install torch==2.13.0"),
    ("jax-step", "jax", "pip install jax==0.10.2 jaxlib==0.10.2"),
    ("jax-scan", "jax", "pip install jax==0.10.2 jaxlib==0.10.2"),
])
def test_missing_library_gives_reason_and_hint(monkeypatch, name, library, hint):
    """With the library unimportable (None in sys.modules), the peer is reported
    unavailable with the install command, not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, library, None)
    for module in [m for m in sys.modules if m.startswith("fastnn.peers.")
                   and m != "fastnn.peers._data"]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(peers.PeerUnavailable, match=hint):
        peers.get_peer(name)
    assert hint in peers.available([name])[name]


def test_other_import_errors_are_not_hidden(monkeypatch):
    """An ImportError that is not the peer's library missing is a bug: it propagates
    instead of becoming "unavailable" (and a skipped test)."""
    monkeypatch.setitem(peers.PEERS, "jax-step", "fastnn.peers.no_such_module")
    with pytest.raises(ImportError) as info:
        peers.get_peer("jax-step")
    assert not isinstance(info.value, peers.PeerUnavailable)


# ---------------------------------------------------------------- numpy-fast's cache


def test_numpy_fast_converts_each_data_set_once():
    images = np.random.default_rng(0).integers(0, 256, (50, 784)).astype(np.uint8)
    X = numpy_fast.as_float(images, np.float32)
    assert numpy_fast.as_float(images, np.float32) is X  # cached
    np.testing.assert_array_equal(X, ref.to_float(images, np.float32))
    assert numpy_fast.as_float(images, np.float64).dtype == np.float64  # one per dtype
    assert numpy_fast.as_float(images.copy(), np.float32) is not X  # another array
    entries = len(numpy_fast._floats)
    del images, X
    gc.collect()
    assert len(numpy_fast._floats) <= entries - 2  # freed with its array


# ---------------------------------------------------------------- wrong peers


def _drops_last_batch(params, images, labels, order, batch_size, lr):
    whole = len(order) // batch_size * batch_size
    return numpy_fast.train_epoch(params, images, labels, order[:whole], batch_size, lr)


def _loss_after_update(params, images, labels, order, batch_size, lr):
    loss_sum = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        X, y = ref.to_float(images[idx], params[0][0].dtype), labels[idx]
        ref.sgd_step(params, ref.loss_and_grads(params, X, y)[1], lr)
        loss_sum += ref.loss_and_grads(params, X, y)[0] * len(idx)
    return loss_sum / len(order), 0.0


def _summed_grads(params, X, y):
    loss, grads = numpy_fast.loss_and_grads(params, X, y)
    return loss, [(dW * len(X), db * len(X)) for dW, db in grads]


def _float32_inside(params, X):
    p32 = [(W.astype(np.float32), b.astype(np.float32)) for W, b in params]
    return numpy_fast.forward(p32, X.astype(np.float32)).astype(X.dtype)


def _shifted_labels(params, images):
    return (numpy_fast.predict(params, images) + 1) % 10


WRONG = {  # bug -> (the function it replaces, the dtype, the quantities that must fail)
    "none (control)": (None, None, "float32", set()),
    "drops the last, shorter batch": ("train_epoch", _drops_last_batch, "float32",
                                      {"W1 after 4 steps"}),
    "loss measured after the update": ("train_epoch", _loss_after_update, "float32",
                                       {"mean loss over 4 steps"}),
    "gradients summed, not averaged": ("loss_and_grads", _summed_grads, "float32",
                                       {"dW1", "db1", "dW2", "db2"}),
    "float32 inside a float64 call": ("forward", _float32_inside, "float64",
                                      {"probabilities"}),
    "labels off by one class": ("predict", _shifted_labels, "float32", {"predicted labels"}),
}


@pytest.mark.parametrize("bug", list(WRONG))
def test_checker_catches_a_wrong_peer(bug, data):
    attr, fn, dtype, caught_by = WRONG[bug]
    wrong = types.SimpleNamespace(**{f: getattr(numpy_fast, f) for f in (
        "forward", "loss_and_grads", "train_epoch", "predict")})
    if attr:
        setattr(wrong, attr, fn)
    rows = _rows(wrong, _params([784, 16, 10], dtype), data, 32, 3 * 32 + 7)
    failed = {r["quantity"] for r in rows if not r["ok"]}
    assert caught_by <= failed and bool(failed) == bool(caught_by), failed
