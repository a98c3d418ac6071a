"""The papers' own numbers, shipped with the package (elastic_keras/report/reference/*.csv;
FIDELITY.md G12)."""

import csv
import math
from importlib import resources

from elastic_keras.errors import ElasticKerasError


def _rows(name):
    try:
        with resources.files(__package__).joinpath("reference", name).open(
                encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise ElasticKerasError(f"the package's paper numbers are missing ({name}): "
                                f"reinstall elastic-keras ({e})") from None


def number(text):
    """A printed number as float; blank or missing is NaN."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def table1():
    """Zhou et al. Table I: {model: {"cifar10_without": 6.35, ...}}."""
    return {r["model"]: {k: number(v) for k, v in r.items() if k != "model"}
            for r in _rows("table1.csv")}


def table1_sources():
    """Where each Table I number came from (paper/README.md): the run of ours it matches,
    which exit ('final' or 'penultimate'), its origin ('best', 'epoch' or 'not found'), its
    input size where not 224, and file:line."""
    return [{**r, "paper": number(r["paper"])} for r in _rows("table1_sources.csv")]


def table2():
    """Zhou et al. Table II, in its row order: [{"model", "conv_layers", ...}]."""
    return [{k: (v if k == "model" else number(v)) for k, v in r.items()}
            for r in _rows("table2.csv")]


def bai_table2():
    """Bai et al. Table II: {(model, alpha or None): {"first", "macs_first", "macs_last"}}."""
    out = {}
    for r in _rows("bai_table2_macs.csv"):
        alpha, first = number(r["alpha"]), number(r["first_weighted_exit"])
        out[(r["model"], None if math.isnan(alpha) else alpha)] = {
            "first": None if math.isnan(first) else int(first),
            "macs_first": number(r["macs_first_exit"]), "macs_last": number(r["macs_last_exit"])}
    return out
