"""The one model factory: elastic and plain models, and `elastify` for any network."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import keras

from .costs import cost_of
from .errors import ElasticKerasError
from .internals import graph_nodes, node_of, outputs_in_graph
from .registry import get_spec

FINAL = "final"  # name of the final exit's output, in elastic and plain models alike
DEFAULT_DROPOUT = 0.2  # not in the paper; the authors' scripts (FIDELITY.md M2)


@dataclass(frozen=True)
class ExitInfo:
    """One output of an elastic model, in depth order (the final exit is last)."""

    output: str  # output (and Dense layer) name: exit_1 ... exit_{K-1}, final
    layer: str  # backbone layer the exit is attached after
    conv_layers: int  # convolution layers up to the exit
    params: int  # parameters as the paper's Table II counts them (see exit_info)
    params_exit_only: int  # parameters this exit alone needs (its truncated predictor)
    macs: int  # multiply-accumulates per image up to and including the exit

    def as_dict(self) -> dict:
        return asdict(self)


@keras.saving.register_keras_serializable(package="elastic_keras")
class ElasticModel(keras.Model):
    """A functional model whose outputs are exits, with the record of each exit.

    `exits` lists, in output (= depth) order, each exit's output name, the backbone layer
    it reads (`tap`) and the layers of its head. The record is part of the model's config,
    so it survives a `.keras` save and a `safe_mode=True` load; phase freezing,
    `exit_info`, the cascade and the history columns read it, never layer names
    (FIDELITY.md M9).
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        exits = kwargs.pop("exits", None)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        if not exits or len(exits) != len(self.outputs):
            raise ElasticKerasError(f"ElasticModel {name!r} needs one exit record per output")
        self.exits = [{"output": e["output"], "tap": e["tap"], "head": list(e["head"])}
                      for e in exits]
        if [e["output"] for e in self.exits] != list(self.output_names):
            raise ElasticKerasError(
                f"exit records {[e['output'] for e in self.exits]} do not match the outputs "
                f"{list(self.output_names)}")

    def get_config(self):
        return {**super().get_config(), "exits": self.exits}


def exit_records(model) -> list[dict]:
    """The exit record of a model built by `elastify` (or `build_model`)."""
    exits = getattr(model, "exits", None)
    if not isinstance(model, ElasticModel) or exits is None:
        raise ElasticKerasError(
            f"{getattr(model, 'name', model)!r} is not an elastic model: build it with "
            "elastic_keras.elastify or build_model (or load one saved from them)")
    return exits


def head_layers(model) -> set[str]:
    """Names of every layer that belongs to an exit's head (not to the backbone)."""
    return {name for e in exit_records(model) for name in e["head"]}


def exit_name(index: int) -> str:
    """Output name of the intermediate exit number `index` (1-based, depth order)."""
    return f"exit_{index}"


def _head(x, classes, dropout, name, flatten, pool=False):
    """An exit: [GAP ->] (GAP or Flatten) -> Dropout -> Dense(C, softmax) (PAPER.md 2;
    the pooled ResNet-50 final head: FIDELITY.md M3). Returns (softmax, head layer names)."""
    L = keras.layers
    names = []
    if pool or (not flatten and len(x.shape) == 4):
        x = L.GlobalAveragePooling2D(name=f"{name}_gap")(x)
        names.append(f"{name}_gap")
    if flatten:
        x = L.Flatten(name=f"{name}_flatten")(x)
        names.append(f"{name}_flatten")
    x = L.Dropout(dropout, name=f"{name}_dropout")(x)
    out = L.Dense(classes, activation="softmax", name=name)(x)
    return out, names + [f"{name}_dropout", name]


def _check_elastify(model, exit_layers, classes, dropout, final):
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ElasticKerasError(f"classes must be an integer >= 2, got {classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
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
    taps = outputs_in_graph(model.outputs, set(exit_layers))
    bad = [n for n in exit_layers if taps.get(n) is None]
    if bad:
        raise ElasticKerasError(f"exit layers {bad} are not called exactly once, with one "
                                f"output, on the way to the output of {model.name!r}")
    return names, [taps[n] for n in exit_layers]


def elastify(model: keras.Model, exit_layers, classes: int, dropout: float = DEFAULT_DROPOUT,
             final: str = "flatten", name: str | None = None) -> ElasticModel:
    """Attach exits to any functional Keras model (paper section III).

    model: a functional model; exit_layers: names of its layers to put an intermediate exit
    after (GAP -> Dropout -> Dense(classes, softmax)), in any order (sorted by depth here).
    final: the final exit on `model.output`: "flatten" (Flatten -> Dropout -> Dense, the
    paper's rule), "pool" (global average pool first, as Keras 2.1.5's ResNet-50 top), or
    "keep" (model.output is already a classifier with `classes` outputs and serves as is).
    Returns an ElasticModel whose outputs are named exit_1 ... exit_K-1, final, with the
    record of each exit's tap and head layers.
    """
    exit_layers = list(exit_layers)
    names, taps = _check_elastify(model, exit_layers, classes, dropout, final)
    # Exits in depth order: a layer is deeper when more graph nodes lie before it.
    order = sorted(range(len(taps)), key=lambda i: len(graph_nodes([taps[i]])))
    outputs, records = [], []
    for k, i in enumerate(order):
        out, head = _head(taps[i], classes, dropout, exit_name(k + 1), flatten=False)
        outputs.append(out)
        records.append({"output": exit_name(k + 1), "tap": exit_layers[i], "head": head})
    top = model.outputs[0]
    top_layer = node_of(top).operation.name
    if final == "keep":
        if top.shape[-1] != classes:
            raise ElasticKerasError(
                f"final='keep' needs a model output of {classes} classes, got shape {top.shape}")
        out, head = keras.layers.Identity(name=FINAL)(top), [FINAL]
    else:
        out, head = _head(top, classes, dropout, FINAL, flatten=True, pool=final == "pool")
    outputs.append(out)
    records.append({"output": FINAL, "tap": top_layer, "head": head})
    clash = sorted(names & {h for r in records for h in r["head"]})
    if clash:
        raise ElasticKerasError(f"model {model.name!r} already has layers named {clash}, the "
                                "names of the exits' heads; rename those layers")
    return ElasticModel(model.inputs, outputs, name=name or f"elastic_{model.name}",
                        exits=records)


def head_tap(model, index: int):
    """The backbone tensor that exit `index` (0-based output position) reads: walks back
    from the exit's output through the layers its record names as its head."""
    head = set(exit_records(model)[index]["head"])
    tensor = model.outputs[index]
    while node_of(tensor).operation.name in head:
        node = node_of(tensor)
        if len(node.input_tensors) != 1:
            raise ElasticKerasError(f"head layer {node.operation.name!r} has "
                                    f"{len(node.input_tensors)} inputs; expected a chain")
        tensor = node.input_tensors[0]
    return tensor


def exit_info(model: keras.Model, convention: str = "full") -> list[ExitInfo]:
    """Per-output metadata of an elastic model (built here or loaded from a file), in
    depth order, from its exit record.

    `params` follows the paper's Table II: an intermediate exit counts what it needs up to
    and including its head; the final exit of an elastic model counts the whole model
    (Table II's last Elastic-DenseNet-169 row, 20.90 M). `params_exit_only` is always what
    the exit alone needs (FIDELITY.md M5).
    """
    result = []
    records = exit_records(model)
    for i, (tensor, rec) in enumerate(zip(model.outputs, records)):
        cost = cost_of([tensor], convention)
        params = model.count_params() if i == len(records) - 1 else cost["params"]
        result.append(ExitInfo(output=rec["output"], layer=rec["tap"],
                               conv_layers=cost["conv_layers"], params=params,
                               params_exit_only=cost["params"], macs=cost["macs"]))
    return result


def _resolve_weights(spec, weights, alpha, input_size):
    """'imagenet', None, or the path of a local `*_notop.h5` (a folder: its official name;
    FIDELITY.md M11)."""
    if weights in ("imagenet", None):
        return weights
    weights = os.path.expanduser(os.fspath(weights))
    if os.path.isdir(weights):
        weights = os.path.join(weights, spec.weights_file(alpha, input_size))
    if not os.path.isfile(weights):
        raise ElasticKerasError(f"weights file not found: {weights}")
    return weights


def build_model(backbone: str, classes: int, input_size: int = 224,
                dropout: float = DEFAULT_DROPOUT, alpha: float | None = None,
                weights: str | None = "imagenet", plain: bool = False,
                source_shape: tuple | None = None, preprocess: str = "paper",
                bn_momentum: float | None = None) -> ElasticModel:
    """Build the elastic model (paper section III) or the plain baseline of `backbone`.

    weights: "imagenet", None, a path to a local weights file of the backbone without its
    top (Keras' official `*_notop.h5`), or a folder holding that file under its official
    name (e.g. ~/.keras/models). plain=True gives the backbone with the final exit alone
    ("w/o Elastic Structure").
    source_shape: when given (e.g. (32, 32, 3) for CIFAR), the model takes native-size
    uint8-valued images of that shape and its first layer resizes them to `input_size`
    and scales them (`preprocess`: "paper" [0, 1] or "authors" [-1, 1]) inside the graph.
    bn_momentum: BatchNorm momentum of every BatchNormalization layer (demo profile, T8).
    """
    spec = get_spec(backbone)
    if isinstance(input_size, bool) or not isinstance(input_size, int) \
            or input_size < spec.min_input_size:
        raise ElasticKerasError(
            f"input_size for {backbone} must be an integer >= {spec.min_input_size}, "
            f"got {input_size!r}")
    if alpha is not None and spec.alpha is None:
        raise ElasticKerasError(f"alpha applies to MobileNet only, not to {backbone}")
    weights = _resolve_weights(spec, weights, alpha, input_size)
    input_tensor = None
    if source_shape is not None:
        from .preprocessing import Preprocess

        inputs = keras.Input(tuple(source_shape), name="images")
        input_tensor = Preprocess(input_size, preprocess, name="preprocess")(inputs)
    try:
        base = spec.build_backbone(input_size, weights, alpha, input_tensor)
    except (ValueError, OSError) as e:  # Keras' checks (alpha values), bad weight files
        raise ElasticKerasError(f"cannot build {backbone} backbone: {e}") from None
    exits = () if plain else spec.exits
    net = elastify(base, exits, classes, dropout, final="pool" if spec.final_pool else "flatten",
                   name=f"{'plain' if plain else 'elastic'}_{spec.name}")
    if bn_momentum is not None:  # demo profile only (FIDELITY.md T8)
        for layer in net.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return net


def model_from_config(cfg: dict, num_classes: int, image_shape, initial_weights: bool = True):
    """The network of a run config (native-size input, in-graph preprocessing).

    initial_weights=False skips the ImageNet (or local) weights: for a network whose
    weights come from a checkpoint next.
    """
    m = cfg["model"]
    return build_model(m["backbone"], num_classes, input_size=m["input_size"],
                       dropout=m["dropout"], alpha=m["alpha"],
                       weights=m["weights"] if initial_weights else None, plain=m["plain"],
                       source_shape=tuple(image_shape), preprocess=m["preprocess"],
                       bn_momentum=m["bn_momentum"])
