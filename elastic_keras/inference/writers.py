"""One artifact to a file, in each format (SavedModel, LiteRT, ONNX), and the driver that
ships beside an export's segments; export.py and quantize.py write through these."""

from __future__ import annotations

import os
import shutil

EXTENSION = {"saved_model": "", "litert": ".tflite", "onnx": ".onnx"}
OPSET = 17  # ONNX opset of the exported segments and predictors


def write_saved_model(owner, fn, path):
    """SavedModel of `fn`, serving_default, with `owner`'s variables."""
    import tensorflow as tf

    module = tf.Module()
    module.owner, module.serve = owner, fn  # the owner's variables travel with the function
    tf.saved_model.save(module, path, signatures={"serving_default": fn.get_concrete_function()})


def write_litert(owner, fn, path, convert=None):
    """LiteRT flatbuffer of `fn` with a named signature: the function is frozen first (the
    variables read inside the cascade's branches are otherwise left uninitialised), then
    saved and converted (FIDELITY.md I31); `convert(converter)` -> bytes: another conversion
    (quantize.py's)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    del owner  # frozen: the weights become constants
    concrete = fn.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
    keys = sorted(concrete.structured_outputs)  # the frozen outputs' (flattened) order
    module = tf.Module()
    module.serve = tf.function(lambda *args: dict(zip(keys, frozen(*args))),
                               input_signature=fn.input_signature)
    saved = path + ".saved_model"
    write_saved_model(None, module.serve, saved)
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        data = convert(converter) if convert else converter.convert()
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    with open(path, "wb") as f:
        f.write(data)


# The TensorFlow formats' writers, each (owner, fn, path); ONNX's takes layouts instead.
TF_WRITERS = {"saved_model": write_saved_model, "litert": write_litert}


def write_onnx(fn, path, nchw_in=(), nchw_out=()):
    import tf2onnx

    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=OPSET,
                                  output_path=path, inputs_as_nchw=list(nchw_in) or None,
                                  outputs_as_nchw=list(nchw_out) or None)


def ship_driver(folder) -> dict:
    """Copy the segment driver into an export as cascade_driver.py (its int8 helpers as
    cascade_int8.py)."""
    here = os.path.dirname(__file__)
    for name, shipped in (("segment_driver.py", "cascade_driver.py"),
                          ("segment_int8.py", "cascade_int8.py")):
        shutil.copy(os.path.join(here, name), os.path.join(folder, shipped))
    return {"driver": "cascade_driver.py"}
