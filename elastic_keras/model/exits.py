"""Exit records: what each output of an elastic model is, where it taps, and what it costs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras

from elastic_keras.model.costs import cost_of
from elastic_keras.errors import ElasticKerasError
from elastic_keras.backend.keras_internals import node_of



FINAL = "final"  # name of the final exit's output, in elastic and plain models alike


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
