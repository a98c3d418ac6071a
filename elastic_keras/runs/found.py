"""Run directories found: one named by the user, or every one under a folder."""

from __future__ import annotations

import os

from elastic_keras.errors import ElasticKerasError
from elastic_keras.runs.checkpoints import CKPT
from elastic_keras.runs.rundir import CONFIG, RunDir


def open_run(path):
    """An existing run directory; fail clearly when `path` is not one."""
    run = RunDir(path)
    if not run.exists:
        raise ElasticKerasError(f"not a run directory (no {CONFIG}): {path}")
    return run


def find_runs(root):
    """Every run directory under `root` (sorted), whatever its state."""
    found = []
    for folder, dirs, names in os.walk(os.fspath(root)):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != CKPT)
        if CONFIG in names:
            found.append(RunDir(folder))
            dirs[:] = []
    return sorted(found, key=lambda r: r.dir)
