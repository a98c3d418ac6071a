"""Where the images come from: CIFAR (cifar.py), scikit-learn's digits, generated data;
and load_dataset, a dataset loaded and split (splits.py).

Every dataset is native-size uint8 images (N, H, W, 3) and int32 labels (FIDELITY.md D3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from elastic_keras.checks import check_int, check_number
from elastic_keras.data.cifar import CIFAR, load_cifar
from elastic_keras.data.splits import split_source
from elastic_keras.errors import ElasticKerasError

DATASETS = (*CIFAR, "digits", "synthetic")  # the one list of dataset names
# How images are scaled (data/preprocessing.py applies it; named here, where no Keras is
# imported, for the config checks: FIDELITY.md R13). "paper": [0, 1]; "authors": [-1, 1].
PREPROCESS_MODES = ("paper", "authors")

# The offline demo's real data (FIDELITY.md D7) and the tests' generated data (D8).
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed: the digits test set never depends on the run's seed
SYNTHETIC_SIZES = (1000, 200)  # generated for training (incl. validation) and test (FIDELITY.md D8)
SYNTHETIC_SEED = 20180406  # fixed: the synthetic images never depend on the run's seed


def serves(data: str | None, cell_dataset: str) -> bool:
    """Whether `data` (a dataset replacing each cell's, or None) can serve a table cell of
    `cell_dataset`: digits has 10 classes, so it serves the CIFAR-10 cells only (D7)."""
    return not (data == "digits" and CIFAR[cell_dataset]["classes"] != 10)


@dataclass(frozen=True, eq=False)
class Source:
    """A dataset before its split: a training pool and a test set (or, for digits, a fixed
    fraction of the pool to hold out as test: `holdout` = (fraction, seed))."""

    name: str
    classes: int
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    record: dict | None = None
    holdout: tuple | None = None
    sized: bool = False  # train/test limits already applied (they set the sizes generated)


def load_source(name, data_dir=None, num_classes=None, train_limit=None, test_limit=None):
    """The pool and test set of dataset `name`; its class count checked (FIDELITY.md D9)."""
    if name not in DATASETS:
        raise ElasticKerasError(
            f"unknown dataset {name!r} (data.dataset); valid: {', '.join(DATASETS)}")
    if name == "synthetic":
        classes = 10 if num_classes is None else num_classes
        n_train = SYNTHETIC_SIZES[0] if train_limit is None else train_limit
        n_test = SYNTHETIC_SIZES[1] if test_limit is None else test_limit
        return Source(name, classes, *_synthetic(classes, n_train, "train"),
                      *_synthetic(classes, n_test, "test"),
                      record={"source": "generated", "generator_seed": SYNTHETIC_SEED,
                              "generated": {"train": n_train, "test": n_test}}, sized=True)
    classes = CIFAR[name]["classes"] if name in CIFAR else 10
    if num_classes is not None and num_classes != classes:
        raise ElasticKerasError(
            f"class-count mismatch: num_classes (data.num_classes) is {num_classes} but "
            f"{name} has {classes} classes; leave it null or set it to {classes}")
    if name in CIFAR:
        (x_pool, y_pool), (x_test, y_test), where = load_cifar(name, data_dir)
        return Source(name, classes, x_pool, y_pool, x_test, y_test, record={"source": where})
    # digits has no official test split: a fixed stratified 20% is held out.
    return Source(name, classes, *_load_digits(),
                  record={"source": "sklearn", "test_fraction": DIGITS_TEST_FRACTION,
                          "test_seed": DIGITS_TEST_SEED},
                  holdout=(DIGITS_TEST_FRACTION, DIGITS_TEST_SEED))


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


def load_data(d):
    """The dataset and split described by a config's `data` section."""
    return load_dataset(d["dataset"], data_dir=d["data_dir"], val_fraction=d["val_fraction"],
                        seed=d["seed"], num_classes=d["num_classes"],
                        train_limit=d["train_limit"], test_limit=d["test_limit"])


def load_dataset(name, data_dir=None, val_fraction=0.2, seed=0, num_classes=None,
                 train_limit=None, test_limit=None):
    """Load `name` and split its official training set 80/20, stratified and seeded.

    PAPER.md section 5: 40,000 train / 10,000 validation from CIFAR's 50,000 training images;
    the official test set is the test set, untouched (FIDELITY.md D2). `train_limit` /
    `test_limit` take stratified subsamples for smoke runs (for "synthetic": the number of
    images generated).
    """
    check_number("val_fraction (data.val_fraction)", val_fraction, 0, 1, low_open=True)
    seed = check_int("seed (data.seed)", seed, 0)
    train_limit = check_int("train_limit (data.train_limit)", train_limit, 2, optional=True)
    test_limit = check_int("test_limit (data.test_limit)", test_limit, 1, optional=True)
    num_classes = check_int("num_classes (data.num_classes)", num_classes, 2, optional=True)
    src = load_source(name, data_dir, num_classes, train_limit, test_limit)
    return split_source(src, val_fraction, seed, train_limit, test_limit)
