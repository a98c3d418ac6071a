"""The run directory: its files and their formats, its lock, its states, what makes it a config's.

The one owner of a run directory (FIDELITY.md R1).

runs/<setting>/<data>/<name>/   (runs.names: Setting, RunName)
    .lock          held (flock) by the one worker training or evaluating the run
    config.json    the resolved config (what the run is); split.json: the data split
    state.json     status, history, schedule state, checkpoints, sessions (written last)
    history.csv    every exit's training and validation loss and accuracy per epoch
    ckpt/          epoch-NNNN.{weights.h5,optimizer.npz} (last), best-epoch-NNNN.weights.h5
    results.json   every exit's test error; written by evaluation, never by training
    after training, through `output`: budget.{csv,png}, curves.png, calibration, exports

States (state.json "status"; FIDELITY.md R2): claimed (config written, no epoch yet) -> training ->
trained (every phase done) -> evaluated (results.json written); failed (diverged) at any
point. Only evaluated runs are finished: tables and budgets read nothing else.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.runs.checkpoints import CKPT, CheckpointFiles
from elastic_keras.runs.history import HISTORY, HistoryFile
from elastic_keras.runs.config import flatten
from elastic_keras.training.state import (
    CLAIMED, EVALUATED, FAILED, TRAINED, TRAINING, RunState)

CONFIG, SPLIT, STATE, RESULTS, LOCK = (
    "config.json", "split.json", "state.json", "results.json", ".lock")
# Keys that say where things are or how fast they run, not what the run is.
_NOT_IDENTITY = {"resolved", "data.data_dir", "train.eval_batch_size",
                 "train.steps_per_execution"}


def config_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flattened config keys that make a run what it is (not where or how fast)."""
    # Runs written before train.precision existed trained in float32 (FIDELITY.md B8).
    flat = {"train.precision": "float32", **flatten(cfg)}
    return {k: v for k, v in flat.items()
            if k not in _NOT_IDENTITY and not k.startswith("resolved.")}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old there, new now' for every key that makes two configs different runs."""
    a, b = config_identity(old), config_identity(new)
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


class RunBusy(ElasticKerasError):
    """Another live worker holds the run's lock."""


class RunDir(CheckpointFiles, HistoryFile):
    """One run directory; every read and write of its files goes through here."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.dir = os.fspath(path)
        self._held = False

    def __repr__(self) -> str:
        return f"RunDir({self.dir!r})"

    def output(self, name: str) -> str:
        """The path of a file made from the trained run (budget, plots, calibration,
        exports): a plain name inside the run directory."""
        if not name or os.sep in name or name.startswith(".") or name in (
                CONFIG, SPLIT, STATE, HISTORY, RESULTS, CKPT):
            raise ElasticKerasError(f"{name!r} is not a name for a run's output file")
        return self.path(name)

    @property
    def exists(self) -> bool:
        return os.path.isfile(self.path(CONFIG))

    @property
    def config(self) -> dict[str, Any]:
        return files.read_json(self.path(CONFIG))

    @property
    def state(self) -> RunState | None:
        if not os.path.isfile(self.path(STATE)):
            return None
        return RunState.from_dict(files.read_json(self.path(STATE)), self.path(STATE))

    @property
    def status(self) -> str:
        """'new' (no config), or the state's status."""
        state = self.state if self.exists else None
        return "new" if not self.exists else state.status if state else CLAIMED

    @property
    def finished(self) -> bool:
        """Evaluated, results.json readable: the only runs whose numbers may be reported."""
        return self.results is not None

    @property
    def results(self) -> dict[str, Any] | None:
        """results.json of an evaluated run; None if missing or unreadable (FIDELITY.md R11)."""
        results = None
        if self.status == EVALUATED and os.path.isfile(self.path(RESULTS)):
            with suppress(ElasticKerasError):
                results = files.read_json(self.path(RESULTS))
        return results if isinstance(results, dict) and "exits" in results else None

    def finished_as(self, cfg: dict[str, Any], log=print) -> bool:
        """Is this directory `cfg`'s run, evaluated (says so)? A run evaluated whose
        results.json is missing or unreadable is not: it is evaluated again (R11)."""
        if self.finished and not config_diff(self.config, cfg):
            log(f"[{cfg['name']}] finished already: {self.dir}")
            return True
        if self.status == EVALUATED and not config_diff(self.config, cfg):
            log(f"[{cfg['name']}] {self.path(RESULTS)} is missing or unreadable: evaluating "
                "the run again")
        return False

    def require(self, status: str, doing: str) -> None:
        """Refuse `doing` unless the run is in `status` (one line saying where it stands)."""
        if self.status == status or (status == TRAINED and self.status == EVALUATED):
            return
        state = self.state or RunState()
        where = {"new": "it has not started", CLAIMED: "it has not trained an epoch yet",
                 TRAINING: f"it is still training ({len(state.history)} epochs "
                           "done; train it to the end first)",
                 FAILED: f"it failed: {state.failure}"}.get(self.status, self.status)
        raise ElasticKerasError(f"{self.dir}: cannot {doing}: {where}")

    def model(self) -> Any:
        """The trained network at its best checkpoint (by validation loss), built from
        config.json alone: no dataset is loaded (FIDELITY.md R9)."""
        from elastic_keras.model.factory import model_from_config

        self.require(TRAINED, "load its trained model")
        cfg = self.config
        resolved = cfg.get("resolved") or {}
        if "num_classes" not in resolved or "image_shape" not in resolved:
            raise ElasticKerasError(f"{self.path(CONFIG)} lacks resolved.num_classes/"
                                    "image_shape; train the run again")
        net = model_from_config(cfg, resolved["num_classes"], resolved["image_shape"],
                                initial_weights=False)
        self.load_weights(net, self.best_checkpoint())
        return net

    @contextmanager
    def lock(self, wait: bool = False, log=None) -> Iterator[RunDir]:
        """Hold the run's lock: one worker at a time per run directory, on this host or any
        host sharing the folder (FIDELITY.md R3). The kernel drops it when its holder dies
        (kill -9 included), so a dead worker's successor takes over."""
        os.makedirs(self.dir, exist_ok=True)
        try:
            with files.exclusive(self.path(LOCK), wait, log and (
                    lambda holder: log(f"waiting for {self.dir}, held by {holder}"))):
                self._held = True
                yield self
        except files.Held as e:
            raise RunBusy(f"{self.dir} is held by {e}") from None
        finally:
            self._held = False

    def _locked(self):
        if not self._held:
            raise RuntimeError(f"{self.dir}: write without holding the lock")

    def claim(self, job: Any, log=print) -> RunState:
        """Make the directory the run of `job` (training.job.Job), under the lock; return
        its state.

        A new run writes config (with what loading the data resolved) and split. A run with
        another config is refused, unless it failed or never finished an epoch: then
        nothing is lost and it is replaced (FIDELITY.md R4).
        """
        self._locked()
        cfg, data = job.cfg, job.data
        cfg = {**cfg, "resolved": {
            "num_classes": data.num_classes, "image_shape": list(data.x_train.shape[1:]),
            "train_images": len(data.y_train), "val_images": len(data.y_val),
            "test_images": len(data.y_test)}}
        if self.exists:
            old, state = self.config, self.state or RunState()
            diff = config_diff(old, cfg)
            if diff and (state.status == FAILED or not state.history):
                log(f"[{cfg['name']}] replacing the {state.status} run in "
                    f"{self.dir} ({'; '.join(diff[:3])})")
                self._wipe()
            elif diff:
                raise ElasticKerasError(
                    f"{self.dir} holds a run with another config ({'; '.join(diff[:5])}); "
                    "delete that directory or choose another --runs-root")
            elif state.status == FAILED:
                raise ElasticKerasError(
                    f"{self.dir}: this config failed before: {state.failure} Change "
                    "the config (the new one replaces the failed run) or delete the directory.")
        self._clear_temporaries()
        if not self.exists:
            files.write_json(self.path(SPLIT), data.split)
            files.write_json(self.path(CONFIG), cfg)
        state = self.state or RunState()
        if state.history:
            log(f"[{cfg['name']}] resuming after epoch {len(state.history)} "
                f"(phase '{state.phase}', {state.phase_epoch} epochs into it)")
        state.sessions.append({**job.env, "pid": os.getpid(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.write_state(state)
        return state

    def _wipe(self):
        for name in (CONFIG, SPLIT, STATE, HISTORY, RESULTS):
            if os.path.exists(self.path(name)):
                os.remove(self.path(name))
        shutil.rmtree(self.path(CKPT), ignore_errors=True)

    def _clear_temporaries(self):
        """Temporary files a dead worker of this run left (we hold the lock: none is live)."""
        for folder in (self.dir, self.path(CKPT)):
            files.remove_unlisted(folder, keep=(), prefixes=(".tmp-",))

    def write_state(self, state: RunState) -> None:
        """state.json; the state it replaces on a new epoch is kept as `previous` (R11)."""
        self._locked()
        old = self.state if os.path.isfile(self.path(STATE)) else None
        if old and old.last and len(old.history) < len(state.history):
            state.previous = old.snapshot()
        files.write_json(self.path(STATE), state.as_dict())

    def fail(self, state: RunState, message: str) -> None:
        """Record the failure (the run stays inspectable; results are never written)."""
        state.status, state.failure = FAILED, message
        self.write_state(state)

    def write_results(self, state: RunState, results: dict[str, Any]) -> None:
        """results.json, then the state that says the run is evaluated."""
        self._locked()
        files.write_json(self.path(RESULTS), results)
        state.status = EVALUATED
        self.write_state(state)
