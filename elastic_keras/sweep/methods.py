"""The papers' loss weightings compared: one backbone per dataset, every scheme, N seeds."""

from __future__ import annotations

from typing import Any

from elastic_keras.errors import ElasticKerasError
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


def select_schemes(schemes: str | list[str] | None) -> list[str]:
    """The schemes `--schemes` names (comma-separated), in SCHEMES' order; None: all."""
    if not schemes:
        return list(SCHEMES)
    wanted = [w.strip() for w in schemes.split(",")] if isinstance(schemes, str) else schemes
    unknown = [w for w in wanted if w not in SCHEMES]
    if unknown or not wanted:
        raise ElasticKerasError(f"--schemes: unknown {unknown or schemes!r}; valid: "
                                f"{', '.join(SCHEMES)}")
    return [m for m in SCHEMES if m in wanted]


def method_configs(profile: str = "paper", protocol: str = "paper", data: str | None = None,
                   data_dir: str | None = None, weights: str | None = None,
                   backbone: str = "mobilenet", extra=(), schemes=None) -> tuple[
                       list[dict[str, Any]], list[str]]:
    """Resolved configs of every scheme's run (seed 0), scheme by scheme (`schemes`: a
    subset, which limits what trains, never what the methods table shows: FIDELITY.md G9),
    and the cells skipped (digits serves the 10-class cell only)."""
    configs, skipped = [], []
    for scheme in select_schemes(schemes):
        sets = SCHEMES[scheme]
        more = [*extra, *(f"{k}={v}" for k, v in sets.items())]
        found, skipped = run_configs("table1", profile, protocol, data, data_dir, weights,
                                     method_cells(backbone), more)
        for cfg in found:
            cfg["name"] = method_run(cfg["name"], scheme)
            configs.append(validate(cfg))
    return configs, skipped
