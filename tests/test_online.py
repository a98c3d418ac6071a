"""Online risk control: anytime-valid bounds, false alarms by simulation, policies, monitor."""

import json
import math
import shutil

import numpy as np
import pytest

from elastic_keras import ElasticKerasError
from elastic_keras.inference.online import Controller, from_calibration
from elastic_keras.inference.sequential import (
    evidence_above,
    evidence_below,
    lower_bound,
    upper_bound,
)

GRID = np.concatenate([[np.inf], np.linspace(1.0, 0.0, 41)])


def _run(controller, risk, n, rng, early=0.9, stop_at_alarm=True):
    """Feed n iid images: each leaves early with probability `early` and, if so, disagrees
    with probability risk / early (so the risk per served image is `risk`)."""
    for _ in range(n):
        left = rng.random() < early
        audited = left and controller.should_audit(rng)
        ticket = controller.observe_served(left, audited)
        if audited:
            controller.observe_audit(ticket, bool(rng.random() < risk / early))
        if stop_at_alarm and controller.alarms:
            return True
    return bool(controller.alarms)


def test_bounds_hold_at_every_time_at_once_and_bracket_the_mean():
    # P(some n has the true mean outside [lower, upper]) <= delta each side: the event is
    # the test supermartingale at the true mean passing 1/delta (Ville).
    rng, delta, p, misses = np.random.default_rng(0), 0.1, 0.05, [0, 0]
    for _ in range(200):
        hits = np.cumsum(rng.random(300) < p)
        misses[0] += any(evidence_below(h, n, p) >= math.log(1 / delta)
                         for n, h in enumerate(hits, 1))
        misses[1] += any(evidence_above(h, n, p) >= math.log(1 / delta)
                         for n, h in enumerate(hits, 1))
    assert misses[0] / 200 <= delta and misses[1] / 200 <= delta
    for hits, n in ((0, 100), (3, 100), (50, 100), (100, 100)):
        low, high = lower_bound(hits, n, delta), upper_bound(hits, n, delta)
        assert 0 <= low <= hits / n <= high <= 1
        assert high == 1.0 or evidence_below(hits, n, high * 1.01) >= math.log(1 / delta) > \
            evidence_below(hits, n, high * 0.99)
    assert upper_bound(0, 0, delta) == 1.0 and lower_bound(0, 0, delta) == 0.0
    assert upper_bound(0, 2000, delta) < upper_bound(0, 200, delta)  # tighter with data


@pytest.mark.parametrize("audit_rate,epsilon,shift", [(0.05, 0.02, 10), (1.0, 0.1, 3)])
def test_false_alarm_rate_is_at_most_delta_under_the_null_and_alarms_follow_a_shift(
        audit_rate, epsilon, shift):
    # Null: iid images whose risk is exactly epsilon (the worst case allowed), many short
    # seeded streams. Shift: the risk is `shift` times epsilon; most streams alarm.
    delta, streams = 0.1, 200
    false = sum(_run(Controller(GRID, 30, epsilon, delta, audit_rate), epsilon, 400,
                     np.random.default_rng(s)) for s in range(streams))
    assert false / streams <= delta
    caught = sum(_run(Controller(GRID, 30, epsilon, delta, audit_rate), shift * epsilon, 1500,
                      np.random.default_rng(1000 + s)) for s in range(40))
    assert caught >= 36


def test_step_policy_goes_to_the_safe_end_then_steps_back_never_past_the_calibrated():
    c = Controller(GRID, 3, epsilon=0.05, delta=0.1, audit_rate=1.0, patience=50)
    assert c.threshold == GRID[3] and not c.alarm and c.bound == 1.0
    tickets = [c.observe_served(True, True) for _ in range(5)]
    for t in tickets[:3]:
        assert not c.alarm
        c.observe_audit(t, True)  # three disagreements in five images: alarm
    assert c.alarm and c.alarms == 1 and math.isinf(c.threshold) and c.index == 0
    change = c.changes[-1]
    assert (change.reason, change.image, change.served, change.audits,
            change.disagreements) == ("alarm", 5, 5, 3, 3)
    assert change.lower > 0.05 and change.as_dict()["new"] is None
    c.observe_audit(tickets[3], True)  # late: its window is closed
    assert c.monitor.hits == 0 and c.monitor.audits == 0 and c.audits == 4
    # nobody leaves early at the safe end: the bound falls, one grid step back per window
    for _ in range(2000):
        c.observe_served(False)
    assert [ch.reason for ch in c.changes] == ["alarm", "step back", "step back", "step back"]
    assert c.index == 3 and not c.alarm and c.threshold == GRID[3]
    assert all(ch.served >= 50 and ch.bound < 0.025 for ch in c.changes[1:])
    status = c.status()
    assert status["threshold"] == GRID[3] and status["alarms"] == 1 and status["changes"] == 4


def test_aci_keeps_the_long_run_average_for_any_sequence():
    # An adversary that makes every early image disagree at the cheap thresholds: the
    # weighted losses average at most epsilon + (i0 / gamma + 1 / F) / T, whatever happens.
    for gamma, rate in ((1.0, 0.05), (0.3, 0.2)):
        c, rng = Controller(GRID, 30, 0.02, 0.1, rate, policy="aci", gamma=gamma), \
            np.random.default_rng(0)
        weighted, steps = 0.0, 6000
        for _ in range(steps):
            audited = c.should_audit(rng)
            ticket = c.observe_served(True, audited)
            assert 0 <= c.index <= 30
            if audited:
                bad = c.index >= 10  # decided before the answer: the cheap end disagrees
                c.observe_audit(ticket, bad)
                weighted += bad / rate
        assert weighted / steps <= 0.02 + (30 / gamma + 1 / rate) / steps
        assert c.changes and {ch.reason for ch in c.changes} <= {"aci", "alarm"}


def test_labels_bad_tickets_and_bad_arguments():
    c = Controller(GRID, 5, 0.05, 0.1, 1.0)
    t = c.observe_served(True, True)
    with pytest.raises(ElasticKerasError, match="ticket 7 is not an audit outstanding"):
        c.observe_audit(7, True)
    with pytest.raises(ElasticKerasError, match="audited must be false"):
        c.observe_served(False, True)
    with pytest.raises(ElasticKerasError, match="ticket must be one observe_served returned"):
        c.observe_label(99, True)
    for _ in range(6):  # labelled drops alone raise the alarm
        c.observe_label(t, True)
    assert c.alarm and c.changes[-1].reason == "alarm"
    for kwargs, match in (({"epsilon": 1.5}, "epsilon must be"),
                          ({"audit_rate": 0.0}, "audit_rate must be"),
                          ({"policy": "pid"}, "policy must be one of aci, step"),
                          ({"calibrated_index": 42}, "calibrated_index must be below")):
        args = {"grid": GRID, "calibrated_index": 5, "epsilon": 0.05, **kwargs}
        with pytest.raises(ElasticKerasError, match=match):
            Controller(**args)
    with pytest.raises(ElasticKerasError, match="grid must be thresholds from the safe end"):
        Controller(GRID[::-1], 5, 0.05)


def test_from_calibration_starts_at_the_certified_threshold_of_calibrates_grid():
    from elastic_keras.inference.calibration import threshold_grid

    cert = {"epsilon": 0.03, "delta": 0.2, "risk": "disagreement"}
    c = from_calibration({"threshold": 0.98, "certificate": cert})
    assert c.threshold == 0.98 and c.epsilon == 0.03 and c.delta == 0.2
    assert np.array_equal(c.grid, threshold_grid())
    assert from_calibration({"threshold": 0.975, "certificate": cert}).threshold == 0.98
    assert math.isinf(from_calibration({"threshold": None, "certificate": cert},
                                       epsilon=0.1).threshold)


def test_stream_audits_only_early_images_and_only_those_count():
    from elastic_keras.runs.monitor import stream

    # 3 outputs; images 0..99 leave at exit 1 unless the threshold is above 0.5
    classes = np.arange(100) % 5

    def answer(idx, threshold):
        early = threshold <= 0.5
        return {"classes": classes[idx], "exits": np.where(early & (idx % 2 == 0), 1, 3)}

    c = Controller(GRID, 30, 0.05, 0.1, audit_rate=1.0)
    out = stream(c, np.arange(100), answer, lambda idx: (classes[idx] + (idx % 4 == 0)) % 5,
                 3, np.random.default_rng(0), batch=10)
    assert not out["audited"][out["exit"] == 3].any()
    assert out["audited"][:10].sum() == 5
    assert out["disagree"][:10].tolist() == (np.arange(10) % 4 == 0).tolist()
    assert c.alarm and math.isinf(out["threshold"][-1])  # half the early ones disagree


@pytest.fixture(scope="module")
def calibrated_export(tmp_path_factory):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("export needs the TensorFlow backend")
    from test_export import _tiny_raw

    from elastic_keras.inference.export import export_model

    folder = tmp_path_factory.mktemp("online") / "export"
    cert = {"method": "ltt", "risk": "disagreement", "epsilon": 0.1, "delta": 0.1,
            "text": "test"}
    export_model(_tiny_raw(), "saved_model", folder, log=lambda *_: None, meta={
        "threshold": 0.6, "thresholds": {"calibration": 0.6}, "certificate": cert})
    return folder


def test_monitor_command_streams_an_npz_through_an_export(calibrated_export, tmp_path, capsys):
    from elastic_keras.cli import main

    images = np.random.default_rng(0).integers(0, 256, (120, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "stream.npz", images=images)
    log = tmp_path / "log.csv"
    assert main(["monitor", str(calibrated_export), str(tmp_path / "stream.npz"), "--audit",
                 "0.5", "--log", str(log), "--batch", "16"]) == 0
    out = capsys.readouterr().out
    assert "120 images through" in out and "threshold at start 0.6 (calibrated)" in out
    assert "summary: 120 images" in out and f"wrote {log}" in out
    rows = log.read_text().splitlines()
    assert rows[0] == "image,file,threshold,exit,class,audited,final_class,disagree"
    assert len(rows) == 121 and rows[1].startswith("0,")
    # an export without a calibration: one line, exit 2
    bare = tmp_path / "bare"
    shutil.copytree(calibrated_export, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["certificate"] = None
    (bare / "manifest.json").write_text(json.dumps(manifest))
    assert main(["monitor", str(bare), str(tmp_path / "stream.npz")]) == 2
    err = capsys.readouterr().err
    assert "has no calibration: run `python -m elastic_keras calibrate" in err
    assert err.count("\n") == 1


def test_bench_drift_scores_a_replayed_stream():
    # scripts/bench_drift.py's loop on a made-up table: 3 outputs, 20 clean images that
    # never disagree, 20 shifted ones that disagree wherever they leave early (threshold
    # index >= 5); the static threshold's risk after the shift is 1, the controller's after
    # its alarm 0, and before the shift both save the same.
    import argparse
    import os
    import sys

    from elastic_keras.inference.calibration import threshold_grid

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
    import bench_drift

    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    for shift, _ in bench_drift._shifts().values():
        y = shift(x, np.random.default_rng(1))
        assert y.shape == x.shape and y.dtype == np.uint8
    grid, macs = threshold_grid(), np.array([1.0, 2.0, 4.0])
    early = np.arange(len(grid)) >= 5
    taken = np.tile(np.where(early, 0, 2), (40, 1))
    shifted = np.arange(40)[:, None] >= 20
    table = {"taken": taken, "dis": (shifted & early).astype(float),
             "classes": (shifted & early).astype(int), "final": np.zeros(40, int)}
    calib = {"threshold": 0.98, "certificate": {"epsilon": 0.02, "delta": 0.1}}
    args = argparse.Namespace(epsilon=0.02, delta=0.1, audit=0.5, policy="step", gamma=1.0,
                              before=200, after=300)
    rows = bench_drift.run_shift(table, grid, calib, macs, args, 3, 20, 20)
    for r in rows:
        assert r["static_after"] == 1.0 and r["static_before"] == 0.0 and r["false_alarms"] == 0
        assert 0 <= r["delay"] < 40 and r["online_after"] == 0.0
        assert r["saved_before_online"] == r["saved_before_static"] == 0.75
    i0 = from_calibration(calib).calibrated_index
    assert bench_drift.oracle({k: v[20:] for k, v in table.items()}, macs, 0.02, i0) == 0.0
