"""AuxNet's multi-way backpropagation (FIDELITY.md L4) against joint and a hand-written reference."""

import keras
import numpy as np
import pytest

from elastic_keras import elastify
from elastic_keras.backend.keras_internals import seed_everything
from elastic_keras.training.job import make_trainer

LR, WEIGHTS = 0.5, [0.5, 1.0]


def _net():
    """Three 1x1 convolutions on a 1x1 image (Dense layers in disguise) with separate tanh
    layers, so a layer's backward at its stored input is exact; an exit after a2."""
    L = keras.layers
    inp = keras.Input((1, 1, 3))
    x = inp
    for i, width in enumerate((4, 5, 6), 1):
        x = L.Activation("tanh", name=f"a{i}")(L.Conv2D(width, 1, name=f"c{i}")(x))
    return elastify(keras.Model(inp, x, name="tiny1x1"), ["a2"], classes=3, dropout=0.0)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 1, 1, 3)).astype("float32"), rng.integers(0, 3, 8)


def _train(backprop, momentum, steps=1):
    """Weights of the tiny net before and after `steps` steps on one batch of 8."""
    seed_everything(1)
    net = _net()
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in net.weights]
    trainer = make_trainer(net, WEIGHTS, backprop)
    trainer.compile(optimizer=keras.optimizers.SGD(LR, momentum=momentum))
    x, y = _data()
    for _ in range(steps):
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return net, before, [np.array(keras.ops.convert_to_numpy(w)) for w in net.weights]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference(p, x, y):
    """AuxNet section 3.2.3 by hand, in NumPy: one forward pass; the final exit's backward
    pass and SGD update, then exit 1's through the stored features and the UPDATED weights.
    p: {name: array} of the kernels (W*, V*) and biases (b*, e*)."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x, onehot = x.reshape(len(x), -1).astype(np.float64), np.eye(3)[y]
    h = [x]
    for i in (1, 2, 3):  # the one forward pass: stored features
        h.append(np.tanh(h[-1] @ p[f"W{i}"] + p[f"b{i}"]))
    probs = {"f": _softmax(h[3] @ p["Vf"] + p["ef"]), "1": _softmax(h[2] @ p["V1"] + p["e1"])}
    for out, top, weight in (("f", 3, WEIGHTS[1]), ("1", 2, WEIGHTS[0])):
        d = weight * (probs[out] - onehot) / len(x)  # the stored loss's gradient
        grads = {f"V{out}": h[top].T @ d, f"e{out}": d.sum(0)}
        dh = d @ p[f"V{out}"].T
        for i in range(top, 0, -1):
            dz = dh * (1 - h[i] ** 2)  # tanh' at the stored input
            grads[f"W{i}"], grads[f"b{i}"] = h[i - 1].T @ dz, dz.sum(0)
            dh = dz @ p[f"W{i}"].T  # the current (already updated) weights
        for k, g in grads.items():
            p[k] = p[k] - LR * g
    return p


def _params(net, weights):
    """{W1, b1, ..., V1, e1, Vf, ef} from the net's weight list."""
    names = [w.path for w in net.weights]
    out = {}
    for path, value in zip(names, weights):
        layer, kind = path.split("/")[-2:]
        key = {"c": "W", "e": "V", "f": "V"}[layer[0]] if kind == "kernel" else \
            {"c": "b", "e": "e", "f": "e"}[layer[0]]
        suffix = layer[1] if layer[0] == "c" else ("1" if layer.startswith("exit") else "f")
        out[key + suffix] = value.reshape(value.shape[-2:] if kind == "kernel" else -1)
    return out


@pytest.mark.backends
def test_multi_way_is_the_hand_written_auxnet_step():
    net, before, after = _train("multi_way", 0.0)
    x, y = _data()
    want = _reference(_params(net, before), x, y)
    got = _params(net, after)
    assert set(got) == set(want) == {"W1", "b1", "W2", "b2", "W3", "b3", "V1", "e1", "Vf", "ef"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.backends
def test_without_momentum_multi_way_differs_from_joint_and_prestep_equals_it():
    joint = _train("joint", 0.0, steps=2)[2]
    prestep = _train("multi_way_prestep", 0.0, steps=2)[2]
    multi = _train("multi_way", 0.0, steps=2)[2]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(joint, prestep))
    assert max(float(np.abs(a - b).max()) for a, b in zip(joint, multi)) > 1e-4
    # With momentum, the prestep reading is not one joint step either.
    joint, prestep = _train("joint", 0.9, steps=2)[2], _train("multi_way_prestep", 0.9, 2)[2]
    assert max(float(np.abs(a - b).max()) for a, b in zip(joint, prestep)) > 1e-3
