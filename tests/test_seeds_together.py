"""Seeds in one program (issue 22): K seeds through one vmapped step under JAX, each run
directory as if trained alone. Runs in a JAX subprocess (this file is also its script)."""

import csv
import json
import os
import subprocess
import sys

import pytest

COMMON = ["model.backbone=mobilenet", "data.dataset=synthetic", "data.train_limit=50",
          "data.test_limit=12", "phases.heads.lr=0.05", "phases.full.lr=0.002",
          "phases.full.epochs=2", "train.batch_size=8", "train.eval_batch_size=16"]


def _tiny_model(cfg, num_classes, image_shape, initial_weights=True):
    """A small named CNN with BatchNorm, two exits and a final one (elastify)."""
    import keras

    from elastic_keras import elastify

    L = keras.layers
    inp = keras.Input(tuple(image_shape), name="images")
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1")(x)
    x = L.BatchNormalization(name="b1")(x)
    x = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c3")(x)
    return elastify(keras.Model(inp, x), ["c1", "c2"], num_classes, dropout=0.2)


def _script(root):
    """Two seeds alone, the same two together, then two together where one diverges."""
    from elastic_keras import ElasticKerasError
    from elastic_keras.model import factory
    from elastic_keras.runs.config import load_config
    from elastic_keras.runs.together import train_seeds_together
    from elastic_keras.runs.train import train
    from elastic_keras.training import loop

    factory.model_from_config = _tiny_model
    cfgs = [load_config(None, [f"name=s{s}", *COMMON, f"train.seed={s}", f"data.seed={s}"],
                        profile="smoke") for s in (0, 1)]
    quiet = lambda message: None  # noqa: E731
    for s, cfg in enumerate(cfgs):
        train(cfg, run_dir=f"{root}/alone/s{s}", allow_cpu=True, verbose=False, log=quiet)
    dirs = [f"{root}/together/s{s}" for s in (0, 1)]
    train_seeds_together(cfgs, dirs, allow_cpu=True, log=quiet)
    train_seeds_together(cfgs, dirs, allow_cpu=True, log=print)  # finished: nothing retrains
    real = loop.check_divergence

    def nan_for_s1(job, logs, epoch, name):  # seed 1's loss turns NaN at epoch 2
        bad = job.cfg["name"] == "s1" and epoch == 2
        return real(job, {**logs, "loss": float("nan")} if bad else logs, epoch, name)

    loop.check_divergence = nan_for_s1
    try:
        train_seeds_together(cfgs, [f"{root}/diverged/s{s}" for s in (0, 1)], allow_cpu=True,
                             log=quiet)
    except ElasticKerasError as e:
        print("error:", e)
    loop.check_divergence = real
    # `train --seeds 2 --seeds-together` under JAX: the local launcher trains them together.
    from elastic_keras.runs.seeds import seed_configs
    from elastic_keras.sweep.reproduce import train_seeds

    base = load_config(None, ["name=w", *COMMON], profile="smoke")
    train_seeds(seed_configs(base, 2), runs_root=f"{root}/cli", allow_cpu=True, log=print,
                together=True)  # on a CPU the default is one by one


def _rows(path):
    return list(csv.DictReader(open(os.path.join(path, "history.csv"))))


def test_two_seeds_together_write_what_two_runs_alone_write(tmp_path):
    r = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished already") == 2
    for s in ("s0", "s1"):
        alone, together = tmp_path / "alone" / s, tmp_path / "together" / s
        assert sorted(p.name for p in alone.rglob("*")) == sorted(
            p.name for p in together.rglob("*"))
        a, b = _rows(alone), _rows(together)
        assert len(a) == len(b) == 3 and a[0].keys() == b[0].keys()
        for row_a, row_b in zip(a, b):
            for k in row_a:
                if k.endswith("_s"):  # seconds
                    continue
                if k == "phase":
                    assert row_a[k] == row_b[k]
                else:  # float32 sums in another order: within float tolerance
                    assert float(row_b[k]) == pytest.approx(float(row_a[k]), rel=1e-4,
                                                            abs=1e-5), (s, k)
        ra, rb = (json.load(open(p / "results.json")) for p in (alone, together))
        assert ra["checkpoint"]["epoch"] == rb["checkpoint"]["epoch"]
        for ea, eb in zip(ra["exits"], rb["exits"]):
            assert eb["test_loss"] == pytest.approx(ea["test_loss"], rel=1e-4)
    # One seed diverged: it failed alone, the other finished and was evaluated.
    assert "1 of 2 seeds failed" in r.stdout and "[s1] diverged at run epoch 2" in r.stdout
    states = {s: json.load(open(tmp_path / "diverged" / s / "state.json")) for s in ("s0", "s1")}
    assert states["s1"]["status"] == "failed" and states["s0"]["status"] == "evaluated"
    assert (tmp_path / "diverged" / "s0" / "results.json").exists()
    assert not (tmp_path / "diverged" / "s1" / "results.json").exists()
    assert len(_rows(tmp_path / "diverged" / "s0")) == 3
    assert "=== w, w-seed1: 2 seeds together in one program" in r.stdout
    for name in ("w", "w-seed1"):
        assert (tmp_path / "cli" / "smoke" / "synthetic" / name / "results.json").exists()


if __name__ == "__main__":
    _script(sys.argv[1])
