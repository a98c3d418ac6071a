"""Typed names: a setting (profile, protocol, data) and a run (data, backbone, kind), and
the folders they name. The one place a run's or a setting's folder name is computed."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from elastic_keras.errors import ElasticKerasError

CIFAR_SETS = ("cifar10", "cifar100")  # the paper's datasets: Table I's column groups
LAST = "last.json"  # in the runs root: the setting of the last reproduction


@dataclass(frozen=True)
class Setting:
    """What a sweep ran under: profile (paper, smoke, demo), protocol (paper, authors) and
    `data`, the dataset that replaced each cell's (synthetic, digits), or None."""

    profile: str = "paper"
    protocol: str = "paper"
    data: str | None = None

    @property
    def folder(self) -> str:
        """runs/<folder>/: 'paper', 'smoke', 'paper-authors', ..."""
        return self.profile if self.protocol == "paper" else f"{self.profile}-{self.protocol}"

    @property
    def is_reproduction(self) -> bool:
        """Only the paper profile (either protocol) on CIFAR data reproduces the paper."""
        return self.profile == "paper" and self.data in (None, *CIFAR_SETS)

    @property
    def prefix(self) -> str:
        """'' for the paper profile on CIFAR ('authors-' for its protocol); else
        '<folder>-<data>-', so a smoke or demo table never overwrites the real ones (FIDELITY.md G7)."""
        if self.is_reproduction and self.data is None:
            return "" if self.protocol == "paper" else f"{self.protocol}-"
        return f"{self.folder}-{self.data}-" if self.data else f"{self.folder}-"

    def data_folder(self, cell_dataset: str) -> str:
        """runs/<setting>/<data folder>/: the replacing dataset, else the cell's own."""
        return self.data or cell_dataset

    def run_name(self, cell: RunName) -> RunName:
        """The run that serves a table cell under this setting, named by the data it sees."""
        return cell.on(data_label(self.data, cell.dataset)) if self.data else cell

    def run_path(self, runs_root: str, cell: RunName) -> str:
        return os.path.join(os.fspath(runs_root), self.folder,
                            self.data_folder(cell.dataset), str(self.run_name(cell)))

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> Setting:
        dataset = cfg["data"]["dataset"]
        return cls(cfg["profile"], cfg["protocol"], None if dataset in CIFAR_SETS else dataset)

    def record(self, runs_root: str) -> None:
        """Remember this setting as the last reproduction's (tables', figure3's default)."""
        from elastic_keras import files

        files.write_json(os.path.join(os.fspath(runs_root), LAST), {
            "profile": self.profile, "protocol": self.protocol, "data": self.data})

    @classmethod
    def last(cls, runs_root: str) -> Setting | None:
        """The setting of the last reproduction under `runs_root`, or None."""
        from elastic_keras import files

        path = os.path.join(os.fspath(runs_root), LAST)
        if not os.path.isfile(path):
            return None
        d = files.read_json(path)
        if not isinstance(d, dict) or not isinstance(d.get("profile"), str):
            raise ElasticKerasError(f"{path} is not a setting record; delete it")
        return cls(d["profile"], d.get("protocol", "paper"), d.get("data"))


def data_label(dataset: str, cell_dataset: str) -> str:
    """How a run names the data it saw: the dataset, with the cell's class count where the
    dataset takes it from the cell (synthetic10, synthetic100)."""
    return f"{dataset}{cell_dataset.removeprefix('cifar')}" if dataset == "synthetic" \
        else dataset


SEED_PREFIX = "seed"  # seed s > 0 of a run lives in <name>-seed<s> (FIDELITY.md R10)


def seed_name(name: str, seed: int) -> str:
    """The run name of seed `seed` of the run `name`: seed 0 is the run itself (so finished
    runs are reused), seed s > 0 is `<name>-seed<s>` (FIDELITY.md R10)."""
    return name if seed == 0 else f"{name}-{SEED_PREFIX}{seed}"


def split_seed(name: str) -> tuple[str, int]:
    """(the run name without its seed suffix, the seed): the inverse of `seed_name`."""
    head, _, tail = name.rpartition("-")
    digits = tail.removeprefix(SEED_PREFIX)
    if head and tail.startswith(SEED_PREFIX) and digits.isdigit() and int(digits) > 0 \
            and str(int(digits)) == digits:
        return head, int(digits)
    return name, 0


def method_run(name: str, method: str) -> str:
    """The run of loss scheme `method` on the Table I elastic run `name` (reproduce methods):
    `uniform` is that run itself (same config, so shared), any other `<name>-<method>`."""
    return name if method == "uniform" else str(RunName.parse(name).with_method(method))


@dataclass(frozen=True)
class RunName:
    """A run (and table cell) name: <dataset>-<backbone>-<elastic|plain>, then the loss
    scheme of a methods run (`-auxnet`; none: the table's own run) and the seed (`-seed2`;
    none: seed 0)."""

    dataset: str
    backbone: str
    plain: bool = False
    method: str = ""
    seed: int = 0

    def __str__(self) -> str:
        base = f"{self.dataset}-{self.backbone}-{'plain' if self.plain else 'elastic'}"
        return seed_name(base + (f"-{self.method}" if self.method else ""), self.seed)

    def on(self, dataset: str) -> RunName:
        return replace(self, dataset=dataset)

    def with_seed(self, seed: int) -> RunName:
        return replace(self, seed=seed)

    def with_method(self, method: str) -> RunName:
        return replace(self, method=method)

    @classmethod
    def parse(cls, text: str) -> RunName:
        rest, seed = split_seed(text)
        parts = rest.split("-")
        method = parts.pop() if len(parts) > 3 and parts[-2] in ("elastic", "plain") else ""
        if len(parts) < 3 or parts[-1] not in ("elastic", "plain") or not all(parts):
            raise ElasticKerasError(f"{text!r} is not a run name "
                                    "(<dataset>-<backbone>-elastic|plain[-method][-seedN])")
        return cls(parts[0], "-".join(parts[1:-1]), parts[-1] == "plain", method, seed)


def run_dir_for(cfg: dict[str, Any], runs_root: str = "runs") -> str:
    """runs/<setting>/<data>/<name>: named after the experiment, never a timestamp."""
    return os.path.join(os.fspath(runs_root), Setting.of(cfg).folder, cfg["data"]["dataset"],
                        cfg["name"])
