"""Inference: predict over the 10000 test images (uint8 in, labels out)."""

from fastnn import benchkit

from .common import DTYPES, HIDDEN, KERNEL_NAMES, data, fresh_params, verify, warm


class Inference:
    """predict(params, test_images): scale, forward, argmax for the whole test set."""

    params = [KERNEL_NAMES, HIDDEN, DTYPES]
    param_names = ["kernel", "hidden", "dtype"]

    def setup(self, kernel, hidden, dtype):
        self.images = data().test_images
        verify(benchkit.check_predict, kernel, hidden, dtype, self.images)
        self.kernel = warm(kernel, hidden, dtype)
        self.net = fresh_params(hidden, dtype)

    def time_predict_test_set(self, kernel, hidden, dtype):
        self.kernel.predict(self.net, self.images)
