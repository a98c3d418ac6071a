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
        model = onnx.load(float_path)
        if _pad_after_transpose(model.graph):
            onnx.save(model, float_path)
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
    _quantize_before_transpose(graph)

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
    for node in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in (
            "features_dequantized", "probabilities_dequantized")]:
        if not any(node.output[0] in n.input for n in graph.node):  # onnxruntime runs it
            graph.node.remove(node)
    return params


def _readers(graph, name):
    return [n for n in graph.node if name in n.input]


def _pad_after_transpose(graph) -> bool:
    """Channels-last features (FIDELITY.md Q2): tf2onnx pads "tap" before transposing it to
    ONNX's layout; pad after the Transpose instead (the pads permuted), so that onnxruntime
    folds the padding into the convolution that follows."""
    import numpy as np
    from onnx import numpy_helper

    pads = _readers(graph, "tap")
    if len(pads) != 1 or pads[0].op_type != "Pad" or len(pads[0].input) > 3:
        return False
    pad = pads[0]
    after = _readers(graph, pad.output[0])
    consts = {i.name: i for i in graph.initializer}
    if (len(after) != 1 or after[0].op_type != "Transpose" or pad.input[1] not in consts
            or any(a.name == "mode" and a.s not in (b"", b"constant") for a in pad.attribute)):
        return False
    transpose = after[0]
    perm = list(next(a.ints for a in transpose.attribute if a.name == "perm"))
    old = numpy_helper.to_array(consts[pad.input[1]])
    rank = len(perm)
    new = [old[p] for p in perm] + [old[rank + p] for p in perm]
    name = pad.input[1] + "_transposed"
    graph.initializer.append(numpy_helper.from_array(np.asarray(new, old.dtype), name))
    if not any(pad.input[1] in n.input for n in graph.node if n is not pad):
        graph.initializer.remove(consts[pad.input[1]])
    padded = transpose.output[0]
    for info in [v for v in graph.value_info if v.name in (padded, pad.output[0])]:
        graph.value_info.remove(info)  # their shapes change
    transpose.input[0], transpose.output[0] = "tap", pad.output[0]
    pad.input[0], pad.input[1], pad.output[0] = pad.output[0], name, padded
    graph.node.remove(pad)  # after the Transpose, in topological order
    graph.node.insert(list(graph.node).index(transpose) + 1, pad)
    return True


def _quantize_before_transpose(graph) -> None:
    """Channels-last features (FIDELITY.md Q2): tf2onnx transposes "tap" to ONNX's layout
    before it is quantized; quantize it first (the same integers: one scale per tensor), so
    that "tap" is the QuantizeLinear's input and becomes the integer tensor itself."""
    readers = _readers(graph, "tap")
    if len(readers) != 1 or readers[0].op_type != "Transpose":
        return
    transpose = readers[0]
    after = _readers(graph, transpose.output[0])
    scales = {i.name: i.dims for i in graph.initializer}
    if (len(after) != 1 or after[0].op_type != "QuantizeLinear"
            or list(scales.get(after[0].input[1], [0])) not in ([], [1])):
        return  # a per-axis QuantizeLinear would not commute with the Transpose
    quantize, between = after[0], transpose.output[0]
    quantize.input[0], transpose.input[0] = "tap", between
    transpose.output[0], quantize.output[0] = quantize.output[0], between
    graph.node.remove(quantize)  # before the Transpose, in topological order
    graph.node.insert(list(graph.node).index(transpose), quantize)
