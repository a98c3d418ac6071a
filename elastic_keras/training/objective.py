"""ExitTrainer: trains a model on the weighted sum of its exits' losses, every exit's metrics in one op."""

from __future__ import annotations

import keras
from keras import ops

from elastic_keras.model.exits import exit_records

EPSILON = 1e-7  # Keras' categorical_crossentropy clips probabilities to [eps, 1 - eps]


def exit_terms(probs, y):
    """Per-exit cross-entropy, accuracy and clipped fraction of a batch: three (K,) vectors.

    probs: the K exits' softmax outputs, (B, C) each; y: integer labels (B,). The
    cross-entropy is Keras' categorical_crossentropy on probabilities (clipped to
    [1e-7, 1 - 1e-7], no 1/C factor: FIDELITY.md L1, L2); `clipped` is the fraction of
    images whose true-class probability fell to the clip floor, the sign of a diverged
    run whose loss no longer moves (FIDELITY.md T9).
    """
    p = ops.cast(ops.stack(list(probs), axis=0), "float32")  # (K, B, C); B8
    y = ops.cast(ops.reshape(y, (-1,)), "int32")
    onehot = ops.one_hot(y, ops.shape(p)[-1], dtype=p.dtype)
    p_true = ops.sum(p * onehot[None], axis=-1)  # (K, B)
    ce = -ops.log(ops.clip(p_true, EPSILON, 1.0 - EPSILON))
    hit = ops.cast(ops.equal(ops.cast(ops.argmax(p, axis=-1), "int32"), y[None]), p.dtype)
    clipped = ops.cast(p_true <= EPSILON, p.dtype)
    return ops.mean(ce, axis=1), ops.mean(hit, axis=1), ops.mean(clipped, axis=1)


class ExitMetrics(keras.metrics.Metric):
    """Epoch means of every exit's loss, accuracy and clipped fraction, as ONE vector.

    One metric object for all exits, one small vector update per step (FIDELITY.md T10, B5).
    Keras converts every logged value to a Python float after every step (a device sync
    each); one vector instead of 3K scalars keeps that to one transfer. `named` unpacks
    it. The total loss is Keras' own loss tracker (`loss`).
    """

    def __init__(self, outputs, name="exit_metrics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.sums = self.add_variable(shape=(3 * outputs,),
                                      initializer="zeros", name="sums")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, batch_size):
        batch_size = ops.cast(batch_size, "float32")
        self.sums.assign_add(ops.cast(values, "float32") * batch_size)
        self.count.assign_add(batch_size)

    def result(self):
        return {"exits": self.sums / ops.maximum(self.count, 1.0)}

    def reset_state(self):
        self.sums.assign(ops.zeros(self.sums.shape, dtype=self.sums.dtype))
        self.count.assign(0.0)


def named(logs, output_names):
    """Keras logs ({loss, exits, val_loss, val_exits}) as floats named per exit:
    {exit_1_loss, exit_1_accuracy, ..., clipped, val_...}, depth order."""
    import numpy as np

    out, k = {}, len(output_names)
    for prefix in ("", "val_"):
        if f"{prefix}loss" in logs:
            out[f"{prefix}loss"] = float(logs[f"{prefix}loss"])
        if f"{prefix}exits" not in logs:
            continue
        v = np.asarray(logs[f"{prefix}exits"], dtype=np.float64)
        for i, o in enumerate(output_names):
            out[f"{prefix}{o}_loss"], out[f"{prefix}{o}_accuracy"] = float(v[i]), float(v[k + i])
        out[f"{prefix}clipped"] = float(v[2 * k:].max())
    return out


class ExitTrainer(keras.Model):
    """Wraps an elastic (or plain) model and trains it on sum_i w_i * CE_i (paper eq. 2).

    Written against Keras' public training API: `compute_loss` is overridden, so the same
    code trains under TensorFlow, JAX and PyTorch. Labels are integer class indices.
    """

    def __init__(self, net, loss_weights, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.exit_metrics = ExitMetrics(len(loss_weights))
        names = [e["output"] for e in exit_records(net)]
        if len(loss_weights) != len(names):
            raise ValueError(f"{len(loss_weights)} loss weights for {len(names)} outputs")
        self.loss_weights = [float(w) for w in loss_weights]
        self.exit_names = names

    def call(self, x, training=False):
        out = self.net(x, training=training)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        ce, acc, clipped = exit_terms(y_pred, y)
        self.exit_metrics.update_state(ops.concatenate([ce, acc, clipped]), ops.shape(y)[0])
        return ops.sum(ops.convert_to_tensor(self.loss_weights, dtype=ce.dtype) * ce)

