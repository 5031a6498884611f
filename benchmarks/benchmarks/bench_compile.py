"""First-call compile time, in fresh interpreters: the one cost the other benchmarks exclude.

timeraw_ runs its code in a new interpreter per sample. Its untimed setup
points NUMBA_CACHE_DIR at a new empty temp dir (removed at exit) and imports
the backend; the timed statement is ``warmup(sizes, dtype)``, i.e. compiling
the training and predict kernels from scratch. track_warm_cache_seconds is
warmup's own figure in a fresh interpreter that finds a filled cache (the
default one, filled by a first interpreter if it was stale).
"""

from fastnn import benchkit

from .common import DTYPES, KERNEL_NAMES

_SETUP = """
import atexit, os, shutil, tempfile
cache = tempfile.mkdtemp(prefix="fastnn-numba-cache-")
atexit.register(shutil.rmtree, cache, True)
os.environ["NUMBA_CACHE_DIR"] = cache  # before numba is imported: nothing cached
import numpy as np
from fastnn.kernels import get_kernel
kernel = get_kernel({kernel!r})
"""


class Compile:
    params = [KERNEL_NAMES, DTYPES]
    param_names = ["kernel", "dtype"]
    # A cold compile takes ~10 s here: one sample, no warm-up run, no second round.
    rounds = 1
    repeat = 1
    number = 1
    warmup_time = 0.0
    timeout = 600.0

    def timeraw_cold_warmup(self, kernel, dtype):
        return (f"kernel.warmup([784, 10, 10], np.dtype({dtype!r}))",
                _SETUP.format(kernel=kernel))

    def track_warm_cache_seconds(self, kernel, dtype):
        benchkit.warmup_in_fresh_interpreter(kernel, dtype)  # fills the cache if stale
        return benchkit.warmup_in_fresh_interpreter(kernel, dtype)

    track_warm_cache_seconds.unit = "seconds"
