"""Where each Table I number of the paper came from, and how it differs from our run of it."""

from elastic_keras.runs.config import PROTOCOL, PROTOCOLS
from elastic_keras.runs.names import RunName


def measured_on(src, protocol):
    """The run name a paper number was measured on, under `protocol`'s names."""
    backbone = {v: k for k, v in PROTOCOLS[protocol]["backbones"].items()}.get(src["run"],
                                                                              src["run"])
    return str(RunName(src["dataset"], backbone, src["column"] == "without"))


def other_input(src, protocol):
    """True when the number came from an input size that `protocol` does not train its run
    at (InceptionV3 CIFAR-100 without exits: 139 px; FIDELITY.md A10)."""
    if not src["input"]:
        return False
    cell = PROTOCOLS[protocol]["cells"].get(measured_on(src, protocol), {})
    return cell.get("model.input_size", PROTOCOL["model"]["input_size"]) != int(src["input"])


def source_run(src, protocol):
    """The run name a paper number was measured on (None where no run of `protocol` is
    trained as it was)."""
    return None if other_input(src, protocol) else measured_on(src, protocol)


def marks(src, name, protocol):
    """How the paper number of a cell differs from our run `name` of it (FIDELITY.md A8):
    a (another network), i (another input size), p (the second-to-last output), e (one
    epoch's value, not the lowest), ? (not found in the authors' results)."""
    return ("a" if measured_on(src, protocol) != name else "") + \
        ("i" if other_input(src, protocol) else "") + \
        ("p" if src["exit"] == "penultimate" else "") + \
        {"epoch": "e", "not found": "?"}.get(src["origin"], "")


UNLIKE = set("aip")  # marks that make a cell's Δ no like-with-like difference
