"""The segment driver: run an export's segments in turn; confident images leave, the rest go on.

Shipped into every LiteRT and ONNX export as cascade_driver.py; needs NumPy and the format's
runtime (ai-edge-litert or onnxruntime) only:
    from cascade_driver import SegmentCascade
    probabilities, classes, exits = SegmentCascade("export-dir")(images, threshold)
Each segment returns its exit's probabilities and confidence (and the features the next one
reads); the exit rule is the in-package Cascade's (FIDELITY.md I31).
"""

import json
import os

import numpy as np


def _onnx(path):
    import onnxruntime as ort

    options = ort.SessionOptions()  # idle sessions must not spin on the cores the next one needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    keys = [o.name for o in session.get_outputs()]

    def run(x):  # features stay in onnxruntime's memory (OrtValue) on their way on
        x = x if isinstance(x, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(x)
        got = dict(zip(keys, session.run_with_ort_values(None, {name: x})))
        features = got.pop("features", None)
        return got["probabilities"].numpy(), got["confidence"].numpy(), lambda: features
    return run


def _litert(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
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
                interpreter.get_tensor(out["confidence"]), features)
    return run


class SegmentCascade:
    """The segments of a LiteRT or ONNX export, driven as the in-package Cascade drives its own."""

    def __init__(self, folder):
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        self.criterion = manifest["criterion"]
        load = _onnx if manifest["format"] == "onnx" else _litert
        self.segments = [load(os.path.join(folder, rel))
                         for rel in manifest["artifacts"]["segments"]]

    def __call__(self, images, threshold, exit_at=None):
        """(probabilities of the exit taken, classes, exits taken 1-based) of a batch.
        `exit_at` k (for timing a path): every image leaves at exit k, whatever its
        confidence; the same segments run as for a batch that leaves there."""
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
    """The features of the images that go on (as they are when nobody left: the next
    segment copies them in)."""
    if not leave.any():
        return feats
    return np.ascontiguousarray((feats if isinstance(feats, np.ndarray) else feats.numpy())[~leave])
