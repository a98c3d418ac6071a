"""Datasets as native-size uint8 arrays, a seeded stratified split, and streamed batches."""

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass

import numpy as np

from .checks import check_int, check_number
from .errors import ElasticKerasError

DATASETS = ("cifar10", "cifar100", "digits", "synthetic")

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

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed: the digits test set never depends on the run's seed
TEST_LIMIT_SEED = 0  # fixed: a test_limit subsample never depends on the run's seed
SYNTHETIC_SIZES = (1000, 200)  # images generated for training (incl. validation) and test
SYNTHETIC_SEED = 20180406  # fixed: the synthetic images never depend on the run's seed


@dataclass(frozen=True, eq=False)
class Splits:
    """One dataset split into train / validation / test (PAPER.md section 5).

    Images are uint8 (N, H, W, 3) at native size; labels int32 (N,). `val_indices` index
    the source's training pool: the official training set (CIFAR), the full `load_digits`
    arrays (digits), the generated training images (synthetic).
    """

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    split: dict
    val_indices: np.ndarray


def load_data(d):
    """The dataset and split described by a config's `data` section."""
    return load_dataset(d["dataset"], data_dir=d["data_dir"], val_fraction=d["val_fraction"],
                        seed=d["seed"], num_classes=d["num_classes"],
                        train_limit=d["train_limit"], test_limit=d["test_limit"])


def load_dataset(name, data_dir=None, val_fraction=0.2, seed=0, num_classes=None,
                 train_limit=None, test_limit=None):
    """Load `name` and split its official training set 80/20, stratified and seeded.

    PAPER.md section 5: 40,000 train / 10,000 validation from CIFAR's 50,000 training images;
    the official test set is the test set. `train_limit` / `test_limit` take stratified
    subsamples for smoke runs (for "synthetic": the number of images generated).
    """
    if name not in DATASETS:
        raise ElasticKerasError(
            f"unknown dataset {name!r} (data.dataset); valid: {', '.join(DATASETS)}")
    check_number("val_fraction (data.val_fraction)", val_fraction, 0, 1, low_open=True)
    seed = check_int("seed (data.seed)", seed, 0)
    train_limit = check_int("train_limit (data.train_limit)", train_limit, 2, optional=True)
    test_limit = check_int("test_limit (data.test_limit)", test_limit, 1, optional=True)
    num_classes = check_int("num_classes (data.num_classes)", num_classes, 2, optional=True)

    # Each source gives a training pool, a test set, and the pool's indices into its arrays.
    if name == "synthetic":
        classes = 10 if num_classes is None else num_classes
        n_train = SYNTHETIC_SIZES[0] if train_limit is None else train_limit
        n_test = SYNTHETIC_SIZES[1] if test_limit is None else test_limit
        x_pool, y_pool = _synthetic(classes, n_train, "train")
        x_test, y_test = _synthetic(classes, n_test, "test")
        pool_index = np.arange(len(y_pool))
        record = {"source": "generated", "generator_seed": SYNTHETIC_SEED,
                  "generated": {"train": n_train, "test": n_test}}
        train_limit = test_limit = None  # already applied: they set the sizes generated
    else:
        classes = CIFAR[name]["classes"] if name in CIFAR else 10
        if num_classes is not None and num_classes != classes:
            raise ElasticKerasError(
                f"class-count mismatch: num_classes (data.num_classes) is {num_classes} but "
                f"{name} has {classes} classes; leave it null or set it to {classes}")
        if name in CIFAR:
            (x_pool, y_pool), (x_test, y_test), source = _load_cifar(name, data_dir)
            pool_index = np.arange(len(y_pool))
            record = {"source": source}
        else:
            x_all, y_all = _load_digits()
            # digits has no official test split: hold out a fixed stratified 20%.
            pool_index, test_index, _ = _two_way(y_all, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
            x_pool, y_pool = x_all[pool_index], y_all[pool_index]
            x_test, y_test = x_all[test_index], y_all[test_index]
            record = {"source": "sklearn", "test_fraction": DIGITS_TEST_FRACTION,
                      "test_seed": DIGITS_TEST_SEED}

    # Smoke runs: a stratified seeded subsample of the pool before splitting.
    pool_size = len(y_pool)
    limit_stratified = None
    if train_limit is not None and train_limit < pool_size:
        keep, _, limit_stratified = _two_way(y_pool, pool_size - train_limit, seed)
        x_pool, y_pool, pool_index = x_pool[keep], y_pool[keep], pool_index[keep]

    # The split itself: stratified, seeded (sklearn train_test_split).
    tr, va, stratified = _two_way(y_pool, val_fraction, seed)
    x_train, y_train = x_pool[tr], y_pool[tr]
    x_val, y_val = x_pool[va], y_pool[va]
    val_indices = np.sort(pool_index[va])

    # Smoke runs: a stratified subsample of the test set, independent of the run's seed.
    test_size = len(y_test)
    test_stratified = None
    if test_limit is not None and test_limit < test_size:
        keep, _, test_stratified = _two_way(y_test, test_size - test_limit, TEST_LIMIT_SEED)
        x_test, y_test = x_test[keep], y_test[keep]

    split = {
        "dataset": name, **record, "num_classes": classes, "image_shape": list(x_train.shape[1:]),
        "seed": seed, "val_fraction": float(val_fraction), "stratified": stratified,
        "train_limit": train_limit, "train_limit_stratified": limit_stratified,
        "test_limit": test_limit, "test_limit_seed": TEST_LIMIT_SEED,
        "test_limit_stratified": test_stratified,
        "counts": {"pool": pool_size, "train": len(y_train), "val": len(y_val),
                   "test": len(y_test), "official_test": test_size},
        "class_counts": {"train": _class_counts(y_train, classes),
                         "val": _class_counts(y_val, classes),
                         "test": _class_counts(y_test, classes)},
        "val_indices_sha256": indices_sha256(val_indices),
        "val_indices_sha256_of": "sorted indices as decimal ASCII joined by ','",
    }
    return Splits(name, classes, x_train, y_train, x_val, y_val, x_test, y_test, split,
                  val_indices)


def indices_sha256(indices):
    """sha256 of sorted indices written as decimal ASCII joined by ',' (language-neutral)."""
    text = ",".join(str(int(i)) for i in np.sort(np.asarray(indices)))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _two_way(labels, held, seed):
    """Sorted (kept, held) indices of a seeded split, stratified where sklearn can.

    `held` is a fraction or a count. Stratification needs at least two images per class
    and one per class on each side; tiny smoke subsets fall back to a plain seeded split.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        kept, out = train_test_split(index, test_size=held, stratify=labels, random_state=seed)
        stratified = True
    except ValueError:
        kept, out = train_test_split(index, test_size=held, random_state=seed)
        stratified = False
    return np.sort(kept), np.sort(out), stratified


def _class_counts(labels, num_classes):
    return np.bincount(labels, minlength=num_classes).tolist()


# --- CIFAR --------------------------------------------------------------------------------

def _how_to_get(name):
    """The two ways to provide a CIFAR dataset, for error messages."""
    c = CIFAR[name]
    return (f"Provide {c['title']} one of two ways: (1) be online so "
            f"keras.datasets.{name}.load_data() can download it (cached in ~/.keras/datasets); "
            f"or (2) download the official python version '{c['archive']}' from {CIFAR_URL} "
            f"and pass the folder holding it (or its extracted '{c['folder']}/' folder) as the "
            f"data dir: config `data.data_dir`, CLI `--set data.data_dir=PATH`, "
            f"Makefile `DATA_DIR=PATH`.")


def _load_cifar(name, data_dir):
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


# --- digits and synthetic -------------------------------------------------------------------

def _load_digits():
    """scikit-learn's bundled 8x8 digits (values 0..16) as uint8 0..255, 3 channels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    gray = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1)), d.target.astype(np.int32)


def _synthetic(num_classes, n, part):
    """Deterministic CIFAR-shaped images: a class's low-frequency template, contrast, noise."""
    # Templates: 4x4x3 random values, bilinearly upsampled to 32x32 (same for train and test).
    rng = np.random.default_rng([SYNTHETIC_SEED, num_classes])
    coarse = rng.uniform(-1.0, 1.0, (num_classes, 4, 4, 3))
    up = _linear_upsampler(4, 32)
    templates = np.einsum("hi,wj,cijk->chwk", up, up, coarse)
    # Images: balanced labels in a seeded order, random contrast, Gaussian noise.
    rng = np.random.default_rng([SYNTHETIC_SEED, num_classes, n, {"train": 0, "test": 1}[part]])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    contrast = rng.uniform(0.6, 1.0, (n, 1, 1, 1))
    noise = rng.normal(0.0, 30.0, (n, 32, 32, 3))
    images = 128.0 + 90.0 * contrast * templates[labels] + noise
    return np.round(images).clip(0, 255).astype(np.uint8), labels


def _linear_upsampler(n_in, n_out):
    """(n_out, n_in) matrix of 1-D linear interpolation weights (align-corners)."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m
