"""Faithful to what was printed and to what was run."""

import json
import os
import re
import subprocess
import sys

import pytest

from elastic_keras import build_model, exit_info, loss_weights
from elastic_keras.runs.config import load_config
from elastic_keras.training.schedule import early_stop, new_state, plateau

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ID = r"[MPLTABRDGIOSQW]\d+"


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
    plain = load_config("cifar100-mobilenet-plain", protocol="authors")  # a plain script
    assert (plain["model"]["backbone"], plain["model"]["alpha"]) == ("mobilenet_authors", 0.75)
    assert (plain["model"]["dropout"], plain["train"]["batch_size"]) == (0.0, 32)
    assert plain["phases"]["heads"]["momentum"] == 0.0
    assert not plain["train"]["reload_best_between_phases"]
    assert plain["phases"]["full"]["stop_min_delta"] == 0.003
    # Issue 20: each cell gets the recipe that produced its printed number (A6, A10, A11).
    def phase(cfg, *keys):
        return [tuple(cfg["phases"][p][k] for k in keys) for p in ("heads", "full")]

    inc = load_config("cifar100-inceptionv3-plain", protocol="authors")
    assert inc["model"]["input_size"] == 139 and inc["train"]["batch_size"] == 32
    assert phase(inc, "epochs", "stop_min_delta", "stop_patience") == [(1000, 1e-3, 15)] * 2
    main = load_config("cifar10-resnet50-plain", protocol="authors")  # elastic/main.py
    assert (main["model"]["dropout"], main["train"]["batch_size"]) == (0.2, 16)
    assert main["train"]["reload_best_between_phases"]
    assert phase(main, "momentum", "stop_min_delta") == [(0.9, 1e-4), (0.0, 1e-4)]
    v1 = load_config("cifar10-inceptionv3-elastic", protocol="authors")
    assert v1["train"]["batch_size"] == 32 and not v1["train"]["reload_best_between_phases"]
    assert phase(v1, "momentum", "stop_min_delta") == [(0.0, 0.003)] * 2
    assert load_config("cifar100-inceptionv3-elastic", protocol="authors")["train"][
        "batch_size"] == 16
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
    assert exit_info(plain)[-1].layer == "bn" and "relu" not in [layer.name for layer in plain.layers]


def test_a_smoke_run_with_multi_way_backprop_trains_and_evaluates(tmp_path):
    r = _cli("train", "cifar10-vgg16-elastic", "--profile", "smoke", "--set",
             "data.dataset=synthetic", "--set", "data.train_limit=60", "--set",
             "data.test_limit=20", "--set", "train.backprop=multi_way", "--set",
             "phases.full.momentum=0", "--runs-root",  # an int momentum: SGD takes floats only
             str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.load(open(tmp_path / "smoke" / "synthetic" / "synthetic10-vgg16-elastic" /
                         "results.json"))
    assert res["config"]["train"]["backprop"] == "multi_way" and len(res["exits"]) == 5


def test_auxnet_weights_as_written():
    assert loss_weights("auxnet", 4, depths=[14, 39, 104, 168], nu=0) == [1.0] * 4
    w = loss_weights("auxnet", 4, depths=[14, 39, 104, 168], nu=2)
    assert w[2] == 1.0 and w[-1] == 1.0 and w[0] == pytest.approx((14 / 104) ** 2)


# The no-top ImageNet file names Keras 2.1.5 downloaded (keras/applications/*.py of 2.1.5:
# densenet.py:266, :272; inception_v3.py:387; mobilenet.py:323; resnet50.py:267;
# vgg16.py:172); FIDELITY.md M11.
KERAS_2_1_5_FILES = {
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet169": "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inceptionv3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet": "mobilenet_1_0_224_tf_no_top.h5",
    "mobilenet_authors": "mobilenet_7_5_224_tf_no_top.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def test_a_weights_folder_takes_the_keras_2_1_5_file_names(tmp_path):
    from elastic_keras.errors import ElasticKerasError
    from elastic_keras.model.factory import _resolve_weights
    from elastic_keras.model.registry import get_spec

    for backbone, name in KERAS_2_1_5_FILES.items():
        (tmp_path / name).write_bytes(b"")
        assert _resolve_weights(get_spec(backbone), str(tmp_path), None, 224) == \
            str(tmp_path / name)
    with pytest.raises(ElasticKerasError, match="mobilenet_5_0_224_tf_no_top.h5"):
        _resolve_weights(get_spec("mobilenet"), str(tmp_path), 0.5, 224)
