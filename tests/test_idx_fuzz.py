"""Fuzzing the IDX reader: whatever the bytes, a valid array or a DataError.

`fastnn.data.parse_idx(raw, name)` is fed random bytes and random mutations
of valid image and label files (header bytes flipped, dimensions changed,
truncated, extended, magic replaced); gzip-compressed files, mutated the same
way, go through `fastnn.data._decompress` and through `_read_local` (the
data-dir reader: decompress, checksum, cache of verified files). Nothing may
escape but `DataError` (or the internal `_Unusable` that the source loop turns
into one), and anything returned must be exactly what a valid file holds.

Hand-picked bad files, one per defect, with their messages, are in
tests/test_data.py::test_parse_rejects_bad_files.
"""

import gzip
import hashlib
import itertools
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnn import data
from fastnn.data import DataError, parse_idx

TRAIN_IMAGES, TRAIN_LABELS = data.FILES["train"]
TEST_IMAGES, TEST_LABELS = data.FILES["test"]
NAMES = [TRAIN_IMAGES, TRAIN_LABELS, f"cache/dir/{TEST_IMAGES}", f"cache/dir/{TEST_LABELS}",
         "mystery.idx"]
FUZZ = settings(max_examples=80, deadline=None)


def valid_images(n, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, n * 784, dtype=np.uint8)
    return struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes()


def valid_labels(n, seed):
    labels = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    return struct.pack(">II", 2049, n) + labels.tobytes()


def check_parse(raw, name):
    """parse_idx(raw, name) returns exactly the file's content or raises a DataError."""
    try:
        out = parse_idx(raw, name)
    except DataError as e:
        msg = str(e)
        assert msg.startswith(f"{name}: ") and "delete it" in msg, msg
        return None
    base = os.path.basename(name)
    magic, n = struct.unpack(">II", raw[:8])
    assert isinstance(out, np.ndarray) and out.flags.c_contiguous
    if magic == 2051:
        assert "-labels-" not in base
        assert struct.unpack(">II", raw[8:16]) == (28, 28)
        assert n >= 1 and len(raw) == 16 + 784 * n
        assert out.dtype == np.uint8 and out.shape == (n, 784)
        assert out.tobytes() == raw[16:]
    else:
        assert magic == 2049 and "-images-" not in base
        assert n >= 1 and len(raw) == 8 + n
        assert out.dtype == np.int64 and out.shape == (n,)
        assert out.min() >= 0 and out.max() <= 9
        assert out.astype(np.uint8).tobytes() == raw[8:]
    return out


# One mutation of a bytes object: (kind, position, value)
mutation = st.one_of(
    st.tuples(st.just("flip-header"), st.integers(0, 15), st.integers(1, 255)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("dim"), st.integers(0, 3),
              st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 40), st.integers(0, 255)),
    st.tuples(st.just("magic"), st.sampled_from([0, 2049, 2051, 2050, 3331, 2**32 - 1]),
              st.just(0)),
)


def mutate(raw, mutations):
    raw = bytearray(raw)
    for kind, pos, value in mutations:
        if kind == "flip-header" and pos < len(raw):
            raw[pos] ^= value
        elif kind == "flip" and raw:
            raw[pos % len(raw)] ^= value
        elif kind == "dim" and len(raw) >= 8 + 4 * pos:
            raw[4 + 4 * pos:8 + 4 * pos] = struct.pack(">I", value)
        elif kind == "truncate":
            del raw[pos % (len(raw) + 1):]
        elif kind == "extend":
            raw += bytes([value]) * pos
        elif kind == "magic" and len(raw) >= 4:
            raw[:4] = struct.pack(">I", pos)
    return bytes(raw)


valid_file = st.one_of(
    st.builds(valid_images, st.integers(1, 3), st.integers(0, 99)),
    st.builds(valid_labels, st.integers(1, 40), st.integers(0, 99)),
)


@FUZZ
@given(st.binary(max_size=64), st.sampled_from(NAMES))
def test_random_bytes(raw, name):
    check_parse(raw, name)


@FUZZ
@given(st.sampled_from([2049, 2051]), st.lists(st.integers(0, 2**32 - 1), max_size=3),
       st.binary(max_size=3200), st.sampled_from(NAMES))
def test_random_header_and_body(magic, dims, body, name):
    """A real magic number with random dimensions: the interesting part of the space."""
    check_parse(struct.pack(f">I{len(dims)}I", magic, *dims) + body, name)


@FUZZ
@given(valid_file, st.lists(mutation, max_size=3), st.sampled_from(NAMES))
def test_mutated_valid_file(raw, mutations, name):
    check_parse(mutate(raw, mutations), name)


@pytest.mark.parametrize("name", NAMES)
def test_unmutated_files_parse(name):
    """The mutation tests start from files that do parse (under the right name)."""
    for raw in (valid_images(2, 0), valid_labels(7, 0)):
        kind = "-images-" if raw[3] == 3 else "-labels-"
        other = "-labels-" if kind == "-images-" else "-images-"
        if other in name:
            with pytest.raises(DataError, match="magic number"):
                parse_idx(raw, name)
        else:
            assert check_parse(raw, name) is not None


# ------------------------------------------------------------------ gzip


@FUZZ
@given(valid_file, st.lists(mutation, min_size=1, max_size=3), st.sampled_from(NAMES))
def test_mutated_gzip_decompresses_or_is_unusable(raw, mutations, name):
    blob = mutate(gzip.compress(raw, mtime=0), mutations)
    try:
        content = data._decompress(blob)
    except data._Unusable as e:
        assert str(e).startswith("not a valid gzip file"), e
        return
    check_parse(content, name)


_fresh = itertools.count()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_file, st.lists(mutation, min_size=1, max_size=3), st.booleans())
def test_data_dir_reader_returns_only_verified_content(tmp_path, monkeypatch, raw, mutations,
                                                       as_gz):
    """_read_local on a mutated raw or .gz file: the good content, or an _Unusable."""
    name = TRAIN_IMAGES if raw[3] == 3 else TRAIN_LABELS
    monkeypatch.setitem(data.SHA256, "mnist", {**data.SHA256["mnist"],
                                               name: hashlib.sha256(raw).hexdigest()})
    monkeypatch.setattr(data, "_verified", set())
    folder = tmp_path / str(next(_fresh))  # one dir per example
    folder.mkdir()
    blob = gzip.compress(raw, mtime=0) if as_gz else raw
    (folder / (name + (".gz" if as_gz else ""))).write_bytes(mutate(blob, mutations))
    try:
        content = data._read_local(folder, name, "mnist")
    except data._Unusable as e:
        assert str(folder) in str(e) and name in str(e), e
        return
    assert content == raw
    check_parse(content, name)
