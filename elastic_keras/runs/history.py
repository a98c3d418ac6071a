"""A run's history.csv: one row per epoch, every exit's loss and accuracy in depth order."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ContextManager

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.training.state import RunState

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


def row_outputs(rows: list[dict[str, Any]]) -> list[str]:
    """The exits of history rows, in depth order (the order their columns were logged in)."""
    return [k.removesuffix("_accuracy") for k in rows[0]
            if k.endswith("_accuracy") and not k.startswith("val_")]


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


class HistoryFile:
    """The history half of a run directory (RunDir): history.csv, written after every epoch,
    rebuilt from state.json's history when it is missing."""

    dir: str

    if TYPE_CHECKING:  # the rest of the run directory: runs.rundir.RunDir
        def path(self, *parts: str) -> str: ...
        def _locked(self) -> None: ...
        def lock(self, wait: bool = False, log: Any = None) -> ContextManager[Any]: ...
        @property
        def exists(self) -> bool: ...
        @property
        def state(self) -> RunState | None: ...

    def write_history(self, rows: list[dict[str, Any]], outputs: list[str]) -> None:
        """history.csv: one row per epoch, columns in depth order of the exits."""
        self._locked()
        files.write_csv(self.path(HISTORY), history_columns(rows, outputs), rows)

    def history(self) -> Any:
        """history.csv as a DataFrame; when it is missing, rebuilt first from state.json's
        history, which holds every epoch's row (FIDELITY.md R11)."""
        if not os.path.isfile(self.path(HISTORY)):
            state = self.state if self.exists else None
            if not state or not state.history:
                raise ElasticKerasError(
                    f"no training history: {self.path(HISTORY)} is missing and "
                    f"{self.path('state.json') if state else 'the run'} holds no finished "
                    "epoch")
            try:
                with self.lock(wait=False):
                    self.write_history(state.history, row_outputs(state.history))
            except ElasticKerasError:  # RunBusy: another worker trains it
                raise ElasticKerasError(f"{self.path(HISTORY)} is missing and the run is being "
                                        "trained: it is written again after its next epoch"
                                        ) from None
        return read_history(self.path(HISTORY))
