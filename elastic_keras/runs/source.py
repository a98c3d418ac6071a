"""What a SOURCE names (a run directory, a .keras file or an export): a model and its metadata."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.calibration import read_calibration
from elastic_keras.inference.thresholds import BUDGET_CSV, operating_point, read_budget

# Class names where the dataset defines them (CIFAR-10's batches.meta, CIFAR-100's meta
# "fine_label_names", digits' own labels).
CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
    "cifar100": tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle
        bowl boy bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee
        clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
        forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard
        lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter
        palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon
        ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
        streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
        trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()),
    "digits": tuple(str(d) for d in range(10)),
}


@dataclass
class Source:
    """A trained elastic model and what is known about it."""

    model: object
    path: str
    kind: str  # "run" or "keras"
    meta: dict = field(default_factory=dict)  # the manifest's source fields (export)

    @property
    def threshold(self):
        """The threshold the run's calibration (first) or budget chose, else None."""
        return self.meta.get("threshold")

    @property
    def class_names(self):
        return self.meta.get("class_names")

    @property
    def criterion(self) -> str:
        return self.meta.get("criterion") or "max_prob"


def config_hash(cfg: dict) -> str:
    """sha256 of the config keys that make the run what it is (rundir's identity)."""
    from elastic_keras.runs.rundir import config_identity

    text = json.dumps(config_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def budget_pick(run) -> dict | None:
    """The operating point `budget` names in its log, from the run's budget.csv: the cheapest
    threshold whose validation accuracy reaches the final exit's (None when there is none)."""
    rows = read_budget(run.output(BUDGET_CSV))
    pick = operating_point(rows) if rows else None
    if pick is None:
        return None
    return {"threshold": float(pick["threshold"]), "criterion": pick["criterion"],
            "val_accuracy": float(pick["val_accuracy"]),
            "macs_fraction": float(pick["macs_fraction"]),
            "rule": "cheapest threshold reaching the final exit's validation accuracy"}


def _run_meta(run) -> dict[str, Any]:
    """Source fields of a run: its name, config hash, classes, chosen thresholds."""
    cfg = run.config
    meta: dict[str, Any] = {"source": {"kind": "run", "path": os.path.abspath(run.dir), "name": cfg["name"],
                       "profile": cfg["profile"], "dataset": cfg["data"]["dataset"],
                       "checkpoint": run.best_checkpoint()["file"]},
            "config_hash": config_hash(cfg), "thresholds": {},
            "class_names": CLASS_NAMES.get(cfg["data"]["dataset"])}
    pick = budget_pick(run)
    if pick:
        meta["thresholds"]["budget"] = pick
        meta["threshold"], meta["criterion"] = pick["threshold"], pick["criterion"]
    cal = read_calibration(run.dir)  # written by `calibrate`; optional
    if cal is not None:
        meta["thresholds"]["calibration"] = cal.get("threshold")
        meta["temperatures"], meta["certificate"] = cal.get("temperatures"), cal.get(
            "certificate")
        if cal.get("threshold") is not None:  # a certified threshold comes first
            meta["threshold"], meta["criterion"] = cal["threshold"], cal.get("criterion")
    if meta.get("class_names") and len(meta["class_names"]) != cfg["resolved"]["num_classes"]:
        meta["class_names"] = None
    return meta


def load_source(path) -> Source:
    """The model of a run directory (its best checkpoint; no data is read) or of a `.keras`
    file made by `elastify`, with its metadata."""
    from elastic_keras.inference.predictors import load
    from elastic_keras.runs.found import open_run

    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ElasticKerasError(f"SOURCE must be a run directory or a .keras file, got {path}")
        return Source(load(path), path, "keras", {
            "source": {"kind": "keras", "path": os.path.abspath(path)}, "thresholds": {}})
    if not os.path.isdir(path):
        raise ElasticKerasError(f"SOURCE not found: {path}")
    run = open_run(path)
    return Source(run.model(), run.dir, "run", _run_meta(run))


def default_export_dir(source_path, fmt: str) -> str:
    """Where `export` writes without --out: RUN/export-FORMAT, or FILE-export-FORMAT."""
    from elastic_keras.inference.export import EXPORT_PREFIX
    from elastic_keras.runs.rundir import RunDir

    path = os.path.normpath(os.fspath(source_path))
    if os.path.isdir(path):
        return RunDir(path).output(f"{EXPORT_PREFIX}{fmt}")
    return f"{os.path.splitext(path)[0]}-{EXPORT_PREFIX}{fmt}"
