"""Int8 ONNX: onnxruntime's static quantization, and integer inputs and outputs between segments."""

from __future__ import annotations

import logging


def quantize_onnx(float_path, path, data, io, heads, batch: int) -> dict:
    """quantize_static, QDQ, per channel, activations of --io's type, after onnxruntime's
    basic optimizations (batch normalisation and padding folded into the convolutions, so
    neither stays a float operator between integer ones); the heads' nodes excluded with
    float heads; the calibrator reads `batch` images at a time. Then the graph's tap input
    and its features and probabilities outputs are made the integer tensors themselves
    (integer_io)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()  # onnxruntime's quantizer logs its advice for every model
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quant_pre_process(float_path, float_path, skip_symbolic_shape=True)
        graph = onnx.load(float_path).graph
        name = graph.input[0].name

        class Reader(CalibrationDataReader):
            batches = iter([{name: data[i:i + batch]} for i in range(0, len(data), batch)])

            def get_next(self):
                return next(self.batches, None)
        exclude = [n.name for n in graph.node if heads(n.name) or "probabilities" in n.output] \
            if heads else []
        quantize_static(float_path, path, Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        activation_type=QuantType.QUInt8 if io == "uint8" else QuantType.QInt8)
    finally:
        root.setLevel(level)
    model = onnx.load(path)
    params = integer_io(model.graph)
    onnx.save(model, path)
    return params


def integer_io(graph) -> dict:
    """Make the QDQ graph's "tap" input and "features"/"probabilities" outputs the integer
    tensors (the QuantizeLinear after the input dropped; the outputs taken before their
    DequantizeLinear, which stays for the nodes inside); returns their [scale, zero point,
    type]. Features then pass between segments as integers (FIDELITY.md Q2)."""
    from onnx import helper, numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    params = {}

    def retype(value, node):
        scale, zero = consts[node.input[1]], consts[node.input[2]]
        value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(zero.dtype)
        params[value.name] = [float(scale), int(zero), str(zero.dtype)]

    for value in graph.input:
        node = next((n for n in graph.node if n.op_type == "QuantizeLinear"
                     and n.input[0] == value.name == "tap"), None)
        if node is not None:
            for n in graph.node:
                n.input[:] = [value.name if v == node.output[0] else v for v in n.input]
            graph.node.remove(node)
            retype(value, node)
    for value in graph.output:
        node = next((n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0]
                     == value.name and value.name in ("features", "probabilities")), None)
        if node is not None:  # the integer tensor takes the output's name
            rename = {value.name: value.name + "_dequantized", node.input[0]: value.name}
            for n in graph.node:
                n.input[:] = [rename.get(v, v) for v in n.input]
                n.output[:] = [rename.get(v, v) for v in n.output]
            retype(value, node)
    return params
