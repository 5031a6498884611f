"""fastnn: a from-scratch MNIST network, written twice.

The reference kernels (``fastnn.kernels.numpy_ref``) are readable, vectorised
NumPy; the fast path (``fastnn.kernels.numba_loops``) is explicit Numba loops.
``fastnn.kernels.get_kernel(name)`` picks one; ``python -m fastnn.train`` trains.
"""

__version__ = "0.1.0"
