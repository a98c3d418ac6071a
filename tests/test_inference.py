"""Elastic inference: truncated predictors, the early-exit cascade, budgeted evaluation."""

import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_cnn

from elastic_keras import REGISTRY, ElasticKerasError, build_model, elastify, exit_info, get_spec
from elastic_keras.inference.thresholds import budget_sweep, thresholds_from_validation
from elastic_keras.report.budget import write_budget
from elastic_keras.inference.cascade import Cascade
from elastic_keras.inference.predictors import truncated_predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The cascade's one traced TensorFlow graph, and the per-segment path of the other backends.
GRAPHS = [True, False] if keras.backend.backend() == "tensorflow" else [False]


# ---------------------------------------------------------------------------------------
# Every registered backbone: predictors and segments agree with the full model


@pytest.fixture(scope="module")
def registry_models():
    """Each registered elastic model at its smallest legal input, built once, with a batch
    of 2 images and the full model's outputs on it."""
    cache = {}

    def get(name):
        if name not in cache:
            size = get_spec(name).min_input_size
            model = build_model(name, 3, input_size=size, weights=None)
            x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
            full = [np.asarray(o) for o in model([x], training=False)]
            cache[name] = (model, x, full)
        return cache[name]
    return get


@pytest.mark.backends
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_truncated_predictors_match_the_full_model(name, registry_models):
    model, x, full = registry_models(name)
    for k, info in enumerate(exit_info(model)):
        pred = truncated_predictor(model, info.output if k % 2 else k + 1)  # name or index
        assert pred.output_names == [info.output]
        assert pred.count_params() == info.params_exit_only
        np.testing.assert_allclose(np.asarray(pred(x, training=False)), full[k], atol=1e-5)
    # Later exits' layers are not in an early predictor's graph.
    first = truncated_predictor(model, 1)
    assert "final" not in {layer.name for layer in first.layers}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_cascade_segments_compose_to_the_full_model(name, registry_models):
    model, x, full = registry_models(name)
    cascade = Cascade(model)
    assert len(cascade.segments) == len(model.outputs)
    feats = x
    for k, seg in enumerate(cascade.segments):
        out = seg(feats, training=False)
        if k < len(cascade.segments) - 1:
            feats, probs = out
        else:
            probs = out
        np.testing.assert_allclose(np.asarray(probs), full[k], atol=1e-5)
    # Leaving at exit k costs the backbone to its tap plus heads 1..k: more than the exit
    # alone from exit 2 on, and rising with k.
    info = exit_info(model)
    assert cascade.path_macs[0] == info[0].macs
    assert all(p >= e.macs for p, e in zip(cascade.path_macs, info))
    assert all(a < b for a, b in zip(cascade.path_macs, cascade.path_macs[1:]))


# ---------------------------------------------------------------------------------------
# Predictor files and argument checks


def test_predictor_save_load_round_trip(tmp_path):
    model = build_model("mobilenet", 4, input_size=32, alpha=0.25, weights=None,
                        source_shape=(16, 16, 3))  # native-size input, in-graph preprocess
    x = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3)).astype("float32")
    pred = truncated_predictor(model, "exit_3")
    path = tmp_path / "exit_3.keras"
    pred.save(path)
    loaded = keras.saving.load_model(path)
    assert [layer.name for layer in loaded.layers][:2] == ["images", "preprocess"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pred.predict(x, verbose=0),
                               atol=1e-6)
    # From a saved whole model, by path.
    whole = tmp_path / "whole.keras"
    model.save(whole)
    from_file = truncated_predictor(str(whole), 3)
    np.testing.assert_allclose(from_file.predict(x, verbose=0), pred.predict(x, verbose=0),
                               atol=1e-6)
    with pytest.raises(ElasticKerasError, match="exit index must be in 1..13"):
        truncated_predictor(model, 0)
    with pytest.raises(ElasticKerasError, match="unknown exit 'exit_99'"):
        truncated_predictor(model, "exit_99")
    with pytest.raises(ElasticKerasError, match="model file not found"):
        truncated_predictor(tmp_path / "missing.keras", 1)


# ---------------------------------------------------------------------------------------
# The cascade on a tiny model whose MACs are counted by hand

C = 5
# conv c1 8x8x4 (3x3x3), conv c2 4x4x6 (3x3x4), conv c3 2x2x8 (3x3x6); heads: GAP -> Dense
C1, C2, C3 = 8 * 8 * 4 * 27, 4 * 4 * 6 * 36, 2 * 2 * 8 * 54
H1, H2, HF = 4 * C, 6 * C, 2 * 2 * 8 * C  # the final head flattens 2x2x8
PATH_MACS = [C1 + H1, C1 + H1 + C2 + H2, C1 + H1 + C2 + H2 + C3 + HF]  # heads passed count
EXIT_MACS = [C1 + H1, C1 + C2 + H2, C1 + C2 + C3 + HF]  # each exit alone


@pytest.fixture(scope="module")
def tiny():
    model = elastify(tiny_cnn(), ["p1", "p2"], classes=C, dropout=0.1)
    rng = np.random.default_rng(0)
    for w in model.weights:  # weights set so that confidences vary and overlap across exits
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))
    kernel = model.get_layer("exit_2").kernel
    kernel.assign(kernel * 0.4)
    x = rng.random((48, 8, 8, 3), dtype=np.float32)
    probs = [np.asarray(p) for p in model([x], training=False)]
    return model, x, probs


def _expected_exits(probs, criterion, threshold):
    """1-based exit of each image, straight from the definition (not the package's code)."""
    exits = []
    for i in range(len(probs[0])):
        for k, p in enumerate(probs[:-1]):
            row = p[i].astype(np.float32)
            if criterion == "max_prob":
                leave = row.max() >= np.float32(threshold)
            else:
                ent = -sum(float(v) * np.log(float(v)) for v in row if v > 0)
                leave = ent <= threshold
            if leave:
                exits.append(k + 1)
                break
        else:
            exits.append(len(probs))
    return np.array(exits)


def _between(values):
    """A threshold strictly between two middle values of `values` (never on a sample)."""
    v = np.unique(np.asarray(values, dtype=np.float64))
    i = len(v) // 2
    return float((v[i - 1] + v[i]) / 2)


def test_tiny_model_macs_are_counted_by_hand(tiny):
    model, _, _ = tiny
    assert [e.macs for e in exit_info(model)] == EXIT_MACS
    assert Cascade(model).path_macs == PATH_MACS


@pytest.mark.backends
@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: "tf-graph" if g else "segments")
def test_cascade_extreme_thresholds(tiny, graph):
    model, x, probs = tiny
    cascade = Cascade(model, "max_prob", threshold=0.0, graph=graph)
    r = cascade(x)  # everyone leaves at exit 1
    assert (r.exits == 1).all() and r.entered == [len(x), 0, 0]
    np.testing.assert_allclose(r.probabilities, probs[0], atol=1e-6)
    pred1 = truncated_predictor(model, 1).predict(x, verbose=0)
    np.testing.assert_array_equal(r.predictions, pred1.argmax(axis=1))
    assert r.mean_macs == PATH_MACS[0] == EXIT_MACS[0]
    r = cascade(x, threshold=1.5)  # nobody leaves early
    assert (r.exits == 3).all() and r.entered == [len(x)] * 3
    np.testing.assert_allclose(r.probabilities, probs[-1], atol=1e-6)
    np.testing.assert_array_equal(r.predictions, probs[-1].argmax(axis=1))
    assert r.mean_macs == PATH_MACS[-1]
    entropy = Cascade(model, "entropy", threshold=-1.0, graph=graph)  # never negative
    assert (entropy(x).exits == 3).all()
    assert (entropy(x, threshold=np.log(C) + 1).exits == 1).all()


@pytest.mark.backends
@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: "tf-graph" if g else "segments")
@pytest.mark.parametrize("criterion", ["max_prob", "entropy"])
def test_cascade_routes_and_costs_match_the_exits_taken(tiny, criterion, graph):
    model, x, probs = tiny
    if criterion == "max_prob":
        conf = np.concatenate([p.max(axis=1) for p in probs[:-1]])
    else:
        conf = np.concatenate([-(p * np.log(p)).sum(axis=1) for p in probs[:-1]])
    threshold = _between(conf)
    expected = _expected_exits(probs, criterion, threshold)
    assert len(set(expected)) == 3, "the threshold should send images to every exit"
    r = Cascade(model, criterion, threshold, graph=graph)(x)
    np.testing.assert_array_equal(r.exits, expected)
    taken = np.stack(probs)[expected - 1, np.arange(len(x))]
    np.testing.assert_allclose(r.probabilities, taken, atol=1e-5)
    np.testing.assert_array_equal(r.predictions, taken.argmax(axis=1))
    # Segment k ran on exactly the images that had not left before it.
    assert r.entered == [int((expected >= k).sum()) for k in (1, 2, 3)]
    # Cost: each image pays its own path; the mean is what the batch spent.
    np.testing.assert_array_equal(r.macs, np.array(PATH_MACS)[expected - 1])
    spent = sum(n * (PATH_MACS[k] - (PATH_MACS[k - 1] if k else 0))
                for k, n in enumerate(r.entered))
    assert r.mean_macs == pytest.approx(spent / len(x))
    # Batching does not change the answer.
    b = Cascade(model, criterion, threshold, graph=graph).predict(x, batch_size=20)
    np.testing.assert_array_equal(b.exits, r.exits)
    assert len(b.batch_mean_macs) == 3 and b.mean_macs == pytest.approx(r.mean_macs)


def test_cascade_rejects_bad_arguments_and_non_cut_taps():
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b = L.Conv2D(4, 3, padding="same", name="b")(a)
    c = L.Add(name="skip")([a, L.Conv2D(4, 3, padding="same", name="c")(b)])  # bypasses b
    model = elastify(keras.Model(inp, c), ["b"], classes=3)
    with pytest.raises(ElasticKerasError, match="cut vertices"):
        Cascade(model)
    tiny_ok = elastify(keras.Model(inp, c), ["a"], classes=3)
    with pytest.raises(ElasticKerasError, match="unknown criterion 'margin'"):
        Cascade(tiny_ok, "margin")
    with pytest.raises(ElasticKerasError, match="threshold must be a number"):
        Cascade(tiny_ok, threshold="high")


# ---------------------------------------------------------------------------------------
# Budgeted evaluation


def test_budget_sweep_and_write_budget(tiny, tmp_path):
    model, x, probs = tiny
    y = probs[-1].argmax(axis=1)  # labels the final exit gets right
    x_val, y_val, x_test, y_test = x[:24], y[:24], x[24:], y[24:]
    rows = budget_sweep(model, x_val, y_val, x_test, y_test, n_thresholds=9, batch_size=10)
    cascade = [r for r in rows if r["kind"] == "cascade"]
    fixed = [r for r in rows if r["kind"] == "exit"]
    # The curve spans everyone at exit 1 to everyone at the final exit; with max_prob a
    # higher threshold never sends an image to an earlier exit, so cost only rises.
    assert cascade[0]["test_macs"] == PATH_MACS[0] and cascade[-1]["test_macs"] == PATH_MACS[-1]
    thresholds = [r["threshold"] for r in cascade]
    assert thresholds == sorted(thresholds)
    assert all(a["test_macs"] <= b["test_macs"] for a, b in zip(cascade, cascade[1:]))
    assert cascade[-1]["test_accuracy"] == 1.0
    # Thresholds come from validation confidences only.
    val_conf = np.concatenate([p[:24].max(axis=1) for p in probs[:-1]])
    for r in cascade:
        if r["quantile"] is not None:
            assert val_conf.min() <= r["threshold"] <= val_conf.max()
    # The replayed routing is what a real cascade does on the test set.
    for r in cascade[2:-2:3]:
        run = Cascade(model, "max_prob", r["threshold"]).predict(x_test, batch_size=10)
        assert r["test_accuracy"] == pytest.approx(float((run.predictions == y_test).mean()))
        assert r["test_macs"] == pytest.approx(run.mean_macs)
    # Fixed exits: each truncated predictor alone, at its own MACs.
    assert [r["exit"] for r in fixed] == ["exit_1", "exit_2", "final"]
    assert [r["test_macs"] for r in fixed] == EXIT_MACS
    for k, r in enumerate(fixed):
        acc = (probs[k][24:].argmax(axis=1) == y_test).mean()
        assert r["test_accuracy"] == pytest.approx(acc)
    # Entropy: the cheap end first, cost rising along the curve too.
    ent = [r for r in budget_sweep(model, x_val, y_val, x_test, y_test, criterion="entropy",
                                   n_thresholds=5, batch_size=24) if r["kind"] == "cascade"]
    assert ent[0]["test_macs"] == PATH_MACS[0] and ent[-1]["test_macs"] == PATH_MACS[-1]
    assert all(a["test_macs"] <= b["test_macs"] for a, b in zip(ent, ent[1:]))

    csv_path, png_path = str(tmp_path / "budget.csv"), str(tmp_path / "budget.png")
    write_budget(csv_path, png_path, rows, "tiny: budget")
    with open(csv_path, newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and written[0]["kind"] == "cascade"
    with open(png_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["budget.csv", "budget.png"]  # no temp files left


def test_thresholds_and_budget_arguments(tiny):
    model, x, probs = tiny
    picked = thresholds_from_validation(probs, "max_prob", 3)
    assert picked[0] == (0.0, None) and picked[-1][0] == float("inf")
    with pytest.raises(ElasticKerasError, match="n_thresholds must be >= 2"):
        thresholds_from_validation(probs, "max_prob", 1)
    with pytest.raises(ElasticKerasError, match="test set: 4 images and 3 labels"):
        budget_sweep(model, x[:4], np.zeros(4), x[:4], np.zeros(3))


def test_budget_cli_and_script_report_missing_or_unfinished_runs(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "elastic_keras", "budget", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "not a run directory" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    unfinished = tmp_path / "runs" / "smoke" / "cifar10" / "a"
    unfinished.mkdir(parents=True)
    (unfinished / "config.json").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "elastic_keras", "budget", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert f"skip {unfinished}: not finished" in r.stdout and "0 finished run(s)" in r.stdout
