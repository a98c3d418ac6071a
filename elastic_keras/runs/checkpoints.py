"""A run's checkpoints (ckpt/): weights and optimizer state per epoch, the best by validation."""

from __future__ import annotations

import os
from typing import Any

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.training.state import RunState

CKPT = "ckpt"


class CheckpointFiles:
    """The checkpoint half of a run directory (RunDir): every file under ckpt/."""

    dir: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def _locked(self) -> None:
        raise NotImplementedError

    @property
    def state(self) -> RunState | None:
        raise NotImplementedError

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
        net.load_weights(self.path(checkpoint["file"]))

    def load_optimizer(self, optimizer: Any, variables: Any, checkpoint: dict[str, Any]) -> None:
        optimizer.build(variables)
        arrays = files.load_arrays(self.path(checkpoint["optimizer"]))
        if len(arrays) != len(optimizer.variables):
            raise ElasticKerasError(f"{self.dir}: optimizer checkpoint does not fit the model")
        for var, value in zip(optimizer.variables, arrays):
            var.assign(value)

    def prune_checkpoints(self, state: RunState) -> None:
        """Remove the checkpoints this run wrote that its state no longer points to."""
        self._locked()
        keep = {state.last["file"], state.last.get("optimizer")} if state.last else set()
        keep |= {b["file"] for b in state.best.values()}
        files.remove_unlisted(self.path(CKPT), {os.path.basename(k) for k in keep if k},
                              prefixes=("epoch-", "best-epoch-"))

    def best_checkpoint(self, state: RunState | None = None) -> dict[str, Any]:
        """The checkpoint with the lowest validation loss over the whole run."""
        state = state or self.state
        best = state.best_checkpoint() if state else None
        if best is None:
            raise ElasticKerasError(f"{self.dir}: no checkpoint yet (has the run trained?)")
        return best
