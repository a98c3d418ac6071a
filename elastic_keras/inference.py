"""Elastic inference: truncated predictors, an early-exit cascade, and budgeted evaluation."""

import csv
import functools
import io as _io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import io
from .costs import cost_of
from .errors import ElasticKerasError
from .models import head_tap

CRITERIA = ("max_prob", "entropy")
BUDGET_CSV, BUDGET_PNG = "budget.csv", "budget.png"
BUDGET_COLUMNS = ("kind", "criterion", "threshold", "quantile", "exit", "test_accuracy",
                  "test_macs", "macs_fraction", "val_accuracy", "val_macs", "exit_fractions",
                  "n_test")


# ---------------------------------------------------------------------------------------
# Models, exits and compiled callables


def load(model):
    """A model object as is, or a saved `.keras` model loaded from the path `model`."""
    if isinstance(model, (str, os.PathLike)):
        import keras

        from . import preprocessing  # noqa: F401 (registers the Preprocess layer)

        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ElasticKerasError(f"model file not found: {path}")
        try:
            return keras.saving.load_model(path, compile=False)
        except (ValueError, OSError, TypeError) as e:
            raise ElasticKerasError(f"cannot load model {path}: {e}") from None
    if not hasattr(model, "outputs") or not hasattr(model, "output_names"):
        raise ElasticKerasError(
            f"model must be a functional Keras model or a path to a .keras file, "
            f"got {type(model).__name__}")
    return model


def exit_index(model, exit):
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


def _single_input(model):
    """The model's one input tensor (every network here has a single image input)."""
    if len(model.inputs) != 1:
        raise ElasticKerasError(f"elastic inference needs a single-input model, "
                                f"{model.name!r} has {len(model.inputs)}")
    return model.inputs[0]


def truncated_predictor(model, exit):
    """A functional model computing only what `exit` needs: input -> ... -> its softmax.

    Elastic inference (paper section I, Table II): the layers after the exit's tap and the
    other exits' heads are not in the graph, so they cost nothing. The predictor shares its
    layers (and weights) with `model` and saves and loads on its own as `.keras`.
    model: a functional model or a path to a saved `.keras` model; exit: an output name
    (exit_1 ... final) or a 1-based index among the outputs.
    """
    import keras

    model = load(model)
    k = exit_index(model, exit)
    name = model.output_names[k]
    return keras.Model(_single_input(model), model.outputs[k], name=f"{model.name}_{name}")


def compiled(fn, input_spec, jit_compile=False):
    """`fn` (a Keras model or layer) in inference mode as one traced tf.function.

    The batch dimension is left free so batches of any size (a last partial batch) reuse
    one trace. XLA (`jit_compile`) is off by default: on CPU it was ~10x slower here.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None,) + tuple(input_spec.shape[1:]), input_spec.dtype)
    # A partial per model: tf.function keys its retracing statistics on the Python code,
    # and one trace per segment is not retracing.
    return tf.function(functools.partial(_infer, fn), input_signature=[spec],
                       jit_compile=jit_compile)


def _infer(fn, x):
    return fn(x, training=False)


def _as_input(x, dtype):
    """A batch as a tensor of the model's input dtype (tensors pass through uncopied)."""
    import tensorflow as tf

    if tf.is_tensor(x):
        return x if x.dtype == dtype else tf.cast(x, dtype)
    return tf.convert_to_tensor(np.asarray(x, dtype=dtype))


def exit_probabilities(model, x, batch_size=64):
    """Softmax of every exit on `x`, by batches: a list of (N, C) arrays in output order."""
    model = load(model)
    inp = _single_input(model)
    import keras

    run = compiled(keras.Model(inp, model.outputs), inp)
    parts = [[] for _ in model.outputs]
    for start in range(0, len(x), batch_size):
        outs = run(_as_input(x[start:start + batch_size], inp.dtype))
        for p, o in zip(parts, outs):
            p.append(o.numpy())
    return [np.concatenate(p) for p in parts]


# ---------------------------------------------------------------------------------------
# Confidence and the exit rule


def confidence(probs, criterion):
    """Per-sample confidence of softmax rows: the largest probability, or the entropy (nats).

    In float32, and compared with a float32 threshold, as the Cascade's graph does.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if criterion == "max_prob":
        return probs.max(axis=1)
    if criterion == "entropy":
        logs = np.log(np.where(probs > 0, probs, 1.0))
        return -(probs * logs).sum(axis=1)
    raise ElasticKerasError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


def leaves(conf, criterion, threshold):
    """Which samples leave: max_prob >= threshold, or entropy <= threshold."""
    threshold = np.float32(threshold)
    if criterion == "max_prob":
        return conf >= threshold
    if criterion == "entropy":
        return conf <= threshold
    raise ElasticKerasError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


def route(probs_per_exit, criterion, threshold):
    """0-based exit taken by each sample, given every exit's softmax (the cascade's rule).

    A sample leaves at the first exit whose confidence passes the threshold; the final
    exit takes whoever is left. Used to evaluate many thresholds from one pass of the data.
    """
    n = len(probs_per_exit[0])
    taken = np.full(n, len(probs_per_exit) - 1)
    open_ = np.ones(n, dtype=bool)
    for k, probs in enumerate(probs_per_exit[:-1]):
        out = open_ & leaves(confidence(probs, criterion), criterion, threshold)
        taken[out] = k
        open_ &= ~out
    return taken


def path_macs(model, convention="full"):
    """MACs per image of a sample leaving at each exit of a cascade, in output order.

    Leaving at exit k costs the backbone up to exit k's tap plus the heads of exits 1..k
    (all were computed to decide): the union of the graph nodes of outputs 1..k.
    """
    return [cost_of(model.outputs[:k + 1], convention)["macs"]
            for k in range(len(model.outputs))]


# ---------------------------------------------------------------------------------------
# The cascade


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
    def mean_macs(self):
        """Average multiply-accumulates actually spent per image."""
        return float(self.macs.mean()) if len(self.macs) else 0.0

    def exit_counts(self, num_outputs):
        """How many images left at each exit (output order)."""
        return np.bincount(self.exits - 1, minlength=num_outputs)


class Cascade:
    """Run an elastic model exit by exit; confident images leave early (elastic inference).

    The model is split at its exit taps into segments: segment k maps the features at
    tap k-1 to the features at tap k and exit k's softmax (segment 1 starts at the input,
    the last one ends at the final exit). After exit k the images whose confidence passes
    the threshold leave with exit k's prediction; only the others are gathered and go on,
    so later layers run on the survivors alone, and nothing runs once every image has left.
    criterion: "max_prob" (leave when max softmax >= threshold; 0 sends everyone out at
    exit 1, anything above 1 keeps everyone to the final exit) or "entropy" (leave when the
    entropy in nats <= threshold). MACs are counted with `costs.cost_of` (`convention`).

    The whole cascade is one traced tf.function (the exit tests are `tf.cond`s in the
    graph), so a batch costs one call and the threshold can change without retracing.
    """

    def __init__(self, model, criterion="max_prob", threshold=0.5, convention="full"):
        import keras
        import tensorflow as tf

        model = load(model)
        if criterion not in CRITERIA:
            raise ElasticKerasError(
                f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
        self.model, self.criterion = model, criterion
        self.threshold = _check_threshold(threshold)
        self.output_names = list(model.output_names)
        self.convention = convention
        self.path_macs = path_macs(model, convention)
        inp = _single_input(model)
        self._dtype = inp.dtype
        # Segment k: tap k-1 (the input for k = 1) -> [tap k, softmax k]; the last one
        # ends at the final softmax. Each exit's tap is a cut vertex of the backbone, so
        # a segment needs nothing from before its input tap.
        taps = [head_tap(t) for t in model.outputs]
        self.segments, start = [], inp
        for k, (tap, probs) in enumerate(zip(taps, model.outputs)):
            last = k == len(taps) - 1
            try:
                seg = keras.Model(start, probs if last else [tap, probs],
                                  name=f"{model.name}_segment_{k + 1}")
            except ValueError as e:
                raise ElasticKerasError(
                    f"cannot cut {model.name!r} at the tap of {self.output_names[k]!r}: "
                    f"the exits' taps must be cut vertices of the backbone, in depth "
                    f"order ({e})") from None
            self.segments.append(seg)
            start = tap
        self._classes = int(model.outputs[-1].shape[-1])
        spec = tf.TensorSpec((None,) + tuple(inp.shape[1:]), inp.dtype)
        self._graph = tf.function(functools.partial(_cascade_graph, self),
                                  input_signature=[spec, tf.TensorSpec((), tf.float32)])

    def __call__(self, x, threshold=None):
        """Run one batch through the cascade; returns a CascadeResult."""
        import tensorflow as tf

        thr = self.threshold if threshold is None else _check_threshold(threshold)
        x = _as_input(x, self._dtype)
        if x.shape[0] == 0:
            raise ElasticKerasError("Cascade got an empty batch")
        probs, exits, entered = self._graph(x, tf.constant(thr, tf.float32))
        exits = exits.numpy().astype(np.int64)
        probs = probs.numpy()
        result = CascadeResult(predictions=probs.argmax(axis=1), probabilities=probs,
                               exits=exits,
                               macs=np.asarray(self.path_macs, dtype=np.float64)[exits - 1],
                               entered=[int(e) for e in entered.numpy()])
        result.batch_mean_macs = [result.mean_macs]
        return result

    def predict(self, x, batch_size=64, threshold=None):
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


def _cascade_graph(cascade, x, threshold):
    """The cascade as one graph: segment, exit test, gather survivors; stop when none are left.

    Returns (softmax of the exit taken (N, C), exit taken 1-based (N,), images that
    entered each segment (K,)).
    """
    import tensorflow as tf

    segments, criterion = cascade.segments, cascade.criterion
    n = tf.shape(x)[0]
    num = len(segments)

    def record(acc, index, k, probs, size):
        probs_acc, exits_acc, entered = acc
        where = index[:, None]
        return (tf.tensor_scatter_nd_update(probs_acc, where, tf.cast(probs, probs_acc.dtype)),
                tf.tensor_scatter_nd_update(exits_acc, where, tf.fill(tf.shape(index), k + 1)),
                tf.tensor_scatter_nd_update(entered, [[k]], [size]))

    def from_segment(k, feats, index, acc):
        size = tf.shape(index)[0]
        if k == num - 1:  # the final exit takes whoever is left
            return record(acc, index, k, segments[k](feats, training=False), size)
        feats, probs = segments[k](feats, training=False)
        if criterion == "max_prob":
            out = tf.reduce_max(probs, axis=1) >= threshold
        else:
            plogp = tf.where(probs > 0, probs * tf.math.log(tf.maximum(probs, 1e-38)), 0.0)
            out = -tf.reduce_sum(plogp, axis=1) <= threshold
        probs_acc, exits_acc, entered = acc
        left = tf.boolean_mask(index, out)
        acc = record((probs_acc, exits_acc, entered), left, k, tf.boolean_mask(probs, out),
                     size)
        keep = tf.logical_not(out)

        def go_on():
            # Gather the survivors (no copy when nobody left).
            survivors = tf.cond(tf.reduce_all(keep), lambda: feats,
                                lambda: tf.boolean_mask(feats, keep))
            return from_segment(k + 1, survivors, tf.boolean_mask(index, keep), acc)

        return tf.cond(tf.reduce_any(keep), go_on, lambda: acc)

    acc = (tf.zeros((n, cascade._classes), tf.float32), tf.zeros((n,), tf.int32),
           tf.zeros((num,), tf.int32))
    return from_segment(0, x, tf.range(n), acc)


def _check_threshold(threshold):
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ElasticKerasError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(value):
        raise ElasticKerasError("threshold must be a number, got nan")
    return value


# ---------------------------------------------------------------------------------------
# Budgeted evaluation


def _labels(y):
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.reshape(-1)


def _endpoints(criterion):
    """(everyone leaves at exit 1, everyone reaches the final exit) thresholds."""
    return (0.0, math.inf) if criterion == "max_prob" else (math.inf, -math.inf)


def thresholds_from_validation(val_probs, criterion, n_thresholds):
    """Thresholds at evenly spaced quantiles of the validation confidences of the early exits.

    Pooling every early exit's confidences makes the thresholds span the whole range the
    cascade acts on, from everyone leaving at exit 1 to everyone reaching the final exit
    (both endpoints are added). Returns [(threshold, quantile or None)], from cheap to dear.
    """
    if n_thresholds < 2:
        raise ElasticKerasError(f"n_thresholds must be >= 2, got {n_thresholds}")
    pooled = np.concatenate([confidence(p, criterion) for p in val_probs[:-1]])
    levels = np.linspace(0.0, 1.0, n_thresholds)
    if criterion == "entropy":  # low entropy = confident: cheap end is the high quantile
        levels = levels[::-1]
    cheap, dear = _endpoints(criterion)
    picked = [(cheap, None)] + [(float(np.quantile(pooled, q)), float(q)) for q in levels]
    picked.append((dear, None))
    seen, result = set(), []
    for thr, q in picked:
        if thr not in seen:
            seen.add(thr)
            result.append((thr, q))
    return result


def budget_sweep(model, x_val, y_val, x_test, y_test, criterion="max_prob", n_thresholds=21,
                 batch_size=64, convention="full"):
    """Test accuracy against average MACs per image of cascades and of each exit alone.

    Budgeted batch classification (elastic inference): thresholds are chosen on the
    validation set only (quantiles of its confidences); each is then applied to the test
    set. Every exit's softmax is computed once per image and the cascade's rule (`route`)
    replayed for each threshold, which gives exactly the exits a Cascade takes; the cost
    of an image is `path_macs` of its exit (backbone to the tap plus every head passed).
    Fixed-exit rows are the truncated predictors: test accuracy of exit k alone and its
    own MACs (ExitInfo.macs). Returns a list of dicts (columns BUDGET_COLUMNS).
    """
    from .models import exit_info

    model = load(model)
    if criterion not in CRITERIA:
        raise ElasticKerasError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    for what, x, y in (("validation", x_val, y_val), ("test", x_test, y_test)):
        if len(x) == 0 or len(x) != len(_labels(y)):
            raise ElasticKerasError(f"{what} set: {len(x)} images and {len(_labels(y))} labels")
    y_val, y_test = _labels(y_val), _labels(y_test)
    val = exit_probabilities(model, x_val, batch_size)
    test = exit_probabilities(model, x_test, batch_size)
    costs = np.asarray(path_macs(model, convention), dtype=np.float64)
    infos = exit_info(model, convention)
    final_macs = infos[-1].macs
    names = list(model.output_names)

    # Each exit's predictions, once; a threshold then only picks one exit per image.
    val_pred = np.stack([p.argmax(axis=1) for p in val])
    test_pred = np.stack([p.argmax(axis=1) for p in test])

    def outcome(pred, y, taken):
        right = pred[taken, np.arange(len(y))] == y
        frac = np.bincount(taken, minlength=len(pred)) / len(y)
        return float(right.mean()), float(costs[taken].mean()), frac

    rows = []
    for thr, q in thresholds_from_validation(val, criterion, n_thresholds):
        val_acc, val_macs, _ = outcome(val_pred, y_val, route(val, criterion, thr))
        acc, macs, frac = outcome(test_pred, y_test, route(test, criterion, thr))
        rows.append(dict(kind="cascade", criterion=criterion, threshold=thr, quantile=q,
                         exit="", test_accuracy=acc, test_macs=macs,
                         macs_fraction=macs / final_macs, val_accuracy=val_acc,
                         val_macs=val_macs,
                         exit_fractions=" ".join(f"{f:.4f}" for f in frac),
                         n_test=len(y_test)))
    for k, info in enumerate(infos):
        rows.append(dict(kind="exit", criterion="", threshold=None, quantile=None,
                         exit=names[k],
                         test_accuracy=float((test_pred[k] == y_test).mean()),
                         test_macs=float(info.macs), macs_fraction=info.macs / final_macs,
                         val_accuracy=float((val_pred[k] == y_val).mean()),
                         val_macs=float(info.macs), exit_fractions="", n_test=len(y_test)))
    return rows


def write_budget(out_dir, rows, title):
    """Write `budget.csv` and `budget.png` (accuracy vs MACs) into `out_dir`, atomically."""
    if not rows:
        raise ElasticKerasError("write_budget got no rows")
    out_dir = os.fspath(out_dir)
    buf = _io.StringIO()
    columns = list(BUDGET_COLUMNS) + [c for c in rows[0] if c not in BUDGET_COLUMNS]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    csv_path = os.path.join(out_dir, BUDGET_CSV)
    png_path = os.path.join(out_dir, BUDGET_PNG)
    io.write_text(csv_path, buf.getvalue())
    from .plots import save_figure

    save_figure(_budget_figure(rows, title), png_path)
    return csv_path, png_path


def _budget_figure(rows, title):
    # The object-oriented API with the Agg canvas: no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cascade = sorted((r for r in rows if r["kind"] == "cascade"), key=lambda r: r["test_macs"])
    exits = [r for r in rows if r["kind"] == "exit"]
    top = max(r["test_macs"] for r in rows)
    scale, unit = next((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
                       if top >= s or s == 1.0)
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if cascade:
        crit = cascade[0]["criterion"]
        ax.plot([r["test_macs"] / scale for r in cascade],
                [100 * r["test_accuracy"] for r in cascade], "-o", ms=3, lw=1.5,
                label=f"cascade ({crit}; thresholds from validation)")
    if exits:
        ax.plot([r["test_macs"] / scale for r in exits],
                [100 * r["test_accuracy"] for r in exits], "s", ms=6, mfc="none", mew=1.5,
                color="C3", label="each exit alone")
        for k, r in enumerate(exits, 1):
            ax.annotate(str(k) if r["exit"] != "final" else "final",
                        (r["test_macs"] / scale, 100 * r["test_accuracy"]),
                        xytext=(3, 3), textcoords="offset points", fontsize="x-small",
                        color="C3")
    ax.set_xlabel(f"MACs per image ({unit}MACs)" if unit else "MACs per image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def budget_run(run, criterion="max_prob", n_thresholds=21, batch_size=None,
               convention="full", out_dir=None, log=print):
    """budget.csv and budget.png of a finished run (its best checkpoint, its own splits),
    written into the run directory (or `out_dir`)."""
    if not run.finished:
        raise ElasticKerasError(
            f"{run.dir}: run not finished (no results.json); train and evaluate it first")
    cfg = run.config
    if batch_size is None:
        batch_size = cfg.get("train", {}).get("eval_batch_size", 64)
    model = run.load_model()
    data = run.load_data()
    rows = budget_sweep(model, data.x_val, data.y_val, data.x_test, data.y_test,
                        criterion=criterion, n_thresholds=n_thresholds, batch_size=batch_size,
                        convention=convention)
    name = cfg.get("name") or os.path.basename(os.path.normpath(run.dir))
    dataset = cfg.get("data", {}).get("dataset", "")
    title = f"{name} ({dataset}): elastic inference, {criterion}"
    csv_path, png_path = write_budget(out_dir or run.dir, rows, title)
    # One operating point for the log, picked on validation: the cheapest threshold whose
    # validation accuracy reaches the final exit's.
    final = next(r for r in rows if r["kind"] == "exit" and r["exit"] == "final")
    ok = [r for r in rows if r["kind"] == "cascade"
          and r["val_accuracy"] >= final["val_accuracy"]]
    pick = min(ok, key=lambda r: r["val_macs"]) if ok else None
    summary = (f"cascade at t={pick['threshold']:.4g} (cheapest reaching the final exit's "
               f"validation accuracy): test {100 * pick['test_accuracy']:.2f}% at "
               f"{pick['macs_fraction']:.2f} x the final exit's MACs" if pick else
               "no cascade reaches the final exit's validation accuracy")
    log(f"[{name}] wrote {csv_path}, {png_path}; final exit: test "
        f"{100 * final['test_accuracy']:.2f}%; {summary}")
    return rows
