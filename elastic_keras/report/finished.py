"""The finished runs a table reads: each run's results.json, read once, its provenance checked."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from elastic_keras.errors import ElasticKerasError
from elastic_keras.runs import rundir
from elastic_keras.runs.names import RunName, Setting, seed_name, split_seed
from elastic_keras.training.state import EVALUATED, FAILED

MISSING, UNFINISHED, FINISHED = "missing", "unfinished", "finished"


@dataclass
class Runs:
    """Finished runs of a setting under runs_root, read once each."""

    root: str
    setting: Setting
    seen: dict = field(default_factory=dict)  # name -> (status, path, results or None)

    @property
    def protocol(self) -> str:
        return self.setting.protocol

    def get(self, dataset, name):
        """Results of the finished run serving a table cell (`name`, on `dataset`), else
        None (a blank cell: FIDELITY.md G4); the runs of a data tag all live in one folder
        (FIDELITY.md G6)."""
        if name not in self.seen:
            path = self.setting.run_path(self.root, RunName.parse(name))
            status, results = _read(rundir.RunDir(path))
            if results is not None:
                self._check_provenance(path, results, dataset)
            self.seen[name] = (status, path, results)
        return self.seen[name][2]

    @property
    def any_finished(self) -> bool:
        """Whether a run read so far is finished (a table without one is not written)."""
        return any(s == FINISHED for s, _, _ in self.seen.values())

    def _check_provenance(self, path, res, dataset):  # FIDELITY.md G5
        expected = {"dataset": self.setting.data or dataset, "protocol": self.protocol}
        for key, want in expected.items():
            if res.get(key, want) != want:
                raise ElasticKerasError(
                    f"{path}: results.json says {key} {res[key]!r}, but the table is for "
                    f"{key} {want!r}; move the run or pass the matching options")

    def finished(self, name) -> bool:
        """Whether the run serving cell `name` (a seed's name too) is finished."""
        return self.get(RunName.parse(name).dataset, name) is not None

    def seed_count(self, cells) -> int:
        """1 + the largest seed finished of any of `cells` (1 when none has a finished seed
        s > 0): a table reads every finished seed on disk, whatever a command trained
        (FIDELITY.md G9)."""
        top = 0
        for cell in cells:
            folder, base = os.path.split(self.setting.run_path(self.root, RunName.parse(cell)))
            entries = os.listdir(folder) if os.path.isdir(folder) else []
            for s in sorted({s for head, s in map(split_seed, entries) if head == base}):
                if s > top and self.finished(seed_name(cell, s)):
                    top = s
        return top + 1

    def seeds_of(self, dataset, name, seeds, exit_kind="final"):
        """{seed: test error} of the finished seeds 0..seeds-1 of a cell's run (seed s > 0
        in `<name>-seed<s>`: FIDELITY.md R10); unfinished seeds are left out."""
        found = {s: error_at(self.get(dataset, seed_name(name, s)), exit_kind)
                 for s in range(seeds)}
        return {s: e for s, e in found.items() if not math.isnan(e)}

    def exit_errors(self, dataset, name, seeds, outputs):
        """The Interval over finished seeds of each of a run's `outputs` exits' test error."""
        from elastic_keras.report.intervals import interval

        found = [r["exits"] for s in range(seeds)
                 if (r := self.get(dataset, seed_name(name, s))) and len(r["exits"]) == outputs]
        return [interval(e[k]["test_error_pct"] for e in found) for k in range(outputs)]

    def environments(self, names):
        """'backend / device' of the finished runs among `names` ('' when none)."""
        found = {f"{r['backend']} / {r['device']}" for n in names
                 if n in self.seen and (r := self.seen[n][2]) and "backend" in r}
        return "; ".join(sorted(found))


def _read(run):
    """(status, results or None) of a run directory. A failed run says why, and so does one
    whose files cannot be read: the table is written for the others (FIDELITY.md R14)."""
    if not os.path.isdir(run.dir):
        return MISSING, None
    try:
        status, results = run.status, run.results
    except ElasticKerasError as e:
        return f"unreadable: {e}", None
    if results is not None:
        return FINISHED, results
    if status == FAILED:
        return f"failed: {run.state.failure}", None
    if status == EVALUATED:
        return (f"unfinished: {run.path(rundir.RESULTS)} is missing or unreadable "
                "(`python -m elastic_keras evaluate` rebuilds it)"), None
    return f"{UNFINISHED} ({status})", None


def error_at(results, exit_kind):
    """Test error (%) of a finished run at its final or penultimate exit; NaN if absent. The
    final exit's, at the best checkpoint by validation loss (FIDELITY.md G3)."""
    if results is None:
        return math.nan
    exits = results["exits"]
    if exit_kind == "penultimate":
        return exits[-2]["test_error_pct"] if len(exits) > 1 else math.nan
    return float(exits[-1]["test_error_pct"])
