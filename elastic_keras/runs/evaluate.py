"""Per-exit test evaluation: the test set is read once, at the best-by-validation checkpoint.

The checkpoint is the one with the lowest validation loss over the run (FIDELITY.md T4); the
authors read the test set every epoch (FIDELITY.md A9), we read it once.
"""

from __future__ import annotations

from typing import Any

from elastic_keras.runs.found import open_run
from elastic_keras.runs.rundir import RunDir
from elastic_keras.training.state import TRAINED, RunState


def evaluate_run(run: RunDir, net: Any, data: Any, state: RunState, log=print) -> dict[str, Any]:
    """Evaluate a trained run on its test set and write results.json (under the run's lock).

    net: the run's network (its weights are replaced by the best checkpoint's); data: its
    loaded dataset. Returns the results.
    """
    from elastic_keras.data.batches import Batches
    from elastic_keras.backend.environment import describe
    from elastic_keras.model.exits import exit_info
    from elastic_keras.training.objective import ExitTrainer, named

    cfg = run.config
    best = run.best_checkpoint(state)
    run.load_weights(net, best)
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    # The test pass: one compiled loop over its large batches (FIDELITY.md B7).
    trainer.compile(steps_per_execution=cfg["train"].get("steps_per_execution", 1))
    logs = named(trainer.evaluate(Batches(data.x_test, data.y_test,
                                          cfg["train"]["eval_batch_size"]),
                                  verbose=0, return_dict=True), trainer.exit_names)
    exits = []
    for e in exit_info(net):
        acc = float(logs[f"{e.output}_accuracy"])
        exits.append({**e.as_dict(), "test_accuracy": acc,
                      "test_error_pct": round(100.0 * (1.0 - acc), 4),
                      "test_loss": float(logs[f"{e.output}_loss"])})
    env = describe()
    results = {"name": cfg["name"], "profile": cfg["profile"], "protocol": cfg["protocol"],
               "dataset": cfg["data"]["dataset"], "backend": env["backend"],
               "device": env["device"], "versions": env["versions"],
               "trained_on": sorted({f"{s['backend']} / {s['device']}"
                                     for s in state.sessions}),
               "config": cfg, "test_images": len(data.y_test),
               "epochs": len(state.history),
               "checkpoint": {k: best[k] for k in ("epoch", "phase", "val_loss")},
               "exits": exits, "final_test_error_pct": exits[-1]["test_error_pct"]}
    run.write_results(state, results)
    log(f"[{cfg['name']}] test error of each exit (%): "
        + ", ".join(f"{e['output']} {e['test_error_pct']:.2f}" for e in exits))
    return results


def evaluate(path: str, log=print) -> dict[str, Any]:
    """Re-evaluate a trained run directory (the `evaluate` command). A run that has not
    finished training is refused: its numbers would read as a result."""
    from elastic_keras.data.datasets import load_data

    run = open_run(path)
    with run.lock(wait=False):
        run.require(TRAINED, "evaluate it")
        net = run.model()
        data = load_data(run.config["data"])
        return evaluate_run(run, net, data, run.state or RunState(), log)
