"""Peers: what a user would pick instead of fastnn, for the benchmarks.

A peer has the backends' ``forward``, ``loss_and_grads``, ``train_epoch``
(plain SGD: ``(params, images, labels, order, batch_size, lr)``), ``predict``,
``warmup`` and ``version``, with numpy_ref's semantics, so
tolerances.check_backend checks it as it checks a backend. PyTorch and JAX are
optional, never dependencies: ``get_peer`` imports a peer on first use and
raises PeerUnavailable, saying how to install what is missing.
"""

from __future__ import annotations

import importlib
import time
import weakref

import numpy as np

# Pinned like the ``peers`` extra: an unpinned torch pulls a multi-GB CUDA build.
_TORCH = ("torch",), "install it with pip install torch==2.13.0, or fastnn's peers extra"
_JAX = (("jax", "jaxlib"),
        "install it with pip install jax==0.10.2 jaxlib==0.10.2, or fastnn's peers extra")
# name -> (module[:object], the libraries it imports, how to install them), in report order
PEERS = {
    "numpy-fast": ("fastnn.peers.numpy_fast", (), ""),
    "torch": ("fastnn.peers.torch_peers:eager", *_TORCH),
    "torch-compile": ("fastnn.peers.torch_peers:compiled", _TORCH[0],
                      _TORCH[1] + "; torch.compile also needs a C++ compiler (g++)"),
    "jax-step": ("fastnn.peers.jax_peers:step", *_JAX),
    "jax-scan": ("fastnn.peers.jax_peers:scan", *_JAX),
}


class PeerUnavailable(ImportError):
    """A peer whose library (or toolchain) is missing here; the message says how to fix it."""


def get_peer(name):
    """Peer ``name``: a module or an object with the API above."""
    try:
        target, libraries, hint = PEERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}") from None
    module, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module)
    except ImportError as e:
        # Only the peer's own library missing (or broken) makes it unavailable; any other
        # ImportError is a bug in fastnn and must not turn into a skipped test.
        if (e.name or "").split(".")[0] not in libraries:
            raise
        raise PeerUnavailable(f"{name}: {e}; {hint}") from e
    peer = getattr(module, attr) if attr else module
    if getattr(peer, "missing", None):  # a toolchain (torch-compile: a C++ compiler)
        raise PeerUnavailable(peer.missing)
    return peer


def available(names=None) -> dict[str, str | None]:
    """{name: None if usable here, else why not and how to fix it}; imports the libraries."""
    status = {}
    for name in PEERS if names is None else names:
        try:
            get_peer(name)
            status[name] = None
        except PeerUnavailable as e:
            status[name] = str(e)
    return status


_per_data_set = {}  # (id(array), key) -> (weak reference to the array, value)


def per_data_set(array, key, make):
    """make(), once per (array, key) while the array lives: a benchmark passes the same
    images again and again, and a peer converts them (to float, onto a device) once, as a
    user would. By identity, not content: a data set is read-only; a copy is a new one."""
    slot = (id(array), key)
    entry = _per_data_set.get(slot)
    if entry is None or entry[0]() is not array:
        # The callback runs when the array is freed, before its id can be reused.
        ref = weakref.ref(array, lambda _, slot=slot: _per_data_set.pop(slot, None))
        entry = _per_data_set[slot] = (ref, make())
    return entry[1]


def checked_order(order, n, dtype=np.intp):
    """order as ``dtype``, checked to lie in [-n, n) (a gather that clips or wraps would not
    raise on its own)."""
    order = np.asarray(order)
    if order.size and (order.min() < -n or order.max() >= n):
        raise IndexError(f"sample index out of range for {n} images")
    return order.astype(dtype, copy=False)


def warmup_run(train_epoch, predict, sizes, dtype):
    """A peer's warmup: an epoch (a batch of 2, a last batch of 1) and predict on a tiny net;
    seconds. Other shapes compile on their first call."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
