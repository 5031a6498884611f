"""pytest-benchmark: one prediction round trip of the demo server, request to response.

What the page does while a user draws: a 280x280 canvas PNG as a data URL,
POSTed on a kept-alive connection, the JSON answer read and parsed. The goal
is under 20 ms on a 2-core machine; `nox -s bench` times it, no test asserts
it. Untimed (run once) in the normal suite, after checking the answer.
"""

import http.client
import json

import numpy as np
import pytest
from demo_server import SEVEN, canvas_png, data_url, running

from fastnn import images, model
from fastnn.demo.engine import Engine
from fastnn.kernels import get_kernel
from fastnn.kernels.numpy_ref import to_float


@pytest.mark.parametrize("hidden", [10, 800])  # the default net and --preset best's
def test_predict_round_trip(benchmark, tmp_path, hidden):
    params = model.init_params([784, hidden, 10])
    engine = Engine(params, [str(k) for k in range(10)])
    engine.warmup()
    png = canvas_png(SEVEN)
    (tmp_path / "seven.png").write_bytes(png)
    body = json.dumps({"image": data_url(png)}).encode()
    with running(engine) as address:
        conn = http.client.HTTPConnection(*address, timeout=30)

        def round_trip():
            conn.request("POST", "/api/predict", body=body,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())

        try:
            status, out = round_trip()  # the answer first: a wrong one is not timed
            assert status == 200, out
            pixels = images.load_image(tmp_path / "seven.png")
            assert out["input"] == pixels.tolist()
            X = to_float(pixels[None], np.float32)
            assert out["probabilities"] == get_kernel("numba").forward(params, X)[0].tolist()
            benchmark.group = "demo: POST /api/predict, 280x280 canvas PNG"
            benchmark.extra_info["net"] = f"784-{hidden}-10"
            status, out = benchmark(round_trip)
        finally:
            conn.close()
    assert status == 200 and np.isclose(sum(out["probabilities"]), 1, atol=1e-5)
