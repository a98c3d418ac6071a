"""Seeds in one program (JAX): K seeds of one config trained through one compiled, vmapped step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from elastic_keras.errors import ElasticKerasError
from elastic_keras.training.loop import Diverged


def epochs_together(jobs: list, states: list, log=print) -> Iterator[tuple[int, Any]]:
    """Train K runs of one config (seeds differ) together, phase by phase, epoch by epoch,
    yielding (seed index, event) for what needs each run's files, as `loop.epochs` does
    for one run. A seed that diverges yields Diverged and drops out; the others go on.

    Variables, optimizer state (learning rate included: plateau cuts differ by seed) and
    RNG state of the K networks are stacked along a leading axis and stepped by one
    `jax.vmap` over Keras' stateless calls (FIDELITY.md B9). Between epochs they are
    written back into each run's own network and optimizer, so each run's checkpoints,
    state, history and plateau are exactly the single-run loop's (`loop.end_epoch`).
    """
    from elastic_keras.training.loop import _phase_over, _phases_done, start_phase
    from elastic_keras.training.state import TRAINED

    phases, failed = list(jobs[0].cfg["phases"].items()), set()
    for index, (name, phase) in enumerate(phases):
        ids = [i for i in range(len(jobs)) if _phases_done(states[i], phases) <= index]
        for i in ids:
            restore = start_phase(jobs[i], states[i], index, phases, log)
            if restore is not None:
                yield i, restore
            optimizer = jobs[i].trainer.optimizer
            if not optimizer.built:
                optimizer.build(jobs[i].trainer.trainable_variables)
        steps = compiled_steps(jobs[ids[0]]) if ids else None
        while True:
            live = [i for i in ids if i not in failed and not _phase_over(states[i], phase)]
            if not live:
                break
            for i, event in _epoch(jobs, states, live, name, phase, steps, log):
                failed |= {i} if isinstance(event, Diverged) else set()
                yield i, event
    for i in set(range(len(jobs))) - failed:
        states[i].status = TRAINED


def compiled_steps(job: Any) -> tuple[Callable, Callable]:
    """(train step, evaluation step), jitted and vmapped over a leading seed axis."""
    import jax
    import jax.numpy as jnp

    from elastic_keras.training.objective import exit_terms

    net, optimizer = job.net, job.trainer.optimizer
    weights = jnp.asarray(job.weights, dtype="float32")

    def terms(tv, ntv, x, y, training):
        out, ntv = net.stateless_call(tv, ntv, x, training=training)
        ce, acc, clipped = exit_terms(out if isinstance(out, (list, tuple)) else [out], y)
        loss = jnp.sum(weights * ce)
        return loss, (ntv, jnp.concatenate([loss[None], ce, acc, clipped]))

    def train_one(tv, ntv, ov, x, y):
        (_, (ntv, vec)), grads = jax.value_and_grad(terms, has_aux=True)(tv, ntv, x, y, True)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return tv, ntv, ov, vec * x.shape[0]

    def eval_one(tv, ntv, x, y):
        return (terms(tv, ntv, x, y, False)[1][1] * x.shape[0],)

    return (jax.jit(jax.vmap(train_one), donate_argnums=(0, 1, 2)),
            jax.jit(jax.vmap(eval_one)))


def stack_values(variable_lists: list[list[Any]]) -> list[Any]:
    """[[v_1 .. v_n] per seed] -> [stacked v_1 .. stacked v_n], a leading seed axis."""
    import jax.numpy as jnp

    return [jnp.stack([v.value for v in vs]) for vs in zip(*variable_lists)]


def unstack_values(stacked: list[Any], variable_lists: list[list[Any]]) -> None:
    """Write each seed's slice of the stacked values back into its own variables."""
    for k, variables in enumerate(variable_lists):
        for value, var in zip(stacked, variables):
            var.assign(value[k])


def run_batches(step: Callable, state: list, batches: list) -> tuple[list, Any]:
    """Every batch of the K seeds' `batches` (one Batches each, equal lengths) through
    `step`; returns the new state and the summed per-seed vectors divided by the images."""
    if len({len(b) for b in batches}) != 1 or len({len(b.x) for b in batches}) != 1:
        raise ElasticKerasError("seeds trained together need the same number of images")
    total = None
    for index in range(len(batches[0])):
        parts = [b[index] for b in batches]
        x, y = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        *updated, sums = step(*state, x, y)
        state = updated or state  # the evaluation step updates nothing
        total = sums if total is None else total + sums
    return state, np.asarray(total, dtype=np.float64) / len(batches[0].x)


def _epoch(jobs, states, ids, name, phase, steps, log):
    """One epoch of the seeds `ids`, together; each then ends it as if alone."""
    from elastic_keras.data.batches import Batches
    from elastic_keras.backend.keras_internals import reseed

    train_step, eval_step = steps
    sel = [jobs[i] for i in ids]
    epochs = [len(states[i].history) + 1 for i in ids]
    for job, i, epoch in zip(sel, ids, epochs):
        job.trainer.optimizer.learning_rate = states[i].lr
        reseed(job.net, job.cfg["train"]["seed"], epoch)
    lists = [[j.net.trainable_variables for j in sel], [j.net.non_trainable_variables
                                                        for j in sel],
             [j.trainer.optimizer.variables for j in sel]]
    start = time.time()
    train = [Batches(j.data.x_train, j.data.y_train, j.cfg["train"]["batch_size"],
                     shuffle=True, seed=j.cfg["train"]["seed"], epoch=e)
             for j, e in zip(sel, epochs)]
    stacked, sums = run_batches(train_step, [stack_values(v) for v in lists], train)
    train_s = time.time() - start
    val = [Batches(j.data.x_val, j.data.y_val, j.cfg["train"]["eval_batch_size"]) for j in sel]
    _, val_sums = run_batches(eval_step, stacked[:2], val)
    for values, variables in zip(stacked, lists):
        unstack_values(values, variables)
    times = {"time_s": time.time() - start, "train_s": train_s,
             "val_s": time.time() - start - train_s}
    for k, i in enumerate(ids):
        logs = {"loss": sums[k, 0], "exits": sums[k, 1:], "val_loss": val_sums[k, 0],
                "val_exits": val_sums[k, 1:]}
        yield i, _end(jobs[i], states[i], logs, epochs[k], name, phase, times, log)


def _end(job, state, logs, epoch, name, phase, times, log):
    """What the single-run loop does after an epoch's fit (loop.finish_epoch); a diverged
    seed's message is logged here, since the others go on."""
    from elastic_keras.training.loop import epoch_label, finish_epoch
    from elastic_keras.training.objective import named

    label = epoch_label(job.cfg, state, name, phase, epoch)
    event = finish_epoch(job, state, name, phase, epoch, label,
                         named(logs, job.trainer.exit_names), log, lambda: times,
                         note=" (seeds together)")
    if isinstance(event, Diverged):
        log(event.message)
    return event
