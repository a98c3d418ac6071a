"""The state of one run's training: a typed record, saved as state.json after every epoch."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from elastic_keras.errors import ElasticKerasError

# A run's life (FIDELITY.md R2): claimed (config written, no epoch yet) -> training ->
# trained (every phase done) -> evaluated (results.json written); failed at any point.
CLAIMED, TRAINING, TRAINED, EVALUATED, FAILED = (
    "claimed", "training", "trained", "evaluated", "failed")
STATUSES = (CLAIMED, TRAINING, TRAINED, EVALUATED, FAILED)
_ROLLBACK = ("phase", "phase_epoch", "lr", "schedule", "stopped", "last", "best")


@dataclass
class RunState:
    """Where a run stands (FIDELITY.md R8): its status, every epoch's numbers, the phase it is in, the
    learning-rate schedule, and the checkpoints it may resume from."""

    status: str = CLAIMED
    history: list[dict[str, Any]] = field(default_factory=list)
    phase: str | None = None  # the phase the last epoch belonged to
    phase_epoch: int = 0  # epochs done in that phase
    lr: float | None = None
    schedule: dict[str, Any] | None = None  # plateau / early-stopping counters (schedule.py)
    stopped: bool = False  # early stopping ended the phase
    last: dict[str, Any] | None = None  # the last epoch's checkpoint (weights + optimizer)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # per phase, by val loss
    sessions: list[dict[str, Any]] = field(default_factory=list)  # who trained it, where
    failure: str | None = None
    # The state after the epoch before the last, whose checkpoint is kept: where a run goes
    # back to when its last checkpoint is corrupt (FIDELITY.md R11).
    previous: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> RunState:
        """A state read from state.json; anything else ends in one line naming the file."""
        names = {f.name for f in fields(cls)}
        required = {"status", "history", "best"}
        if not isinstance(d, dict) or required - set(d) or d.get("status") not in STATUSES:
            missing = sorted(required - set(d)) if isinstance(d, dict) else "everything"
            raise ElasticKerasError(
                f"{where} is not a run state (missing {missing}, status "
                f"{d.get('status') if isinstance(d, dict) else None!r}); delete its run "
                "directory to train the run again")
        state = cls(**{k: v for k, v in d.items() if k in names})
        checkpoints = [state.last] if state.last is not None else []
        checkpoints += list(state.best.values()) if isinstance(state.best, dict) else [None]
        if not isinstance(state.history, list) or any(
                not isinstance(c, dict) or "file" not in c for c in checkpoints) or (
                state.history and state.status == TRAINING and state.last is None) or (
                state.previous is not None and (not isinstance(state.previous, dict) or {
                    "epochs", *_ROLLBACK} - set(state.previous))):
            raise ElasticKerasError(
                f"{where} is not a run state (its history or checkpoint records are "
                "malformed); delete its run directory to train the run again")
        return state

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def snapshot(self) -> dict[str, Any]:
        """What `roll_back` restores: this state's epoch count and where it stood."""
        return copy.deepcopy({"epochs": len(self.history),
                              **{k: getattr(self, k) for k in _ROLLBACK}})

    def roll_back(self) -> None:
        """Go back to `previous` (its epochs kept, the later ones dropped)."""
        point, self.previous = self.previous, None
        if point is None:
            raise ElasticKerasError("no earlier point to go back to")
        self.history = self.history[:point["epochs"]]
        for k in _ROLLBACK:
            setattr(self, k, point[k])

    def best_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint with the lowest validation loss over the whole run."""
        return min(self.best.values(), key=lambda b: b["val_loss"]) if self.best else None
