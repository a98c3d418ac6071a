"""Int8 exports: full-integer post-training quantization of an export's segments and predictors."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from elastic_keras.checks import check_choice, check_int
from elastic_keras.errors import ElasticKerasError

IO_TYPES = ("uint8", "int8")
# The type each runtime computes in, so no conversion runs at a segment's ends: LiteRT's
# integer kernels are int8, onnxruntime's on x86 uint8 activations (FIDELITY.md Q2).
DEFAULT_IO = {"litert": "int8", "onnx": "uint8"}
CALIBRATION_IMAGES = 300  # default count, from the run's training split
BATCH = 32  # images per calibration batch (float segments, onnxruntime's calibrator)
METHODS = {  # FIDELITY.md Q1
    "litert": "TFLiteConverter full-integer post-training quantization (representative "
              "dataset, min/max per tensor), weights int8 per channel",
    "onnx": "onnxruntime.quantization.quantize_static, QDQ, MinMax calibration, weights int8 "
            "per channel"}


def check_plan(fmt: str, io: str | None = None, count: int = CALIBRATION_IMAGES) -> str:
    """The I/O type of an int8 export in `fmt` (`io`, else the runtime's own); one line for
    options that cannot make one."""
    if fmt not in METHODS:
        raise ElasticKerasError(f"--quantize int8 needs --format litert or onnx (a SavedModel "
                                f"export stays float); received --format {fmt}")
    check_int("--calibration-images", count, 1)
    return check_choice("--io", io or DEFAULT_IO[fmt], IO_TYPES)


@dataclass
class Plan:
    """What an int8 export is quantized with: the calibration images (uint8, the model's
    input), where they came from, the integer type of the artifacts' inputs and outputs,
    and whether the exits' heads stay float. `tensors` is filled on export: per artifact,
    the [scale, zero point, type] of each integer input and output."""

    images: np.ndarray
    source: dict
    io: str | None = None  # None: DEFAULT_IO of the format
    float_heads: bool = False
    tensors: dict = field(default_factory=dict)
    format: str = ""

    @property
    def io_types(self) -> dict:
        """The type of the artifacts' tensors: images, features, probabilities."""
        litert_float = self.float_heads and self.format == "litert"  # the debugger's I/O
        return {"images": "uint8", "features": "float32" if litert_float else self.io,
                "probabilities": "float32" if self.float_heads else self.io}

    @property
    def words(self) -> str:
        kinds = self.io_types
        return (f"int8, {len(self.images)} calibration images, {kinds['features']} features"
                f"{', float heads' if self.float_heads else ''}")

    def record(self, model) -> dict:
        """The manifest's "quantization": scheme, how, images and their source, the float
        model's hash, the integer tensors."""
        return {"scheme": "int8", "method": METHODS[self.format],
                "activations": "int8" if self.format == "litert" else self.io,
                "io": self.io_types, "float_heads": self.float_heads,
                "features_layout": "NHWC",  # channels last between segments (Q2)
                "calibration_images": {"count": int(len(self.images)), **self.source},
                "float_model_sha256": weights_sha256(model), "tensors": self.tensors}


def weights_sha256(model) -> str:
    """sha256 of a model's weights as float32 bytes, in model.weights order."""
    import hashlib

    from keras import ops

    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(w), np.float32).tobytes())
    return digest.hexdigest()


def write_quantized(model, fmt, folder, fns, plan: Plan) -> dict:
    """Write int8 segments (each calibrated on the float outputs of the segment before it)
    and int8 predictors (on the images) into `folder`, with the driver; returns the
    manifest's "artifacts". The one-graph cascade is not made: the driver runs the segments
    (FIDELITY.md Q1)."""
    from elastic_keras.inference.writers import EXTENSION, ship_driver

    plan.io = check_plan(fmt, plan.io, len(plan.images))
    plan.format, ext = fmt, EXTENSION[fmt]
    heads = _head_matcher(model) if plan.float_heads else None
    for sub in ("segments", "exits"):
        os.makedirs(os.path.join(folder, sub))
    artifacts: dict = {"segments": [], "predictors": {}}
    for k, (fn, data) in enumerate(_segment_inputs(fns["segments"], plan.images)):
        rel = os.path.join("segments", f"segment_{k + 1}{ext}")
        plan.tensors[rel] = _write(fmt, _only(fn, ("features", "probabilities")),
                                   os.path.join(folder, rel), data, plan, heads)
        artifacts["segments"].append(rel)
    for name, (_, fn) in fns["predictors"].items():
        rel = os.path.join("exits", name + ext)
        plan.tensors[rel] = _write(fmt, _only(fn, ("probabilities",)),
                                   os.path.join(folder, rel), plan.images, plan, heads)
        artifacts["predictors"][name] = rel
    return {**artifacts, **ship_driver(folder)}


def _only(fn, keys):
    """`fn` giving only `keys`: no confidence (the driver computes it from the dequantized
    probabilities, FIDELITY.md Q2) and no classes (argmax of those)."""
    import tensorflow as tf

    @tf.function(input_signature=fn.input_signature)
    def run(x):
        return {k: v for k, v in fn(x).items() if k in keys}
    return run


def _segment_inputs(segments, images):
    """(segment function, its calibration inputs): the images for the first, then the float
    features the segment before gives on them."""
    import tensorflow as tf

    x = images
    for k, fn in enumerate(segments):
        yield fn, x
        if k < len(segments) - 1:
            x = np.concatenate([fn(tf.constant(x[i:i + BATCH]))["features"].numpy()
                                for i in range(0, len(x), BATCH)])


def _head_matcher(model):
    """Whether a tensor or node name belongs to an exit's head: one of its path components
    is a head layer's name (Keras may append _N); --float-heads (FIDELITY.md Q5)."""
    from elastic_keras.model.exits import head_layers

    pattern = re.compile("(?:" + "|".join(map(re.escape, sorted(head_layers(model))))
                         + r")(?:_\d+)?")
    return lambda name: any(pattern.fullmatch(c) for part in name.split(";")
                            for c in part.split("/"))


def _write(fmt, fn, path, data, plan, heads) -> dict:
    """Convert `fn` to an int8 artifact at `path`, calibrated on `data`; returns the
    [scale, zero point, type] of its integer inputs and outputs. Int8 ONNX features pass
    between segments channels last, as onnxruntime's integer convolutions compute them
    (FIDELITY.md Q2)."""
    from elastic_keras.inference.writers import write_litert, write_onnx
    from elastic_keras.inference.onnx_int8 import quantize_onnx

    if fmt == "litert":
        write_litert(None, fn, path, _litert_convert(data, plan, heads))
        return _litert_params(path)
    float_path = path + ".float.onnx"
    try:
        write_onnx(fn, float_path)
        return quantize_onnx(float_path, path, data, plan.io, heads, BATCH)
    finally:
        if os.path.exists(float_path):
            os.remove(float_path)


def _litert_convert(data, plan, heads):
    """The conversion: full integer, I/O of --io's type; with float heads, the head's nodes
    left out of quantization (TensorFlow's QuantizationDebugger, denylisted nodes)."""
    def convert(converter):
        import tensorflow as tf

        from elastic_keras.backend.environment import _stderr_silenced

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
        with _stderr_silenced():  # the quantizer's C++ writes a line per model there
            if heads is not None:
                return _denylisted(converter, data, heads)
            converter.inference_input_type = getattr(tf, plan.io)
            converter.inference_output_type = getattr(tf, plan.io)
            return converter.convert()
    return convert


def _denylisted(converter, data, heads):
    """Selective quantization: calibrate, then quantize all but the heads' ops (their
    output tensors named by the head layers, and the probabilities output); I/O float."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    import warnings

    debug = tf.lite.experimental
    with warnings.catch_warnings():  # it runs tf.lite.Interpreter, deprecated for LiteRT's
        warnings.simplefilter("ignore")
        debugger = debug.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([data[i:i + 1]] for i in range(2)))
    found = Interpreter(model_content=debugger.calibrated_model)
    out = found.get_signature_runner().get_output_details()["probabilities"]["index"]
    names = [t["name"] for t in found.get_tensor_details()
             if heads(t["name"]) or t["index"] == out]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger.options = debug.QuantizationDebugOptions(denylisted_nodes=names)
        return debugger.get_nondebug_quantized_model()


def _litert_params(path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner()
    details = {**runner.get_input_details(), **runner.get_output_details()}
    return {name: [float(d["quantization"][0]), int(d["quantization"][1]), d["dtype"].__name__]
            for name, d in details.items() if d["quantization"][0]}
