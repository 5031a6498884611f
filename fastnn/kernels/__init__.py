"""The kernel registry: every backend has the same functions and semantics.

``get_kernel(name)`` returns a backend with ``forward(params, X)``,
``loss_and_grads(params, X, y)``, ``activations(params, X)``,
``train_epoch(params, images, labels, order, batch_size, lr, opt=None,
shifts=None, distort=None)``, ``gather(images, order, dtype, shifts=None,
distort=None)`` (the batches as train_epoch sees them: scaled, shifted and
distorted), ``predict(params, images)``, ``sgd_step(params, grads, lr)``,
``apply_update(params, grads, lr, opt)`` and ``warmup(sizes, dtype, batch_size=None,
moved=False)`` (what training at that batch size, None: the training command's, on
batches shifted or distorted or not, compiles). A new
backend is one module (or one variant) plus one line here.

"numpy" is the reference. The numba backend has one name per way of
training ("numba:samples", "numba:rows", "numba:inked", the first layer from
the inked pixels only, "numba:split", the first layer's inputs cut between the
threads, and "numba:simple", the same fused epoch one sample at a time); plain
"numba" picks one by the net's size, the batch size and the images' ink (see
numba_epoch).
"""

import importlib

# Before any backend imports numba: config points Numba's cache at a writable
# dir when the package dir is read-only, which must happen before the first
# @njit is decorated.
from fastnn import config  # noqa: F401

# name -> "module" or "module:strategy"; imported on first use (Numba's import
# alone takes ~0.3 s)
KERNELS = {
    "numpy": "fastnn.kernels.numpy_ref",
    "numba": "fastnn.kernels.numba_epoch:",
    "numba:samples": "fastnn.kernels.numba_epoch:samples",
    "numba:rows": "fastnn.kernels.numba_epoch:rows",
    "numba:inked": "fastnn.kernels.numba_epoch:inked",
    "numba:split": "fastnn.kernels.numba_epoch:split",
    "numba:simple": "fastnn.kernels.numba_epoch:simple",
}

REFERENCE = "numpy"

_backends = {}


def get_kernel(name):
    """Return the backend registered as ``name`` (the same object every time)."""
    try:
        target = KERNELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown kernel {name!r}; known kernels: {', '.join(KERNELS)}"
        ) from None
    if target not in _backends:
        module, _, strategy = target.partition(":")
        module = importlib.import_module(module)
        _backends[target] = module.Backend(strategy or None) if ":" in target else module
    return _backends[target]
