"""Run directories: one per experiment, holding config, state, history, checkpoints, results."""

import csv
import io as _io
import os

from . import io
from .errors import ElasticKerasError

CONFIG, STATE, HISTORY, RESULTS, SPLIT = (
    "config.json", "state.json", "history.csv", "results.json", "split.json")


def load_data(d):
    """The dataset and split described by a config's `data` section."""
    from .data import load_dataset

    return load_dataset(d["dataset"], data_dir=d["data_dir"], val_fraction=d["val_fraction"],
                        seed=d["seed"], num_classes=d["num_classes"],
                        train_limit=d["train_limit"], test_limit=d["test_limit"])


def run_dir_for(cfg, runs_root="runs"):
    """runs/<profile>/<dataset>/<name>: named after the experiment, never a timestamp."""
    return os.path.join(runs_root, cfg["profile"], cfg["data"]["dataset"], cfg["name"])


class Run:
    """A run directory and what it holds."""

    def __init__(self, path):
        self.dir = os.fspath(path)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def config(self):
        return io.read_json(self.path(CONFIG))

    @property
    def state(self):
        return io.read_json(self.path(STATE)) if os.path.exists(self.path(STATE)) else None

    @property
    def results(self):
        return io.read_json(self.path(RESULTS)) if self.finished else None

    @property
    def finished(self):
        """Trained and evaluated: results.json is written last, atomically."""
        return os.path.exists(self.path(RESULTS))

    def load_data(self):
        """The run's dataset and split, as recorded in its config."""
        return load_data(self.config["data"])

    def build_model(self, weights=None):
        """The run's network (native-size input, in-graph preprocessing), untrained."""
        import keras

        from .models import build_model

        cfg = self.config
        m = cfg["model"]
        net = build_model(m["backbone"], cfg["resolved"]["num_classes"],
                          input_size=m["input_size"], dropout=m["dropout"], alpha=m["alpha"],
                          weights=weights, plain=m["plain"],
                          source_shape=tuple(cfg["resolved"]["image_shape"]),
                          preprocess=m["preprocess"])
        if m.get("bn_momentum") is not None:  # demo profile only (FIDELITY.md T8)
            for layer in net.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = m["bn_momentum"]
        return net

    def best_checkpoint(self):
        """The checkpoint with the lowest validation loss over the whole run."""
        state = self.state
        if not state or not state.get("best"):
            raise ElasticKerasError(f"{self.dir}: no checkpoint yet (has the run trained?)")
        return min(state["best"].values(), key=lambda b: b["val_loss"])

    def load_model(self):
        """The trained network with its best-by-validation-loss weights."""
        net = self.build_model()
        net.load_weights(self.path(self.best_checkpoint()["file"]))
        return net

    def write_history(self, rows):
        """history.csv: one row per epoch across phases (written atomically)."""
        if not rows:
            return
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        io.write_text(self.path(HISTORY), buf.getvalue())


def open_run(path):
    """Open an existing run directory; fail clearly when `path` is not one."""
    run = Run(path)
    if not os.path.isfile(run.path(CONFIG)):
        raise ElasticKerasError(f"not a run directory (no {CONFIG}): {path}")
    return run
