"""Which backends the agreement tests run: the registry plus forced variants.

The numba backend's train_epoch shares a batch between threads by samples
(small nets) or by weight rows (large ones): numba_loops.strategy. Most test
shapes are small, so each strategy also runs as its own entry, forced, and
every variant stays under test whatever size picks it.
"""

from fastnn.kernels import KERNELS, REFERENCE, get_kernel, numba_loops

VARIANTS = {f"numba[{s}]": s for s in numba_loops.STRATEGIES}
BACKENDS = list(KERNELS) + list(VARIANTS)
OTHERS = [name for name in BACKENDS if name != REFERENCE]


class _Forced:
    """The numba backend with train_epoch's strategy forced."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __getattr__(self, attr):
        return getattr(numba_loops, attr)

    def train_epoch(self, *args, **kwargs):
        with numba_loops.forced_strategy(self.strategy):
            return numba_loops.train_epoch(*args, **kwargs)

    def warmup(self, sizes, dtype):
        with numba_loops.forced_strategy(self.strategy):
            return numba_loops.warmup_module(self, sizes, dtype)


def backend(name):
    """get_kernel(name), or for a VARIANTS entry the numba backend with it forced."""
    return _Forced(VARIANTS[name]) if name in VARIANTS else get_kernel(name)
