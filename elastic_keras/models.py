"""The one model factory: elastic and plain models, and `elastify` for any network."""

import os
from dataclasses import asdict, dataclass

from .costs import cost_of, graph_nodes, node_of
from .errors import ElasticKerasError
from .registry import get_spec

FINAL = "final"  # name of the final exit's output, in elastic and plain models alike
_HEAD_PREFIXES = ("exit_", FINAL)  # every layer of an exit's head starts so
DEFAULT_DROPOUT = 0.2  # not in the paper; the authors' scripts (FIDELITY.md F2)


@dataclass(frozen=True)
class ExitInfo:
    """One output of an elastic model, in depth order (the final exit is last)."""

    output: str  # output (and Dense layer) name: exit_1 ... exit_{K-1}, final
    layer: str  # backbone layer the exit is attached after
    conv_layers: int  # convolution layers up to the exit
    params: int  # parameters as the paper's Table II counts them (see exit_info)
    params_exit_only: int  # parameters this exit alone needs (its truncated predictor)
    macs: int  # multiply-accumulates per image up to and including the exit

    def as_dict(self):
        return asdict(self)


def exit_name(index):
    """Output name of the intermediate exit number `index` (1-based, depth order)."""
    return f"exit_{index}"


def _head(x, classes, dropout, name, flatten, pool=False):
    """An exit: [GAP ->] (GAP or Flatten) -> Dropout -> Dense(C, softmax) (PAPER.md 2;
    the pooled ResNet-50 final head: FIDELITY.md M3)."""
    import keras

    L = keras.layers
    if pool:
        x = L.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    if flatten:
        x = L.Flatten(name=f"{name}_flatten")(x)
    elif len(x.shape) == 4:
        x = L.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    x = L.Dropout(dropout, name=f"{name}_dropout")(x)
    return L.Dense(classes, activation="softmax", name=name)(x)


def elastify(model, exit_layers, classes, dropout=DEFAULT_DROPOUT, final="flatten", name=None):
    """Attach exits to any functional Keras model (paper section III).

    model: a functional model; exit_layers: names of its layers to put an intermediate exit
    after (GAP -> Dropout -> Dense(classes, softmax)), in any order (sorted by depth here).
    final: the final exit on `model.output`: "flatten" (Flatten -> Dropout -> Dense, the
    paper's rule), "pool" (global average pool first, as Keras 2.1.5's ResNet-50 top), or
    "keep" (model.output is already a classifier with `classes` outputs and serves as is).
    Returns a new functional model whose outputs are named exit_1 ... exit_K-1, final.
    """
    import keras

    if not isinstance(classes, int) or classes < 2:
        raise ElasticKerasError(f"classes must be an integer >= 2, got {classes!r}")
    if not 0 <= dropout < 1:
        raise ElasticKerasError(f"dropout must be in [0, 1), got {dropout!r}")
    if final not in ("flatten", "pool", "keep"):
        raise ElasticKerasError(f"final must be 'flatten', 'pool' or 'keep', got {final!r}")
    if not hasattr(model, "outputs") or len(model.outputs) != 1:
        raise ElasticKerasError("elastify needs a functional model with exactly one output")
    names = {layer.name for layer in model.layers}
    missing = [n for n in exit_layers if n not in names]
    if missing:
        raise ElasticKerasError(f"exit layers not in model {model.name!r}: {missing}")
    if len(set(exit_layers)) != len(exit_layers):
        raise ElasticKerasError(f"exit layers repeat a name: {list(exit_layers)}")

    # Exits in depth order: a layer is deeper when more graph nodes lie before it.
    taps = [model.get_layer(n).output for n in exit_layers]
    order = sorted(range(len(taps)), key=lambda i: len(graph_nodes([taps[i]])))
    outputs = [
        _head(taps[i], classes, dropout, exit_name(k + 1), flatten=False)
        for k, i in enumerate(order)
    ]
    top = model.output
    if final == "keep":
        if top.shape[-1] != classes:
            raise ElasticKerasError(
                f"final='keep' needs a model output of {classes} classes, got shape {top.shape}")
        top = keras.layers.Identity(name=FINAL)(top)
        outputs.append(top)
    else:
        outputs.append(_head(top, classes, dropout, FINAL, flatten=True, pool=final == "pool"))
    return keras.Model(model.inputs, outputs, name=name or f"elastic_{model.name}")


def exit_info(model, convention="full"):
    """Per-output metadata of a model built here (or loaded from a file), depth order.

    `params` follows the paper's Table II: an intermediate exit counts what it needs up to
    and including its head; the final exit of an elastic model counts the whole model
    (Table II's last Elastic-DenseNet-169 row, 20.90 M). `params_exit_only` is always what
    the exit alone needs (FIDELITY.md M5).
    """
    result = []
    for i, (tensor, out_name) in enumerate(zip(model.outputs, model.output_names)):
        cost = cost_of([tensor], convention)
        params = model.count_params() if i == len(model.outputs) - 1 else cost["params"]
        result.append(ExitInfo(output=out_name, layer=_head_input(tensor),
                               conv_layers=cost["conv_layers"], params=params,
                               params_exit_only=cost["params"], macs=cost["macs"]))
    return result


def is_head_layer(name):
    """Whether a layer named `name` belongs to an exit's head (not to the backbone)."""
    return name.startswith(_HEAD_PREFIXES)


def head_tap(output):
    """The backbone tensor an exit's head reads: walks back from the exit's `output`
    through the layers named after it (exit_3, exit_3_dropout, exit_3_gap)."""
    name = node_of(output).operation.name
    tensor = output
    while True:
        node = node_of(tensor)
        if not (node.operation.name == name or node.operation.name.startswith(name + "_")):
            return tensor
        if len(node.input_tensors) != 1:
            raise ElasticKerasError(f"head layer {node.operation.name!r} of exit {name!r} has "
                                    f"{len(node.input_tensors)} inputs; expected a chain")
        tensor = node.input_tensors[0]


def _head_input(output):
    """Name of the backbone layer an exit hangs from."""
    return node_of(head_tap(output)).operation.name


def build_model(backbone, classes, input_size=224, dropout=DEFAULT_DROPOUT, alpha=None,
                weights="imagenet", plain=False, source_shape=None, preprocess="paper"):
    """Build the elastic model (paper section III) or the plain baseline of `backbone`.

    weights: "imagenet", None, a path to a local weights file of the backbone without its
    top (Keras' official `*_notop.h5`), or a folder holding that file under its official
    name (e.g. ~/.keras/models). plain=True gives the backbone
    with the final exit alone ("w/o Elastic Structure").
    source_shape: when given (e.g. (32, 32, 3) for CIFAR), the model takes native-size
    uint8-valued images of that shape and its first layer resizes them to `input_size`
    and scales them (`preprocess`: "paper" [0, 1] or "authors" [-1, 1]) inside the graph.
    """
    spec = get_spec(backbone)
    if not isinstance(input_size, int) or input_size < spec.min_input_size:
        raise ElasticKerasError(
            f"input_size for {backbone} must be an integer >= {spec.min_input_size}, "
            f"got {input_size!r}")
    if alpha is not None and spec.alpha is None:
        raise ElasticKerasError(f"alpha applies to MobileNet only, not to {backbone}")
    if weights not in ("imagenet", None):
        weights = os.path.expanduser(os.fspath(weights))
        if os.path.isdir(weights):
            weights = os.path.join(weights, spec.weights_file(alpha, input_size))
        if not os.path.isfile(weights):
            raise ElasticKerasError(f"weights file not found: {weights}")
    input_tensor = None
    if source_shape is not None:
        import keras

        from .preprocessing import Preprocess

        inputs = keras.Input(tuple(source_shape), name="images")
        input_tensor = Preprocess(input_size, preprocess, name="preprocess")(inputs)
    try:
        base = spec.build_backbone(input_size, weights, alpha, input_tensor)
    except (ValueError, OSError) as e:  # Keras' checks (alpha values), bad weight files
        raise ElasticKerasError(f"cannot build {backbone} backbone: {e}") from None
    exits = () if plain else spec.exits
    name = f"{'plain' if plain else 'elastic'}_{spec.name}"
    return elastify(base, exits, classes, dropout, final="pool" if spec.final_pool else "flatten",
                    name=name)
