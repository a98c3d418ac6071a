"""A run's life from claim to results, and elastify on any Keras network.

Each test first reproduces a failure found by trying the package as a demanding user.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from elastic_keras import ElasticKerasError, elastify, exit_info
from elastic_keras.inference.cascade import Cascade
from elastic_keras.runs.config import load_config
from elastic_keras.backend.keras_internals import graph_nodes
from elastic_keras.inference.predictors import truncated_predictor
from elastic_keras.runs.found import open_run
from elastic_keras.runs.rundir import RunBusy, RunDir
from elastic_keras.runs.train import train

TINY = ["model.backbone=mobilenet", "model.alpha=0.25", "data.dataset=synthetic",
        "data.train_limit=60", "data.test_limit=20", "phases.heads.lr=0.01",
        "phases.full.lr=0.01"]


def tiny_cfg(name="tiny", extra=()):
    return load_config(None, [f"name={name}", *TINY, *extra], profile="smoke")


def _sets(extra=()):
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=timeout)


def _config(tmp_path, name="r"):
    path = tmp_path / f"{name}.toml"
    path.write_text('[model]\nbackbone = "mobilenet"\n')
    return str(path)


def _kill_when(proc, state_path, ready, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state_path.exists():
            try:
                if ready(json.loads(state_path.read_text())):
                    break
            except (ValueError, KeyError):
                pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_between_phases_evaluate_refuses_then_resume_says_so(tmp_path):
    """1: `evaluate` wrote results.json for an unfinished run, which then read as finished;
    6: no "resuming" line when killed between the phases."""
    config, root = _config(tmp_path), tmp_path / "runs"
    args = ["train", config, "--profile", "smoke", *_sets(["phases.full.epochs=2"]),
            "--runs-root", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "elastic_keras", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = root / "smoke" / "synthetic" / "r"
    _kill_when(proc, run_dir / "state.json",
               lambda s: s["phase"] == "heads" and s["phase_epoch"] == 1)
    assert open_run(run_dir).status == "training"
    r = _cli("evaluate", str(run_dir))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot evaluate it: it is still training (1 epochs done" in r.stderr
    assert not (run_dir / "results.json").exists() and not open_run(run_dir).finished
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming after epoch 1 (phase 'heads', 1 epochs into it)" in r.stdout
    assert open_run(run_dir).finished and len(open_run(run_dir).state.history) == 3
    assert _cli("evaluate", str(run_dir)).returncode == 0  # a finished run re-evaluates


def test_two_workers_on_one_run_train_it_once(tmp_path):
    """2: two processes on one runs directory both trained the same run and one crashed."""
    config, root = _config(tmp_path), tmp_path / "runs"
    args = [sys.executable, "-m", "elastic_keras", "train", config, "--profile", "smoke",
            *_sets(["phases.full.epochs=1"]), "--runs-root", str(root)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    trained = [o for o, _ in outs if "test error of each exit" in o]
    waited = [o for o, _ in outs if "finished already" in o]
    assert len(trained) == 1 and len(waited) == 1
    assert "waiting for" in waited[0]
    run = open_run(root / "smoke" / "synthetic" / "r")
    assert [r["epoch"] for r in run.state.history] == [1, 2]
    assert len(run.state.sessions) == 1


def test_the_lock_of_a_killed_worker_is_taken_over(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from elastic_keras.runs.rundir import RunDir\n"
        f"with RunDir({str(tmp_path / 'run')!r}).lock():\n"
        "    print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunBusy, match=f"held by pid {holder.pid} on "):
        with run.lock():
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run.lock() as locked:  # the dead holder's successor takes over at once
        assert locked is run


def test_a_diverged_run_is_stopped_not_reported(tmp_path):
    """4: lr 1e6 grew the weights to 1e30; the clipped loss sat at a constant, nothing was
    NaN, and results.json was written at chance level."""
    cfg = tiny_cfg("diverged", ["phases.full.lr=1e6", "phases.full.epochs=2"])
    with pytest.raises(ElasticKerasError, match=r"diverged at run epoch 2 \(phase 'full'\)"):
        train(cfg, runs_root=tmp_path, log=lambda *_: None, verbose=False)
    run = open_run(tmp_path / "smoke" / "synthetic" / "diverged")
    assert run.status == "failed" and not run.finished
    assert not (tmp_path / "smoke" / "synthetic" / "diverged" / "results.json").exists()
    # 5: the message's advice (lower the learning rate) replaces the failed run.
    lines = []
    fixed = train(tiny_cfg("diverged", ["phases.full.lr=0.01", "phases.full.epochs=2"]),
                  runs_root=tmp_path, log=lines.append, verbose=False)
    assert fixed.finished and any("replacing the failed run" in line for line in lines)
    # The same diverging config again is refused with what happened before.
    with pytest.raises(ElasticKerasError, match="another config"):
        train(cfg, runs_root=tmp_path, log=lambda *_: None, verbose=False)


@pytest.mark.parametrize("bad,fix,message", [
    (["model.weights=/nonexistent/mobilenet_2_5_224_tf_no_top.h5"], ["model.weights=null"],
     "weights file not found"),
    (["loss.weights=[1, 1]"], ["loss.weights=uniform"], "got 2 weights for a model with 13"),
])
def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, bad, fix,
                                                                        message):
    """5: config.json and split.json were written before weights and loss weights were
    checked, so the corrected rerun was refused as "another config"."""
    with pytest.raises(ElasticKerasError, match=message):
        train(tiny_cfg("start", [*bad, "phases.full.epochs=0"]), runs_root=tmp_path,
              log=lambda *_: None, verbose=False)
    run_dir = tmp_path / "smoke" / "synthetic" / "start"
    assert not (run_dir / "config.json").exists() and not (run_dir / "split.json").exists()
    run = train(tiny_cfg("start", [*fix, "phases.full.epochs=0"]), runs_root=tmp_path,
                log=lambda *_: None, verbose=False)
    assert run.finished


def test_smaller_points(tmp_path):
    """6: files were 0600, a corrupt config.json gave a traceback, booleans passed as
    integers, alpha and nu were not validated, TensorFlow's start-up lines preceded errors."""
    run = train(tiny_cfg("modes", ["phases.full.epochs=0"]), runs_root=tmp_path,
                log=lambda *_: None, verbose=False)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "split.json", "state.json", "history.csv", "results.json"):
        assert stat.S_IMODE(os.stat(run.path(name)).st_mode) == 0o666 & ~umask, name
    with open(run.path("config.json"), "w") as f:
        f.write('{"name": "modes", ')
    r = _cli("evaluate", run.dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "corrupt" in r.stderr, r.stderr
    for sets, message in ((["train.batch_size=true"], "train.batch_size must be an integer"),
                          (["model.alpha=0"], "model.alpha must be a number in (0, inf)"),
                          (["model.alpha=0.3"], "model.alpha must be one of"),
                          (["loss.nu=-1"], "loss.nu must be a number in [0, inf)"),
                          (["phases.full.epochs=1.5"], "phases.full.epochs must be an integer")):
        with pytest.raises(ElasticKerasError, match=message.replace("(", r"\(").replace(
                ")", r"\)").replace("[", r"\[")):
            load_config(None, ["name=x", "model.backbone=mobilenet", *sets])
    with pytest.raises(ElasticKerasError, match="model.alpha applies to MobileNet only"):
        load_config(None, ["name=x", "model.backbone=vgg16", "model.alpha=0.5"])
    r = _cli("train", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and r.stderr == f"error: config file not found: {tmp_path}/missing.toml\n"


# ---------------------------------------------------------------------------------------
# 3: exit_info and Cascade crashed on MobileNetV3Small and ConvNeXtTiny (bare `x + y` ops)

# Every family of keras.applications in Keras 3.15 beyond the registry (which has no RegNet).
FAMILIES = {"MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
            "EfficientNetB0": 32, "EfficientNetV2B0": 32, "ConvNeXtTiny": 32,
            "ResNet50V2": 32, "Xception": 71, "NASNetMobile": 32, "VGG19": 32,
            "DenseNet121": 32, "InceptionResNetV2": 75}


def cut_layers(model):
    """Layers whose one output is the only tensor alive at that point of the graph: the
    places where a cascade can cut the network (named, 4-D outputs)."""
    nodes = graph_nodes(model.outputs)
    depth = {id(n): len(graph_nodes(n.output_tensors)) for n in nodes}
    consumers = {}
    for n in nodes:
        for t in n.input_tensors:
            consumers.setdefault(id(t), set()).add(id(n))
    alive, done, cuts = {}, set(), []
    for n in sorted(nodes, key=lambda n: depth[id(n)]):
        done.add(id(n))
        for t in n.output_tensors:
            alive[id(t)] = set(consumers.get(id(t), ()))
        alive = {k: v - done for k, v in alive.items() if v - done}
        out = n.output_tensors[0]
        if len(n.output_tensors) == 1 and set(alive) == {id(out)} and len(out.shape) == 4 \
                and n.operation.name in {layer.name for layer in model.layers}:
            cuts.append(n.operation.name)
    return cuts


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_elastify_predictors_and_cascade_on_every_keras_applications_family(family, tmp_path):
    size = FAMILIES[family]
    base = getattr(keras.applications, family)(include_top=False, weights=None,
                                               input_shape=(size, size, 3))
    cuts = cut_layers(base)[1:]  # not the input layer
    taps = [cuts[len(cuts) // 3], cuts[2 * len(cuts) // 3]]
    model = elastify(base, taps, classes=3)
    info = exit_info(model)
    assert [e.layer for e in info[:2]] == taps
    assert all(a.macs <= b.macs for a, b in zip(info, info[1:])) and info[0].macs > 0
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    full = [np.asarray(p) for p in model(x, training=False)]
    for k in range(3):
        pred = truncated_predictor(model, k + 1)
        assert pred.count_params() == info[k].params_exit_only
        np.testing.assert_allclose(np.asarray(pred(x, training=False)), full[k], atol=1e-4)
    everyone = Cascade(model, threshold=2.0, graph=False)(x)  # nobody leaves early
    assert everyone.entered == [2, 2, 2]
    np.testing.assert_allclose(everyone.probabilities, full[-1], atol=1e-4)
    assert (Cascade(model, threshold=0.0, graph=False)(x).exits == 1).all()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert exit_info(loaded) == info
    for a, b in zip(full, loaded(x, training=False)):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-4)
