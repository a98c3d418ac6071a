"""A run's history.csv: one row per epoch, every exit's loss and accuracy in depth order."""

from __future__ import annotations

import os
from typing import Any

from elastic_keras.errors import ElasticKerasError

HISTORY = "history.csv"


def history_columns(rows: list[dict[str, Any]], outputs: list[str]) -> list[str]:
    """epoch, phase, phase_epoch, lr, loss, each exit's loss and accuracy in depth order,
    clipped, the same for validation, then anything else (time)."""
    per = [f"{o}_{m}" for o in outputs for m in ("loss", "accuracy")] + ["clipped"]
    lead = ["epoch", "phase", "phase_epoch", "lr", "loss", *per,
            "val_loss", *[f"val_{c}" for c in per]]
    present = set().union(*rows) if rows else set()
    rest = [c for row in rows for c in row if c not in lead]
    return [c for c in lead if c in present] + list(dict.fromkeys(rest))


def read_history(path: str | os.PathLike[str]) -> Any:
    """A run's history.csv (a run directory or the file itself) as a pandas DataFrame."""
    import pandas as pd

    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".csv"):
        path = os.path.join(path, HISTORY)
    if not os.path.isfile(path):
        raise ElasticKerasError(f"no training history: {path} not found (has the run trained?)")
    df = pd.read_csv(path)
    missing = [c for c in ("epoch", "phase", "lr", "loss", "val_loss") if c not in df.columns]
    if missing or df.empty:
        raise ElasticKerasError(f"{path}: not a history.csv (missing columns {missing} or no rows)")
    return df
