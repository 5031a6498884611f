"""Optimizers and schedules: every backend applies each rule like the reference."""

import json
import subprocess
import sys

import numpy as np
import pytest
from backends import LAYERS, TRAINERS

from fastnn import optim
from fastnn.kernels import REFERENCE, get_kernel
from fastnn.model import copy_params, init_params
from fastnn.tolerances import assert_agree

RULES = [("sgd", 0.0), ("momentum", 0.0), ("adam", 0.0), ("momentum", 1e-3), ("adam", 1e-3)]


def images(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 784)).astype(np.uint8)
    x[rng.random((n, 784)) < 0.7] = 0
    return x, rng.integers(0, 10, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rule, decay", RULES)
@pytest.mark.parametrize("name", TRAINERS)
def test_training_with_each_optimizer_agrees(name, rule, decay, dtype):
    """A few hundred steps (two epochs of 150 batches of 2) through identical batches."""
    x, y = images()
    params = init_params([784, 12, 7, 10], seed=1, dtype=dtype)
    lr = 0.002 if rule == "adam" else 0.05
    runs = {}
    for b in (name, REFERENCE):
        p, opt = copy_params(params), optim.Optimizer(rule, weight_decay=decay)
        order = np.random.default_rng(2).permutation(len(x))
        for _ in range(2):
            loss, acc = get_kernel(b).train_epoch(p, x, y, order, 2, lr, opt)
        runs[b] = (p, opt, loss, acc)
    (p, opt, loss, acc), (p_ref, opt_ref, loss_ref, acc_ref) = runs[name], runs[REFERENCE]
    assert opt.step == opt_ref.step == 300
    for a, r in zip(p, p_ref):
        assert_agree(a[0], r[0], dtype, f"{name} {rule} W", trajectory=True)
        assert_agree(a[1], r[1], dtype, f"{name} {rule} b", trajectory=True)
    assert len(opt.state) == len(opt_ref.state) == opt.n_slots()
    for slot, slot_ref in zip(opt.state, opt_ref.state):
        for a, r in zip(slot, slot_ref):
            assert_agree(a[0], r[0], dtype, f"{name} {rule} state W", trajectory=True)
    assert_agree(loss, loss_ref, dtype, f"{name} {rule} loss", trajectory=True)
    assert abs(acc - acc_ref) <= 2 / len(x)  # at most a near-tie or two flip
    assert not np.array_equal(p_ref[0][0], params[0][0])


@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("name", LAYERS)
def test_apply_update_agrees(name, rule):
    rng = np.random.default_rng(3)
    params = init_params([784, 9, 10], seed=3, dtype=np.float64)
    X, y = rng.random((5, 784)), rng.integers(0, 10, 5)
    ours, ref = copy_params(params), copy_params(params)
    o1, o2 = optim.Optimizer(rule, weight_decay=1e-2), optim.Optimizer(rule, weight_decay=1e-2)
    for _ in range(3):
        _, grads = get_kernel(REFERENCE).loss_and_grads(ref, X, y)
        get_kernel(name).apply_update(ours, grads, 0.01, o1)
        get_kernel(REFERENCE).apply_update(ref, grads, 0.01, o2)
    for a, r in zip(ours, ref):
        assert_agree(a[0], r[0], np.float64, f"{name} {rule} apply_update")


def test_adam_first_step_moves_every_weight_by_lr():
    """With bias correction, Adam's first step is lr * g / (|g| + eps): about lr each."""
    params = [(np.ones((10, 784)), np.zeros(10))]
    grads = [(np.full((10, 784), 0.3), np.full(10, -2.0))]
    opt = optim.Optimizer("adam", eps=1e-12)
    get_kernel(REFERENCE).apply_update(params, grads, 0.01, opt)
    np.testing.assert_allclose(params[0][0], 1 - 0.01, rtol=1e-9)
    np.testing.assert_allclose(params[0][1], 0.01, rtol=1e-9)


def test_momentum_accumulates():
    params = [(np.zeros((10, 784)), np.zeros(10))]
    grads = [(np.ones((10, 784)), np.ones(10))]
    opt = optim.Optimizer("momentum", momentum=0.5)
    for _ in range(2):
        get_kernel(REFERENCE).apply_update(params, grads, 1.0, opt)
    assert params[0][0][0, 0] == -(1 + 1.5)  # v1 = 1, v2 = 0.5 * 1 + 1


def test_schedules():
    lr = optim.learning_rate
    assert [lr(e, 1.0, 6, "constant") for e in (1, 6)] == [1.0, 1.0]
    assert [lr(e, 1.0, 6, "step") for e in range(1, 7)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = [lr(e, 1.0, 4, "cosine") for e in range(1, 5)]
    assert cos[0] == 1.0 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] > 0
    assert [lr(e, 1.0, 10, "constant", warmup=3) for e in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="unknown schedule"):
        lr(1, 1.0, 3, "linear")
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.Optimizer("rmsprop")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastnn.train", "--no-plot", "--quiet", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "augment"), [("numba", []), ("numpy", []),
                                                  ("numba", ["--elastic", "--rotate", "5"])],
                         ids=["numba", "numpy", "numba-distorted"])
def test_resume_gives_the_uninterrupted_result(mnist, tmp_path, kernel, augment):
    """A resumed run replays the finished epochs' draws (order, shifts, distortion keys)."""
    common = ["--kernel", kernel, "--optimizer", "adam", "--lr", "0.002", "--hidden", "16",
              "--batch-size", "256", *augment]
    full, part, resumed = tmp_path / "full.json", tmp_path / "ck.npz", tmp_path / "res.json"
    assert run_cli(*common, "--epochs", "3", "--json", str(full)).returncode == 0
    assert run_cli(*common, "--epochs", "1", "--save", str(part)).returncode == 0
    res = run_cli("--kernel", kernel, "--resume", str(part), "--epochs", "3", "--json",
                  str(resumed))
    assert res.returncode == 0, res.stderr
    a, b = json.loads(full.read_text()), json.loads(resumed.read_text())
    assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
    assert a["test_accuracy"] == b["test_accuracy"]


@pytest.mark.slow
def test_resume_refuses_changed_settings(mnist, tmp_path):
    ck = tmp_path / "ck.npz"
    assert run_cli("--epochs", "1", "--save", str(ck)).returncode == 0
    res = run_cli("--resume", str(ck), "--epochs", "2", "--hidden", "20")
    assert res.returncode == 2 and "differs from the checkpoint" in res.stderr
    res = run_cli("--resume", str(ck), "--epochs", "1")
    assert res.returncode == 2 and "already holds 1 epoch;" in res.stderr
    res = run_cli("--resume", str(tmp_path / "missing.npz"))
    assert res.returncode == 1 and "no such file" in res.stderr


def test_shift_images_moves_pixels_and_fills_zeros():
    from fastnn.kernels.numpy_ref import shift_images

    one = np.zeros((1, 784), np.uint8)
    one[0, 5 * 28 + 7] = 200
    moved = shift_images(one, np.array([[2, -3]]))
    assert moved[0, 7 * 28 + 4] == 200 and moved.sum() == 200
    assert shift_images(one, np.array([[-6, 0]])).sum() == 0  # shifted off the top


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", TRAINERS)
def test_training_with_shifts_agrees(name, dtype):
    x, y = images(200, seed=4)
    rng = np.random.default_rng(4)
    order, shifts = rng.permutation(200), rng.integers(-2, 3, (200, 2))
    params = init_params([784, 20, 10], seed=4, dtype=dtype)
    ours, ref, plain = copy_params(params), copy_params(params), copy_params(params)
    get_kernel(name).train_epoch(ours, x, y, order, 8, 0.05, None, shifts)
    get_kernel(REFERENCE).train_epoch(ref, x, y, order, 8, 0.05, None, shifts)
    get_kernel(REFERENCE).train_epoch(plain, x, y, order, 8, 0.05)
    for a, r in zip(ours, ref):
        assert_agree(a[0], r[0], dtype, f"{name} shifted W", trajectory=True)
        assert_agree(a[1], r[1], dtype, f"{name} shifted b", trajectory=True)
    assert not np.allclose(plain[0][0], ref[0][0])  # the shifts changed the training
