"""A run's checkpoints (ckpt/): weights and optimizer state per epoch, the best by validation;
and what the training loop asks of a run's files (it touches none itself)."""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING, Any

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.training.loop import Diverged, Epoch, Event, Restore, epochs
from elastic_keras.training.state import RunState

CKPT = "ckpt"
# What a truncated, corrupt or missing checkpoint raises (h5py, numpy, zipfile).
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class CorruptCheckpoint(ElasticKerasError):
    """A checkpoint file that cannot be loaded; its message names the file."""

    def __init__(self, path: str, why: Any) -> None:
        super().__init__(f"checkpoint {path} is unreadable ({str(why).strip()[:200]})")
        self.path = path


class CheckpointFiles:
    """The checkpoint half of a run directory (RunDir): every file under ckpt/."""

    dir: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    if TYPE_CHECKING:  # the rest of the run directory: runs.rundir.RunDir
        def _locked(self) -> None: ...
        def write_state(self, state: RunState) -> None: ...
        def write_history(self, rows: list[dict[str, Any]], outputs: list[str]) -> None: ...
        def fail(self, state: RunState, message: str) -> None: ...
        @property
        def state(self) -> RunState | None: ...

    def fit(self, job: Any, state: RunState, log=print, verbose: bool = True) -> None:
        """Train the run: the loop's epochs, each written here (checkpoints, then the state
        that points to them). A corrupt last checkpoint sends the run back to the one
        before, once, and says so; without one the run fails naming the file (R11)."""
        try:
            for event in epochs(job, state, log, verbose):
                self.take(job, state, event)
        except CorruptCheckpoint as e:
            self.fall_back(state, e, log)
            for event in epochs(job, state, log, verbose):
                self.take(job, state, event)
        self.write_state(state)

    def take(self, job: Any, state: RunState, event: Event) -> None:
        """Do what one event of the loop asks of the run's files; a divergence is recorded
        as the run's failure and raised (no results are written: T9)."""
        if isinstance(event, Restore):
            self.load_weights(job.net, event.checkpoint)
            if event.optimizer:
                self.load_optimizer(job.trainer.optimizer, job.trainer.trainable_variables,
                                    event.checkpoint)
        elif isinstance(event, Diverged):
            self.fail(state, event.message)
            raise ElasticKerasError(event.message)
        else:
            self.save_epoch(job, state, event)

    def save_epoch(self, job: Any, state: RunState, epoch: Epoch) -> None:
        """The epoch's checkpoints first, then the state and history that point to them."""
        row = epoch.row
        tag = f"epoch-{row['epoch']:04d}"
        state.last = self.save_checkpoint(job.net, job.trainer.optimizer, tag)
        if epoch.best:
            saved = self.save_checkpoint(job.net, None, f"best-{tag}")
            state.best[row["phase"]] = {"epoch": row["epoch"], "phase": row["phase"],
                                        "val_loss": row["val_loss"], **saved}
        self.write_state(state)
        self.write_history(state.history, [e["output"] for e in job.net.exits])
        self.prune_checkpoints(state)

    def save_checkpoint(self, net: Any, optimizer: Any, tag: str) -> dict[str, str]:
        """Weights (and optimizer state when given) under ckpt/, atomically; file names."""
        self._locked()
        saved = {"file": os.path.join(CKPT, f"{tag}.weights.h5")}
        with files.atomic_path(self.path(saved["file"]), suffix=".weights.h5") as tmp:
            net.save_weights(tmp)
        if optimizer is not None:
            saved["optimizer"] = os.path.join(CKPT, f"{tag}.optimizer.npz")
            files.save_arrays(self.path(saved["optimizer"]), optimizer.variables)
        return saved

    def load_weights(self, net: Any, checkpoint: dict[str, Any]) -> None:
        path = self.path(checkpoint["file"])
        try:
            net.load_weights(path)
        except UNREADABLE as e:
            raise CorruptCheckpoint(path, e) from None

    def load_optimizer(self, optimizer: Any, variables: Any, checkpoint: dict[str, Any]) -> None:
        optimizer.build(variables)
        path = self.path(checkpoint["optimizer"])
        try:
            arrays = files.load_arrays(path)
        except UNREADABLE as e:
            raise CorruptCheckpoint(path, e) from None
        if len(arrays) != len(optimizer.variables):
            raise CorruptCheckpoint(path, f"{len(arrays)} arrays for an optimizer of "
                                          f"{len(optimizer.variables)} variables")
        for var, value in zip(optimizer.variables, arrays):
            var.assign(value)

    def fall_back(self, state: RunState, corrupt: CorruptCheckpoint, log=print) -> None:
        """After a corrupt last checkpoint: go back to the one before it, if the state kept
        one (the epochs after it are trained again), and say so; else fail with one line
        naming the file (FIDELITY.md R11)."""
        last = {state.last.get("file"), state.last.get("optimizer")} if state.last else set()
        if os.path.relpath(corrupt.path, self.dir) not in last or not state.previous:
            raise ElasticKerasError(f"{corrupt}; no earlier checkpoint to go back to: delete "
                                    f"{self.dir} to train the run again") from None
        epochs = state.previous["epochs"] if state.previous else 0
        state.roll_back()
        self.write_state(state)
        back = os.path.basename(state.last["file"]) if state.last else "none"
        log(f"{corrupt}: going back to the checkpoint of epoch {epochs} (ckpt/{back}); "
            f"epoch {epochs + 1} is trained again")

    def prune_checkpoints(self, state: RunState) -> None:
        """Remove the checkpoints this run wrote that its state no longer points to."""
        self._locked()
        keep = set()
        for point in (state.as_dict(), state.previous or {}):  # the fallback's files too
            if point.get("last"):
                keep |= {point["last"]["file"], point["last"].get("optimizer")}
            keep |= {b["file"] for b in point.get("best", {}).values()}
        files.remove_unlisted(self.path(CKPT), {os.path.basename(k) for k in keep if k},
                              prefixes=("epoch-", "best-epoch-"))

    def best_checkpoint(self, state: RunState | None = None) -> dict[str, Any]:
        """The checkpoint with the lowest validation loss over the whole run."""
        state = state or self.state
        best = state.best_checkpoint() if state else None
        if best is None:
            raise ElasticKerasError(f"{self.dir}: no checkpoint yet (has the run trained?)")
        return best
