"""Image preprocessing, `python -m fastnn.predict` and `python -m fastnn.evaluate`."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fastnn import evaluate, images, model, predict
from fastnn.kernels import get_kernel


def run_cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"fastnn.{module}", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def centre_of_mass(flat):
    a = flat.reshape(28, 28).astype(np.float64)
    r = np.arange(28)
    return a.sum(axis=1) @ r / a.sum(), a.sum(axis=0) @ r / a.sum()


def draw_four(size=(100, 80), ink=30, paper=235, mode="L"):
    """A '4' drawn dark on light with thick strokes, squeezed into the top-left corner."""
    img = Image.new(mode, size, paper if mode == "L" else (paper, paper - 5, paper - 12))
    d = ImageDraw.Draw(img)
    colour = ink if mode == "L" else (ink, ink, ink + 10)
    d.line([(22, 4), (6, 30), (34, 30)], fill=colour, width=4)
    d.line([(26, 14), (26, 44)], fill=colour, width=4)
    return img


# --- preprocessing ------------------------------------------------------------------------


def test_offset_dark_on_light_digit_becomes_centred_mnist(tmp_path):
    path = tmp_path / "four.png"
    draw_four().save(path)
    out = images.load_image(path)
    assert out.shape == (784,) and out.dtype == np.uint8
    r, c = centre_of_mass(out)
    assert abs(r - 14) <= 1 and abs(c - 14) <= 1, (r, c)
    assert out.max() > 200  # ink is white, as in MNIST
    field = out.reshape(28, 28)
    assert np.median(out) == 0 and (out < 10).mean() > 0.6  # background black
    assert field[:2].max() == field[-2:].max() == 0  # a margin, like MNIST's
    rows = np.flatnonzero(field.max(axis=1) > 0)
    assert 19 <= rows[-1] - rows[0] + 1 <= 21  # the longer side scaled to 20 px


def test_light_on_dark_and_colour_jpeg_give_the_same_digit(tmp_path):
    reference = images.to_mnist(np.asarray(draw_four()))
    inverted = images.to_mnist(255 - np.asarray(draw_four(), dtype=np.int64))
    np.testing.assert_array_equal(inverted, reference)
    draw_four(mode="RGB").save(tmp_path / "four.jpg", quality=90)
    jpeg = images.load_image(tmp_path / "four.jpg").astype(float)
    assert np.corrcoef(jpeg, reference.astype(float))[0, 1] > 0.95


def test_transparent_background_is_treated_as_paper(tmp_path):
    img = Image.new("RGBA", (60, 60), (0, 0, 0, 0))
    ImageDraw.Draw(img).line([(30, 5), (30, 55)], fill=(0, 0, 0, 255), width=5)
    img.save(tmp_path / "one.png")
    out = images.load_image(tmp_path / "one.png").reshape(28, 28)
    assert out.max() > 200 and (out > 100).any(axis=0).sum() <= 4  # a thin upright stroke


def test_mnist_like_image_round_trips(mnist):
    test_x = mnist["test"][0][:200]
    corr = [np.corrcoef(images.to_mnist(x.reshape(28, 28)).astype(float), x.astype(float))[0, 1]
            for x in test_x]
    assert np.median(corr) > 0.99 and np.mean(corr) > 0.97


def _garment(top, bottom, left, right, seed=0):
    """A 28x28 Fashion-MNIST-like image: a textured shape on black in [top, bottom) x
    [left, right), its longer side 28 px, its brightest pixel 255."""
    a = np.zeros((28, 28), np.uint8)
    a[top:bottom, left:right] = np.random.default_rng(seed).integers(1, 256, (bottom - top,
                                                                              right - left))
    a[top, left] = 255
    return a


@pytest.mark.parametrize("box", [(0, 28, 4, 25), (7, 22, 0, 28), (0, 28, 9, 20)])
def test_a_fashion_mnist_image_round_trips_unchanged(tmp_path, box):
    """predict --image with a Fashion-MNIST model: a garment already in Fashion-MNIST's
    form (longer side 28 px, centred by its box, an odd margin's extra row above) comes
    back as it was; the digit steps (20 px, centre of mass) would move and shrink it."""
    a = _garment(*box)
    Image.fromarray(a).save(tmp_path / "garment.png")
    assert np.array_equal(images.load_image(tmp_path / "garment.png", fashion=True),
                          a.reshape(784))
    assert not np.array_equal(images.load_image(tmp_path / "garment.png"), a.reshape(784))


def test_fashion_mnist_test_images_round_trip(fashion, tmp_path):
    """Fashion-MNIST's own test images saved as PNG and read back: most unchanged (a few
    have a garment short of 28 px or a border mostly covered, and are rescaled)."""
    test_x = fashion["test"][0][:200]
    same = 0
    for x in test_x:
        Image.fromarray(x.reshape(28, 28)).save(tmp_path / "f.png")
        same += np.array_equal(images.load_image(tmp_path / "f.png", fashion=True), x)
    assert same >= 170


def test_preprocessing_is_idempotent():
    once = images.to_mnist(np.asarray(draw_four()))
    twice = images.to_mnist(once.reshape(28, 28))
    assert np.abs(once.astype(int) - twice).mean() < 3


def test_unreadable_files_raise_a_clear_error(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    with pytest.raises(images.ImageError, match=r"notes\.png: not an image"):
        images.load_image(text)
    with pytest.raises(images.ImageError, match=r"missing\.png: no such file"):
        images.load_image(tmp_path / "missing.png")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    with pytest.raises(images.ImageError, match=r"blank\.png: no digit found"):
        images.load_image(tmp_path / "blank.png")


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG was read as blank ("no digit found"): converting it to 8 bits clipped
    everything above 255. Its 8-bit twin and it must give the same digit."""
    eight = np.asarray(draw_four())
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    reference = images.load_image(tmp_path / "8.png").astype(int)
    assert np.abs(images.load_image(tmp_path / "16.png").astype(int) - reference).max() <= 1


@pytest.mark.parametrize("mode, scale", [("I", 1), ("I", 257), ("I", 1000), ("F", 1 / 255),
                                         ("F", 1.0), ("F", -3.0)])
def test_32_bit_integer_and_float_images_are_scaled(mode, scale):
    """Pillow's "I" (32-bit integers: 8-bit, 16-bit or any range of values) and "F"
    (floats: 0..1, 0..255 or any range) give the digit of the 8-bit picture."""
    eight = np.asarray(draw_four())
    reference = images.to_mnist(eight).astype(int)
    values = (eight.astype(np.int32) * scale if mode == "I"
              else eight.astype(np.float32) * np.float32(scale))
    gray = images.grayscale(Image.fromarray(values, mode))
    assert np.abs(images.to_mnist(gray).astype(int) - reference).max() <= 1


@pytest.mark.parametrize("fmt, mode", [("PNG", "L"), ("JPEG", "L"), ("PNG", "1")])
def test_a_large_picture_is_reduced_and_reads_as_its_small_version(tmp_path, fmt, mode):
    """A 2000x1600 picture is reduced (while decoding for JPEG, right after for others)
    before any float copy; the digit it holds is the same. Bilevel ("1") pictures cannot
    be reduced as they are and are converted first."""
    small = draw_four()
    big = small.resize((2000, 1600), Image.Resampling.NEAREST).convert(mode)
    path = tmp_path / f"big.{fmt.lower()}"
    big.save(path, fmt)
    reference = images.to_mnist(np.asarray(small)).astype(float)
    out = images.load_image(path).astype(float)
    assert np.corrcoef(out, reference)[0, 1] > 0.95


def test_more_pixels_than_pillow_opens_is_a_clear_error(tmp_path):
    """Above twice its own limit Pillow refuses on open; the message is fastnn's."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000,
                                                                          10000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with pytest.raises(images.ImageError, match=r"bomb\.png: more pixels than Pillow opens, "
                                                "more than the 50 megapixels fastnn reads"):
        images.load_image(path)


# --- metrics ------------------------------------------------------------------------------


def test_confusion_matrix_and_precision_recall_by_hand():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    cm = evaluate.confusion_matrix(y_true, y_pred, k=4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0],
                                       [0, 1, 0, 0],
                                       [1, 0, 2, 0],
                                       [0, 0, 0, 0]])
    precision, recall, count = evaluate.precision_recall(cm)
    np.testing.assert_allclose(precision[:3], [1 / 2, 1 / 2, 2 / 2])
    np.testing.assert_allclose(recall[:3], [1 / 2, 1 / 1, 2 / 3])
    np.testing.assert_array_equal(count, [2, 1, 3, 0])
    assert np.isnan(precision[3]) and np.isnan(recall[3])  # never seen, never predicted
    assert evaluate.accuracy(cm) == pytest.approx(4 / 6)


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside 0..9"):
        evaluate.confusion_matrix([0, 10], [0, 1])
    with pytest.raises(ValueError, match="equally long"):
        evaluate.confusion_matrix([0, 1], [0])


def test_report_shows_dashes_for_undefined_ratios():
    report = evaluate.format_report(evaluate.confusion_matrix([0, 1], [0, 0], k=3))
    assert "accuracy 50.00% (1 of 2)" in report
    assert re.search(r"^\s+1\s+-\s+0\.00%\s+1$", report, re.M)  # class 1: never predicted


def test_report_names_the_classes_when_given():
    """evaluate with a Fashion-MNIST model: the per-class rows say which garment."""
    names = ["T-shirt/top", "Trouser", "Ankle boot"]
    report = evaluate.format_report(evaluate.confusion_matrix([0, 1, 2], [0, 1, 1], k=3),
                                    names)
    assert re.search(r"^\s+1  Trouser\s+50\.00%\s+100\.00%\s+1$", report, re.M)
    assert re.search(r"^\s+2  Ankle boot\s+-\s+0\.00%\s+1$", report, re.M)
    lines = report.splitlines()
    header = next(ln for ln in lines if ln.startswith("class"))
    rows = [ln for ln in lines if ln.startswith(("    0", " mean"))]
    end = header.index("precision") + len("precision")  # the columns line up
    assert [ln.index("%") + 1 for ln in rows] == [end, end]


def test_predict_lines_align_with_long_class_names():
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    lines = [predict.format_line("test image 0", 12, truth, classes, [0.7, 0.2, 0.1], names)
             for truth, classes in ((9, [9, 5, 7]), (1, [1, 3, 6]))]
    assert lines[0].index("70.00%") == lines[1].index("70.00%")
    assert lines[0].index("20.00%") == lines[1].index("20.00%")
    digits = predict.format_line("test image 0", 12, 7, [7, 2, 1], [0.99, 0.005, 0.005])
    assert digits == "test image 0  true 7  7:  99.00%  2:   0.50%  1:   0.50%"


def test_top_classes_and_dataset_of():
    P = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    classes, probs = predict.top_classes(P, 2)
    np.testing.assert_array_equal(classes, [[1, 2], [0, 2]])
    np.testing.assert_allclose(probs, [[0.6, 0.3], [0.5, 0.3]])
    assert predict.dataset_of({"config": {"dataset": "fashion"}}) == "fashion"
    assert predict.dataset_of({}) == predict.dataset_of({"config": None}) == "mnist"


# --- the command lines --------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(mnist, tmp_path_factory):
    """A 784-32-10 net after one pass over 3000 training images (about 87% on the test set)."""
    params = model.init_params([784, 32, 10], seed=0)
    images_, labels = mnist["train"]
    get_kernel("numpy").train_epoch(params, images_, labels, np.arange(3000), 32, 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.npz"
    model.save(path, params, {"config": {"dataset": "mnist"}})
    return path, params


PERCENT = re.compile(r"(\d): +(\d+\.\d\d)%")


def test_predict_by_index_prints_true_labels_and_top_3(checkpoint, mnist):
    path, params = checkpoint
    res = run_cli("predict", "--model", path, "--index", 0, 1)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    test_x, test_y = mnist["test"]
    preds = get_kernel("numpy").predict(params, test_x[:2])
    for i, line in enumerate(lines):
        assert line.startswith(f"test image {i}") and f"true {test_y[i]}" in line
        found = PERCENT.findall(line)
        assert len(found) == 3
        assert int(found[0][0]) == preds[i]
        assert [float(p) for _, p in found] == sorted((float(p) for _, p in found), reverse=True)


def test_predict_top_5_and_top_10_sums_to_100(checkpoint):
    res = run_cli("predict", "--model", checkpoint[0], "--index", 7, "--top", 5)
    assert res.returncode == 0, res.stderr
    assert len(PERCENT.findall(res.stdout)) == 5
    res = run_cli("predict", "--model", checkpoint[0], "--index", 7, "--top", 10)
    found = PERCENT.findall(res.stdout)
    assert sorted(int(c) for c, _ in found) == list(range(10))
    assert sum(float(p) for _, p in found) == pytest.approx(100, abs=0.06)


def test_predict_image_file_and_json(checkpoint, mnist, tmp_path):
    path, params = checkpoint
    digit = mnist["test"][0][0]  # a 7; drawn again as dark ink on white paper, 4x larger
    big = Image.fromarray(255 - digit.reshape(28, 28)).resize((112, 112), Image.Resampling.BICUBIC)
    png = tmp_path / "seven.png"
    big.save(png)
    out = tmp_path / "pred.json"
    res = run_cli("predict", "--model", path, "--image", png, "--json", out)
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith(str(png)) and "true" not in line
    expected = get_kernel("numpy").predict(params, digit[None])[0]
    assert int(PERCENT.findall(line)[0][0]) == expected
    report = json.loads(out.read_text())
    (entry,) = report["predictions"]
    assert entry["input"] == str(png) and entry["true_label"] is None
    assert entry["top"][0]["label"] == expected and len(entry["top"]) == 3


def test_predict_numba_kernel_agrees_with_numpy(checkpoint):
    args = ("predict", "--model", checkpoint[0], "--index", 0, 1, 2, 3)
    numpy_run, numba_run = run_cli(*args), run_cli(*args, "--kernel", "numba")
    assert numba_run.returncode == 0, numba_run.stderr
    assert ([PERCENT.findall(line)[0][0] for line in numba_run.stdout.splitlines()]
            == [PERCENT.findall(line)[0][0] for line in numpy_run.stdout.splitlines()])


@pytest.mark.parametrize("index", [10000, -1])
def test_predict_bad_index_exits_2(checkpoint, index):
    res = run_cli("predict", "--model", checkpoint[0], "--index", 0, index)
    assert res.returncode == 2
    assert f"--index {index} is out of range" in res.stderr and "0..9999" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["--index", "0", "--top", "0"], "must be 1..10"),
    (["--index", "0", "--top", "11"], "must be 1..10"),
    (["--index", "x"], "expected a test-image index"),
    (["--index", "0", "--image", "a.png"], "not allowed with argument"),
    ([], "one of the arguments --index --image is required"),
])
def test_predict_bad_flags_exit_2(tmp_path, args, needle):
    res = run_cli("predict", "--model", tmp_path / "m.npz", *args)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_predict_missing_model_exits_1(tmp_path):
    res = run_cli("predict", "--model", tmp_path / "nope.npz", "--index", 0)
    assert res.returncode == 1
    assert res.stderr.startswith("fastnn: error:") and "nope.npz: no such file" in res.stderr
    assert "Traceback" not in res.stderr


def test_predict_unreadable_image_exits_1(checkpoint, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for target in (bad, tmp_path / "absent.jpg"):
        res = run_cli("predict", "--model", checkpoint[0], "--image", target)
        assert res.returncode == 1
        assert res.stderr.startswith(f"fastnn: error: {target}: ")
        assert "Traceback" not in res.stderr


def test_evaluate_prints_accuracy_table_and_matrix(checkpoint, mnist, tmp_path):
    path, params = checkpoint
    png = tmp_path / "cm.png"
    res = run_cli("evaluate", "--model", path, "--kernel", "numpy", "--plot", png)
    assert res.returncode == 0, res.stderr
    test_x, test_y = mnist["test"]
    preds = get_kernel("numpy").predict(params, test_x)
    correct = int((preds == test_y).sum())
    assert f"accuracy {100 * correct / len(test_y):.2f}% ({correct} of 10000)" in res.stdout

    lines = res.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix")) + 2
    cm = np.array([[int(v) for v in line.split()[1:11]] for line in lines[start:start + 10]])
    assert cm.sum() == 10000 and np.trace(cm) == correct
    np.testing.assert_array_equal(cm, evaluate.confusion_matrix(test_y, preds))
    assert lines[start + 10].split()[-1] == "10000"  # the totals row
    for c in range(10):  # the per-class table's counts
        assert re.search(rf"^\s+{c}\s+\S+%\s+\S+%\s+{np.sum(test_y == c)}$", res.stdout, re.M)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_without_plot_writes_nothing(checkpoint, tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastnn.evaluate", "--model",
                          str(checkpoint[0]), "--kernel", "numpy"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "wrote" not in res.stdout and list(tmp_path.iterdir()) == []


def test_evaluate_missing_model_exits_1(tmp_path):
    res = run_cli("evaluate", "--model", tmp_path / "nope.npz")
    assert res.returncode == 1
    assert res.stderr.startswith("fastnn: error:") and "Traceback" not in res.stderr
