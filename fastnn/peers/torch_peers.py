"""The "torch" and "torch-compile" peers: the net trained the usual PyTorch way, on the CPU.

``nn.Linear``-``nn.ReLU``-...-``nn.Linear`` (a weight is (out, in), like
ours), ``nn.functional.cross_entropy`` and plain ``torch.optim.SGD``; each
uint8 batch gathered and scaled on the fly, the params copied into the net
once per call and back at its end. "torch-compile" runs the forward pass with
its loss (and predict's chunks, forward's softmax) through ``torch.compile``
(inductor: C++ around the matrix products, AOTAutograd for the backward that
``loss.backward()`` runs); the optimizer step stays eager, as in PyTorch's
recipe (compile the model, not the optimizer). Shapes are static
(``dynamic=False``): a last, shorter batch compiles its own code once, and
the code a timed configuration runs does not depend on the shapes the process
saw before (by default a dimension turns dynamic once it has changed, for
every later net).
"""

import functools
import os
import shutil

import numpy as np
import torch

from fastnn.kernels.numpy_ref import PIXEL_SCALE
from fastnn.model import sizes_of
from fastnn.peers import warmup_run


def _net(params):
    """nn.Sequential holding a copy of params."""
    layers = []
    for W, b in params:
        layers += [torch.nn.Linear(W.shape[1], W.shape[0], dtype=getattr(torch, W.dtype.name)),
                   torch.nn.ReLU()]
        with torch.no_grad():
            layers[-2].weight.copy_(torch.from_numpy(W))
            layers[-2].bias.copy_(torch.from_numpy(b))
    return torch.nn.Sequential(*layers[:-1])


def _scaled(U, dtype):
    return U.to(dtype).mul_(PIXEL_SCALE)  # numpy_ref.to_float


def _loss_logits(net, X, y):
    logits = net(X)
    return torch.nn.functional.cross_entropy(logits, y), logits


def _probs(net, X):
    return torch.softmax(net(X), dim=1)


def _labels(net, U):
    return net(_scaled(U, net[0].weight.dtype)).argmax(1)


class Torch:
    missing = None  # why it cannot run here (get_peer raises it)

    def functions(self, params):
        """(loss_logits, probs, labels), each called as f(net, inputs)."""
        return _loss_logits, _probs, _labels

    def version(self):
        return torch.__version__

    def warmup(self, sizes, dtype, batch_size=None):
        return warmup_run(self.train_epoch, self.predict, sizes, dtype)

    def forward(self, params, X):
        with torch.inference_mode():
            return self.functions(params)[1](_net(params), torch.from_numpy(X)).numpy()

    def loss_and_grads(self, params, X, y):
        net = _net(params)
        loss, _ = self.functions(params)[0](net, torch.from_numpy(X), torch.from_numpy(y))
        loss.backward()
        return float(loss.detach()), [(m.weight.grad.numpy(), m.bias.grad.numpy())
                                      for m in net[::2]]

    def train_epoch(self, params, images, labels, order, batch_size, lr):
        net, loss_logits = _net(params), self.functions(params)[0]
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        order = torch.from_numpy(np.ascontiguousarray(order, np.int64))
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            X, y = _scaled(images[idx], net[0].weight.dtype), labels[idx]
            loss, logits = loss_logits(net, X, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        for (W, b), m in zip(params, net[::2]):
            W[...], b[...] = m.weight.detach().numpy(), m.bias.detach().numpy()
        return float(loss_sum) / len(order), int(correct) / len(order)

    def predict(self, params, images, chunk=4096):
        net, labels = _net(params), self.functions(params)[2]
        images = torch.from_numpy(images)
        with torch.inference_mode():
            return torch.cat([labels(net, images[s : s + chunk])
                              for s in range(0, len(images), chunk)]).numpy()


class TorchCompile(Torch):
    _cxx = os.environ.get("CXX") or "g++"  # inductor's C++ compiler
    missing = None if shutil.which(_cxx) else (
        f"torch-compile: torch.compile's CPU backend needs a C++ compiler and {_cxx!r} was "
        "not found (apt-get install g++, or set CXX)")

    def functions(self, params):
        return _compiled(tuple(sizes_of(params)), params[0][0].dtype)


@functools.cache
def _compiled(sizes, dtype):
    """The functions compiled for one net shape and dtype. Dynamo keeps compiled code per
    Python function and silently falls back to eager after recompile_limit (8)
    recompilations, which a process training many nets would reach: so each net shape gets
    its own copies (isolate_recompiles), and fullgraph=True makes the limit an error."""
    compile = functools.partial(torch.compile, dynamic=False, fullgraph=True,
                                isolate_recompiles=True)
    return compile(_loss_logits), compile(_probs), compile(_labels)


eager, compiled = Torch(), TorchCompile()
