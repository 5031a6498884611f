"""The files a user names: bounded reads of regular files, outputs that replace only what
they should.

Reading (``open_regular``, ``read_regular``): only a regular file is opened.
A FIFO would block the read forever, ``/dev/zero`` never ends and a directory
is no file, so the type is checked with ``os.stat`` before opening, and again
on the opened descriptor, which is opened with O_NONBLOCK so that a path
swapped for a FIFO in between cannot hang. The size is checked against what
the format allows before anything is read.

Writing (``write_output``): a regular file or a missing path is replaced
atomically (``replace_file``: a temp file beside it, fsync, rename), so a
crash, Ctrl-C or a full disk leaves the old file intact, and anything short of
SIGKILL removes the temp file. A symlink is followed and its target replaced; the link stays. A
character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe) is
written into, never replaced, and so is ``/dev/stdout`` when it is a file the
shell redirected to (appended to, as a shell would). A directory, block
device or socket is refused. ``check_output`` finds those problems before a
command starts its work, creating nothing.

Every problem is a ``FileError`` whose message names the path, says what is
wrong and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path


class FileError(OSError):
    """A path that cannot be read or written as asked: ``path: problem; remedy``.

    An OSError, as the failure it reports, so code that handles OSError handles it."""

    def __init__(self, path, problem: str, remedy: str, code: int | None = None):
        self.path, self.problem, self.remedy = os.fspath(path), problem, remedy
        super().__init__(f"{self.path}: {problem}; {remedy}")
        self.errno = code

    def remedy_or(self, default: str) -> str:
        """The remedy for a reader to print: its own (``default``: pass the right kind of
        file), unless the file is the right one but cannot be read as things are."""
        return self.remedy if self.errno in (errno.EACCES, errno.EPERM) else default


def user_cache_dir() -> Path:
    """The per-user cache, $XDG_CACHE_HOME/fastnn or ~/.cache/fastnn (data, compiled code)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastnn"


def new_file_mode() -> int:
    """The mode open() gives a new file, 0666 & ~umask. Every file fastnn creates gets it:
    the temp files behind atomic writes are 0600, which would hide a shared data cache or a
    checkpoint from the people the umask means to share it with."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def kind(mode: int) -> str:
    """What an st_mode is, for messages: "a directory", "a FIFO (named pipe)", ..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


# ------------------------------------------------------------------------------- reading


def _read_error(name, e: OSError) -> FileError:
    if isinstance(e, FileNotFoundError):
        if os.path.islink(name):
            return FileError(name, f"a symbolic link to {os.readlink(name)}, which does not "
                             "exist", "pass an existing file")
        return FileError(name, "no such file", "check the path")
    if isinstance(e, PermissionError):
        return FileError(name, "cannot read it (permission denied)",
                         "check its permissions (ls -l) or pass a file you can read", e.errno)
    if e.errno == errno.ENOTDIR:
        return FileError(name, "a part of its path is a file, not a directory (Not a "
                         "directory)", "check the path")
    return FileError(name, f"cannot read it ({e.strerror or e})", "check the path")


def _require_regular(name, mode, what):
    if not stat.S_ISREG(mode):
        raise FileError(name, f"is {kind(mode)}, not a regular file", f"pass {what}")


def open_regular(path, max_bytes: int | None = None, what: str = "a regular file"):
    """Open ``path`` for reading (binary) if it is a regular file of at most ``max_bytes``.

    ``what`` names the expected file in messages ("a checkpoint", ...). Symlinks are
    followed. Raises FileError for anything else: missing, unreadable, a directory, a
    FIFO, a device, a socket, too large.
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except OSError as e:
        raise _read_error(name, e) from None
    _require_regular(name, mode, what)
    try:
        # O_NONBLOCK: a FIFO put in its place since the stat cannot block the open
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise _read_error(name, e) from None
    try:
        st = os.fstat(fd)
        _require_regular(name, st.st_mode, what)
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileError(name, f"{st.st_size:,} bytes, more than {what} can hold "
                            f"({max_bytes:,} bytes at most)", f"pass {what}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, max_bytes: int, what: str = "a regular file") -> bytes:
    """The whole content of the regular file ``path``, at most ``max_bytes`` (FileError)."""
    with open_regular(path, max_bytes, what) as f:
        try:
            content = f.read(max_bytes + 1)  # + 1: the file may have grown since the fstat
        except OSError as e:
            raise _read_error(path, e) from None
    if len(content) > max_bytes:
        raise FileError(path, f"more than {what} can hold ({max_bytes:,} bytes at most)",
                        f"pass {what}")
    return content


# ------------------------------------------------------------------------------- writing

_WRITE_REMEDIES = {
    errno.ENOSPC: "the disk is full: free some space or pass a path on another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or pass a path on another disk",
    errno.EACCES: "pass a path in a directory you can write to",
    errno.EPERM: "pass a path in a directory you can write to",
    errno.EROFS: "the file system is read-only: pass a path on a writable one",
    errno.ENOTDIR: "a part of the path is a file, not a directory: pass another path",
    errno.EISDIR: "pass a file path, not a directory",
    errno.ENAMETOOLONG: "pass a shorter path",
    errno.ELOOP: "the path is a loop of symbolic links: pass another path",
    errno.EPIPE: "the program reading it has stopped: keep it running or pass a file path",
}


def _not_a_directory(name, parent):
    """FileError for a path whose directory ``parent`` is a file (or a device, ...)."""
    return FileError(name, f"{parent} is {kind(os.stat(parent).st_mode)}, not a directory",
                     "pass a path whose directories exist or can be created")


def _write_error(name, e: OSError) -> FileError:
    return FileError(name, f"cannot write it ({e.strerror or e})",
                     _WRITE_REMEDIES.get(e.errno, "pass another path"))


def _stat(name):
    """os.stat(name), None when nothing is there (or a symlink's target is missing)."""
    try:
        return os.stat(name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise _write_error(name, e) from None


def _descriptor(name) -> bool:
    """Does ``name`` lead, by symlinks, to an open descriptor (/dev/stdout, /dev/fd/N,
    /proc/<pid>/fd/N)? Such a path is a view of a file someone else opened: it must be
    written into, and its real path (that of a pipe, a terminal or the file the shell
    redirected to) must not be replaced."""
    p = os.path.abspath(name)
    for _ in range(40):  # the kernel's own limit on a chain of links
        if re.match(r"/(dev|proc/[^/]+)/fd/", p):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return False


def _refuse_kind(name, st):
    what = kind(st.st_mode)
    hint = (f"pass a file path, e.g. {os.path.join(name, 'out')}" if stat.S_ISDIR(st.st_mode)
            else "pass a file path")
    raise FileError(name, f"is {what}, which fastnn does not write into or replace", hint)


def check_output(path) -> None:
    """Raise FileError if ``path`` cannot take an output; create nothing.

    Fine: a regular file, a missing path whose nearest existing ancestor is a writable
    directory, a character device, a FIFO, an open descriptor. Not: a directory, a block
    device, a socket, a path under a file, an unwritable directory.
    """
    name = os.fspath(path)
    if not name:
        raise FileError("''", "an empty path", "pass a file name")
    if _descriptor(name):
        return
    st = _stat(name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            return
        _refuse_kind(name, st)
    parent = os.path.dirname(os.path.realpath(name))
    while not os.path.exists(parent):  # makedirs creates the rest when writing
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise _not_a_directory(name, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        if os.statvfs(parent).f_flag & os.ST_RDONLY:
            raise FileError(name, f"the directory {parent} is on a read-only file system",
                            "pass a path on a writable one")
        raise FileError(name, f"the directory {parent} is not writable",
                        _WRITE_REMEDIES[errno.EACCES])


def write_output(path, write) -> None:
    """Write an output the user asked for: ``write(f)`` gets a binary file object.

    Regular file or missing path (symlinks followed): replaced atomically. Character
    device, FIFO or open descriptor: written into. Anything else: FileError. A FIFO that
    no program reads is refused at once instead of blocking.
    """
    name = os.fspath(path)
    st = _stat(name)
    if _descriptor(name) or (st is not None and (stat.S_ISCHR(st.st_mode)
                                                 or stat.S_ISFIFO(st.st_mode))):
        _write_into(name, write, append=st is not None and stat.S_ISREG(st.st_mode))
    else:
        replace_file(name, write)


def write_text(path, text: str) -> None:
    write_output(path, lambda f: f.write(text.encode()))


def _write_into(name, write, append):
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | (os.O_APPEND if append else 0)
    try:
        fd = os.open(name, flags)
    except OSError as e:
        if e.errno == errno.ENXIO:  # O_NONBLOCK open of a FIFO without a reader
            raise FileError(name, "is a FIFO (named pipe) that no program is reading",
                            "start the reader first or pass a file path") from None
        raise _write_error(name, e) from None
    try:
        os.set_blocking(fd, True)  # the reader sets the pace from here on
        with os.fdopen(fd, "wb") as f:
            write(f)
    except OSError as e:
        raise _write_error(name, e) from None


def replace_file(path, write) -> None:
    """Atomically replace the regular file at ``path`` (or create it): ``write(f)`` fills
    a temp file beside it, which is fsynced and renamed over it. A symlink is followed and
    its target replaced. The old file keeps its mode; a new one gets new_file_mode().
    Anything but a regular file at the path is refused (FileError)."""
    name = os.fspath(path)
    st = _stat(name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        _refuse_kind(name, st)
    target = os.path.realpath(name)
    mode = stat.S_IMODE(st.st_mode) if st is not None else new_file_mode()
    directory = os.path.dirname(target)
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:  # a file where a directory of the path should be
        raise _not_a_directory(name, directory) from None
    except OSError as e:
        raise _write_error(name, e) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part",
                                   dir=directory)
    except OSError as e:
        raise _write_error(name, e) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # named after the path the user gave, not the temp file
            raise _write_error(name, e) from None
        raise


def same_file(a, b) -> bool:
    """Do paths ``a`` and ``b`` name one file (after symlinks; hard links too)?"""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_stream(path) -> bool:
    """Is ``path`` a character device, a FIFO or an open descriptor: written into, where
    two outputs do not destroy each other (``--json /dev/null --plot /dev/null``)?"""
    name = os.fspath(path)
    if _descriptor(name):
        return True
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)
