"""Seeds of a run: one config per seed, each its own run directory (FIDELITY.md R10, D10)."""

from __future__ import annotations

import copy
from typing import Any

from elastic_keras.checks import check_int
from elastic_keras.runs.names import seed_name


def check_seeds(seeds: Any) -> int:
    """The number of seeds, an int >= 1 (--seeds)."""
    return check_int("--seeds", seeds, 1)


def seed_configs(cfg: dict[str, Any], seeds: int) -> list[dict[str, Any]]:
    """`cfg` expanded into its seeds 0..seeds-1 (the hook a trainer of several seeds at once
    calls). Seed 0 is `cfg` unchanged, so its finished run is reused; seed s > 0 adds s to
    train.seed (initialisation of what is not pretrained, data order, Dropout) and to
    data.seed (the train/validation split; the test set never moves: FIDELITY.md D10), and
    is named `<name>-seed<s>` (runs/names.py)."""
    out = []
    for s in range(check_seeds(seeds)):
        c = copy.deepcopy(cfg)
        c["name"] = seed_name(cfg["name"], s)
        c["train"]["seed"] = cfg["train"]["seed"] + s
        c["data"]["seed"] = cfg["data"]["seed"] + s
        out.append(c)
    return out
