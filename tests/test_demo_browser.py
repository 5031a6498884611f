"""The demo in a real browser: headless Chromium draws on the page's canvas.

Debian's chromium and chromium-driver, driven by Selenium with both paths
given (so Selenium never tries to download a driver), against
`python -m fastnn.demo` serving a default network trained here. Where no
browser can be had the tests skip with the reason, except under
FASTNN_REQUIRE_BROWSER=1 (.ci/run sets it after installing the browser),
where they fail.

FASTNN_DEMO_SCREENSHOT=PATH also saves the page, after the drawn 7, as a
PNG (the README's screenshot).
"""

import base64
import io
import os
import shutil

import numpy as np
import pytest
from demo_server import ONE, SEVEN, address_of, demo, stop
from PIL import Image

from fastnn import files, images, model, predict, train
from fastnn.kernels import get_kernel
from fastnn.kernels.numpy_ref import to_float

PAD = 280  # the canvas' size in CSS pixels; strokes are given in its coordinates
WINDOW = (1200, 1000)


def unavailable(reason):
    if os.environ.get("FASTNN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FASTNN_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (it is in the test extra: "
                    "pip install -e '.[test]')")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    for path in (chromium, driver_path):
        if not os.path.isfile(path):
            unavailable(f"no {os.path.basename(path)} (Debian: apt-get install chromium "
                        "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # No background traffic: a closed network refuses it, and a test needs none.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 "--window-size={},{}".format(*WINDOW), "--force-device-scale-factor=1"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as e:
        unavailable(f"chromium did not start: {e.msg}")
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def default_model(mnist, tmp_path_factory):
    """python -m fastnn.train's default network (784-10-10, 10 epochs), saved."""
    result, params = train.fit(train.parse_args(["--no-plot", "--quiet"]))
    path = tmp_path_factory.mktemp("model") / "default.npz"
    model.save(path, params, dict(config=result["config"], history=result["epochs"]))
    return path, params


@pytest.fixture(scope="module")
def page(browser, default_model):
    """The demo command serving the default model; the browser on its page."""
    proc = demo("--model", default_model[0], "--port", "0")
    try:
        (host, port), _ = address_of(proc)
        browser.get(f"http://{host}:{port}/")
        wait(browser, lambda d: state(d)["status"] == "idle")
        yield browser
    finally:
        code, _, err = stop(proc)
        assert code == 130 and "Traceback" not in err, err


READ = """
const rows = [...document.querySelectorAll('#bars .row')];
const units = [...document.querySelectorAll('#units .unit')];
const input = document.getElementById('input').getContext('2d').getImageData(0, 0, 28, 28);
const info = document.getElementById('sample-info');
return {
  status: document.body.dataset.status,
  updates: Number(document.body.dataset.updates),
  label: document.getElementById('label').textContent,
  probabilities: rows.map(r => r.dataset.probability === undefined ? null
                                : Number(r.dataset.probability)),
  percents: rows.map(r => r.querySelector('.pct').textContent),
  top: rows.map(r => r.classList.contains('top')),
  input: Array.from(input.data).filter((_, i) => i % 4 === 0),
  units: units.map(u => [Number(u.dataset.unit), Number(u.dataset.activation),
                         u.querySelector('img').naturalWidth]),
  pad: document.getElementById('pad').toDataURL('image/png'),
  sample: info.dataset.index === undefined ? null
          : [Number(info.dataset.index), Number(info.dataset.trueLabel)],
};
"""


def state(driver):
    return driver.execute_script(READ)


def wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def draw(driver, strokes, pointer="mouse"):
    """Draw strokes ([(x, y), ...] in pad pixels) with a mouse, a finger or a pen;
    return the page's state once its prediction has caught up."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    kind = {"mouse": interaction.POINTER_MOUSE, "touch": interaction.POINTER_TOUCH,
            "pen": interaction.POINTER_PEN}[pointer]
    actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=5)
    before = state(driver)["updates"]
    for points in strokes:
        # offsets from the pad's centre, every ~10 px along each segment
        path = [points[0]] + [
            (x0 + t * (x1 - x0), y0 + t * (y1 - y0))
            for (x0, y0), (x1, y1) in zip(points, points[1:])
            for t in np.linspace(0, 1, 2 + int(np.hypot(x1 - x0, y1 - y0) / 10))[1:]]
        for i, (x, y) in enumerate(path):
            actions.pointer_action.move_to(pad, round(x - PAD / 2), round(y - PAD / 2))
            if i == 0:
                actions.pointer_action.pointer_down()
        actions.pointer_action.pointer_up()
    actions.perform()
    wait(driver, lambda d: (s := state(d))["status"] == "idle" and s["updates"] > before)
    return state(driver)


def clear(driver):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "clear").click()
    assert state(driver)["label"] == "\u2013"


def no_errors_logged(driver):
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_the_page_shows_what_predict_computes(page, default_model, tmp_path):
    path, params = default_model
    clear(page)
    shown = draw(page, SEVEN)

    # The drawing as the page sent it, given to `python -m fastnn.predict --image`.
    png = tmp_path / "drawing.png"
    png.write_bytes(base64.b64decode(shown["pad"].split(",", 1)[1]))
    assert shown["input"] == images.load_image(png).tolist()  # the 28x28 the page shows
    args = predict.build_parser().parse_args(
        ["--model", str(path), "--image", str(png), "--kernel", "numba", "--top", "10"])
    (result,) = predict.run(args, out=io.StringIO())
    P = [None] * 10
    for entry in result["top"]:
        P[entry["label"]] = entry["probability"]
    assert shown["probabilities"] == P  # the same numbers, to the last bit
    for text, p in zip(shown["percents"], P):
        assert text.endswith("%") and abs(float(text[:-1]) - 100 * p) <= 0.05 + 1e-9, (text, p)
    best = result["top"][0]["label"]
    assert shown["label"] == str(best) and shown["top"] == [k == best for k in range(10)]

    # Every hidden unit of the 784-10-10 net, its activation, its weights picture.
    X = to_float(np.array(shown["input"], np.uint8)[None], np.float32)
    hidden = get_kernel("numba").activations(params, X)[0][0]
    assert [u[0] for u in shown["units"]] == list(range(10))
    assert [u[1] for u in shown["units"]] == hidden.tolist()
    wait(page, lambda d: all(u[2] == 28 for u in state(d)["units"]))  # pictures loaded
    no_errors_logged(page)

    target = os.environ.get("FASTNN_DEMO_SCREENSHOT")
    if target:
        save_screenshot(page, target)


@pytest.mark.parametrize("pointer", ["mouse", "touch", "pen"])
def test_a_vertical_stroke_is_a_1(page, pointer):
    clear(page)
    shown = draw(page, ONE, pointer)
    assert shown["label"] == "1", shown["probabilities"]
    assert max(shown["probabilities"]) == shown["probabilities"][1]
    no_errors_logged(page)


def test_the_prediction_follows_the_drawing(page, tmp_path):
    """It updates during a stroke (a stroke's start is sent at once, the rest once that
    answer is in), and ends on the whole drawing, not on a part of it."""
    clear(page)
    before = state(page)["updates"]
    first = draw(page, [[(150, 40), (150, 240)]])
    assert first["updates"] - before >= 2
    second = draw(page, [[(70, 60), (230, 60)]])  # the bar of a 7 (or a T)
    for shown in (first, second):
        png = tmp_path / "drawing.png"
        png.write_bytes(base64.b64decode(shown["pad"].split(",", 1)[1]))
        assert shown["input"] == images.load_image(png).tolist()
    assert second["input"] != first["input"]


def test_a_random_test_digit_with_its_true_label(page, mnist, default_model):
    from selenium.webdriver.common.by import By

    clear(page)
    before = state(page)["updates"]
    page.find_element(By.ID, "sample").click()
    wait(page, lambda d: (s := state(d))["updates"] > before and s["sample"] is not None)
    shown = state(page)
    index, true_label = shown["sample"]
    test_x, test_y = mnist["test"]
    assert true_label == test_y[index] and shown["input"] == test_x[index].tolist()
    X = to_float(test_x[index][None], np.float32)
    P = get_kernel("numba").forward(default_model[1], X)[0]
    assert shown["probabilities"] == P.tolist() and shown["label"] == str(np.argmax(P))
    text = page.find_element(By.ID, "sample-info").text
    assert f"true label {true_label}" in text and f"#{index}" in text
    no_errors_logged(page)


def save_screenshot(driver, target):
    """The page (its body, no blank margin) as a small palette PNG."""
    from selenium.webdriver.common.by import By

    shot = driver.find_element(By.TAG_NAME, "body").screenshot_as_png
    img = Image.open(io.BytesIO(shot)).convert("RGB")
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    files.write_output(target, lambda f: img.save(f, format="PNG", optimize=True))
