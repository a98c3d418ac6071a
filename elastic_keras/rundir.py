"""The run directory: its files and their formats, its lock, its states, and how runs are found.

runs/<setting>/<dataset>/<name>/
    .lock          held (flock) by the one worker training or evaluating the run
    config.json    the resolved config (what the run is); split.json: the data split
    state.json     status, history, schedule state, checkpoints, sessions (written last)
    history.csv    every exit's training and validation loss and accuracy per epoch
    ckpt/          epoch-NNNN.{weights.h5,optimizer.npz} (last), best-epoch-NNNN.weights.h5
    results.json   every exit's test error; written by evaluation, never by training

States (state.json "status"): claimed (config written, no epoch yet) -> training ->
trained (every phase done) -> evaluated (results.json written); failed (diverged) at any
point. Only evaluated runs are finished: tables and budgets read nothing else.
"""

import fcntl
import json
import os
import platform
import shutil
import time
from contextlib import contextmanager

from . import files
from .errors import ElasticKerasError

CONFIG, SPLIT, STATE, HISTORY, RESULTS, LOCK, CKPT = (
    "config.json", "split.json", "state.json", "history.csv", "results.json", ".lock", "ckpt")
CLAIMED, TRAINING, TRAINED, EVALUATED, FAILED = (
    "claimed", "training", "trained", "evaluated", "failed")
# Keys that say where things are or how fast they run, not what the run is.
_NOT_IDENTITY = {"resolved", "data.data_dir", "train.eval_batch_size"}


class RunBusy(ElasticKerasError):
    """Another live worker holds the run's lock."""


def setting(cfg):
    """The folder of a profile and protocol: 'paper', 'smoke', 'paper-authors', ..."""
    return cfg["profile"] if cfg["protocol"] == "paper" else f"{cfg['profile']}-{cfg['protocol']}"


def run_dir_for(cfg, runs_root="runs"):
    """runs/<setting>/<dataset>/<name>: named after the experiment, never a timestamp."""
    return os.path.join(os.fspath(runs_root), setting(cfg), cfg["data"]["dataset"], cfg["name"])


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
        self._lock_fd = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def __repr__(self):
        return f"RunDir({self.dir!r})"

    # -- reading --------------------------------------------------------------------------
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
        if not self.exists:
            return "new"
        state = self.state
        return state["status"] if state else CLAIMED

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

    # -- the lock -------------------------------------------------------------------------
    @contextmanager
    def lock(self, wait=False, log=None):
        """Hold the run's lock: one worker at a time per run directory, on this host or any
        host sharing the folder. flock is released by the kernel when its holder dies
        (kill -9 included), so a dead worker's successor takes over."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.path(LOCK), os.O_RDWR | os.O_CREAT, files.FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RunBusy(f"{self.dir} is held by {self.holder()}") from None
                if log:
                    log(f"waiting for {self.dir}, held by {self.holder()}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            holder = {"pid": os.getpid(), "host": platform.node(),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            self._lock_fd = fd
            yield self
        finally:
            self._lock_fd = None
            os.close(fd)  # releases the lock

    def holder(self):
        """Who holds the lock, as its holder wrote it."""
        try:
            with open(self.path(LOCK), encoding="utf-8") as f:
                h = json.loads(f.read() or "{}")
            return f"pid {h['pid']} on {h['host']} since {h['since']}"
        except (OSError, ValueError, KeyError):
            return "another worker"

    def _locked(self):
        if self._lock_fd is None:
            raise RuntimeError(f"{self.dir}: write without holding the lock")

    # -- claiming, states -----------------------------------------------------------------
    def claim(self, cfg, split, env, log=print):
        """Make the directory this config's run, under the lock; return its state.

        A new run writes config and split. A run with another config is refused, unless it
        failed or never finished an epoch: then nothing is lost and it is replaced.
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
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if name.startswith(".tmp-"):
                        os.remove(os.path.join(folder, name))

    def write_state(self, state):
        self._locked()
        files.write_json(self.path(STATE), state)

    def fail(self, state, message):
        """Record the failure (the run stays inspectable; results are never written)."""
        state.update(status=FAILED, failure=message)
        self.write_state(state)

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, net, optimizer, tag):
        """Weights (and optimizer state when given) under ckpt/, atomically; file names."""
        import keras
        import numpy as np

        self._locked()
        weights = os.path.join(CKPT, f"{tag}.weights.h5")
        with files.atomic_path(self.path(weights), suffix=".weights.h5") as tmp:
            net.save_weights(tmp)
        saved = {"file": weights}
        if optimizer is not None:
            opt = os.path.join(CKPT, f"{tag}.optimizer.npz")
            with files.atomic_path(self.path(opt), suffix=".npz") as tmp:
                np.savez(tmp, *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
            saved["optimizer"] = opt
        return saved

    def load_weights(self, net, checkpoint):
        net.load_weights(self.path(checkpoint["file"]))

    def load_optimizer(self, optimizer, variables, checkpoint):
        import numpy as np

        optimizer.build(variables)
        with np.load(self.path(checkpoint["optimizer"])) as f:
            arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
        if len(arrays) != len(optimizer.variables):
            raise ElasticKerasError(f"{self.dir}: optimizer checkpoint does not fit the model")
        for var, value in zip(optimizer.variables, arrays):
            var.assign(value)

    def prune_checkpoints(self, state):
        """Remove the checkpoints this run wrote that its state no longer points to."""
        self._locked()
        keep = {state["last"]["file"], state["last"].get("optimizer")}
        keep |= {b["file"] for b in state["best"].values()}
        folder = self.path(CKPT)
        for name in os.listdir(folder):
            ours = name.startswith(("epoch-", "best-epoch-"))
            if ours and os.path.join(CKPT, name) not in keep:
                os.remove(os.path.join(folder, name))

    def best_checkpoint(self, state=None):
        """The checkpoint with the lowest validation loss over the whole run."""
        state = state or self.state
        if not state or not state.get("best"):
            raise ElasticKerasError(f"{self.dir}: no checkpoint yet (has the run trained?)")
        return min(state["best"].values(), key=lambda b: b["val_loss"])

    # -- history and results --------------------------------------------------------------
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
