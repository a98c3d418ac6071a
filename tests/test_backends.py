"""One core on every Keras backend, exits recorded in the model, honest device use."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from elastic_keras import build_model, elastify, exit_info
from elastic_keras.data.batches import Batches
from elastic_keras.runs.config import load_config
from elastic_keras.model.exits import ElasticModel, exit_records, head_layers
from elastic_keras.training.loop import set_trainable
from elastic_keras.training.objective import ExitTrainer, named

BACKEND = keras.backend.backend()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def test_importing_the_package_under_jax_imports_no_tensorflow():
    # Every module of every wing, then a model built: still no TensorFlow under JAX.
    code = ("import sys, importlib, pkgutil, elastic_keras as E; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(E.__path__, "
            "'elastic_keras.') if not m.name.endswith('__main__')]; "
            "E.build_model('mobilenet', 3, input_size=32, weights=None); "
            "print('tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def _own_names_backbone():
    """A backbone whose own layers are named like exit heads (exit_1_conv, final_block)."""
    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="exit_1_conv")(inp)
    x = L.BatchNormalization(name="final_bn")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(8, 3, padding="same", name="final_block")(x)
    return keras.Model(inp, x, name="own")


@pytest.mark.backends
def test_exits_are_recorded_not_guessed_from_names(tmp_path):
    model = elastify(_own_names_backbone(), ["exit_1_conv", "pool"], classes=3)
    assert [e["tap"] for e in exit_records(model)] == ["exit_1_conv", "pool", "final_block"]
    assert head_layers(model) == {"exit_1_gap", "exit_1_dropout", "exit_1", "exit_2_gap",
                                  "exit_2_dropout", "exit_2", "final_flatten",
                                  "final_dropout", "final"}
    assert [e.layer for e in exit_info(model)] == ["exit_1_conv", "pool", "final_block"]
    assert [e.conv_layers for e in exit_info(model)] == [1, 1, 2]
    # Phase 'heads' freezes exactly the backbone, whatever its layers are called.
    set_trainable(model, "heads")
    trainable = {v.path.split("/")[0] for v in model.trainable_variables}
    assert trainable == {"exit_1", "exit_2", "final"}
    # The record survives a .keras save and a safe_mode load; exit_info reads it there.
    path = tmp_path / "own.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, ElasticModel) and exit_records(loaded) == exit_records(model)
    assert exit_info(loaded) == exit_info(model)
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    for a, b in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.backends
def test_evaluation_batch_does_not_change_results():
    """Validation and test passes use their own batch: the numbers are the same."""
    net = build_model("mobilenet", 10, input_size=32, alpha=0.25, weights=None,
                      source_shape=(32, 32, 3))
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    trainer.compile()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 100)
    small, large = (named(trainer.evaluate(Batches(x, y, b), verbose=0, return_dict=True),
                          trainer.exit_names) for b in (16, 256))
    assert small.keys() == large.keys() and "final_accuracy" in small
    for k in small:  # accuracies: the same count of right answers (1/100 apart otherwise)
        assert small[k] == pytest.approx(large[k], rel=1e-5, abs=1e-6), k


def test_paper_profile_without_accelerator_stops_before_data_and_weights(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nbackbone = "vgg16"\n[data]\ndataset = "cifar10"\n'
                   'data_dir = "/nonexistent"\n')
    r = _cli("train", str(cfg), "--runs-root", str(tmp_path / "runs"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line, no TensorFlow start-up lines
    assert "needs an accelerator" in r.stderr and "--allow-cpu" in r.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.json"))
    # --allow-cpu goes on: to the data, which is missing here.
    r = _cli("train", str(cfg), "--allow-cpu", "--runs-root", str(tmp_path / "runs"))
    assert r.returncode == 2 and "data_dir" in r.stderr and "needs an accelerator" not in r.stderr


def test_dry_run_prints_the_resolved_config(tmp_path):
    r = _cli("train", "cifar10-vgg16-elastic", "--dry-run",
             "--set", "phases.full.epochs=3")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["phases"]["full"]["epochs"] == 3 and cfg["model"]["backbone"] == "vgg16"


def test_a_run_records_backend_device_and_versions(tmp_path):
    from elastic_keras.runs.train import train

    cfg = load_config(None, ["name=env", "model.backbone=mobilenet", "model.alpha=0.25",
                             "data.dataset=synthetic", "data.train_limit=40",
                             "data.test_limit=20", "phases.full.epochs=0"], profile="smoke")
    lines = []
    run = train(cfg, runs_root=tmp_path, log=lines.append, verbose=False)
    session = run.state.sessions[-1]
    assert session["backend"] == BACKEND and "CPU" in session["device"]
    assert session["versions"]["keras"] == keras.__version__
    res = run.results
    assert res["backend"] == BACKEND and res["device"] == session["device"]
    assert f"backend {BACKEND} on" in lines[0] and "keras" in lines[0]
