"""Calibrated exits and certified thresholds (issue 18): temperatures, ECE, risk control."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_cnn

from elastic_keras import ElasticKerasError, elastify
from elastic_keras.inference import calibration as cal
from elastic_keras.inference import risk_control as rc
from elastic_keras.inference.cascade import Cascade
from elastic_keras.inference.predictors import route
from elastic_keras.inference.thresholds import budget_sweep

GRAPHS = [True, False] if keras.backend.backend() == "tensorflow" else [False]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_fit_recovers_a_known_overconfidence_and_ece_matches_mapie():
    from mapie.metrics.calibration import expected_calibration_error

    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=(4000, 6))
    labels = np.array([rng.choice(6, p=q) for q in _softmax(z)])  # calibrated by design
    overconfident = _softmax(3.0 * z)
    t = cal.fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    np.testing.assert_allclose(cal.scale(overconfident, 1.0), overconfident)
    np.testing.assert_allclose(cal.scale(overconfident, 3.0), _softmax(z), atol=1e-9)
    fixed = cal.scale(overconfident, t)
    assert cal.nll(fixed, labels) < cal.nll(overconfident, labels)
    assert cal.ece(fixed, labels) < 0.5 * cal.ece(overconfident, labels)
    # 15 equal-width bins are MAPIE's "uniform" strategy with 16 edges (its first bin holds
    # only exact zeros).
    for p in (overconfident, fixed):
        right = (p.argmax(axis=1) == labels).astype(int)
        theirs = expected_calibration_error(right, p.max(axis=1), num_bins=16,
                                            split_strategy="uniform")
        assert cal.ece(p, labels) == pytest.approx(theirs, abs=1e-12)
    rows = cal.calibration_rows([overconfident], labels, [t], ["final"])
    assert rows[0]["ece_after"] < rows[0]["ece_before"] and rows[0]["n"] == 4000


def test_p_values_and_bounds_against_mapie():
    from mapie.risk_control import methods
    from scipy.stats import binom

    n, delta, eps = 200, 0.1, 0.05
    means = np.array([0.0, 0.005, 0.02, 0.04, 0.1])
    theirs = methods.compute_hoeffding_bentkus_p_value(means, n, eps, binary=True)[:, 0]
    np.testing.assert_allclose(rc.hb_p_values(means, n, eps), theirs)
    # The binomial upper bound u is where the binary Bentkus p-value (MAPIE's) equals delta.
    ucb = rc.binomial_ucb(means, n, delta)
    for r, u in zip(means, ucb):
        k = round(r * n)
        assert binom.cdf(k, n, u) == pytest.approx(delta, rel=1e-6)
        assert methods.compute_hoeffding_bentkus_p_value(np.array([r]), n, u, binary=True)[0, 0] \
            <= delta * (1 + 1e-6)
    # CRC: MAPIE's (n R + 1) / (n + 1), on losses monotonized from the safe end.
    losses = np.array([[0, 1, 0, 1], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=float)
    mono = rc.monotonized(losses)
    np.testing.assert_array_equal(mono, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]])
    np.testing.assert_allclose(rc.crc_bounds(losses), (mono.sum(axis=0) + 1) / 4)
    # Budget bound (LTT): the smallest epsilon whose p-value passes delta / tested.
    col = np.zeros((300, 3))
    col[:6, 2] = 1
    b = rc.risk_bound(col, 2, delta, "ltt", 10)
    p = rc.hb_p_values([0.02, 0.02], 300, [b, b - 1e-4][0])
    assert p[0] <= delta / 10 < rc.hb_p_values([0.02], 300, b - 1e-4)[0]


def test_certify_tests_in_fixed_sequence_from_the_safe_end():
    n = 400
    risks = [0.0, 0.0, 0.002, 0.01, 0.08, 0.0, 0.3]  # safe end first; a dip after a failure
    losses = np.zeros((n, len(risks)))
    for j, r in enumerate(risks):
        losses[: int(round(r * n)), j] = 1
    p = rc.hb_p_values(losses.mean(axis=0), n, 0.05)
    manual = next(j for j, v in enumerate(p) if v > 0.1)
    assert rc.fixed_sequence(p, 0.1) == manual == 4
    for method in ("ltt", "ucb", "crc"):
        cert = rc.certify(losses, 0.05, 0.1, method)
        assert cert.index == 3, method  # the 0.0 at position 5 is never reached
    assert rc.certify(losses[:20], 0.05, 0.1, "ltt").index == -1  # 20 images prove nothing
    with pytest.raises(ElasticKerasError, match="--epsilon must be in"):
        rc.certify(losses, 1.5, 0.1)
    with pytest.raises(ElasticKerasError, match="unknown method 'rcps'"):
        rc.certify(losses, 0.05, 0.1, "rcps")
    with pytest.raises(ElasticKerasError, match="a cost budget needs --method ltt or ucb"):
        rc.risk_bound(losses, 1, 0.1, "crc", 7)


def test_risks_and_exits_taken_follow_the_cascade_rule():
    rng = np.random.default_rng(1)
    probs = [_softmax(rng.normal(scale=s, size=(60, 4))).astype(np.float32) for s in (1, 2, 3)]
    labels = rng.integers(0, 4, 60)
    temps = [0.5, 2.0, 1.3]
    grid = cal.threshold_grid()
    taken = cal.exits_taken(probs, grid, temps)
    for j in (0, 20, 60, 100, len(grid) - 1):
        np.testing.assert_array_equal(taken[:, j], route(probs, "max_prob", grid[j], temps))
    assert (taken[:, 0] == 2).all() and (taken[:, -1] == 0).all()
    pred = np.stack([p.argmax(axis=1) for p in probs])
    drop = cal.exit_losses(probs, labels, "drop")
    expected = (pred != labels) & (pred[-1] == labels)
    np.testing.assert_array_equal(drop, expected.astype(float))
    np.testing.assert_array_equal(cal.exit_losses(probs, labels, "disagreement"),
                                  (pred != pred[-1]).astype(float))
    per = cal.per_threshold(drop, taken)
    assert per[:, 0].sum() == 0 and per[:, -1].sum() == drop[0].sum()


@pytest.mark.backends
@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: "tf-graph" if g else "segments")
def test_cascade_applies_temperatures(graph, tmp_path):
    model = elastify(tiny_cnn(), ["p1", "p2"], classes=5, dropout=0.1)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))
    x = rng.random((32, 8, 8, 3), dtype=np.float32)
    probs = [np.asarray(p) for p in model([x], training=False)]
    temps = [0.3, 3.0, 1.0]
    scaled = [cal.scale(p, t) for p, t in zip(probs, temps)]
    thr = float(np.median(scaled[0].max(axis=1)))
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperatures": temps, "criterion": "max_prob",
                                "threshold": thr, "certificate": {}}))
    c = Cascade(model, calibration=tmp_path, graph=graph)
    assert c.temperatures == temps and c.threshold == pytest.approx(thr)
    r = c(x)
    expected = route(probs, "max_prob", thr, temps)
    np.testing.assert_array_equal(r.exits, expected + 1)
    assert len(set(r.exits)) > 1 and not (r.exits == route(probs, "max_prob", thr) + 1).all()
    np.testing.assert_allclose(r.probabilities, np.stack(scaled)[expected, np.arange(32)],
                               atol=1e-5)
    assert (Cascade(model, calibration=tmp_path, threshold=1.5, graph=graph)(x).exits == 3).all()
    # budget scales the same way and marks the certified threshold as a row of its own.
    found = cal.read_calibration(tmp_path)
    found["certificate"]["text"] = "certified in words"
    y = probs[-1].argmax(axis=1)
    rows = budget_sweep(model, x[:16], y[:16], x[16:], y[16:], n_thresholds=5,
                        calibration=found)
    (mark,) = [row for row in rows if row["kind"] == "certified"]
    test = c(x[16:])
    assert mark["threshold"] == thr and mark["certificate"] == "certified in words"
    assert mark["test_macs"] == pytest.approx(test.mean_macs)
    assert mark["test_accuracy"] == pytest.approx(float((test.predictions == y[16:]).mean()))
    with pytest.raises(ElasticKerasError, match="temperatures must be 3 positive numbers"):
        Cascade(model, temperatures=[1.0, 0.0, 1.0])
    with pytest.raises(ElasticKerasError, match="certifies a max_prob threshold, not entropy"):
        Cascade(model, "entropy", calibration=tmp_path)
    with pytest.raises(ElasticKerasError, match="no calibration.json"):
        Cascade(model, calibration=tmp_path / "nowhere")


def _cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=900, env=env)


def test_calibrate_a_smoke_run_then_cascade_uses_it(tmp_path):
    from elastic_keras.data.datasets import load_data
    from elastic_keras.inference.predictors import exit_probabilities
    from elastic_keras.runs.found import open_run

    r = _cli("train", "cifar10-mobilenet-elastic", "--profile", "smoke", "--set",
             "data.dataset=synthetic", "--set", "data.train_limit=100", "--set",
             "data.test_limit=10", "--set", "model.alpha=0.25", "--set",
             "phases.full.epochs=1", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "run"
    r = _cli("calibrate", str(run_dir), "--epsilon", "0.5", "--max-macs", "6e5")
    assert r.returncode == 0, r.stderr
    assert "threshold: " in r.stdout and "MACs saved on the calibration split" in r.stdout
    found = json.loads((run_dir / "calibration.json").read_text())
    assert found["criterion"] == "max_prob" and len(found["temperatures"]) == 13
    split = found["splits"]
    assert not set(split["fit"]) & set(split["calibration"])
    assert len(split["fit"]) + len(split["calibration"]) == split["n_validation"] == 20
    assert found["macs"]["mean"] <= 6e5 and found["certificate"]["bound"] > 0
    assert (run_dir / "calibration.csv").read_text().startswith("exit,temperature,n,ece_before")
    assert (run_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # The Cascade given the run directory takes the file's temperatures and threshold.
    run = open_run(run_dir)
    model, data = run.model(), load_data(run.config["data"])
    cascade = Cascade(model, calibration=run_dir)
    assert cascade.temperatures == found["temperatures"]
    assert cascade.threshold == pytest.approx(found["threshold"])
    probs = exit_probabilities(model, data.x_val)
    part = np.asarray(split["calibration"])
    expected = route([p[part] for p in probs], "max_prob", found["threshold"],
                     found["temperatures"])
    out = cascade(data.x_val[part])
    np.testing.assert_array_equal(out.exits, expected + 1)
    assert out.mean_macs == pytest.approx(found["macs"]["mean"])
    # Bad input: one line, exit 2, nothing written.
    before = sorted(os.listdir(run_dir))
    r = _cli("calibrate", str(run_dir), "--epsilon", "1.5")
    assert r.returncode == 2 and r.stderr.startswith("error: --epsilon must be in (0, 1)")
    assert r.stderr.count("\n") == 1 and sorted(os.listdir(run_dir)) == before


def test_budget_mode_reads_latency_and_picks_the_safest_threshold_within_budget(tmp_path):
    from elastic_keras import files
    from elastic_keras.inference.latency import COLUMNS
    from elastic_keras.runs.calibrate import choose, path_ms, split_validation
    from elastic_keras.runs.rundir import RunDir

    # latency.csv as `latency` writes it: per-image ms of each path at the largest batch.
    export = tmp_path / "export-litert"
    export.mkdir()
    rows = [{"kind": kind, "exit": name, "index": i, "batch": b, "p50_ms": ms * b,
             "per_image_ms": ms * (1 if b == 1 else 0.5)}
            for b in (1, 32) for kind in ("path", "predictor")
            for i, (name, ms) in enumerate([("exit_1", 1.5), ("final", 4.0)], 1)]
    files.write_csv(str(export / "latency.csv"), list(COLUMNS), rows)
    run = RunDir(tmp_path)
    assert path_ms(run, None, ["exit_1", "final"], needed=True) == [0.75, 2.0]  # batch 32
    with pytest.raises(ElasticKerasError, match="measured 2 exits; this run has 3"):
        path_ms(run, None, ["exit_1", "exit_2", "final"], needed=False)
    assert path_ms(RunDir(tmp_path / "none"), None, ["final"], needed=False) is None
    with pytest.raises(ElasticKerasError, match="need one latency.csv in"):
        path_ms(RunDir(tmp_path / "none"), None, ["final"], needed=True)
    losses = np.zeros((500, 4))
    losses[:5, 3] = 1
    costs = np.array([4.0, 3.0, 2.0, 1.0])  # falls along the grid, safe end first
    index, bound, _ = choose(losses, costs, 0.02, 0.1, "ucb", budget=2.5)
    assert index == 2 and 0 < bound < 0.05
    index, bound, _ = choose(losses, costs, 0.02, 0.1, "ltt", budget=1.0)
    assert index == 3 and bound > 0.01
    with pytest.raises(ElasticKerasError, match="no threshold meets the budget 0.5"):
        choose(losses, costs, 0.02, 0.1, "ltt", budget=0.5)
    fit, part = split_validation(10, 0.3, 0)
    assert len(fit) == 3 and sorted(np.concatenate([fit, part])) == list(range(10))
    with pytest.raises(ElasticKerasError, match="--fit-fraction must be in"):
        split_validation(10, 1.0, 0)
