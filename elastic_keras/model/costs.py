"""Analytic cost of each exit: convolution layers, parameters, multiply-accumulates."""

import math

from elastic_keras.errors import ElasticKerasError
from elastic_keras.backend.keras_internals import graph_nodes

CONVENTIONS = ("full", "bai")


def _layer_types():
    import keras

    L = keras.layers
    return L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D, L.Dense


def _prod(shape):
    return math.prod(int(d) for d in shape if d is not None)


def node_macs(node, convention="full"):
    """Multiply-accumulates of one call of a layer, per image (biases not counted).

    Conv2D, DepthwiseConv2D, SeparableConv2D and Dense are counted; everything else
    (BatchNorm, pooling, additions, activations) costs 0 MACs. Under the "bai" convention
    depthwise convolutions are left out, as Bai et al.'s counter left them out
    (FIDELITY.md M6, M7).
    """
    Conv2D, Depthwise, Separable, Dense = _layer_types()
    op = node.operation
    if not node.input_tensors:
        return 0
    out = node.output_tensors[0].shape
    inp = node.input_tensors[0].shape
    if isinstance(op, Separable):  # checked before Conv2D: a subclass in some versions
        kh, kw = op.kernel_size
        out_positions = _prod(out[1:-1])
        depthwise = out_positions * int(inp[-1]) * op.depth_multiplier * kh * kw
        pointwise = out_positions * int(inp[-1]) * op.depth_multiplier * int(out[-1])
        return pointwise + (0 if convention == "bai" else depthwise)
    if isinstance(op, Depthwise):
        if convention == "bai":
            return 0
        kh, kw = op.kernel_size
        return _prod(out[1:]) * kh * kw
    if isinstance(op, Conv2D):
        kh, kw = op.kernel_size
        return _prod(out[1:]) * kh * kw * int(inp[-1]) // op.groups
    if isinstance(op, Dense):
        return _prod(out[1:]) * int(inp[-1])
    if _is_model(op):  # a nested model counts whole
        return sum(node_macs(n, convention) for n in graph_nodes(op.outputs))
    return 0


def _is_model(op):
    import keras

    return isinstance(op, keras.Model) and hasattr(op, "outputs")


def _conv_count(op):
    Conv2D, Depthwise, Separable, _ = _layer_types()
    if _is_model(op):
        return sum(_conv_count(n.operation) for n in graph_nodes(op.outputs))
    return int(isinstance(op, (Conv2D, Depthwise, Separable)))


def cost_of(outputs, convention="full"):
    """Convolution layers, parameters and MACs of everything `outputs` depend on."""
    if convention not in CONVENTIONS:
        raise ElasticKerasError(
            f"unknown MACs convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    nodes = graph_nodes(outputs)
    layers = {id(n.operation): n.operation for n in nodes}
    return dict(
        conv_layers=sum(_conv_count(op) for op in layers.values()),
        # Bare operations in a graph (`x + y` in MobileNetV3, ConvNeXt) hold no weights.
        params=int(sum(op.count_params() for op in layers.values()
                       if getattr(op, "built", False) and hasattr(op, "count_params"))),
        macs=int(sum(node_macs(n, convention) for n in nodes)),
    )
