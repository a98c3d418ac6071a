"""The one training loop: phases as data (paper section IV-A), resumable at every epoch."""

import math
import os
import time

from . import io
from .errors import ElasticKerasError
from .runs import CONFIG, SPLIT, STATE, Run, load_data, run_dir_for

CKPT = "ckpt"


def _set_trainable(net, trainable):
    """'heads': only the exits' layers train (backbone frozen, BatchNorm in inference
    mode: FIDELITY.md T2); 'all': everything trains."""
    from .models import is_head_layer

    for layer in net.layers:
        layer.trainable = trainable == "all" or is_head_layer(layer.name)


def _reseed(net, seed, epoch):
    """Set every RNG (Dropout) of `net` from (seed, epoch): a resumed run then draws the
    same dropout masks as an uninterrupted one (RNG states are not in weight files; T7)."""
    import numpy as np

    for i, layer in enumerate(net.layers):
        for gen in getattr(layer, "_seed_generators", ()):
            gen.state.assign(np.array([seed * 7919 + epoch * 104729 + i, 0],
                                      dtype=gen.state.dtype))


def _save_checkpoint(run, trainer, tag, with_optimizer):
    """Write weights (and optimizer state) under ckpt/, atomically; return the file names."""
    import numpy as np

    weights = os.path.join(CKPT, f"{tag}.weights.h5")
    with io.atomic_path(run.path(weights), suffix=".weights.h5") as tmp:
        trainer.net.save_weights(tmp)
    files = {"file": weights}
    if with_optimizer:
        opt = os.path.join(CKPT, f"{tag}.optimizer.npz")
        with io.atomic_path(run.path(opt), suffix=".npz") as tmp:
            np.savez(tmp, *[v.numpy() for v in trainer.optimizer.variables])
        files["optimizer"] = opt
    return files


def _restore_optimizer(run, trainer, path):
    import numpy as np

    trainer.optimizer.build(trainer.trainable_variables)
    with np.load(run.path(path)) as f:
        arrays = [f[f"arr_{i}"] for i in range(len(f.files))]
    if len(arrays) != len(trainer.optimizer.variables):
        raise ElasticKerasError(f"{run.dir}: optimizer checkpoint {path} does not fit the model")
    for var, value in zip(trainer.optimizer.variables, arrays):
        var.assign(value)


def _prune_checkpoints(run, state):
    """Remove checkpoint files the state no longer points to (after the state is saved)."""
    keep = {state["last"]["file"], state["last"].get("optimizer")}
    keep |= {b["file"] for b in state["best"].values()}
    folder = run.path(CKPT)
    for name in os.listdir(folder):
        if os.path.join(CKPT, name) not in keep:
            os.remove(os.path.join(folder, name))


def _check_config(run, cfg):
    """A run directory belongs to one config; refuse to mix two."""
    if not os.path.exists(run.path(CONFIG)):
        return
    old = run.config
    old_cmp = {k: v for k, v in old.items() if k != "resolved"}
    if old_cmp != cfg:
        diffs = _diff(old_cmp, cfg)
        raise ElasticKerasError(
            f"{run.dir} holds a run with another config ({'; '.join(diffs[:5])}); "
            "delete that directory or choose another --runs-root")


def _diff(a, b, prefix=""):
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return out


def _plateau(state, val_loss, phase, min_delta=1e-4):
    """ReduceLROnPlateau on validation loss with Keras' defaults (min_delta 1e-4, cooldown 0).

    Its state lives in the run state so that a resumed run continues it exactly (T5).
    """
    p = state["plateau"]
    if val_loss < p["best"] - min_delta:
        p["best"], p["wait"] = val_loss, 0
        return state["lr"]
    p["wait"] += 1
    if p["wait"] >= phase["patience"]:
        p["wait"] = 0
        return state["lr"] * phase["factor"]
    return state["lr"]


def train(cfg, runs_root="runs", run_dir=None, verbose="auto", log=print):
    """Train `cfg` in its run directory (resuming if started) and evaluate it once."""
    import keras

    from .data import batches
    from .evaluate import evaluate
    from .losses import loss_weights
    from .models import exit_info
    from .step import CompactProgbar, ExitTrainer

    run = Run(run_dir or run_dir_for(cfg, runs_root))
    _check_config(run, cfg)
    if run.finished:
        log(f"[{cfg['name']}] finished already: {run.dir}")
        return run
    d, t = cfg["data"], cfg["train"]

    keras.utils.set_random_seed(t["seed"])
    data = load_data(d)
    resolved = {"num_classes": data.num_classes, "image_shape": list(data.x_train.shape[1:]),
                "train_images": len(data.y_train), "val_images": len(data.y_val),
                "test_images": len(data.y_test)}
    if not os.path.exists(run.path(CONFIG)):
        io.write_json(run.path(SPLIT), data.split)
        io.write_json(run.path(CONFIG), {**cfg, "resolved": resolved})
    net = run.build_model(weights=cfg["model"]["weights"])
    info = exit_info(net)
    weights = loss_weights(cfg["loss"]["weights"], len(net.outputs),
                           depths=[e.conv_layers for e in info], nu=cfg["loss"]["nu"])
    trainer = ExitTrainer(net, weights)

    state = run.state or {"history": [], "phase": None, "phase_epoch": 0, "lr": None,
                          "plateau": None, "last": None, "best": {}}
    val_ds = batches(data.x_val, data.y_val, t["eval_batch_size"])
    phases = list(cfg["phases"].items())
    total_epochs = sum(p["epochs"] for _, p in phases)
    log(f"[{cfg['name']}] {run.dir}: {len(net.outputs)} outputs, loss weights {weights}, "
        f"{resolved['train_images']} train / {resolved['val_images']} val images")

    done = _phase_index(state, phases)
    for index, (name, phase) in enumerate(phases):
        if index < done:
            continue
        _set_trainable(net, phase["trainable"])
        resuming = state["phase"] == name
        if not resuming:
            state.update(phase=name, phase_epoch=0, lr=float(phase["lr"]),
                         plateau={"best": math.inf, "wait": 0})
        trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=state["lr"],
                                                       momentum=t["momentum"]))
        if resuming and state["last"]:
            net.load_weights(run.path(state["last"]["file"]))
            _restore_optimizer(run, trainer, state["last"]["optimizer"])
            log(f"[{cfg['name']}] resuming phase '{name}' after epoch {state['phase_epoch']}")
        elif index > 0 and t["reload_best_between_phases"] and phases[index - 1][0] in state["best"]:
            # The authors' scripts reload the best phase-1 checkpoint before phase 2 (T3).
            net.load_weights(run.path(state["best"][phases[index - 1][0]]["file"]))

        while state["phase_epoch"] < phase["epochs"]:
            epoch = len(state["history"]) + 1
            log(f"[{cfg['name']}] phase '{name}' epoch {state['phase_epoch'] + 1}/"
                f"{phase['epochs']} (run epoch {epoch}/{total_epochs}), lr {state['lr']:.3g}")
            trainer.optimizer.learning_rate = state["lr"]
            _reseed(net, t["seed"], epoch)
            start = time.time()
            hist = trainer.fit(
                batches(data.x_train, data.y_train, t["batch_size"], shuffle=True,
                        seed=t["seed"], epoch=epoch),
                validation_data=val_ds, epochs=1, shuffle=False, verbose=verbose,
                callbacks=[CompactProgbar()] if verbose else [])
            logs = {k: float(v[-1]) for k, v in hist.history.items()}
            if not all(math.isfinite(v) for v in logs.values()):  # FIDELITY.md T9
                raise ElasticKerasError(
                    f"[{cfg['name']}] loss is not finite at run epoch {epoch} (phase '{name}'): "
                    f"loss={logs.get('loss')}, val_loss={logs.get('val_loss')}; "
                    "lower the learning rate (--set phases.<phase>.lr=...). No results written.")
            state["history"].append({"epoch": epoch, "phase": name,
                                     "phase_epoch": state["phase_epoch"] + 1, "lr": state["lr"],
                                     **logs, "time_s": round(time.time() - start, 3)})
            state["phase_epoch"] += 1
            # Checkpoints first, then the state that points to them (kill -9 safe).
            tag = f"epoch-{epoch:04d}"
            state["last"] = _save_checkpoint(run, trainer, tag, with_optimizer=True)
            best = state["best"].get(name)
            if best is None or logs["val_loss"] < best["val_loss"]:
                state["best"][name] = {"epoch": epoch, "phase": name,
                                       "val_loss": logs["val_loss"],
                                       "file": _save_checkpoint(run, trainer, f"best-{tag}",
                                                                False)["file"]}
            if phase["reduce_lr"]:
                state["lr"] = _plateau(state, logs["val_loss"], phase)
            io.write_json(run.path(STATE), state)
            run.write_history(state["history"])
            _prune_checkpoints(run, state)
    return evaluate(run, data=data, log=log)


def _phase_index(state, phases):
    """How many phases are complete according to `state`."""
    names = [n for n, _ in phases]
    if state["phase"] is None:
        return 0
    i = names.index(state["phase"])
    return i + 1 if state["phase_epoch"] >= phases[i][1]["epochs"] else i
