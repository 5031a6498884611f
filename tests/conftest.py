import os

import pytest
from helpers import checksums, dataset_files, go_offline, write_files

from fastnn import data
from fastnn.data import DataError, load_mnist


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST as {"train": (images, labels), "test": (images, labels)}.

    Skipped when no source is reachable, unless FASTNN_REQUIRE_MNIST=1 (CI),
    where a missing dataset must fail the run instead of hiding behind a skip.
    """
    try:
        return {split: load_mnist(split) for split in ("train", "test")}
    except DataError as e:
        if os.environ.get("FASTNN_REQUIRE_MNIST") == "1":
            pytest.fail(f"FASTNN_REQUIRE_MNIST=1 but MNIST cannot be loaded:\n{e}",
                        pytrace=False)
        pytest.skip(f"MNIST not reachable: {e}")


@pytest.fixture(scope="session")
def fashion():
    """Real Fashion-MNIST, {"train": ..., "test": ...}; skipped when no source has it
    (mirrors or Debian's dataset-fashion-mnist package, which .ci/run installs)."""
    try:
        return {split: load_mnist(split, dataset="fashion") for split in ("train", "test")}
    except DataError as e:
        pytest.skip(f"Fashion-MNIST not reachable: {e}")


@pytest.fixture
def offline(monkeypatch, tmp_path_factory):
    """No mirror, npm, system dir, FASTNN_DATA or user cache (helpers.go_offline)."""
    go_offline(monkeypatch, tmp_path_factory.mktemp("offline"))


@pytest.fixture
def files(monkeypatch, offline):
    """The synthetic data set's files (helpers.dataset_files), with their checksums in the
    table, offline."""
    files = dataset_files()
    monkeypatch.setitem(data.SHA256, "mnist", checksums(files))
    return files


@pytest.fixture
def data_dir(tmp_path_factory, files):
    """A data dir holding the good synthetic files; outside tmp_path, so that tmp_path
    holds only what a test writes there."""
    folder = tmp_path_factory.mktemp("data")
    write_files(folder, files)
    return folder
