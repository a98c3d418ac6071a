"""Datasets, the seeded stratified split and streamed batches (PAPER.md section 5); offline."""

import hashlib
import io
import json
import os
import pickle
import tarfile

import keras
import numpy as np
import pytest

from elastic_keras.data import cifar, datasets, splits
from elastic_keras.data.batches import Batches
from elastic_keras.errors import ElasticKerasError


# --- tiny files in the official CIFAR python format ------------------------------------------

def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _pickle(path, images, labels, label_key):
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # NHWC -> CHW rows
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": rows, label_key: [int(v) for v in labels]},
                    f, protocol=2)


def write_cifar(root, name, per_batch=30, test=20):
    """The official folder under `root`; returns (train images, train labels)."""
    c = cifar.CIFAR[name]
    folder = os.path.join(root, c["folder"])
    os.makedirs(folder)
    k = c["classes"]
    xs, ys = [], []
    for i, fname in enumerate(c["train"]):
        x, y = _images(per_batch, i), np.arange(per_batch) % k
        _pickle(os.path.join(folder, fname), x, y, c["label_key"])
        xs.append(x)
        ys.append(y)
    _pickle(os.path.join(folder, c["test"][0]), _images(test, 99), np.arange(test) % k,
            c["label_key"])
    return np.concatenate(xs), np.concatenate(ys)


def write_archive(root, name, **kw):
    """The official .tar.gz under `root` (no extracted folder); returns its md5."""
    src = os.path.join(root, "src")
    expected = write_cifar(src, name, **kw)
    path = os.path.join(root, cifar.CIFAR[name]["archive"])
    with tarfile.open(path, "w:gz") as tar:
        tar.add(os.path.join(src, cifar.CIFAR[name]["folder"]), arcname=cifar.CIFAR[name]["folder"])
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest(), expected


@pytest.fixture
def offline(monkeypatch):
    """keras.datasets loaders that fail like an offline machine, counting their calls."""
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fail)
    monkeypatch.setattr(keras.datasets.cifar100, "load_data", fail)
    return calls


# --- CIFAR ------------------------------------------------------------------------------------

def test_cifar10_extracted_folder_loads_as_nhwc_uint8(tmp_path, offline):
    x, y = write_cifar(tmp_path, "cifar10")
    s = datasets.load_dataset("cifar10", data_dir=tmp_path)
    assert s.num_classes == 10 and s.name == "cifar10"
    assert s.x_train.shape == (120, 32, 32, 3) and s.x_val.shape == (30, 32, 32, 3)
    assert s.x_test.shape == (20, 32, 32, 3)
    for a in (s.x_train, s.x_val, s.x_test):
        assert a.dtype == np.uint8
    for a in (s.y_train, s.y_val, s.y_test):
        assert a.dtype == np.int32 and a.ndim == 1
    # CHW rows came back as the original NHWC images, in the official order.
    np.testing.assert_array_equal(s.x_val, x[s.val_indices])
    np.testing.assert_array_equal(s.y_val, y[s.val_indices])
    np.testing.assert_array_equal(s.x_test, _images(20, 99))
    rec = json.loads(json.dumps(s.split))
    assert rec["source"] == str(tmp_path / "cifar-10-batches-py")
    assert rec["counts"] == {"pool": 150, "train": 120, "val": 30, "test": 20,
                             "official_test": 20}
    assert rec["val_indices_sha256"] == splits.indices_sha256(s.val_indices)
    assert not offline  # a data dir never falls back to the network
    # The extracted folder itself is accepted as the data dir too.
    s2 = datasets.load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(s2.val_indices, s.val_indices)


def test_cifar100_archive_is_verified_extracted_and_loaded(tmp_path, monkeypatch, offline):
    md5, (x, y) = write_archive(tmp_path, "cifar100", per_batch=500, test=100)
    monkeypatch.setitem(cifar.MD5, "cifar-100-python.tar.gz", md5)
    s = datasets.load_dataset("cifar100", data_dir=tmp_path)
    assert (tmp_path / "cifar-100-python" / "train").is_file()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".extract-")]
    assert s.num_classes == 100 and s.split["stratified"]
    assert len(s.y_train) == 400 and len(s.y_val) == 100 and len(s.y_test) == 100
    assert s.split["class_counts"]["val"] == [1] * 100
    np.testing.assert_array_equal(s.x_val, x[s.val_indices])
    # The archive may also be named directly; the extracted folder is reused.
    s2 = datasets.load_dataset("cifar100", data_dir=tmp_path / "cifar-100-python.tar.gz")
    np.testing.assert_array_equal(s2.x_train, s.x_train)


def test_wrong_checksum_fails_naming_both_checksums(tmp_path, offline):
    md5, _ = write_archive(tmp_path, "cifar10")
    with pytest.raises(ElasticKerasError, match=f"md5 checksum {md5}, expected "
                                                 f"{cifar.MD5['cifar-10-python.tar.gz']}"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_archive_with_path_traversal_is_refused(tmp_path, monkeypatch, offline):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    monkeypatch.setitem(cifar.MD5, "cifar-10-python.tar.gz", hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(ElasticKerasError, match="unexpected member .*refusing"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path.parent / "evil").exists()


def test_corrupt_files_give_clear_errors(tmp_path, offline):
    write_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    good = batch.read_bytes()
    batch.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ElasticKerasError, match="data_batch_3.*truncated or corrupt"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    # Labels out of range.
    _pickle(batch, _images(30, 3), np.full(30, 10), b"labels")
    with pytest.raises(ElasticKerasError, match=r"labels .* integers in \[0, 10\)"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    # Wrong shape.
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((30, 1024), np.uint8), b"labels": [0] * 30}, f)
    with pytest.raises(ElasticKerasError, match=r"shape \(N, 3072\)"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    # A pickle that would run code is refused, not executed.
    with open(batch, "wb") as f:
        pickle.dump({b"data": os.getcwd, b"labels": []}, f)
    with pytest.raises(ElasticKerasError, match="disallowed global"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)
    # An incomplete folder names what is missing.
    batch.unlink()
    with pytest.raises(ElasticKerasError, match="incomplete: missing data_batch_3"):
        datasets.load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_unavailable_data_says_both_ways_to_provide_it(tmp_path, name, offline):
    archive = cifar.CIFAR[name]["archive"]
    both = ["keras.datasets", "data.data_dir", "--set data.data_dir=PATH", "DATA_DIR=PATH",
            archive, cifar.CIFAR_URL]
    with pytest.raises(ElasticKerasError) as e:
        datasets.load_dataset(name)
    assert len(offline) == 1 and "no network" in str(e.value)
    assert all(s in str(e.value) for s in both)
    for missing in (tmp_path / "nowhere", tmp_path):  # absent; present but empty
        with pytest.raises(ElasticKerasError) as e:
            datasets.load_dataset(name, data_dir=missing)
        assert str(missing) in str(e.value) and all(s in str(e.value) for s in both)
    assert len(offline) == 1


# --- split ------------------------------------------------------------------------------------

def test_split_is_stratified_seeded_disjoint_and_complete(tmp_path, offline):
    write_cifar(tmp_path, "cifar10")
    s = datasets.load_dataset("cifar10", data_dir=tmp_path, seed=0)
    assert s.split["stratified"]
    assert s.split["class_counts"] == {"train": [12] * 10, "val": [3] * 10, "test": [2] * 10}
    np.testing.assert_array_equal(np.bincount(s.y_val), [3] * 10)
    same = datasets.load_dataset("cifar10", data_dir=tmp_path, seed=0)
    other = datasets.load_dataset("cifar10", data_dir=tmp_path, seed=1)
    np.testing.assert_array_equal(same.val_indices, s.val_indices)
    assert same.split == s.split
    assert not np.array_equal(other.val_indices, s.val_indices)
    assert other.split["val_indices_sha256"] != s.split["val_indices_sha256"]
    # Train and validation are disjoint and together the whole official training set.
    _, counts = np.unique(np.concatenate([s.x_train, s.x_val]).reshape(150, -1), axis=0,
                          return_counts=True)
    assert len(counts) == 150 and counts.max() == 1
    np.testing.assert_array_equal(other.x_test, s.x_test)


def test_limits_take_stratified_subsamples(tmp_path, offline):
    write_cifar(tmp_path, "cifar10")
    s = datasets.load_dataset("cifar10", data_dir=tmp_path, train_limit=100, test_limit=10)
    assert len(s.y_train) + len(s.y_val) == 100 and len(s.y_test) == 10
    assert s.split["train_limit_stratified"] and s.split["test_limit_stratified"]
    assert s.split["class_counts"]["val"] == [2] * 10
    assert s.split["class_counts"]["test"] == [1] * 10
    # The test subsample does not depend on the run's seed.
    np.testing.assert_array_equal(
        datasets.load_dataset("cifar10", data_dir=tmp_path, seed=5, test_limit=10).x_test, s.x_test)
    # Limits at or above the available images keep everything.
    assert datasets.load_dataset("cifar10", data_dir=tmp_path, train_limit=10 ** 6).split[
        "counts"]["pool"] == 150


# --- digits and synthetic ---------------------------------------------------------------------

def test_digits_shapes_range_and_fixed_test_set():
    s = datasets.load_dataset("digits")
    assert s.num_classes == 10 and s.split["source"] == "sklearn"
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 1797 and len(s.y_test) == 360
    assert s.x_train.shape[1:] == (8, 8, 3) and s.x_train.dtype == np.uint8
    assert s.x_train.min() == 0 and s.x_train.max() == 255
    np.testing.assert_array_equal(s.x_train[..., 0], s.x_train[..., 2])
    assert s.y_train.dtype == np.int32 and set(np.unique(s.y_test)) == set(range(10))
    other = datasets.load_dataset("digits", seed=3)
    np.testing.assert_array_equal(other.x_test, s.x_test)  # test set independent of the seed
    assert not np.array_equal(other.val_indices, s.val_indices)
    # val_indices index the full load_digits arrays.
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(s.y_val, load_digits().target[s.val_indices])
    assert len(s.val_indices) == 288


def test_synthetic_is_deterministic_learnable_and_sized():
    a, b = datasets.load_dataset("synthetic"), datasets.load_dataset("synthetic")
    assert a.x_train.shape == (800, 32, 32, 3) and len(a.y_val) == 200 and len(a.y_test) == 200
    assert a.x_train.dtype == np.uint8 and a.num_classes == 10
    for k in ("x_train", "y_train", "x_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.x_test[:50], a.x_train[:50])
    # Learnable: nearest class mean on raw pixels is far above chance.
    x, xt = a.x_train.reshape(800, -1).astype(float), a.x_test.reshape(200, -1).astype(float)
    means = np.stack([x[a.y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.y_test).mean() > 0.9
    c = datasets.load_dataset("synthetic", num_classes=100, train_limit=500, test_limit=100)
    assert c.num_classes == 100 and c.y_train.max() == 99 and len(c.y_test) == 100
    assert c.split["class_counts"]["val"] == [1] * 100


# --- argument errors --------------------------------------------------------------------------

def test_bad_arguments_name_what_was_received(tmp_path, offline):
    with pytest.raises(ElasticKerasError, match="class-count mismatch.* 100 .*cifar10 has 10"):
        datasets.load_dataset("cifar10", data_dir=tmp_path, num_classes=100)
    with pytest.raises(ElasticKerasError, match="num_classes.* 5 .*digits has 10"):
        datasets.load_dataset("digits", num_classes=5)
    with pytest.raises(ElasticKerasError, match="'cifar1'.*valid: cifar10, cifar100, digits, "
                                                "synthetic"):
        datasets.load_dataset("cifar1")
    with pytest.raises(ElasticKerasError, match=r"val_fraction.*received 1\.5"):
        datasets.load_dataset("digits", val_fraction=1.5)
    with pytest.raises(ElasticKerasError, match="train_limit.*received 'x'"):
        datasets.load_dataset("digits", train_limit="x")
    with pytest.raises(ElasticKerasError, match="batch_size.*received 0"):
        Batches(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2), 0)


# --- batches ----------------------------------------------------------------------------------

def _collect(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return xs, ys


@pytest.mark.backends
def test_batches_stream_native_uint8_in_a_seeded_order():
    n = 50
    x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    y = np.arange(n)
    xs, ys = _collect(Batches(x, y, 16))
    assert [len(b) for b in ys] == [16, 16, 16, 2]  # last partial batch kept
    assert xs[0].dtype == np.uint8 and xs[0].shape == (16, 8, 8, 3) and ys[0].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate(ys), y)

    def order(**kw):
        return np.concatenate(_collect(Batches(x, y, 16, shuffle=True, **kw))[1])
    first = order(seed=0, epoch=1)
    np.testing.assert_array_equal(np.sort(first), y)
    np.testing.assert_array_equal(first, order(seed=0, epoch=1))  # resumed run: same order
    assert not np.array_equal(first, order(seed=0, epoch=2))
    assert not np.array_equal(first, order(seed=1, epoch=1))
    # Images travel with their labels.
    xs, ys = _collect(Batches(x, y, 16, shuffle=True, epoch=1))
    np.testing.assert_array_equal(np.concatenate(xs)[:, 0, 0, 0], np.concatenate(ys))
    with pytest.raises(IndexError):
        Batches(x, y, 16)[4]
    with pytest.raises(ElasticKerasError, match="batch_size must be an integer >= 1"):
        Batches(x, y, True)
    with pytest.raises(ElasticKerasError, match="uint8"):
        Batches(x.astype(np.float32), y, 16)


@pytest.mark.backends
def test_batches_share_the_arrays_and_fit_one_epoch():
    x = np.zeros((4000, 32, 32, 3), np.uint8)
    ds = Batches(x, np.zeros(4000, np.int32), 256)
    assert ds.x is x and len(ds) == 16  # no copy of the dataset, 224 px or otherwise
    s = datasets.load_dataset("digits", train_limit=200)
    model = keras.Sequential([keras.Input((8, 8, 3), dtype="uint8"),
                              keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for epoch in (1, 2):
        hist = model.fit(Batches(s.x_train, s.y_train, 32, shuffle=True, epoch=epoch),
                         validation_data=Batches(s.x_val, s.y_val, 64), epochs=1, shuffle=False,
                         verbose=0)
        assert np.isfinite(hist.history["val_loss"][-1])
