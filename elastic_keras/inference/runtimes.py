"""Run an export in its own runtime: TensorFlow (SavedModel), LiteRT, onnxruntime."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.export import MANIFEST, check_format


def is_export(path) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def _litert(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path).get_signature_runner()


def _saved_model(path):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]

    def run(**inputs):
        args = {k: tf.constant(v) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in fn(**args).items()}
    return run


def _onnx_predictor(path):
    import onnxruntime as ort

    from elastic_keras.inference.segment_driver import onnx_options

    session = ort.InferenceSession(path, onnx_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def run(images):
        got = dict(zip(outputs, session.run(None, {name: images})))
        probs = next(v for v in got.values() if v.ndim == 2)
        return {"probabilities": probs, "classes": probs.argmax(axis=1).astype(np.int32)}
    return run


class Exported:
    """An export folder, loaded in its runtime: `cascade(images, threshold)` and
    `predictor(exit)(images)`, each returning NumPy arrays by output name."""

    def __init__(self, folder, driver: bool | None = None):
        self.folder = os.fspath(folder)
        if not is_export(self.folder):
            raise ElasticKerasError(f"not an export (no {MANIFEST}): {self.folder}")
        self.manifest = files.read_json(os.path.join(self.folder, MANIFEST))
        self.format = check_format(self.manifest.get("format"))
        self.dtype = np.dtype(self.manifest["input"]["dtype"])
        self.output_names = [e["output"] for e in self.manifest["exits"]]
        self._cascade: Any = None
        self._predictors: dict[str, Any] = {}
        # LiteRT: the segment driver by default (the one-graph cascade is far slower on
        # LiteRT's CPU kernels, FIDELITY.md I31); ONNX has only the driver.
        self.driver = self.format != "saved_model" if driver is None else driver
        if self.driver and "segments" not in self.manifest["artifacts"]:
            raise ElasticKerasError(f"{self.folder}: a {self.format} export has no segments")
        if not self.driver and "cascade" not in self.manifest["artifacts"]:
            raise ElasticKerasError(f"{self.folder}: this export has no one-graph cascade; "
                                    "its segments and driver run it")

    def _load(self, rel, predictor):
        path = os.path.join(self.folder, rel or "")
        try:
            if not predictor and self.driver:
                return _driver(self.folder)
            if self.format == "saved_model":
                return _saved_model(path)
            if self.format == "litert":
                return _litert(path)
            return _onnx_predictor(path)
        except ImportError as e:
            raise ElasticKerasError(f"running a {self.format} export needs {e.name}: pip install "
                                    "'elastic-keras[export]' (make install-export)") from None

    def cascade(self, images, threshold: float, exit_at: int | None = None) -> dict:
        """probabilities, classes and exits (1-based) of a batch at `threshold`; `exit_at`
        (segment drivers only, for timing a path): every image leaves at that exit."""
        if self._cascade is None:
            self._cascade = self._load(self.manifest["artifacts"].get("cascade"), False)
        images = np.asarray(images, dtype=self.dtype)
        if exit_at is not None and not self.driver:
            raise ElasticKerasError(f"{self.folder}: only a segment driver can send a batch "
                                    "out at a chosen exit")
        if self.driver:
            probs, classes, exits = self._cascade(images, threshold, exit_at)
            return {"probabilities": probs, "classes": classes, "exits": exits}
        return self._cascade(images=images, threshold=np.float32(threshold))

    @property
    def runtime(self) -> str:
        """The format; for ONNX segments once run, the layout their features pass in."""
        layout = getattr(self._cascade, "layout", None)
        return f"{self.format} ({layout})" if layout else self.format

    def predictor(self, exit: str):
        """The truncated predictor of output `exit`: images -> probabilities, classes."""
        if exit not in self._predictors:
            rel = self.manifest["artifacts"]["predictors"][exit]
            run = self._load(rel, True)
            self._predictors[exit] = self._served(exit, rel, run if self.format == "onnx" else (
                lambda images, run=run: run(images=images)))
        return lambda images: self._predictors[exit](np.asarray(images, dtype=self.dtype))

    def _served(self, exit, rel, run):
        """A predictor whose probabilities are integers or get the export's own temperatures:
        dequantized and scaled as the segment driver does (FIDELITY.md Q2)."""
        from elastic_keras.inference.segment_int8 import exit_probabilities

        m = self.manifest
        params = ((m.get("quantization") or {}).get("tensors") or {}).get(rel, {})
        temps = m.get("output_temperatures") or [None] * len(self.output_names)
        if not params and temps[self.output_names.index(exit)] in (None, 1.0):
            return run

        def served(images):
            probs = exit_probabilities(run(images)["probabilities"], params.get(
                "probabilities"), temps[self.output_names.index(exit)])
            return {"probabilities": probs, "classes": probs.argmax(axis=1).astype(np.int32)}
        return served

    def in_force(self) -> dict:
        """The threshold this export serves at and what vouches for it
        (manifest.threshold_in_force)."""
        from elastic_keras.inference.manifest import threshold_in_force

        return threshold_in_force(self.manifest)


def _driver(folder):
    from elastic_keras.inference.segment_driver import SegmentCascade

    return SegmentCascade(folder)
