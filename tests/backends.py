"""Which registry names the agreement tests run: one per distinct implementation.

The numba variants share their per-layer functions (forward, loss_and_grads,
activations, sgd_step, apply_update), so those are tested under one name;
train_epoch and predict differ per strategy and are tested under each name
that has its own ("numba:samples", "numba:rows", "numba:inked",
"numba:split", "numba:simple"). Plain "numba" only picks one of those per net:
test_numba_picks_its_strategy
checks that it trains exactly like the one it picks.

``near_ties`` counts the samples of an epoch whose predicted class two correct
backends may see differently.
"""

import numpy as np

from fastnn.kernels import KERNELS, REFERENCE, get_kernel, numpy_ref
from fastnn.model import copy_params


def implementations(attr, reference=False):
    """Registry names, one per distinct implementation of ``attr`` (first name wins);
    the reference only if asked for."""
    names, seen = [], []
    for name in KERNELS:
        if name == REFERENCE:
            if reference:
                names.append(name)
            continue
        backend = get_kernel(name)
        impl = (backend.implementation(attr) if hasattr(backend, "implementation")
                else getattr(backend, attr))
        if impl is not None and not any(impl is s for s in seen):
            seen.append(impl)
            names.append(name)
    return names


LAYERS = implementations("forward")  # forward, loss_and_grads, activations
TRAINERS = implementations("train_epoch")
PREDICTORS = implementations("predict")


def near_ties(params, images, labels, order, batch_size, lr, distort=None, rel=1e-8):
    """Replays the reference's plain-SGD epoch (train_epoch's batches) from a copy of
    params and counts the samples whose two largest logits, before their batch's
    update, are within rel (times max(1, |logit|)) of each other. Their argmax is
    decided by rounding, and a backend within rounding of the reference may pick
    the other class: seen with a dead ReLU layer, whose logits are the biases, equal
    in exact arithmetic for classes with equal counts in the batches before."""
    params = copy_params(params)
    dtype, ties = params[0][0].dtype, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        Z = numpy_ref.logits(params, numpy_ref.gather(images, idx, dtype, None, distort))
        top2 = np.sort(Z, axis=1)[:, -2:]
        ties += int(np.sum(top2[:, 1] - top2[:, 0]
                           <= rel * np.maximum(1.0, np.abs(top2[:, 1]))))
        numpy_ref.train_epoch(params, images, labels, idx, len(idx), lr, distort=distort)
    return ties
