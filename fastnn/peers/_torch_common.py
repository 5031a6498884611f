"""What the two PyTorch peers share: the net, the epoch loop, the copies in and out.

Both train the usual PyTorch way: ``nn.Linear``-``nn.ReLU``-...-``nn.Linear``
(PyTorch's default layout, whose weight is (out, in) like ours),
``nn.functional.cross_entropy`` (mean over the batch) and plain
``torch.optim.SGD``. Each uint8 batch is gathered and scaled on the fly, as
the fastnn backends do; params are copied into the net once per call and
back once at its end, like the numba backend's pack/unpack. Importing this
module imports torch: fastnn.peers.get_peer reports a missing torch.
"""

from __future__ import annotations

import numpy as np
import torch

from fastnn.kernels.numpy_ref import PIXEL_SCALE

DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def version() -> str:
    return torch.__version__


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def build(params):
    """nn.Sequential holding a copy of params (a list of (W (out, in), b (out,)))."""
    layers = []
    for i, (W, _) in enumerate(params):
        layers.append(torch.nn.Linear(W.shape[1], W.shape[0], dtype=DTYPES[W.dtype]))
        if i < len(params) - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    load(net, params)
    return net


def linears(net):
    return [m for m in net if isinstance(m, torch.nn.Linear)]


def load(net, params):
    """Copy params into net's Linear layers."""
    with torch.no_grad():
        for (W, b), m in zip(params, linears(net)):
            m.weight.copy_(torch.from_numpy(W))
            m.bias.copy_(torch.from_numpy(b))


def store(net, params):
    """Copy net's Linear layers back into params, in place."""
    for (W, b), m in zip(params, linears(net)):
        W[...] = m.weight.detach().numpy()
        b[...] = m.bias.detach().numpy()


def loss_logits(net, X, y):
    """X (m, 784) float, y (m,) int64 -> (mean cross-entropy, logits (m, 10))."""
    logits = net(X)
    return torch.nn.functional.cross_entropy(logits, y), logits


def epoch(step, net, params, images, labels, order, batch_size):
    """train_epoch's loop: step(X, y) -> (loss, logits) does one batch's forward, backward
    and update; params are copied in before and back after. Returns (mean loss, accuracy)
    over the samples seen, each measured before its batch's update."""
    load(net, params)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    order_t = torch.from_numpy(np.ascontiguousarray(order, np.int64))
    dtype = DTYPES[params[0][0].dtype]
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    for start in range(0, len(order_t), batch_size):
        idx = order_t[start : start + batch_size]
        X, y = scaled(images_t[idx], dtype), labels_t[idx]
        loss, logits = step(X, y)
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
    store(net, params)
    return float(loss_sum) / len(order), int(correct) / len(order)


def predict_chunks(labels_of, params, images, chunk=4096):
    """images (n, 784) uint8 -> labels (n,) int64 in chunks like numpy_ref:
    labels_of(U) maps a uint8 chunk (c, 784) tensor to its labels."""
    images_t = torch.from_numpy(images)
    with torch.inference_mode():
        return torch.cat([labels_of(images_t[s : s + chunk])
                          for s in range(0, len(images_t), chunk)]).numpy()


def scaled(U, dtype):
    """U (m, 784) uint8 tensor -> float of dtype in [0, 1] (numpy_ref.to_float)."""
    return U.to(dtype).mul_(PIXEL_SCALE)
