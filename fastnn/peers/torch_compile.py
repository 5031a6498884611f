"""The "torch-compile" peer: the torch peer's step, compiled by torch.compile (CPU inductor).

The same net, loss, optimizer and epoch loop as the eager "torch" peer
(fastnn.peers._torch_common); what changes is that the forward pass with its
loss, ``loss_logits(net, X, y)``, runs through ``torch.compile``: inductor
generates C++ for the elementwise work around the matrix products and
AOTAutograd compiles the matching backward, which ``loss.backward()`` runs.
The optimizer step stays eager, as in PyTorch's torch.compile training
recipe (compile the model, not the optimizer): plain SGD is one in-place
add per tensor. ``predict`` compiles its chunk (uint8 -> float, forward,
argmax) and ``forward`` its softmax the same way.

Compilation: each net shape and dtype has its own compiled functions
(``_compiled``); the first call of one with new input shapes compiles it
(seconds to tens of seconds; it needs a C++ compiler), later calls with the
same shapes reuse the code. Shapes are static (``dynamic=False``): a last,
shorter batch compiles its own code once, and the code a timed
configuration runs does not depend on which shapes the process saw before
(by default torch.compile would switch a dimension to dynamic after it
first changed, for every later net). ``warmup`` compiles for a tiny net only;
callers make one untimed call with the exact shapes before timing.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from fastnn.model import sizes_of
from fastnn.peers import PeerUnavailable
from fastnn.peers import _torch_common as tc
from fastnn.peers._torch_common import set_threads  # noqa: F401

# inductor's C++ compiler: $CXX, else g++ (torch._inductor.config.cpp.cxx)
_CXX = os.environ.get("CXX") or "g++"
if shutil.which(_CXX) is None:
    raise PeerUnavailable(f"torch-compile: torch.compile's CPU backend needs a C++ compiler and "
                          f"{_CXX!r} was not found (apt-get install g++, or set CXX)")


def _probs(net, X):
    return torch.softmax(net(X), dim=1)


def _labels(net, U):
    """U (c, 784) uint8 -> (c,) int64 labels."""
    return net(tc.scaled(U, net[0].weight.dtype)).argmax(1)


class _Compiled(NamedTuple):
    loss_logits: Callable
    probs: Callable
    labels: Callable


@functools.cache
def _compiled(sizes: tuple, dtype) -> _Compiled:
    """The compiled functions for nets of layer widths ``sizes`` and ``dtype``.

    Dynamo keeps its compiled code per Python function, shared by every
    torch.compile of it, and falls back to eager once a function has been
    recompiled recompile_limit (8) times: a process that trains many nets
    would get there silently. So each net shape has its own compiled copies
    (isolate_recompiles, each allowed 8 input shapes) and fullgraph=True
    makes hitting the limit an error instead of a silent eager fallback.
    """
    compile = functools.partial(torch.compile, dynamic=False, fullgraph=True,
                                isolate_recompiles=True)
    return _Compiled(compile(tc.loss_logits), compile(_probs), compile(_labels))


def _for(params) -> _Compiled:
    return _compiled(tuple(sizes_of(params)), params[0][0].dtype)


def version() -> str:
    return torch.__version__


def forward(params, X):
    """X (m, 784) float -> softmax probabilities (m, 10), as NumPy."""
    with torch.inference_mode():
        return _for(params).probs(tc.build(params), torch.from_numpy(X)).numpy()


def loss_and_grads(params, X, y):
    """X (m, 784) float, y (m,) int64 -> (mean cross-entropy, [(dW, db), ...] NumPy)."""
    net = tc.build(params)
    loss, _ = _for(params).loss_logits(net, torch.from_numpy(X), torch.from_numpy(y))
    loss.backward()
    return float(loss.detach()), [(m.weight.grad.numpy(), m.bias.grad.numpy())
                                  for m in tc.linears(net)]


def train_epoch(params, images, labels, order, batch_size, lr):
    """torch.optim.SGD over the batches of ``order`` with the compiled forward and loss,
    params updated in place; numpy_ref.train_epoch's contract and return value."""
    net, loss_logits = tc.build(params), _for(params).loss_logits
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def step(X, y):
        loss, logits = loss_logits(net, X, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, logits

    return tc.epoch(step, net, params, images, labels, order, batch_size)


def predict(params, images, chunk=4096):
    """images (n, 784) uint8 -> predicted labels (n,) int64, in chunks like numpy_ref."""
    net, labels = tc.build(params), _for(params).labels
    return tc.predict_chunks(lambda U: labels(net, U), params, images, chunk)


def warmup(sizes, dtype):
    """Compile the training step and predict for a tiny net (784-2-10, batch 2, then a
    last batch of 1). Seconds. Other shapes compile on their first call."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
