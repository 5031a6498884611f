"""What the demo's API computes: probabilities, the input and hidden activations.

Everything runs through the numba backend (``forward`` for the probabilities,
exactly as ``predict --kernel numba`` computes them; ``activations`` for the
hidden layer), never through a copy of the network in JavaScript.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading

import numpy as np

from fastnn.demo.decode import BadRequest
from fastnn.kernels import get_kernel
from fastnn.kernels.numpy_ref import to_float

# A first hidden layer up to this wide is shown whole, unit by unit; a wider
# one shows its TOP_UNITS most active units for the current input.
SHOW_ALL_UP_TO = 32
TOP_UNITS = 16

# matplotlib's RdBu_r (ColorBrewer RdBu, reversed), as in fastnn.plots'
# weights.png: blue where ink lowers a unit's input, white 0, red where it raises it.
_RDBU_R = np.array([
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240),
    (247, 247, 247), (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43),
    (103, 0, 31)], dtype=np.float64)


class Engine:
    """A loaded network and, when available, the test set for random samples.

    ``params`` as fastnn.model; ``classes`` the 10 class names; ``test_set``
    (images uint8 (n, 784), labels (n,)) or None; ``about`` a dict of facts
    for the page's header (where the model came from, its test accuracy).
    """

    def __init__(self, params, classes, test_set=None, about=None):
        self.params = params
        self.dtype = params[0][0].dtype
        self.classes = [str(c) for c in classes]
        self.test_set = test_set
        self.about = dict(about or {})
        self.kernel = get_kernel("numba")
        # One computation at a time: Numba's workqueue threading layer aborts
        # the process when two threads launch parallel kernels at once, and a
        # single digit takes microseconds, so the lock costs nothing.
        self._lock = threading.Lock()
        self.hidden_units = params[0][0].shape[0] if len(params) > 1 else 0
        digest = hashlib.sha256()
        for W, b in params:
            digest.update(W.tobytes())
            digest.update(b.tobytes())
        self.token = digest.hexdigest()[:12]  # names this model in cacheable URLs

    def warmup(self):
        """Compile (or load from Numba's cache) the kernels, before the first request."""
        self.predict(np.zeros(784, np.uint8))

    def info(self):
        """GET /api/model: what the page needs to lay itself out."""
        show_all = self.hidden_units <= SHOW_ALL_UP_TO
        return dict(
            about=self.about, sizes=[784] + [W.shape[0] for W, _ in self.params],
            dtype=str(self.dtype), classes=self.classes, hidden_units=self.hidden_units,
            hidden_shown="all" if show_all else "top",
            units_shown=self.hidden_units if show_all else TOP_UNITS, token=self.token,
            test_set=None if self.test_set is None else len(self.test_set[0]))

    def predict(self, pixels):
        """uint8 (784,) -> {"label", "probabilities", "input", "hidden"}."""
        # scaled as every fastnn input is, so the probabilities are predict's to the
        # last bit
        X = to_float(pixels[None, :], self.dtype)
        with self._lock:
            P = self.kernel.forward(self.params, X)[0]
            acts = self.kernel.activations(self.params, X)
        return dict(label=int(np.argmax(P)), probabilities=[float(p) for p in P],
                    input=pixels.tolist(), hidden=self._hidden(acts[0][0] if len(acts) > 1
                                                               else None))

    def _hidden(self, a):
        """The first hidden layer's units to show: [{"unit", "activation"}, ...]."""
        if a is None:
            return []
        if len(a) <= SHOW_ALL_UP_TO:
            units = range(len(a))  # every unit, in a fixed order
        else:
            units = np.argsort(-a, kind="stable")[:TOP_UNITS]  # the most active first
        return [dict(unit=int(u), activation=float(a[u])) for u in units]

    def sample(self, index=None):
        """A test-set digit (random unless ``index``): predict()'s dict plus its index
        and true label."""
        if self.test_set is None:
            raise BadRequest(404, "no test set is loaded (it could not be read when the "
                                  "demo started); restart the demo with --data-dir DIR")
        images, labels = self.test_set
        if index is None:
            index = random.randrange(len(images))
        if not 0 <= index < len(images):
            raise BadRequest(400, f"index {index} is out of range: use 0..{len(images) - 1}")
        out = self.predict(images[index])
        out.update(index=int(index), true_label=int(labels[index]))
        return out

    def weights_png(self, unit):
        """PNG bytes: hidden unit ``unit``'s 784 first-layer weights as a 28x28 picture."""
        from PIL import Image

        if not 0 <= unit < self.hidden_units:
            raise BadRequest(404, f"no hidden unit {unit}: the first hidden layer has "
                                  f"{self.hidden_units} units")
        w = self.params[0][0][unit].astype(np.float64)
        scale = float(np.abs(w).max()) or 1.0  # each unit its own symmetric scale
        t = (w / scale + 1.0) * 0.5 * (len(_RDBU_R) - 1)
        stops = np.arange(len(_RDBU_R))
        rgb = np.stack([np.interp(t, stops, _RDBU_R[:, c]) for c in range(3)], axis=1)
        img = Image.fromarray(np.rint(rgb).astype(np.uint8).reshape(28, 28, 3))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
