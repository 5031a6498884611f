"""Helpers shared by the test modules: synthetic MNIST files, running a command in-process,
checking what a user sees, and a fake mirror.

Fixtures built on them (`offline`, `files`, `data_dir`) are in tests/conftest.py.
"""

import gzip
import hashlib
import http.server
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import data

TRAIN_IMAGES, TRAIN_LABELS = data.FILES["train"]
TEST_IMAGES, TEST_LABELS = data.FILES["test"]
N_TRAIN, N_TEST = 64, 16
REPO = str(Path(fastnn.__file__).resolve().parent.parent)

# Flags for a tiny, fast run on the synthetic data (NumPy kernel: nothing to compile).
FAST = ["--kernel", "numpy", "--hidden", "4", "--batch-size", "16", "--epochs", "1",
        "--no-plot"]


# --------------------------------------------------------------------- synthetic images


def mnist_like_images(n, seed):
    """uint8 (n, 784): random pixels, about 70% of them zero, between blank rows above
    and below (0-9 of each, as MNIST's border; the tile kernels skip them: widen_span);
    every seventh image blank."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 784)).astype(np.uint8)
    images[rng.random((n, 784)) < 0.7] = 0
    for image, top, bottom in zip(images.reshape(n, 28, 28), rng.integers(0, 10, n),
                                  rng.integers(0, 10, n)):
        image[:top], image[28 - bottom:] = 0, 0
    images[::7] = 0
    return images, rng.integers(0, 10, n)


# --------------------------------------------------------------------- synthetic IDX files


def idx_images(n, rows=28, cols=28, seed=0, count=None):
    """IDX3 image bytes; `count` overrides the header's item count."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)
    header = struct.pack(">IIII", 2051, n if count is None else count, rows, cols)
    return header + pixels.tobytes()


def idx_labels(labels, magic=2049):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


def sha256(raw):
    return hashlib.sha256(raw).hexdigest()


def write_files(folder, files, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def dataset_files(seed=0, n_train=N_TRAIN, n_test=N_TEST):
    """The four IDX files of a small synthetic MNIST, raw bytes by name."""
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: idx_images(n_train, seed=seed),
        TRAIN_LABELS: idx_labels(rng.integers(0, 10, n_train).tolist()),
        TEST_IMAGES: idx_images(n_test, seed=seed + 1),
        TEST_LABELS: idx_labels(rng.integers(0, 10, n_test).tolist()),
    }


def checksums(files):
    """A SHA256 table (name -> hex digest) that trusts exactly these files."""
    return {name: sha256(raw) for name, raw in files.items()}


def go_offline(monkeypatch, scratch):
    """No real mirror, npm, system dir, FASTNN_DATA or user cache; `scratch` is a tmp dir."""
    monkeypatch.setattr(data, "MIRRORS", {"mnist": [], "fashion": []})
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": [], "fashion": []})
    monkeypatch.setattr(data, "_verified", set())
    empty_bin = scratch / "empty-bin"
    empty_bin.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty_bin))  # no npm
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(scratch / "xdg-cache"))


# --------------------------------------------------------------------- special files

NULL, ZERO, FULL = (1, 3), (1, 5), (1, 7)  # Linux's numbers of /dev/null, /dev/zero, /dev/full


def mknod_problem(folder):
    """Why a fake device node cannot be made in folder, or None (and none is left)."""
    probe = os.path.join(folder, ".probe-node")
    try:
        os.mknod(probe, stat.S_IFCHR | 0o666, os.makedev(*NULL))
    except OSError as e:
        return f"mknod of a fake device node is not permitted here ({e})"
    os.unlink(probe)
    return None


def device(folder, name, numbers):
    """A character device node in folder (a fake /dev/null, /dev/zero or /dev/full: the
    real /dev is never touched), or a skip saying why mknod is not permitted."""
    problem = mknod_problem(folder)
    if problem:
        pytest.skip(problem)
    path = folder / name
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(*numbers))
    return path


def fifo(folder, name="fifo"):
    path = folder / name
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------- running commands


def snapshot(folder):
    """{relative path: bytes} of every file under folder ({} when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def call(main, argv, capsys):
    """Run a command's main(argv) in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def within(seconds, fn, *args):
    """fn(*args) in a daemon thread; fail, not hang, when it blocks (a FIFO opened for
    reading with no writer blocks forever)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return result[0]


def assert_clean_error(code, err, expected_code=1):
    """Exit code, no traceback, and the error is a `fastnn: error:` line (only progress
    lines, `fastnn: fetching ...` and `fastnn: warning: ...`, may come before it)."""
    assert code == expected_code, err
    assert "Traceback" not in err, err
    if expected_code == 1:
        lines = err.splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith("fastnn: error:")),
                     None)
        assert first is not None, err
        assert all(line.startswith(("fastnn: fetching ", "fastnn: warning: "))
                   for line in lines[:first]), err


def assert_usage_error(code, err, allowed):
    """Exit 2, no traceback, one `error:` line, and it says what is allowed (regex)."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert re.search(allowed, lines[0]), lines[0]


def ctrl_c_reaches_it():
    """preexec_fn for a process the test stops with SIGINT. A shell starts a background
    job with SIGINT ignored, and a Python started with SIGINT ignored never installs its
    KeyboardInterrupt handler: a test suite run as such a job (nohup ... &) would see its
    Ctrl-C tests fail. The child starts with the default action, as from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def subprocess_env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    env.update(extra)
    return env


def python_lines(script, timeout=900, **env):
    """The stdout lines of `python -c script` in a fresh interpreter (``env`` added to
    the environment), which must exit 0."""
    run = subprocess.run([sys.executable, "-c", script], env=subprocess_env(**env),
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.split("\n")


# `python -c BOOT SHA256.json ARGS...`: fastnn.train's CLI in a subprocess, trusting the
# synthetic files' checksums (a subprocess cannot be monkeypatched) with no mirrors.
BOOT = """
import json, sys
from fastnn import data
data.SHA256["mnist"] = json.load(open(sys.argv[1]))
data.MIRRORS["mnist"] = []
from fastnn.train import main
sys.exit(main(sys.argv[2:]))
"""


def synthetic_cli(tmp_path, files, *args, env=None, timeout=300, popen=False):
    """Run `python -m fastnn.train ARGS` on the synthetic files (cwd tmp_path)."""
    table = tmp_path / "sha256.json"
    table.write_text(json.dumps(checksums(files)))
    cmd = [sys.executable, "-c", BOOT, str(table), *map(str, args)]
    kw = dict(cwd=tmp_path, env=subprocess_env(**(env or {})), text=True)
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    return subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)


# --------------------------------------------------------------------- a fake mirror


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """/good/<f>.gz serves the file; /404/, /html/ and /drop/ fail three ways."""

    def do_GET(self):
        kind, _, fname = self.path.strip("/").partition("/")
        body = self.server.files.get(fname.removesuffix(".gz"))
        if kind == "404" or body is None:
            self.send_error(404)
            return
        if kind == "html":  # a captive portal or error page sent with 200
            body = b"<html><body>Service temporarily unavailable</body></html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "drop":  # promise the whole file, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass
