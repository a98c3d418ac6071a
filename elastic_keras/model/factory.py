"""The one model factory: elastic and plain models, and `elastify` for any network."""

from __future__ import annotations

import contextlib
import os

import keras

from elastic_keras.errors import ElasticKerasError
from elastic_keras.model.exits import FINAL, ElasticModel, exit_name
from elastic_keras.backend.keras_internals import graph_nodes, node_of, outputs_in_graph
from elastic_keras.model.registry import DEFAULT_DROPOUT, PRECISIONS, get_spec  # noqa: F401


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
    # Under a mixed policy the softmax (and so the loss) stays float32 (FIDELITY.md B8).
    mixed = keras.config.dtype_policy().compute_dtype != "float32"
    out = L.Dense(classes, activation="softmax", name=name,
                  dtype="float32" if mixed else None)(x)
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
                bn_momentum: float | None = None, precision: str = "float32") -> ElasticModel:
    """Build the elastic model (paper section III) or the plain baseline of `backbone`.

    weights: "imagenet", None, a path to a local weights file of the backbone without its
    top (Keras' official `*_notop.h5`), or a folder holding that file under its official
    name (e.g. ~/.keras/models). plain=True gives the backbone with the final exit alone
    ("w/o Elastic Structure").
    source_shape: when given (e.g. (32, 32, 3) for CIFAR), the model takes native-size
    uint8-valued images of that shape and its first layer resizes them to `input_size`
    and scales them (`preprocess`: "paper" [0, 1] or "authors" [-1, 1]) inside the graph.
    bn_momentum: BatchNorm momentum of every BatchNormalization layer (demo profile, T8).
    precision: "float32" or "mixed_bfloat16" (float32 variables, bfloat16 arithmetic, the
    heads' softmax in float32: FIDELITY.md B8); the global dtype policy is left as it was.
    """
    with dtype_policy(precision):
        return _build(backbone, classes, input_size, dropout, alpha, weights, plain,
                      source_shape, preprocess, bn_momentum)


@contextlib.contextmanager
def dtype_policy(name: str):
    """A context in which Keras builds layers under dtype policy `name`; the global policy
    is restored on exit (it is never left changed)."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _build(backbone, classes, input_size, dropout, alpha, weights, plain, source_shape,
           preprocess, bn_momentum):
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
        from elastic_keras.data.preprocessing import Preprocess

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
                       bn_momentum=m["bn_momentum"],
                       precision=cfg["train"].get("precision", "float32"))
