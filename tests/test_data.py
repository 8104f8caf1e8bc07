"""minibn.data: the shipped subset, the stratified split, IDX parsing, verified download, fallback.

No test touches the network: downloads go through a fake ``fetch`` that copies local files.
"""
import gzip
import hashlib
import shutil

import numpy as np
import pytest

from minibn import data


def test_subset_is_5000_images_500_per_digit():
    images, labels = data.load_subset()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_load_mnist_subset_is_a_shuffled_stratified_split():
    d = data.load_mnist(seed=3)
    assert d.source == "subset"
    assert d.x_train.shape == (4000, 28, 28) and d.x_test.shape == (1000, 28, 28)
    assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert np.bincount(d.y_test).tolist() == [100] * 10
    assert np.bincount(d.y_train).tolist() == [400] * 10
    # shuffled: a batch of 60 from the front holds many digits (the file is sorted by class)
    assert len(np.unique(d.y_train[:60])) >= 8
    # train and test are disjoint images
    train_rows = {r.tobytes() for r in d.x_train}
    assert sum(r.tobytes() in train_rows for r in d.x_test) < 5  # MNIST has a few duplicates


def test_split_depends_on_seed_and_is_reproducible():
    a, b, c = data.load_mnist(seed=0), data.load_mnist(seed=0), data.load_mnist(seed=1)
    assert np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)


def test_flatten_and_binarize():
    d = data.load_mnist(flatten=True, binarize=True)
    assert d.x_train.shape == (4000, 784)
    assert set(np.unique(d.x_train)) == {0.0, 1.0}


def test_stratified_split_rejects_too_small_classes():
    with pytest.raises(ValueError, match="too few"):
        data.stratified_split(np.array([0, 0, 1]), test_per_class=1)


def write_idx(path, array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    write_idx(tmp_path / f"x-idx3-ubyte{suffix}", images)
    got = data.read_idx(tmp_path / f"x-idx3-ubyte{suffix}")
    assert got.shape == (3, 4, 5) and np.array_equal(got, images)
    ints = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    write_idx(tmp_path / "i.idx", ints, code=0x0C)
    assert np.array_equal(data.read_idx(tmp_path / "i.idx"), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="5 bytes|bytes"):
        data.read_idx(tmp_path / "short")


def fake_mnist_files(src):
    """Tiny IDX files with MNIST's names; returns {name: sha256}."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(6, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([7, 1], np.uint8),
    }
    sums = {}
    for name, a in arrays.items():
        write_idx(src / name, a)
        sums[name] = hashlib.sha256((src / name).read_bytes()).hexdigest()
    return sums


def copying_fetch(src, calls):
    def fetch(url, dest):
        calls.append(url)
        shutil.copy(src / url.rsplit("/", 1)[1], dest)
    return fetch


def test_download_verifies_and_caches(tmp_path, monkeypatch):
    src = tmp_path / "mirror"
    src.mkdir()
    monkeypatch.setattr(data, "MNIST_FILES", fake_mnist_files(src))
    calls = []
    monkeypatch.setenv("MINIBN_DATA", str(tmp_path / "cache"))
    d = data.load_mnist(source="full", fetch=copying_fetch(src, calls))
    assert d.source == "full" and d.x_train.shape == (6, 28, 28) and d.y_test.tolist() == [7, 1]
    assert len(calls) == 4 and (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    data.load_mnist(source="full", fetch=copying_fetch(src, calls))
    assert len(calls) == 4, "verified files in the cache must not be downloaded again"


def test_download_rejects_a_corrupted_file_and_tries_the_next_mirror(tmp_path, monkeypatch):
    src = tmp_path / "mirror"
    src.mkdir()
    sums = fake_mnist_files(src)
    monkeypatch.setattr(data, "MNIST_FILES", sums)
    good = copying_fetch(src, [])

    def fetch(url, dest):
        if url.startswith("https://bad/"):
            with open(dest, "wb") as f:
                f.write(b"tampered")
        else:
            good(url, dest)

    paths = data.download_mnist(tmp_path / "c", fetch=fetch, mirrors=("https://bad/", "https://good/"))
    assert all(data.sha256_file(p) == sums[n] for n, p in paths.items())
    with pytest.raises(data.DownloadError, match="SHA-256 mismatch"):
        data.download_mnist(tmp_path / "d", fetch=fetch, mirrors=("https://bad/",))
    assert not list((tmp_path / "d").iterdir()), "a failed download must leave no file behind"


def test_offline_falls_back_to_the_subset_with_a_message(tmp_path):
    def offline(url, dest):
        raise OSError("Network is unreachable")

    with pytest.warns(UserWarning, match="Network is unreachable.*Falling back"):
        d = data.load_mnist(source="full", directory=str(tmp_path), fetch=offline)
    assert d.source == "subset" and d.x_train.shape == (4000, 28, 28)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source"):
        data.load_mnist(source="mnist")
