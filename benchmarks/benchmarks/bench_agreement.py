"""How far each backend is from the reference: a tracked number, not a timing."""

from fastnn import benchkit
from fastnn.kernels import get_kernel

from .common import DTYPES, HIDDEN, OTHER_KERNELS, data, fresh_params


class Agreement:
    """Largest difference from the reference, relative to max|reference|, over
    forward, loss, every gradient (one batch of 128) and the params after 4
    training steps. The checks are strict: a disagreement raises, failing
    the benchmark."""

    params = [OTHER_KERNELS, HIDDEN, DTYPES]
    param_names = ["kernel", "hidden", "dtype"]

    def setup(self, kernel, hidden, dtype):
        d = data()
        self.net = fresh_params(hidden, dtype)
        self.X, self.y = benchkit.batch(d.train_images, d.train_labels, 128, dtype)
        self.images, self.labels = d.train_images, d.train_labels
        get_kernel(kernel)

    def track_max_rel_difference(self, kernel, hidden, dtype):
        rows = (benchkit.check_forward(kernel, self.net, self.X)
                + benchkit.check_loss_and_grads(kernel, self.net, self.X, self.y)
                + benchkit.check_train(kernel, self.net, self.images, self.labels, 128))
        return benchkit.worst(rows)

    track_max_rel_difference.unit = "relative"
