"""The one training loop: phases as data (paper section IV-A), resumable at every epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from elastic_keras.training.job import Job
from elastic_keras.training.state import TRAINED, TRAINING, RunState

TRAINABLE = ("heads", "all")  # what a phase trains: the exits' heads only, or everything

CLIP_LIMIT = 0.5  # a run whose training images are mostly clipped has diverged (T9)


# What the loop hands its caller (runs.checkpoints: CheckpointFiles.take); it opens no file.
@dataclass
class Restore:
    """Before a phase: load these weights (and the optimizer's state) into the network."""

    checkpoint: dict[str, Any]
    optimizer: bool


@dataclass
class Epoch:
    """An epoch is done and in the state: checkpoint it (a best one too), then save the state."""

    row: dict[str, Any]
    best: bool  # the lowest validation loss of its phase so far


@dataclass
class Diverged:
    """The run diverged: record the failure; the loop has stopped (T9)."""

    message: str


Event = Restore | Epoch | Diverged


def epochs(job: Job, state: RunState, log=print, verbose: bool = True) -> Iterator[Event]:
    """Run every phase not yet done, epoch by epoch; the state says where to start. Yields
    what needs the run's files (a Restore before a phase, an Epoch after each epoch, or
    Diverged, after which it stops); the caller acts on each before the loop goes on."""
    phases = list(job.cfg["phases"].items())
    for index, (name, phase) in enumerate(phases):
        if index < _phases_done(state, phases):
            continue
        restore = start_phase(job, state, index, phases, log)
        if restore is not None:
            yield restore
        while not _phase_over(state, phase):
            event = run_epoch(job, state, name, phase, log, verbose)
            yield event
            if isinstance(event, Diverged):
                return
    state.status = TRAINED


def _phases_done(state, phases):
    names = [n for n, _ in phases]
    if state.phase is None:
        return 0
    i = names.index(state.phase)
    return i + 1 if _phase_over(state, phases[i][1]) else i


def _phase_over(state, phase):
    return state.phase_epoch >= phase["epochs"] or state.stopped


def start_phase(job: Job, state: RunState, index: int, phases: list, log=print) -> Restore | None:
    """Set what trains and compile; return the weights this phase starts from, if any."""
    import keras

    from elastic_keras.training.schedule import new_state

    name, phase = phases[index]
    set_trainable(job.net, phase["trainable"])
    resuming = state.phase == name
    if not resuming:
        state.phase, state.phase_epoch, state.lr = name, 0, float(phase["lr"])
        state.stopped, state.schedule = False, new_state()
    # Several steps per compiled call: the epoch's numbers are unchanged (FIDELITY.md B7).
    job.trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=state.lr,
                                                       momentum=float(phase["momentum"])),
                        steps_per_execution=job.cfg["train"]["steps_per_execution"])
    before = phases[index - 1][0] if index > 0 else None
    if resuming and state.last:
        return Restore(state.last, optimizer=True)
    if before in state.best and job.cfg["train"]["reload_best_between_phases"]:
        # The authors' scripts reload the best phase-1 checkpoint before phase 2 (T3).
        log(f"[{job.cfg['name']}] phase '{name}' starts from the best '{before}' checkpoint "
            f"(epoch {state.best[before]['epoch']})")
        return Restore(state.best[before], optimizer=False)
    if state.last:  # the previous phase's last weights (a resumed run starts fresh: R11)
        return Restore(state.last, optimizer=False)
    return None


def set_trainable(net: Any, trainable: str) -> None:
    """What a phase trains: "heads" (the exits' heads only; the backbone frozen, its
    BatchNorm in inference mode: FIDELITY.md T2) or "all"."""
    from elastic_keras.model.exits import head_layers

    heads = head_layers(net)
    for layer in net.layers:
        layer.trainable = trainable == "all" or layer.name in heads


def run_epoch(job: Job, state: RunState, name: str, phase: dict[str, Any], log=print,
              verbose: bool = True) -> Epoch | Diverged:
    """One epoch: train, validate, check for divergence, then update the state."""
    from elastic_keras.data.batches import Batches
    from elastic_keras.backend.keras_internals import reseed
    from elastic_keras.training.progress import StepProgress
    from elastic_keras.training.objective import named

    cfg, data, t = job.cfg, job.data, job.cfg["train"]
    epoch = len(state.history) + 1
    label = epoch_label(cfg, state, name, phase, epoch)
    job.trainer.optimizer.learning_rate = state.lr
    reseed(job.net, t["seed"], epoch)
    clock = StepProgress(label, t["batch_size"], every=None if verbose else math.inf)
    start = time.time()
    hist = job.trainer.fit(
        Batches(data.x_train, data.y_train, t["batch_size"], shuffle=True, seed=t["seed"],
                epoch=epoch),
        validation_data=Batches(data.x_val, data.y_val, t["eval_batch_size"]),
        epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    logs = named({k: v[-1] for k, v in hist.history.items()}, job.trainer.exit_names)
    return finish_epoch(job, state, name, phase, epoch, label, logs, log, lambda: {
        "time_s": time.time() - start, "train_s": clock.train_s, "val_s": clock.val_s})


def finish_epoch(job: Job, state: RunState, name: str, phase: dict[str, Any], epoch: int,
                 label: str, logs: dict[str, float], log, seconds: Callable[[], dict],
                 note: str = "") -> Epoch | Diverged:
    """After an epoch's fit (this loop's, or the seeds-together one's): check for divergence,
    then the history row (`seconds()`: time, train and validation seconds, read once the
    epoch is checked) and its line, then the state (end_epoch)."""
    from elastic_keras.training.progress import epoch_line

    diverged = check_divergence(job, logs, epoch, name)
    if diverged:
        return diverged
    row = {"epoch": epoch, "phase": name, "phase_epoch": state.phase_epoch + 1,
           "lr": state.lr, **logs, **{k: round(v, 3) for k, v in seconds().items()}}
    log(epoch_line(label, row, len(job.data.y_train), len(job.data.y_val)) + note)
    return end_epoch(state, row, phase)


def epoch_label(cfg, state, name, phase, epoch):
    """'[name] epoch 3/110 (full 2/100, lr 0.001)': the start of an epoch's lines."""
    return (f"[{cfg['name']}] epoch {epoch}/{sum(p['epochs'] for p in cfg['phases'].values())}"
            f" ({name} {state.phase_epoch + 1}/{phase['epochs']}, lr {state.lr:.3g})")


def check_divergence(job: Job, logs: dict[str, float], epoch: int, name: str) -> Diverged | None:
    """Has the run diverged? A non-finite loss or weight, or a loss pinned at the clip
    ceiling (most true-class probabilities clipped to 1e-7). No results are written (T9)."""
    import numpy as np
    from keras import ops

    why = None
    if not all(math.isfinite(v) for v in logs.values()):
        why = f"the loss is not finite (loss={logs.get('loss')}, val_loss={logs.get('val_loss')})"
    elif logs.get("clipped", 0.0) >= CLIP_LIMIT:
        why = (f"the loss is pinned at its clipping ceiling: {logs['clipped']:.0%} of the "
               "training images got a true-class probability clipped to 1e-7")
    elif not all(np.isfinite(ops.convert_to_numpy(w)).all() for w in job.net.weights):
        why = "some weights are not finite"
    if why is None:
        return None
    return Diverged(f"[{job.cfg['name']}] diverged at run epoch {epoch} (phase '{name}'): "
                    f"{why}. Lower the learning rate (--set phases.{name}.lr=...). No results "
                    "written.")


def end_epoch(state: RunState, row: dict[str, Any], phase: dict[str, Any]) -> Epoch:
    """The epoch into the state: its row, the phase's count, the schedule. The caller then
    writes the checkpoints, and after them the state that points to them (kill -9 safe)."""
    from elastic_keras.training.schedule import early_stop, plateau

    best = state.best.get(row["phase"])
    state.history.append(row)
    state.phase_epoch += 1
    state.status = TRAINING
    if phase["reduce_lr"]:
        state.lr = plateau(state.schedule, row["val_loss"], state.lr, phase)
    if phase["early_stop"] and early_stop(state.schedule, row["val_loss"], phase):
        state.stopped = True
    return Epoch(row, best=best is None or row["val_loss"] < best["val_loss"])
