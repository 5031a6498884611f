"""Fuzzing every path argument of every command with random bytes, sizes and file kinds.

Each example builds a fresh case directory in which every path flag of one command
(train --save/--json/--plot/--plots-dir/--resume/--data-dir, predict --model/--image/
--json/--data-dir, evaluate --model/--plot/--data-dir) names something drawn at random:
nothing, random bytes, an empty or a sparse multi-gigabyte file, a valid file of the
right kind, a directory, a FIFO, a fake device node, a path under a regular file, or
a symlink to one of those. The command runs in-process (its main(argv)), and then:

- it returned 0, 1 or 2, with no traceback and, unless 0, one `error:` line;
- 0 only when every input was a valid file of its kind;
- nothing outside the case directory changed (the valid inputs that its symlinks point
  to live outside it), and inside it only outputs changed: an output that existed is
  unchanged or a complete new output of its kind, devices, FIFOs, directories and
  symlinks are still what they were, and no temp file is left.

Drawing pictures takes about a second with matplotlib, so the four plot functions are
replaced by stubs that write through the same files.write_output; the paths, checks
and writing are all real. Device nodes are fakes made with mknod inside the case
directory (never the real /dev); where mknod is not permitted, the test that uses
them skips, saying why.
"""

import os
import re
import shutil
import stat
import tempfile

import numpy as np
import pytest
from helpers import FAST, FULL, NULL, ZERO, call, mknod_problem, within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastnn import evaluate, files, model, plots, predict, train

PNG = b"\x89PNG\r\n\x1a\n"
DEVICES = {"null": NULL, "zero": ZERO, "full": FULL}
MKNOD_PROBLEM = mknod_problem(tempfile.gettempdir())

# What a path may name. "link:" kinds are symlinks to an entry of the named kind;
# "link:first" is a symlink to what the first flag of the example names (a collision,
# unless it is the flag itself). Valid inputs and plain outputs are listed several
# times: drawn more often, more examples get as far as writing their outputs.
COMMON = ["missing", "bytes", "empty", "sparse", "fifo", "directory", "under-a-file",
          "dangling-link", "link:bytes", "link:fifo", "link:directory"]
DEVICE_KINDS = ["device:null", "device:zero", "device:full", "link:device:zero"]
INPUT_KINDS = COMMON + ["link:valid", "link:valid-outside"] + ["valid"] * 10
OUTPUT_KINDS = COMMON + ["link:existing", "link:first"] + ["missing", "existing"] * 5
DATA_KINDS = (["missing", "bytes", "fifo", "link:valid-outside", "files:bytes",
               "files:gzip-bytes", "files:fifo", "files:sparse", "files:truncated",
               "files:link-to-zero"] + ["valid"] * 10)
# flag -> role, per command; the first flags listed are required
COMMANDS = {
    "train": (train.main, {"--data-dir": "data", "--save": "output", "--json": "output",
                           "--plot": "output", "--plots-dir": "outdir", "--resume": "checkpoint"}),
    "predict": (predict.main, {"--model": "checkpoint", "--data-dir": "data", "--image": "image",
                               "--json": "output"}),
    "evaluate": (evaluate.main, {"--model": "checkpoint", "--data-dir": "data",
                                 "--plot": "output"}),
}
REQUIRED = {"predict": ("--model",), "evaluate": ("--model",), "train": ()}


# ------------------------------------------------------------------------- the world


@pytest.fixture
def world(tmp_path, data_dir, capsys, monkeypatch):
    """Valid inputs outside every case dir, a scratch dir for the cases, plot stubs."""
    outside = tmp_path / "outside"
    outside.mkdir()
    ck = outside / "ck.npz"
    code, _, err = call(train.main, ["--data-dir", data_dir, *FAST, "--save", ck], capsys)
    assert code == 0, err
    img = np.zeros((40, 40), np.uint8)
    img[8:32, 18:22] = 255  # a "1"
    Image.fromarray(img).save(outside / "digit.png")
    shutil.copytree(data_dir, outside / "data")

    def stub(*paths):
        for path in paths:
            if path is not None:
                files.write_output(path, lambda f: f.write(PNG + b"stub"))

    monkeypatch.setattr(plots, "predictions_grid", lambda x, y, p, path, **kw: stub(path))
    monkeypatch.setattr(plots, "training_curves", lambda h, png, csv=None, **kw: stub(png, csv))
    monkeypatch.setattr(plots, "confusion", lambda cm, png, **kw: stub(png))
    monkeypatch.setattr(plots, "first_layer_weights", lambda W, png, **kw: stub(png))
    scratch = tmp_path / "cases"
    scratch.mkdir()
    return dict(outside=outside, checkpoint=ck, image=outside / "digit.png",
                data=outside / "data", scratch=scratch)


def make(world, case, name, role, kind, content, size, first=None):
    """Create what `name` in `case` is to be; return the path to pass on the command line.
    ``first``: the path of the example's first flag, for "link:first"."""
    path = case / name
    if kind == "link:first":
        if first is not None and first != path:
            path.symlink_to(first)
        return path
    if kind.startswith("link:"):
        kind = kind[len("link:"):]
        if kind == "valid-outside":
            target = {"checkpoint": world["checkpoint"], "image": world["image"],
                      "data": world["data"]}[role]
        else:
            target = make(world, case, name + ".target", role, kind, content, size)
        path.symlink_to(target)
        return path
    if kind == "missing":
        return path
    if kind == "dangling-link":
        path.symlink_to(name + ".nowhere")
    elif kind == "bytes":
        path.write_bytes(content)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "existing":
        path.write_bytes(b"the user's own file, not to be damaged\n")
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(size)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "notes.txt").write_text("the user's notes\n")
    elif kind == "under-a-file":
        (case / (name + ".file")).write_text("a file, not a directory\n")
        return case / (name + ".file") / "x"
    elif kind.startswith("device:"):
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(*DEVICES[kind.split(":")[1]]))
    elif kind == "valid":
        source = {"checkpoint": world["checkpoint"], "image": world["image"]}.get(role)
        if role == "data":
            shutil.copytree(world["data"], path)
        elif source is not None:
            shutil.copy(source, path)
        else:  # an output dir that exists
            path.mkdir()
    elif kind.startswith("files:"):  # a data dir with one damaged or odd file
        shutil.copytree(world["data"], path)
        victim = path / sorted(os.listdir(path))[size % 2]  # a t10k file: every command reads it
        victim.unlink()
        odd = kind.split(":")[1]
        if odd == "bytes":
            victim.write_bytes(content)
        elif odd == "gzip-bytes":
            victim.with_name(victim.name + ".gz").write_bytes(content)
        elif odd == "fifo":
            os.mkfifo(victim)
        elif odd == "sparse":
            with open(victim, "wb") as f:
                f.truncate(size)
        elif odd == "truncated":
            raw = (world["data"] / victim.name).read_bytes()
            victim.write_bytes(raw[: size % len(raw)])
        else:
            zero = case / "zero"
            if not zero.exists():
                os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(*DEVICES["zero"]))
            victim.symlink_to(zero)
    else:
        raise AssertionError(kind)
    return path


def state(folder):
    """{relative path: what is there}, links not followed; regular files by content (or,
    when large and sparse, by size and inode)."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(root, name)
            st = os.lstat(path)
            key = os.path.relpath(path, folder)
            if stat.S_ISREG(st.st_mode):
                if st.st_size <= 1 << 20:
                    with open(path, "rb") as f:
                        out[key] = ("file", f.read())
                else:
                    out[key] = ("file", st.st_size, st.st_ino)
            elif stat.S_ISLNK(st.st_mode):
                out[key] = ("link", os.readlink(path))
            else:
                out[key] = (stat.S_IFMT(st.st_mode), st.st_rdev)
    return out


def complete_output(flag, path):
    """Is the regular file at path a whole output of flag?"""
    raw = open(path, "rb").read()
    if flag == "--save":
        try:
            model.load(path)
            return True
        except model.ModelError:
            return False
    if flag == "--json":
        import json

        try:
            json.loads(raw)
            return True
        except ValueError:
            return False
    return raw.startswith(PNG) or path.endswith(".csv")


# ------------------------------------------------------------------------- the property


def reads(command, flag, drawn):
    """Does the command read what flag names? (predict --image needs no data dir.)"""
    return not (command == "predict" and flag == "--data-dir" and "--image" in drawn)


def check_example(world, capsys, command, drawn):
    """Run one drawn example and check the property; return the exit code."""
    main, roles = COMMANDS[command]
    case = tempfile.mkdtemp(dir=world["scratch"])
    case = type(world["scratch"])(case)
    cwd = os.getcwd()
    try:
        argv, outputs, valid_inputs, first = [], {}, True, None
        for flag, (kind, content, size) in drawn.items():
            role = roles[flag]
            path = make(world, case, flag.strip("-"), role, kind, content, size, first)
            first = first or path
            argv += [flag, path]
            if role in ("output", "outdir"):
                outputs[flag] = path
            elif reads(command, flag, drawn):
                valid_inputs &= kind in ("valid", "link:valid", "link:valid-outside")
        if command == "train":
            argv += [*FAST[:-3], "--epochs", 2] + ([] if "--plot" in drawn else ["--no-plot"])
        elif command == "predict" and "--image" not in drawn:
            argv += ["--index", 0]
        elif command == "evaluate":
            argv += ["--kernel", "numpy"]
        if "--data-dir" not in drawn and (command != "predict" or "--image" not in drawn):
            valid_inputs = False  # the default data dir is an empty cache: offline, no data
        before, outside_before = state(case), state(world["outside"])
        os.chdir(case)
        code, out, err = within(60, call, main, argv, capsys)
        os.chdir(cwd)
        after = state(case)

        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        if code:
            errors = [line for line in err.splitlines()
                      if re.match(r"(fastnn|python -m fastnn\.\w+): error: ", line)]
            assert len(errors) == 1, (argv, err)
        else:
            assert valid_inputs, ("exit 0 with an input that is not a valid file", argv, err)
        assert state(world["outside"]) == outside_before, argv
        assert not [k for k in after if k.endswith(".part")], (argv, sorted(after))

        # Where an output may land: its own path, a symlink's target, a plots dir's files.
        written, new_dirs = {}, set()
        for flag, path in outputs.items():
            real = os.path.relpath(os.path.realpath(path), case)
            if flag == "--plots-dir":
                new_dirs.add(real)
                for name in train.PLOTS_DIR_FILES:
                    written[os.path.join(real, name)] = flag
            else:
                written[real] = flag
        for key, now in after.items():
            was = before.get(key)
            if now == was or (was is None and key in new_dirs):
                continue
            flag = written.get(key)
            assert flag is not None, ("changed or new, and not an output", key, argv, err)
            assert now[0] == "file" and (was is None or was[0] == "file"), (key, was, now)
            assert complete_output(flag, str(case / key)), ("damaged output", key, argv, err)
        for key in before:
            assert key in after, ("deleted", key, argv, err)
    finally:
        os.chdir(cwd)
        shutil.rmtree(case)
    return code


def draws(kinds_for_role):
    """A strategy: {flag: (kind, random bytes, random size)} for one random command."""
    content = st.binary(max_size=3000)
    size = st.integers(0, 8 * 2**30)

    @st.composite
    def build(draw):
        command = draw(st.sampled_from(sorted(COMMANDS)))
        _, roles = COMMANDS[command]
        chosen = {}
        for flag, role in roles.items():
            if flag in REQUIRED[command] or draw(st.booleans()):
                chosen[flag] = (draw(st.sampled_from(kinds_for_role[role])), draw(content),
                                draw(size))
        if command == "predict" and "--image" in chosen and draw(st.booleans()):
            chosen.pop("--data-dir", None)  # --image needs no data
        return command, chosen
    return build()


ROLES = {"checkpoint": INPUT_KINDS, "image": INPUT_KINDS, "data": DATA_KINDS,
         "output": OUTPUT_KINDS, "outdir": OUTPUT_KINDS}
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(draws({role: [k for k in kinds if "zero" not in k] for role, kinds in ROLES.items()}))
def test_random_files_at_every_path_flag(world, capsys, example):
    command, drawn = example
    check_example(world, capsys, command, drawn)


@FUZZ
@given(draws({role: kinds + (DEVICE_KINDS if role != "data" else [])
              for role, kinds in ROLES.items()}))
def test_random_files_and_device_nodes_at_every_path_flag(world, capsys, example):
    if MKNOD_PROBLEM:
        pytest.skip(MKNOD_PROBLEM)
    command, drawn = example
    check_example(world, capsys, command, drawn)


def test_valid_inputs_and_fresh_outputs_succeed(world, capsys):
    """The fuzz's baseline: each command with valid inputs and new outputs exits 0, so
    the exits of 1 and 2 above come from what was drawn."""
    valid = ("valid", b"", 0)
    fresh = ("missing", b"", 0)
    for command, drawn in [
        ("train", {"--data-dir": valid, "--save": fresh, "--json": fresh, "--plot": fresh,
                   "--plots-dir": fresh}),
        ("train", {"--data-dir": valid, "--resume": valid, "--save": fresh}),
        ("predict", {"--model": valid, "--data-dir": valid, "--json": fresh}),
        ("predict", {"--model": valid, "--image": valid, "--json": fresh}),
        ("evaluate", {"--model": valid, "--data-dir": valid, "--plot": fresh}),
    ]:
        assert check_example(world, capsys, command, drawn) == 0, (command, drawn)
