"""fastnn.model: parameter initialisation and .npz checkpoints."""

import io
import os
import zipfile

import numpy as np
import pytest

from fastnn import model
from fastnn.model import ModelError, init_params, load, save

SIZES = [[784, 10, 10], [784, 256, 128, 10], [784, 1, 10], [5, 3], [784, 7, 6, 5, 10]]


# ---------------------------------------------------------------- init_params


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float64"])
@pytest.mark.parametrize("init", model.INITS)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
def test_init_params_shapes_and_dtypes(sizes, init, dtype):
    params = init_params(sizes, seed=1, dtype=dtype, init=init)
    assert len(params) == len(sizes) - 1
    for (W, b), fan_in, fan_out in zip(params, sizes[:-1], sizes[1:]):
        assert W.shape == (fan_out, fan_in) and b.shape == (fan_out,)
        assert W.dtype == b.dtype == np.dtype(dtype)
        assert W.flags.c_contiguous and b.flags.c_contiguous
    model.check_params(params)
    assert model.sizes_of(params) == sizes


def test_init_params_default_dtype_is_float32():
    W, b = init_params([784, 10, 10])[0]
    assert W.dtype == b.dtype == np.float32


def test_he_statistics():
    params = init_params([784, 300, 100, 10], seed=3, dtype=np.float64, init="he")
    for W, b in params:
        want = np.sqrt(2.0 / W.shape[1])
        assert 0.9 * want < W.std() < 1.1 * want, (W.shape, W.std(), want)
        assert abs(W.mean()) < 0.1 * want
        assert np.all(b == 0)


def test_uniform_range_and_spread():
    params = init_params([784, 300, 100, 10], seed=4, dtype=np.float64, init="uniform")
    for W, b in params:
        for a in (W, b):
            assert np.all(a >= -0.5) and np.all(a < 0.5)
        assert W.min() < -0.45 and W.max() > 0.45  # spread over the whole interval
        assert 0.9 / np.sqrt(12) < W.std() < 1.1 / np.sqrt(12)
    W, b = params[0]
    assert abs(W.mean()) < 0.01 and np.any(b != 0)


@pytest.mark.parametrize("init", model.INITS)
def test_same_seed_same_params_other_seed_other_params(init):
    a = init_params([784, 20, 10], seed=7, init=init)
    b = init_params([784, 20, 10], seed=7, init=init)
    c = init_params([784, 20, 10], seed=8, init=init)
    for (Wa, ba), (Wb, bb), (Wc, _) in zip(a, b, c):
        assert np.array_equal(Wa, Wb) and np.array_equal(ba, bb)
        assert not np.array_equal(Wa, Wc)


def test_unknown_init_is_a_value_error():
    with pytest.raises(ValueError, match="xavier") as excinfo:
        init_params([784, 10, 10], init="xavier")
    for known in model.INITS:
        assert known in str(excinfo.value)


# ---------------------------------------------------------------- save / load


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("sizes", [[784, 10, 10], [784, 32, 16, 8, 10]], ids=["shallow", "deep"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_save_load_round_trip(tmp_path, dtype, sizes):
    params = init_params(sizes, seed=5, dtype=dtype, init="uniform")
    meta = {"epoch": 3, "config": {"lr": 0.1, "hidden": sizes[1:-1], "name": "ü"},
            "history": [{"loss": 0.5, "acc": None}], "flag": True}
    path = tmp_path / "model.npz"
    save(path, params, meta)
    loaded, meta2 = load(path)
    assert meta2 == meta
    assert len(loaded) == len(params)
    for (W, b), (W2, b2) in zip(params, loaded):
        assert W2.dtype == W.dtype and b2.dtype == b.dtype
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
        assert W2.flags.c_contiguous and b2.flags.c_contiguous
    model.check_params(loaded)


def test_save_without_meta_loads_empty_meta(tmp_path):
    path = tmp_path / "m.npz"
    save(str(path), init_params([784, 3, 10]))
    assert load(str(path))[1] == {}


def test_save_overwrites(tmp_path):
    path = tmp_path / "m.npz"
    save(path, init_params([784, 3, 10], seed=1))
    second = init_params([784, 4, 10], seed=2)
    save(path, second)
    loaded, _ = load(path)
    assert np.array_equal(loaded[0][0], second[0][0])


def test_save_rejects_bad_params(tmp_path):
    W, b = init_params([784, 3, 10])[0]
    with pytest.raises(ModelError):
        save(tmp_path / "m.npz", [(W, b[:2])])
    assert os.listdir(tmp_path) == []


# --- checkpoints load() must refuse, each with a message naming the file


def _good(tmp_path, name="good.npz", sizes=(784, 6, 10)):
    path = tmp_path / name
    save(path, init_params(list(sizes), seed=9), {"epoch": 1})
    return path


def _rewrite(src, dst, drop=(), **replace):
    """Copy an npz checkpoint with some arrays dropped or replaced."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(replace)
    np.savez(dst, **arrays)
    return dst


def _not_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("this is not a zip archive\n")
    return path


def _truncated_half(tmp_path):
    data = _bytes(_good(tmp_path))
    path = tmp_path / "half.npz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_tail(tmp_path):
    data = _bytes(_good(tmp_path))
    path = tmp_path / "tail.npz"
    path.write_bytes(data[:-30])  # the end of the zip central directory is gone
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    return path


def _missing_header_keys(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, W0=np.zeros((10, 784), np.float32), b0=np.zeros(10, np.float32))
    return path


def _missing_layer(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "nolayer.npz", drop=("W1",))


def _future_version(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "future.npz",
                    format_version=np.array(model.FORMAT_VERSION + 1))


def _mismatched_shape(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "shape.npz",
                    W0=np.zeros((6, 783), np.float32))


def _mismatched_bias(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "bias.npz", b1=np.zeros(9, np.float32))


def _mismatched_dtype(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "dtype.npz", W0=np.zeros((6, 784), np.float64))


def _mismatched_bias_dtype(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "bdtype.npz", b0=np.zeros(6, np.float64))


def _bad_sizes(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "sizes.npz",
                    sizes=np.array([783, 6, 10], np.int64))


def _unknown_dtype(tmp_path):
    return _rewrite(_good(tmp_path), tmp_path / "f16.npz", dtype=np.array("float16"))


BROKEN = [_not_npz, _truncated_half, _truncated_tail, _empty, _missing_header_keys,
          _missing_layer, _future_version, _mismatched_shape, _mismatched_bias,
          _mismatched_dtype, _mismatched_bias_dtype, _bad_sizes, _unknown_dtype]


@pytest.mark.parametrize("make", BROKEN, ids=[f.__name__.strip("_") for f in BROKEN])
def test_load_rejects(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ModelError) as excinfo:
        load(path)
    assert str(path) in str(excinfo.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nothere.npz"
    with pytest.raises(ModelError, match="no such file") as excinfo:
        load(path)
    assert str(path) in str(excinfo.value)


def test_future_version_message_names_both_versions(tmp_path):
    path = _future_version(tmp_path)
    with pytest.raises(ModelError) as excinfo:
        load(path)
    assert str(model.FORMAT_VERSION + 1) in str(excinfo.value)
    assert str(model.FORMAT_VERSION) in str(excinfo.value)


def test_load_refuses_pickles(tmp_path):
    path = tmp_path / "pickle.npz"
    good = _good(tmp_path)
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array([{"evil": 1}], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(ModelError) as excinfo:
        load(path)
    assert str(path) in str(excinfo.value)


# --- atomic save


class Boom(Exception):
    pass


def _savez_that_dies(exc):
    def savez(file, **arrays):
        with zipfile.ZipFile(file, "w") as zf:  # half an archive reaches the temp file
            zf.writestr("W0.npy", b"\x93NUMPY" + b"\0" * 100)
        file.write(b"partial")
        raise exc

    return savez


@pytest.mark.parametrize("exc", [Boom("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_save_is_atomic(tmp_path, monkeypatch, exc):
    path = _good(tmp_path, "model.npz")
    before = _bytes(path)
    monkeypatch.setattr(np, "savez", _savez_that_dies(exc))
    with pytest.raises(type(exc)):
        save(path, init_params([784, 8, 10], seed=10), {"epoch": 2})
    assert _bytes(path) == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temp file left behind
    monkeypatch.undo()
    params, meta = load(path)
    assert meta == {"epoch": 1} and params[0][0].shape == (6, 784)


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", _savez_that_dies(Boom("disk full")))
    with pytest.raises(Boom):
        save(tmp_path / "new.npz", init_params([784, 8, 10]))
    assert os.listdir(tmp_path) == []


def test_save_writes_a_plain_npz(tmp_path):
    """The checkpoint is an ordinary .npz: np.load reads it without fastnn."""
    path = _good(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        assert {"format_version", "sizes", "dtype", "meta", "W0", "b0", "W1", "b1"} <= set(z.files)
        assert int(z["format_version"]) == model.FORMAT_VERSION
        assert list(z["sizes"]) == [784, 6, 10]
    assert zipfile.is_zipfile(io.BytesIO(_bytes(path)))


# --- reads are bounded: members checked before they are read, never more than asked for


def test_members_that_are_not_asked_for_are_never_read(tmp_path, monkeypatch):
    """A 2 MB .npz holding an extra 2 GiB member was decompressed in full before anything
    was checked. Here the extra member is 64 MiB of zeros (64 KiB compressed)."""
    path = _good(tmp_path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("extra.npy", bytes(64 * 2**20))
    opened = []
    real = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **kw: opened.append(getattr(name, "filename",
                                                                           name))
                        or real(self, name, *a, **kw))
    params, meta = load(path)
    assert meta == {"epoch": 1} and "extra.npy" not in opened
    assert set(opened) == {"format_version.npy", "sizes.npy", "dtype.npy", "meta.npy", "W0.npy",
                           "b0.npy", "W1.npy", "b1.npy"}


def test_a_member_larger_than_its_header_allows_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "MAX_META_CHARS", 10)
    path = _good(tmp_path)  # its meta, {"epoch": 1}, is 12 characters
    with pytest.raises(ModelError, match=r"meta declares 48 bytes, more than it can hold "
                                         r"\(40 at most\)") as e:
        load(path)
    assert str(e.value).startswith(f"{path}: ")


def test_a_net_larger_than_memory_is_refused_before_its_layers_are_read(tmp_path, monkeypatch):
    from fastnn import memory

    path = tmp_path / "m.npz"
    save(path, [(np.zeros_like(W), np.zeros_like(b)) for W, b in init_params([784, 6, 10])])
    with np.load(path) as z:  # compressed, the file is smaller than the net it declares
        np.savez_compressed(path, **{k: z[k] for k in z.files})
    assert path.stat().st_size < 10_000
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    with pytest.raises(ModelError, match=r"its 784-6-10 net needs about 19,120 bytes of "
                                         "memory, more than the 10,000 bytes available"):
        load(path)


@pytest.mark.parametrize("where", ["W0", "b1", "S0_W1"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(tmp_path, where, value):
    params = init_params([784, 6, 10], seed=1)
    state = [[(np.zeros_like(W), np.zeros_like(b)) for W, b in params]]
    path = tmp_path / "m.npz"
    save(path, params, {"epoch": 1}, state)
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays[where].flat[3] = value
    np.savez(path, **arrays)
    what = {"W0": "layer 0's W", "b1": "layer 1's b",
            "S0_W1": "optimizer state of layer 1's W"}[where]
    with pytest.raises(ModelError, match=f"{what} holds 1 NaN or infinite value") as e:
        model.load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ")


def test_more_optimizer_state_than_any_optimizer_keeps_is_refused(tmp_path):
    params = init_params([784, 3, 10])
    slot = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
    save(tmp_path / "m.npz", params, {}, [slot] * 3)
    with pytest.raises(ModelError, match="3 optimizer state slots, more than any optimizer "
                                         r"keeps \(2\)"):
        load(tmp_path / "m.npz")


def test_deeply_nested_metadata_is_an_error_not_a_crash(tmp_path):
    path = _good(tmp_path)
    _rewrite(path, path, meta=np.array("[" * 100_000 + "]" * 100_000))
    with pytest.raises(ModelError, match="its metadata is not valid JSON"):
        load(path)


def test_save_follows_a_symlink(tmp_path):
    (tmp_path / "real.npz").write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to("real.npz")
    save(tmp_path / "link.npz", init_params([784, 3, 10]), {"epoch": 7})
    assert os.readlink(tmp_path / "link.npz") == "real.npz"
    assert load(tmp_path / "real.npz")[1] == {"epoch": 7}
