"""Learning-rate plateau and early stopping on validation loss, as Keras counts them, resumable.

The loop keeps their state in the run state (a dict), so a resumed run continues them
exactly; Keras' callbacks keep it in Python objects that a kill loses (FIDELITY.md T5).
"""

COUNTINGS = ("keras2", "keras3")


def new_state():
    """Fresh plateau and early-stopping state, as Keras' callbacks reset it at train begin."""
    return {"best": None, "wait": 0, "cooldown": 0, "stop_best": None, "stop_wait": 0}


def _improved(value, best, min_delta):
    return best is None or value < best - min_delta


def plateau(state, val_loss, lr, phase):
    """ReduceLROnPlateau on validation loss after one epoch; returns the next epoch's rate.

    counting "keras2" is Keras 2.1.5's (callbacks.py:962-981): the patience test comes
    before `wait += 1`, so after an improvement the first cut comes one epoch later than
    in Keras 3 ("keras3", reduce_lr_on_plateau.py:123-150, which counts first). Both
    reset `wait` in cooldown, cut by `factor` down to `min_lr`, and start the cooldown
    (FIDELITY.md T5).
    """
    if state["cooldown"] > 0:
        state["cooldown"] -= 1
        state["wait"] = 0
    if _improved(val_loss, state["best"], phase["min_delta"]):
        state["best"], state["wait"] = val_loss, 0
        return lr
    if state["cooldown"] > 0:
        return lr
    keras2 = phase["counting"] == "keras2"
    if not keras2:
        state["wait"] += 1
    new_lr = lr
    if state["wait"] >= phase["patience"]:
        if lr > phase["min_lr"]:
            new_lr = max(lr * phase["factor"], phase["min_lr"])
            state["cooldown"], state["wait"] = phase["cooldown"], 0
    if keras2:
        state["wait"] += 1
    return new_lr


def early_stop(state, val_loss, phase):
    """EarlyStopping on validation loss; True when the phase should stop after this epoch.

    Keras 2.1.5 (callbacks.py:529-536) and Keras 3 both count first, then test, so a phase
    stops `stop_patience` epochs after its last improvement (FIDELITY.md T11).
    """
    if _improved(val_loss, state["stop_best"], phase["stop_min_delta"]):
        state["stop_best"], state["stop_wait"] = val_loss, 0
        return False
    state["stop_wait"] += 1
    return state["stop_wait"] >= phase["stop_patience"]
