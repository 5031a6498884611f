"""Optional PyTorch CPU peer for ``python -m fastnn.bench``: the same net, trained the usual way.

The backend API (``forward``, ``loss_and_grads``, ``train_epoch``,
``predict``, ``warmup``) written with PyTorch, so the report checks and
times it exactly like a registered backend: same architecture
(``nn.Linear``-``nn.ReLU``-...-``nn.Linear`` in PyTorch's default layout,
whose weight is (out, in) like ours), same initial parameters, batch size,
dtype, data and sample order; plain ``torch.optim.SGD`` on
``nn.CrossEntropyLoss`` (mean over the batch). Each uint8 batch is gathered
and scaled on the fly, as the fastnn backends do; like the numba backend's
pack/unpack, ``train_epoch`` copies the params in and out once per call.

PyTorch is never a dependency: ``version()`` is None when it is not
importable, and nothing else here is called then. Not in the registry:
tests and ``--compare`` never see it.
"""

from __future__ import annotations

import time

import numpy as np

from fastnn.kernels.numpy_ref import PIXEL_SCALE

INSTALL_HINT = "PyTorch not installed (pip install torch==2.13.0 for the peer column)"


def version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _dtype(np_dtype):
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(np_dtype)]


def build(params):
    """nn.Sequential holding a copy of params (a list of (W (out, in), b (out,)))."""
    import torch

    layers = []
    for i, (W, b) in enumerate(params):
        linear = torch.nn.Linear(W.shape[1], W.shape[0], dtype=_dtype(W.dtype))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(params) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _linears(net):
    import torch

    return [m for m in net if isinstance(m, torch.nn.Linear)]


def forward(params, X):
    """X (m, 784) -> softmax probabilities (m, 10), as NumPy."""
    import torch

    with torch.inference_mode():
        return torch.softmax(build(params)(torch.from_numpy(X)), dim=1).numpy()


def loss_and_grads(params, X, y):
    """CrossEntropyLoss (mean) and its grads as [(dW, db), ...] NumPy arrays."""
    import torch

    net = build(params)
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    loss.backward()
    return float(loss.detach()), [(m.weight.grad.numpy(), m.bias.grad.numpy())
                                  for m in _linears(net)]


def train_epoch(params, images, labels, order, batch_size, lr):
    """torch.optim.SGD over the batches of ``order``, params updated in place.

    numpy_ref.train_epoch's contract: returns (mean loss, accuracy) over the
    samples seen, each measured before its batch's update.
    """
    import torch

    net = build(params)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    order_t = torch.from_numpy(np.ascontiguousarray(order, np.int64))
    dtype, scale = _dtype(params[0][0].dtype), float(PIXEL_SCALE)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    for start in range(0, len(order_t), batch_size):
        idx = order_t[start : start + batch_size]
        X, y = images_t[idx].to(dtype).mul_(scale), labels_t[idx]
        logits = net(X)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
    for (W, b), m in zip(params, _linears(net)):
        W[...] = m.weight.detach().numpy()
        b[...] = m.bias.detach().numpy()
    return float(loss_sum) / len(order), int(correct) / len(order)


def predict(params, images, chunk=4096):
    """images (n, 784) uint8 -> predicted labels (n,) int64, in chunks like numpy_ref."""
    import torch

    net, images_t = build(params), torch.from_numpy(images)
    dtype, scale = _dtype(params[0][0].dtype), float(PIXEL_SCALE)
    with torch.inference_mode():
        return torch.cat([net(images_t[s : s + chunk].to(dtype).mul_(scale)).argmax(1)
                          for s in range(0, len(images_t), chunk)]).numpy()


def warmup(sizes, dtype):
    """Nothing to compile: one tiny step and prediction start the thread pool. Seconds."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
