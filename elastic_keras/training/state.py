"""The state of one run's training: a typed record, saved as state.json after every epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from elastic_keras.errors import ElasticKerasError

# A run's life (FIDELITY.md R2): claimed (config written, no epoch yet) -> training ->
# trained (every phase done) -> evaluated (results.json written); failed at any point.
CLAIMED, TRAINING, TRAINED, EVALUATED, FAILED = (
    "claimed", "training", "trained", "evaluated", "failed")
STATUSES = (CLAIMED, TRAINING, TRAINED, EVALUATED, FAILED)


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
        return cls(**{k: v for k, v in d.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def best_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint with the lowest validation loss over the whole run."""
        return min(self.best.values(), key=lambda b: b["val_loss"]) if self.best else None
