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
    keys = sorted(["confidence", "probabilities"] + (["features"] if len(
        session.get_outputs()) == 3 else []))  # the outputs' (flattened) order

    def run(x):  # features stay in onnxruntime's memory (OrtValue) on their way on
        x = x if isinstance(x, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(x)
        got = dict(zip(keys, session.run_with_ort_values(None, {name: x})))
        return {k: v if k == "features" else v.numpy() for k, v in got.items()}
    return run


def _litert(path):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    return lambda x: runner(**{name: x})


class SegmentCascade:
    """The segments of a LiteRT or ONNX export, driven as the in-package Cascade drives its own."""

    def __init__(self, folder):
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        self.criterion = manifest["criterion"]
        load = _onnx if manifest["format"] == "onnx" else _litert
        self.segments = [load(os.path.join(folder, rel))
                         for rel in manifest["artifacts"]["segments"]]

    def __call__(self, images, threshold):
        """(probabilities of the exit taken, classes, exits taken 1-based) of a batch."""
        n, threshold = len(images), np.float32(threshold)
        probs, exits = None, np.zeros(n, np.int32)
        feats, index = images, np.arange(n)
        for k, segment in enumerate(self.segments):
            out = segment(feats)
            p, conf = out["probabilities"], out["confidence"]
            if probs is None:
                probs = np.zeros((n, p.shape[1]), np.float32)
            if k == len(self.segments) - 1:  # the final exit takes whoever is left
                leave = np.ones(len(index), dtype=bool)
            else:
                leave = conf >= threshold if self.criterion == "max_prob" else conf <= threshold
            probs[index[leave]], exits[index[leave]] = p[leave], k + 1
            if leave.all():
                break
            feats, index = _survivors(out["features"], leave), index[~leave]
        return probs, probs.argmax(axis=1).astype(np.int32), exits


def _survivors(feats, leave):
    """The features of the images that go on (as they are when nobody left)."""
    if not leave.any():
        return feats
    return np.ascontiguousarray((feats if isinstance(feats, np.ndarray) else feats.numpy())[~leave])
