"""The cells of a table a sweep trains: which runs (--runs), and their resolved configs."""

import os

from elastic_keras.data.cifar import CIFAR
from elastic_keras.data.datasets import serves
from elastic_keras.errors import ElasticKerasError
from elastic_keras.model.registry import REGISTRY
from elastic_keras.report.tables import table_runs
from elastic_keras.runs.config import load_config
from elastic_keras.runs.names import RunName


def select(table, runs=None, protocol="paper"):
    """The table's run names, or the subset `runs` (run names or backbone names)."""
    names = table_runs(table, protocol)
    if not runs:
        return names
    wanted = [r.strip() for r in runs.split(",") if r.strip()] if isinstance(runs, str) else runs
    backbone = {n: RunName.parse(n).backbone for n in names}
    chosen = [n for n in names if n in wanted or backbone[n] in wanted]
    unknown = [w for w in wanted if w not in names and w not in backbone.values()]
    if unknown:
        raise ElasticKerasError(
            f"--runs: {unknown} match no run of {table}; valid: run names ({names[0]}, ...) "
            f"or backbones ({', '.join(sorted(set(backbone.values()) & set(REGISTRY)))})")
    return chosen


def run_configs(table, profile="paper", protocol="paper", data=None, data_dir=None,
                weights=None, runs=None, extra=()):
    """Resolved configs of the runs to do, and the runs skipped. `data` replaces the
    dataset: 'synthetic' keeps the cell's class count, 'digits' serves the 10-class cells."""
    configs, skipped = [], []
    for name in select(table, runs, protocol):
        dataset = RunName.parse(name).dataset
        classes = CIFAR[dataset]["classes"]
        sets = list(extra)
        if data:
            if not serves(data, dataset):
                skipped.append(name)
                continue
            sets += [f"data.dataset={data}", f"data.num_classes={classes}"]
        if data_dir:  # absolute: workers may start elsewhere (ray)
            sets.append(f"data.data_dir={os.path.abspath(data_dir)}")
        if weights:
            sets.append("model.weights=" + ("null" if weights.lower() == "none" else weights
                                             if weights == "imagenet" else os.path.abspath(weights)))
        configs.append(load_config(name, sets, profile=profile, protocol=protocol))
    return configs, skipped
