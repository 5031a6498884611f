"""fastnn.files: reads that open only regular files and stay bounded; outputs that replace
only what they should; fastnn.memory's size check.

Device nodes are fakes made with mknod inside the test's temp dir (a node with the
numbers of /dev/null, /dev/zero or /dev/full behaves as those do); the real /dev is
never written. Where mknod is not permitted those cases skip, saying so.
"""

import errno
import os
import stat
import threading

import pytest
from helpers import FULL, NULL, ZERO, device, fifo

from fastnn import data, files, memory, model


def write_bytes(path, content=b"new content\n"):
    files.write_output(path, lambda f: f.write(content))


def kinds(folder):
    """{name: (file type, bytes or None)} of everything in folder (links not followed)."""
    out = {}
    for p in sorted(folder.iterdir()):
        mode = p.lstat().st_mode
        content = p.read_bytes() if stat.S_ISREG(mode) else (
            os.readlink(p) if stat.S_ISLNK(mode) else None)
        out[p.name] = (stat.S_IFMT(mode), content)
    return out


# ------------------------------------------------------------------------------ writing


def test_regular_file_is_replaced_atomically_and_keeps_its_mode(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")
    path.chmod(0o600)  # the user made it private: a new version stays private
    inode = path.stat().st_ino
    write_bytes(path)
    assert path.read_bytes() == b"new content\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_new_file_gets_the_mode_open_would_give_and_missing_dirs_are_made(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    write_bytes(path)
    assert path.read_bytes() == b"new content\n"
    assert stat.S_IMODE(path.stat().st_mode) == files.new_file_mode()


def test_the_data_cache_and_checkpoints_get_the_same_mode(tmp_path, monkeypatch):
    """One mode for every file fastnn creates (files.new_file_mode), the data cache's too."""
    monkeypatch.setattr(data, "_verified", set())
    data._store(tmp_path / "cache", "x-labels-idx1-ubyte", b"abc",
                {"unreachable": set(), "unsaved": set()})
    model.save(tmp_path / "m.npz", model.init_params([784, 2, 10]))
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "cache" / "x-labels-idx1-ubyte",
                                                    tmp_path / "m.npz")}
    assert modes == {files.new_file_mode()}


def test_symlink_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "real.npz").write_text("old\n")
    (tmp_path / "link.npz").symlink_to("real.npz")
    write_bytes(tmp_path / "link.npz")
    assert os.readlink(tmp_path / "link.npz") == "real.npz"
    assert (tmp_path / "real.npz").read_bytes() == b"new content\n"


def test_dangling_symlink_creates_its_target(tmp_path):
    (tmp_path / "link.json").symlink_to("sub/target.json")
    write_bytes(tmp_path / "link.json")
    assert (tmp_path / "sub" / "target.json").read_bytes() == b"new content\n"
    assert os.readlink(tmp_path / "link.json") == "sub/target.json"


@pytest.mark.parametrize("via_link", [False, True], ids=["node", "symlink-to-node"])
def test_null_device_is_written_into_not_replaced(tmp_path, via_link):
    node = device(tmp_path, "null", NULL)
    path = node
    if via_link:
        path = tmp_path / "link"
        path.symlink_to("null")
    write_bytes(path)
    assert stat.S_ISCHR(node.lstat().st_mode)  # still the device, no regular file
    assert sorted(os.listdir(tmp_path)) == sorted({"null", path.name})


def test_full_device_gives_a_disk_full_error_naming_the_path(tmp_path):
    node = device(tmp_path, "full", FULL)
    with pytest.raises(files.FileError) as e:
        write_bytes(node, b"x" * 100_000)
    assert str(node) in str(e.value) and "No space left on device" in str(e.value)
    assert "free some space" in str(e.value)
    assert stat.S_ISCHR(node.lstat().st_mode)


def test_fifo_with_a_reader_receives_the_output(tmp_path):
    path = fifo(tmp_path)
    received = []
    reader = threading.Thread(target=lambda: received.append(path.read_bytes()))
    reader.start()
    try:
        for _ in range(200):  # the writer refuses a FIFO nobody reads: wait for the reader
            try:
                write_bytes(path)
                break
            except files.FileError:
                threading.Event().wait(0.01)
    finally:
        reader.join(10)
    assert received == [b"new content\n"]
    assert stat.S_ISFIFO(path.lstat().st_mode)


def test_fifo_without_a_reader_is_refused_at_once(tmp_path):
    path = fifo(tmp_path)
    with pytest.raises(files.FileError, match="FIFO .*no program is reading") as e:
        write_bytes(path)
    assert str(path) in str(e.value)
    assert stat.S_ISFIFO(path.lstat().st_mode)


def test_open_descriptor_path_is_written_into(tmp_path):
    """/proc/self/fd/N (what /dev/stdout is a link to) is written into, never replaced:
    here N is the write end of a pipe, as stdout is under `cmd | less`."""
    r, w = os.pipe()
    try:
        write_bytes(f"/proc/self/fd/{w}")
        os.close(w)
        assert os.read(r, 100) == b"new content\n"
    finally:
        os.close(r)


def test_open_descriptor_of_a_regular_file_is_appended_to(tmp_path):
    """`cmd --json /dev/stdout >> log`: the log gains the JSON; its other lines stay."""
    log = tmp_path / "log"
    log.write_text("earlier output\n")
    with open(log, "ab") as f:
        write_bytes(f"/proc/self/fd/{f.fileno()}")
    assert log.read_text() == "earlier output\nnew content\n"
    assert sorted(os.listdir(tmp_path)) == ["log"]


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_what_cannot_be_written_is_refused_without_naming_a_temp_file(tmp_path, where):
    if where == "directory":
        target, problem = tmp_path / "out", "is a directory"
        target.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "out.json"
        problem = f"{tmp_path / 'afile'} is a regular file, not a directory"
    before = kinds(tmp_path)
    for check in (files.check_output, write_bytes):
        with pytest.raises(files.FileError) as e:
            check(target)
        assert str(e.value).startswith(f"{target}: ") and problem in str(e.value), e.value
        assert ".part" not in str(e.value) and "free some space" not in str(e.value)
    assert kinds(tmp_path) == before


def test_unwritable_directory_says_so(tmp_path, monkeypatch):
    """As root nothing is unwritable, so os.access is told to say so for this directory."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False
                        if os.fspath(p) == str(tmp_path) else real(p, mode, **kw))
    with pytest.raises(files.FileError, match="is not writable.*directory you can write to"):
        files.check_output(tmp_path / "out.json")


def test_a_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
    """os.statvfs told that tmp_path's file system is mounted read-only (as root no
    directory is unwritable otherwise)."""
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False
                        if os.fspath(p) == str(tmp_path) else real_access(p, mode, **kw))

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly()
                        if os.fspath(p) == str(tmp_path) else real_statvfs(p))
    with pytest.raises(files.FileError, match="is on a read-only file system.*a writable one"):
        files.check_output(tmp_path / "out.json")


@pytest.mark.parametrize("code, remedy", [
    (errno.ENOSPC, "free some space"), (errno.EACCES, "directory you can write to"),
    (errno.EROFS, "read-only"), (errno.EIO, "pass another path")])
def test_failed_write_leaves_the_old_file_and_says_what_to_do(tmp_path, code, remedy):
    path = tmp_path / "out.json"
    path.write_text("old\n")

    def fail(f):
        f.write(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(files.FileError) as e:
        files.write_output(path, fail)
    assert str(e.value).startswith(f"{path}: cannot write it ({os.strerror(code)})")
    assert remedy in str(e.value)
    assert path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["out.json"]


def test_ctrl_c_while_writing_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_output(path, interrupted)
    assert path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["out.json"]


def test_the_data_cache_never_writes_into_a_fifo(tmp_path):
    """replace_file (fastnn's own files) refuses what write_output would write into."""
    path = fifo(tmp_path)
    with pytest.raises(files.FileError, match="is a FIFO"):
        files.replace_file(path, lambda f: f.write(b"x"))
    assert stat.S_ISFIFO(path.lstat().st_mode)


def test_same_file_sees_through_dots_symlinks_and_hard_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.npz").write_text("x")
    (tmp_path / "link").symlink_to("a.npz")
    os.link(tmp_path / "a.npz", tmp_path / "hard")
    for other in ("./a.npz", "a.npz", str(tmp_path / "a.npz"), "link", "hard", "sub/../a.npz"):
        assert files.same_file("a.npz", other), other
    assert not files.same_file("a.npz", "b.npz")
    assert files.same_file("new.json", "./new.json")  # neither exists yet


# ------------------------------------------------------------------------------ reading


def test_regular_file_is_read(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    assert files.read_regular(tmp_path / "f", 5) == b"12345"
    with files.open_regular(tmp_path / "f") as f:
        assert f.read() == b"12345"


@pytest.mark.parametrize("kind", ["directory", "fifo", "zero-device", "link-to-zero",
                                  "missing", "dangling-link", "under-a-file", "too-large"])
def test_anything_but_a_small_enough_regular_file_is_refused_at_once(tmp_path, kind):
    """None of these may block (a FIFO), run forever (/dev/zero) or be read at all."""
    path = tmp_path / "input"
    if kind == "directory":
        path.mkdir()
        problem = "is a directory"
    elif kind == "fifo":
        path = fifo(tmp_path, "input")
        problem = r"is a FIFO \(named pipe\)"
    elif kind in ("zero-device", "link-to-zero"):
        node = device(tmp_path, "zero", ZERO)
        if kind == "zero-device":
            path = node
        else:
            path.symlink_to("zero")
        problem = "is a character device"
    elif kind == "missing":
        problem = "no such file"
    elif kind == "dangling-link":
        path.symlink_to("gone")
        problem = "a symbolic link to gone, which does not exist"
    elif kind == "under-a-file":
        (tmp_path / "afile").write_text("x")
        path = tmp_path / "afile" / "input"
        problem = "not a directory"
    else:
        with open(path, "wb") as f:  # sparse: 5 GiB on no disk space
            f.truncate(5 * 2**30)
        problem = "5,368,709,120 bytes, more than a test file can hold"
    with pytest.raises(files.FileError, match=problem) as e:
        files.read_regular(path, 1000, "a test file")
    assert str(e.value).startswith(f"{path}: ")


def test_a_path_swapped_for_a_fifo_after_the_check_does_not_block(tmp_path, monkeypatch):
    """The type is checked again on the opened descriptor, and the open itself cannot
    block: here os.stat is made to say "regular file" for what is a FIFO."""
    path = fifo(tmp_path)
    regular = os.stat(tmp_path)  # any stat result, with its type made regular below
    fake = os.stat_result((stat.S_IFREG | 0o644, *regular[1:]))
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **kw: fake if os.fspath(p) == str(path)
                        else real(p, *a, **kw))
    with pytest.raises(files.FileError, match="is a FIFO"):
        files.open_regular(path)


def test_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    """Root reads anything, so os.open is made to refuse this one file."""
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    real = os.open

    def refuse(p, *args, **kw):
        if os.fspath(p) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real(p, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(files.FileError, match=r"cannot read it \(permission denied\); check "
                                              "its permissions"):
        files.open_regular(path)


# ------------------------------------------------------------------------------ memory


def test_memory_check_names_both_sizes(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 2**30)
    assert memory.too_large(2**30, "this") is None
    message = memory.too_large(3 * 2**30, "training a huge net")
    assert message == ("training a huge net needs about 3.0 GiB of memory, more than the "
                       "2.0 GiB available")
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: refuse nothing
    assert memory.too_large(2**60, "anything") is None


def test_available_memory_is_a_plausible_number():
    available = memory.available_bytes()
    assert available is None or 0 < available < 2**50
