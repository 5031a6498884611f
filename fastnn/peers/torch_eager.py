"""The "torch" peer: the same net trained the usual eager PyTorch way, on the CPU.

Same architecture, initial parameters, batch size, dtype, data and sample
order as the fastnn backends; ``nn.Linear``/``nn.ReLU``, plain
``torch.optim.SGD`` on the mean cross-entropy (fastnn.peers._torch_common).
Each uint8 batch is gathered and scaled on the fly; ``train_epoch`` copies
the params in and out once per call. Nothing is compiled.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fastnn.peers import _torch_common as tc
from fastnn.peers._torch_common import build, set_threads, version  # noqa: F401


def forward(params, X):
    """X (m, 784) float -> softmax probabilities (m, 10), as NumPy."""
    with torch.inference_mode():
        return torch.softmax(build(params)(torch.from_numpy(X)), dim=1).numpy()


def loss_and_grads(params, X, y):
    """X (m, 784) float, y (m,) int64 -> (mean cross-entropy, [(dW, db), ...] NumPy)."""
    net = build(params)
    loss, _ = tc.loss_logits(net, torch.from_numpy(X), torch.from_numpy(y))
    loss.backward()
    return float(loss.detach()), [(m.weight.grad.numpy(), m.bias.grad.numpy())
                                  for m in tc.linears(net)]


def train_epoch(params, images, labels, order, batch_size, lr):
    """torch.optim.SGD over the batches of ``order``, params updated in place;
    numpy_ref.train_epoch's contract and return value (mean loss, accuracy)."""
    net = build(params)
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def step(X, y):
        loss, logits = tc.loss_logits(net, X, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, logits

    return tc.epoch(step, net, params, images, labels, order, batch_size)


def predict(params, images, chunk=4096):
    """images (n, 784) uint8 -> predicted labels (n,) int64, in chunks like numpy_ref."""
    net, dtype = build(params), tc.DTYPES[params[0][0].dtype]
    return tc.predict_chunks(lambda U: net(tc.scaled(U, dtype)).argmax(1), params, images,
                             chunk)


def warmup(sizes, dtype):
    """Nothing to compile: one tiny step and prediction start the thread pool. Seconds."""
    from fastnn.model import init_params

    t0 = time.perf_counter()
    params = init_params([sizes[0], 2, sizes[-1]], dtype=dtype)
    images = np.zeros((3, sizes[0]), np.uint8)
    train_epoch(params, images, np.zeros(3, np.int64), np.arange(3), 2, 0.0)
    predict(params, images)
    return time.perf_counter() - t0
