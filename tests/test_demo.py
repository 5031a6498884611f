"""The demo server without a browser: its API, bad requests, several clients, the command.

The browser itself is driven in test_demo_browser.py.
"""

import io
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from demo_server import (
    ONE,
    SEVEN,
    address_of,
    canvas_png,
    data_url,
    demo,
    raw,
    request,
    running,
    stop,
)
from PIL import Image

from fastnn import images, model
from fastnn.demo import engine as demo_engine
from fastnn.demo.engine import Engine
from fastnn.demo.server import MAX_BODY
from fastnn.kernels import get_kernel
from fastnn.kernels.numpy_ref import to_float
from fastnn.tolerances import assert_agree

DIGITS = [str(k) for k in range(10)]


@pytest.fixture(scope="module")
def test_set():
    """20 random uint8 images, 70% zeros as in MNIST, and labels."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (20, 784)).astype(np.uint8)
    x[rng.random(x.shape) < 0.7] = 0
    return x, rng.integers(0, 10, 20)


@pytest.fixture(scope="module")
def params():
    return model.init_params([784, 10, 10], seed=3)


@pytest.fixture(scope="module")
def server(params, test_set):
    engine = Engine(params, DIGITS, test_set, dict(source="test"))
    engine.warmup()
    with running(engine) as address:
        yield address


def expected(params, pixels):
    """What the numba kernels say about uint8 (784,) pixels: P, first hidden layer."""
    X = to_float(pixels[None], np.float32)
    kernel = get_kernel("numba")
    return kernel.forward(params, X)[0], kernel.activations(params, X)[0][0]


# ---------------------------------------------------------------- the API


def test_a_drawing_goes_through_predict_images_preprocessing(server, params, tmp_path):
    png = canvas_png(SEVEN)
    (tmp_path / "seven.png").write_bytes(png)
    status, _, out = request(server, "POST", "/api/predict", {"image": data_url(png)})
    assert status == 200, out
    pixels = images.load_image(tmp_path / "seven.png")  # what predict --image sees
    assert out["input"] == pixels.tolist()
    P, hidden = expected(params, pixels)
    assert out["probabilities"] == [float(p) for p in P]  # the same kernel, to the bit
    assert out["label"] == int(np.argmax(P))
    assert [h["unit"] for h in out["hidden"]] == list(range(10))  # all 10, in order
    np.testing.assert_array_equal([h["activation"] for h in out["hidden"]], hidden)
    ref = get_kernel("numpy").activations(params, to_float(pixels[None], np.float32))[0][0]
    assert_agree(hidden, ref, np.float32, "the demo's hidden activations")


def test_pixels_are_used_as_they_are(server, params, test_set):
    pixels = test_set[0][4]
    values = pixels.astype(float).tolist()
    values[0] = 12.6  # numbers, rounded to the nearest integer
    status, _, out = request(server, "POST", "/api/predict", {"pixels": values})
    assert status == 200, out
    assert out["input"][0] == 13 and out["input"][1:] == pixels.tolist()[1:]
    P, _ = expected(params, np.array(out["input"], np.uint8))
    assert out["probabilities"] == [float(p) for p in P]


def test_jpeg_is_accepted_too(server):
    buf = io.BytesIO()
    Image.open(io.BytesIO(canvas_png(ONE))).convert("RGB").save(buf, "JPEG", quality=90)
    status, _, out = request(server, "POST", "/api/predict",
                             {"image": data_url(buf.getvalue(), "image/jpeg")})
    assert status == 200 and len(out["probabilities"]) == 10


def test_model_sample_and_weights(server, params, test_set):
    status, _, info = request(server, "GET", "/api/model")
    assert status == 200
    assert info["sizes"] == [784, 10, 10] and info["classes"] == DIGITS
    assert (info["hidden_shown"], info["units_shown"], info["test_set"]) == ("all", 10, 20)

    status, _, out = request(server, "GET", "/api/sample?index=3")
    assert status == 200
    assert (out["index"], out["true_label"]) == (3, int(test_set[1][3]))
    assert out["input"] == test_set[0][3].tolist()
    assert 0 <= request(server, "GET", "/api/sample")[2]["index"] < 20  # random

    status, r, png = request(server, "GET", f"/api/weights/2.png?model={info['token']}")
    assert status == 200 and r.getheader("Content-Type") == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int).reshape(784, 3)
    w = params[0][0][2]
    red, blue = rgb[np.argmax(w)], rgb[np.argmin(w)]
    assert red[0] > red[2] + 50 and blue[2] > blue[0] + 50  # RdBu_r, as weights.png


def test_a_wide_net_shows_its_most_active_units(test_set):
    params = model.init_params([784, 64, 10], seed=5)
    engine = Engine(params, DIGITS, test_set)
    out = engine.predict(test_set[0][0])
    acts = [h["activation"] for h in out["hidden"]]
    assert len(acts) == demo_engine.TOP_UNITS and acts == sorted(acts, reverse=True)
    _, hidden = expected(params, test_set[0][0])
    assert acts[0] == hidden.max()
    assert engine.info()["hidden_shown"] == "top"


def test_a_net_without_hidden_layer(test_set):
    engine = Engine(model.init_params([784, 10]), DIGITS, None)
    assert engine.predict(test_set[0][0])["hidden"] == []
    assert engine.info()["test_set"] is None


def test_page_files_are_served(server):
    for path, kind, needle in [("/", "text/html", b'<canvas id="pad"'),
                               ("/demo.js", "text/javascript", b"/api/predict"),
                               ("/demo.css", "text/css", b"#pad")]:
        status, r, body = request(server, "GET", path)
        assert status == 200 and r.getheader("Content-Type").startswith(kind) and needle in body


# ---------------------------------------------------------------- bad requests


def png_of_size(w, h):
    buf = io.BytesIO()
    Image.new("1", (w, h), 0).save(buf, "PNG")
    return buf.getvalue()


def corrupt_png():
    png = bytearray(canvas_png(ONE))
    png[100:140] = b"x" * 40  # inside the IDAT data
    return bytes(png)


BLANK = canvas_png([])
BAD = [
    ("malformed JSON", "POST", "/api/predict", b'{"image": ', 400, "not valid JSON"),
    ("deeply nested JSON", "POST", "/api/predict", b"[" * 100000 + b"]" * 100000, 400,
     "not valid JSON"),
    ("not an object", "POST", "/api/predict", b"[1, 2]", 400, "must be a JSON object"),
    ("no image or pixels", "POST", "/api/predict", {"picture": 1}, 400, "exactly one of"),
    ("both", "POST", "/api/predict", {"image": "", "pixels": []}, 400, "exactly one of"),
    ("3 pixels", "POST", "/api/predict", {"pixels": [1, 2, 3]}, 400, "list of 784 numbers"),
    ("pixels not a list", "POST", "/api/predict", {"pixels": "0" * 784}, 400, "got str"),
    ("a pixel of 256", "POST", "/api/predict", {"pixels": [0] * 783 + [256]}, 400,
     "pixels[783] is 256"),
    ("a negative pixel", "POST", "/api/predict", {"pixels": [-1] + [0] * 783}, 400,
     "pixels[0] is -1"),
    ("a true pixel", "POST", "/api/predict", {"pixels": [0] * 5 + [True] + [0] * 778}, 400,
     "pixels[5] is true"),
    ("a NaN pixel", "POST", "/api/predict", b'{"pixels": [NaN' + b", 0" * 783 + b"]}", 400,
     "pixels[0] is NaN"),
    ("image not a string", "POST", "/api/predict", {"image": 5}, 400, "data URL string"),
    ("image not a data URL", "POST", "/api/predict", {"image": "http://x/y.png"}, 400,
     "base64 data URL"),
    ("a GIF", "POST", "/api/predict", {"image": "data:image/gif;base64,R0lGODlh"}, 415,
     "send a PNG or JPEG"),
    ("bad base64", "POST", "/api/predict", {"image": "data:image/png;base64,@@@"}, 400,
     "not valid base64"),
    ("not an image", "POST", "/api/predict", {"image": data_url(b"hello world")}, 400,
     "not a PNG or JPEG"),
    ("a corrupt PNG", "POST", "/api/predict", {"image": data_url(corrupt_png())}, 400,
     "corrupt or truncated"),
    ("a truncated PNG", "POST", "/api/predict",
     {"image": data_url(canvas_png(ONE)[:400])}, 400, "corrupt or truncated"),
    ("too many pixels", "POST", "/api/predict", {"image": data_url(png_of_size(1100, 1000))},
     413, "at most 1,048,576 pixels"),
    ("a decompression bomb", "POST", "/api/predict",
     {"image": data_url(png_of_size(20000, 20000))}, 413, "too large"),
    ("a blank drawing", "POST", "/api/predict", {"image": data_url(BLANK)}, 422,
     "no digit found"),
    ("GET /api/predict", "GET", "/api/predict", None, 405, "use POST"),
    ("POST /api/model", "POST", "/api/model", b"{}", 405, "use GET"),
    ("DELETE", "DELETE", "/api/predict", None, 405, "DELETE is not allowed"),
    ("PUT /", "PUT", "/", b"x", 405, "PUT is not allowed"),
    ("unknown path", "GET", "/etc/passwd", None, 404, "no such page"),
    ("parent path", "GET", "/../demo.js", None, 404, "no such page"),
    ("POST /", "POST", "/", b"{}", 404, "no such page"),
    ("no such unit", "GET", "/api/weights/10.png", None, 404, "no hidden unit 10"),
    ("sample index out of range", "GET", "/api/sample?index=20", None, 400, "use 0..19"),
    ("sample index not a number", "GET", "/api/sample?index=x", None, 400,
     "must be an integer"),
]


@pytest.mark.parametrize("method, path, body, status, needle",
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, method, path, body,
                                                             status, needle):
    got, r, out = request(server, method, path, body)
    assert got == status, out
    assert r.getheader("Content-Type") == "application/json" and needle in out["error"], out
    assert request(server, "GET", "/api/model")[0] == 200


RAW = [
    ("an oversized body, refused unread",
     f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n{{",
     413, "at most"),
    ("no Content-Length", "POST /api/predict HTTP/1.1\r\nHost: x\r\n\r\n", 411,
     "Content-Length"),
    ("chunked", "POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     "2\r\n{}\r\n0\r\n\r\n", 411, "no chunked"),
    ("a bad Content-Length",
     "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400,
     "bad Content-Length"),
    ("a body shorter than declared",
     "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}", 400,
     "ended after 2 of 100"),
    ("a malformed request line", "GARBAGE\r\n\r\n", 400, "Bad request"),
    ("an unknown method", "BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "BREW is not allowed"),
]


@pytest.mark.parametrize("text, status, needle", [case[1:] for case in RAW],
                         ids=[case[0] for case in RAW])
def test_raw_bad_requests(server, text, status, needle):
    answer = raw(server, text.encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert needle in json.loads(body)["error"]
    assert request(server, "GET", "/api/model")[0] == 200


def test_expect_100_learns_of_an_oversized_body_before_sending_it(server):
    answer = raw(server, (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                          f"{10 * MAX_BODY}\r\nExpect: 100-continue\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer


def test_one_connection_carries_on_after_a_bad_request(server):
    import http.client

    conn = http.client.HTTPConnection(*server, timeout=30)
    try:
        assert request(server, "POST", "/api/predict", b"{oops", conn=conn)[0] == 400
        status, r, _ = request(server, "POST", "/api/predict", {"image": data_url(
            canvas_png(SEVEN))}, conn=conn)
        assert status == 200 and r.getheader("Connection") != "close"
        # a body the server did not read must not be taken for the next request
        status, r, _ = request(server, "POST", "/nope", b'GET / HTTP/1.1\r\n\r\n', conn=conn)
        assert status == 404 and r.getheader("Connection") == "close"
    finally:
        conn.close()


def test_several_clients_at_once(server, test_set):
    """Eight clients (tabs) at once: every answer is the one a lone client gets."""
    bodies = [{"pixels": test_set[0][i].tolist()} for i in range(8)]
    alone = [request(server, "POST", "/api/predict", b)[2] for b in bodies]
    results, errors = [None] * 8, []

    def client(i):
        try:
            results[i] = [request(server, "POST", "/api/predict", bodies[i])[2]
                          for _ in range(10)]
        except Exception as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(8):
        assert all(r == alone[i] for r in results[i])


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def model_file(params, tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "m.npz"
    model.save(path, params, {"config": {"dataset": "mnist"}})
    return path


def test_command_serves_until_ctrl_c_then_exits_130(model_file):
    proc = demo("--model", model_file, "--port", "0")
    try:
        address, lines = address_of(proc)
        assert "784-10-10 net (m.npz)" in "".join(lines)
        status, _, page = request(address, "GET", "/")
        assert status == 200 and b"fastnn" in page
        status, _, out = request(address, "POST", "/api/predict", {"image": data_url(
            canvas_png(ONE))})
        assert status == 200 and len(out["input"]) == 784
    finally:
        code, out, err = stop(proc)
    assert "only this computer can connect" in "".join(lines)
    assert code == 130 and "fastnn: demo stopped" in err and "Traceback" not in err, err


def test_a_port_in_use_is_a_one_line_error(model_file):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "fastnn.demo", "--no-browser", "--model",
                              str(model_file), "--port", str(port)],
                             capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert f"cannot listen on 127.0.0.1 port {port}" in res.stderr
    assert "--port 0" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1"])  # no such name; not ours
def test_a_host_it_cannot_listen_on_names_the_host(model_file, host):
    res = subprocess.run([sys.executable, "-m", "fastnn.demo", "--no-browser", "--model",
                          str(model_file), "--host", host, "--port", "0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert f"cannot listen on {host} port 0" in res.stderr
    assert "pass a --host of this machine" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args, needle", [
    (["--port", "70000"], "must be 0..65535"),
    (["--port", "http"], "expected a port number"),
    (["--hots", "x"], "unrecognized arguments"),
])
def test_bad_flags_exit_2(args, needle):
    res = subprocess.run([sys.executable, "-m", "fastnn.demo", *args], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_a_missing_model_exits_1(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastnn.demo", "--no-browser", "--model",
                          str(tmp_path / "nope.npz")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1 and "nope.npz: no such file" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_without_a_model_it_trains_the_default_network_first(mnist, tmp_path):
    proc = demo("--port", "0", cwd=tmp_path)
    try:
        address, lines = address_of(proc)
        text = "".join(lines)
        assert "training the default network first" in text
        assert "epoch  10/10" in text and "test accuracy" in text
        assert "python -m fastnn.train --preset best --save model.npz" in text
        assert "--model model.npz" in text
        info = request(address, "GET", "/api/model")[2]
        assert info["sizes"] == [784, 10, 10] and info["about"]["test_accuracy"] > 0.9
    finally:
        code, _, err = stop(proc)
    assert code == 130, err
    assert os.listdir(tmp_path) == []  # --no-plot: nothing written
