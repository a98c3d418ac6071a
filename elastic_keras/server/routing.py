"""After a segment: who leaves (the exit rule, max_exit, deadlines), who is audited, who goes on.

Vectorised over a batch's rows, whatever request each came from: the per-image Python work is
online control's bookkeeping alone (FIDELITY.md S2).
"""

from __future__ import annotations

import numpy as np

from elastic_keras.server.jobs import NO_DEADLINE, Chunk


def leaves(conf, criterion: str, thresholds) -> np.ndarray:
    """The in-package exit rule, in float32 as the exported graphs and the segment driver
    compare (FIDELITY.md I31): max_prob leaves at confidence >= threshold, entropy at <=."""
    thresholds = np.asarray(thresholds, np.float32)  # a scalar or one per row
    return conf >= thresholds if criterion == "max_prob" else conf <= thresholds


def by_job(batch: Chunk, mask):
    """(job, indices into the batch) of the rows in `mask`, job by job."""
    index = np.flatnonzero(mask)
    if not len(index):
        return
    owners = batch.owner[index]
    order = np.argsort(owners, kind="stable")
    found, starts = np.unique(owners[order], return_index=True)
    for o, part in zip(found, np.split(index[order], starts[1:])):
        yield batch.jobs[o], part


def answer(engine, batch: Chunk, mask, probs, exit_number: int, forced=False) -> list:
    """Record the answers of the rows in `mask` at exit `exit_number`; the jobs finished."""
    done = []
    for job, part in by_job(batch, mask):
        if job.answer(batch.rows[part], probs[part], exit_number, forced):
            done.append(job)
    count = int(np.count_nonzero(mask))
    engine.pending -= count
    if engine.fusion is not None and count and not forced:
        engine.fusion.observe(exit_number, count)
    if engine.hooks and count:
        engine.hooks.on_exits(exit_number, count, forced=forced)
    return done


def late(batch: Chunk, now: float, cost: float):
    """The rows (not audits) whose deadline the next segment cannot meet."""
    return np.asarray(now + cost > batch.asks("deadline", NO_DEADLINE)) & ~batch.audit


def route(engine, k: int, batch: Chunk, probs, conf):
    """Answer the rows that leave after segment k, tell online control, draw the audits.
    Returns (the rows going on, with exit k + 1's probabilities, or None; jobs finished).
    Called under the engine's lock."""
    last = k == len(engine.segments) - 1
    if last:
        leave = np.ones(len(batch), bool)
    else:
        leave = leaves(conf, engine.criterion, batch.asks("threshold", engine.threshold))
        leave |= np.asarray(k + 1 >= batch.asks("max_exit", np.inf))
    audit = batch.audit.copy()
    if last and audit.any():  # audits reach the final exit: their verdicts
        _verdicts(engine, batch, probs.argmax(axis=1))
    answered = leave & ~audit
    done = answer(engine, batch, answered, probs, k + 1)
    audited = _served(engine, batch, answered, early=not last)
    if audited is not None:  # they go on as audits, their answer sent
        audit |= audited
        leave &= ~audited
    on = (~leave | audit) if not last else np.zeros(len(batch), bool)
    if not on.any():
        return None, done
    going = Chunk(batch.jobs, batch.owner[on], batch.rows[on], batch.features[:0], probs[on],
                  audit[on])
    return (going, np.flatnonzero(on)), done


def _served(engine, batch: Chunk, answered, early: bool):
    """Tell online control which answered rows it governs (jobs at the threshold in force),
    early or at the final exit; draw each early one's audit coin (independent of the image:
    FIDELITY.md W1). Returns the rows audited (a mask over the batch), or None."""
    control = engine.control
    if control is None:
        return None
    governed = answered & np.array([j.controlled for j in batch.jobs])[batch.owner]
    index = np.flatnonzero(governed)
    if not len(index):
        return None
    room = engine.audits_in_flight < engine.max_queue  # audits never grow without bound
    coins = engine.rng.random(len(index)) < control.audit_rate if early and room else \
        np.zeros(len(index), bool)
    for i, coin in zip(index, coins):
        job = batch.jobs[batch.owner[i]]
        job.tickets[batch.rows[i]] = control.observe_served(early, bool(coin))
    engine.audits_in_flight += int(coins.sum())
    if engine.hooks and coins.any():
        engine.hooks.on_audits(int(coins.sum()))
    audited = np.zeros(len(batch), bool)
    audited[index[coins]] = True
    return audited if audited.any() else None


def _verdicts(engine, batch: Chunk, final_classes) -> None:
    """The audited rows reached the final exit: did their early answer differ?"""
    for i in np.flatnonzero(batch.audit):
        job, row = batch.jobs[batch.owner[i]], batch.rows[i]
        disagree = int(final_classes[i]) != int(job.classes[row])
        job.finals[row] = final_classes[i]
        engine.control.observe_audit(int(job.tickets[row]), disagree)
        engine.audits_in_flight -= 1
        if engine.hooks:
            engine.hooks.on_verdict(disagree)
