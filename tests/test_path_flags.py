"""Every path flag of every command, end to end: outputs never clobber what they should not,
inputs are read only when they are regular files, and each problem is one clear message.

Runs train, predict and evaluate in-process (their main(argv)) on the synthetic data set
(tests/conftest.py). Device nodes are fakes made with mknod in the test's temp dir, never
the real /dev (see tests/test_files.py for the same cases at the level of fastnn.files).
"""

import json
import os
import stat
import struct
import zlib

import numpy as np
import pytest
from helpers import (
    FAST,
    FULL,
    NULL,
    TEST_IMAGES,
    ZERO,
    assert_clean_error,
    assert_usage_error,
    call,
    device,
    fifo,
    snapshot,
    within,
)

from fastnn import evaluate, model, predict, train


@pytest.fixture
def checkpoint(tmp_path_factory, data_dir, capsys):
    """A 784-4-10 checkpoint after 1 epoch on the synthetic data, outside tmp_path."""
    path = tmp_path_factory.mktemp("ck") / "ck.npz"
    code, _, err = call(train.main, ["--data-dir", data_dir, *FAST, "--save", path], capsys)
    assert code == 0, err
    return path


def file_type(path):
    return stat.S_IFMT(os.lstat(path).st_mode)


# ===================================================================== special outputs


def predict_json(checkpoint, data_dir, target, capsys):
    return call(predict.main, ["--model", checkpoint, "--index", 0, "--data-dir", data_dir,
                               "--json", target], capsys)


def test_json_into_a_null_device_is_written_into_not_replaced(tmp_path, checkpoint, data_dir,
                                                              capsys):
    node = device(tmp_path, "null", NULL)
    code, out, err = predict_json(checkpoint, data_dir, node, capsys)
    assert code == 0, err
    assert "test image 0" in out
    assert file_type(node) == stat.S_IFCHR and os.listdir(tmp_path) == ["null"]


def test_json_into_a_full_device_is_a_disk_full_error(tmp_path, checkpoint, data_dir, capsys):
    node = device(tmp_path, "full", FULL)
    code, out, err = predict_json(checkpoint, data_dir, node, capsys)
    assert_clean_error(code, err)
    assert f"--json {node}: cannot write it (No space left on device); nothing was written" \
        in err
    assert file_type(node) == stat.S_IFCHR


def test_json_into_stdout_reaches_the_pipe(checkpoint, data_dir, capsys):
    """--json /dev/stdout under `| less`: /dev/stdout is a link to /proc/self/fd/1; here the
    descriptor is a pipe of the test's own."""
    r, w = os.pipe()
    try:
        code, out, err = predict_json(checkpoint, data_dir, f"/proc/self/fd/{w}", capsys)
        os.close(w)
        received = os.read(r, 1 << 16)
    finally:
        os.close(r)
    assert code == 0, err
    assert json.loads(received)["predictions"][0]["input"] == "test image 0"


def test_json_into_a_fifo_nobody_reads_is_refused_not_replaced(tmp_path, checkpoint, data_dir,
                                                               capsys):
    path = fifo(tmp_path)
    code, out, err = within(60, predict_json, checkpoint, data_dir, path, capsys)
    assert_clean_error(code, err)
    assert f"--json {path}: is a FIFO (named pipe) that no program is reading" in err
    assert "nothing was written" in err
    assert file_type(path) == stat.S_IFIFO


def test_save_through_a_symlink_updates_its_target(tmp_path, checkpoint, data_dir, capsys):
    target = tmp_path / "real.npz"
    target.write_bytes(checkpoint.read_bytes())
    (tmp_path / "link.npz").symlink_to("real.npz")
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--epochs", 2, "--resume",
                                       tmp_path / "link.npz", "--save", tmp_path / "link.npz"],
                          capsys)
    assert code == 0, err
    assert os.readlink(tmp_path / "link.npz") == "real.npz"
    assert model.load(target)[1]["epoch"] == 2


# ===================================================================== collisions


@pytest.mark.parametrize("argv, flags", [
    (["--json", "same.npz", "--save", "same.npz"], ("--save", "--json")),
    (["--plot", "X", "--save", "X"], ("--save", "--plot")),
    (["--save", "./a.npz", "--json", "a.npz"], ("--save", "--json")),
    (["--save", "a.npz", "--json", "link-to-a.npz"], ("--save", "--json")),
    (["--save", "a.npz", "--json", "hard-link-to-a.npz"], ("--save", "--json")),
    (["--plots-dir", "pics", "--plot", "pics/curves.png"], ("--plot", "--plots-dir")),
    (["--plots-dir", ".", "--json", "curves.csv"], ("--json", "--plots-dir")),
], ids=["json-save", "plot-save", "dot-slash", "symlink", "hard-link", "plots-dir-plot",
        "plots-dir-json"])
def test_two_outputs_on_one_file_exit_2_naming_both_flags(tmp_path, monkeypatch, data_dir,
                                                          capsys, argv, flags):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.npz").write_bytes(b"the user's file\n")
    (tmp_path / "link-to-a.npz").symlink_to("a.npz")
    os.link(tmp_path / "a.npz", tmp_path / "hard-link-to-a.npz")
    before = snapshot(tmp_path)
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST[:-1], *argv], capsys)
    a, b = flags
    assert_usage_error(code, err, rf"({a} .* and {b}|{b} .* and {a}) \S+ name the same file: "
                                  "one would overwrite the other; give each its own path")
    assert out == "" and snapshot(tmp_path) == before


@pytest.mark.parametrize("output", ["--json", "--plot", "--plots-dir"])
def test_an_output_on_the_resumed_checkpoint_exits_2_and_keeps_it(tmp_path, checkpoint,
                                                                  data_dir, capsys, output):
    before = checkpoint.read_bytes()
    target = checkpoint.parent if output == "--plots-dir" else checkpoint
    if output == "--plots-dir":  # a plots dir whose curves.png is the checkpoint
        os.replace(checkpoint, checkpoint.parent / "curves.png")
        checkpoint = checkpoint.parent / "curves.png"
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST[:-1], "--epochs", 2,
                                       "--resume", checkpoint, output, target], capsys)
    assert_usage_error(code, err, rf"{output} .* would overwrite --resume {checkpoint}, which "
                                  rf"this command reads; give {output} another path")
    assert checkpoint.read_bytes() == before


def test_an_output_on_a_data_file_exits_2_and_keeps_it(data_dir, capsys):
    before = snapshot(data_dir)
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--json",
                                       data_dir / TEST_IMAGES], capsys)
    assert_usage_error(code, err, rf"--json .*{TEST_IMAGES} would overwrite --data-dir")
    assert snapshot(data_dir) == before


@pytest.mark.parametrize("how", ["the path", "a symlink to it"])
def test_plots_dir_on_the_data_dir_exits_2_and_writes_nothing(tmp_path, data_dir, capsys, how):
    target = data_dir
    if how == "a symlink to it":
        target = tmp_path / "plots"
        target.symlink_to(data_dir)
    before = snapshot(data_dir)
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--plots-dir", target],
                          capsys)
    assert_usage_error(code, err, rf"--plots-dir {target} is the data directory .*, which this "
                                  r"command reads; give --plots-dir another directory")
    assert snapshot(data_dir) == before


def test_plots_dir_with_a_directory_in_place_of_its_file_says_to_move_it(tmp_path, data_dir,
                                                                         capsys):
    (tmp_path / "pics" / "weights.png").mkdir(parents=True)
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--plots-dir",
                                       tmp_path / "pics"], capsys)
    assert_clean_error(code, err)
    inside = tmp_path / "pics" / "weights.png"
    assert f"--plots-dir {inside}: is a directory" in err, err
    assert f"move {inside} out of the way, or pass another --plots-dir" in err, err


@pytest.mark.parametrize("command", ["predict --json", "predict --json (image)",
                                     "evaluate --plot"])
def test_predict_and_evaluate_outputs_never_replace_their_inputs(tmp_path, checkpoint,
                                                                 data_dir, capsys, command):
    image = tmp_path / "digit.png"
    image.write_bytes(b"not read: the collision is found first")
    before = checkpoint.read_bytes(), image.read_bytes()
    if command == "evaluate --plot":
        main, argv = evaluate.main, ["--kernel", "numpy", "--plot", checkpoint]
        flag, source = "--plot", "--model"
    elif command == "predict --json":
        main, argv = predict.main, ["--index", 0, "--json", checkpoint]
        flag, source = "--json", "--model"
    else:
        main, argv = predict.main, ["--image", image, "--json", image]
        flag, source = "--json", "--image"
    code, out, err = call(main, ["--model", checkpoint, "--data-dir", data_dir, *argv], capsys)
    assert_usage_error(code, err, rf"{flag} .* would overwrite {source} ")
    assert (checkpoint.read_bytes(), image.read_bytes()) == before


def test_resume_may_save_over_its_own_checkpoint_and_outputs_may_share_a_device(
        tmp_path, checkpoint, data_dir, capsys):
    node = device(tmp_path, "null", NULL)
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST[:-1], "--epochs", 2,
                                       "--resume", checkpoint, "--save", checkpoint, "--json",
                                       node, "--plot", node], capsys)
    assert code == 0, err
    assert model.load(checkpoint)[1]["epoch"] == 2


# ===================================================================== outputs that cannot be


@pytest.mark.parametrize("flag", ["--save", "--json", "--plot", "--plots-dir"])
def test_output_onto_a_directory_or_under_a_file_exits_1_before_training(tmp_path, data_dir,
                                                                         capsys, flag):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x\n")
    targets = [tmp_path / "afile" / "out"]
    if flag != "--plots-dir":
        targets.append(tmp_path / "adir")
    for target in targets:
        before = snapshot(tmp_path)
        code, out, err = call(train.main, ["--data-dir", data_dir, *FAST[:-1], flag, target],
                              capsys)
        assert_clean_error(code, err)
        assert err.startswith(f"fastnn: error: {flag} "), err
        assert str(target.parent if target.parent.name == "afile" else target) in err
        assert ".part" not in err and "free some space" not in err, err
        assert out == "" and snapshot(tmp_path) == before  # nothing trained, nothing written


def test_unwritable_save_dir_says_so_not_free_some_space(tmp_path, data_dir, capsys,
                                                         monkeypatch):
    """As root nothing is unwritable, so os.access is told to say so for this directory."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False
                        if os.fspath(p) == str(ro) else real(p, mode, **kw))
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--save", ro / "ck.npz"],
                          capsys)
    assert_clean_error(code, err)
    assert f"the directory {ro} is not writable" in err and "free some space" not in err


def test_disk_full_while_writing_the_plot_names_it(tmp_path, checkpoint, data_dir, capsys):
    node = device(tmp_path, "full", FULL)
    code, out, err = call(evaluate.main, ["--model", checkpoint, "--data-dir", data_dir,
                                          "--kernel", "numpy", "--plot", node], capsys)
    assert_clean_error(code, err)
    assert f"--plot {node}: cannot write it (No space left on device)" in err


# ===================================================================== inputs that are no files


@pytest.mark.parametrize("kind", ["zero-device", "link-to-zero", "fifo", "directory"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "train --resume"])
def test_model_that_is_no_regular_file_exits_1_at_once(tmp_path, data_dir, capsys, kind,
                                                       command):
    """evaluate --model /dev/zero grew to 24 GB; a FIFO blocked forever."""
    if kind == "fifo":
        path = fifo(tmp_path, "model.npz")
    elif kind == "directory":
        path = tmp_path / "model.npz"
        path.mkdir()
    else:
        node = device(tmp_path, "zero", ZERO)
        path = node if kind == "zero-device" else tmp_path / "model.npz"
        if kind == "link-to-zero":
            path.symlink_to("zero")
    main, flag, extra = {"predict": (predict.main, "--model", ["--index", 0]),
                         "evaluate": (evaluate.main, "--model", ["--kernel", "numpy"]),
                         "train --resume": (train.main, "--resume", FAST)}[command]
    code, out, err = within(60, call, main, [flag, path, "--data-dir", data_dir, *extra],
                            capsys)
    assert_clean_error(code, err)
    what = {"fifo": "a FIFO", "directory": "a directory"}.get(kind, "a character device")
    assert f"{path}: is {what}" in err and "--save PATH" in err, err


@pytest.mark.parametrize("kind", ["link-to-zero", "fifo", "sparse-5GiB"])
def test_idx_file_that_is_no_regular_file_or_too_large_exits_1_at_once(tmp_path, files,
                                                                       capsys, kind):
    folder = tmp_path / "d"
    folder.mkdir()
    for name, raw in files.items():
        if name != TEST_IMAGES:
            (folder / name).write_bytes(raw)
    path = folder / TEST_IMAGES
    if kind == "fifo":
        fifo(folder, TEST_IMAGES)
        what = "is a FIFO"
    elif kind == "link-to-zero":
        device(tmp_path, "zero", ZERO)
        path.symlink_to(tmp_path / "zero")
        what = "is a character device"
    else:
        with open(path, "wb") as f:
            f.truncate(5 * 2**30)
        what = "5,368,709,120 bytes, more than an MNIST IDX file can hold"
    code, out, err = within(60, call, train.main, ["--data-dir", folder, *FAST], capsys)
    assert_clean_error(code, err)
    assert f"{path}: {what}" in err, err


def _png(width, height, rows=b""):
    """A grayscale PNG whose header declares width x height; its image data is `rows`."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_huge_image_is_refused_before_decoding(tmp_path, checkpoint, capsys):
    """A 10000x10000 PNG of 139 KB took 3.27 GB and printed Pillow's own warning."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png(10000, 10000, bytes(10001) * 10))
    code, out, err = call(predict.main, ["--model", checkpoint, "--image", path], capsys)
    assert_clean_error(code, err)
    assert f"{path}: 10000x10000 pixels, more than the 50 megapixels fastnn reads" in err
    assert "Warning" not in err and len(err.splitlines()) == 1, err


# ===================================================================== messages


def test_unreadable_checkpoint_says_permission_denied(checkpoint, data_dir, capsys,
                                                      monkeypatch):
    """It was reported as "not an .npz archive". Root reads anything, so os.open is made to
    refuse this one file."""
    real = os.open

    def refuse(p, *args, **kw):
        if os.fspath(p) == str(checkpoint):
            raise PermissionError(13, "Permission denied", str(p))
        return real(p, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    code, out, err = call(evaluate.main, ["--model", checkpoint, "--data-dir", data_dir,
                                          "--kernel", "numpy"], capsys)
    assert_clean_error(code, err)
    assert (f"{checkpoint}: cannot read it (permission denied); check its permissions (ls -l) "
            "or pass a file you can read") in err
    assert "not an .npz" not in err


def test_weight_decay_blow_up_names_weight_decay(data_dir, capsys):
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST, "--weight-decay",
                                       "1e30"], capsys)
    assert_clean_error(code, err)
    assert "diverged" in err and "a smaller --weight-decay than 1e+30" in err, err


def test_data_dir_that_is_a_fifo_exits_1_at_once(tmp_path, files, capsys):
    path = fifo(tmp_path, "data")
    code, out, err = within(60, call, train.main, ["--data-dir", path, *FAST], capsys)
    assert_clean_error(code, err)
    assert f"data dir {path}: Not a directory (it is a FIFO (named pipe))" in err, err


def test_huge_net_names_its_size_and_what_memory_there_is(data_dir, capsys, monkeypatch):
    """--hidden 10000000 died of a MemoryError for 58 GiB."""
    from fastnn import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 2**30)
    code, out, err = call(train.main, ["--data-dir", data_dir, *FAST[:2], "--hidden",
                                       "10000000"], capsys)
    assert_usage_error(code, err, r"--hidden 10000000: training a 784-10000000-10 net "
                                  r"\(7,950,000,010 parameters, float32\) needs about "
                                  r"\d+\.\d GiB of memory, more than the 16\.0 GiB available; "
                                  "choose smaller widths")


def test_adam_eps_that_rounds_to_zero_is_refused_but_fine_in_float64(data_dir, capsys):
    """The numba kernel raised ZeroDivisionError for --eps 1e-50 in float32."""
    argv = ["--data-dir", data_dir, *FAST, "--optimizer", "adam", "--eps", "1e-50"]
    code, out, err = call(train.main, argv, capsys)
    assert_usage_error(code, err, r"--eps 1e-50 is below the smallest normal float32 number "
                                  r"\(1\.2e-38\).*use --eps >= 1\.2e-38 or --dtype float64")
    code, out, err = call(train.main, [*argv, "--dtype", "float64"], capsys)
    assert code == 0, err


def test_huge_compare_steps_stream_their_sample_order():
    """--compare-steps 10**9 grew to 5.8 GB before a MemoryError: the order of the
    batches is now made one permutation at a time."""
    from fastnn.compare import sample_order

    pieces = sample_order(0, 1000, 10**9 * 32, 32)
    for _ in range(3):
        piece, shifts = next(pieces)
        assert len(piece) == 1024 and len(piece) % 32 == 0 and shifts is None
    rng = np.random.default_rng(0)
    expected = np.concatenate([rng.permutation(1000) for _ in range(4)])
    got = np.concatenate([order for order, _ in sample_order(0, 1000, 3200, 32)])
    np.testing.assert_array_equal(got, expected[:3200])  # the order it always was
    shifted = list(sample_order(0, 1000, 3200, 32, shift=2))  # a shift per position
    assert [s.shape for _, s in shifted] == [(len(o), 2) for o, _ in shifted]
    assert all(np.abs(s).max() <= 2 for _, s in shifted)
