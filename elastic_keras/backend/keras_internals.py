"""Private Keras attributes and each backend's random state, in one place (Keras 3.15; B1)."""

import random

import numpy as np


def node_of(tensor):
    """The graph node that produced the KerasTensor `tensor` (`_keras_history`,
    `_inbound_nodes`)."""
    op, node_index, _ = tensor._keras_history
    return op._inbound_nodes[node_index]


def graph_nodes(outputs):
    """Every graph node that `outputs` (a list of KerasTensors) depend on."""
    seen, stack = {}, list(outputs)
    while stack:
        node = node_of(stack.pop())
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node.input_tensors)
    return list(seen.values())


def outputs_in_graph(outputs, names):
    """{layer name: the one tensor it produces in the graph of `outputs`}; a layer called
    more than once there (or with several outputs) maps to None."""
    found = {}
    for node in graph_nodes(outputs):
        name = node.operation.name
        if name in names:
            single = len(node.output_tensors) == 1 and name not in found
            found[name] = node.output_tensors[0] if single else None
    return found


def track_loss(trainer, loss, batch_size):
    """Add a step's total loss to the model's `loss` metric, as Keras' own train_step does
    (`_loss_tracker`); for a trainer that writes its own train_step (multiway.py)."""
    trainer._loss_tracker.update_state(loss, sample_weight=batch_size)


def reseed(net, seed, epoch):
    """Set every RNG (Dropout masks, stochastic depth) of `net` from (seed, epoch).

    RNG states are not in weight files; reseeding at each epoch makes a resumed run draw
    the same masks as an uninterrupted one (FIDELITY.md T7). `_seed_generators` holds
    the SeedGenerators a layer owns.
    """
    for i, layer in enumerate(net._flatten_layers(include_self=False)):
        for gen in layer._seed_generators:
            gen.state.assign(np.array([seed * 7919 + epoch * 104729 + i, 0],
                                      dtype=gen.state.dtype))


def seed_everything(seed):
    """Python, NumPy and Keras' global seeds, without importing TensorFlow.

    `keras.utils.set_random_seed` also seeds TensorFlow whenever it is installed, which
    imports it even under JAX or PyTorch; under those backends we set what it sets but
    that (`global_state` is private; FIDELITY.md B3).
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def run_graph(net, x, training, stored=None):
    """Call the functional model `net` layer by layer: (outputs, values), `values` being
    every layer call's output in the order run (`_run_through_graph`, `_standardize_inputs`,
    `_inputs_struct`).

    With `stored` (the `values` of an earlier call on the same `x`), each layer's output
    takes its stored value while gradients still flow through the layer at its current
    weights and stored input: out -> stored + (out - stop_gradient(out)). This is the
    backward pass of a Torch module (stored input, current weights) that AuxNet's
    multi-way backpropagation uses (FIDELITY.md L4).
    """
    from keras import ops, tree
    from keras.src.models.functional import operation_fn

    values = []

    def wrap(operation):
        call = operation_fn(operation, training=training)

        def run(*args, **kwargs):
            out = call(*args, **kwargs)
            if stored is not None:
                out = tree.map_structure(lambda o, s: s + (o - ops.stop_gradient(o)),
                                         out, stored[len(values)])
            values.append(out)
            return out

        return run

    inputs = net._standardize_inputs(tree.pack_sequence_as(net._inputs_struct, tree.flatten(x)))
    outputs = net._run_through_graph(inputs, operation_fn=wrap)
    return (list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]), values
