"""The early-exit cascade: confident images leave at an early exit, the rest go on.

Backend-specific (FIDELITY.md B1): under TensorFlow the whole cascade is one traced graph
whose exit tests are `tf.cond`s; under JAX and PyTorch a per-segment path gives the same
predictions and exit counts (FIDELITY.md I6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import ops

from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.calibration import calibrated, check_temperatures
from elastic_keras.inference.predictors import (
    check_criterion,
    confidence,
    leaves,
    leaving,
    load,
    scaled,
    single_input,
)
from elastic_keras.model.costs import cost_of
from elastic_keras.model.exits import head_tap


def path_macs(model, convention="full"):
    """MACs per image of a sample leaving at each exit of a cascade, in output order.

    Leaving at exit k costs the backbone up to exit k's tap plus the heads of exits 1..k
    (all were computed to decide): the union of the graph nodes of outputs 1..k
    (FIDELITY.md I3).
    """
    return [cost_of(model.outputs[:k + 1], convention)["macs"]
            for k in range(len(model.outputs))]


@dataclass
class CascadeResult:
    """What a cascade did on a batch of N images."""

    predictions: np.ndarray  # (N,) argmax of the exit taken
    probabilities: np.ndarray  # (N, C) softmax of the exit taken
    exits: np.ndarray  # (N,) exit taken, 1-based index among the model's outputs
    macs: np.ndarray  # (N,) MACs spent on each image (Cascade.path_macs of its exit)
    entered: list = field(default_factory=list)  # images that entered each segment
    batch_mean_macs: list = field(default_factory=list)  # average MACs per image, per batch

    @property
    def mean_macs(self) -> float:
        """Average multiply-accumulates actually spent per image."""
        return float(self.macs.mean()) if len(self.macs) else 0.0

    def exit_counts(self, num_outputs: int) -> np.ndarray:
        """How many images left at each exit (output order)."""
        return np.bincount(self.exits - 1, minlength=num_outputs)


def check_threshold(threshold):
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ElasticKerasError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(value):
        raise ElasticKerasError("threshold must be a number, got nan")
    return value


def _segments(model):
    """Cut `model` at its exits' taps: segment k maps tap k-1 (the input for k = 1) to
    [tap k, softmax k]; the last one ends at the final softmax. Each tap must be a cut
    vertex of the backbone, so a segment needs nothing from before its input tap."""
    start, segments = single_input(model), []
    taps = [head_tap(model, k) for k in range(len(model.outputs))]
    for k, (tap, probs) in enumerate(zip(taps, model.outputs)):
        last = k == len(taps) - 1
        try:
            segments.append(keras.Model(start, probs if last else [tap, probs],
                                        name=f"{model.name}_segment_{k + 1}"))
        except ValueError as e:
            raise ElasticKerasError(
                f"cannot cut {model.name!r} at the tap of {model.output_names[k]!r}: the "
                f"exits' taps must be cut vertices of the backbone, in depth order ({e})"
            ) from None
        start = tap
    return segments


class Cascade:
    """Run an elastic model exit by exit; confident images leave early (elastic inference).

    After exit k the images whose confidence passes the threshold leave with exit k's
    prediction; only the others are gathered and go on, so later layers run on the
    survivors alone, and nothing runs once every image has left.
    criterion: "max_prob" (leave when max softmax >= threshold; 0 sends everyone out at
    exit 1, anything above 1 keeps everyone to the final exit) or "entropy" (leave when the
    entropy in nats <= threshold). MACs are counted with `costs.cost_of` (`convention`).
    graph: True runs one traced TensorFlow graph (the default under TensorFlow); False
    runs segment by segment (the path under JAX and PyTorch).
    temperatures: one per output; each exit's softmax p becomes softmax(log(p) / T) before
    its confidence is tested and in what is returned. calibration: a calibration.json (its
    path, the run directory holding it, or its content) written by `calibrate`: its
    temperatures and, unless `threshold` is given, its certified threshold (FIDELITY.md I21).
    Without either, threshold 0.5 and no scaling.
    """

    def __init__(self, model, criterion: str = "max_prob", threshold: float | None = None,
                 convention: str = "full", graph: bool | None = None,
                 temperatures=None, calibration=None):
        model = load(model)
        self.model, self.criterion = model, check_criterion(criterion)
        self.calibration, threshold, temperatures = calibrated(calibration, criterion,
                                                               threshold, temperatures)
        self.threshold = check_threshold(0.5 if threshold is None else threshold)
        self.temperatures = check_temperatures(temperatures, len(model.outputs))
        self.output_names = list(model.output_names)
        self.convention = convention
        self.path_macs = path_macs(model, convention)
        self.segments = _segments(model)
        self._dtype = single_input(model).dtype
        self._classes = int(model.outputs[-1].shape[-1])
        if graph is None:
            graph = keras.backend.backend() == "tensorflow"
        self._graph = _tf_graph(self) if graph else None

    def __call__(self, x, threshold: float | None = None) -> CascadeResult:
        """Run one batch through the cascade; returns a CascadeResult."""
        thr = self.threshold if threshold is None else check_threshold(threshold)
        x = np.asarray(x, dtype=self._dtype)
        if len(x) == 0:
            raise ElasticKerasError("Cascade got an empty batch")
        if self._graph is not None:
            probs, exits, entered = self._graph(x, thr)
        else:
            probs, exits, entered = self._run_segments(x, thr)
        result = CascadeResult(predictions=probs.argmax(axis=1), probabilities=probs,
                               exits=exits,
                               macs=np.asarray(self.path_macs, dtype=np.float64)[exits - 1],
                               entered=[int(e) for e in entered])
        result.batch_mean_macs = [result.mean_macs]
        return result

    def predict(self, x, batch_size: int = 64, threshold: float | None = None) -> CascadeResult:
        """Run `x` batch by batch; concatenated CascadeResult with per-batch mean MACs."""
        parts = [self(x[s:s + batch_size], threshold) for s in range(0, len(x), batch_size)]
        if not parts:
            raise ElasticKerasError("Cascade.predict got no images")
        return CascadeResult(
            predictions=np.concatenate([p.predictions for p in parts]),
            probabilities=np.concatenate([p.probabilities for p in parts]),
            exits=np.concatenate([p.exits for p in parts]),
            macs=np.concatenate([p.macs for p in parts]),
            entered=[sum(e) for e in zip(*(p.entered for p in parts))],
            batch_mean_macs=[p.mean_macs for p in parts])

    def _run_segments(self, x, thr):
        """Segment by segment on any backend; survivors are padded to a power of two so a
        compiled segment meets few distinct batch sizes."""
        n = len(x)
        probs_out = np.zeros((n, self._classes), np.float32)
        exits, entered = np.zeros(n, np.int64), []
        feats, index = x, np.arange(n)
        for k, seg in enumerate(self.segments):
            entered.append(len(index))
            out = _predict_padded(seg, feats)
            if k == len(self.segments) - 1:
                final = ops.convert_to_numpy(scaled(out[0], self.temperatures[k]))
                probs_out[index], exits[index] = final, k + 1
                break
            feats, probs = out
            probs = np.asarray(ops.convert_to_numpy(scaled(probs, self.temperatures[k])))
            out_now = leaving(probs, self.criterion, thr)
            probs_out[index[out_now]], exits[index[out_now]] = probs[out_now], k + 1
            if out_now.all():
                break
            feats, index = feats[~out_now], index[~out_now]
        return probs_out, exits, entered + [0] * (len(self.segments) - len(entered))


def _predict_padded(segment, x):
    n = len(x)
    size = 1 << max(0, (n - 1).bit_length())
    padded = np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)]) if size > n else x
    out = segment.predict_on_batch(padded)
    return [np.asarray(o)[:n] for o in (out if isinstance(out, (list, tuple)) else [out])]


def cascade_graph(segments, criterion, classes, temperatures):
    """The cascade as TensorFlow ops: segment, temperature scaling, exit test (predictors.py),
    gather survivors; stop when none are left. A function (x, threshold) -> (softmax of the
    exit taken, exit taken 1-based, images that entered each segment), traced here and in
    inference/export.py. segments: feats -> [tap, softmax] (the last: feats -> softmax)."""
    import tensorflow as tf

    num, temps = len(segments), temperatures

    def record(acc, index, k, probs, size):
        probs_acc, exits_acc, entered = acc
        where = index[:, None]
        return (tf.tensor_scatter_nd_update(probs_acc, where, tf.cast(probs, probs_acc.dtype)),
                tf.tensor_scatter_nd_update(exits_acc, where, tf.fill(tf.shape(index), k + 1)),
                tf.tensor_scatter_nd_update(entered, [[k]], [size]))

    def from_segment(k, feats, index, acc, threshold):
        size = tf.shape(index)[0]
        if k == num - 1:  # the final exit takes whoever is left
            return record(acc, index, k, scaled(segments[k](feats, training=False), temps[k]),
                          size)
        feats, probs = segments[k](feats, training=False)
        probs = scaled(probs, temps[k])
        out = leaves(confidence(probs, criterion), criterion, threshold)
        acc = record(acc, tf.boolean_mask(index, out), k, tf.boolean_mask(probs, out), size)
        keep = tf.logical_not(out)

        def go_on():  # gather the survivors (no copy when nobody left)
            survivors = tf.cond(tf.reduce_all(keep), lambda: feats,
                                lambda: tf.boolean_mask(feats, keep))
            return from_segment(k + 1, survivors, tf.boolean_mask(index, keep), acc, threshold)

        return tf.cond(tf.reduce_any(keep), go_on, lambda: acc)

    def graph(x, threshold):
        n = tf.shape(x)[0]
        acc = (tf.zeros((n, classes), tf.float32), tf.zeros((n,), tf.int32),
               tf.zeros((num,), tf.int32))
        return from_segment(0, x, tf.range(n), acc, threshold)

    return graph


def _tf_graph(cascade):
    """The cascade as one tf.function (cascade_graph): a callable (x, threshold) -> NumPy."""
    import tensorflow as tf

    inp = single_input(cascade.model)
    graph = cascade_graph(cascade.segments, cascade.criterion, cascade._classes,
                          cascade.temperatures)
    spec = tf.TensorSpec((None,) + tuple(inp.shape[1:]), inp.dtype)
    fn = tf.function(graph, input_signature=[spec, tf.TensorSpec((), tf.float32)])

    def run(x, thr):
        probs, exits, entered = fn(tf.convert_to_tensor(x), tf.constant(thr, tf.float32))
        return probs.numpy(), exits.numpy().astype(np.int64), entered.numpy()

    return run
