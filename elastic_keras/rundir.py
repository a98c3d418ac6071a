"""The run directory: its files and their formats, its lock, its states, and how runs are found.

The one owner of a run directory (FIDELITY.md R1).

runs/<setting>/<dataset>/<name>/
    .lock          held (flock) by the one worker training or evaluating the run
    config.json    the resolved config (what the run is); split.json: the data split
    state.json     status, history, schedule state, checkpoints, sessions (written last)
    history.csv    every exit's training and validation loss and accuracy per epoch
    ckpt/          epoch-NNNN.{weights.h5,optimizer.npz} (last), best-epoch-NNNN.weights.h5
    results.json   every exit's test error; written by evaluation, never by training

States (state.json "status"; FIDELITY.md R2): claimed (config written, no epoch yet) -> training ->
trained (every phase done) -> evaluated (results.json written); failed (diverged) at any
point. Only evaluated runs are finished: tables and budgets read nothing else.
"""

import os
import shutil
import time
from contextlib import contextmanager

from . import files
from .errors import ElasticKerasError

CONFIG, SPLIT, STATE, HISTORY, RESULTS, LOCK, CKPT = (
    "config.json", "split.json", "state.json", "history.csv", "results.json", ".lock", "ckpt")
LAST = "last.json"  # in the runs root: the setting and data of the last reproduction
CLAIMED, TRAINING, TRAINED, EVALUATED, FAILED = (
    "claimed", "training", "trained", "evaluated", "failed")
# Keys that say where things are or how fast they run, not what the run is.
_NOT_IDENTITY = {"resolved", "data.data_dir", "train.eval_batch_size"}


class RunBusy(ElasticKerasError):
    """Another live worker holds the run's lock."""


def setting(profile, protocol="paper"):
    """The folder of a profile and protocol: 'paper', 'smoke', 'paper-authors', ..."""
    return profile if protocol == "paper" else f"{profile}-{protocol}"


def run_path(runs_root, setting_name, dataset, name):
    """runs/<setting>/<dataset>/<name>: named after the experiment, never a timestamp."""
    return os.path.join(os.fspath(runs_root), setting_name, dataset, name)


def run_dir_for(cfg, runs_root="runs"):
    """The run directory of a resolved config."""
    return run_path(runs_root, setting(cfg["profile"], cfg["protocol"]), cfg["data"]["dataset"],
                    cfg["name"])


def record_last(runs_root, setting_name, data):
    """Remember the setting and data of the last reproduction (figure3's, tables' default)."""
    files.write_json(os.path.join(os.fspath(runs_root), LAST), {"profile": setting_name,
                                                                "data": data})


def last(runs_root):
    """{"profile", "data"} of the last reproduction under `runs_root`, or None."""
    path = os.path.join(os.fspath(runs_root), LAST)
    return files.read_json(path) if os.path.isfile(path) else None


def _identity(cfg):
    from .config import flatten

    return {k: v for k, v in flatten(cfg).items()
            if k not in _NOT_IDENTITY and not k.startswith("resolved.")}


def config_diff(old, new):
    """'key: old there, new now' for every key that makes two configs different runs."""
    a, b = _identity(old), _identity(new)
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


class RunDir:
    """One run directory; every read and write of its files goes through here."""

    def __init__(self, path):
        self.dir = os.fspath(path)
        self._held = False

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def __repr__(self):
        return f"RunDir({self.dir!r})"

    @property
    def exists(self):
        return os.path.isfile(self.path(CONFIG))

    @property
    def config(self):
        return files.read_json(self.path(CONFIG))

    @property
    def state(self):
        return files.read_json(self.path(STATE)) if os.path.isfile(self.path(STATE)) else None

    @property
    def status(self):
        """'new' (no config), or the state's status."""
        return "new" if not self.exists else (self.state or {"status": CLAIMED})["status"]

    @property
    def finished(self):
        """Trained and evaluated: the only runs whose numbers may be reported."""
        return self.status == EVALUATED and os.path.isfile(self.path(RESULTS))

    @property
    def results(self):
        return files.read_json(self.path(RESULTS)) if self.finished else None

    def require(self, status, doing):
        """Refuse `doing` unless the run is in `status` (one line saying where it stands)."""
        if self.status == status or (status == TRAINED and self.status == EVALUATED):
            return
        state = self.state or {}
        where = {"new": "it has not started", CLAIMED: "it has not trained an epoch yet",
                 TRAINING: f"it is still training ({len(state.get('history', []))} epochs "
                           "done; train it to the end first)",
                 FAILED: f"it failed: {state.get('failure')}"}.get(self.status, self.status)
        raise ElasticKerasError(f"{self.dir}: cannot {doing}: {where}")

    @contextmanager
    def lock(self, wait=False, log=None):
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

    def claim(self, cfg, split, env, log=print):
        """Make the directory this config's run, under the lock; return its state.

        A new run writes config and split. A run with another config is refused, unless it
        failed or never finished an epoch: then nothing is lost and it is replaced
        (FIDELITY.md R4).
        """
        self._locked()
        if self.exists:
            old, state = self.config, self.state or {}
            diff = config_diff(old, cfg)
            if diff and (state.get("status") == FAILED or not state.get("history")):
                log(f"[{cfg['name']}] replacing the {state.get('status', CLAIMED)} run in "
                    f"{self.dir} ({'; '.join(diff[:3])})")
                self._wipe()
            elif diff:
                raise ElasticKerasError(
                    f"{self.dir} holds a run with another config ({'; '.join(diff[:5])}); "
                    "delete that directory or choose another --runs-root")
            elif state.get("status") == FAILED:
                raise ElasticKerasError(
                    f"{self.dir}: this config failed before: {state.get('failure')} Change "
                    "the config (the new one replaces the failed run) or delete the directory.")
        self._clear_temporaries()
        if not self.exists:
            files.write_json(self.path(SPLIT), split)
            files.write_json(self.path(CONFIG), cfg)
        state = self.state or {"status": CLAIMED, "history": [], "phase": None,
                               "phase_epoch": 0, "lr": None, "schedule": None, "last": None,
                               "best": {}, "sessions": []}
        state["sessions"].append({**env, "pid": os.getpid(),
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

    def write_state(self, state):
        self._locked()
        files.write_json(self.path(STATE), state)

    def fail(self, state, message):
        """Record the failure (the run stays inspectable; results are never written)."""
        state.update(status=FAILED, failure=message)
        self.write_state(state)

    def save_checkpoint(self, net, optimizer, tag):
        """Weights (and optimizer state when given) under ckpt/, atomically; file names."""
        self._locked()
        saved = {"file": os.path.join(CKPT, f"{tag}.weights.h5")}
        with files.atomic_path(self.path(saved["file"]), suffix=".weights.h5") as tmp:
            net.save_weights(tmp)
        if optimizer is not None:
            saved["optimizer"] = os.path.join(CKPT, f"{tag}.optimizer.npz")
            files.save_arrays(self.path(saved["optimizer"]), optimizer.variables)
        return saved

    def load_weights(self, net, checkpoint):
        net.load_weights(self.path(checkpoint["file"]))

    def load_optimizer(self, optimizer, variables, checkpoint):
        optimizer.build(variables)
        arrays = files.load_arrays(self.path(checkpoint["optimizer"]))
        if len(arrays) != len(optimizer.variables):
            raise ElasticKerasError(f"{self.dir}: optimizer checkpoint does not fit the model")
        for var, value in zip(optimizer.variables, arrays):
            var.assign(value)

    def prune_checkpoints(self, state):
        """Remove the checkpoints this run wrote that its state no longer points to."""
        self._locked()
        keep = {state["last"]["file"], state["last"].get("optimizer")}
        keep |= {b["file"] for b in state["best"].values()}
        files.remove_unlisted(self.path(CKPT), {os.path.basename(k) for k in keep if k},
                              prefixes=("epoch-", "best-epoch-"))

    def best_checkpoint(self, state=None):
        """The checkpoint with the lowest validation loss over the whole run."""
        state = state or self.state
        if not state or not state.get("best"):
            raise ElasticKerasError(f"{self.dir}: no checkpoint yet (has the run trained?)")
        return min(state["best"].values(), key=lambda b: b["val_loss"])

    def write_history(self, rows, outputs):
        """history.csv: one row per epoch, columns in depth order of the exits."""
        self._locked()
        files.write_csv(self.path(HISTORY), history_columns(rows, outputs), rows)

    def write_results(self, state, results):
        """results.json, then the state that says the run is evaluated."""
        self._locked()
        files.write_json(self.path(RESULTS), results)
        state["status"] = EVALUATED
        self.write_state(state)


def history_columns(rows, outputs):
    """epoch, phase, phase_epoch, lr, loss, each exit's loss and accuracy in depth order,
    clipped, the same for validation, then anything else (time)."""
    per = [f"{o}_{m}" for o in outputs for m in ("loss", "accuracy")] + ["clipped"]
    lead = ["epoch", "phase", "phase_epoch", "lr", "loss", *per,
            "val_loss", *[f"val_{c}" for c in per]]
    present = set().union(*rows) if rows else set()
    rest = [c for row in rows for c in row if c not in lead]
    return [c for c in lead if c in present] + list(dict.fromkeys(rest))


def read_history(path):
    """A run's history.csv (a run directory or the file itself) as a pandas DataFrame."""
    import pandas as pd

    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".csv"):
        path = os.path.join(path, HISTORY)
    if not os.path.isfile(path):
        raise ElasticKerasError(f"no training history: {path} not found (has the run trained?)")
    df = pd.read_csv(path)
    missing = [c for c in ("epoch", "phase", "lr", "loss", "val_loss") if c not in df.columns]
    if missing or df.empty:
        raise ElasticKerasError(f"{path}: not a history.csv (missing columns {missing} or no rows)")
    return df


def open_run(path):
    """An existing run directory; fail clearly when `path` is not one."""
    run = RunDir(path)
    if not run.exists:
        raise ElasticKerasError(f"not a run directory (no {CONFIG}): {path}")
    return run


def find_runs(root):
    """Every run directory under `root` (sorted), whatever its state."""
    found = []
    for folder, dirs, names in os.walk(os.fspath(root)):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != CKPT)
        if CONFIG in names:
            found.append(RunDir(folder))
            dirs[:] = []
    return sorted(found, key=lambda r: r.dir)
