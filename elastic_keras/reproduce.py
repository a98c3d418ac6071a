"""Reproduction driver: train every run of a table that is not finished, then write tables."""

import os
import time

from .config import load_config
from .errors import ElasticKerasError
from .registry import TABLE1_BACKBONES
from .rundir import RunDir, run_dir_for

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "table1")
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100}

# Run names are the config files' stems (configs/table1/<name>.toml).
TABLES = {
    "table1": [f"{ds}-{bb}-{kind}" for ds in DATASET_CLASSES for bb in TABLE1_BACKBONES
               for kind in ("elastic", "plain") if not (bb == "resnet50_5" and kind == "plain")],
    # Table II reuses Table I's CIFAR-100 DenseNet runs.
    "table2": ["cifar100-densenet169-elastic", "cifar100-densenet169-plain",
               "cifar100-densenet121-plain"],
}


def select(table, runs=None):
    """The table's run names, or the subset `runs` (run names or backbone names)."""
    if table not in TABLES:
        raise ElasticKerasError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")
    names = TABLES[table]
    if not runs:
        return names
    wanted = [r.strip() for r in runs.split(",") if r.strip()] if isinstance(runs, str) else runs
    chosen = [n for n in names if n in wanted or n.split("-", 1)[1].rsplit("-", 1)[0] in wanted]
    unknown = [w for w in wanted if not any(w == n or f"-{w}-" in n for n in names)]
    if unknown:
        raise ElasticKerasError(f"--runs: {unknown} match no run of {table}; valid: run names "
                                f"({', '.join(names[:2])}, ...) or backbones "
                                f"({', '.join(TABLE1_BACKBONES)})")
    return chosen


def run_configs(table, profile="paper", data=None, data_dir=None, weights=None, runs=None,
                extra=()):
    """Resolved configs of the runs to do. `data` replaces the dataset: 'synthetic' keeps
    the cell's class count, 'digits' serves the 10-class cells only."""
    configs, skipped = [], []
    for name in select(table, runs):
        dataset = name.split("-", 1)[0]
        sets = list(extra)
        if data:
            if data == "digits" and DATASET_CLASSES[dataset] != 10:
                skipped.append(name)
                continue
            sets += [f"data.dataset={data}", f"data.num_classes={DATASET_CLASSES[dataset]}"]
        if data_dir:
            sets.append(f"data.data_dir={data_dir}")
        if weights:
            sets.append(f"model.weights={'null' if weights.lower() == 'none' else weights}")
        path = os.path.join(CONFIG_DIR, f"{name}.toml")
        configs.append(load_config(path, sets, profile=profile))
    return configs, skipped


def reproduce(table, profile="paper", data=None, data_dir=None, weights=None, runs=None,
              runs_root="runs", out_dir="results", paper_dir=None, extra=(), allow_cpu=False,
              log=print):
    """Train what is not finished (resuming partial runs), then write the tables."""
    from . import files
    from .tables import write_tables
    from .train import train

    configs, skipped = run_configs(table, profile, data, data_dir, weights, runs, extra)
    for name in skipped:
        log(f"skip {name}: dataset {data} has 10 classes, this cell needs more")
    files.write_json(os.path.join(runs_root, "last.json"), {"profile": profile, "data": data})
    took = []
    for i, cfg in enumerate(configs, 1):
        run = RunDir(run_dir_for(cfg, runs_root))
        done = (f"; {len(took)} done, {_fmt(sum(s for _, s in took))} of training, last "
                f"{took[-1][0]} {_fmt(took[-1][1])}") if took else ""
        log(f"=== [{i}/{len(configs)}] {cfg['name']} ({profile} profile, data "
            f"{cfg['data']['dataset']}){done}")
        start = time.time()
        train(cfg, runs_root=runs_root, log=log, allow_cpu=allow_cpu)
        took.append((cfg["name"], _train_seconds(run) if run.finished else time.time() - start))
    log(f"=== {len(configs)} runs finished, {_fmt(sum(s for _, s in took))} of training:")
    for name, seconds in took:
        log(f"    {name:<32} {_fmt(seconds)}")
    return write_tables(runs_root, profile, dataset_tag=data, out_dir=out_dir,
                        paper_dir=paper_dir)


def _train_seconds(run):
    return sum(row.get("time_s", 0.0) for row in (run.state or {}).get("history", []))


def _fmt(seconds):
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
