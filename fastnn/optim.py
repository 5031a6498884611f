"""Optimizers and learning-rate schedules.

An ``Optimizer`` is plain data: the rule's name, its hyper-parameters, the
number of updates applied so far and its state arrays (shaped like the
params). Each backend applies the rule inside its own training loop; the
reference rules, per parameter array ``w`` with gradient ``g``:

    L2 weight decay:  g <- g + weight_decay * w
    sgd:       w <- w - lr g
    momentum:  v <- momentum v + g;                 w <- w - lr v
    adam:      t <- t + 1
               m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
               w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastnn.model import Params, n_params, sizes_of

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "step", "cosine")


@dataclass
class Optimizer:
    name: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    step: int = 0  # updates applied so far (Adam's bias correction needs it)
    # state[k][layer] = (array like W, array like b); k = 0: momentum / Adam's m, 1: Adam's v
    state: list = field(default_factory=list)
    # (S, P): the state as rows laid out like the params' flat vector (ensure_state)
    buffer: np.ndarray | None = field(default=None, repr=False, compare=False)
    _flat_slots: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of "
                             f"{', '.join(OPTIMIZERS)}")

    @property
    def kind(self) -> int:
        """The rule as a number, for the compiled kernels: 0 sgd, 1 momentum, 2 adam."""
        return OPTIMIZERS.index(self.name)

    def n_slots(self) -> int:
        return {"sgd": 0, "momentum": 1, "adam": 2}[self.name]

    def ensure_state(self, params):
        """The state slots for params: zeros on first use, checked afterwards.

        Every slot is a model.Params view of one row of ``self.buffer`` (S, P),
        laid out like the params' flat vector, so the fused kernels update the
        whole state as one array; slots given as plain lists (from a
        checkpoint) are copied in once.
        """
        sizes = sizes_of(params)
        if self.state and len(self.state) != self.n_slots():
            raise ValueError(f"optimizer state has {len(self.state)} slots, {self.name} "
                             f"needs {self.n_slots()}")
        for slot in self.state:
            if len(slot) != len(params) or any(
                    sW.shape != W.shape or sb.shape != b.shape or sW.dtype != W.dtype
                    for (W, b), (sW, sb) in zip(params, slot)):
                raise ValueError("optimizer state does not match the parameters")
        shape, dtype = (self.n_slots(), n_params(sizes)), params[0][0].dtype
        flat = (self.buffer is not None and self.buffer.shape == shape
                and self.buffer.dtype == dtype and len(self.state) == len(self._flat_slots)
                and all(a is b for a, b in zip(self.state, self._flat_slots)))
        if not flat:
            self.buffer = np.zeros(shape, dtype)
            slots = [Params(row, sizes) for row in self.buffer]
            for slot, old in zip(slots, self.state):
                for (W, b), (sW, sb) in zip(slot, old):
                    W[...], b[...] = sW, sb
            self.state = self._flat_slots = slots
        return self.state

    def hyper(self, dtype):
        """(momentum, beta1, beta2, eps, weight_decay) as an array of the params' dtype."""
        return np.array([self.momentum, self.beta1, self.beta2, self.eps, self.weight_decay],
                        dtype=dtype)


def learning_rate(epoch, base_lr, epochs, schedule="constant", warmup=0, step_every=None,
                  gamma=0.1):
    """Learning rate for 1-based ``epoch``.

    constant: base_lr; step: base_lr * gamma ** ((epoch - 1) // step_every);
    cosine: base_lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2. A linear warm-up
    over the first ``warmup`` epochs multiplies any of them by epoch / (warmup + 1).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule == "step":
        every = step_every or max(1, epochs // 3)
        lr = base_lr * gamma ** ((epoch - 1) // every)
    elif schedule == "cosine":
        lr = base_lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
    else:
        lr = base_lr
    if epoch <= warmup:
        lr *= epoch / (warmup + 1)
    return lr
