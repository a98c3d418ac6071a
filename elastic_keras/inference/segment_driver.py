"""The segment driver: run an export's segments in turn; confident images leave, the rest go on.

Shipped into every export as cascade_driver.py; needs NumPy and the format's runtime
(ai-edge-litert, onnxruntime, or TensorFlow for SavedModel segments) only:
    from cascade_driver import SegmentCascade
    probabilities, classes, exits = SegmentCascade("export-dir")(images, threshold)
Each segment returns its exit's probabilities and confidence (and the features the next one
reads); the exit rule is the in-package Cascade's (FIDELITY.md I31).
"""

import json
import os

import numpy as np

try:  # in the package; in an export, the file shipped beside this one
    from elastic_keras.inference.segment_int8 import exit_outputs
except ImportError:  # pragma: no cover - run from an export folder without the package
    from cascade_int8 import exit_outputs  # type: ignore[no-redef]


NCHWC = "com.microsoft.nchwc"  # onnxruntime's blocked-layout operators


def onnx_options(optimized=None):
    """onnxruntime session options for every ONNX model of an export (segments, predictors);
    `optimized`: where onnxruntime writes the graph it optimized."""
    import onnxruntime as ort

    options = ort.SessionOptions()  # idle sessions must not spin on the cores the next one needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if THREADS[0]:
        options.intra_op_num_threads = THREADS[0]
    options.log_severity_level = 3  # not the warning that an optimized graph is hardware's
    # int8 activations (export --io int8) run as int8 kernels on x86 too (FIDELITY.md Q2)
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    if optimized:
        options.optimized_model_filepath = optimized
    return options


THREADS: list = [None]  # the runtimes' compute threads (None: their default, every core)


def use_threads(n) -> None:
    """The runtimes' compute threads in this process (a server leaves a core to HTTP:
    FIDELITY.md S2); before any segment is loaded."""
    THREADS[0] = n


def _onnx_sessions(paths, join=True):
    """(sessions, boundaries joined, the optimized models or None) of an ONNX export's
    segments. With `onnx` installed, each segment is optimized here (the CPU's NCHWc block),
    the ReorderOutput/ReorderInput pair dropped at every boundary that has both, and features
    pass between segments in the blocked layout, batch axis first (FIDELITY.md I31)."""
    import onnxruntime as ort

    try:
        import onnx
    except ImportError:
        join = False
    if not join:
        return [ort.InferenceSession(p, onnx_options(), providers=["CPUExecutionProvider"])
                for p in paths], 0, None
    import tempfile

    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(paths):
            saved = os.path.join(tmp, f"{k}.onnx")
            ort.InferenceSession(path, onnx_options(saved), providers=["CPUExecutionProvider"])
            models.append(onnx.load(saved))
    joined = sum(_join(a.graph, b.graph, onnx.helper.get_attribute_value)
                 for a, b in zip(models, models[1:]))
    return [optimized_session(m) for m in models], joined, models


def optimized_session(model):
    """An onnxruntime session of an ONNX model that onnxruntime optimized already (a segment
    above, or the server's fused tails of them): its optimizations off."""
    import onnxruntime as ort

    options = onnx_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _join(first, second, value) -> bool:
    """Drop `first`'s features ReorderOutput and `second`'s tap ReorderInputs, where both
    are there and nothing else reads either side."""
    def attr(node, name):
        return next((value(a) for a in node.attribute if a.name == name), 0)

    def blocked(node, op):
        return node.domain == NCHWC and node.op_type == op and not attr(node, "channels_last")
    out = [n for n in first.node if "features" in n.output]
    reads = [n for n in second.node if "tap" in n.input]
    if (len(out) != 1 or not blocked(out[0], "ReorderOutput") or not reads
            or any("features" in n.input for n in first.node)
            or not all(blocked(n, "ReorderInput") and attr(n, "channels") in (
                0, attr(out[0], "channels")) for n in reads)):
        return False
    for graph, dropped, old, new in [(first, out[0], out[0].input[0], "features")] + [
            (second, n, n.output[0], "tap") for n in reads]:
        graph.node.remove(dropped)
        for node in graph.node:
            node.input[:] = [new if v == old else v for v in node.input]
            node.output[:] = [new if v == old else v for v in node.output]
    for v in [*first.output, *second.input]:
        if v.name in ("features", "tap"):  # blocked: the channels may be padded
            v.type.tensor_type.ClearField("shape")
    return True


def _onnx(session):
    name = session.get_inputs()[0].name
    keys = [o.name for o in session.get_outputs()]

    def run(x):  # NumPy in and out: run() costs ~30 us less per call than run_with_ort_values
        got = dict(zip(keys, session.run(None, {name: x})))  # (its wrapper; FIDELITY.md I31)
        features = got.pop("features", None)
        return got["probabilities"], got.get("confidence"), lambda: features
    return run


def _litert(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=THREADS[0])
    signature = interpreter.get_signature_runner()  # for the tensors' names
    (entry,) = [d["index"] for d in signature.get_input_details().values()]
    out = {k: d["index"] for k, d in signature.get_output_details().items()}
    shape: list = [None]

    def run(x):  # the features are read (a view, no copy) only if some image goes on
        if shape[0] != x.shape:
            interpreter.resize_tensor_input(entry, x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(entry, x)
        interpreter.invoke()
        features = (lambda: interpreter.tensor(out["features"])()) if "features" in out else None
        return (interpreter.get_tensor(out["probabilities"]),
                interpreter.get_tensor(out["confidence"]) if "confidence" in out else None,
                features)
    return run


def _saved_model(path):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    (name,) = fn.structured_input_signature[1]

    def run(x):
        got = {k: v.numpy() for k, v in fn(**{name: tf.constant(x)}).items()}
        return got["probabilities"], got["confidence"], lambda: got.get("features")
    return run


class SegmentCascade:
    """The segments of a LiteRT or ONNX export, driven as the in-package Cascade drives its own."""

    def __init__(self, folder, join_layouts=True, keep_models=False):
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        self.criterion, self.manifest, self.models = manifest["criterion"], manifest, None
        paths = [os.path.join(folder, rel) for rel in manifest["artifacts"]["segments"]]
        self.layout = None  # ONNX: the layout features pass between segments in
        if manifest["format"] == "onnx":
            sessions, joined, models = _onnx_sessions(paths, join_layouts)
            self.segments = [_onnx(s) for s in sessions]
            self.models = models if keep_models else None  # the server fuses tails of them
            int8 = manifest.get("quantization")  # int8: as recorded (NCHW before, Q2)
            self.layout = (f"int8, features {int8.get('features_layout', 'NCHW')}" if int8
                           else f"NCHWc at {joined} of {len(paths) - 1} segment boundaries")
        else:
            self.segments = [(_saved_model if manifest["format"] == "saved_model" else _litert)(p)
                             for p in paths]
        self.segments = exit_outputs(manifest, self.segments)

    def __call__(self, images, threshold, exit_at=None):
        """(probabilities of the exit taken, classes, exits taken 1-based) of a batch; `exit_at`
        k (timing a path): every image leaves at exit k, the same segments run."""
        n, threshold = len(images), np.float32(threshold)
        probs, exits = None, np.zeros(n, np.int32)
        feats, index = images, np.arange(n)
        for k, segment in enumerate(self.segments):
            p, conf, features = segment(feats)
            if probs is None:
                probs = np.zeros((n, p.shape[1]), np.float32)
            if exit_at is not None:  # timing a path: everyone leaves at exit `exit_at`
                leave = np.full(len(index), k + 1 == exit_at)
            elif k == len(self.segments) - 1:  # the final exit takes whoever is left
                leave = np.ones(len(index), dtype=bool)
            else:
                leave = conf >= threshold if self.criterion == "max_prob" else conf <= threshold
            probs[index[leave]], exits[index[leave]] = p[leave], k + 1
            if leave.all():
                break
            feats, index = _survivors(features(), leave), index[~leave]
        return probs, probs.argmax(axis=1).astype(np.int32), exits


def _survivors(feats, leave):
    """The features of the images that go on (as they are when nobody left)."""
    if not leave.any():
        return feats
    return np.ascontiguousarray((feats if isinstance(feats, np.ndarray) else feats.numpy())[~leave])
