"""fastnn: a from-scratch MNIST network, written twice.

The reference kernels (``fastnn.kernels.numpy_ref``) are readable, vectorised
NumPy; the fast path is explicit Numba loops (``fastnn.kernels.numba_layers``
for each equation, ``numba_epoch`` for the fused, parallel training epochs).
``fastnn.kernels.get_kernel(name)`` picks one; ``python -m fastnn.train`` trains.
"""

__version__ = "0.1.0"
