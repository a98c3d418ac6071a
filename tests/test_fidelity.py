"""Faithful to what was printed and to what was run."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_cnn

from elastic_keras import build_model, elastify, exit_info, loss_weights
from elastic_keras.runs.config import load_config
from elastic_keras.training.schedule import early_stop, new_state, plateau
from elastic_keras.training.loop import make_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ID = r"[MPLTABRDGI]\d+"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=900)


def test_every_fidelity_id_is_named_where_it_acts_and_every_cited_id_exists():
    doc = open(os.path.join(REPO, "docs", "FIDELITY.md"), encoding="utf-8").read()
    ids = re.findall(rf"^(?:- )?\*\*({ID})[. ]", doc, re.M)
    assert len(ids) == len(set(ids)) and len(ids) > 60
    cited = set()
    for top in ("elastic_keras", "scripts", "notebooks"):
        for folder, _, names in os.walk(os.path.join(REPO, top)):
            for name in names:
                if name.endswith((".py", ".toml", ".ipynb")):
                    text = open(os.path.join(folder, name), encoding="utf-8").read()
                    for tail in re.findall(r"FIDELITY\.md((?:[ ,]+(?:and )?" + ID + r")+)", text):
                        cited |= set(re.findall(ID, tail))
    assert sorted(cited - set(ids)) == [], "cited in the code, missing in docs/FIDELITY.md"
    assert sorted(set(ids) - cited) == [], "in docs/FIDELITY.md, named nowhere in the code"


def _drops(losses, **phase):
    """1-based epochs after which the rate is cut, for a scripted validation-loss sequence."""
    p = {"factor": 0.1, "patience": 5, "cooldown": 0, "min_lr": 0.0, "min_delta": 1e-4,
         "counting": "keras2", **phase}
    state, lr, cuts = new_state(), 1e-3, []
    for epoch, loss in enumerate(losses, 1):
        new = plateau(state, loss, lr, p)
        if new < lr:
            cuts.append(epoch)
        lr = new
    return cuts


def test_the_plateau_counts_as_keras_2_1_5_counted():
    # Improves until epoch 3, then never again.
    losses = [3.0, 2.0, 1.0] + [1.5] * 20
    # Keras 2.1.5 (callbacks.py:962-981) tests before counting: the first cut one epoch later.
    assert _drops(losses, patience=5) == [9, 14, 19]
    assert _drops(losses, patience=5, counting="keras3") == [8, 13, 18, 23]
    # The authors' patience 5 and cooldown 1 (elastic/main.py:140).
    assert _drops(losses, patience=5, cooldown=1) == [9, 15, 21]
    assert _drops(losses, patience=5, cooldown=1, counting="keras3") == [8, 13, 18, 23]
    assert _drops(losses, patience=5, cooldown=2) == [9, 16, 23]
    # The paper's patience 10: first cut after epoch 14 (2.1.5), 13 (Keras 3).
    assert _drops(losses, patience=10)[:1] == [14]
    assert _drops(losses, patience=10, counting="keras3")[:1] == [13]
    # min_lr stops the cuts; an improvement (beyond min_delta) resets the count.
    assert _drops(losses, patience=5, min_lr=1e-4) == [9]
    assert _drops([1.0, 1.5, 1.5, 0.9, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5], patience=5) == [10]


def test_early_stopping_counts_first():
    p = {"stop_patience": 10, "stop_min_delta": 1e-4}
    state = new_state()
    stops = [e for e, loss in enumerate([3.0, 2.0, 1.0] + [1.5] * 12, 1)
             if early_stop(state, loss, p)]
    assert stops[0] == 13


def test_protocol_authors_dry_run_shows_what_their_scripts_ran():
    r = _cli("train", "cifar10-mobilenet-elastic", "--protocol", "authors", "--dry-run")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    full = cfg["phases"]["full"]
    assert (full["patience"], full["cooldown"], full["min_lr"], full["momentum"]) == \
        (5, 1, 1e-05, 0.0)
    assert full["early_stop"] and cfg["phases"]["heads"]["momentum"] == 0.9
    assert cfg["model"]["backbone"] == "mobilenet_authors"
    assert cfg["model"]["preprocess"] == "authors" and cfg["protocol"] == "authors"
    plain = load_config("cifar100-inceptionv3-plain", protocol="authors")
    assert plain["model"]["backbone"] == "inceptionv3_authors"
    assert (plain["model"]["dropout"], plain["train"]["batch_size"]) == (0.0, 32)
    assert plain["phases"]["heads"]["momentum"] == 0.0
    assert not plain["train"]["reload_best_between_phases"]
    assert plain["phases"]["full"]["stop_min_delta"] == 0.003
    paper = load_config("cifar10-mobilenet-elastic")
    assert paper["phases"]["full"]["momentum"] == 0.9 and paper["model"]["backbone"] == \
        "mobilenet"
    r = _cli("reproduce", "table1", "--protocol", "authors", "--runs", "mobilenet",
             "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"backbone": "mobilenet_authors"') == 4


def test_densenet_final_exit_reads_bn_with_the_same_parameters():
    r = _cli("describe", "densenet169", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[-1]["layer"] == "bn"
    assert [round(e["params"] / 1e6, 2) for e in rows] == [0.39, 1.47, 6.71, 20.90]
    plain = build_model("densenet121", 10, input_size=32, weights=None, plain=True)
    assert exit_info(plain)[-1].layer == "bn" and "relu" not in [l.name for l in plain.layers]


def _tiny():
    return elastify(tiny_cnn((4, 6)), ["p1"], classes=3, dropout=0.0)


def _weights_after_steps(backprop, momentum):
    from elastic_keras.backend.keras_internals import seed_everything

    seed_everything(1)
    net = _tiny()
    trainer = make_trainer(net, [0.5, 1.0], backprop)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=momentum))
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, 3, 16)
    for _ in range(2):
        trainer.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in net.weights]


@pytest.mark.backends
def test_multi_way_with_plain_sgd_is_one_joint_step_and_with_momentum_it_is_not():
    joint, multi = _weights_after_steps("joint", 0.0), _weights_after_steps("multi_way", 0.0)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(joint, multi))
    joint, multi = _weights_after_steps("joint", 0.9), _weights_after_steps("multi_way", 0.9)
    assert max(float(np.abs(a - b).max()) for a, b in zip(joint, multi)) > 1e-3


def test_a_smoke_run_with_multi_way_backprop_trains_and_evaluates(tmp_path):
    r = _cli("train", "cifar10-vgg16-elastic", "--profile", "smoke", "--set",
             "data.dataset=synthetic", "--set", "data.train_limit=60", "--set",
             "data.test_limit=20", "--set", "train.backprop=multi_way", "--runs-root",
             str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.load(open(tmp_path / "smoke" / "synthetic" / "synthetic10-vgg16-elastic" /
                         "results.json"))
    assert res["config"]["train"]["backprop"] == "multi_way" and len(res["exits"]) == 5


def test_auxnet_weights_as_written():
    assert loss_weights("auxnet", 4, depths=[14, 39, 104, 168], nu=0) == [1.0] * 4
    w = loss_weights("auxnet", 4, depths=[14, 39, 104, 168], nu=2)
    assert w[2] == 1.0 and w[-1] == 1.0 and w[0] == pytest.approx((14 / 104) ** 2)
