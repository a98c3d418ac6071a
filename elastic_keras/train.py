"""The one training loop: phases as data (paper section IV-A), resumable at every epoch."""

import math
import time
from dataclasses import dataclass

from .errors import ElasticKerasError
from .rundir import TRAINED, TRAINING, RunDir, config_diff, run_dir_for

CLIP_LIMIT = 0.5  # a run whose training images are mostly clipped has diverged (T9)


@dataclass
class Job:
    """What a run trains: its config, data, network, trainer, and where it runs."""

    cfg: dict
    data: object
    net: object
    trainer: object
    env: dict
    weights: list


def train(cfg, runs_root="runs", run_dir=None, log=print, allow_cpu=False, verbose=True,
          wait=True):
    """Train `cfg` in its run directory (resuming a partial run), then evaluate it once.

    Everything is checked (accelerator, data, weights, loss weights) before the run
    directory is written; the run's lock keeps every other worker out while it trains.
    """
    from .environment import check_accelerator

    run = RunDir(run_dir or run_dir_for(cfg, runs_root))
    if _finished(run, cfg, log):
        return run
    check_accelerator(cfg["profile"], allow_cpu)
    with run.lock(wait=wait, log=log):
        if _finished(run, cfg, log):  # another worker finished it while we waited
            return run
        job = prepare(cfg, log)
        state = run.claim(_resolved(cfg, job.data), job.data.split, job.env, log)
        if state["history"]:
            log(f"[{cfg['name']}] resuming after epoch {len(state['history'])} "
                f"(phase '{state['phase']}', {state['phase_epoch']} epochs into it)")
        fit(run, job, state, log, verbose)
        from .evaluate import evaluate_run

        evaluate_run(run, job.net, job.data, state, log)
    return run


def _finished(run, cfg, log):
    if run.finished and not config_diff(run.config, cfg):
        log(f"[{cfg['name']}] finished already: {run.dir}")
        return True
    return False


def _resolved(cfg, data):
    return {**cfg, "resolved": {
        "num_classes": data.num_classes, "image_shape": list(data.x_train.shape[1:]),
        "train_images": len(data.y_train), "val_images": len(data.y_val),
        "test_images": len(data.y_test)}}


def prepare(cfg, log=print):
    """Data, network (with its initial weights), loss weights and trainer of a config: all
    built, and so checked, before the run directory is written (FIDELITY.md R4)."""
    from .splits import load_data
    from .environment import describe, header
    from .internals import seed_everything
    from .losses import loss_weights
    from .models import exit_info, model_from_config

    env = describe()
    log(f"[{cfg['name']}] {header(env)}")
    seed_everything(cfg["train"]["seed"])
    data = load_data(cfg["data"])
    net = model_from_config(cfg, data.num_classes, data.x_train.shape[1:])
    depths = [e.conv_layers for e in exit_info(net)]
    weights = loss_weights(cfg["loss"]["weights"], len(net.outputs), depths=depths,
                           nu=cfg["loss"]["nu"])
    trainer = make_trainer(net, weights, cfg["train"]["backprop"])
    log(f"[{cfg['name']}] {len(net.outputs)} outputs, loss weights "
        f"{[round(w, 4) for w in weights]}, {len(data.y_train)} train / {len(data.y_val)} "
        f"val / {len(data.y_test)} test images")
    return Job(cfg, data, net, trainer, env, weights)


def fit(run, job, state, log=print, verbose=True):
    """Run every phase not yet done, epoch by epoch; the state says where to start."""
    phases = list(job.cfg["phases"].items())
    for index, (name, phase) in enumerate(phases):
        if index < _phases_done(state, phases):
            continue
        start_phase(run, job, state, index, phases, log)
        while not _phase_over(state, phase):
            run_epoch(run, job, state, name, phase, log, verbose)
    state["status"] = TRAINED
    run.write_state(state)


def _phases_done(state, phases):
    names = [n for n, _ in phases]
    if state["phase"] is None:
        return 0
    i = names.index(state["phase"])
    return i + 1 if _phase_over(state, phases[i][1]) else i


def _phase_over(state, phase):
    return state["phase_epoch"] >= phase["epochs"] or state.get("stopped", False)


def start_phase(run, job, state, index, phases, log):
    """Set what trains, compile, and load the weights this phase starts from."""
    import keras

    from .models import head_layers
    from .schedule import new_state

    name, phase = phases[index]
    heads = head_layers(job.net)
    # 'heads': backbone frozen, BatchNorm in inference mode (FIDELITY.md T2).
    for layer in job.net.layers:
        layer.trainable = phase["trainable"] == "all" or layer.name in heads
    resuming = state["phase"] == name
    if not resuming:
        state.update(phase=name, phase_epoch=0, lr=float(phase["lr"]), stopped=False,
                     schedule=new_state())
    job.trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=state["lr"],
                                                       momentum=phase["momentum"]))
    if resuming and state["last"]:
        run.load_weights(job.net, state["last"])
        run.load_optimizer(job.trainer.optimizer, job.trainer.trainable_variables, state["last"])
    elif index > 0 and job.cfg["train"]["reload_best_between_phases"] \
            and phases[index - 1][0] in state["best"]:
        # The authors' scripts reload the best phase-1 checkpoint before phase 2 (T3).
        run.load_weights(job.net, state["best"][phases[index - 1][0]])
        log(f"[{job.cfg['name']}] phase '{name}' starts from the best '{phases[index - 1][0]}'"
            f" checkpoint (epoch {state['best'][phases[index - 1][0]]['epoch']})")


def run_epoch(run, job, state, name, phase, log, verbose):
    """One epoch: train, validate, check for divergence, checkpoint, then the state."""
    from .batches import Batches
    from .internals import reseed
    from .progress import StepProgress, epoch_line
    from .trainer import named

    cfg, data, t = job.cfg, job.data, job.cfg["train"]
    epoch = len(state["history"]) + 1
    label = (f"[{cfg['name']}] epoch {epoch}/{sum(p['epochs'] for p in cfg['phases'].values())}"
             f" ({name} {state['phase_epoch'] + 1}/{phase['epochs']}, lr {state['lr']:.3g})")
    job.trainer.optimizer.learning_rate = state["lr"]
    reseed(job.net, t["seed"], epoch)
    clock = StepProgress(label, t["batch_size"], every=None if verbose else math.inf)
    start = time.time()
    hist = job.trainer.fit(
        Batches(data.x_train, data.y_train, t["batch_size"], shuffle=True, seed=t["seed"],
                epoch=epoch),
        validation_data=Batches(data.x_val, data.y_val, t["eval_batch_size"]),
        epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    logs = named({k: v[-1] for k, v in hist.history.items()}, job.trainer.exit_names)
    check_divergence(run, job, state, logs, epoch, name)
    row = {"epoch": epoch, "phase": name, "phase_epoch": state["phase_epoch"] + 1,
           "lr": state["lr"], **logs, "time_s": round(time.time() - start, 3),
           "train_s": round(clock.train_s, 3), "val_s": round(clock.val_s, 3)}
    log(epoch_line(label, row, len(data.y_train), len(data.y_val)))
    end_epoch(run, job, state, row, phase)


def check_divergence(run, job, state, logs, epoch, name):
    """Stop a diverged run: a non-finite loss or weight, or a loss pinned at the clip
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
    if why:
        message = (f"[{job.cfg['name']}] diverged at run epoch {epoch} (phase '{name}'): {why}."
                   f" Lower the learning rate (--set phases.{name}.lr=...). No results written.")
        run.fail(state, message)
        raise ElasticKerasError(message)


def end_epoch(run, job, state, row, phase):
    """Checkpoints first, then the state that points to them (kill -9 safe)."""
    from .schedule import early_stop, plateau

    name, epoch = row["phase"], row["epoch"]
    state["history"].append(row)
    state["phase_epoch"] += 1
    state["status"] = TRAINING
    tag = f"epoch-{epoch:04d}"
    state["last"] = run.save_checkpoint(job.net, job.trainer.optimizer, tag)
    best = state["best"].get(name)
    if best is None or row["val_loss"] < best["val_loss"]:
        saved = run.save_checkpoint(job.net, None, f"best-{tag}")
        state["best"][name] = {"epoch": epoch, "phase": name, "val_loss": row["val_loss"],
                               **saved}
    if phase["reduce_lr"]:
        state["lr"] = plateau(state["schedule"], row["val_loss"], state["lr"], phase)
    if phase["early_stop"] and early_stop(state["schedule"], row["val_loss"], phase):
        state["stopped"] = True
    run.write_state(state)
    run.write_history(state["history"], [e["output"] for e in job.net.exits])
    run.prune_checkpoints(state)


def make_trainer(net, loss_weights, backprop="joint"):
    """The trainer of a run: "joint" backpropagation of the summed loss (the paper), or
    AuxNet's "multi_way" (one update per output, in series: multiway.py)."""
    if backprop == "multi_way":
        from .multiway import multi_way_trainer

        return multi_way_trainer(net, loss_weights)
    if backprop != "joint":
        raise ValueError(f"unknown backprop {backprop!r}")
    from .trainer import ExitTrainer

    return ExitTrainer(net, loss_weights)
