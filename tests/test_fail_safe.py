"""Failing safely: crashes and Ctrl-C while saving, diverging runs, interrupted training.

The promise under test (README, "Exit codes"): a run that goes wrong stops with
a message saying what happened and what to do, and whatever checkpoint is on
disk is always a complete, usable one, never a half-written or broken file.

`model.save` itself dying midway (an error or Ctrl-C inside np.savez) is
covered by tests/test_model.py::test_save_is_atomic and
::test_failed_first_save_leaves_nothing; here the same faults hit a training
run through `fastnn.train.main`. Divergence from the first epoch on real MNIST
is tests/test_cli.py::test_divergence_stops_with_exit_1.

Numerical edge cases in every kernel (all-zero and saturated images, huge
logits, a batch of one: no NaN, no overflow, the reference's answer) are
tests/test_agreement.py::test_all_zero_images, ::test_saturated_images,
::test_huge_logits and ::test_batch_of_one.

Synthetic data comes from the `files` and `data_dir` fixtures (tests/conftest.py),
helpers from tests/helpers.py; only the Ctrl-C run through a real subprocess uses
real MNIST (the `mnist` fixture).
"""

import errno
import os
import re
import signal
import subprocess
import sys
import time

import helpers
import numpy as np
import pytest

from fastnn import model, train
from fastnn.kernels import numpy_ref


def run(capsys, data_dir, *argv):
    return helpers.call(train.main, ["--data-dir", data_dir, *helpers.FAST, *argv], capsys)


def temp_files(folder):
    """Anything a writer may leave behind: files.replace_file's `.<name>.*.part` and the
    like."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(".") or p.suffix in (".part", ".tmp"))


def on_call(n, action, real):
    """A stand-in for `real` that runs `action(*args, **kw)` on its n-th call instead."""
    calls = {"n": 0}

    def wrapper(*args, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            return action(*args, **kw)
        return real(*args, **kw)

    return wrapper


def raise_(exc):
    def action(*args, **kw):
        raise exc
    return action


def float_near(text, value, rel=1e-3):
    """Does `text` print `value` (to ~4 significant digits)?"""
    return any(abs(float(m) - value) <= rel * abs(value)
               for m in re.findall(r"\d+\.\d+(?:e[-+]?\d+)?", text))


# ===================================================================== 4. saving


@pytest.mark.parametrize("fault", ["ctrl-c", "disk-full"])
def test_fault_while_saving_keeps_the_previous_checkpoint(tmp_path, data_dir, capsys,
                                                          monkeypatch, fault):
    """Epoch 1 is saved; writing epoch 2's checkpoint dies halfway. The epoch-1 file stays
    byte-identical, no temp file remains, and the message says what happened and what to do."""
    ck = tmp_path / "ck.npz"
    seen = {}
    real = np.savez

    def die_halfway(file, **arrays):
        seen["before"] = ck.read_bytes()  # the epoch-1 checkpoint, as it is on disk now
        file.write(b"PK\x03\x04 half a zip archive")
        if fault == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", on_call(2, die_halfway, real))
    code, out, err = run(capsys, data_dir, "--epochs", "3", "--save", ck)
    assert "Traceback" not in err
    assert ck.read_bytes() == seen["before"]
    assert temp_files(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["ck.npz"]
    monkeypatch.undo()
    params, meta = model.load(ck)
    assert meta["epoch"] == 1
    if fault == "ctrl-c":
        assert code == 130, err
        assert "interrupted" in err and f"--resume {ck}" in err, (
            f"Ctrl-C while saving must say it was interrupted and how to resume; got {err!r}")
    else:
        helpers.assert_clean_error(code, err)
        assert "No space left on device" in err
        assert str(ck) in err, (
            "a failed checkpoint write must name the checkpoint (and say the previous one is "
            f"intact); got {err!r}")


def test_save_path_that_cannot_be_created_exits_1(tmp_path, data_dir, capsys):
    (tmp_path / "afile").write_text("not a directory\n")
    target = tmp_path / "afile" / "ck.npz"
    code, out, err = run(capsys, data_dir, "--save", target)
    helpers.assert_clean_error(code, err)
    assert str(tmp_path / "afile") in err, err
    assert (tmp_path / "afile").read_text() == "not a directory\n"
    assert temp_files(tmp_path) == []


def test_checkpoint_and_json_get_normal_file_permissions(tmp_path, data_dir, capsys):
    """Atomic writes go through mkstemp (mode 0600); the final file should get the mode a
    plain open() would give (0666 & ~umask): files.new_file_mode(), the one mode every new
    file of fastnn gets (the data cache's too: tests/test_files.py)."""
    ck, js = tmp_path / "ck.npz", tmp_path / "run.json"
    code, out, err = run(capsys, data_dir, "--save", ck, "--json", js)
    assert code == 0, err
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (ck, js)}
    assert modes == {"ck.npz": oct(want), "run.json": oct(want)}, modes


# ===================================================================== 5. divergence


def good_checkpoint(tmp_path, data_dir, capsys, name="other.npz"):
    path = tmp_path / name
    code, _, err = run(capsys, data_dir, "--save", path)
    assert code == 0, err
    return path, path.read_bytes()


def test_diverging_run_leaves_an_existing_checkpoint_untouched(tmp_path, data_dir, capsys):
    """A fresh run at --lr 1e30 saving over another run's good checkpoint: it diverges in
    epoch 1, exits 1 with the epoch and a smaller --lr to try, and never writes the file."""
    path, before = good_checkpoint(tmp_path, data_dir, capsys)
    code, out, err = run(capsys, data_dir, "--lr", "1e30", "--epochs", "3", "--save", path)
    helpers.assert_clean_error(code, err)
    assert "diverged in epoch 1" in err and "smaller --lr" in err, err
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []
    message = err.splitlines()[-1]
    assert "None" not in message, (
        "with no finished epoch the message prints 'last finite epoch loss: None'; say that "
        f"no epoch finished with a finite loss instead: {message!r}")


def test_divergence_in_a_later_epoch_names_it_and_keeps_the_last_good_checkpoint(
        tmp_path, data_dir, capsys, monkeypatch):
    ck = tmp_path / "ck.npz"
    seen = {}

    def nan_epoch(*args, **kw):  # epoch 2's loss is NaN, parameters untouched
        seen["ck"] = ck.read_bytes()
        return float("nan"), 0.1

    monkeypatch.setattr(numpy_ref, "train_epoch", on_call(2, nan_epoch, numpy_ref.train_epoch))
    code, out, err = run(capsys, data_dir, "--epochs", "4", "--save", ck)
    helpers.assert_clean_error(code, err)
    assert ck.read_bytes() == seen["ck"] and temp_files(tmp_path) == []
    _, meta = model.load(ck)
    assert meta["epoch"] == 1
    last_loss = meta["history"][-1]["loss"]
    message = err.splitlines()[-1]
    assert "diverged in epoch 2" in message and "smaller --lr" in message, message
    assert float_near(message, last_loss), (message, last_loss)  # the last finite loss
    assert str(ck) in message  # ... still holds the last good epoch


@pytest.mark.parametrize("how", ["update-overflows", "nan-params"])
def test_a_checkpoint_never_holds_non_finite_parameters(tmp_path, data_dir, capsys,
                                                        monkeypatch, how):
    """The epoch loss is the mean of each batch's loss *before* its update, so the update
    that blows the parameters up is not seen until the next epoch. With one batch per
    epoch (--batch-size 0, the seed preset) that epoch is saved as "the last good epoch"."""
    ck = tmp_path / "ck.npz"
    if how == "update-overflows":  # real arithmetic: lr * gradient overflows float32
        argv = ["--batch-size", "0", "--lr", "3e38", "--epochs", "3", "--save", ck]
    else:  # the last batch's update of epoch 1 leaves NaN, its loss was finite
        def poison(params, *args, **kw):
            loss, acc = numpy_ref_train_epoch(params, *args, **kw)
            params[0][0][0, 0] = np.nan
            return loss, acc

        numpy_ref_train_epoch = numpy_ref.train_epoch
        monkeypatch.setattr(numpy_ref, "train_epoch", on_call(1, poison, numpy_ref_train_epoch))
        argv = ["--epochs", "3", "--save", ck]
    code, out, err = run(capsys, data_dir, *argv)
    helpers.assert_clean_error(code, err)
    assert "diverged" in err
    if ck.exists():
        params, meta = model.load(ck)
        finite = all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in params)
        assert finite, (f"{ck} (epoch {meta['epoch']}) holds NaN/inf parameters but the message "
                        f"calls it the last good epoch: {err.splitlines()[-1]!r}")


def test_divergence_message_is_not_buried_in_numpy_warnings(tmp_path, files, data_dir):
    """Through the real entry point: stderr is the one error line, not NumPy's overflow
    RuntimeWarnings with source lines of fastnn's kernels."""
    res = helpers.synthetic_cli(tmp_path, files, "--data-dir", data_dir, *helpers.FAST,
                                "--lr", "1e30")
    assert res.returncode == 1 and "diverged" in res.stderr, res.stderr
    assert "Warning" not in res.stderr, (
        "NumPy's overflow warnings (with fastnn source lines) come before the error; silence "
        f"them (np.errstate) around training:\n{res.stderr}")
    helpers.assert_clean_error(res.returncode, res.stderr)


# ===================================================================== 5. Ctrl-C


@pytest.mark.parametrize("where", ["training", "test-evaluation", "saving"])
def test_ctrl_c_in_epoch_2_exits_130_and_says_how_to_resume(tmp_path, data_dir, capsys,
                                                           monkeypatch, where):
    """Wherever in epoch 2 the KeyboardInterrupt lands, the exit code is 130, the message
    says it was interrupted and how to resume, and the epoch-1 checkpoint resumes."""
    ck = tmp_path / "ck.npz"
    target = {"training": (numpy_ref, "train_epoch"), "test-evaluation": (numpy_ref, "predict"),
              "saving": (np, "savez")}[where]
    monkeypatch.setattr(*target, on_call(2, raise_(KeyboardInterrupt), getattr(*target)))
    code, out, err = run(capsys, data_dir, "--epochs", "3", "--save", ck)
    monkeypatch.undo()
    assert code == 130, err
    assert "Traceback" not in err
    assert temp_files(tmp_path) == []
    assert model.load(ck)[1]["epoch"] == 1
    assert "interrupted" in err and f"--resume {ck}" in err, (
        f"Ctrl-C during {where}: the message must say it was interrupted and how to resume; "
        f"got {err!r}")


def test_ctrl_c_in_the_first_epoch_of_a_resumed_run_names_the_checkpoint(tmp_path, data_dir,
                                                                        capsys, monkeypatch):
    ck = tmp_path / "ck.npz"
    code, _, err = run(capsys, data_dir, "--epochs", "1", "--save", ck)
    assert code == 0, err
    before = ck.read_bytes()
    monkeypatch.setattr(numpy_ref, "train_epoch", raise_(KeyboardInterrupt))
    code, out, err = helpers.call(train.main, ["--data-dir", data_dir, "--kernel", "numpy",
                                          "--no-plot", "--resume", ck, "--epochs", "3",
                                          "--save", ck], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    assert ck.read_bytes() == before
    assert f"--resume {ck}" in err, (
        f"{ck} still holds epoch 1 and can be resumed, but the message does not say so: {err!r}")
    assert "saved nothing" not in err


def test_ctrl_c_in_a_resumed_run_without_save_says_it_kept_nothing(tmp_path, data_dir, capsys,
                                                                  monkeypatch):
    """Resumed without --save, an interrupted run has kept none of its epochs: the hint
    to continue says to add --save."""
    ck = tmp_path / "ck.npz"
    code, _, err = run(capsys, data_dir, "--epochs", "1", "--save", ck)
    assert code == 0, err
    monkeypatch.setattr(numpy_ref, "train_epoch", on_call(2, raise_(KeyboardInterrupt),
                                                          numpy_ref.train_epoch))
    code, out, err = helpers.call(train.main, ["--data-dir", data_dir, "--kernel", "numpy",
                                          "--no-plot", "--resume", ck, "--epochs", "3"], capsys)
    assert code == 130, err
    assert f"continue with --resume {ck} --save {ck} (this run saved nothing)" in err, err


@pytest.mark.slow
def test_sigint_during_training_exits_130_and_the_checkpoint_resumes(mnist, tmp_path):
    """The real thing: Ctrl-C (SIGINT) to `python -m fastnn.train` after its first
    checkpoint; then --resume that checkpoint for one more epoch.

    --threads 1: on a busy 2-core machine a 2-thread epoch can take 100x longer (every
    batch waits for a descheduled worker); one thread keeps the test to a few seconds."""
    env = helpers.subprocess_env()
    proc = subprocess.Popen([sys.executable, "-m", "fastnn.train", "--epochs", "50", "--save",
                             "ck.npz", "--no-plot", "--threads", "1"], cwd=tmp_path, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=helpers.ctrl_c_reaches_it)
    ck = tmp_path / "ck.npz"
    try:
        deadline = time.monotonic() + 120
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ck.exists(), "no checkpoint within 120 s"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # no temp file, no plot
    assert "interrupted" in err and "--resume ck.npz" in err, (
        f"the message must say it was interrupted and how to resume; got {err!r}")
    params, meta = model.load(ck)
    saved = meta["epoch"]
    assert 1 <= saved < 50 and model.sizes_of(params) == [784, 10, 10]
    res = subprocess.run([sys.executable, "-m", "fastnn.train", "--resume", "ck.npz", "--epochs",
                          str(saved + 1), "--no-plot", "--threads", "1"], cwd=tmp_path,
                         env=env, text=True,
                         capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming at epoch {saved + 1}" in res.stdout and "test accuracy" in res.stdout
