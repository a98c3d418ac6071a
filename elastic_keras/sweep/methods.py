"""The papers' loss weightings compared: one backbone per dataset, every scheme, N seeds."""

from __future__ import annotations

from typing import Any

from elastic_keras.runs.config import validate
from elastic_keras.runs.names import RunName, method_run
from elastic_keras.sweep.cells import run_configs

# Each scheme through the same two-phase trainer (FIDELITY.md G18): what it sets.
SCHEMES: dict[str, dict[str, Any]] = {
    "uniform": {},  # Zhou et al.: Table I's elastic run itself (so reused)
    "second_half": {"loss.weights": "second_half"},  # Bai et al.
    "auxnet": {"loss.weights": "auxnet"},  # AuxNet's gamma, literal reading (L3)
    "multi_way": {"loss.weights": "auxnet", "train.backprop": "multi_way"},  # AuxNet (L4)
    "heads_only": {"phases.full.epochs": 0},  # the frozen-backbone phase alone (SDN's IC-only)
}
SCHEME_LABELS = {"uniform": "uniform (Zhou et al.)", "second_half": "second half (Bai et al.)",
                 "auxnet": "AuxNet gamma", "multi_way": "AuxNet gamma, multi-way backprop",
                 "heads_only": "heads only (backbone frozen)"}


def method_cells(backbone: str = "mobilenet") -> list[str]:
    """The Table I cells whose elastic run each scheme varies: one per CIFAR dataset."""
    return [str(RunName(ds, backbone)) for ds in ("cifar10", "cifar100")]


def method_configs(profile: str = "paper", protocol: str = "paper", data: str | None = None,
                   data_dir: str | None = None, weights: str | None = None,
                   backbone: str = "mobilenet", extra=()) -> tuple[list[dict[str, Any]],
                                                                  list[str]]:
    """Resolved configs of every scheme's run (seed 0), scheme by scheme, and the cells
    skipped (digits serves the 10-class cell only)."""
    configs, skipped = [], []
    for scheme, sets in SCHEMES.items():
        more = [*extra, *(f"{k}={v}" for k, v in sets.items())]
        found, skipped = run_configs("table1", profile, protocol, data, data_dir, weights,
                                     method_cells(backbone), more)
        for cfg in found:
            cfg["name"] = method_run(cfg["name"], scheme)
            configs.append(validate(cfg))
    return configs, skipped
