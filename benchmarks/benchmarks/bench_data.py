"""Data: loading MNIST from the data dir, parsing IDX bytes, and which inputs the suite used."""

import numpy as np

from fastnn import data as fdata

from .common import data


class DataLoading:
    """load_mnist(split) from the local data dir: read + parse + validate.

    Skipped when real MNIST is not available. fastnn.data remembers the
    files it has verified, so the SHA-256 check runs on the first (untimed,
    in setup) load only.
    """

    params = [["train", "test"]]
    param_names = ["split"]

    def setup(self, split):
        if not data().is_mnist:
            raise NotImplementedError("real MNIST not available")  # asv: skipped

    def time_load_mnist(self, split):
        fdata.load_mnist(split)


class ParseIdx:
    """parse_idx alone on in-memory IDX image bytes of the split's size (no disk, no network)."""

    params = [["train", "test"]]
    param_names = ["split"]

    def setup(self, split):
        n = 60000 if split == "train" else 10000
        header = b"".join(v.to_bytes(4, "big") for v in (2051, n, 28, 28))
        self.raw = header + np.zeros(n * 784, np.uint8).tobytes()

    def time_parse_idx(self, split):
        fdata.parse_idx(self.raw, f"{split}-images-idx3-ubyte")


class Inputs:
    """Which inputs the other benchmarks were built from: 1 = real MNIST, 0 = synthetic."""

    def track_real_mnist(self):
        return 1 if data().is_mnist else 0

    track_real_mnist.unit = "1 = MNIST, 0 = synthetic"
