"""Serving one exit: truncated predictors, every exit's softmax, and the exit rule (written once)."""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops

from elastic_keras.errors import ElasticKerasError
from elastic_keras.model.exits import ElasticModel, exit_records

CRITERIA = ("max_prob", "entropy")


def load(model) -> keras.Model:
    """A model object as is, or a saved `.keras` model loaded from the path `model`."""
    if isinstance(model, (str, os.PathLike)):
        from elastic_keras.data import preprocessing  # noqa: F401 (registers the Preprocess layer)

        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ElasticKerasError(f"model file not found: {path}")
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        except (ValueError, OSError, TypeError) as e:
            raise ElasticKerasError(f"cannot load model {path}: {e}") from None
    if not hasattr(model, "outputs") or not hasattr(model, "output_names"):
        raise ElasticKerasError(
            f"model must be a functional Keras model or a path to a .keras file, "
            f"got {type(model).__name__}")
    return model


def exit_index(model, exit) -> int:
    """0-based position among `model`'s outputs of `exit` (output name or 1-based index)."""
    names = list(model.output_names)
    if isinstance(exit, (int, np.integer)) and not isinstance(exit, bool):
        if not 1 <= exit <= len(names):
            raise ElasticKerasError(
                f"exit index must be in 1..{len(names)} for this model, got {exit}")
        return int(exit) - 1
    if isinstance(exit, str) and exit in names:
        return names.index(exit)
    raise ElasticKerasError(
        f"unknown exit {exit!r}; valid: 1..{len(names)} or one of {', '.join(names)}")


def single_input(model):
    """The model's one input tensor (every network here has a single image input)."""
    if len(model.inputs) != 1:
        raise ElasticKerasError(f"elastic inference needs a single-input model, "
                                f"{model.name!r} has {len(model.inputs)}")
    return model.inputs[0]


def truncated_predictor(model: keras.Model | str, exit: int | str) -> ElasticModel:
    """A model computing only what `exit` needs: input -> ... -> its softmax.

    Elastic inference (paper section I, Table II): the layers after the exit's tap and the
    other exits' heads are not in the graph, so they cost nothing. The predictor shares its
    layers (and weights) with `model`, keeps that exit's record, and saves and loads on
    its own as `.keras`. model: an elastic model or a path to a saved `.keras` one; exit:
    an output name (exit_1 ... final) or a 1-based index among the outputs
    (FIDELITY.md I1).
    """
    model = load(model)
    k = exit_index(model, exit)
    record = exit_records(model)[k]
    return ElasticModel(single_input(model), [model.outputs[k]],
                        name=f"{model.name}_{record['output']}", exits=[record])


def exit_probabilities(model, x, batch_size: int = 256) -> list[np.ndarray]:
    """Softmax of every exit on `x`, by batches: a list of (N, C) arrays in output order."""
    model = load(model)
    out = model.predict(np.asarray(x), batch_size=batch_size, verbose=0)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


# ---------------------------------------------------------------------------------------
# The exit rule: the one definition, in keras.ops, used by the cascade's graph (any
# backend) and by the budget sweep's replay (FIDELITY.md I2).


def check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ElasticKerasError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    return criterion


def confidence(probs, criterion):
    """Per-sample confidence of softmax rows, float32: the largest probability, or the
    entropy in nats (0 log 0 = 0)."""
    p = ops.cast(probs, "float32")
    if check_criterion(criterion) == "max_prob":
        return ops.max(p, axis=1)
    positive = p > 0
    logs = ops.log(ops.where(positive, p, ops.ones_like(p)))
    return -ops.sum(ops.where(positive, p * logs, ops.zeros_like(p)), axis=1)


def scaled(probs, temperature=1.0):
    """Temperature scaling of softmax rows, softmax(log(p) / T), in keras.ops; T = 1 returns
    the rows untouched (FIDELITY.md I21)."""
    if temperature is None or float(temperature) == 1.0:
        return probs
    p = ops.cast(probs, "float32")
    logs = ops.log(ops.maximum(p, 1e-30))  # a softmax underflowing to 0 stays the least likely
    return ops.softmax(logs / float(temperature), axis=-1)


def leaves(conf, criterion, threshold):
    """Which samples leave: max_prob >= threshold, or entropy <= threshold (float32)."""
    threshold = ops.cast(threshold, "float32")
    return conf >= threshold if check_criterion(criterion) == "max_prob" else conf <= threshold


def leaving(probs, criterion, threshold, temperature=1.0):
    """The exit rule on one exit's softmax rows (scaled by `temperature`): a boolean per
    sample (NumPy)."""
    conf = confidence(scaled(probs, temperature), criterion)
    return np.asarray(ops.convert_to_numpy(leaves(conf, criterion, threshold)), dtype=bool)


def route(probs_per_exit, criterion, threshold, temperatures=None):
    """0-based exit taken by each sample, given every exit's softmax (the cascade's rule).

    A sample leaves at the first exit whose confidence passes the threshold; the final
    exit takes whoever is left. Used to evaluate many thresholds from one pass of the data.
    temperatures: one per output (calibration.json), or None for none.
    """
    n = len(probs_per_exit[0])
    taken = np.full(n, len(probs_per_exit) - 1)
    open_ = np.ones(n, dtype=bool)
    for k, probs in enumerate(probs_per_exit[:-1]):
        t = 1.0 if temperatures is None else temperatures[k]
        out = open_ & leaving(probs, criterion, threshold, t)
        taken[out] = k
        open_ &= ~out
    return taken
