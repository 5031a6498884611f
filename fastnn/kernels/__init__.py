"""The kernel registry: every backend has the same functions and semantics.

``get_kernel(name)`` returns a module with at least ``forward(params, X)``,
``activations(params, X)`` (the list [A1, ..., A_{L-1}, Z_L]: each hidden
layer's ReLU output, then the logits), ``loss_and_grads(params, X, y)``,
``train_epoch(params, images, labels, order, batch_size, lr, opt=None)``,
``predict(params, images)``, ``sgd_step(params, grads, lr)``,
``apply_update(params, grads, lr, opt)`` and ``warmup(sizes, dtype)``. A
new backend is one module plus one line here.

"numba-simple" is the one-sample-at-a-time version of the numba backend's
fused epoch: slower, easier to read, and kept in every agreement test.
"""

import importlib

# Before any backend imports numba: config points Numba's cache at a writable
# dir when the package dir is read-only, which must happen before the first
# @njit is decorated.
from fastnn import config  # noqa: F401

# name -> module; imported on first use (Numba's import alone takes ~0.3 s)
KERNELS = {
    "numpy": "fastnn.kernels.numpy_ref",
    "numba": "fastnn.kernels.numba_loops",
    "numba-simple": "fastnn.kernels.numba_simple",
}

REFERENCE = "numpy"


def get_kernel(name):
    """Return the backend module registered as ``name``."""
    try:
        module = KERNELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown kernel {name!r}; known kernels: {', '.join(KERNELS)}"
        ) from None
    return importlib.import_module(module)
