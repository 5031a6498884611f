"""Which registry names the agreement tests run: one per distinct implementation.

The numba variants share their per-layer functions (forward, loss_and_grads,
activations, sgd_step, apply_update), so those are tested under one name;
train_epoch and predict differ per strategy and are tested under each name
that has its own ("numba:samples", "numba:rows", "numba:simple"). Plain
"numba" only picks one of those per net: test_numba_picks_its_strategy
checks that it trains exactly like the one it picks.
"""

from fastnn.kernels import KERNELS, REFERENCE, get_kernel


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
