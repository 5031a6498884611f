"""Peers: the implementations a user would pick instead of fastnn, for the benchmarks.

Each peer is a module with the benchmark subset of the backend API, with
numpy_ref's semantics (see fastnn/kernels/numpy_ref.py):

* ``forward(params, X) -> P (m, 10)``,
* ``loss_and_grads(params, X, y) -> (loss, [(dW, db), ...])``,
* ``train_epoch(params, images, labels, order, batch_size, lr) -> (mean loss,
  accuracy)``: plain SGD, params updated in place, the last batch may be
  shorter, each batch's loss and accuracy measured before its update,
* ``predict(params, images) -> labels (n,) int64``,
* ``warmup(sizes, dtype) -> seconds`` and ``version() -> str``,

so fastnn.tolerances.check_backend checks a peer exactly as it checks a
backend. PyTorch and JAX are optional extras, never dependencies
of fastnn: importing this package imports neither; ``get_peer(name)`` imports
the peer's module (and its library) on first use, and raises PeerUnavailable,
with the reason and the install command, when that library is missing.
"""

from __future__ import annotations

import importlib

# name -> module, in the order the report shows them
PEERS = {
    "numpy-fast": "fastnn.peers.numpy_fast",
    "torch": "fastnn.peers.torch_eager",
    "torch-compile": "fastnn.peers.torch_compile",
    "jax-step": "fastnn.peers.jax_step",
    "jax-scan": "fastnn.peers.jax_scan",
}

# Pinned like the ``peers`` extra: an unpinned torch pulls a multi-GB CUDA build.
TORCH_HINT = "install it with pip install torch==2.13.0, or fastnn's peers extra"
JAX_HINT = "install it with pip install jax==0.10.2 jaxlib==0.10.2, or fastnn's peers extra"
INSTALL_HINTS = {
    "numpy-fast": "",
    "torch": TORCH_HINT,
    "torch-compile": TORCH_HINT + "; torch.compile also needs a C++ compiler (g++)",
    "jax-step": JAX_HINT,
    "jax-scan": JAX_HINT,
}


# the libraries each peer imports: a missing one makes the peer unavailable
REQUIRES = {
    "numpy-fast": (),
    "torch": ("torch",),
    "torch-compile": ("torch",),
    "jax-step": ("jax", "jaxlib"),
    "jax-scan": ("jax", "jaxlib"),
}


class PeerUnavailable(ImportError):
    """A peer whose library (or toolchain) is missing here; the message says how to fix it."""


def get_peer(name):
    """The module of peer ``name``; PeerUnavailable if its library cannot be imported."""
    try:
        module = PEERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}") from None
    try:
        return importlib.import_module(module)
    except PeerUnavailable:
        raise
    except ImportError as e:
        # Only the peer's own library missing (or broken) makes it unavailable; any other
        # ImportError is a bug in fastnn and must not turn into a skipped test.
        if (e.name or "").split(".")[0] not in REQUIRES[name]:
            raise
        raise PeerUnavailable(f"{name}: {e}; {INSTALL_HINTS[name]}") from e


def reason(name) -> str | None:
    """None if peer ``name`` is usable here, else why not and how to install it."""
    try:
        get_peer(name)
    except PeerUnavailable as e:
        return str(e)
    return None


def available(names=None) -> dict[str, str | None]:
    """{name: None if importable else the reason and install hint}, for ``names``
    (default: every peer, in PEERS order). Imports each peer's library."""
    return {name: reason(name) for name in (PEERS if names is None else names)}
