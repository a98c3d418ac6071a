"""CIFAR-10/100: through keras.datasets, or a local copy of the official python-version files."""

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile

import numpy as np

from elastic_keras.errors import ElasticKerasError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# The official "python version" files of each CIFAR dataset (PAPER.md section 5).
CIFAR = {
    "cifar10": {"title": "CIFAR-10", "classes": 10, "archive": "cifar-10-python.tar.gz",
                "folder": "cifar-10-batches-py", "label_key": b"labels",
                "train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "cifar100": {"title": "CIFAR-100", "classes": 100, "archive": "cifar-100-python.tar.gz",
                 "folder": "cifar-100-python", "label_key": b"fine_labels",
                 "train": ("train",), "test": ("test",)},
}

# Expected md5 of each official archive (module level so tests can monkeypatch it).
MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}


def _how_to_get(name):
    """The two ways to provide a CIFAR dataset, for error messages."""
    c = CIFAR[name]
    return (f"Provide {c['title']} one of two ways: (1) be online so "
            f"keras.datasets.{name}.load_data() can download it (cached in ~/.keras/datasets); "
            f"or (2) download the official python version '{c['archive']}' from {CIFAR_URL} "
            f"and pass the folder holding it (or its extracted '{c['folder']}/' folder) as the "
            f"data dir: config `data.data_dir`, CLI `--set data.data_dir=PATH`, "
            f"Makefile `DATA_DIR=PATH`.")


def load_cifar(name, data_dir):
    """((x_train, y_train), (x_test, y_test), source) from data_dir or keras.datasets."""
    c = CIFAR[name]
    if data_dir is None:
        import keras

        try:
            if name == "cifar10":
                train, test = keras.datasets.cifar10.load_data()
            else:
                train, test = keras.datasets.cifar100.load_data(label_mode="fine")
        except Exception as e:  # offline, blocked, or a broken cache: say how to fix it
            raise ElasticKerasError(
                f"{c['title']} could not be loaded through keras.datasets "
                f"({type(e).__name__}: {e}). {_how_to_get(name)}") from e
        where = "keras.datasets"
        (x_train, y_train), (x_test, y_test) = train, test
    else:
        folder = _find_cifar_folder(name, os.fspath(data_dir))
        where = folder
        x_train, y_train = _read_batches(name, folder, c["train"])
        x_test, y_test = _read_batches(name, folder, c["test"])
    x_train, y_train = _check_arrays(name, "training", where, x_train, y_train)
    x_test, y_test = _check_arrays(name, "test", where, x_test, y_test)
    source = where if where == "keras.datasets" else os.path.abspath(where)
    return (x_train, y_train), (x_test, y_test), source


def _find_cifar_folder(name, data_dir):
    """The extracted official folder under data_dir, extracting the archive if needed."""
    c = CIFAR[name]
    if not os.path.exists(data_dir):
        raise ElasticKerasError(
            f"data_dir (data.data_dir) {data_dir!r} does not exist. {_how_to_get(name)}")
    # data_dir may be the extracted folder itself, the folder holding it, or the archive.
    if os.path.isfile(data_dir):
        if os.path.basename(data_dir) != c["archive"]:
            raise ElasticKerasError(
                f"data_dir (data.data_dir) {data_dir!r} is a file, not a folder nor "
                f"'{c['archive']}'. {_how_to_get(name)}")
        data_dir = os.path.dirname(os.path.abspath(data_dir))
    needed = c["train"] + c["test"]
    for folder in (data_dir, os.path.join(data_dir, c["folder"])):
        if all(os.path.isfile(os.path.join(folder, f)) for f in needed):
            return folder
    folder = os.path.join(data_dir, c["folder"])
    archive = os.path.join(data_dir, c["archive"])
    if os.path.exists(folder):
        missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
        raise ElasticKerasError(
            f"{c['title']} folder {folder!r} is incomplete: missing {', '.join(missing)}. "
            f"Delete it{' to re-extract ' + repr(c['archive']) if os.path.isfile(archive) else ''}"
            f" or replace it. {_how_to_get(name)}")
    if not os.path.isfile(archive):
        raise ElasticKerasError(
            f"data_dir (data.data_dir) {data_dir!r} holds neither '{c['folder']}/' nor "
            f"'{c['archive']}'. {_how_to_get(name)}")
    _verify_md5(name, archive)
    _extract(name, archive, data_dir)
    return folder


def _verify_md5(name, archive):
    # Local official files: checksum, safe extraction, a numpy-only unpickler (FIDELITY.md D5).
    md5 = hashlib.md5()
    with open(archive, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    expected = MD5[CIFAR[name]["archive"]]
    if md5.hexdigest() != expected:
        raise ElasticKerasError(
            f"{archive!r} has md5 checksum {md5.hexdigest()}, expected {expected}: the file is "
            f"truncated, corrupt or not the official python version. Download it again. "
            f"{_how_to_get(name)}")


def _extract(name, archive, data_dir):
    """Extract the archive's one official folder into data_dir, refusing unsafe members."""
    c = CIFAR[name]
    tmp = None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = m.name.replace("\\", "/").split("/")
                if (m.name.startswith(("/", "\\")) or ".." in parts or parts[0] != c["folder"]
                        or not (m.isfile() or m.isdir())):
                    raise ElasticKerasError(
                        f"{archive!r} holds an unexpected member {m.name!r} (only files under "
                        f"'{c['folder']}/' are allowed); refusing to extract it. "
                        f"{_how_to_get(name)}")
            # Extract beside the target, then move the finished folder into place.
            tmp = tempfile.mkdtemp(prefix=".extract-", dir=data_dir)
            tar.extractall(tmp, members=members, filter="data")
        target = os.path.join(data_dir, c["folder"])
        if not os.path.exists(target):  # another process may have won the race
            os.replace(os.path.join(tmp, c["folder"]), target)
    except ElasticKerasError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ElasticKerasError(
            f"could not extract {archive!r} into {data_dir!r} ({type(e).__name__}: {e}). "
            f"If the folder is read-only, extract the archive yourself. {_how_to_get(name)}") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: no arbitrary code from a data file."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"disallowed global {module}.{name}")
        return super().find_class(module, name)


def _read_batches(name, folder, files):
    """Concatenate the official pickles `files` into NHWC uint8 images and labels."""
    c = CIFAR[name]
    xs, ys = [], []
    for fname in files:
        path = os.path.join(folder, fname)
        try:
            with open(path, "rb") as f:
                d = _ArrayUnpickler(f, encoding="bytes").load()
            data, labels = d[b"data"], d[c["label_key"]]
            data = np.asarray(data)
            labels = np.asarray(labels)
        except Exception as e:  # truncated, corrupt, or not a CIFAR pickle
            raise ElasticKerasError(
                f"{path!r} is not a readable {c['title']} python-version pickle with keys "
                f"b'data' and {c['label_key']!r} ({type(e).__name__}: {e}); it may be truncated "
                f"or corrupt. {_how_to_get(name)}") from e
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise ElasticKerasError(
                f"{path!r}: b'data' must be uint8 of shape (N, 3072); received "
                f"{data.dtype} {data.shape}. {_how_to_get(name)}")
        if labels.shape != (len(data),):
            raise ElasticKerasError(
                f"{path!r}: {c['label_key']!r} must hold {len(data)} labels, one per image; "
                f"received shape {labels.shape}. {_how_to_get(name)}")
        # Rows are channel-major (3 x 32 x 32); the package works in NHWC.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _check_arrays(name, part, where, x, y):
    """Validate shapes, dtype and label range; labels come back int32 (N,)."""
    c = CIFAR[name]
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y) \
            or len(x) == 0:
        raise ElasticKerasError(
            f"{c['title']} {part} set from {where}: expected uint8 images (N, 32, 32, 3) with N "
            f"labels; received {x.dtype} {x.shape} and {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= c["classes"]:
        raise ElasticKerasError(
            f"{c['title']} {part} labels from {where} must be integers in [0, {c['classes']}); "
            f"received {y.dtype} in [{y.min()}, {y.max()}]. {_how_to_get(name)}")
    return x, y.astype(np.int32)
