"""Two-phase trainer, resume, evaluation and bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from elastic_keras import ElasticKerasError, build_model
from elastic_keras.runs.config import load_config
from elastic_keras.data.batches import Batches
from elastic_keras.data.datasets import load_dataset
from elastic_keras.model.exits import head_layers
from elastic_keras.runs.found import open_run
from elastic_keras.training.objective import ExitTrainer
from elastic_keras.runs.train import train
from elastic_keras.training.job import Job
from elastic_keras.training.loop import start_phase
from elastic_keras.training.state import RunState

TINY = ["model.backbone=mobilenet", "data.dataset=synthetic", "data.train_limit=100",
        "data.test_limit=40", "phases.heads.lr=0.01", "phases.full.lr=0.01"]


def tiny_cfg(name="tiny", extra=()):
    return load_config(None, [f"name={name}", *TINY, *extra], profile="smoke")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=600, **kw)


@pytest.mark.backends
def test_phase_heads_freezes_the_backbone_and_phase_full_trains_it():
    keras.utils.set_random_seed(0)
    data = load_dataset("synthetic", train_limit=64, test_limit=20)
    net = build_model("mobilenet", 10, input_size=32, weights=None, source_shape=(32, 32, 3))
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    heads = [layer for layer in net.layers if layer.name in head_layers(net)]
    body = [layer for layer in net.layers if layer not in heads and layer.weights]
    cfg = {"name": "t", "train": {"reload_best_between_phases": True, "steps_per_execution": 1}}
    job = Job(cfg, data, net, trainer, {}, [1.0] * len(net.outputs))
    phases = [(n, {"trainable": n, "lr": 0.01, "momentum": 0.9}) for n in ("heads", "all")]
    state = RunState()

    def snapshot(layers):
        return [w.numpy().copy() for layer in layers for w in layer.weights]

    def fit(trainable):
        # The loop's own phase start: what trains, and a fresh compile.
        start_phase(job, state, ["heads", "all"].index(trainable), phases, print)
        trainer.fit(Batches(data.x_train, data.y_train, 16, shuffle=True), epochs=1, verbose=0,
                    shuffle=False)

    body0, heads0 = snapshot(body), snapshot(heads)
    fit("heads")
    assert all(np.array_equal(a, b) for a, b in zip(body0, snapshot(body)))  # BN stats too
    assert any(not np.array_equal(a, b) for a, b in zip(heads0, snapshot(heads)))
    fit("all")
    changed = [not np.array_equal(a, b) for a, b in zip(body0, snapshot(body))]
    assert sum(changed) > 0.9 * len(changed)


def test_two_phase_run_writes_history_and_per_exit_results(tmp_path, capsys):
    cfg = tiny_cfg(extra=["phases.full.epochs=2"])
    run = train(cfg, runs_root=tmp_path, verbose=0)
    rows = list(csv.DictReader(open(run.path("history.csv"))))
    assert [(r["epoch"], r["phase"], r["phase_epoch"]) for r in rows] == [
        ("1", "heads", "1"), ("2", "full", "1"), ("3", "full", "2")]
    for o in ["exit_1", "exit_12", "final"]:
        for k in (f"{o}_loss", f"{o}_accuracy", f"val_{o}_loss", f"val_{o}_accuracy"):
            assert k in rows[0]
    res = run.results
    assert res["profile"] == "smoke" and res["dataset"] == "synthetic"
    assert [e["output"] for e in res["exits"]] == [f"exit_{i}" for i in range(1, 13)] + ["final"]
    assert res["test_images"] == 40 and 0 <= res["final_test_error_pct"] <= 100
    assert res["checkpoint"]["val_loss"] == min(float(r["val_loss"]) for r in rows)
    assert json.load(open(run.path("split.json")))["seed"] == 0
    assert json.load(open(run.path("config.json")))["resolved"]["num_classes"] == 10
    # A finished run is not trained again.
    mtime = os.path.getmtime(run.path("results.json"))
    train(cfg, runs_root=tmp_path, verbose=0)
    assert os.path.getmtime(run.path("results.json")) == mtime
    assert "finished already" in capsys.readouterr().out
    # The same config twice from scratch gives the same history (seeds).
    again = train(cfg, runs_root=tmp_path / "again", verbose=0)
    assert _same_numbers(run, again)


def _same_numbers(a, b):
    ra = list(csv.DictReader(open(a.path("history.csv"))))
    rb = list(csv.DictReader(open(b.path("history.csv"))))
    return len(ra) == len(rb) and all(x[k] == y[k] for x, y in zip(ra, rb) for k in x
                                      if k not in ("time_s", "train_s", "val_s"))


def _write_config(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.backends
def test_kill_9_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    config = _write_config(tmp_path, '[model]\nbackbone = "mobilenet"\n')
    args = ["--profile", "smoke", *[a for s in TINY[1:] for a in ("--set", s)],
            "--set", "phases.full.epochs=4"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "elastic_keras", "train", config, *args,
                             "--runs-root", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = killed / "smoke" / "synthetic" / "c" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once phase 'full' has a finished epoch
        if state.exists():
            s = json.loads(state.read_text())
            if s["phase"] == "full" and 1 <= s["phase_epoch"] < 4:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (state.parent / "results.json").exists()
    r = _cli("train", config, *args, "--runs-root", str(killed))
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch" in r.stdout and "(phase 'full'" in r.stdout
    r = _cli("train", config, *args, "--runs-root", str(tmp_path / "whole"))
    assert r.returncode == 0, r.stderr
    a, b = open_run(state.parent), open_run(tmp_path / "whole" / "smoke" / "synthetic" / "c")
    assert len(list(csv.DictReader(open(a.path("history.csv"))))) == 5
    assert _same_numbers(a, b)
    assert a.results["exits"] == b.results["exits"]


@pytest.mark.parametrize("text,sets,message", [
    ("[model\nbackbone=", [], "malformed config"),
    ('[model]\nbackbone = "resnet51"\n', [], "unknown backbone 'resnet51'"),
    ('[model]\nbackbone = "vgg16"\n', ["model.depth=3"], "unknown key 'model.depth'"),
    ('[model]\nbackbone = "vgg16"\n', ["phases.full.lr=-1"], "phases.full.lr"),
    ('[model]\nbackbone = "vgg16"\n[data]\ndataset = "digits"\nnum_classes = 100\n', [],
     "100"),
    ('[model]\nbackbone = "vgg16"\n[data]\ndataset = "cifar10"\ndata_dir = "/nonexistent"\n',
     [], "keras.datasets"),
    ('[model]\nbackbone = "vgg16"\n', ["data.dataset=imagenet"], "data.dataset"),
])
def test_bad_input_ends_in_one_clear_message(tmp_path, text, sets, message):
    r = _cli("train", _write_config(tmp_path, text), "--profile", "smoke",
             *[a for s in sets for a in ("--set", s)], "--runs-root", str(tmp_path / "runs"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").rglob("results.json"))


def test_nan_loss_stops_without_results(tmp_path):
    cfg = tiny_cfg("nan", ["phases.heads.lr=1e30", "phases.full.lr=1e30", "phases.full.epochs=1"])
    with pytest.raises(ElasticKerasError, match="diverged at run epoch 1"):
        train(cfg, runs_root=tmp_path, verbose=0)
    assert not list(tmp_path.rglob("results.json"))
    assert open_run(tmp_path / "smoke" / "synthetic" / "nan").status == "failed"


def test_a_run_dir_refuses_another_config(tmp_path):
    train(tiny_cfg(extra=["phases.full.epochs=0"]), runs_root=tmp_path, verbose=0)
    with pytest.raises(ElasticKerasError, match="another config"):
        train(tiny_cfg(extra=["phases.full.epochs=0", "model.dropout=0.5"]),
              runs_root=tmp_path, verbose=0)


def test_overrides_are_validated_like_the_file():
    cfg = load_config(None, ["name=x", "model.backbone=vgg16", "phases.full.epochs=3",
                             "loss.weights=[1, 0, 0, 0, 1]"])
    assert cfg["phases"]["full"]["epochs"] == 3 and cfg["model"]["input_size"] == 224
    assert cfg["loss"]["weights"] == [1, 0, 0, 0, 1]
    with pytest.raises(ElasticKerasError, match="key=value"):
        load_config(None, ["name"])
    with pytest.raises(ElasticKerasError, match="unknown profile"):
        load_config(None, ["name=x", "model.backbone=vgg16"], profile="fast")
    smoke = load_config(None, ["name=x", "model.backbone=inceptionv3"], profile="smoke")
    assert smoke["model"]["input_size"] == 75 and smoke["model"]["weights"] is None


def test_a_short_digits_run_learns(tmp_path):
    cfg = load_config(None, ["name=digits", "model.backbone=mobilenet"], profile="demo")
    res = train(cfg, runs_root=tmp_path, verbose=0).results
    # chance is 90% error; a model that learned is far below it
    assert res["final_test_error_pct"] < 45, res["final_test_error_pct"]
    assert min(e["test_error_pct"] for e in res["exits"]) < 15
