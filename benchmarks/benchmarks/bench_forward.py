"""Per-layer kernels on one batch: forward(params, X) and loss_and_grads(params, X, y)."""

from fastnn import benchkit
from fastnn.kernels import get_kernel

from .common import BATCH_SIZES, DTYPES, HIDDEN, KERNEL_NAMES, fresh_params, train_batch, verify


class Forward:
    """Softmax probabilities of one batch of MNIST images."""

    params = [KERNEL_NAMES, HIDDEN, BATCH_SIZES, DTYPES]
    param_names = ["kernel", "hidden", "batch_size", "dtype"]

    def setup(self, kernel, hidden, batch_size, dtype):
        self.kernel = get_kernel(kernel)
        self.net = fresh_params(hidden, dtype)
        self.X, _ = train_batch(batch_size, dtype)
        verify(benchkit.check_forward, kernel, hidden, dtype, self.X, key=(batch_size,))
        self.kernel.forward(self.net, self.X)  # compiled (or loaded) before timing

    def time_forward(self, kernel, hidden, batch_size, dtype):
        self.kernel.forward(self.net, self.X)


class LossAndGrads:
    """Mean cross-entropy and every gradient of one batch (forward + backward)."""

    params = [KERNEL_NAMES, HIDDEN, BATCH_SIZES, DTYPES]
    param_names = ["kernel", "hidden", "batch_size", "dtype"]

    def setup(self, kernel, hidden, batch_size, dtype):
        self.kernel = get_kernel(kernel)
        self.net = fresh_params(hidden, dtype)
        self.X, self.y = train_batch(batch_size, dtype)
        verify(benchkit.check_loss_and_grads, kernel, hidden, dtype, self.X, self.y,
               key=(batch_size,))
        self.kernel.loss_and_grads(self.net, self.X, self.y)

    def time_loss_and_grads(self, kernel, hidden, batch_size, dtype):
        self.kernel.loss_and_grads(self.net, self.X, self.y)
