"""Fewer launches and bf16 by name, same numbers (issue 22): steps per execution, precision."""

import keras
import numpy as np
import pytest

from elastic_keras import ElasticKerasError, elastify
from elastic_keras.data.batches import Batches
from elastic_keras.runs.config import load_config
from elastic_keras.model.factory import build_model, dtype_policy
from elastic_keras.training.objective import ExitTrainer, named

from conftest import tiny_cnn


def _tiny_net(precision="float32"):
    keras.utils.set_random_seed(3)
    with dtype_policy(precision):
        return elastify(tiny_cnn(), ["c1", "c2"], 3, dropout=0.2)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n)


def _epoch(steps_per_execution):
    """Two epochs of the loop's fit (train + validation) at `steps_per_execution`:
    (the per-exit logs of each epoch, the weights after)."""
    net = _tiny_net()
    trainer = ExitTrainer(net, [1.0, 0.5, 1.0])
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                    steps_per_execution=steps_per_execution)
    (x, y), (xv, yv) = _data(22), _data(9, seed=1)
    logs = []
    for epoch in (1, 2):  # 22 images in batches of 4: 5 full, a last one of 2
        hist = trainer.fit(Batches(x, y, 4, shuffle=True, epoch=epoch), epochs=1, verbose=0,
                           validation_data=Batches(xv, yv, 4), shuffle=False)
        logs.append(named({k: v[-1] for k, v in hist.history.items()}, trainer.exit_names))
    return logs, [keras.ops.convert_to_numpy(w) for w in net.weights]


@pytest.mark.backends
def test_several_steps_per_call_log_the_same_epoch_as_one():
    # FIDELITY.md B7: 6 steps an epoch at 4 per call: one full call, one partial, and
    # the last partial batch; validation's 3 batches likewise.
    (one, w1), (four, w4) = _epoch(1), _epoch(4)
    assert one[0].keys() == four[0].keys() and "val_exit_1_accuracy" in one[0]
    for a, b in zip(one, four):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(w1, w4))


@pytest.mark.backends
def test_mixed_bfloat16_computes_in_bf16_and_keeps_outputs_and_loss_float32():
    before = keras.config.dtype_policy().name
    net = build_model("mobilenet", 4, input_size=32, weights=None, source_shape=(8, 8, 3),
                      precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    assert any(layer.compute_dtype == "bfloat16" for layer in net.layers)
    assert all(w.dtype == "float32" for w in net.trainable_weights)
    x, y = _data(8)
    out = net(x[:2])
    assert all(keras.backend.standardize_dtype(o.dtype) == "float32" for o in out)
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), steps_per_execution=2)
    hist = trainer.fit(Batches(x, y, 4), epochs=1, verbose=0)
    logs = named({k: v[-1] for k, v in hist.history.items()}, trainer.exit_names)
    assert np.isfinite(list(logs.values())).all() and logs["loss"] > 0


@pytest.mark.parametrize("key, value, message", [
    ("train.precision", "float16", "train.precision"),
    ("train.steps_per_execution", 0, "train.steps_per_execution")])
def test_bad_speed_settings_end_in_one_message(key, value, message):
    with pytest.raises(ElasticKerasError, match=message):
        load_config(None, [("name", "x"), ("model.backbone", "mobilenet"), (key, value)])


def test_runs_from_before_these_settings_keep_their_identity():
    from elastic_keras.runs.rundir import config_diff

    cfg = load_config(None, [("name", "x"), ("model.backbone", "mobilenet")])
    old = {**cfg, "train": {k: v for k, v in cfg["train"].items()
                            if k not in ("precision", "steps_per_execution")}}
    assert config_diff(old, cfg) == []
    assert config_diff(old, load_config(None, [("name", "x"), ("model.backbone", "mobilenet"),
                                               ("train.precision", "mixed_bfloat16")]))
