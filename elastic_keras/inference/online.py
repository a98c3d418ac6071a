"""Online risk control: the threshold in force, moved by a few audited early answers."""

# A pure object fed a stream of observations (it knows nothing of HTTP, threads or files).
# Per served image t: X_t = 1 when it left early, was audited (a coin of probability F drawn
# independently of the image) and its early class differs from the final exit's. Then
# E[X_t | past] = F r_t, r_t the disagreement risk per served image: X_t / F in {0, 1/F} is
# the inverse-propensity weighted observation, and the images that reached the final exit
# count 0 (FIDELITY.md W1).

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from elastic_keras.checks import check_choice, check_int, check_number
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.sequential import Monitor

POLICIES = ("aci", "step")


@dataclass
class Change:
    """One threshold change and its evidence: the monitor's window when it was made."""

    image: int  # images served before it took force
    old: float
    new: float
    reason: str  # "alarm", "aci" (its rule) or "step back" (step policy)
    bound: float  # upper bound on the window's risk (level delta)
    lower: float  # lower bound (the alarm: above epsilon)
    served: int  # images served in the window
    audits: int  # audits returned in the window
    disagreements: int  # of those, how many disagreed

    def as_dict(self) -> dict:
        """JSON-ready: an infinite threshold (nobody leaves early) as None."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v)
                for k, v in asdict(self).items()}


class Controller:
    """The threshold in force, moved by audited early answers (FIDELITY.md W1, W2).

    grid: `calibrate`'s thresholds, safe end first (calibration.threshold_grid());
    calibrated_index: the certified threshold's place in it, the cheapest ever put in force.
    Feed it every image as its answer is sent (`observe_served`) and every audit's answer
    (`observe_audit`); read `threshold`, `bound`, `served`, `audits`, `alarm`, `alarms`,
    `changes`, `status()`. Not thread-safe: a server calls it under one lock. A monitor window opens at the start, at each alarm and
    at each step policy move; an alarm (its lower bound on the window's risk above epsilon)
    puts the safe end in force. Then policy "aci": the index follows adaptive conformal
    inference's rule on the weighted disagreements (Gibbs and Candes 2021), `gamma` grid
    steps per unit of risk, never past the calibrated index; "step": one grid step back once
    a window has served `patience` images and its bound is under epsilon / 2.
    """

    def __init__(self, grid, calibrated_index: int, epsilon: float, delta: float = 0.1,
                 audit_rate: float = 0.05, policy: str = "step", gamma: float = 1.0,
                 patience: int = 500):
        self.grid = np.asarray(grid, dtype=np.float64)
        if self.grid.ndim != 1 or not len(self.grid) or np.any(np.diff(self.grid) > 0):
            raise ElasticKerasError("grid must be thresholds from the safe end down, got "
                                    f"{np.asarray(grid).ravel()[:4].tolist()}...")
        self.calibrated_index = check_int("calibrated_index", calibrated_index, 0)
        if calibrated_index >= len(self.grid):
            raise ElasticKerasError(f"calibrated_index must be below the grid's length "
                                    f"{len(self.grid)}, got {calibrated_index}")
        self.epsilon = check_number("epsilon", epsilon, 0, 1, low_open=True)
        self.delta = check_number("delta", delta, 0, 1, low_open=True)
        self.audit_rate = check_number("audit_rate", audit_rate, 0, 1, low_open=True,
                                       high_open=False)
        self.policy = check_choice("policy", policy, POLICIES)
        self.gamma = check_number("gamma", gamma, 0, None, low_open=True)
        self.patience = check_int("patience", patience, 1)
        self.index, self._alpha = self.calibrated_index, float(self.calibrated_index)
        self.served = self.alarms = self.audits = self._window = 0
        self.alarm = False  # an alarm was raised since the calibrated threshold was in force
        self.changes: list[Change] = []
        self._outstanding: set[int] = set()
        self.monitor, self.labels = self._monitor(), self._monitor()

    def _monitor(self) -> Monitor:
        return Monitor(self.epsilon, self.delta, self.audit_rate)

    @property
    def threshold(self) -> float:
        """The threshold in force (max softmax after temperature scaling; inf: none leave)."""
        return float(self.grid[self.index])

    @property
    def bound(self) -> float:
        """Upper bound on the average risk per image served in the current window."""
        return self.monitor.upper()

    def should_audit(self, rng) -> bool:
        """The audit coin for an image that left early: a draw of `rng` (a NumPy Generator),
        which must not depend on the image."""
        return bool(rng.random() < self.audit_rate)

    def observe_served(self, exited_early: bool, audited: bool = False) -> int:
        """Count one image answered at the threshold in force; `audited`: it left early and
        goes on to the final exit. Returns its ticket for observe_audit / observe_label."""
        if audited and not exited_early:
            raise ElasticKerasError("audited must be false for an image that reached the "
                                    "final exit (its disagreement is 0 by definition)")
        ticket, self.served = self.served, self.served + 1
        self.monitor.served += 1
        self.monitor.early += bool(exited_early)
        if audited:
            self._outstanding.add(ticket)
            self.monitor.pending += 1
        self._alpha = min(self._alpha + self.gamma * self.epsilon, self.calibrated_index)
        self._steer()
        return ticket

    def observe_audit(self, ticket: int, disagree: bool) -> None:
        """The final exit's answer for an audited image: `disagree` when its class differs
        from the early answer that was sent."""
        if ticket not in self._outstanding:
            raise ElasticKerasError(f"ticket {ticket!r} is not an audit outstanding")
        self._outstanding.discard(ticket)
        self.audits += 1  # returned in all, late ones too
        if disagree:  # ACI's step on the weighted loss X / F
            self._alpha -= self.gamma / self.audit_rate
        if ticket >= self._window:  # an audit from before an alarm counts in no window
            self.monitor.pending -= 1
            self.monitor.audits += 1
            self.monitor.hits += bool(disagree)
        self._steer()

    def observe_label(self, ticket: int, drop: bool | None) -> None:
        """Labelled feedback on a served image: `drop` (its answer wrong where the final
        exit's is right) where known: False for one that reached the final exit, True or
        False for an audited early one, None for an early one not audited. The labelled
        images must be chosen independently of their content (FIDELITY.md W1)."""
        if isinstance(ticket, bool) or not isinstance(ticket, int) or not \
                0 <= ticket < self.served:
            raise ElasticKerasError(f"ticket must be one observe_served returned, got {ticket!r}")
        if ticket >= self._window:
            self.labels.served += 1
            self.labels.early += 1  # unknown here: the bound leans on the audits alone
            self.labels.audits += drop is not None
            self.labels.hits += drop is True
            self._steer()

    def _steer(self) -> None:
        """Move the threshold: to the safe end on an alarm, else by the policy's rule
        (FIDELITY.md W2)."""
        if self.monitor.alarm or self.labels.alarm:
            self.alarms += 1
            self.alarm, self._alpha = True, 0.0
            self._move(0, "alarm", window=True)
        elif self.policy == "aci":
            self._move(min(max(0, math.floor(self._alpha)), self.calibrated_index), "aci")
        elif (self.index < self.calibrated_index and self.monitor.served >= self.patience
              and self.monitor.below(self.epsilon / 2)):
            self._move(self.index + 1, "step back", window=True)

    def _move(self, index: int, reason: str, window: bool = False) -> None:
        """Put grid[index] in force and log it with the window's evidence; `window`: open a
        new one."""
        if index == self.index and not window:
            return
        m = self.monitor
        self.changes.append(Change(self.served, self.threshold, float(self.grid[index]),
                                   reason, m.upper(), m.lower(), m.served, m.audits, m.hits))
        self.index = index
        self.alarm = self.alarm and index < self.calibrated_index
        if window:
            self._window, self.monitor, self.labels = self.served, self._monitor(), \
                self._monitor()

    def status(self) -> dict:
        """What a server shows: the threshold in force, its bound, audits, alarms."""
        def finite(v):
            return None if math.isinf(v) else v

        return {"threshold": finite(self.threshold), "policy": self.policy,
                "calibrated_threshold": finite(float(self.grid[self.calibrated_index])),
                "bound": self.bound, "lower": self.monitor.lower(), "epsilon": self.epsilon,
                "delta": self.delta, "audit_rate": self.audit_rate, "served": self.served,
                "audits": self.audits, "alarm": self.alarm, "alarms": self.alarms,
                "changes": len(self.changes)}


def from_calibration(calibration: dict, epsilon=None, delta=None, **kwargs) -> Controller:
    """A Controller over `calibrate`'s grid from a calibration.json's content; epsilon and
    delta default to its certificate's."""
    from elastic_keras.inference.calibration import calibrated_threshold, threshold_grid

    grid, cert = threshold_grid(), calibration.get("certificate") or {}
    start = calibrated_threshold(calibration)
    # the cheapest grid threshold at or above the certified one (it is on the grid)
    index = int(np.flatnonzero(grid >= start - 1e-12)[-1]) if math.isfinite(start) else 0
    return Controller(grid, index, cert.get("epsilon", 0.02) if epsilon is None else epsilon,
                      cert.get("delta", 0.1) if delta is None else delta, **kwargs)
