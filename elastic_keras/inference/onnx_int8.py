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
    DequantizeLinear, which stays where nodes inside read it); returns their [scale, zero point,
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
            if not _readers(graph, node.output[0]):  # unread: onnxruntime would still run it
                graph.node.remove(node)
    return params


def _readers(graph, name):
    return [n for n in graph.node if name in n.input]


def _chain(graph, first_op, second_op):
    """(first, second): "tap" read by a `first_op` node alone, and its output by a
    `second_op` node alone; else None."""
    first = _readers(graph, "tap")
    if len(first) != 1 or first[0].op_type != first_op:
        return None
    second = _readers(graph, first[0].output[0])
    return (first[0], second[0]) if len(second) == 1 and second[0].op_type == second_op else None


def _swap(graph, first, second) -> None:
    """tap -> first -> second becomes tap -> second -> first, the tensors at both ends keeping
    their names (the one between changes shape or type: its recorded value_info goes)."""
    between, end = first.output[0], second.output[0]
    for info in [v for v in graph.value_info if v.name == between]:
        graph.value_info.remove(info)
    second.input[0], second.output[0] = first.input[0], between
    first.input[0], first.output[0] = between, end
    graph.node.remove(second)  # before `first`, in topological order
    graph.node.insert(list(graph.node).index(first), second)


def _pad_after_transpose(graph) -> bool:
    """Channels-last features (FIDELITY.md Q2): tf2onnx pads "tap" before transposing it to
    ONNX's layout; pad after the Transpose instead (the pads permuted), so that onnxruntime
    folds the padding into the convolution that follows."""
    import numpy as np
    from onnx import numpy_helper

    found = _chain(graph, "Pad", "Transpose")
    consts = {i.name: i for i in graph.initializer}
    if (found is None or len(found[0].input) > 3 or found[0].input[1] not in consts
            or any(a.name == "mode" and a.s not in (b"", b"constant")
                   for a in found[0].attribute)):
        return False
    pad, transpose = found
    perm = list(next(a.ints for a in transpose.attribute if a.name == "perm"))
    old = numpy_helper.to_array(consts[pad.input[1]])
    new = [old[p] for p in perm] + [old[len(perm) + p] for p in perm]
    name = pad.input[1] + "_transposed"
    graph.initializer.append(numpy_helper.from_array(np.asarray(new, old.dtype), name))
    if len(_readers(graph, pad.input[1])) == 1:
        graph.initializer.remove(consts[pad.input[1]])
    pad.input[1] = name
    _swap(graph, pad, transpose)
    return True


def _quantize_before_transpose(graph) -> None:
    """Channels-last features (FIDELITY.md Q2): tf2onnx transposes "tap" to ONNX's layout
    before it is quantized; quantize it first (the same integers: one scale per tensor), so
    that "tap" is the QuantizeLinear's input and becomes the integer tensor itself."""
    found = _chain(graph, "Transpose", "QuantizeLinear")
    scales = {i.name: i.dims for i in graph.initializer}
    # a per-axis QuantizeLinear would not commute with the Transpose
    if found is not None and list(scales.get(found[1].input[1], [0])) in ([], [1]):
        _swap(graph, *found)
