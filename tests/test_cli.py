"""The command line: flags, presets, errors, JSON, plot, a short real training run."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import mnist_like_images

from fastnn import config, model, train


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastnn.train", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, needle", [
    (["--kernel", "torch"], "invalid choice: 'torch'"),
    (["--epochs", "0"], "must be a positive integer"),
    (["--epochs", "two"], "expected a positive integer"),
    (["--batch-size", "-1"], "must be >= 0"),
    (["--lr", "0"], "must be a positive finite number"),
    (["--lr", "nan"], "must be a positive finite number"),
    (["--hidden", "10", "0"], "must be a positive integer"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--threads", "0"], "must be a positive integer"),
    (["--threads", "100000"], "choose 1.."),
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--show", "--no-plot"], "--show needs --plot"),
    (["--lr", "1e-300"], "--lr 1e-300 rounds to 0.0 in float32"),  # nothing would train
    (["--lr", "1e39"], "rounds to inf in float32; use a rate between"),
    # a setting the run's optimizer would silently ignore
    (["--momentum", "0.5"], "--momentum is a setting of --optimizer momentum; this run's "
                            "optimizer is sgd"),
    (["--optimizer", "momentum", "--eps", "1e-6"], "--eps is a setting of --optimizer adam"),
    (["--plot", "p.png", "--no-plot"], "--plot p.png and --no-plot contradict each other"),
    (["--plot", "digits.JPG"], "fastnn writes PNG pictures, not JPG; name the file .png"),
    (["--compare", "--kernel", "numpy", "--epochs", "3"], "draws no pictures: drop "
                                                          "--kernel/--epochs"),
])
def test_bad_flags_exit_2_with_a_message(args, needle):
    res = run_cli(*args)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_presets_resolve_and_flags_override():
    seed = train.parse_args(["--preset", "seed"])
    assert (seed.hidden, seed.init, seed.batch_size, seed.lr, seed.epochs) == (
        [10], "uniform", 0, 0.1, 500)
    override = train.parse_args(["--preset", "seed", "--epochs", "3", "--lr", "0.5"])
    assert (override.epochs, override.lr, override.init) == (3, 0.5, "uniform")
    default = train.parse_args([])
    assert (default.kernel, default.hidden, default.dtype) == ("numba", [10], "float32")
    assert not train.distorting(default)
    record = train.parse_args(["--preset", "record"])
    assert train.distorting(record) and (record.hidden, record.elastic, record.elastic_sigma) == (
        [800], 38.0, 5.0)
    undistorted = train.parse_args(["--preset", "record", "--elastic", "0", "--rotate", "0",
                                    "--scale", "0", "--shear", "0"])
    assert not train.distorting(undistorted) and undistorted.epochs == record.epochs
    assert train.parse_args(["--elastic"]).elastic == train.SIMARD_ALPHA  # the flag alone


def test_batch_larger_than_dataset_exits_2(mnist):
    res = run_cli("--batch-size", "70000", "--no-plot")
    assert res.returncode == 2
    assert "larger than the 60000 training images" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_data_exits_1_without_traceback(tmp_path, monkeypatch, capsys):
    # An empty data dir, no mirrors, no npm: the error lists what was tried.
    from fastnn import data

    monkeypatch.setattr(data, "MIRRORS", {"mnist": [], "fashion": []})
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    code = train.main(["--data-dir", str(tmp_path / "empty"), "--no-plot", "--kernel", "numpy"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("fastnn: error:") and "npm" in err


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["numpy", "numba"])
def test_short_real_run_json_plot_and_checkpoint(mnist, tmp_path, kernel):
    out, png, ckpt = tmp_path / "run.json", tmp_path / "pred.png", tmp_path / "m.npz"
    res = run_cli("--kernel", kernel, "--epochs", "2", "--json", str(out), "--plot", str(png),
                  "--save", str(ckpt))
    assert res.returncode == 0, res.stderr
    assert "test accuracy" in res.stdout
    result = json.loads(out.read_text())
    assert result["kernel"] == kernel
    assert {"kernel", "config", "epochs", "test_accuracy", "train_seconds",
            "compile_seconds"} <= result.keys()
    # the variant plain numba picked, said in the banner and the JSON
    from fastnn.kernels import KERNELS
    from fastnn.kernels.numba_epoch import choose

    want = f"numba:{choose([784, 10, 10], config.max_threads(), 1.0, 32)}"
    assert result["strategy"] == (want if kernel == "numba" else None)
    assert want in KERNELS and (f"numba kernel ({want})," in res.stdout) == (kernel == "numba")
    cfg = result["config"]
    for key in ("hidden", "epochs", "batch_size", "lr", "seed", "dtype", "init", "threads",
                "sizes", "dataset"):
        assert key in cfg
    assert len(result["epochs"]) == 2
    for row in result["epochs"]:
        assert {"epoch", "loss", "train_accuracy", "test_accuracy", "seconds",
                "samples_per_second"} <= row.keys()
        assert 0 <= row["test_accuracy"] <= 1 and row["samples_per_second"] > 0
    # Two epochs of the default 784-10-10 net: comfortably above 90% on MNIST.
    assert result["test_accuracy"] >= 0.90
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    params, meta = model.load(ckpt)
    assert model.sizes_of(params) == [784, 10, 10]
    assert meta["epoch"] == 2


@pytest.mark.slow
def test_default_run_reaches_92_percent_and_kernels_match(mnist, tmp_path):
    """The README's main job: >= 92% test accuracy; numba and numpy within 0.2 points."""
    acc = {}
    for kernel in ("numba", "numpy"):
        out = tmp_path / f"{kernel}.json"
        res = run_cli("--kernel", kernel, "--json", str(out), "--no-plot", "--quiet")
        assert res.returncode == 0, res.stderr
        assert res.stdout == ""  # --quiet
        acc[kernel] = json.loads(out.read_text())["test_accuracy"]
    assert acc["numba"] >= 0.92
    assert abs(acc["numba"] - acc["numpy"]) <= 0.002


def test_the_default_picture_never_replaces_a_file_that_is_not_one(tmp_path):
    """predictions.png, unasked for, replaces an earlier run's PNG but not a file the
    user put there under that name; named with --plot, it is replaced as asked."""
    (tmp_path / "predictions.png").write_text("my notes")
    res = subprocess.run([sys.executable, "-m", "fastnn.train", "--epochs", "1"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 2 and "predictions.png (the default --plot) is there and is " \
                                   "not a PNG: fastnn will not replace it" in res.stderr
    assert (tmp_path / "predictions.png").read_text() == "my notes"
    args = train.parse_args(["--plot", str(tmp_path / "predictions.png")])
    train.check_paths(args)  # asked for: no objection


def test_output_piped_into_a_closed_reader_stops_quietly(mnist):
    """`python -m fastnn.train | head -1`: the command stops at its next line, with a
    shell's status for a pipe closed (141), no error message and no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "fastnn.train", "--epochs", "3",
                             "--hidden", "4", "--no-plot"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("fastnn: 784-4-10 net")
    proc.stdout.close()  # as head does after its line
    assert proc.wait(timeout=600) == 141
    assert proc.stderr.read() == ""


@pytest.mark.slow
def test_divergence_stops_with_exit_1(mnist, tmp_path):
    ckpt = tmp_path / "m.npz"
    res = run_cli("--lr", "1e30", "--epochs", "2", "--no-plot", "--save", str(ckpt))
    assert res.returncode == 1
    assert "diverged" in res.stderr and "--lr" in res.stderr
    assert "Traceback" not in res.stderr
    assert not ckpt.exists()  # no checkpoint of a broken model


@pytest.mark.slow
def test_same_seed_same_result(mnist):
    args = train.parse_args(["--epochs", "1", "--no-plot", "--quiet"])
    first = train.run(args)
    second = train.run(args)
    assert first["epochs"][0]["loss"] == second["epochs"][0]["loss"]
    assert first["test_accuracy"] == second["test_accuracy"]
    assert np.isfinite(first["epochs"][0]["loss"])


@pytest.mark.slow
def test_fashion_mnist_trains(fashion, tmp_path):
    """Fashion-MNIST goes through the same pipeline; a 784-10-10 net beats 75% in 2 epochs."""
    out, ckpt = tmp_path / "f.json", tmp_path / "f.npz"
    res = run_cli("--dataset", "fashion-mnist", "--epochs", "2", "--json", str(out), "--no-plot",
                  "--save", str(ckpt))
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["config"]["dataset"] == "fashion-mnist"
    assert result["test_accuracy"] >= 0.75
    # predictions name the classes: test image 0 is an ankle boot
    res = subprocess.run([sys.executable, "-m", "fastnn.predict", "--model", str(ckpt),
                          "--index", "0"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "true Ankle boot" in res.stdout


def test_deferred_interrupt_lets_the_block_finish_then_raises():
    """A real SIGINT inside the block: the block runs to its end, then KeyboardInterrupt;
    none: nothing raised; Python's own handler is back either way."""
    import os
    import signal

    from fastnn import cli

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    done = []
    with pytest.raises(KeyboardInterrupt):
        with cli.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python checks for signals in loops: none raised here
                pass
            done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with cli.deferred_interrupt():
        done.append(True)
    assert done == [True, True]


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
@pytest.mark.parametrize("seconds", [0.0, train.Progress.SECONDS])
def test_progress_bar_pieces_train_as_one_call(kernel, seconds):
    """A terminal run cuts its epochs into pieces (train.Progress): the same params, loss
    and accuracy as one call (13 batches; SECONDS 0: a first piece of 8 batches, then one
    a piece; the default: the 5 left in one at any speed above 640 samples/s), and a bar
    that ends at 100%."""
    import io

    from fastnn.kernels import get_kernel

    images, labels = mnist_like_images(400, seed=0)
    order = np.random.default_rng(1).permutation(400)
    backend = get_kernel(kernel)
    runs = []
    for cut in (False, True):
        params = model.init_params([784, 16, 10], seed=0)
        bar = train.Progress(3, io.StringIO()) if cut else None
        if bar:
            bar.SECONDS, bar.epoch = seconds, 2
        loss, acc = train.train_one_epoch(backend, params, images, labels, order, None, None,
                                          32, 0.05, None, bar)
        runs.append((params, loss, acc, bar))
    (whole, loss, acc, _), (pieces, cut_loss, cut_acc, bar) = runs
    for (W, b), (cW, cb) in zip(whole, pieces):
        np.testing.assert_array_equal(cW, W)
        np.testing.assert_array_equal(cb, b)
    # the loss: a sum over pieces of each piece's mean times its size, in another order
    assert cut_loss == pytest.approx(loss, rel=1e-12) and cut_acc == pytest.approx(acc)
    shown = bar.stream.getvalue().split("\r")
    if seconds == 0:
        assert len(shown) - 1 == 6  # a line per piece
    assert shown[-1] == f"epoch 2/3 [{'#' * 30}] 100%"


def test_progress_pieces_last_about_its_seconds():
    bar = train.Progress(1)
    assert bar.piece(32) == bar.FIRST_BATCHES * 32  # before any rate is known
    bar.samples, bar.seconds = 40_000, 2.0  # 20k samples/s so far
    assert bar.piece(32) == 32 * (int(20_000 * bar.SECONDS) // 32)
    bar.samples, bar.seconds = 10, 1.0  # slower than a batch a piece: still one batch
    assert bar.piece(32) == 32


def _run_in_terminal(cmd, timeout=600):
    """(exit code, what it wrote to stderr) of cmd with stderr a pseudo-terminal, read
    as it is written (a full terminal would block the child)."""
    import os
    import pty
    import threading

    master, slave = pty.openpty()
    shown = []

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child's end is closed: all read
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read)
    try:
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)  # the child holds its own: its exit ends the reads
        slave = None
        reader.start()
        child.wait(timeout=timeout)
        reader.join(timeout=60)
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    return child.returncode, b"".join(shown).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_run_shows_the_bar_and_trains_as_a_piped_one(mnist, tmp_path):
    """stderr a terminal (a pseudo-terminal here): the progress bar, and the same results
    as with stderr piped."""
    args = ["--epochs", "2", "--no-plot", "--json"]
    piped = run_cli(*args, str(tmp_path / "pipe.json"))
    assert piped.returncode == 0, piped.stderr
    assert "epoch 1/2 [" not in piped.stderr
    code, shown = _run_in_terminal([sys.executable, "-m", "fastnn.train", *args,
                                    str(tmp_path / "terminal.json")])
    assert code == 0, shown
    assert f"epoch 2/2 [{'#' * 30}] 100%" in shown
    pipe, term = (json.loads((tmp_path / f"{w}.json").read_text()) for w in ("pipe", "terminal"))
    assert term["test_accuracy"] == pipe["test_accuracy"]
    for a, b in zip(pipe["epochs"], term["epochs"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-12)
        assert b["test_accuracy"] == a["test_accuracy"]
