"""Export an elastic model: a cascade exiting early per image, a predictor per exit, a manifest."""

from __future__ import annotations

import os
import shutil
import tempfile

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.writers import EXTENSION, TF_WRITERS, ship_driver, write_onnx

FORMATS = ("saved_model", "litert", "onnx")
MANIFEST = "manifest.json"
EXPORT_PREFIX = "export-"  # a run's exports: RUN/export-FORMAT (runs/source.py)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ElasticKerasError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


def require_tensorflow(doing: str = "export") -> None:
    """Exported graphs are traced TensorFlow functions: other backends get one line."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ElasticKerasError(
            f"{doing} needs the TensorFlow backend (KERAS_BACKEND=tensorflow); this process "
            f"runs Keras on {keras.backend.backend()}")


def input_spec(model) -> dict:
    """What the artifacts take: the model's input shape, as uint8 when its first layer is the
    in-graph Preprocess (raw images as the run's data feeds them), else the input dtype."""
    from elastic_keras.inference.predictors import single_input
    from elastic_keras.data.preprocessing import Preprocess

    inp = single_input(model)
    pre = next((layer for layer in model.layers if isinstance(layer, Preprocess)), None)
    return {"name": "images", "shape": [None, *[int(d) for d in inp.shape[1:]]],
            "dtype": "uint8" if pre is not None else str(inp.dtype),
            "preprocessing": ({"resize_to": pre.size, "resize": "bilinear",
                               "scale": {"paper": "[0, 1]", "authors": "[-1, 1]"}[pre.mode]}
                              if pre else None)}


def functions(model, criterion: str = "max_prob", temperatures=None) -> dict:
    """The traced functions to export: "cascade" (images, threshold) -> probabilities,
    classes, exits; per output (images) -> probabilities, classes; "segments" (features) ->
    [features,] probabilities, confidence (what the segment driver runs)."""
    import tensorflow as tf

    from elastic_keras.inference.calibration import check_temperatures
    from elastic_keras.inference.cascade import Cascade, cascade_graph
    from elastic_keras.inference.predictors import confidence, scaled, truncated_predictor

    temps = check_temperatures(temperatures, len(model.outputs))  # FIDELITY.md I30
    cascade = Cascade(model, criterion, graph=False)
    segs = cascade.segments
    spec = input_spec(model)
    images = tf.TensorSpec(spec["shape"], spec["dtype"], name="images")
    dtype = cascade._dtype
    graph = cascade_graph(segs, criterion, cascade._classes, temps)

    @tf.function(input_signature=[images, tf.TensorSpec((), tf.float32, name="threshold")])
    def run_cascade(x, threshold):
        probs, exits, _ = graph(tf.cast(x, dtype), threshold)
        return {"probabilities": probs, "classes": tf.argmax(probs, 1, output_type=tf.int32),
                "exits": exits}

    def predictor(k):
        pred = truncated_predictor(model, k + 1)

        @tf.function(input_signature=[images])
        def run(x):
            probs = scaled(pred(tf.cast(x, dtype), training=False), temps[k])
            return {"probabilities": probs,
                    "classes": tf.argmax(probs, 1, output_type=tf.int32)}
        return pred, run

    def segment(k, seg):
        shape = images if k == 0 else tf.TensorSpec(
            (None, *cascade.segments[k].inputs[0].shape[1:]), "float32", name="tap")

        @tf.function(input_signature=[shape])
        def run(x):
            out = seg(tf.cast(x, dtype) if k == 0 else x, training=False)
            feats, probs = (None, out) if k == len(segs) - 1 else out
            probs = scaled(probs, temps[k])
            got = {"probabilities": probs, "confidence": confidence(probs, criterion)}
            return got if feats is None else {**got, "features": feats}
        return run

    return {"cascade": (cascade, run_cascade), "temperatures": temps,
            "predictors": {name: predictor(k) for k, name in enumerate(model.output_names)},
            "segments": [segment(k, s) for k, s in enumerate(segs)]}


def _write_segments(fmt, folder, segments, owners):
    """One model per segment and the driver (FIDELITY.md I31; SavedModel's serve the HTTP
    server's batches per segment, S2)."""
    os.makedirs(os.path.join(folder, "segments"))
    rels = []
    for k, (fn, owner) in enumerate(zip(segments, owners)):
        rels.append(os.path.join("segments", f"segment_{k + 1}{EXTENSION[fmt]}"))
        path = os.path.join(folder, rels[-1])
        if fmt == "onnx":  # features pass between segments in ONNX's own layout (NCHW)
            last = k == len(segments) - 1
            write_onnx(fn, path, ["tap"] if k else (), () if last else ["features"])
        else:
            TF_WRITERS[fmt](owner, fn, path)
    return {"segments": rels, **ship_driver(folder)}


def _write_artifacts(model, fmt, folder, fns):
    """Write the cascade (LiteRT, ONNX: its segments and their driver) and every predictor into
    `folder`; returns the manifest's "artifacts" (relative paths)."""
    ext, (cascade, run_cascade) = EXTENSION[fmt], fns["cascade"]
    os.makedirs(os.path.join(folder, "exits"))
    artifacts = {"predictors": {}}
    # one model per segment plus the loop that drives them
    artifacts.update(_write_segments(fmt, folder, fns["segments"], cascade.segments))
    if fmt != "onnx":  # the cascade as one graph (FIDELITY.md I31)
        artifacts["cascade"] = "cascade" + ext
        TF_WRITERS[fmt](cascade.model, run_cascade, os.path.join(folder, artifacts["cascade"]))
    for name, (pred, fn) in fns["predictors"].items():
        rel = os.path.join("exits", name + ext)
        if fmt == "onnx":
            write_onnx(fn, os.path.join(folder, rel))
        else:
            TF_WRITERS[fmt](pred, fn, os.path.join(folder, rel))
        artifacts["predictors"][name] = rel
    return artifacts


def export_model(model, fmt: str, out, criterion: str = "max_prob", temperatures=None,
                 meta: dict | None = None, log=print, quantize=None, finish=None) -> dict:
    """Export `model` (an elastic model or a .keras path) in `fmt` into folder `out`.

    Written into a temporary folder beside `out`, then moved into place: a failed export
    leaves nothing half-written; an existing export in `out` is replaced, any other
    non-empty folder refused. Returns the manifest (also written as out/manifest.json).
    quantize: a quantize.Plan (int8 segments and predictors); finish(folder, manifest):
    called on the written export before it moves into place (quantization.csv).
    """
    from elastic_keras.inference.manifest import build_manifest
    from elastic_keras.inference.predictors import check_criterion, load

    check_format(fmt)
    require_tensorflow()
    check_criterion(criterion)
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MANIFEST)):
        raise ElasticKerasError(f"{out} is a non-empty folder that holds no export; choose "
                                "another --out")
    model = load(model)
    if quantize is not None and temperatures is not None:  # the driver applies them (Q2)
        meta, temperatures = {**(meta or {}), "output_temperatures": temperatures}, None
    fns = functions(model, criterion, temperatures)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=os.path.dirname(out))
    try:
        if quantize is None:
            artifacts = _write_artifacts(model, fmt, tmp, fns)
        else:  # int8 segments and predictors (FIDELITY.md Q1)
            from elastic_keras.inference.quantize import write_quantized

            artifacts = write_quantized(model, fmt, tmp, fns, quantize)
            meta = {**(meta or {}), "quantization": quantize.record(model)}
        manifest = build_manifest(model, fmt, criterion, fns["temperatures"],
                                  input_spec(model), artifacts, meta or {})
        files.write_json(os.path.join(tmp, MANIFEST), manifest)
        if finish is not None:
            finish(tmp, manifest)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {model.name} ({fmt}{', ' + quantize.words if quantize else ''}) to {out}: "
        f"the cascade and {len(model.outputs)} truncated predictors")
    return manifest
