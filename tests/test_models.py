"""Registry, model factory, elastify, loss weights and cost accounting."""

import json
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from elastic_keras import (REGISTRY, ElasticKerasError, build_model, elastify, exit_info,
                           get_spec, loss_weights)
from elastic_keras.model.costs import cost_of

EXPECTED_OUTPUTS = {"densenet121": 4, "densenet169": 4, "inceptionv3": 11, "mobilenet": 13,
                    "vgg16": 5, "resnet50": 17, "resnet50_5": 5, "mobilenet_authors": 14,
                    "inceptionv3_authors": 12}


def test_registry_covers_the_paper_and_unknown_names_list_valid_ones():
    assert set(EXPECTED_OUTPUTS) == set(REGISTRY)
    for name, n in EXPECTED_OUTPUTS.items():
        assert get_spec(name).num_outputs == n
    with pytest.raises(ElasticKerasError, match="valid backbones: densenet121, densenet169"):
        get_spec("densenet12")


@pytest.mark.backends
@pytest.mark.parametrize("plain", [False, True], ids=["elastic", "plain"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_model_builds_runs_and_round_trips(name, plain, tmp_path):
    spec = get_spec(name)
    model = build_model(name, 3, input_size=spec.min_input_size, weights=None, plain=plain)
    n = 1 if plain else EXPECTED_OUTPUTS[name]
    assert model.output_names == [f"exit_{i}" for i in range(1, n)] + ["final"]
    x = np.random.default_rng(0).random((2, spec.min_input_size, spec.min_input_size, 3),
                                        dtype=np.float32)
    y = model.predict(x, verbose=0)
    y = y if isinstance(y, list) else [y]
    assert len(y) == n
    for out in y:
        assert out.shape == (2, 3) and np.all(np.isfinite(out))
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    info = exit_info(model)
    assert [e.output for e in info] == model.output_names
    assert [e.layer for e in info[:-1]] == ([] if plain else list(spec.exits))
    assert all(a.macs <= b.macs for a, b in zip(info, info[1:]))
    if not plain:  # save/load round trip keeps outputs and metadata
        path = tmp_path / "m.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        y2 = loaded.predict(x, verbose=0)
        for a, b in zip(y, y2):
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert exit_info(loaded) == info


def _rounded(info, key="params"):
    return [round(getattr(e, key) / 1e6, 2) for e in info]


def test_table2_golden_params_and_conv_layers():
    elastic = exit_info(build_model("densenet169", 100, weights=None))
    assert _rounded(elastic) == [0.39, 1.47, 6.71, 20.90]
    assert [e.conv_layers for e in elastic] == [14, 39, 104, 168]
    plain169 = exit_info(build_model("densenet169", 100, weights=None, plain=True))
    assert _rounded(plain169) == [20.80] and plain169[0].conv_layers == 168
    plain121 = exit_info(build_model("densenet121", 100, weights=None, plain=True))
    assert _rounded(plain121) == [12.06] and plain121[0].conv_layers == 120
    # The final exit alone needs the plain model's parameters; the row counts the whole model.
    assert elastic[-1].params_exit_only == plain169[0].params_exit_only


# Bai et al. Table II (MACs at 224 px, depthwise convolutions left out): (first weighted
# exit index among the outputs or None, MACs there, MACs at the last exit).
BAI = {("vgg16", None): (None, None, 1.53e10),
       ("inceptionv3", None): (6, 1.87e9, 2.84e9),
       ("resnet50", None): (9, 2.23e9, 3.83e9),
       ("mobilenet", 1.0): (7, 2.68e8, 5.56e8), ("mobilenet", 0.75): (7, 1.53e8, 3.16e8),
       ("mobilenet", 0.5): (7, 6.97e7, 1.43e8), ("mobilenet", 0.25): (7, 1.88e7, 3.78e7)}


@pytest.mark.parametrize("key", list(BAI), ids=[f"{b}-{a}" for b, a in BAI])
def test_bai_macs_within_two_percent(key):
    backbone, alpha = key
    first, macs_first, macs_last = BAI[key]
    model = build_model(backbone, 100, weights=None, alpha=alpha, plain=backbone == "vgg16")
    info = exit_info(model, "bai")
    assert info[-1].macs == pytest.approx(macs_last, rel=0.02)
    if first is not None:
        assert loss_weights("second_half", len(info))[first - 2:first] == [0.0, 1.0]
        assert info[first - 1].macs == pytest.approx(macs_first, rel=0.02)


def _tiny_cnn():
    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.MaxPooling2D(name="p1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.SeparableConv2D(16, 3, padding="same", name="sep")(x)
    x = L.MaxPooling2D(name="p2")(x)
    return keras.Model(inp, x, name="tiny")


def test_mac_counter_is_analytic():
    model = _tiny_cnn()
    full = cost_of(model.outputs, "full")
    c1 = 16 * 16 * 8 * 3 * 3 * 3
    dw = 8 * 8 * 8 * 3 * 3
    sep = 8 * 8 * 8 * 3 * 3 + 8 * 8 * 8 * 16
    assert full["macs"] == c1 + dw + sep
    assert full["conv_layers"] == 3 and full["params"] == model.count_params()
    assert cost_of(model.outputs, "bai")["macs"] == c1 + 8 * 8 * 8 * 16
    with pytest.raises(ElasticKerasError, match="MACs convention"):
        cost_of(model.outputs, "flops")


def test_elastify_works_on_a_model_not_in_the_registry():
    base = _tiny_cnn()
    model = elastify(base, ["p1", "c1"], classes=5, dropout=0.1)  # order is fixed by depth
    assert model.output_names == ["exit_1", "exit_2", "final"]
    info = exit_info(model)
    assert [e.layer for e in info] == ["c1", "p1", "p2"]
    assert [e.conv_layers for e in info] == [1, 1, 3]
    assert info[0].macs == 16 * 16 * 8 * 27 + 8 * 5  # conv + the exit's Dense
    out = model.predict(np.zeros((2, 16, 16, 3)), verbose=0)
    assert [o.shape for o in out] == [(2, 5)] * 3
    # A model that already ends in a classifier keeps it as its final exit.
    L = keras.layers
    clf = keras.Model(base.input, L.Dense(5, activation="softmax")(L.Flatten()(base.output)))
    kept = elastify(clf, ["p1"], classes=5, final="keep")
    assert kept.output_names == ["exit_1", "final"]
    with pytest.raises(ElasticKerasError, match="not in model"):
        elastify(base, ["nope"], classes=5)
    with pytest.raises(ElasticKerasError, match="classes"):
        elastify(base, ["p1"], classes=1)
    with pytest.raises(ElasticKerasError, match="final='keep'"):
        elastify(clf, ["p1"], classes=7, final="keep")


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ElasticKerasError, match="input_size for inceptionv3 must be"):
        build_model("inceptionv3", 10, input_size=32, weights=None)
    with pytest.raises(ElasticKerasError, match="alpha applies to MobileNet only"):
        build_model("vgg16", 10, input_size=32, weights=None, alpha=0.5)
    with pytest.raises(ElasticKerasError, match="weights file not found"):
        build_model("vgg16", 10, input_size=32, weights="/nonexistent/vgg16_notop.h5")
    with pytest.raises(ElasticKerasError, match="cannot build mobilenet"):
        build_model("mobilenet", 10, input_size=32, weights="imagenet", alpha=0.3)


def test_weights_from_a_local_file_in_keras_official_h5_format(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    donor = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                         input_shape=(32, 32, 3))
    for w in donor.weights:  # distinct values so a mix-up would show
        w.assign(np.random.default_rng(1).normal(size=w.shape).astype("float32"))
    path = tmp_path / "mobilenet_2_5_224_tf_no_top.h5"  # the official file name pattern
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, donor)
    model = build_model("mobilenet", 10, input_size=32, alpha=0.25, weights=str(path))
    got = {w.path: w.numpy() for w in model.weights}
    for w in donor.weights:
        np.testing.assert_array_equal(got[w.path], w.numpy())
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ElasticKerasError, match="cannot build"):
        build_model("mobilenet", 10, input_size=32, alpha=0.25, weights=str(bad))
    with pytest.raises(ElasticKerasError, match="cannot build vgg16"):  # another network's file
        build_model("vgg16", 10, input_size=32, weights=str(path))


def test_loss_weights():
    assert loss_weights("uniform", 4) == [1.0] * 4
    for n, first in ((17, 9), (13, 7), (11, 6), (14, 7)):
        w = loss_weights("second_half", n)
        assert w.index(1.0) == first - 1 and all(w[first - 1:])
    # AuxNet as written: L_K is the deepest *auxiliary* exit (weight 1), final exit 1.
    aux = loss_weights("auxnet", 3, depths=[10, 20, 40], nu=2.0)
    assert aux == pytest.approx([0.25, 1.0, 1.0])
    assert loss_weights("auxnet_final", 3, depths=[10, 20, 40], nu=2.0) == \
        pytest.approx([0.0625, 0.25, 1.0])  # the other reading, by name
    assert loss_weights("auxnet", 4, depths=[14, 39, 104, 168], nu=0) == [1.0] * 4
    assert loss_weights("auxnet", 3, depths=[1, 100, 200], nu=2)[0] == 0.01
    assert loss_weights("auxnet", 1, depths=[168], nu=2) == [1.0]  # a plain model
    with pytest.raises(ElasticKerasError, match="nu must be a number >= 0"):
        loss_weights("auxnet", 4, depths=[14, 39, 104, 168], nu=-1)
    assert loss_weights([0.5, 1], 2) == [0.5, 1.0]
    with pytest.raises(ElasticKerasError, match="got 3 weights for a model with 2 outputs"):
        loss_weights([1, 1, 1], 2)
    with pytest.raises(ElasticKerasError, match=">= 0"):
        loss_weights([1, -1], 2)
    with pytest.raises(ElasticKerasError, match="unknown loss weights"):
        loss_weights("halves", 2)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args],
                          capture_output=True, text=True, timeout=300)


def test_describe_cli_json_and_errors():
    r = _cli("describe", "densenet121", "--classes", "100", "--plain", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 1 and {"output", "layer", "conv_layers", "params", "macs"} <= set(rows[0])
    assert rows[0]["conv_layers"] == 120 and round(rows[0]["params"] / 1e6, 2) == 12.06
    r = _cli("describe", "resnet99")
    assert r.returncode == 2 and "valid backbones" in r.stderr and "Traceback" not in r.stderr
