"""Numba's on-disk cache, cleared when any source the kernels are compiled from changes.

Numba keys a cached function by its own file's contents only. The fused epochs
inline functions from other files (numba_shared.gather_row calls
numba_distort.distort_row, which reads constants from augment.py), so after an
edit of numba_distort.py alone a cached epoch kernel kept running the old
distort_row: with a changed scratch layout it wrote out of bounds and aborted
the process (it happened: a test session that kept its cache across that edit).
A fresh install writes every file anew and is not affected; a working tree
that changes under its cache (an edit, a `git pull`) is.

So, before any kernel is loaded, ``check()`` compares a digest of every source
the kernels depend on (SOURCES) with the one stamped beside Numba's cache files
for fastnn/kernels, and deletes those cache files (*.nbi, *.nbc) when it differs.
The Numba modules that import no other (numba_intrinsics, numba_layers) call it
on import. Cost: hashing ~150 KB once a process (under a millisecond); after a
change, one recompile (~20 s).
"""

import hashlib
from pathlib import Path

from fastnn import files
from fastnn.config import PACKAGE_DIR

# The files whose code or constants end up in compiled kernels
SOURCES = sorted((PACKAGE_DIR / "kernels").glob("*.py")) + [
    PACKAGE_DIR / name for name in ("augment.py", "config.py", "model.py", "optim.py")]
STAMP = "fastnn-sources.sha256"


def fingerprint(paths) -> str:
    """sha256 hex digest of the files' names and contents, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0")
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def clear_stale(folder, digest) -> bool:
    """Delete the Numba cache files in ``folder`` unless its stamp is ``digest``, then
    stamp it; True when it deleted (or found nothing stamped)."""
    folder = Path(folder)
    stamp = folder / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.suffix in (".nbi", ".nbc"):
            entry.unlink(missing_ok=True)
    # atomically: a reader sees the old stamp or the new, never half
    files.replace_file(stamp, lambda f: f.write(digest.encode()))
    return True


def cache_folder():
    """Where Numba caches the functions defined in fastnn/kernels (None: nowhere), as
    Numba's own locators decide it (NUMBA_CACHE_DIR, else the package's __pycache__)."""
    try:
        # not public API: should it change, the check is skipped and nothing fails
        from numba.core.caching import FunctionCache

        return FunctionCache(cache_folder)._cache_path  # any function of this directory
    except (ImportError, AttributeError, RuntimeError):  # RuntimeError: nowhere to cache
        return None


_checked = False


def check() -> None:
    """Clear fastnn's Numba cache if the kernels' sources changed since it was filled
    (once a process)."""
    global _checked
    if _checked:
        return
    _checked = True
    folder = cache_folder()
    if folder is None:
        return
    try:
        clear_stale(folder, fingerprint(SOURCES))
    except OSError:  # a cache we cannot clean: Numba will not be able to write it either
        pass
