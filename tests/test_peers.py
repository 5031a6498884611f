"""Every peer (fastnn.peers) against the reference, through tolerances.check_backend: its
speed means nothing unless it computes what numpy_ref computes (forward, loss and gradients,
train_epoch steps including a last, shorter batch, predict; float32 and float64; one and two
hidden layers). A peer whose library is missing skips with the install command, except under
FASTNN_REQUIRE_PEERS=1, where it fails (an environment meant to have the peers must not pass
by skipping them). The wrong peers at the end show the checker catching the usual mistakes.
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

DTYPES = ["float32", "float64"]
N_IMAGES, N_TEST = 400, 600


@pytest.fixture(params=list(peers.PEERS))
def name(request):
    return request.param


@pytest.fixture
def peer(name):
    try:
        return peers.get_peer(name)
    except peers.PeerUnavailable as e:
        if os.environ.get("FASTNN_REQUIRE_PEERS") == "1":
            pytest.fail(f"FASTNN_REQUIRE_PEERS=1 but {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def data():
    """Train images (400, 784) uint8 (70% zeros), labels (400,) int64, test images (600, 784)."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (N_IMAGES + N_TEST, 784)).astype(np.uint8)
    images[rng.random(images.shape) < 0.7] = 0
    return images[:N_IMAGES], rng.integers(0, 10, N_IMAGES), images[N_IMAGES:]


def _params(sizes, dtype):
    return model.init_params(sizes, seed=0, dtype=np.dtype(dtype))


def _rows(backend, params, data, batch_size, n_order):
    images, labels, test_images = data
    X = ref.to_float(images[:batch_size], params[0][0].dtype)
    order = np.random.default_rng(2).permutation(N_IMAGES)[:n_order]
    return tolerances.check_backend(backend, params, X, labels[:batch_size], images, labels,
                                    order, batch_size, 0.05, test_images)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes, batch_size, steps, tail", [
    ([784, 16, 10], 32, 3, 7),  # (layer sizes, batch size, full batches, a last batch of)
    ([784, 23, 11, 10], 17, 4, 5),
    ([784, 9, 10], 64, 0, 20),  # one batch, shorter than batch_size
], ids=["784-16-10-b32", "784-23-11-10-b17", "784-9-10-b64"])
def test_agrees_with_reference(name, peer, data, dtype, sizes, batch_size, steps, tail):
    rows = _rows(peer, _params(sizes, dtype), data, batch_size, steps * batch_size + tail)
    tolerances.assert_rows(rows, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_contract(peer, data, dtype):
    """train_epoch updates the params in place (same arrays, same dtype) and returns a float
    mean loss and the accuracy of the samples seen (within one sample of the reference's:
    a near-tie may flip), the inputs untouched; a sample index past the data raises like
    numpy_ref (a JAX gather would clamp); predict returns int64 labels."""
    images, labels, test_images = data
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
    with pytest.raises(IndexError):
        peer.train_epoch(params, images, labels, np.array([0, 1, N_IMAGES]), 2, 0.1)
    predicted = peer.predict(params, test_images)
    assert predicted.dtype == np.int64 and predicted.shape == (N_TEST,)
    assert predicted.min() >= 0 and predicted.max() < 10


def test_warmup_and_version(peer):
    assert peer.warmup([784, 10, 10], np.float32) >= 0.0
    assert isinstance(peer.version(), str) and peer.version()


@pytest.mark.parametrize("name", ["jax-step", "jax-scan"])
def test_jax_float64_leaves_float32_alone(peer, data):
    """float64 calls turn x64 on only inside themselves: the flag is off after them and
    float32 results are bit-identical before and after."""
    import jax

    images, labels, _ = data
    X = ref.to_float(images[:16], np.float32)
    p32 = _params([784, 8, 10], "float32")
    before = peer.forward(p32, X)
    peer.train_epoch(_params([784, 8, 10], "float64"), images, labels, np.arange(40), 16, 0.1)
    assert peer.forward(_params([784, 8, 10], "float64"), X.astype(np.float64)).dtype == np.float64
    assert jax.config.jax_enable_x64 is False
    after = peer.forward(p32, X)
    assert after.dtype == np.float32
    np.testing.assert_array_equal(after, before)


def test_registry_names_and_lookup():
    assert list(peers.PEERS) == ["numpy-fast", "torch", "torch-compile", "jax-step", "jax-scan"]
    assert peers.get_peer("numpy-fast") is numpy_fast  # NumPy is always there
    with pytest.raises(ValueError, match="unknown peer 'tensorflow'.*numpy-fast"):
        peers.get_peer("tensorflow")
    status = peers.available()
    assert list(status) == list(peers.PEERS) and status["numpy-fast"] is None
    assert all(v is None or "pip install" in v for v in status.values())


@pytest.mark.parametrize("name", ["torch", "torch-compile", "jax-step", "jax-scan"])
def test_missing_library_gives_reason_and_hint(monkeypatch, name):
    """With the library unimportable (None in sys.modules), the peer is reported
    unavailable with the install command, not an ImportError traceback."""
    library = name.split("-")[0]
    hint = {"torch": "pip install torch==2.13.0",
            "jax": "pip install jax==0.10.2 jaxlib==0.10.2"}[library]
    monkeypatch.setitem(sys.modules, library, None)
    for module in [m for m in sys.modules if m.startswith("fastnn.peers.")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(peers.PeerUnavailable, match=hint):
        peers.get_peer(name)
    assert hint in peers.available([name])[name]


def test_other_import_errors_are_not_hidden(monkeypatch):
    """An ImportError that is not the peer's library missing is a bug: it propagates
    instead of becoming "unavailable" (and a skipped test)."""
    monkeypatch.setitem(peers.PEERS, "jax-step", ("fastnn.peers.no_such_module", ("jax",), ""))
    with pytest.raises(ImportError) as info:
        peers.get_peer("jax-step")
    assert not isinstance(info.value, peers.PeerUnavailable)


def test_torch_compile_alone_needs_a_compiler(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("CXX", "no-such-c++")
    monkeypatch.delitem(sys.modules, "fastnn.peers.torch_peers", raising=False)
    with pytest.raises(peers.PeerUnavailable, match="'no-such-c\\+\\+' was not found"):
        peers.get_peer("torch-compile")
    assert peers.available(["torch"]) == {"torch": None}


def test_numpy_fast_converts_each_data_set_once():
    images = np.random.default_rng(0).integers(0, 256, (50, 784)).astype(np.uint8)
    X = numpy_fast.as_float(images, np.float32)
    assert numpy_fast.as_float(images, np.float32) is X  # cached
    np.testing.assert_array_equal(X, ref.to_float(images, np.float32))
    assert numpy_fast.as_float(images, np.float64).dtype == np.float64  # one per dtype
    assert numpy_fast.as_float(images.copy(), np.float32) is not X  # another array
    entries = len(peers._per_data_set)
    del images, X
    gc.collect()
    assert len(peers._per_data_set) <= entries - 2  # freed with its array


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


WRONG = {  # bug -> (the function it replaces, the wrong one, the dtype, what must fail)
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
