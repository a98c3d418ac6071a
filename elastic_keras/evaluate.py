"""Per-exit test evaluation: the test set is read once, at the best-by-validation checkpoint.

The checkpoint is the one with the lowest validation loss over the run (FIDELITY.md T4).
"""

from . import io
from .runs import RESULTS


def evaluate(run, data=None, log=print):
    """Evaluate `run` (a Run) on its test set; write results.json atomically; return run.

    `data`: the run's already loaded dataset (as train passes it), else loaded here."""
    from .data import batches
    from .models import exit_info
    from .step import ExitTrainer

    cfg = run.config
    data = data or run.load_data()
    net = run.load_model()
    best = run.best_checkpoint()
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    trainer.compile()
    logs = trainer.evaluate(batches(data.x_test, data.y_test, cfg["train"]["eval_batch_size"]),
                            verbose=0, return_dict=True)
    exits = []
    for e in exit_info(net):
        acc = float(logs[f"{e.output}_accuracy"])
        exits.append({**e.as_dict(), "test_accuracy": acc,
                      "test_error_pct": round(100.0 * (1.0 - acc), 4),
                      "test_loss": float(logs[f"{e.output}_loss"])})
    results = {"name": cfg["name"], "profile": cfg["profile"], "dataset": cfg["data"]["dataset"],
               "config": cfg, "test_images": len(data.y_test),
               "checkpoint": {k: best[k] for k in ("epoch", "phase", "val_loss")},
               "exits": exits, "final_test_error_pct": exits[-1]["test_error_pct"]}
    io.write_json(run.path(RESULTS), results)
    log(f"[{cfg['name']}] test error of each exit (%): "
        + ", ".join(f"{e['output']} {e['test_error_pct']:.2f}" for e in exits))
    return run
