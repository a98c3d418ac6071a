"""The split: 80/20 of the training pool, stratified and seeded; smoke subsamples; split.json."""

import hashlib
from dataclasses import dataclass

import numpy as np


TEST_LIMIT_SEED = 0  # fixed: a test_limit subsample never depends on the run's seed


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


def split_source(src, val_fraction, seed, train_limit=None, test_limit=None):
    """A loaded source (datasets.Source) split into train / validation / test, with the
    record split.json keeps (checked arguments: datasets.load_dataset)."""
    if src.sized:
        train_limit = test_limit = None
    x_pool, y_pool, x_test, y_test = src.x_pool, src.y_pool, src.x_test, src.y_test
    pool_index = np.arange(len(y_pool))
    if src.holdout:
        pool_index, test_index, _ = two_way(y_pool, *src.holdout)
        x_test, y_test = x_pool[test_index], y_pool[test_index]
        x_pool, y_pool = x_pool[pool_index], y_pool[pool_index]
    # Smoke runs: a stratified seeded subsample of the pool before splitting (FIDELITY.md D6).
    pool_size, limit_stratified = len(y_pool), None
    if train_limit is not None and train_limit < pool_size:
        keep, _, limit_stratified = two_way(y_pool, pool_size - train_limit, seed)
        x_pool, y_pool, pool_index = x_pool[keep], y_pool[keep], pool_index[keep]
    # The split itself: stratified, seeded (sklearn train_test_split).
    tr, va, stratified = two_way(y_pool, val_fraction, seed)
    # Smoke runs: a stratified subsample of the test set, independent of the run's seed.
    test_size, test_stratified = len(y_test), None
    if test_limit is not None and test_limit < test_size:
        keep, _, test_stratified = two_way(y_test, test_size - test_limit, TEST_LIMIT_SEED)
        x_test, y_test = x_test[keep], y_test[keep]
    counts = {"pool": pool_size, "official_test": test_size}
    limits = {"train_limit": train_limit, "train_limit_stratified": limit_stratified,
              "test_limit": test_limit, "test_limit_stratified": test_stratified}
    val_indices = np.sort(pool_index[va])
    split = _record(src, x_pool[tr], y_pool[tr], y_pool[va], y_test, seed, val_fraction,
                    stratified, val_indices, counts, limits)
    return Splits(src.name, src.classes, x_pool[tr], y_pool[tr], x_pool[va], y_pool[va], x_test,
                  y_test, split, val_indices)


def _record(src, x_train, y_train, y_val, y_test, seed, val_fraction, stratified,
            val_indices, counts, limits):
    """What split.json records: the source, the seed, the counts, the validation indices."""
    k = src.classes
    return {
        "dataset": src.name, **src.record, "num_classes": k,
        "image_shape": list(x_train.shape[1:]), "seed": seed,
        "val_fraction": float(val_fraction), "stratified": stratified,
        **limits, "test_limit_seed": TEST_LIMIT_SEED,
        "counts": {"pool": counts["pool"], "train": len(y_train), "val": len(y_val),
                   "test": len(y_test), "official_test": counts["official_test"]},
        "class_counts": {"train": class_counts(y_train, k), "val": class_counts(y_val, k),
                         "test": class_counts(y_test, k)},
        "val_indices_sha256": indices_sha256(val_indices),
        "val_indices_sha256_of": "sorted indices as decimal ASCII joined by ','",
    }


def indices_sha256(indices):
    """sha256 of sorted indices written as decimal ASCII joined by ',' (language-neutral)."""
    text = ",".join(str(int(i)) for i in np.sort(np.asarray(indices)))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def two_way(labels, held, seed):
    # Stratified and seeded, where the authors' split was neither (FIDELITY.md D1, A9).
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


def class_counts(labels, num_classes):
    return np.bincount(labels, minlength=num_classes).tolist()
